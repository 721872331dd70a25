"""Retention: delete whole date partitions older than the configured number of days, with an audit record.

Relative to a reference day ``as_of`` (the retention DAG's data interval end; never "now" inside
the logic), a partition ``dt=D`` is *older than N days* when ``D < as_of - N``:

- ``IM_RETENTION_RAW_DAYS``: ``raw/events/``, ``quarantine/events/dt=D/`` and the validated hand-overs
  ``staging/validated/`` (and any scoring staging left behind, ``staging/scoring/``);
- ``IM_RETENTION_CLEAN_DAYS``: ``clean/events/``;
- ``IM_RETENTION_PREDICTIONS_DAYS``: ``predictions/`` and ``predictions_intraday/`` (the ``_SUCCESS``
  manifests first, so readers stop trusting a partition before its parts go).

0 keeps an area for ever. Every run writes ``reports/retention/<UTC timestamp>.json``: the reference
day, the limits, the cut-off per area, and every partition deleted with its object count and keys.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from pipelines.config import Settings
from pipelines.platform import layout, storage
from pipelines.platform.dates import to_date

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """One area under a retention limit: its name in the record, its prefix, and the limit in days."""

    name: str
    area: str
    days: int


def rules(settings: Settings) -> list[Rule]:
    """The areas with a retention limit (0 = keep: left out)."""
    raw, clean, predictions = (settings.retention_raw_days, settings.retention_clean_days,
                               settings.retention_predictions_days)
    candidates = [Rule("raw", layout.RAW, raw), Rule("quarantine", layout.QUARANTINE, raw),
                  Rule("validated", layout.VALIDATED, raw), Rule("scoring_staging", layout.SCORING_STAGING, raw),
                  Rule("clean", layout.CLEAN, clean), Rule("predictions", layout.PREDICTIONS, predictions),
                  Rule("predictions_intraday", layout.PREDICTIONS_INTRADAY, predictions)]
    return [r for r in candidates if r.days > 0]


def cutoff(as_of: dt.date, days: int) -> dt.date:
    """The first day kept: partitions before it are older than ``days`` days."""
    return as_of - dt.timedelta(days=days)


def plan(settings: Settings, as_of: dt.date | str) -> list[dict[str, Any]]:
    """The partitions older than their area's limit on ``as_of``: ``{area, date, prefix, keys}`` each."""
    day = to_date(as_of, "as_of")
    found = []
    for rule in rules(settings):
        first_kept = cutoff(day, rule.days)
        for date in storage.list_partitions(settings, rule.area):
            if date < first_kept:
                prefix = layout.partition_prefix(rule.area, date)
                keys = storage.list_keys(settings, prefix)
                if keys:  # an object store may list a folder it emptied before: nothing to delete there
                    found.append({"area": rule.name, "date": date.isoformat(), "prefix": prefix, "keys": keys})
    return found


def _delete(settings: Settings, item: dict[str, Any]) -> int:
    """Delete a partition's keys, its manifests (daily or per hour) first: readers stop trusting it before
    its parts go."""
    manifests = [k for k in item["keys"] if k.rsplit("/", 1)[-1] == layout.SUCCESS]
    deleted = storage.delete_keys(settings, manifests) if manifests else 0
    return deleted + storage.delete_keys(settings, [k for k in item["keys"] if k not in set(manifests)])


def apply_retention(settings: Settings, as_of: dt.date | str, *, dry_run: bool = False,
                    now: dt.datetime | None = None) -> dict[str, Any]:
    """Delete every partition :func:`plan` finds (none with ``dry_run``) and write the audit record
    ``reports/retention/<timestamp>.json`` (also for a dry run or when nothing is old enough).
    Returns the record, with its URI under ``"report"``."""
    day = to_date(as_of, "as_of")
    started = now or dt.datetime.now(dt.UTC)
    items = plan(settings, day)
    deleted = 0
    for item in items:
        item["objects"] = len(item["keys"])
        if not dry_run:
            deleted += _delete(settings, item)
    record = {
        "as_of": day.isoformat(), "dry_run": dry_run, "run_at": started.isoformat(timespec="seconds"),
        "limits_days": {"raw_and_quarantine": settings.retention_raw_days, "clean": settings.retention_clean_days,
                        "predictions": settings.retention_predictions_days},
        "first_day_kept": {r.name: cutoff(day, r.days).isoformat() for r in rules(settings)},
        "partitions": items, "partitions_deleted": 0 if dry_run else len(items), "objects_deleted": deleted,
        "by_area": {name: sum(1 for i in items if i["area"] == name) for name in sorted({i["area"] for i in items})},
    }
    stamp = started.strftime("%Y%m%dT%H%M%S") + f"{started.microsecond // 1000:03d}Z"
    record["report"] = storage.put_json(settings, layout.retention_report_key(stamp), record)
    log.info("retention as of %s%s: %d partitions, %d objects deleted (%s)", day, " (dry run)" if dry_run else "",
             record["partitions_deleted"], deleted, record["by_area"])
    return record
