"""P(active in the horizon): fitted on every look-back user, it makes published probabilities
unconditional (P(c) = P(active) x P(c | active)) and ranks users by how likely they act."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.features.batch import index_events
from pipelines.features.examples import EncodingConfig
from pipelines.features.vocab import build_vocab
from pipelines.model.activity import FEATURES, ActivityModel, activity_features, fit_activity
from pipelines.model.core import ModelCore
from pipelines.model.network import Predictor, build_model
from pipelines.model.outcomes import auc
from pipelines.serving import engine
from tests.test_engine import SPEC, events

START = pd.Timestamp("2024-01-01", tz="UTC")


def _heterogeneous(n_users: int = 1500, days: int = 60, seed: int = 0) -> pa.Table:
    """Users whose event rates differ a lot (a gamma mix), each a Poisson process over ``days``."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.5, 2.0, n_users)
    counts = rng.poisson(rate * days)
    users = np.repeat(np.arange(n_users), counts)
    ts = START + pd.to_timedelta(rng.uniform(0, days * 86400, counts.sum()), unit="s")
    return pa.table({"user_id": [f"u{u}" for u in users], "item_id": ["i"] * len(users),
                     "category_id": [f"c{u % 5}" for u in users], "behavior": ["view"] * len(users),
                     "ts": pa.array(ts.as_unit("us"))})


def test_p_active_ranks_and_calibrates_on_a_later_as_of_time() -> None:
    index = index_events(_heterogeneous(), build_vocab([f"c{i}" for i in range(5)], 1, ["view"]))
    fit_times = [dt.datetime(2024, 1, 20, tzinfo=dt.UTC) + dt.timedelta(days=3 * i) for i in range(8)]
    model = fit_activity(index, fit_times, lookback_days=14, horizon_days=3)
    assert model is not None and 0 < model.base_rate < 1 and model.fitted_rows > 5000
    later = dt.datetime(2024, 2, 25, tzinfo=dt.UTC)  # after every fitted horizon
    t = later.timestamp()
    user_of = index.user_of_event()
    looked_back = np.flatnonzero(np.bincount(user_of[(index.ts >= t - 14 * 86400) & (index.ts < t)],
                                             minlength=index.n_users))
    acted = (np.bincount(user_of[(index.ts >= t) & (index.ts < t + 3 * 86400)], minlength=index.n_users) > 0)
    p = model.p_active(index, looked_back, later)
    assert auc(p, acted[looked_back]) > 0.8
    assert abs(p.mean() - acted[looked_back].mean()) < 0.05  # calibrated on average
    again = ActivityModel.from_dict(model.to_dict())
    np.testing.assert_allclose(again.p_active(index, looked_back, later), p)
    with pytest.raises(ValueError, match="features"):
        ActivityModel.from_dict({**model.to_dict(), "features": ["other"]})


def test_features_count_the_window_only() -> None:
    table = pa.table({"user_id": ["a"] * 4 + ["b"], "item_id": ["i"] * 5, "category_id": ["c"] * 5,
                      "behavior": ["view"] * 5,
                      "ts": pa.array(pd.to_datetime(["2024-01-01 10:00", "2024-01-09 10:00", "2024-01-09 12:00",
                                                     "2024-01-10 09:00", "2024-01-02 00:00"], utc=True).as_unit("us"))})
    index = index_events(table, build_vocab(["c"], 1, ["view"]))
    as_of = dt.datetime(2024, 1, 10, tzinfo=dt.UTC).timestamp()  # the 01-10 09:00 event is after it
    raw = np.round(np.expm1(activity_features(index, np.arange(2), as_of, lookback_days=7)), 6)
    a, b = dict(zip(FEATURES, raw[0], strict=True)), dict(zip(FEATURES, raw[1], strict=True))
    assert (a["events_1d"], a["events_7d"], a["events_window"], a["active_days"]) == (2, 2, 2, 1)
    assert a["days_since_last"] == pytest.approx(0.5, abs=1e-5) and a["days_since_first"] == pytest.approx(14 / 24, abs=1e-5)
    assert b["events_window"] == 0  # 2024-01-02 is before the 7-day window


def test_scoring_publishes_p_active_times_the_networks_probabilities() -> None:
    table = events(n_users=30)
    vocab = build_vocab([f"c{i}" for i in range(10)], 1, ["view", "buy", "cart"])
    config = EncodingConfig(horizon_days=1, lookback_days=3, seq_len=5)
    predictor = Predictor(build_model(vocab.n_categories, vocab.n_behaviors, 5, embed_dim=8))
    index = index_events(table, vocab)
    activity = fit_activity(index, [dt.datetime(2024, 1, 2, 12, tzinfo=dt.UTC)], lookback_days=3, horizon_days=1)
    assert activity is not None
    plain = pa.concat_tables(engine.CoreScorer(ModelCore(predictor, vocab, config)).score(table, SPEC))
    scaled = pa.concat_tables(engine.CoreScorer(ModelCore(predictor, vocab, config, activity)).score(table, SPEC))
    p = dict(zip(index.users.to_pylist(), activity.p_active(index, np.arange(index.n_users), SPEC.as_of), strict=True))
    by_user = {r["user_id"]: r for r in plain.to_pylist()}
    for row in scaled.to_pylist():
        before = by_user[row["user_id"]]
        assert row["predicted_categories"] == before["predicted_categories"]  # the ranking is the same
        np.testing.assert_allclose(row["predicted_scores"], np.asarray(before["predicted_scores"]) * p[row["user_id"]],
                                   rtol=1e-5)
        assert row["migration_score"] <= before["migration_score"] + 1e-6
