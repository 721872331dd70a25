"""Read a local source file in bounded batches and route its rows into one scratch file per UTC date.

The first half of landing (:mod:`pipelines.data.landing` publishes the result): :func:`split_csv`
and :func:`split_parquet` stream a CSV (plain or gzip) or Parquet source, write every row
*unchanged* into ``<scratch>/dt=D.csv`` (``.parquet``) by its UTC event date, and collect the rows
that cannot be placed in :class:`SplitStats` with a reason (``wrong_column_count``,
``unexpected_header``, ``malformed_row``, ``unparseable_timestamp``, ``implausible_timestamp``).
A file that cannot be read at all (empty, corrupt gzip, wrong columns) raises
:class:`~pipelines.data.formats.SourceError` naming the file and the rule. No storage here.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.data.canonical import parse_ts, plausible_bounds_us
from pipelines.data.formats import BATCH_BYTES, SourceError, SourceSpec

PARQUET_BATCH_ROWS = 500_000
_GZIP_MAGIC = b"\x1f\x8b"

Writer = Callable[[dt.date, pa.Table], None]


@dataclass
class SplitStats:
    """What routing one source did: scratch file per date, rows per date, and the rows set aside."""

    columns: list[str]
    suffix: str  # ".csv" or ".parquet": the raw files keep the source's format
    rows_read: int = 0
    rows_by_date: dict[dt.date, int] = field(default_factory=dict)
    files: dict[dt.date, Path] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, raw: str, detail: str = "", line: int | None = None) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.rejects.append({"reason": reason, "raw": raw, "detail": detail, "line": line})


# --- the file itself -----------------------------------------------------------------------------


def _open_binary(path: Path) -> IO[bytes]:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")


def _first_line(path: Path) -> bytes | None:
    """The first non-empty line (BOM stripped), or None for an empty file; SourceError when unreadable."""
    try:
        with _open_binary(path) as fh:
            for raw in fh:
                line = raw.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n")
                if line.strip():
                    return line
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"{path}: unreadable file (corrupt or truncated gzip?): {exc}") from exc
    return None


def _check_whole_file(path: Path) -> None:
    """Read a gzip source through once so a corrupt stream fails before anything is landed."""
    try:
        with _open_binary(path) as fh:
            while fh.read(8 << 20):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"{path}: unreadable file (corrupt or truncated gzip): {exc}") from exc


def _split_line(line: bytes, delimiter: str) -> list[str]:
    return next(csv.reader([line.decode("utf-8", errors="replace")], delimiter=delimiter))


def _header_columns(path: Path, spec: SourceSpec) -> tuple[list[str], bool]:
    """The source's column names and whether the file's first line is a header to skip.

    Raises :class:`SourceError` for an empty file, a wrong column count, or missing/extra columns.
    """
    line = _first_line(path)
    if line is None:
        raise SourceError(f"{path}: empty file (no rows): nothing to land")
    fields = _split_line(line, spec.delimiter)
    if spec.has_header:
        names = [f.strip() for f in fields]
        missing = sorted(set(spec.column_map.values()) - set(names))
        if missing:
            raise SourceError(f"{path}: missing column(s) {missing} in header {names} "
                              f"(format {spec.fmt}, rule: columns)")
        if spec.columns is not None and names != spec.columns:
            extra = [c for c in names if c not in spec.columns]
            raise SourceError(f"{path}: header {names} does not match the {spec.fmt} columns {spec.columns}"
                              + (f" (extra: {extra})" if extra else "") + " (rule: columns)")
        return names, True
    if spec.columns is None:
        raise SourceError(f"{path}: a headerless {spec.fmt} file needs 'source_columns' (the column names in "
                          "order) in the column-map file")
    if len(fields) != len(spec.columns):
        raise SourceError(f"{path}: first row has {len(fields)} columns, expected {len(spec.columns)} "
                          f"({','.join(spec.columns)}) for format {spec.fmt} (rule: column_count)")
    return list(spec.columns), False


def _is_header_row(fields: list[str], spec: SourceSpec) -> bool:
    ts_index = (spec.columns or []).index(spec.column_map["ts"])
    lowered = [f.strip().lower() for f in fields]
    return lowered == [c.lower() for c in (spec.columns or [])] or not re.fullmatch(
        r"-?[0-9]+", fields[ts_index].strip()) and lowered[ts_index] in ("timestamp", "ts", "time")


# --- routing rows by date ------------------------------------------------------------------------


def _raw_rows(table: pa.Table, spec: SourceSpec) -> list[str]:
    if table.num_rows == 0:
        return []
    cols = [pc.fill_null(pc.cast(table[c], pa.string()), "") for c in table.column_names]
    return [spec.delimiter.join(vals) for vals in zip(*(c.to_pylist() for c in cols), strict=True)]


def _route(batch: pa.RecordBatch | pa.Table, spec: SourceSpec, stats: SplitStats, now: dt.datetime,
           write: Writer) -> None:
    """Split one batch by UTC event date; quarantine rows whose date cannot be read or is implausible."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    stats.rows_read += table.num_rows
    ts = parse_ts(table[spec.column_map["ts"]], spec.ts_format, spec.timezone)
    lo, hi = plausible_bounds_us(now)
    unreadable = pc.is_null(ts)
    implausible = pc.fill_null(pc.or_(pc.less(ts, lo), pc.greater_equal(ts, hi)), False)
    bad = pc.or_(unreadable, implausible)
    if spec.needs_plain_fields:
        # Official Taobao rows never hold a delimiter or quote; one that does was mangled upstream.
        mangled = pa.array([False] * table.num_rows)
        for c in table.column_names:
            col = pc.cast(table[c], pa.string())
            mangled = pc.or_(mangled, pc.fill_null(pc.match_substring_regex(col, r"[\",\r\n]"), False))
        mangled = pc.and_(mangled, pc.invert(bad))
        if pc.any(mangled).as_py():
            for raw in _raw_rows(table.filter(mangled), spec):
                stats.reject("malformed_row", raw, "a field holds a delimiter, quote or line break")
            bad = pc.or_(bad, mangled)
    if pc.any(bad).as_py():
        for reason, mask in (("unparseable_timestamp", unreadable), ("implausible_timestamp", implausible)):
            sel = table.filter(mask)
            raws = pc.cast(sel[spec.column_map["ts"]], pa.string()).to_pylist()
            for raw, ts_text in zip(_raw_rows(sel, spec), raws, strict=True):
                stats.reject(reason, raw, f"{spec.column_map['ts']}={ts_text!r} ({spec.ts_format})")
        keep = pc.invert(bad)
        table = table.filter(keep)
        ts = ts.filter(keep)
    if table.num_rows == 0:
        return
    days = np.floor_divide(ts.to_numpy(zero_copy_only=False), 86_400_000_000)
    order = np.argsort(days, kind="stable")
    sorted_days = days[order]
    table = table.take(pa.array(order))
    cuts = np.flatnonzero(np.diff(sorted_days)) + 1
    bounds = np.r_[0, cuts, len(sorted_days)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        day = dt.date(1970, 1, 1) + dt.timedelta(days=int(sorted_days[a]))
        write(day, table.slice(int(a), int(b - a)))
        stats.rows_by_date[day] = stats.rows_by_date.get(day, 0) + int(b - a)


def _flush_invalid(pending: list[tuple[str, int, int]], stats: SplitStats) -> None:
    for text, expected, actual in pending:
        stats.rows_read += 1
        stats.reject("wrong_column_count", text, f"{actual} columns, expected {expected}")
    pending.clear()


def split_csv(path: Path, spec: SourceSpec, scratch: Path, now: dt.datetime) -> SplitStats:
    """Route the rows of a CSV source (plain or gzip) into ``scratch/dt=D.csv`` files, unchanged."""
    with open(path, "rb") as fh:
        if fh.read(2) == _GZIP_MAGIC:
            _check_whole_file(path)
    columns, skip_header = _header_columns(path, spec)
    stats = SplitStats(columns=columns, suffix=".csv")
    pending_invalid: list[tuple[str, int, int]] = []

    def on_invalid(row: Any) -> str:
        pending_invalid.append((row.text, row.expected_columns, row.actual_columns))
        return "skip"

    schema = pa.schema([(c, pa.string()) for c in columns])
    quoting = "none" if spec.needs_plain_fields else "needed"
    writers: dict[dt.date, pacsv.CSVWriter] = {}

    def write(day: dt.date, part: pa.Table) -> None:
        if day not in writers:
            target = scratch / f"dt={day.isoformat()}.csv"
            stats.files[day] = target
            writers[day] = pacsv.CSVWriter(str(target), schema, write_options=pacsv.WriteOptions(
                include_header=spec.has_header, quoting_style=quoting, delimiter=spec.delimiter))
        writers[day].write_table(part.cast(schema))

    try:
        reader = pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(column_names=columns, skip_rows=1 if skip_header else 0,
                                           block_size=BATCH_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=spec.delimiter, invalid_row_handler=on_invalid,
                                             newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise SourceError(f"{path}: no data rows after the header: nothing to land") from exc
        raise SourceError(f"{path}: unreadable as {spec.fmt} CSV: {exc}") from exc
    first = True
    try:
        for batch in reader:
            table = pa.Table.from_batches([batch])
            if first and not spec.has_header and table.num_rows:
                first = False
                head = [table[c][0].as_py() for c in columns]
                if _is_header_row(head, spec):
                    stats.rows_read += 1
                    stats.reject("unexpected_header", spec.delimiter.join(head),
                                 "a header line where the format has none", line=1)
                    table = table.slice(1)
            _route(table, spec, stats, now, write)
            _flush_invalid(pending_invalid, stats)
        _flush_invalid(pending_invalid, stats)
    except pa.ArrowInvalid as exc:
        raise SourceError(f"{path}: unreadable as {spec.fmt} CSV after {stats.rows_read} rows: {exc}") from exc
    finally:
        for w in writers.values():
            w.close()
    return stats


def split_parquet(path: Path, spec: SourceSpec, scratch: Path, now: dt.datetime) -> SplitStats:
    """Route the rows of a Parquet source into ``scratch/dt=D.parquet`` files, unchanged."""
    try:
        pf = pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path}: unreadable Parquet file: {exc}") from exc
    schema = pf.schema_arrow
    missing = sorted(set(spec.column_map.values()) - set(schema.names))
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}; file has {schema.names} (rule: columns)")
    if pf.metadata.num_rows == 0:
        raise SourceError(f"{path}: empty file (0 rows): nothing to land")
    stats = SplitStats(columns=list(schema.names), suffix=".parquet")
    writers: dict[dt.date, pq.ParquetWriter] = {}

    def write(day: dt.date, part: pa.Table) -> None:
        if day not in writers:
            target = scratch / f"dt={day.isoformat()}.parquet"
            stats.files[day] = target
            writers[day] = pq.ParquetWriter(str(target), schema, compression="zstd")
        writers[day].write_table(part)

    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            _route(batch, spec, stats, now, write)
    finally:
        for w in writers.values():
            w.close()
    return stats
