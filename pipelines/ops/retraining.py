"""When the training DAG runs and on which days: its schedule, its sliding window, retraining requests.

- **Schedule** (``IM_TRAINING_SCHEDULE``): empty (the default, and the embedded stack's) means
  the training DAG runs only when triggered or requested; a cron expression or preset (the team
  deployment sets ``IM_TRAINING_SCHEDULE="0 3 * * 1"``, Mondays 03:00 UTC) adds time-based runs.
- **Requests**: the DAG is also scheduled on the asset ``s3://<bucket>/requests/retraining``.
  Any task that declares it as an outlet (the outcome-monitoring DAG's drift alert) or a person
  ("Create asset event" in the Airflow UI, ``POST /api/v2/assets/events``) starts a training run.
- **Window** (``IM_TRAINING_WINDOW_DAYS``): 0 trains on every landed day (the default); N > 0
  trains on the last N days up to the run's data interval end (exclusive; clamped to the last
  landed day), so weekly retraining slides over fresh data. A run triggered with
  ``data_start`` / ``data_end`` in its config uses those instead.

Every run, however it started, ends in the same ``register`` gate: a retrained version becomes
``champion`` only on merit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from pipelines.ops.options import OpsOptions, OptionsError
from pipelines.platform import layout


def retraining_request_asset(bucket: str) -> Any:
    """The asset whose events request a training run (``s3://<bucket>/requests/retraining``)."""
    from airflow.sdk import Asset

    return Asset(layout.retraining_requests_uri(bucket),
                 extra={"meaning": "an event requests a training run; its extra says why (reason, as_of_date)"})


def training_schedule(options: OpsOptions, bucket: str) -> Any:
    """The training DAG's ``schedule``: retraining requests, or them or the cron of ``IM_TRAINING_SCHEDULE``."""
    request = retraining_request_asset(bucket)
    if not options.training_schedule:
        return [request]
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    try:
        timetable = CronTriggerTimetable(options.training_schedule, timezone="UTC")
        timetable.validate()
    except Exception as exc:  # croniter's errors differ by version; the message names the variable
        raise OptionsError(f"IM_TRAINING_SCHEDULE={options.training_schedule!r} is not a cron expression or "
                           f"preset: {exc}") from None
    return AssetOrTimeSchedule(timetable=timetable, assets=[request])


def sliding_window(window_days: int, interval_end: dt.datetime | None, landed: list[dt.date]
                   ) -> tuple[dt.date, dt.date] | None:
    """[end - N + 1, end] where ``end`` is the day before ``interval_end`` (the last complete UTC
    day), clamped to the last landed day; None when ``window_days`` is 0 (every landed day)."""
    if window_days <= 0:
        return None
    end = (interval_end.astimezone(dt.UTC).date() - dt.timedelta(days=1)) if interval_end else None
    candidates = [d for d in landed if end is None or d <= end]
    if candidates:
        end = candidates[-1]
    if end is None:
        return None  # nothing landed: the training task names the empty window itself
    return end - dt.timedelta(days=window_days - 1), end


def run_window(options: OpsOptions, params: Mapping[str, Any], interval_end: dt.datetime | None,
               landed: Callable[[], list[dt.date]]) -> dict[str, str]:
    """``data_start`` / ``data_end`` (ISO dates, or empty for "every landed day") of a training run:
    the run's config when it names a bound, else the sliding window. ``landed`` lists the landed
    raw days (called only when the window slides)."""
    start, end = params.get("data_start") or "", params.get("data_end") or ""
    if start or end:
        return {"data_start": str(start), "data_end": str(end)}
    window = sliding_window(options.training_window_days, interval_end,
                            landed() if options.training_window_days > 0 else [])
    if window is None:
        return {"data_start": "", "data_end": ""}
    return {"data_start": window[0].isoformat(), "data_end": window[1].isoformat()}


def training_window(settings: Any, context: Mapping[str, Any]) -> dict[str, str]:
    """:func:`run_window` of an Airflow task context (params, data interval end)."""
    from pipelines.ops.options import ops_options
    from pipelines.platform import storage

    return run_window(ops_options(settings), context.get("params") or {}, context.get("data_interval_end"),
                      lambda: storage.list_partitions(settings, layout.RAW))
