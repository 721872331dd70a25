"""Read canonical clean events back from ``clean/events/dt=.../`` (the input of encode and score)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.contracts import EVENT_SCHEMA
from pipelines.platform import layout, storage
from pipelines.platform.dates import end_of_day


class MissingInputError(RuntimeError):
    """No data where a step needs it; the message names the partitions looked for."""


def clean_dates(settings: Settings, start: dt.date | None, end: dt.date) -> list[dt.date]:
    """Clean partitions with ``start <= dt <= end`` (``start`` None = from the first)."""
    return [d for d in storage.list_partitions(settings, layout.CLEAN)
            if (start is None or d >= start) and d <= end]


def iter_clean_events(settings: Settings, start: dt.date | None, end: dt.date,
                      columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Yield one table per clean partition in [start, end], oldest first, rows with ts before the
    end of ``end`` only (a partition never holds later events, but the filter makes it a rule)."""
    cutoff = pa.scalar(end_of_day(end), type=EVENT_SCHEMA.field("ts").type)
    for date in clean_dates(settings, start, end):
        for table in storage.iter_parquet_prefix(settings, layout.partition_prefix(layout.CLEAN, date), columns):
            if "ts" in table.column_names:
                table = table.filter(pc.less(table["ts"], cutoff))
            yield table


def read_clean_events(settings: Settings, start: dt.date | None, end: dt.date,
                      columns: list[str] | None = None) -> pa.Table:
    """All clean events of partitions [start, end] as one table with :data:`EVENT_SCHEMA` columns."""
    schema = EVENT_SCHEMA if columns is None else pa.schema([EVENT_SCHEMA.field(c) for c in columns])
    tables = [t.select(schema.names).cast(schema) for t in iter_clean_events(settings, start, end, columns)]
    return pa.concat_tables(tables) if tables else schema.empty_table()
