"""Multi-partition steps the DAG tasks call: each loops one stage function over a date window.

Each function is what one Airflow task does, so the task body stays a single call. They return
small JSON-able dicts (counts, URIs) for XCom; the data itself stays in object storage.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pipelines.config import Settings
from pipelines.data.events import MissingInputError
from pipelines.platform import layout, storage
from pipelines.platform.dates import date_range, lookback_window, parse_date

log = logging.getLogger(__name__)


def resolve_window(settings: Settings, data_start: str | None, data_end: str | None) -> tuple[dt.date, dt.date]:
    """The training window: given bounds, else the first/last landed raw partition.

    Raises :class:`MissingInputError` when nothing has been landed in the window.
    """
    start = parse_date(data_start, "data_start")
    end = parse_date(data_end, "data_end")
    landed = [d for d in storage.list_partitions(settings, layout.RAW)
              if (start is None or d >= start) and (end is None or d <= end)]
    if not landed:
        raise MissingInputError(
            f"no raw partitions under s3://{settings.bucket}/{layout.RAW}/ in window "
            f"[{start or 'first'}, {end or 'last'}]; land data first: python -m pipelines land --source ...")
    return (start or landed[0], end or landed[-1])


def validate_window(settings: Settings, start: dt.date, end: dt.date, *, report_id: str,
                    mlflow_run_id: str | None = None) -> dict[str, Any]:
    """Validate every landed raw partition in [start, end]; returns totals and per-day results.

    A batch-level failure of any partition raises (the task fails with the validator's message).
    """
    from pipelines.data import validation

    raw_dates = set(storage.list_partitions(settings, layout.RAW))
    days = [d for d in date_range(start, end) if d in raw_dates]
    if not days:
        raise MissingInputError(f"no raw partitions in [{start}, {end}] under s3://{settings.bucket}/{layout.RAW}/")
    results = []
    for i, day in enumerate(days, 1):
        result = validation.validate_partition(settings, day, report_id=report_id).to_dict()
        log.info("validated %s (%d/%d): %s", day, i, len(days), _short(result))
        results.append(result)
    summary = {"partitions": [d.isoformat() for d in days], "totals": _totals(results)}
    if mlflow_run_id:
        from pipelines.platform import tracking

        validation.log_to_mlflow(results, mlflow_run_id, settings)
        tracking.log_validation_summary(settings, mlflow_run_id, {**summary, "per_partition": results})
    return summary


def encode_window(settings: Settings, start: dt.date, end: dt.date, *, mlflow_run_id: str) -> dict[str, Any]:
    """Encode the clean events of [start, end] and record the examples as the run's dataset input."""
    from pipelines.features import encoding
    from pipelines.platform import tracking

    result = encoding.encode_step(settings, start, end, mlflow_run_id=mlflow_run_id)
    tracking.log_dataset_input(
        settings, mlflow_run_id, source_uri=result["dataset_uri"], name=f"examples {start}..{end}",
        digest=result["dataset_uri"].rstrip("/").rsplit("/", 1)[-1][:36],
        profile={"window": f"{start}..{end}", "examples": result.get("examples"),
                 "categories": result.get("categories")})
    return result


def register_and_close(settings: Settings, *, mlflow_run_id: str, model_uri: str, dataset_uri: str) -> dict[str, Any]:
    """Run the registry gate, then mark the DAG run's MLflow run FINISHED (the last task's job)."""
    from pipelines.model import registry
    from pipelines.platform import tracking

    decision = registry.register_step(settings, mlflow_run_id=mlflow_run_id, model_uri=model_uri,
                                      dataset_uri=dataset_uri)
    tracking.finish_run(settings, mlflow_run_id)
    return decision


def preprocess_window(settings: Settings, start: dt.date, end: dt.date) -> dict[str, Any]:
    """Preprocess every landed raw partition in [start, end] into clean/; returns totals."""
    from pipelines.data import preprocess

    raw_dates = set(storage.list_partitions(settings, layout.RAW))
    days = [d for d in date_range(start, end) if d in raw_dates]
    results = []
    for i, day in enumerate(days, 1):
        result = preprocess.preprocess_partition(settings, day).to_dict()
        log.info("preprocessed %s (%d/%d): %s", day, i, len(days), _short(result))
        results.append(result)
    return {"partitions": [d.isoformat() for d in days], "totals": _totals(results)}


def prepare_scoring_input(settings: Settings, date: dt.date, *, report_id: str) -> dict[str, Any]:
    """Make sure clean events exist for the scoring look-back window ending at ``date``.

    The day ``date`` itself is (re)validated and (re)cleaned when its raw partition exists, so a
    late-landed file is picked up; earlier days are cleaned only when their clean partition is
    missing. Raises :class:`MissingInputError` when the window holds no clean data at all.
    """
    start, _ = lookback_window(date, settings.lookback_days)
    raw_dates = set(storage.list_partitions(settings, layout.RAW))
    clean_dates = set(storage.list_partitions(settings, layout.CLEAN))
    todo = [d for d in date_range(start, date) if d in raw_dates and (d == date or d not in clean_dates)]
    done: list[str] = []
    for day in todo:
        validate_window(settings, day, day, report_id=report_id)
        preprocess_window(settings, day, day)
        done.append(day.isoformat())
    available = sorted(set(storage.list_partitions(settings, layout.CLEAN)) & set(date_range(start, date)))
    if not available:
        raise MissingInputError(
            f"no clean events for the look-back window [{start}, {date}] (raw partitions there: none); "
            f"land data for these days first")
    return {"as_of_date": date.isoformat(), "cleaned_now": done,
            "clean_partitions": [d.isoformat() for d in available]}


def _short(result: dict[str, Any]) -> str:
    keys = ("rows_in", "rows_clean", "rows_quarantined", "duplicates_dropped", "rows", "bad_row_share")
    return ", ".join(f"{k}={result[k]}" for k in keys if k in result) or str(result)[:200]


def _totals(results: list[dict[str, Any]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for result in results:
        for key, value in result.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and (
                    key.startswith(("rows", "duplicates", "quarantined", "dropped")) or key.endswith("_rows")):
                totals[key] = totals.get(key, 0) + value
    return totals
