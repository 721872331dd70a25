"""Baselines: each ranks what its rule says, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.features.examples import HIST_FEATURES, N_HIST
from pipelines.model.baselines import BASELINE_NAMES, fit_baselines, score_all

V = 6  # padding, OOV, categories 2..5


def stats() -> dict:
    return {"n_train_examples": 10, "label_counts": [0, 0, 8, 4, 2, 1],
            "transitions": [[3, 4, 9], [3, 3, 1], [2, 2, 5]]}


def inputs(seq_cat: list[int], seq_age: list[float], hist: dict[int, float]) -> dict[str, np.ndarray]:
    """Sparse inputs of one example: its history categories (plus one padding slot) and features."""
    cats = np.zeros((1, len(hist) + 1), np.int32)
    feats = np.zeros((1, len(hist) + 1, N_HIST), np.float32)
    for slot, (cat, decayed) in enumerate(hist.items()):
        cats[0, slot] = cat
        feats[0, slot, 0] = 1.0
        feats[0, slot, HIST_FEATURES.index("decay_mid")] = decayed
    return {"seq_cat": np.array([seq_cat]), "seq_age": np.array([seq_age], np.float32), "hist_cat": cats,
            "hist_feat": feats}


def test_every_baseline_scores_every_category_and_never_the_reserved_columns() -> None:
    scores = score_all(fit_baselines(stats(), V), inputs([2, 3], [5.0, 1.0], {2: 0.2, 3: 0.9}))
    assert set(scores) == set(BASELINE_NAMES)
    for name, s in scores.items():
        assert s.shape == (1, V), name
        assert np.all(s[:, :2] <= 1e-5), name


def test_rules() -> None:
    models = fit_baselines(stats(), V)
    scores = score_all(models, inputs([5, 2, 3, 3], [9.2, 3.5, 0.8, 0.3], {5: 0.1, 2: 0.4, 3: 1.5}))
    assert np.argmax(scores["popularity"][0]) == 2  # highest label rate
    assert np.argmax(scores["decayed_frequency"][0]) == 3  # largest decayed count
    assert scores["decayed_frequency"][0, 4] == pytest.approx(0.0, abs=1e-5)  # not in the history
    assert np.argmax(scores["last_day"][0]) == 3  # the only category of the last active day
    assert np.argmax(scores["markov"][0]) == 4  # most frequent successor of the last category (3)
    assert models.popularity[2] == pytest.approx(0.8)


def test_markov_without_history_falls_back_to_popularity_and_bad_stats_fail() -> None:
    models = fit_baselines(stats(), V)
    s = score_all(models, inputs([0, 0], [0.0, 0.0], {}))["markov"]
    assert np.argmax(s[0]) == 2
    with pytest.raises(ValueError, match="label_counts"):
        fit_baselines(stats(), V + 1)
    with pytest.raises(ValueError, match="decay_feature"):
        fit_baselines(stats(), V, "decay_forever")
