"""Source adapters: land raw behaviour logs under ``raw/events/dt=D/`` and map them to the canonical event.

Landing (:func:`land_events`) reads a local path or an ``s3://`` URI in one of four formats
and writes the rows *unchanged* (same columns, same text) into one raw file per UTC event
date, ``raw/events/dt=D/<name>.csv`` (or ``.parquet`` for a Parquet source), with a sidecar
``<name>.meta.json`` that says how to read it (format, column map, behaviour map, timestamp
format). It streams the source in bounded batches, so a file of any size lands in bounded memory.

Rows that cannot be placed in a date partition are not dropped: they go to
``quarantine/events/unplaced/<name>.parquet`` with a reason (``wrong_column_count``,
``unexpected_header``, ``malformed_row``, ``unparseable_timestamp``, ``implausible_timestamp``).
A file that cannot be read at all (missing, empty, corrupt gzip, wrong columns) raises
:class:`SourceError` with the file and the rule.

Canonicalisation (:func:`canonicalize`) turns a landed raw table plus its sidecar into the
canonical columns (see ``contracts.EVENT_SCHEMA``); validation and preprocessing both use it.

Formats:
- ``taobao``: UserBehavior raw, headerless ``user_id,item_id,category_id,behavior_type,timestamp``
  (pv/cart/fav/buy, Unix seconds), plain or gzip.
- ``ciao``: review logs with header ``user_id,item_id,category_id,rating,helpfulness,timestamp``;
  each row is a ``review`` with ``value`` = rating (1-5).
- ``csv`` / ``parquet``: any columns, with a user-given column map and behaviour map
  (a JSON/YAML file, see docs/data.md, or CLI flags).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import logging
import re
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import Settings
from pipelines.platform import layout, storage

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

FORMATS = ("taobao", "ciao", "csv", "parquet")
TS_FORMATS = ("unix_s", "unix_ms", "iso")
UNPLACED = f"{layout.QUARANTINE}/unplaced"
LANDING_REPORTS = "reports/landing"
# Timestamps before this or after now + 1 day are implausible for any source (always quarantined).
PLAUSIBLE_FROM = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
DIGITS = r"^[0-9]{1,20}$"
GENERIC_ID = r"^[A-Za-z0-9_.:\-]{1,128}$"
BATCH_BYTES = 16 << 20

CANONICAL_FIELDS = ("user_id", "item_id", "category_id", "behavior", "ts", "value")
TAOBAO_COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
CIAO_COLUMNS = ["user_id", "item_id", "category_id", "rating", "helpfulness", "timestamp"]
TAOBAO_BEHAVIORS = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "buy"}


class SourceError(ValueError):
    """A source file cannot be landed at all; the message names the file, the rule and the numbers."""


@dataclass(frozen=True)
class SourceSpec:
    """How to read one source: its columns, map to canonical fields, behaviours and time format.

    ``column_map`` maps canonical field -> source column (``behavior`` may be absent when
    ``behavior_constant`` is set, ``value`` is optional). ``behavior_map`` maps source codes to
    canonical behaviours (empty: codes are canonical already).
    """

    fmt: str
    column_map: dict[str, str]
    behavior_map: dict[str, str] = field(default_factory=dict)
    behavior_constant: str | None = None
    ts_format: str = "unix_s"
    timezone: str = "UTC"
    has_header: bool = True
    delimiter: str = ","
    columns: list[str] | None = None  # expected source columns in order (None: read the header)
    id_pattern: str = GENERIC_ID
    value_range: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["value_range"] = list(self.value_range) if self.value_range else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceSpec:
        data = dict(data)
        if data.get("value_range") is not None:
            data["value_range"] = tuple(float(v) for v in data["value_range"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


TAOBAO_SPEC = SourceSpec(
    fmt="taobao",
    column_map={"user_id": "user_id", "item_id": "item_id", "category_id": "category_id",
                "behavior": "behavior_type", "ts": "timestamp"},
    behavior_map=dict(TAOBAO_BEHAVIORS), ts_format="unix_s", has_header=False,
    columns=list(TAOBAO_COLUMNS), id_pattern=DIGITS)
CIAO_SPEC = SourceSpec(
    fmt="ciao",
    column_map={"user_id": "user_id", "item_id": "item_id", "category_id": "category_id",
                "ts": "timestamp", "value": "rating"},
    behavior_constant="review", ts_format="unix_s", has_header=True, columns=list(CIAO_COLUMNS),
    id_pattern=DIGITS, value_range=(1.0, 5.0))


@dataclass
class LandResult:
    """What one landing wrote: dates and raw keys, rows landed, rows quarantined (by reason)."""

    name: str
    fmt: str
    source: str
    rows_read: int
    rows: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    dates: list[dt.date]
    keys: list[str]
    quarantine_key: str | None
    rows_by_date: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dates"] = [d.isoformat() for d in self.dates]
        return out


# --- spec building -----------------------------------------------------------------------------


def build_spec(fmt: str, column_map: dict[str, str] | None = None,
               behavior_map: dict[str, str] | None = None, **options: Any) -> SourceSpec:
    """The :class:`SourceSpec` of ``fmt``; for ``csv``/``parquet`` from ``column_map`` (required) plus
    options from a column-map file (``behavior_constant``, ``ts_format``, ``timezone``, ``has_header``,
    ``delimiter``, ``id_pattern``, ``value_range``). Raises :class:`SourceError` on a bad map."""
    if fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "taobao":
        base = TAOBAO_SPEC
    elif fmt == "ciao":
        base = CIAO_SPEC
    else:
        if not column_map:
            raise SourceError(f"format {fmt!r} needs a column map (canonical field -> source column), "
                              "e.g. --column-map map.yaml or --map user_id=uid --map ts=event_time ...")
        base = SourceSpec(fmt=fmt, column_map={}, has_header=True)
    cmap = dict(base.column_map if column_map is None else column_map)
    unknown = sorted(set(cmap) - set(CANONICAL_FIELDS))
    if unknown:
        raise SourceError(f"column map: unknown canonical field(s) {unknown}; allowed: {list(CANONICAL_FIELDS)}")
    bconst = options.pop("behavior_constant", base.behavior_constant)
    required = ["user_id", "item_id", "category_id", "ts"] + ([] if bconst else ["behavior"])
    missing = [f for f in required if f not in cmap]
    if missing:
        raise SourceError(f"column map: no source column for canonical field(s) {missing}")
    bmap = dict(base.behavior_map if behavior_map is None else behavior_map)
    from pipelines.contracts import BEHAVIORS

    bad = sorted({v for v in bmap.values() if v not in BEHAVIORS} | ({bconst} - set(BEHAVIORS) if bconst else set()))
    if bad:
        raise SourceError(f"behaviour map: {bad} not canonical behaviours {list(BEHAVIORS)}")
    ts_format = options.pop("ts_format", base.ts_format)
    if ts_format not in TS_FORMATS:
        raise SourceError(f"ts_format {ts_format!r}: expected one of {', '.join(TS_FORMATS)}")
    value_range = options.pop("value_range", base.value_range)
    spec = SourceSpec(
        fmt=fmt, column_map=cmap, behavior_map=bmap, behavior_constant=bconst, ts_format=ts_format,
        timezone=options.pop("timezone", base.timezone), has_header=bool(options.pop("has_header", base.has_header)),
        delimiter=options.pop("delimiter", base.delimiter), columns=options.pop("columns", base.columns),
        id_pattern=options.pop("id_pattern", base.id_pattern),
        value_range=tuple(float(v) for v in value_range) if value_range else None)
    if options:
        raise SourceError(f"column map: unknown option(s) {sorted(options)}")
    try:
        re.compile(spec.id_pattern)
    except re.error as exc:
        raise SourceError(f"id_pattern {spec.id_pattern!r} is not a regular expression: {exc}") from exc
    return spec


def read_column_map_file(path: Path) -> dict[str, Any]:
    """Parse a column-map file (JSON or YAML; format in docs/data.md) into keyword arguments of
    :func:`build_spec`: ``column_map``, ``behavior_map`` and options."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SourceError(f"column map file {path}: cannot read ({exc.strerror})") from exc
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml/json errors carry line numbers in their text
        raise SourceError(f"column map file {path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("columns"), dict):
        raise SourceError(f"column map file {path}: expected a mapping with a 'columns' mapping "
                          "(canonical field -> source column)")
    out: dict[str, Any] = {"column_map": {str(k): str(v) for k, v in data.pop("columns").items()}}
    if "behavior_map" in data:
        out["behavior_map"] = {str(k): str(v) for k, v in (data.pop("behavior_map") or {}).items()}
    if "source_columns" in data:
        out["columns"] = [str(c) for c in data.pop("source_columns")]
    out.update(data)
    return out


# --- timestamps ----------------------------------------------------------------------------------


def parse_ts(values: pa.Array | pa.ChunkedArray, ts_format: str, timezone: str = "UTC") -> pa.Array:
    """Timestamps of any source type as int64 microseconds since the epoch (UTC); null when unreadable.

    Strings in ``unix_s``/``unix_ms`` must be integers (optionally signed); ``iso`` strings are
    ISO-8601, with an offset (``Z``, ``+08:00``) honoured and without one read in ``timezone``.
    Arrow timestamps are converted (naive ones read in ``timezone``); integers follow ``ts_format``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    t = values.type
    if pa.types.is_timestamp(t):
        if t.tz is None and timezone != "UTC":
            values = pc.assume_timezone(values, timezone, ambiguous="earliest", nonexistent="earliest")
        return pc.cast(pc.cast(values, pa.timestamp("us", tz="UTC")), pa.int64())
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        ints = pc.cast(values, pa.int64(), safe=False)
        return _scale(ints, ts_format)
    if pa.types.is_date(t):
        return pc.multiply(pc.cast(pc.cast(values, pa.date32()), pa.int64()), 86_400_000_000)
    strings = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    if ts_format in ("unix_s", "unix_ms"):
        ok = pc.match_substring_regex(strings, r"^-?[0-9]{1,15}$")
        ints = pc.cast(pc.if_else(ok, strings, pa.scalar(None, pa.string())), pa.int64())
        return _scale(ints, ts_format)
    return _parse_iso(strings, timezone)


def _scale(ints: pa.Array, ts_format: str) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    if ts_format == "unix_ms":
        return pc.multiply(ints, pa.scalar(1000, pa.int64()))
    if ts_format == "iso":  # an integer column declared iso: treat as seconds
        ts_format = "unix_s"
    # Guard the multiplication: |seconds| beyond ~9e12 would overflow microseconds.
    big = pc.greater(pc.abs(ints), pa.scalar(9_000_000_000_000, pa.int64()))
    safe = pc.if_else(big, pa.scalar(None, pa.int64()), ints)
    return pc.multiply(safe, pa.scalar(1_000_000, pa.int64()))


def _parse_iso(strings: pa.Array, timezone: str) -> pa.Array:
    import pandas as pd
    import pyarrow as pa

    text = strings.to_pandas()
    has_offset = text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True, na=False).to_numpy()
    result = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    if has_offset.any():
        aware = pd.to_datetime(text[has_offset], format="ISO8601", errors="coerce", utc=True)
        result[has_offset] = aware.dt.as_unit("us")
    if (~has_offset).any():
        naive = pd.to_datetime(text[~has_offset], format="ISO8601", errors="coerce")
        if getattr(naive.dt, "tz", None) is None:
            naive = naive.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
        result[~has_offset] = naive.dt.tz_convert("UTC").dt.as_unit("us")
    return pa.array(result, pa.timestamp("us", tz="UTC")).cast(pa.int64())


def plausible_bounds_us(now: dt.datetime | None = None) -> tuple[int, int]:
    """[2000-01-01, now + 1 day) in microseconds: outside it a timestamp is always quarantined."""
    now = now or dt.datetime.now(dt.UTC)
    return (int(PLAUSIBLE_FROM.timestamp()) * 1_000_000,
            int((now + dt.timedelta(days=1)).timestamp()) * 1_000_000)


# --- canonicalisation ----------------------------------------------------------------------------


def canonicalize(table: pa.Table, spec: SourceSpec) -> pa.Table:
    """Raw source columns -> canonical candidate columns (not yet validated).

    Output columns: ``user_id``, ``item_id``, ``category_id`` (strings, trimmed, "" as null),
    ``behavior`` (mapped; null when the source code is unknown), ``behavior_raw``, ``ts``
    (int64 microseconds UTC, null when unreadable), ``ts_raw``, ``value`` (float64, null when
    absent), ``value_raw``, ``row`` (0-based row number in the raw file).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    cmap = spec.column_map

    def text(column: str) -> pa.Array:
        arr = table[column].combine_chunks() if isinstance(table[column], pa.ChunkedArray) else table[column]
        s = pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))
        return pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)

    out: dict[str, Any] = {}
    for f in ("user_id", "item_id", "category_id"):
        out[f] = text(cmap[f])
    if spec.behavior_constant:
        out["behavior_raw"] = pc.take(pa.array([spec.behavior_constant], pa.string()),
                                      pa.array(np.zeros(n, dtype=np.int64)))
        out["behavior"] = out["behavior_raw"]
    else:
        raw_b = text(cmap["behavior"])
        out["behavior_raw"] = raw_b
        if spec.behavior_map:
            keys = pa.array(list(spec.behavior_map), pa.string())
            vals = pa.array(list(spec.behavior_map.values()), pa.string())
            idx = pc.index_in(raw_b, value_set=keys)
            out["behavior"] = pc.take(vals, idx)
        else:
            from pipelines.contracts import BEHAVIORS

            out["behavior"] = pc.if_else(pc.is_in(raw_b, value_set=pa.array(BEHAVIORS)), raw_b,
                                         pa.scalar(None, pa.string()))
    ts_col = table[cmap["ts"]]
    out["ts"] = parse_ts(ts_col, spec.ts_format, spec.timezone)
    out["ts_raw"] = pc.cast(ts_col, pa.string())
    if "value" in cmap:
        raw_v = text(cmap["value"])
        ok = pc.match_substring_regex(raw_v, r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
        out["value"] = pc.cast(pc.if_else(ok, raw_v, pa.scalar(None, pa.string())), pa.float64())
        out["value_raw"] = raw_v
    else:
        out["value"] = pa.nulls(n, pa.float64())
        out["value_raw"] = pa.nulls(n, pa.string())
    out["row"] = pa.array(np.arange(n, dtype=np.int64))
    return pa.table(out)


# --- reading raw sources ------------------------------------------------------------------------


def _open_text(path: Path) -> Any:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _first_line(path: Path) -> bytes | None:
    """The first non-empty line (BOM stripped), or None for an empty file; SourceError when unreadable."""
    try:
        with _open_text(path) as fh:
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
        with _open_text(path) as fh:
            while fh.read(8 << 20):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"{path}: unreadable file (corrupt or truncated gzip): {exc}") from exc


