"""Intraday micro-batches: the users with new events of day D, scored as of the end of hour HH, into
``predictions_intraday/dt=D/hour=HH/`` (the daily contract's columns; the manifest written last).

*New events* are the raw files landed under ``raw/events/dt=D/`` (by the ingest DAG from the inbox,
or by ``land``) that no earlier intraday partition of D consumed: each manifest lists the raw keys
consumed up to it (``inputs``), so a rerun of an hour recomputes the same set and an hour without
new files publishes nothing. The users of the new rows are scored from their clean look-back
history up to the end of D - 1 plus every raw row of D so far (earlier hours' files included) with
``ts`` before the as-of time. Raw rows of D are not validated yet: rows with an empty field or an
unknown behaviour are left out and counted (``dropped_rows``); the daily path validates them.

The manifest holds model_name, model_version, model_uri, as_of_date, as_of (ISO-8601 UTC, what
:mod:`pipelines.ops.monitor_intraday` judges against), hour, horizon_days, row_count, files,
inputs, new_inputs, dropped_rows, created_at and schema_version.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.contracts import MODEL_INPUT_COLUMNS, PREDICTION_CONTRACT_VERSION, PREDICTION_SCHEMA
from pipelines.data.canonical import canonicalize
from pipelines.data.events import iter_clean_events
from pipelines.data.raw import list_raw_files, read_raw_file
from pipelines.data.rules import flag_rows
from pipelines.platform import layout, storage
from pipelines.platform.dates import end_of_day, epoch_us, lookback_window, start_of_day, to_date
from pipelines.serving.engine import RowSpec
from pipelines.serving.interests import params_from_settings
from pipelines.serving.scoring import load_scorer, resolve_champion

log = logging.getLogger(__name__)
INPUT_SCHEMA = pa.schema([PREDICTION_SCHEMA.field("user_id"), *(
    pa.field(c, pa.timestamp("us", tz="UTC") if c == "ts" else pa.string()) for c in MODEL_INPUT_COLUMNS[1:])])
PART = "part-00000.parquet"
_HOUR = re.compile(r"/hour=(\d{2})/" + re.escape(layout.SUCCESS) + "$")


def consumed_inputs(settings: Settings, day: dt.date, hour: int) -> set[str]:
    """Raw keys of D consumed by the published intraday partitions of hours before ``hour``."""
    seen: set[str] = set()
    for key in storage.list_keys(settings, layout.partition_prefix(layout.PREDICTIONS_INTRADAY, day)):
        match = _HOUR.search(key)
        if match and int(match.group(1)) < hour:
            seen.update(storage.get_json(settings, key).get("inputs") or [])
    return seen


def _raw_events(settings: Settings, files: list[Any], day: dt.date, as_of: dt.datetime) -> tuple[pa.Table, int]:
    """Canonical rows of the raw files of ``day`` that pass every row rule of validation and lie
    before ``as_of``; and the count of rows left out."""
    tables, dropped = [], 0
    cutoff = epoch_us(as_of)
    for raw in files:
        rows = canonicalize(read_raw_file(settings, raw), raw.spec)
        # the validation step's row rules (ids, placeholders, behaviours, timestamps, the window, the
        # partition, values): a row the daily run would quarantine is not scored intraday either
        reason, _ = flag_rows(rows, raw.spec, day, settings)
        ok = pc.and_(pc.is_null(reason), pc.less(rows["ts"], cutoff))
        kept = rows.filter(pc.fill_null(ok, False))
        dropped += rows.num_rows - kept.num_rows
        tables.append(pa.table({c: kept[c] for c in MODEL_INPUT_COLUMNS[:-1]}).append_column(
            "ts", kept["ts"].cast(pa.int64()).cast(pa.timestamp("us", tz="UTC"))).cast(INPUT_SCHEMA))
    return (pa.concat_tables(tables) if tables else INPUT_SCHEMA.empty_table()), dropped


def score_hour(settings: Settings, date: dt.date | str, hour: int) -> dict[str, Any]:
    """Score the users with new raw events of D as of the end of ``hour`` and publish the intraday
    partition; returns its manifest plus "uri", or {"skipped": True, ...} when no new file landed."""
    day = to_date(date)
    if not 0 <= int(hour) <= 23:
        raise ValueError(f"hour must be 0..23, got {hour}")
    hour = int(hour)
    as_of = min(start_of_day(day) + dt.timedelta(hours=hour + 1), end_of_day(day))
    files, _ = list_raw_files(settings, day)
    seen = consumed_inputs(settings, day, hour)
    new = [f for f in files if f.key not in seen]
    if not new:
        log.info("intraday %s hour %02d: no new raw file since the last run", day, hour)
        return {"skipped": True, "as_of_date": day.isoformat(), "hour": hour, "row_count": 0}
    new_rows, dropped = _raw_events(settings, new, day, as_of)
    users = pc.unique(new_rows["user_id"])
    today, _ = _raw_events(settings, files, day, as_of)
    start, end = lookback_window(day, settings.lookback_days)
    history = [t.select(MODEL_INPUT_COLUMNS).cast(INPUT_SCHEMA)
               for t in iter_clean_events(settings, start, end - dt.timedelta(days=1), list(MODEL_INPUT_COLUMNS))]
    events = pa.concat_tables([*history, today])
    events = events.filter(pc.is_in(events["user_id"], value_set=users))
    model = resolve_champion(settings)
    spec = RowSpec(as_of=as_of, as_of_date=day, horizon_days=settings.horizon_days, model_name=model["model_name"],
                   model_version=model["model_version"], params=params_from_settings(settings), top_k=settings.top_k,
                   top_n=settings.scoring_top_n, batch_users=settings.scoring_batch_users)
    parts = list(load_scorer(settings, model["model_uri"]).score(events, spec)) if events.num_rows else []
    table = pa.concat_tables(parts) if parts else PREDICTION_SCHEMA.empty_table()
    prefix = layout.intraday_prefix(day, hour)
    storage.write_parquet(settings, prefix + PART, table)
    manifest = {
        "model_name": model["model_name"], "model_version": model["model_version"], "model_uri": model["model_uri"],
        "as_of_date": day.isoformat(), "as_of": as_of.isoformat(), "hour": hour,
        "horizon_days": settings.horizon_days, "row_count": table.num_rows, "files": [prefix + PART],
        "inputs": sorted(seen | {f.key for f in new}), "new_inputs": sorted(f.key for f in new),
        "dropped_rows": dropped, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "schema_version": PREDICTION_CONTRACT_VERSION,
    }
    storage.put_json(settings, layout.intraday_success_key(day, hour), manifest)  # last: readers switch here
    log.info("intraday %s hour %02d: %d users with new events scored by version %s", day, hour, table.num_rows,
             model["model_version"])
    return {**manifest, "uri": storage.uri(settings, prefix)}
