"""Baselines scored exactly like the model: global popularity, the user's last active day, decayed
user frequency and first-order Markov over categories.

Each baseline turns the sparse example inputs of :meth:`pipelines.features.batch.Examples.model_inputs`
(sequences [B, L], history ``hist_cat`` [B, K] / ``hist_feat`` [B, K, 8]) into a score matrix
[B, V] (higher = more likely). Ties are broken by a tiny share of popularity, so
every list is full. Columns 0 (padding) and 1 (OOV) score 0 and are never ranked by evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipelines.features.examples import DECAY_HALF_LIVES, HIST_FEATURES
from pipelines.features.vocab import RESERVED

BASELINE_NAMES = ("popularity", "last_day", "decayed_frequency", "markov")
DECAY_FEATURES = ("decay_short", "decay_mid", "decay_long")  # the history features decayed_frequency may rank by
_TIE = 1e-6  # weight of popularity as tie-breaker: never outranks a real signal
_MARKOV_SMOOTHING = 1.0


@dataclasses.dataclass(frozen=True)
class BaselineModels:
    """Fitted baselines: label rate per category, row-stochastic transition matrix, decay choice."""

    popularity: np.ndarray  # [V], probability a training example's label holds the category
    transitions: np.ndarray  # [V, V], P(next category | current category), smoothed toward popularity
    decay_feature: int = HIST_FEATURES.index("decay_mid")

    @property
    def decay_half_life_horizons(self) -> float:
        return DECAY_HALF_LIVES[self.decay_feature - HIST_FEATURES.index("decay_short")]


def fit_baselines(stats: dict[str, Any], n_categories: int, decay_feature: str = "decay_mid") -> BaselineModels:
    """Baselines from the training statistics of :func:`pipelines.features.encoding.baseline_statistics`."""
    if decay_feature not in DECAY_FEATURES:
        raise ValueError(f"decay_feature={decay_feature!r} is not one of decay_short, decay_mid, decay_long")
    counts = np.asarray(stats["label_counts"], np.float64)
    if counts.shape != (n_categories,):
        raise ValueError(f"baseline stats label_counts has {counts.shape[0]} entries, expected {n_categories}")
    popularity = counts / max(stats["n_train_examples"], 1)
    popularity[:RESERVED] = 0.0
    matrix = np.zeros((n_categories, n_categories), np.float64)
    for src, dst, n in stats["transitions"]:
        matrix[src, dst] += n
    matrix[:, :RESERVED] = 0.0
    prior = popularity / max(popularity.sum(), 1e-12)
    matrix = (matrix + _MARKOV_SMOOTHING * prior) / (matrix.sum(axis=1, keepdims=True) + _MARKOV_SMOOTHING)
    return BaselineModels(popularity, matrix, HIST_FEATURES.index(decay_feature))


def _last_category(seq_cat: np.ndarray) -> np.ndarray:
    return seq_cat[:, -1]  # right-aligned: the last column is the most recent event (0 when no history)


def score_popularity(models: BaselineModels, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return np.broadcast_to(models.popularity, (inputs["seq_cat"].shape[0], models.popularity.shape[0])).copy()


def score_last_day(models: BaselineModels, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Categories of the user's last active day (age in whole days equal to the latest event's),
    ranked by their count on that day."""
    cats, ages = inputs["seq_cat"], inputs["seq_age"]
    valid = cats > 0
    day = np.where(valid, np.ceil(ages), np.inf)
    last_day = day.min(axis=1, keepdims=True)
    on_last = valid & (day == last_day)
    scores = np.zeros((cats.shape[0], models.popularity.shape[0]))
    rows = np.repeat(np.arange(cats.shape[0])[:, None], cats.shape[1], axis=1)
    np.add.at(scores, (rows[on_last], cats[on_last]), 1.0)
    scores[:, :RESERVED] = 0.0
    return scores + _TIE * models.popularity


def history_matrix(inputs: dict[str, np.ndarray], feature: int, n_categories: int) -> np.ndarray:
    """One history feature of every (example, category) as a dense [B, V] matrix (0 where the
    category is not in the example's history)."""
    cats = inputs["hist_cat"]
    out = np.zeros((len(cats), n_categories))
    rows = np.broadcast_to(np.arange(len(cats))[:, None], cats.shape)
    out[rows, cats] = inputs["hist_feat"][:, :, feature]
    out[:, 0] = 0.0  # padding slots of the sparse history
    return out


def score_decayed_frequency(models: BaselineModels, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Exponentially decayed count of each category in the user's look-back history."""
    scores = history_matrix(inputs, models.decay_feature, models.popularity.shape[0])
    scores[:, :RESERVED] = 0.0
    return scores + _TIE * models.popularity


def score_markov(models: BaselineModels, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """P(next category | the user's most recent category); popularity when there is no history."""
    last = _last_category(inputs["seq_cat"])
    scores = models.transitions[last].copy()
    scores[last == 0] = models.popularity / max(models.popularity.sum(), 1e-12)
    return scores + _TIE * models.popularity


SCORERS = {
    "popularity": score_popularity,
    "last_day": score_last_day,
    "decayed_frequency": score_decayed_frequency,
    "markov": score_markov,
}


def score_all(models: BaselineModels, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Score matrices [B, V] of every baseline, keyed by :data:`BASELINE_NAMES`."""
    return {name: SCORERS[name](models, inputs) for name in BASELINE_NAMES}
