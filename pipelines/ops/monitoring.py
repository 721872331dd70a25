"""Outcome monitoring: each published day D, once its horizon has passed, against what users did next.

For a published ``predictions/dt=D/`` (manifest ``_SUCCESS``) whose truth window ``[D+1, D+1+H)``
is over (the clean partition of D+H exists), :func:`monitor_day`:

1. reads the published rows, and the clean events of the look-back ``[D - lookback + 1, D]``
   (what scoring read) and of the truth window;
2. judges the published rows with :func:`pipelines.model.outcomes.score_rows` (truth = categories
   touched in the window, known = categories of the look-back), and the baselines of the same
   users and day (:mod:`pipelines.ops.monitor_baselines`) with the same scorer;
3. writes ``reports/monitoring/dt=D/metrics.json`` and ``metrics.parquet`` (one row per method);
4. logs one point per day to the monitoring run of the model version that produced D (MLflow run
   ``monitoring <model> v<version>``; step = days since 1970-01-01): ``model/<metric>`` and
   ``baseline/<name>/<metric>``, so the MLflow UI plots model vs baselines over time;
5. judges the day (:mod:`pipelines.ops.monitor_alerts`): degraded or not, and whether the last
   ``IM_MONITOR_CONSECUTIVE_DAYS`` days in a row were.

A rerun for D replaces D's report and re-logs the same step. :func:`pending_days` lists the days to
monitor (published, horizon passed, no report yet).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import sys
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.data.events import clean_dates, read_clean_events
from pipelines.model import outcomes
from pipelines.ops import monitor_alerts
from pipelines.ops.monitor_baselines import baseline_rows
from pipelines.platform import layout, storage
from pipelines.platform.dates import end_of_day, lookback_window, start_of_day, to_date
from pipelines.serving import predictions
from pipelines.serving.interests import params_from_settings

log = logging.getLogger(__name__)

K = 5  # ranking metrics at 5 (the gate metric's k), explore recall at 3 (the evaluation's first emerging k)
EXPLORE_K = 3
_EPOCH_DAY = dt.date(1970, 1, 1)
_EVENT_COLUMNS = ["user_id", "category_id", "behavior", "ts"]
RUN_TAG_VERSION = "im.monitoring.model_version"
RUN_TAG_MODEL = "im.monitoring.model_name"


class HorizonNotPassed(RuntimeError):
    """Day D's truth window is not over yet (no clean partition of D+H)."""


def truth_window(day: dt.date, horizon_days: int) -> tuple[dt.datetime, dt.datetime]:
    """``[D+1, D+1+H)`` as UTC instants: what the prediction of day D is about."""
    return end_of_day(day), start_of_day(day + dt.timedelta(days=1 + horizon_days))


def step_of(day: dt.date) -> int:
    """The MLflow step of day D: days since 1970-01-01."""
    return (day - _EPOCH_DAY).days


def last_clean_day(settings: Settings) -> dt.date | None:
    """The last clean partition that holds a file (an emptied folder may still be listed)."""
    for day in reversed(clean_dates(settings, None, dt.date.max)):
        if storage.list_keys(settings, layout.partition_prefix(layout.CLEAN, day)):
            return day
    return None


def pending_days(settings: Settings, start: dt.date | None = None, end: dt.date | None = None) -> list[dt.date]:
    """Published days in [start, end] whose horizon has passed and that have no monitoring report."""
    last = last_clean_day(settings)
    done = set(storage.list_partitions(settings, layout.MONITORING_REPORTS))
    out = []
    for day in predictions.published_dates(settings):
        if (start and day < start) or (end and day > end) or day in done or last is None:
            continue
        horizon = int(predictions.read_manifest(settings, day).get("horizon_days", settings.horizon_days))
        if last >= day + dt.timedelta(days=horizon):
            out.append(day)
    return out


def finite_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of a summary (no calibration list), NaN as None for JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()
            if k != "calibration"}


