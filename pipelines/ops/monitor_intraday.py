"""Outcome monitoring of intraday micro-batch partitions ``predictions_intraday/dt=D/hour=HH/``.

An intraday partition holds contract rows of the users with new events, made as of the manifest's
``as_of`` (ISO-8601 UTC; without it, the end of hour HH). It is judged exactly like a daily one
(:func:`pipelines.ops.monitoring.score_at`: truth in [as_of, as_of + H days), known in the
look-back up to as_of, the same baselines) once the clean partition of the horizon's last day
exists, and its report goes to ``reports/monitoring_intraday/dt=D/hour=HH/metrics.{json,parquet}``.
Intraday reports are not logged to MLflow and do not feed the degradation check (the daily
partition does). Switched on by ``monitor --intraday`` and the monitoring DAG's ``intraday`` param.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pyarrow as pa

from pipelines.config import Settings
from pipelines.contracts import PREDICTION_SCHEMA
from pipelines.ops import monitoring
from pipelines.platform import layout, storage
from pipelines.platform.dates import start_of_day

_HOUR = re.compile(r"/hour=(\d{2})/" + re.escape(layout.SUCCESS) + "$")


def published_hours(settings: Settings, day: dt.date) -> list[int]:
    """Hours of day D whose intraday partition has its manifest, sorted."""
    keys = storage.list_keys(settings, layout.partition_prefix(layout.PREDICTIONS_INTRADAY, day))
    return sorted({int(m.group(1)) for k in keys if (m := _HOUR.search(k))})


def as_of_of(manifest: dict[str, Any], day: dt.date, hour: int) -> dt.datetime:
    """The as-of instant of an intraday partition: its manifest's ``as_of``, else the end of hour HH."""
    if manifest.get("as_of"):
        when = dt.datetime.fromisoformat(str(manifest["as_of"]))
        if when.tzinfo is None:
            raise ValueError(f"{layout.intraday_success_key(day, hour)}: as_of {manifest['as_of']!r} has no time zone")
        return when.astimezone(dt.UTC)
    return start_of_day(day) + dt.timedelta(hours=hour + 1)


def read_rows(settings: Settings, manifest: dict[str, Any]) -> pa.Table:
    """The rows of the files the manifest lists, as PREDICTION_SCHEMA."""
    tables = [storage.read_parquet(settings, key, columns=PREDICTION_SCHEMA.names).cast(PREDICTION_SCHEMA)
              for key in manifest["files"]]
    return pa.concat_tables(tables) if tables else PREDICTION_SCHEMA.empty_table()


def monitor_hour(settings: Settings, day: dt.date, hour: int) -> dict[str, Any]:
    """Judge the intraday partition (D, HH) and write its report; raises
    :class:`~pipelines.ops.monitoring.HorizonNotPassed` while its horizon is not over and
    :class:`FileNotFoundError` when the partition has no manifest."""
    key = layout.intraday_success_key(day, hour)
    try:
        manifest = dict(storage.get_json(settings, key))
    except storage.StorageError:
        raise FileNotFoundError(f"no intraday partition s3://{settings.bucket}/{key}") from None
    horizon = int(manifest.get("horizon_days", settings.horizon_days))
    as_of = as_of_of(manifest, day, hour)
    end = as_of + dt.timedelta(days=horizon)
    needed = (end - dt.timedelta(microseconds=1)).date()
    last = monitoring.last_clean_day(settings)
    if last is None or last < needed:
        raise monitoring.HorizonNotPassed(f"intraday predictions of {day} hour {hour:02d} are about [{as_of.isoformat()}, "
                                          f"{end.isoformat()}) but clean events end at {last or 'no day'}")
    summaries = monitoring.score_at(settings, read_rows(settings, manifest), as_of, horizon)
    report = {"as_of_date": day.isoformat(), "hour": hour, "as_of": as_of.isoformat(),
              "model_name": manifest.get("model_name"), "model_version": str(manifest.get("model_version")),
              "horizon_days": horizon, "truth_window": [as_of.isoformat(), end.isoformat()],
              "users": summaries["model"]["users"], "k": monitoring.K, "explore_k": monitoring.EXPLORE_K,
              "metrics": {name: monitoring.finite_metrics(s) for name, s in summaries.items()},
              "calibration": {name: s["calibration"] for name, s in summaries.items()},
              "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    storage.write_parquet(settings, layout.intraday_monitoring_report_key(day, hour, "table"),
                          monitoring.metrics_table(report))
    uri = storage.put_json(settings, layout.intraday_monitoring_report_key(day, hour, "metrics"), report)
    return {**report, "uri": uri}


def monitor_intraday_day(settings: Settings, day: dt.date) -> list[dict[str, Any]]:
    """Every intraday partition of D whose horizon has passed: their reports (hours still waiting
    are listed as ``{"hour": HH, "waiting": reason}``)."""
    out = []
    for hour in published_hours(settings, day):
        try:
            out.append(monitor_hour(settings, day, hour))
        except monitoring.HorizonNotPassed as exc:
            out.append({"hour": hour, "waiting": str(exc)})
    return out
