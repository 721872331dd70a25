"""Model v2's smaller fixes: the listwise loss ignores out-of-vocabulary labels, and the behaviour
vocabulary comes from the training window only (like the category vocabulary)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.config import load_settings
from pipelines.features.encoding import encode_events
from pipelines.model.train import ranking_loss
from tests.test_encoding import daily_events, events


def _listwise(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The listwise term of the loss (the loss with weight 1 minus the plain BCE)."""
    with_listwise = float(ranking_loss(1.0)(y_true, y_pred))
    return with_listwise - float(ranking_loss(0.0)(y_true, y_pred))


def test_an_oov_label_adds_nothing_to_the_listwise_loss():
    y_pred = np.array([[0.01, 0.3, 0.6, 0.2, 0.1]], np.float32)
    plain = np.array([[0, 0, 1, 0, 0]], np.float32)
    with_oov = np.array([[0, 1, 1, 0, 0]], np.float32)  # column 1 is the OOV bucket
    assert abs(_listwise(with_oov, y_pred) - _listwise(plain, y_pred)) < 1e-4
    assert _listwise(with_oov, y_pred) < 10.0  # before the fix: about 0.5 x 1e4


def test_behaviours_seen_only_after_the_training_window_are_not_in_the_vocabulary():
    settings = load_settings(environ={}, horizon_days=2, lookback_days=10, seq_len=4, asof_step_days=1,
                             eval_asof_step_days=2, validation_asof_count=1, test_asof_count=2)
    late = events([("u0", "a", "teleport", 19.5)])  # a new behaviour on the last day (test period)
    encoded = encode_events(pa.concat_tables([daily_events(), late]), settings)
    assert "teleport" not in encoded.vocab.behaviors
    early = events([("u0", "a", "teleport", 1.5)])
    assert "teleport" in encode_events(pa.concat_tables([daily_events(), early]), settings).vocab.behaviors