def score_day(settings: Settings, day: dt.date, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Summaries (outcomes.score_rows) of the published rows of D and of every baseline on the
    same users, keyed ``model`` and the baseline names."""
    horizon = int(manifest.get("horizon_days", settings.horizon_days))
    return score_at(settings, predictions.read_predictions(settings, day), end_of_day(day), horizon)


def score_at(settings: Settings, rows: pa.Table, as_of: dt.datetime, horizon_days: int) -> dict[str, dict[str, Any]]:
    """Summaries of contract ``rows`` made as of the instant ``as_of`` (UTC) and of every baseline
    on the same users: truth in [as_of, as_of + H days), known in the look-back from the start of
    day (last look-back day - IM_LOOKBACK_DAYS + 1) up to ``as_of``. A daily partition of D has
    ``as_of`` = end of D (truth [D+1, D+1+H)); an intraday one its own as-of hour."""
    last = (as_of - dt.timedelta(microseconds=1)).date()
    first, _ = lookback_window(last, settings.lookback_days)
    end = as_of + dt.timedelta(days=horizon_days)
    events = read_clean_events(settings, first, (end - dt.timedelta(microseconds=1)).date(), columns=_EVENT_COLUMNS)
    known = outcomes.known_sets(events, start_of_day(first), as_of)
    truth = outcomes.truth_sets(events, as_of, end)
    summaries = {"model": outcomes.score_rows(rows, truth, known, k=K, explore_k=EXPLORE_K)[0]}
    lookback_events = events.filter(pc.less(events["ts"], pa.scalar(as_of, events.schema.field("ts").type)))
    tables = baseline_rows(lookback_events, rows["user_id"].to_pylist(), as_of, horizon_days=horizon_days,
                           lookback_days=settings.lookback_days, params=params_from_settings(settings),
                           top_k=settings.top_k, top_n=settings.scoring_top_n)
    for name, table in tables.items():
        summaries[name] = outcomes.score_rows(table, truth, known, k=K, explore_k=EXPLORE_K)[0]
    return summaries


def monitor_day(settings: Settings, date: dt.date | str, *, log_to_mlflow: bool = True,
                intraday: bool = False) -> dict[str, Any]:
    """Monitor published day D (see the module doc) and return its report (the metrics.json
    content plus ``uri`` and ``streak``; with ``intraday`` also ``intraday``: the reports of D's
    intraday partitions, :mod:`pipelines.ops.monitor_intraday`). Raises
    :class:`~pipelines.serving.predictions.PredictionsNotFound` when D is not published and
    :class:`HorizonNotPassed` when its truth window is not over."""
    day = to_date(date, "date")
    manifest = predictions.read_manifest(settings, day)
    horizon = int(manifest.get("horizon_days", settings.horizon_days))
    last_day = day + dt.timedelta(days=horizon)
    last = last_clean_day(settings)
    if last is None or last < last_day:
        raise HorizonNotPassed(f"predictions for {day} are about [{day + dt.timedelta(days=1)}, {last_day}] but clean "
                               f"events end at {last or 'no day'}: monitor {day} once "
                               f"{layout.partition_prefix(layout.CLEAN, last_day)} exists")
    summaries = score_day(settings, day, manifest)
    version = str(manifest["model_version"])
    evaluation = monitor_alerts.evaluation_metric(settings, manifest["model_name"], version)
    verdict = monitor_alerts.judge_day(summaries, settings.monitor_metric, settings.monitor_margin, evaluation)
    verdict = _unjudged_inside_training(day, manifest, verdict)
    start, end = truth_window(day, horizon)
    report = {
        "as_of_date": day.isoformat(), "model_name": manifest["model_name"], "model_version": version,
        "horizon_days": horizon, "truth_window": [start.isoformat(), end.isoformat()],
        "users": summaries["model"]["users"], "k": K, "explore_k": EXPLORE_K,
        "metrics": {name: finite_metrics(s) for name, s in summaries.items()},
        "calibration": {name: s["calibration"] for name, s in summaries.items()},
        "check": verdict,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    storage.write_parquet(settings, layout.monitoring_report_key(day, "table"), metrics_table(report))
    uri = storage.put_json(settings, layout.monitoring_report_key(day, "metrics"), report)
    if log_to_mlflow:
        report["mlflow_run_id"] = log_day(settings, report)
    streak = monitor_alerts.streak(settings, day, version)
    log.info("monitored %s (model v%s): %s", day, version, verdict["summary"])
    extra: dict[str, Any] = {}
    if intraday:
        from pipelines.ops import monitor_intraday

        extra["intraday"] = monitor_intraday.monitor_intraday_day(settings, day)
    return {**report, "uri": uri, "streak": streak, **extra}


def _unjudged_inside_training(day: dt.date, manifest: dict[str, Any], verdict: dict[str, Any]) -> dict[str, Any]:
    """``verdict`` unchanged, or, when D lies inside the model's training window (a backfill of a past
    day: the model was fitted on what users did after D), marked ``in_training_window`` and not
    degraded: its figures are reported, but they judge nothing and count toward no alert."""
    from pipelines.serving.scoring import training_window_warning

    if not training_window_warning(day, manifest):
        return {**verdict, "in_training_window": False}
    end = str(manifest["training_window"]["end"])[:10]
    return {**verdict, "degraded": False, "reasons": [], "in_training_window": True,
            "summary": f"not judged: version {manifest.get('model_version')} was trained on events up to {end}, "
                       f"after {day} ({verdict['summary']})"}


def metrics_table(report: dict[str, Any]) -> pa.Table:
    """metrics.parquet: one row per method (``method``, ``as_of_date``, ``model_version``, then
    every numeric metric; missing ones null)."""
    names = sorted({k for s in report["metrics"].values() for k in s})
    rows = [{"method": method, "as_of_date": report["as_of_date"], "model_version": report["model_version"],
             **{k: (None if summary.get(k) is None else float(summary[k])) for k in names}}
            for method, summary in report["metrics"].items()]
    schema = pa.schema([("method", pa.string()), ("as_of_date", pa.string()), ("model_version", pa.string()),
                        *[(k, pa.float64()) for k in names]])
    return pa.Table.from_pylist(rows, schema=schema)


def log_day(settings: Settings, report: dict[str, Any]) -> str:
    """Log day D's metrics at step :func:`step_of` (D) to the monitoring run of its model version
    (created on first use); returns the run id."""
    from pipelines.platform import tracking

    client = tracking.client(settings)
    experiment = tracking.ensure_experiment(settings)
    name, version = report["model_name"], report["model_version"]
    found = client.search_runs([experiment], filter_string=f"tags.`{RUN_TAG_MODEL}` = '{name}' and "
                               f"tags.`{RUN_TAG_VERSION}` = '{version}'", max_results=1)
    if found:
        run_id = str(found[0].info.run_id)
    else:
        run = client.create_run(experiment, run_name=f"monitoring {name} v{version}",
                                tags={RUN_TAG_MODEL: name, RUN_TAG_VERSION: version, "im.kind": "monitoring"})
        run_id = str(run.info.run_id)
    metrics = {}
    for method, summary in report["metrics"].items():
        prefix = "model/" if method == "model" else f"baseline/{method}/"
        metrics.update({prefix + k: float(v) for k, v in summary.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
    metrics["check/degraded"] = float(report["check"]["degraded"])
    tracking.log_metrics(settings, run_id, metrics, step=step_of(to_date(report["as_of_date"])))
    with contextlib.redirect_stdout(sys.stderr):  # MLflow prints "View run ..." lines: keep stdout for --json
        tracking.finish_run(settings, run_id)
    return run_id


def monitor_days(settings: Settings, days: list[dt.date], *, intraday: bool = False) -> list[dict[str, Any]]:
    """:func:`monitor_day` for each day, oldest first."""
    return [monitor_day(settings, day, intraday=intraday) for day in sorted(days)]


def format_table(reports: list[dict[str, Any]], metrics: tuple[str, ...] = ("ndcg_at_5", "recall_at_5",
                                                                              "explore_recall_at_3", "migration_auc",
                                                                              "brier")) -> str:
    """A plain-text table: one line per (day, method) with the headline metrics, then the check."""
    if not reports:
        return "no monitoring reports yet"
    lines = [f"{'day':<10}  {'method':<18} {'users':>6}  " + "  ".join(f"{m:>19}" for m in metrics)]
    for report in reports:
        for method, summary in report["metrics"].items():
            values = "  ".join(f"{summary.get(m):>19.4f}" if isinstance(summary.get(m), (int, float)) else f"{'-':>19}"
                               for m in metrics)
            label = f"model v{report['model_version']}" if method == "model" else method
            lines.append(f"{report['as_of_date']:<10}  {label:<18} {summary.get('users', 0):>6}  {values}")
        lines.append(f"{'':<10}  check: {report['check']['summary']}")
    return "\n".join(lines)


def recent_reports(settings: Settings, days: int = 7) -> list[dict[str, Any]]:
    """The last ``days`` monitoring reports (metrics.json), oldest first."""
    return [dict(storage.get_json(settings, layout.monitoring_report_key(d, "metrics")))
            for d in storage.list_partitions(settings, layout.MONITORING_REPORTS)[-days:]]


def print_recent(settings: Settings, days: int = 7) -> str:
    """The monitoring table of the last ``days`` reports as text (what ``make run`` prints), or a line
    saying there is none yet."""
    return format_table(recent_reports(settings, days))


def monitor_pending_table(settings: Settings, days: int = 7) -> str:
    """Monitor every pending day (:func:`pending_days`), then the table of the last ``days``
    reports; or a line saying why there is none yet (what ``make run`` prints at its end)."""
    monitor_days(settings, pending_days(settings))
    reports = recent_reports(settings, days)
    if reports:
        return format_table(reports)
    published = predictions.published_dates(settings)
    last = last_clean_day(settings)
    if not published:
        return "monitoring: no published predictions yet"
    return (f"monitoring: no published day has its horizon behind it yet (published {published[0]}..{published[-1]}, "
            f"clean events end at {last}; day D is judged once D + {settings.horizon_days} days is clean)")

