"""Task bodies of the scoring DAG (``interest_migration_scoring``) for one day D, one function per task."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pipelines.config import Settings
from pipelines.data import preprocess, validation
from pipelines.data.events import MissingInputError
from pipelines.platform import layout, storage
from pipelines.platform.dates import date_range, lookback_window


def scoring_day(data_interval_start: dt.datetime | None, logical_date: dt.datetime | None,
                run_after: dt.datetime | None = None) -> dt.date:
    """The day D a scoring run scores.

    - A logical date at UTC midnight names its day: scheduled and backfilled runs (whose data
      interval starts there too), ``airflow dags test <dag> D`` and a trigger with a chosen date.
    - Otherwise the data interval's start: a UI "Trigger" gets logical date = *now*, a day still in
      progress, and the timetable's interval for it is the last complete day.
    - Without either, the day before ``run_after``."""
    if logical_date is not None and logical_date.astimezone(dt.UTC).time() == dt.time(0):
        return logical_date.astimezone(dt.UTC).date()
    if data_interval_start is not None:
        return data_interval_start.date()
    if logical_date is not None:
        return logical_date.date()
    if run_after is None:
        raise ValueError("a scoring run needs a data interval, a logical date or a run_after time")
    return run_after.date() - dt.timedelta(days=1)


def prepare_scoring_input(settings: Settings, date: dt.date, *, report_id: str) -> dict[str, Any]:
    """Task ``prepare_input``: make sure clean events exist for the look-back window ending at D.

    The day D itself is (re)validated and (re)cleaned when its raw partition exists, so a
    late-landed file is picked up; earlier days are cleaned only when their clean partition is
    missing. Raises :class:`MissingInputError` when the window holds no clean data at all.
    """
    start, _ = lookback_window(date, settings.lookback_days)
    window = date_range(start, date)
    raw_dates = set(storage.list_partitions(settings, layout.RAW))
    clean_dates = set(storage.list_partitions(settings, layout.CLEAN))
    todo = [d for d in window if d in raw_dates and (d == date or d not in clean_dates)]
    for day in todo:
        validation.validate_partition(settings, day, report_id=report_id)
        preprocess.preprocess_partition(settings, day)
    available = sorted(set(storage.list_partitions(settings, layout.CLEAN)) & set(window))
    if not available:
        raise MissingInputError(
            f"no clean events for the look-back window [{start}, {date}] (raw partitions there: none); "
            f"land data for these days first")
    return {"as_of_date": date.isoformat(), "cleaned_now": [d.isoformat() for d in todo],
            "clean_partitions": [d.isoformat() for d in available]}


def resolve_champion(settings: Settings) -> dict[str, Any]:
    """Task ``resolve_model``: the champion version, pinned for every shard of the day."""
    from pipelines.serving import scoring

    return scoring.resolve_champion(settings)


def plan_scoring(settings: Settings, date: dt.date, model: dict[str, Any]) -> list[dict[str, Any]]:
    """Task ``plan_shards``: one shard spec per mapped scoring task."""
    from pipelines.serving import scoring

    return scoring.plan_shards(settings, date, model)


def score_shard(settings: Settings, date: dt.date, model: dict[str, Any], shard: dict[str, Any]) -> dict[str, Any]:
    """Task ``score_shard`` (mapped): score one shard's users and write its part."""
    from pipelines.serving import scoring

    return scoring.score_shard(settings, date, model, shard)


def publish_predictions(settings: Settings, date: dt.date, model: dict[str, Any],
                        shard_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Task ``publish``: check every part, then write the ``_SUCCESS`` manifest last."""
    from pipelines.serving import scoring

    return scoring.publish_partition(settings, date, model, shard_results)


