"""Source values to canonical candidates: timestamps to UTC microseconds, ids and behaviours mapped.

:func:`parse_ts` reads timestamps of any source type as UTC microseconds; :func:`canonicalize`
turns a landed raw table plus its :class:`~pipelines.data.formats.SourceSpec` into canonical
candidate columns (see ``contracts.EVENT_SCHEMA``), which validation flags and preprocessing
cleans. Pure functions of Arrow arrays: nothing here touches storage.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contracts import BEHAVIORS
from pipelines.data.formats import SourceSpec

# Timestamps before this or after now + 1 day are implausible for any source (always quarantined).
PLAUSIBLE_FROM = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


# --- timestamps ----------------------------------------------------------------------------------


def parse_ts(values: pa.Array | pa.ChunkedArray, ts_format: str, timezone: str = "UTC") -> pa.Array:
    """Timestamps of any source type as int64 microseconds since the epoch (UTC); null when unreadable.

    Strings in ``unix_s``/``unix_ms`` must be integers (optionally signed); ``iso`` strings are
    ISO-8601, with an offset (``Z``, ``+08:00``) honoured and without one read in ``timezone``.
    Arrow timestamps are converted (naive ones read in ``timezone``); integers follow ``ts_format``.
    """
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
    strings = pc.cast(values, pa.string())
    if ts_format in ("unix_s", "unix_ms"):
        if _all_short_digits(strings, 15):
            # The common case, checked without a regex: every value is 1-15 ASCII digits.
            return _scale(pc.cast(strings, pa.int64()), ts_format)
        strings = pc.utf8_trim_whitespace(strings)
        ok = pc.match_substring_regex(strings, r"^-?[0-9]{1,15}$")
        ints = pc.cast(pc.if_else(ok, strings, pa.scalar(None, pa.string())), pa.int64())
        return _scale(ints, ts_format)
    return _parse_iso(pc.utf8_trim_whitespace(strings), timezone)


def _all_short_digits(strings: pa.Array, max_length: int) -> bool:
    """Whether every value is non-null and 1..``max_length`` ASCII digits (no sign, no space)."""
    if len(strings) == 0 or strings.null_count:
        return False
    return bool(pc.all(pc.ascii_is_decimal(strings)).as_py()) and pc.max(pc.binary_length(strings)).as_py() <= max_length


def _all_plain(strings: pa.Array) -> bool:
    """Whether every value is non-empty ASCII letters and digits (so trimming changes nothing)."""
    return len(strings) == 0 or bool(pc.all(pc.ascii_is_alnum(strings)).as_py())


def digits_mask(strings: pa.Array | pa.ChunkedArray, max_length: int) -> pa.Array:
    """Per value: 1..``max_length`` ASCII digits (null stays null); the regex ``^[0-9]{1,max}$``
    without a regex engine."""
    return pc.and_(pc.ascii_is_decimal(strings), pc.less_equal(pc.binary_length(strings), max_length))


def _scale(ints: pa.Array, ts_format: str) -> pa.Array:
    if ts_format == "unix_ms":
        return pc.multiply(ints, pa.scalar(1000, pa.int64()))
    # Seconds (an integer column declared iso is read as seconds too). Guard the multiplication:
    # |seconds| beyond ~9e12 would overflow microseconds.
    big = pc.greater(pc.abs(ints), pa.scalar(9_000_000_000_000, pa.int64()))
    safe = pc.if_else(big, pa.scalar(None, pa.int64()), ints)
    return pc.multiply(safe, pa.scalar(1_000_000, pa.int64()))


def _parse_iso(strings: pa.Array, timezone: str) -> pa.Array:
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
    n = table.num_rows
    cmap = spec.column_map

    def text(column: str) -> pa.Array:
        arr = table[column].combine_chunks() if isinstance(table[column], pa.ChunkedArray) else table[column]
        arr = pc.cast(arr, pa.string())
        if not arr.null_count and _all_plain(arr):
            return arr  # nothing to trim, nothing empty: one pass instead of three copies
        s = pc.utf8_trim_whitespace(arr)
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
        # Codes match exactly first, then regardless of case and surrounding blanks ("PV", " buy ").
        loose_b = pc.utf8_lower(pc.utf8_trim_whitespace(raw_b))
        if spec.behavior_map:
            keys = pa.array(list(spec.behavior_map), pa.string())
            vals = pa.array(list(spec.behavior_map.values()), pa.string())
            index = pc.coalesce(pc.index_in(raw_b, value_set=keys),
                                pc.index_in(loose_b, value_set=pc.utf8_lower(pc.utf8_trim_whitespace(keys))))
            out["behavior"] = pc.take(vals, index)
        else:
            out["behavior"] = pc.if_else(pc.is_in(loose_b, value_set=pa.array(BEHAVIORS)), loose_b,
                                         pa.scalar(None, pa.string()))
    ts_col = table[cmap["ts"]]
    out["ts"] = parse_ts(ts_col, spec.ts_format, spec.timezone)
    out["ts_raw"] = pc.cast(ts_col, pa.string())
    if "value" in cmap:
        raw_v = text(cmap["value"])
        ok = pc.match_substring_regex(raw_v, _NUMBER)
        out["value"] = pc.cast(pc.if_else(ok, raw_v, pa.scalar(None, pa.string())), pa.float64())
        out["value_raw"] = raw_v
    else:
        out["value"] = pa.nulls(n, pa.float64())
        out["value_raw"] = pa.nulls(n, pa.string())
    out["row"] = pa.array(np.arange(n, dtype=np.int64))
    return pa.table(out)
