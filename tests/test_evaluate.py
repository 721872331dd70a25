"""Evaluation metrics on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.model.metrics import bootstrap_ci, comparison_table, example_metrics, summarize


def case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # columns: pad, OOV, a, b, c, d
    scores = np.array([[0.9, 0.9, 0.8, 0.1, 0.6, 0.3],
                       [0.0, 0.0, 0.1, 0.2, 0.3, 0.9]])
    labels = np.array([[0, 0, 1, 0, 1, 0],
                       [0, 0, 1, 0, 0, 0]], float)
    known = np.array([[0, 0, 1, 1, 0, 0],
                      [0, 0, 0, 0, 0, 1]], float)
    return scores, labels, known


def test_ranked_metrics_by_hand() -> None:
    per = example_metrics(*case(), ks=(1, 2), emerging_ks=(1,), probabilities=True)
    # user 0 ranks a, c, d, b (padding/OOV never ranked): both truths in the top 2
    assert per["recall_at_2"][0] == 1.0 and per["ndcg_at_2"][0] == pytest.approx(1.0)
    assert per["precision_at_1"][0] == 1.0
    # user 1 ranks d, c, b, a: truth a is last
    assert per["recall_at_2"][1] == 0.0 and per["hitrate_at_2"][1] == 0.0
    # emerging list removes known categories: user 0 -> c first (new, hit); user 1 -> c first (miss)
    assert per["explore_recall_at_1"].tolist() == [1.0, 0.0]
    assert per["repeat_recall_at_1"][0] == 1.0 and np.isnan(per["repeat_recall_at_1"][1])
    assert per["gauc"][0] == pytest.approx(1.0) and per["gauc"][1] == pytest.approx(0.0)
    assert per["brier"][0] == pytest.approx(np.mean([(0.8 - 1) ** 2, 0.1 ** 2, (0.6 - 1) ** 2, 0.3 ** 2]))
    summary = summarize(per)
    assert summary["recall_at_2"] == pytest.approx(0.5)
    # both users touch a new category (c, a): the migration AUC is undefined, not invented
    assert per["has_new"].tolist() == [1.0, 1.0] and np.isnan(summary["migration_auc"])


def test_ndcg_of_a_single_truth_at_rank_two() -> None:
    scores = np.array([[0, 0, 0.9, 0.8]])
    labels = np.array([[0, 0, 0, 1.0]])
    per = example_metrics(scores, labels, np.zeros_like(labels), ks=(2,), emerging_ks=(1,))
    assert per["ndcg_at_2"][0] == pytest.approx(1 / np.log2(3))


def test_shape_mismatch_is_an_error() -> None:
    scores, labels, known = case()
    with pytest.raises(ValueError, match="shapes differ"):
        example_metrics(scores[:, :4], labels, known, ks=(1,))


def test_bootstrap_interval_brackets_the_mean_and_differences_are_zero_for_identical_methods() -> None:
    rng = np.random.default_rng(0)
    values = {"m": rng.random(400)}
    users = np.repeat(np.arange(100), 4)
    lo, hi = bootstrap_ci(values, users, ["m"], n_boot=200)["m"]
    assert lo < values["m"].mean() < hi
    assert bootstrap_ci(values, users, ["m"], baseline=values, n_boot=50)["m"] == (0.0, 0.0)


def test_comparison_table_has_one_row_per_method() -> None:
    per = example_metrics(*case(), ks=(1, 2), probabilities=True)
    table = comparison_table({"model": summarize(per), "popularity": summarize(per)}, (1, 2))
    assert list(table.index) == ["model", "popularity"] and "ndcg_at_1" in table.columns


def test_the_early_stopping_ndcg_is_example_metrics_ndcg() -> None:
    from pipelines.model.metrics import ndcg_at

    rng = np.random.default_rng(3)
    scores = np.round(rng.random((300, 40)), 1)  # many ties
    labels = (rng.random((300, 40)) < 0.1).astype(float)
    labels[:5] = 0.0  # rows without truth: NaN in both
    for k in (1, 5, 50):
        expected = example_metrics(scores, labels, np.zeros_like(labels), (k,))[f"ndcg_at_{k}"]
        np.testing.assert_array_equal(ndcg_at(scores, labels, k), expected)