def _split(line: bytes, delimiter: str) -> list[str]:
    import csv

    return next(csv.reader([line.decode("utf-8", errors="replace")], delimiter=delimiter))


def _header_columns(path: Path, spec: SourceSpec) -> tuple[list[str], bool]:
    """The source's column names and whether the file's first line is a header to skip.

    Raises :class:`SourceError` for an empty file, a wrong column count, or missing/extra columns.
    """
    line = _first_line(path)
    if line is None:
        raise SourceError(f"{path}: empty file (no rows): nothing to land")
    fields = _split(line, spec.delimiter)
    if spec.has_header:
        names = [f.strip() for f in fields]
        missing = sorted({c for c in spec.column_map.values()} - set(names))
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


def _resolve_source(settings: Settings, source: str | Path, scratch: Path) -> Path:
    text = str(source)
    if text.startswith("s3://"):
        loc = storage.S3Uri.parse(text)
        target = scratch / Path(loc.key).name
        try:
            storage.s3_client(settings).download_file(loc.bucket, loc.key, str(target))
        except Exception as exc:  # botocore raises several error types for a missing key/bucket
            raise SourceError(f"{text}: cannot download ({exc})") from exc
        return target
    path = Path(text)
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    return path


def default_name(source: str | Path) -> str:
    """A landing name from the source's file name: ``UserBehavior_head.csv.gz`` -> ``UserBehavior_head``."""
    base = str(source).rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".gz", ".csv", ".parquet", ".tsv", ".txt"):
        base = base.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", base) or "source"


