"""The demo's data and model (``make run``): on :func:`pipelines.data.migrations.generate_migrations`
with its noise, the training flow (validate, clean, encode, train, evaluate, gate) promotes the
model ON MERIT, and the planted migrations show up in the published ``emerging_categories`` more
often than in the best baseline's emerging list (both judged from the generator's truth file).

Runs the task bodies in this process (no Airflow) with the demo's sizes and settings
(:data:`pipelines.devstack.demo.DEMO_DATA`, :data:`pipelines.devstack.demo.DEMO_SETTINGS`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pyarrow.compute as pc
import pytest

from pipelines.config import load_settings
from pipelines.data.events import read_clean_events
from pipelines.data.landing import land_events
from pipelines.data.migrations import generate_migrations
from pipelines.devstack.demo import DEMO_DATA, DEMO_SETTINGS, DEMO_START
from pipelines.flows import scoring as scoring_flow
from pipelines.flows.training import run_training
from pipelines.ops.monitor_baselines import baseline_rows
from pipelines.platform.dates import end_of_day, start_of_day
from pipelines.serving.interests import params_from_settings
from pipelines.serving.predictions import read_predictions

pytestmark = [pytest.mark.services, pytest.mark.slow]
WEEK = 7


def _demo_settings(settings):
    """The test's bucket and services with the demo's IM_* settings and a model name of its own."""
    demo = load_settings(environ=DEMO_SETTINGS)
    fields = {f.name: getattr(demo, f.name) for f in dataclasses.fields(demo) if f"IM_{f.name.upper()}" in DEMO_SETTINGS}
    return dataclasses.replace(settings, model_name=f"demo-{settings.bucket}", **fields)


def _planted_hits(rows, planted: dict[str, set[str]]) -> tuple[int, int]:
    """(planted categories listed in the rows' emerging_categories, planted categories in all)."""
    emerging = dict(zip(rows["user_id"].to_pylist(), rows["emerging_categories"].to_pylist(), strict=True))
    hits = sum(len(cats & set(emerging.get(user) or [])) for user, cats in planted.items())
    return hits, sum(len(c) for c in planted.values())


def test_demo_model_passes_the_gate_and_sees_the_planted_migrations(settings, tmp_path):
    settings = _demo_settings(settings)
    # the demo's data with a week more: the model trains on the demo's window only and is judged on
    # the planted migrations that start right after it (days it never saw)
    days = DEMO_DATA["days"]
    data = generate_migrations(tmp_path / "data", start=DEMO_START, noise=True,
                               **{**DEMO_DATA, "days": days + WEEK})
    land_events(settings, data.events_path, "taobao", name="migrations")
    land_events(settings, data.late_path, "taobao", name="migrations_late")

    end = DEMO_START + dt.timedelta(days=days - 1)
    results = run_training(settings, data_start=DEMO_START.isoformat(), data_end=end.isoformat(),
                           run_name="demo-test")
    decision = results["register"]
    shown = ("published_ndcg_at_5", "published_recall_at_5", "published_explore_recall_at_3",
             "published_migration_auc", "published_brier", "ndcg_at_5")
    print(json.dumps({k: round(v, 4) for k, v in sorted(results["evaluate"].items())
                      if k.endswith(shown) and k.count("/") <= 2}, indent=0))
    print(json.dumps({k: decision.get(k) for k in ("decision", "reason", "challenger", "baselines")}, default=str))
    assert decision["decision"] == "promoted", decision["reason"]

    # score the last day of the training window, as the scoring DAG does
    day = end
    scoring_flow.prepare_scoring_input(settings, day, report_id="demo-test")
    model = scoring_flow.resolve_champion(settings)
    parts = [scoring_flow.score_shard(settings, day, model, shard)
             for shard in scoring_flow.plan_scoring(settings, day, model)]
    scoring_flow.publish_predictions(settings, day, model, parts)
    rows = read_predictions(settings, day)

    as_of = end_of_day(day)
    first = day - dt.timedelta(days=settings.lookback_days - 1)
    events = read_clean_events(settings, first, day)
    known: dict[str, set[str]] = {}
    for user, cat in zip(events["user_id"].to_pylist(), events["category_id"].to_pylist(), strict=True):
        known.setdefault(user, set()).add(cat)
    # planted migrations that start in the horizon, to categories new to the user as of D
    horizon = {(day + dt.timedelta(days=d)).isoformat() for d in range(1, settings.horizon_days + 1)}
    planted: dict[str, set[str]] = {}
    kinds: dict[str, int] = {}
    for m in json.loads(data.truth_path.read_text())["migrations"]:
        new = set(m["to_categories"]) - known.get(m["user_id"], set())
        if m["date"] in horizon and new and m["user_id"] in known:
            planted.setdefault(m["user_id"], set()).update(new)
            kinds[m["kind"]] = kinds.get(m["kind"], 0) + 1
    print(f"planted migrations to new categories in [{min(horizon)}, {max(horizon)}]: {kinds}")
    assert sum(len(c) for c in planted.values()) >= 30, planted

    baselines = baseline_rows(events, rows["user_id"].to_pylist(), as_of, horizon_days=settings.horizon_days,
                              lookback_days=settings.lookback_days, params=params_from_settings(settings),
                              top_k=settings.top_k, top_n=settings.scoring_top_n)
    model_hits, total = _planted_hits(rows, planted)
    hits = {name: _planted_hits(t, planted)[0] for name, t in baselines.items()}
    print(f"planted categories in the baselines' emerging lists: {hits}")
    best_name, best_hits = max(hits.items(), key=lambda x: x[1])
    print(f"planted new categories in the horizon: {total}; in emerging_categories: model {model_hits}, "
          f"best baseline {best_name} {best_hits}")
    assert model_hits > best_hits
    assert pc.sum(pc.list_value_length(rows["emerging_categories"])).as_py() > 0
    assert start_of_day(first) < as_of
