"""Outcome monitoring of partitions published by real scoring, on the real S3 and MLflow services:
the report against a plain-Python recomputation from the same events, the MLflow time series, and
a planted drift (a champion ranking the least popular categories first) firing the alert."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
from collections import defaultdict

import pytest

from pipelines.ops import cli, monitor_alerts, monitoring
from pipelines.platform import layout, storage, tracking
from pipelines.serving import predictions
from tests import pyfunc_models as pm
from tests.published import publish

pytestmark = pytest.mark.services

D = dt.date(2024, 3, 10)
H = 2
LOOKBACK = 5
DAYS = [D - dt.timedelta(days=LOOKBACK - 1 - i) for i in range(LOOKBACK + 2 + H)]  # D-4 .. D+4


def _events() -> dict[dt.date, list[tuple[str, str, str, str, int]]]:
    """30 users drifting slowly over 8 categories; some idle days so that not every user has truth."""
    out = {}
    for offset, day in enumerate(DAYS):
        rows = []
        for u in range(30):
            if (u + offset) % 5 == 0:
                continue
            rows.append((f"u{u}", f"i{u}-{offset}", f"c{(u + offset // 2) % 8}", "view", 8 + u % 10))
            if u % 3 == 0:
                rows.append((f"u{u}", f"j{u}-{offset}", f"c{(u * 7 + offset) % 8}", "buy", 20))
        out[day] = rows
    return out


def _sets(events, first: dt.date, last: dt.date) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for day, rows in events.items():
        if first <= day <= last:
            for user, _, category, _, _ in rows:
                out[user].add(category)
    return out


def _cli(settings, capsys, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    cli.register_cli(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    capsys.readouterr()
    code = args.func(args, settings)
    out = capsys.readouterr()
    return code, out.out, out.err


def _independent(rows: list[dict], truth: dict[str, set[str]], known: dict[str, set[str]]) -> dict[str, float]:
    """Recall/NDCG@5, explore recall@3, migration AUC (all pairs) and Brier, loop by loop."""
    recalls, ndcgs, explores, pos, neg, brier = [], [], [], [], [], []
    for row in rows:
        t = truth.get(row["user_id"], set())
        new = t - known.get(row["user_id"], set())
        top = row["predicted_categories"][:5]
        if t:
            recalls.append(len([c for c in top if c in t]) / len(t))
            dcg = sum(1 / math.log2(i + 2) for i, c in enumerate(top) if c in t)
            ndcgs.append(dcg / sum(1 / math.log2(i + 2) for i in range(min(len(t), 5))))
        if new:
            explores.append(len([c for c in row["emerging_categories"][:3] if c in new]) / len(new))
        (pos if new else neg).append(row["migration_score"])
        brier += [(p - (c in t)) ** 2 for c, p in zip(row["predicted_categories"], row["predicted_scores"], strict=True)]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return {"recall_at_5": sum(recalls) / len(recalls), "ndcg_at_5": sum(ndcgs) / len(ndcgs),
            "explore_recall_at_3": sum(explores) / len(explores), "migration_auc": wins / (len(pos) * len(neg)),
            "brier": sum(brier) / len(brier)}


def _popularity_recall(events, day: dt.date, truth: dict[str, set[str]], users: list[str]) -> float:
    """The popularity baseline: categories by the number of users who touched them in the last H days
    of the look-back (ties by id), the same top 5 for everyone."""
    recent = _sets(events, day - dt.timedelta(days=H - 1), day)
    counts: dict[str, int] = defaultdict(int)
    for cats in recent.values():
        for c in cats:
            counts[c] += 1
    top = sorted(counts, key=lambda c: (-counts[c], c))[:5]
    recalls = [len([c for c in top if c in truth[u]]) / len(truth[u]) for u in users if truth.get(u)]
    return sum(recalls) / len(recalls)


def test_published_day_report_matches_an_independent_computation(settings):
    events = _events()
    configured = publish(settings, events, [D], lookback_days=LOOKBACK, horizon_days=H)
    assert monitoring.pending_days(configured) == [D]
    report = monitoring.monitor_day(configured, D)

    rows = predictions.read_predictions(configured, D).to_pylist()
    truth = _sets(events, D + dt.timedelta(days=1), D + dt.timedelta(days=H))
    known = _sets(events, D - dt.timedelta(days=LOOKBACK - 1), D)
    expected = _independent(rows, truth, known)
    model = report["metrics"]["model"]
    for name, value in expected.items():
        assert model[name] == pytest.approx(value, rel=1e-6), name
    assert model["users"] == len(rows) and model["users_with_truth"] == len([r for r in rows if truth.get(r["user_id"])])
    popularity = report["metrics"]["popularity"]
    assert popularity["recall_at_5"] == pytest.approx(_popularity_recall(events, D, truth, [r["user_id"] for r in rows]))
    assert set(report["metrics"]) == {"model", "decayed_frequency", "markov", "popularity"}
    assert report["check"]["metric"] == "ndcg_at_5" and report["check"]["degraded"] in (True, False)

    stored = storage.get_json(configured, layout.monitoring_report_key(D, "metrics"))
    assert stored["model_version"] == report["model_version"] and stored["metrics"] == report["metrics"]
    table = storage.read_parquet(configured, layout.monitoring_report_key(D, "table")).to_pylist()
    assert {r["method"]: r["ndcg_at_5"] for r in table}["model"] == pytest.approx(model["ndcg_at_5"])
    history = tracking.client(configured).get_metric_history(report["mlflow_run_id"], "model/ndcg_at_5")
    assert [(h.step, h.value) for h in history] == [(monitoring.step_of(D), pytest.approx(model["ndcg_at_5"]))]
    assert monitoring.pending_days(configured) == []
    assert "decayed_frequency" in monitoring.print_recent(configured)

    for day in DAYS:
        if day >= D + dt.timedelta(days=H):  # the truth window's last day and after: not landed yet
            storage.delete_prefix(configured, layout.partition_prefix(layout.CLEAN, day))
    with pytest.raises(monitoring.HorizonNotPassed, match=f"clean events end at {D + dt.timedelta(days=H - 1)}"):
        monitoring.monitor_day(configured, D)
    with pytest.raises(predictions.PredictionsNotFound):
        monitoring.monitor_day(configured, D - dt.timedelta(days=1))


def test_planted_drift_fires_the_alert_after_n_degraded_days(settings, capsys):
    days = [D, D + dt.timedelta(days=1)]
    configured = dataclasses.replace(pm.isolate(settings), lookback_days=LOOKBACK, horizon_days=H,
                                     monitor_consecutive_days=2, monitor_margin=0.02)
    pm.write_clean(configured, pm.clean_events(_events()))
    version = pm.register_as_champion(configured, variant="bad")  # least popular first: worse than any baseline
    from pipelines.serving import scoring

    for day in days:
        scoring.score_date(configured, day)
    first = monitoring.monitor_day(configured, days[0])
    assert first["check"]["degraded"] and "below the best baseline" in first["check"]["summary"]
    assert not first["streak"]["fired"]
    assert monitor_alerts.raise_if_fired(configured, first["streak"])["degraded_days"] == [days[0].isoformat()]

    code, out, err = _cli(configured, capsys, "monitor", "--json")  # the pending day: days[1]
    (second,) = json.loads(out)
    assert code == 0 and second["as_of_date"] == days[1].isoformat()
    assert second["streak"]["fired"] and second["streak"]["model_version"] == version
    assert f"warning: model {configured.model_name} v{version} degraded for 2 consecutive" in err
    code, out, _ = _cli(configured, capsys, "monitor")
    assert code == 0 and out.startswith("nothing to monitor")
    code, _, err = _cli(configured, capsys, "monitor", "--date", (days[1] + dt.timedelta(days=5)).isoformat())
    assert code == 1 and "no published predictions" in err
    with pytest.raises(monitor_alerts.ModelDegraded, match=f"v{version} degraded for 2 consecutive") as caught:
        monitor_alerts.raise_if_fired(configured, second["streak"])
    alert = monitor_alerts.degraded_alert({"exception": caught.value, "run_id": "r1"})
    assert alert is not None and alert.kind == "model_degraded" and "best baseline" in alert.text()
    assert monitor_alerts.degraded_alert({"exception": ValueError("x")}) is None

    # a champion whose own evaluation promised far more is degraded against it too
    _, uri = pm.log_model(configured, metrics={"model/ndcg_at_5": 0.999})
    promised = str(tracking.register_model(configured, uri, {}).version)
    assert monitor_alerts.evaluation_metric(configured, configured.model_name, promised) == pytest.approx(0.999)
    verdict = monitor_alerts.judge_day(second["metrics"] | {"model": {"ndcg_at_5": 0.9}}, "ndcg_at_5", 0.02, 0.999)
    assert verdict["degraded"] and "own evaluation 0.9990" in verdict["summary"]


def _sets_between(events, start: dt.datetime, end: dt.datetime) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for day, rows in events.items():
        for user, _, category, _, hour in rows:
            if start <= dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC) < end:
                out[user].add(category)
    return out


def test_intraday_partition_is_judged_from_its_as_of_hour(settings, capsys):
    """An intraday partition of D+1 hour 10 (rows of 12 users, as of 11:00): truth in [D+1 11:00,
    D+1+H 11:00), known from the look-back's first day up to 11:00."""
    events = _events()
    configured = publish(settings, events, [D], lookback_days=LOOKBACK, horizon_days=H)
    day, hour = D + dt.timedelta(days=1), 10
    as_of = dt.datetime.combine(day, dt.time(hour + 1), tzinfo=dt.UTC)
    rows = predictions.read_predictions(configured, D).slice(0, 12)
    part = layout.intraday_prefix(day, hour) + "part-00000.parquet"
    storage.write_parquet(configured, part, rows)
    storage.put_json(configured, layout.intraday_success_key(day, hour), {
        "model_name": configured.model_name, "model_version": "1", "as_of": as_of.isoformat(), "horizon_days": H,
        "row_count": rows.num_rows, "files": [part]})
    code, out, _ = _cli(configured, capsys, "monitor", "--date", D.isoformat(), "--intraday", "--json")
    assert code == 0
    (report,) = json.loads(out)
    assert report["intraday"] == []  # D has no intraday partition: D+1 has
    from pipelines.ops import monitor_intraday

    assert monitor_intraday.published_hours(configured, day) == [hour]
    got = monitor_intraday.monitor_hour(configured, day, hour)
    truth = _sets_between(events, as_of, as_of + dt.timedelta(days=H))
    known = _sets_between(events, dt.datetime.combine(day - dt.timedelta(days=LOOKBACK - 1), dt.time(), tzinfo=dt.UTC),
                          as_of)
    expected = _independent(rows.to_pylist(), truth, known)
    for name, value in expected.items():
        assert got["metrics"]["model"][name] == pytest.approx(value, rel=1e-6), name
    assert got["users"] == 12 and got["truth_window"][0] == as_of.isoformat()
    stored = storage.get_json(configured, layout.intraday_monitoring_report_key(day, hour, "metrics"))
    assert stored["metrics"] == got["metrics"]
    storage.delete_prefix(configured, layout.partition_prefix(layout.CLEAN, DAYS[-1]))
    storage.delete_prefix(configured, layout.partition_prefix(layout.CLEAN, DAYS[-2]))  # D+1+H: not landed
    (waiting,) = monitor_intraday.monitor_intraday_day(configured, day)
    assert waiting["hour"] == hour and "clean events end at" in waiting["waiting"]


