"""The evaluation of what is published (pipelines/model/published.py): test as-of times -> the
scoring engine's contract rows -> the outcomes scorer, pooled over as-of times; users without an
event in the horizon count."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pyarrow as pa
import pytest

from pipelines.config import load_settings
from pipelines.contracts import EVENT_SCHEMA
from pipelines.model import outcomes, published
from pipelines.serving.engine import PyfuncScorer, RowSpec
from pipelines.serving.interests import params_from_settings
from tests.pyfunc_models import FrequencyModel

UTC = dt.UTC
T1 = dt.datetime(2024, 1, 8, tzinfo=UTC)
T2 = dt.datetime(2024, 1, 9, tzinfo=UTC)


class _Loaded:
    """A FrequencyModel as a loaded pyfunc answers: ``predict(frame, params=...)``."""

    def predict(self, frame, params=None):
        return FrequencyModel().predict(None, frame, params)


def _events() -> pa.Table:
    rows = []
    def add(user, cat, day, hour=12):
        rows.append({"user_id": user, "item_id": "i", "category_id": cat, "behavior": "pv",
                     "ts": dt.datetime(2024, 1, day, hour, tzinfo=UTC)})
    for day in (3, 4, 5, 6, 7):
        add("u1", "a", day)
        add("u2", "b", day)
    add("u3", "c", 2)           # active in the look-back, never again: counts, no truth
    add("u1", "a", 8)           # u1 at T1: known category
    add("u2", "z", 8)           # u2 at T1: a new category (migration)
    add("u1", "a", 9)
    add("u4", "a", 9)           # u4 first appears at T2's horizon: not scored at T1
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


def _settings():
    return dataclasses.replace(load_settings(environ={}), lookback_days=7, horizon_days=1, top_k=3, scoring_top_n=10)


def test_one_asof_equals_the_outcomes_scorer_on_the_engine_rows():
    settings, events = _settings(), _events()
    scorer = PyfuncScorer(_Loaded(), "test-model", naive_ts=False)
    summaries = published.published_summaries(settings, scorer, events, [T1])
    assert set(summaries) == {"model", "decayed_frequency", "markov", "popularity"}
    spec = RowSpec(as_of=T1, as_of_date=T1.date(), horizon_days=1, model_name="m", model_version="1",
                   params=params_from_settings(settings), top_k=3, top_n=10, batch_users=100)
    lookback = published._between(events, T1 - dt.timedelta(days=7), T1)
    rows = pa.concat_tables(list(scorer.score(lookback, spec)))
    truth = outcomes.truth_sets(events, T1, T1 + dt.timedelta(days=1))
    known = outcomes.known_sets(events, T1 - dt.timedelta(days=7), T1)
    direct, _ = outcomes.score_rows(rows, truth, known, k=published.K, explore_k=published.EXPLORE_K)
    model = summaries["model"]
    assert model["users"] == 3 and model["users_with_truth"] == 2  # u3 counts without truth
    assert {k: v for k, v in model.items() if k != "calibration"} == pytest.approx(
        {k: v for k, v in direct.items() if k != "calibration"}, nan_ok=True)
    assert model["recall_at_5"] == 0.5  # u1 finds a, u2 cannot list z (never seen): (1 + 0) / 2


def test_asof_times_pool_with_their_own_truth():
    settings, events = _settings(), _events()
    scorer = PyfuncScorer(_Loaded(), "test-model", naive_ts=False)
    summaries = published.published_summaries(settings, scorer, events, [T1, T2])
    # T1: u1, u2, u3 scored; T2: u1, u2, u3 (u3's day 2 is still in the 7-day look-back [2, 9)) -> 6 rows
    assert summaries["model"]["users"] == 6
    assert summaries["model"]["users_with_truth"] == 3  # u1@T1, u2@T1, u1@T2 (u4 was not in T2's look-back)
    metrics = published.flat_metrics(summaries)
    assert metrics["model/published_users"] == 6
    assert "baseline/decayed_frequency/published_recall_at_5" in metrics
    assert not any("calibration" in k for k in metrics)