# --- landing -------------------------------------------------------------------------------------


def land_events(settings: Settings, source: str | Path, fmt: str, *, column_map: dict[str, str] | None = None,
                behavior_map: dict[str, str] | None = None, name: str | None = None,
                **spec_options: Any) -> LandResult:
    """Land ``source`` (local path or s3:// URI) of format ``fmt`` under ``raw/events/dt=D/<name>.*``.

    One raw file per UTC event date with the source rows unchanged, plus ``<name>.meta.json``
    (format, maps, row count). Rows that cannot be placed are quarantined under
    ``quarantine/events/unplaced/<name>.parquet`` with a reason; a landing report goes to
    ``reports/landing/<name>.json``. Landing the same ``name`` again replaces its earlier files in
    every partition. Raises :class:`SourceError` when the file cannot be read at all.
    """
    spec = build_spec(fmt, column_map, behavior_map, **spec_options)
    name = name or default_name(source)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,120}", name):
        raise SourceError(f"landing name {name!r}: use letters, digits, '_', '.', '-'")
    scratch = Path(settings.work_dir) / "landing" / name
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    try:
        path = _resolve_source(settings, source, scratch)
        now = dt.datetime.now(dt.UTC)
        if fmt == "parquet":
            stats = _split_parquet(path, spec, scratch, now)
        else:
            stats = _split_csv(path, spec, scratch, now)
        result = _publish(settings, name, str(source), spec, stats, scratch, now)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("landed %s (%s): %d rows into %d partitions, %d quarantined %s", source, fmt, result.rows,
             len(result.dates), result.quarantined, result.quarantine_reasons or "")
    return result