def test_a_day_inside_the_models_training_window_is_reported_but_not_judged(settings):
    # Scoring warned "do not judge the model on this day" for a backfilled day the model was trained
    # past, yet monitor judged it (here: degraded) and counted it toward the consecutive-days alert.
    configured = dataclasses.replace(pm.isolate(settings), lookback_days=LOOKBACK, horizon_days=H,
                                     monitor_consecutive_days=1, monitor_margin=0.02)
    pm.write_clean(configured, pm.clean_events(_events()))
    version = pm.register_as_champion(configured, variant="bad")
    client = tracking.client(configured)
    run_id = client.get_model_version(configured.model_name, version).run_id
    client.set_tag(run_id, tracking.TAG_DATA_END, (D + dt.timedelta(days=3)).isoformat())
    from pipelines.serving import scoring

    scoring.score_date(configured, D)
    report = monitoring.monitor_day(configured, D)
    check = report["check"]
    assert check["in_training_window"] and not check["degraded"] and check["reasons"] == []
    assert check["summary"].startswith(f"not judged: version {version} was trained on events up to "
                                       f"{D + dt.timedelta(days=3)}, after {D}")
    assert "below the best baseline" in check["summary"] and report["metrics"]["model"]  # still reported
    assert not report["streak"]["fired"]
    # After the training window the same model is judged as before.
    client.set_tag(run_id, tracking.TAG_DATA_END, (D - dt.timedelta(days=1)).isoformat())
    scoring.score_date(configured, D)
    again = monitoring.monitor_day(configured, D)
    assert again["check"]["degraded"] and not again["check"]["in_training_window"] and again["streak"]["fired"]
