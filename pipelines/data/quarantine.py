"""Rows a stage set aside, with a reason: ``quarantine/events/dt=D/{validation,preprocess}.parquet``.

A quarantine file is replaced whole with the partition (deleted when the stage set nothing
aside), so it always matches the last run. Validation writes the rows that fail a row rule
(:func:`write_validation_quarantine`; preprocessing does too when it had to flag the partition
itself), preprocessing the noise it sets aside.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from pipelines.config import Settings
from pipelines.platform import layout, storage

VALIDATION = "validation"
PREPROCESS = "preprocess"
DUPLICATES = "duplicates"  # rows preprocessing dropped as exact or near duplicates (reason = which)
# What a person needs to find and judge a flagged row: where it came from, its raw values, the rules.
VALIDATION_COLUMNS = ["source_file", "row", "user_id", "item_id", "category_id", "behavior_raw", "ts_raw",
                      "value_raw", "reason", "rules"]


def quarantine_table(rows: pa.Table, stage: str) -> pa.Table | None:
    """The quarantine file content of ``rows`` (which hold ``source_file`` and ``reason``): ``source_file``
    as plain strings and a ``stage`` column added; None when there are no rows."""
    if rows.num_rows == 0:
        return None
    source_file = rows.column_names.index("source_file")
    table = rows.set_column(source_file, "source_file", rows["source_file"].cast(pa.string()))
    return table.append_column("stage", pa.array([stage] * rows.num_rows, pa.string()))


def validation_quarantine_table(bad: pa.Table) -> pa.Table | None:
    """The validation quarantine content of a partition's flagged rows ``bad`` (:data:`VALIDATION_COLUMNS`)."""
    return quarantine_table(bad.select(VALIDATION_COLUMNS), VALIDATION)


def write_quarantine(settings: Settings, date: dt.date, stage: str, rows: pa.Table) -> str | None:
    """Replace the quarantine file of ``stage`` for day ``date`` with ``rows`` (which hold
    ``source_file`` and ``reason``), adding a ``stage`` column; with no rows, delete the file.
    Returns the key, or None when nothing was set aside."""
    key = layout.quarantine_key(date, stage)
    table = quarantine_table(rows, stage)
    if table is None:
        storage.delete_key(settings, key)
        return None
    storage.write_parquet(settings, key, table)
    return key


def write_validation_quarantine(settings: Settings, date: dt.date, bad: pa.Table) -> str | None:
    """Write the flagged rows ``bad`` of a partition (:data:`VALIDATION_COLUMNS`) as its validation quarantine."""
    return write_quarantine(settings, date, VALIDATION, bad.select(VALIDATION_COLUMNS))
