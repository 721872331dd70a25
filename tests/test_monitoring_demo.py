"""Monitoring on the demo's data: synthetic Taobao-format logs landed, validated and cleaned by the
real data path, three days scored by real scoring, monitored once their horizon has passed, and
every model metric checked against a plain pandas/Python computation from the clean events."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from pipelines.data import landing, synthetic
from pipelines.data.events import read_clean_events
from pipelines.flows import scoring as flows
from pipelines.ops import monitoring
from pipelines.platform import layout, storage
from pipelines.serving import predictions, scoring
from tests import pyfunc_models as pm
from tests.test_monitoring import _independent

pytestmark = [pytest.mark.services, pytest.mark.slow]

START = dt.date(2017, 11, 1)
DAYS = 12
H = 3
LOOKBACK = 7


def test_monitoring_of_scored_demo_days_matches_an_independent_computation(settings, tmp_path):
    configured = dataclasses.replace(pm.isolate(settings), lookback_days=LOOKBACK, horizon_days=H)
    data = synthetic.generate_taobao(tmp_path / "data", users=200, days=DAYS, categories=30, start=START, seed=7)
    landed = landing.land_events(configured, data.events_path, "taobao", name="synthetic")
    last = max(landed.dates)
    for day in sorted(landed.dates):
        flows.prepare_scoring_input(configured, day, report_id="monitoring-demo")
    pm.register_as_champion(configured)
    scored = [last - dt.timedelta(days=H + 2), last - dt.timedelta(days=H + 1), last - dt.timedelta(days=H)]
    assert monitoring.monitor_pending_table(configured) == "monitoring: no published predictions yet"
    scoring.score_date(configured, last)
    assert "no published day has its horizon behind it yet" in monitoring.monitor_pending_table(configured)
    for day in scored:
        scoring.score_date(configured, day)
    assert monitoring.pending_days(configured) == scored  # `last` is published but its horizon is not over
    table = monitoring.monitor_pending_table(configured)  # what `make run` prints
    assert table.count("model v1") == 3 and table.count("check: ") == 3
    reports = [storage.get_json(configured, layout.monitoring_report_key(day, "metrics")) for day in scored]

    events = read_clean_events(configured, None, last).to_pandas()
    events["day"] = events["ts"].dt.date
    for day, report in zip(scored, reports, strict=True):
        def sets(first: dt.date, end: dt.date, frame=events) -> dict[str, set[str]]:
            inside = frame[(frame["day"] >= first) & (frame["day"] <= end)]
            return {u: set(g) for u, g in inside.groupby("user_id")["category_id"]}

        truth = sets(day + dt.timedelta(days=1), day + dt.timedelta(days=H))
        known = sets(day - dt.timedelta(days=LOOKBACK - 1), day)
        rows = predictions.read_predictions(configured, day).to_pylist()
        expected = _independent(rows, truth, known)
        for name, value in expected.items():
            assert report["metrics"]["model"][name] == pytest.approx(value, rel=1e-6), (day, name)
        assert report["users"] == len(rows) and set(report["metrics"]) == {"model", "decayed_frequency", "markov",
                                                                             "popularity"}
    assert monitoring.pending_days(configured) == []