@dataclass
class _SplitStats:
    columns: list[str]
    suffix: str
    rows_read: int = 0
    rows_by_date: dict[dt.date, int] = field(default_factory=dict)
    files: dict[dt.date, Path] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, raw: str, detail: str = "", line: int | None = None) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.rejects.append({"reason": reason, "raw": raw, "detail": detail, "line": line})


def _route(batch: pa.RecordBatch | pa.Table, spec: SourceSpec, stats: _SplitStats, now: dt.datetime,
           write: Any) -> None:
    """Split one batch by UTC event date; quarantine rows whose date cannot be read or is implausible."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    stats.rows_read += table.num_rows
    ts = parse_ts(table[spec.column_map["ts"]], spec.ts_format, spec.timezone)
    lo, hi = plausible_bounds_us(now)
    unreadable = pc.is_null(ts)
    implausible = pc.fill_null(pc.or_(pc.less(ts, lo), pc.greater_equal(ts, hi)), False)
    bad = pc.or_(unreadable, implausible)
    if fmt_needs_plain(spec):
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


def fmt_needs_plain(spec: SourceSpec) -> bool:
    return spec.fmt == "taobao"


def _raw_rows(table: pa.Table, spec: SourceSpec) -> list[str]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return []
    cols = [pc.fill_null(pc.cast(table[c], pa.string()), "") for c in table.column_names]
    return [spec.delimiter.join(vals) for vals in zip(*(c.to_pylist() for c in cols), strict=True)]


def _split_csv(path: Path, spec: SourceSpec, scratch: Path, now: dt.datetime) -> _SplitStats:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, "rb") as fh:
        if fh.read(2) == b"\x1f\x8b":
            _check_whole_file(path)
    columns, skip_header = _header_columns(path, spec)
    stats = _SplitStats(columns=columns, suffix=".csv")
    pending_invalid: list[tuple[str, int, int]] = []

    def on_invalid(row: Any) -> str:
        pending_invalid.append((row.text, row.expected_columns, row.actual_columns))
        return "skip"

    schema = pa.schema([(c, pa.string()) for c in columns])
    quoting = "none" if fmt_needs_plain(spec) else "needed"
    writers: dict[dt.date, Any] = {}

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


def _flush_invalid(pending: list[tuple[str, int, int]], stats: _SplitStats) -> None:
    for text, expected, actual in pending:
        stats.rows_read += 1
        stats.reject("wrong_column_count", text, f"{actual} columns, expected {expected}")
    pending.clear()


def _split_parquet(path: Path, spec: SourceSpec, scratch: Path, now: dt.datetime) -> _SplitStats:
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    stats = _SplitStats(columns=list(schema.names), suffix=".parquet")
    writers: dict[dt.date, Any] = {}

    def write(day: dt.date, part: pa.Table) -> None:
        if day not in writers:
            target = scratch / f"dt={day.isoformat()}.parquet"
            stats.files[day] = target
            writers[day] = pq.ParquetWriter(str(target), schema, compression="zstd")
        writers[day].write_table(part)

    try:
        for batch in pf.iter_batches(batch_size=500_000):
            _route(batch, spec, stats, now, write)
    finally:
        for w in writers.values():
            w.close()
    return stats


def _delete_previous(settings: Settings, name: str) -> int:
    """Remove earlier landings of ``name`` from every raw partition (landing replaces, never appends)."""
    suffixes = (f"/{name}.csv", f"/{name}.parquet", f"/{name}.meta.json")
    keys = [k for k in storage.list_keys(settings, layout.RAW + "/") if k.endswith(suffixes)]
    client = storage.s3_client(settings)
    for start in range(0, len(keys), 1000):
        chunk = keys[start:start + 1000]
        client.delete_objects(Bucket=settings.bucket, Delete={"Objects": [{"Key": k} for k in chunk]})
    return len(keys)


def _publish(settings: Settings, name: str, source: str, spec: SourceSpec, stats: _SplitStats, scratch: Path,
             now: dt.datetime) -> LandResult:
    import pyarrow as pa

    _delete_previous(settings, name)
    keys: list[str] = []
    for day in sorted(stats.files):
        prefix = layout.partition_prefix(layout.RAW, day)
        key = f"{prefix}{name}{stats.suffix}"
        storage.upload_file(settings, str(stats.files[day]), key)
        meta = {"name": name, "source": source, "format": spec.fmt, "spec": spec.to_dict(),
                "columns": stats.columns, "file": key, "rows": stats.rows_by_date[day],
                "landed_at": now.isoformat()}
        storage.put_json(settings, f"{prefix}{name}.meta.json", meta)
        keys.append(key)
    q_key = f"{UNPLACED}/{name}.parquet"
    if stats.rejects:
        table = pa.table({
            "source": [source] * len(stats.rejects),
            "raw": [r["raw"] for r in stats.rejects],
            "reason": [r["reason"] for r in stats.rejects],
            "rule": [r["reason"] for r in stats.rejects],
            "detail": [r["detail"] for r in stats.rejects],
            "line": pa.array([r["line"] for r in stats.rejects], pa.int64()),
        })
        storage.write_parquet(settings, q_key, table)
    else:
        storage.s3_client(settings).delete_object(Bucket=settings.bucket, Key=q_key)
    rows = sum(stats.rows_by_date.values())
    quarantined = len(stats.rejects)
    if rows + quarantined != stats.rows_read:
        raise AssertionError(f"landing {source}: rows read {stats.rows_read} != landed {rows} + "
                             f"quarantined {quarantined}")
    result = LandResult(name=name, fmt=spec.fmt, source=source, rows_read=stats.rows_read, rows=rows,
                        quarantined=quarantined, quarantine_reasons=dict(stats.reasons),
                        dates=sorted(stats.rows_by_date), keys=keys,
                        quarantine_key=q_key if stats.rejects else None,
                        rows_by_date={d.isoformat(): n for d, n in sorted(stats.rows_by_date.items())})
    storage.put_json(settings, f"{LANDING_REPORTS}/{name}.json", result.to_dict())
    return result


# --- reading landed raw files (validation and preprocessing) -------------------------------------


@dataclass(frozen=True)
class RawFile:
    """One landed raw file of a partition and its sidecar."""

    key: str
    name: str
    spec: SourceSpec
    columns: list[str]
    rows: int


_SIDECARS: dict[tuple[str, str, str, str], dict[str, Any]] = {}


def list_raw_files(settings: Settings, date: dt.date) -> tuple[list[RawFile], list[str]]:
    """Landed files of ``raw/events/dt=date/`` with their sidecars, and data keys that lack one.

    Sidecars are cached per process by key and ETag (the volume check reads the sidecars of the
    last partitions for every partition it validates).
    """
    prefix = layout.partition_prefix(layout.RAW, date)
    client = storage.s3_client(settings)
    etags: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix):
        etags.update({o["Key"]: o.get("ETag", "") for o in page.get("Contents", [])})
    keys = sorted(etags)
    metas = {k.removesuffix(".meta.json") for k in keys if k.endswith(".meta.json")}
    files: list[RawFile] = []
    orphans: list[str] = []
    for key in keys:
        if key.endswith(".meta.json"):
            continue
        stem = key.rsplit(".", 1)[0]
        if stem not in metas:
            orphans.append(key)
            continue
        meta_key = stem + ".meta.json"
        cache_key = (settings.s3_endpoint_url, settings.bucket, meta_key, etags[meta_key])
        meta = _SIDECARS.get(cache_key) if etags[meta_key] else None
        if meta is None:
            meta = storage.get_json(settings, meta_key)
            if len(_SIDECARS) > 10_000:
                _SIDECARS.clear()
            _SIDECARS[cache_key] = meta
        files.append(RawFile(key=key, name=meta["name"], spec=SourceSpec.from_dict(meta["spec"]),
                             columns=list(meta["columns"]), rows=int(meta["rows"])))
    return files, orphans


def read_raw_file(settings: Settings, raw: RawFile) -> pa.Table:
    """A landed raw file as an Arrow table with its source columns (CSV: all strings).

    Raises :class:`SourceError` when it cannot be parsed or its columns differ from the sidecar.
    """
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    data = storage.get_bytes(settings, raw.key)
    try:
        if raw.key.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(data))
        else:
            if not data.strip():
                return pa.table({c: pa.array([], pa.string()) for c in raw.columns})
            spec = raw.spec
            table = pacsv.read_csv(
                io.BytesIO(data),
                read_options=pacsv.ReadOptions(column_names=None if spec.has_header else raw.columns,
                                               block_size=BATCH_BYTES),
                parse_options=pacsv.ParseOptions(delimiter=spec.delimiter),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in raw.columns},
                    strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise SourceError(f"s3://{settings.bucket}/{raw.key}: unreadable raw file: {exc}") from exc
    if table.column_names != raw.columns:
        missing = [c for c in raw.columns if c not in table.column_names]
        extra = [c for c in table.column_names if c not in raw.columns]
        raise SourceError(f"s3://{settings.bucket}/{raw.key}: columns {table.column_names} differ from the "
                          f"landed columns {raw.columns} (missing {missing}, extra {extra}; rule: columns)")
    return table


# --- command line --------------------------------------------------------------------------------


def _pairs(items: list[str] | None, flag: str) -> dict[str, str] | None:
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SourceError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _cmd_land(args: argparse.Namespace, settings: Settings) -> int:
    try:
        kwargs: dict[str, Any] = {}
        if args.column_map:
            kwargs = read_column_map_file(Path(args.column_map))
        cmap = _pairs(args.map, "--map")
        if cmap:
            kwargs["column_map"] = {**kwargs.get("column_map", {}), **cmap}
        bmap = _pairs(args.behavior_map, "--behavior-map")
        if bmap:
            kwargs["behavior_map"] = {**kwargs.get("behavior_map", {}), **bmap}
        for opt in ("ts_format", "timezone", "behavior_constant", "delimiter"):
            if getattr(args, opt):
                kwargs[opt] = getattr(args, opt)
        if args.no_header:
            kwargs["has_header"] = False
        result = land_events(settings, args.source, args.format, name=args.name, **kwargs)
    except SourceError as exc:
        print(f"land failed: {exc}")
        return 1
    except storage.StorageError as exc:
        print(f"land failed (storage): {exc}")
        return 1
    span = f"{result.dates[0]}..{result.dates[-1]}" if result.dates else "no dates"
    print(f"landed {result.rows} of {result.rows_read} rows from {result.source} as '{result.name}' into "
          f"{len(result.dates)} partitions ({span}); quarantined {result.quarantined} "
          f"{result.quarantine_reasons or ''}")
    return 0


def register_cli(subparsers: Any) -> None:
    """``python -m pipelines land --source PATH --format taobao [--column-map FILE] ...``."""
    p = subparsers.add_parser("land", help="land a source file under raw/events/dt=.../ (by UTC event date)")
    p.add_argument("--source", required=True, help="local path or s3://bucket/key")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--name", default=None, help="landing name (default: the file name); same name replaces")
    p.add_argument("--column-map", default=None, help="JSON/YAML column-map file (csv/parquet; see docs/data.md)")
    p.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                   help="canonical field to source column, repeatable (e.g. --map ts=event_time)")
    p.add_argument("--behavior-map", action="append", metavar="CODE=BEHAVIOR",
                   help="source behaviour code to canonical behaviour, repeatable (e.g. click=view)")
    p.add_argument("--behavior-constant", default=None, help="every row has this behaviour (e.g. review)")
    p.add_argument("--ts-format", default=None, choices=TS_FORMATS)
    p.add_argument("--timezone", default=None, help="zone of timestamps without an offset (default UTC)")
    p.add_argument("--delimiter", default=None)
    p.add_argument("--no-header", action="store_true", help="csv: the file has no header line")
    p.set_defaults(func=_cmd_land)
