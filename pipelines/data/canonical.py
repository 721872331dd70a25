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
from pipelines.data.formats import UNIX_FORMATS, SourceSpec

# Timestamps before this or after now + 1 day are implausible for any source (always quarantined).
PLAUSIBLE_FROM = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


# --- timestamps ----------------------------------------------------------------------------------


def parse_ts(values: pa.Array | pa.ChunkedArray, ts_format: str, timezone: str = "UTC") -> pa.Array:
    """Timestamps of any source type as int64 microseconds since the epoch (UTC); null when unreadable.

    Strings in ``unix_s``/``unix_ms`` must be integers (optionally signed); ``iso`` strings are
    ISO-8601, with an offset (``Z``, ``+08:00``, a trailing ``UTC`` / ``GMT``) honoured and without one read in ``timezone``.
    Arrow timestamps are converted (naive ones read in ``timezone``), Arrow dates read as their
    midnight (in ``timezone``); integers follow ``ts_format``.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    t = values.type
    if pa.types.is_date(t):  # a day without a time: its midnight, in ``timezone`` like a naive timestamp
        values = pc.cast(values, pa.timestamp("us"))
        t = values.type
    if pa.types.is_timestamp(t):
        if t.tz is None and timezone != "UTC":
            values = _assume_zone(values, timezone)
        return pc.cast(pc.cast(values, pa.timestamp("us", tz="UTC")), pa.int64())
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        ints = pc.cast(values, pa.int64(), safe=False)
        return _scale(ints, ts_format)
    strings = pc.cast(values, pa.string())
    if ts_format in UNIX_FORMATS:
        if _all_short_digits(strings, 18):
            # The common case, checked without a regex: every value is 1-18 ASCII digits.
            return _scale(pc.cast(strings, pa.int64()), ts_format)
        strings = pc.utf8_trim_whitespace(strings)
        ok = pc.match_substring_regex(strings, r"^-?([0-9]{1,18}|[1-8][0-9]{18})$")  # fits int64
        ints = pc.cast(pc.if_else(ok, strings, pa.scalar(None, pa.string())), pa.int64())
        decimal = pc.match_substring_regex(strings, r"^-?[0-9]{1,19}\.[0-9]*$")
        if not pc.any(decimal).as_py():
            return _scale(ints, ts_format)
        # Fractional Unix times (1511568000.5): read as float64, exact to the microsecond for seconds
        # of this century, truncated toward zero like integers. Scientific notation (1.511568e+09)
        # stays unparseable: it has usually lost digits on the way (here, 100 s of them).
        floats = pc.cast(pc.if_else(decimal, strings, pa.scalar(None, pa.string())), pa.float64())
        micros = pc.trunc(_scale_float(floats, ts_format))
        in_range = pc.less(pc.abs(micros), 2.0**63)
        fractional = pc.cast(pc.if_else(in_range, micros, pa.scalar(None, pa.float64())), pa.int64())
        far = pc.if_else(in_range, pa.scalar(None, pa.int64()), pa.scalar(2**63 - 1, pa.int64()))
        return pc.coalesce(_scale(ints, ts_format), fractional, far)
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


_PER_US = {"unix_s": 1_000_000, "unix_ms": 1_000, "unix_us": 1, "unix_ns": -1_000}  # negative: divide


def _scale(ints: pa.Array, ts_format: str) -> pa.Array:
    """Integers in the unit of ``ts_format`` as microseconds. ``unix_auto`` reads each value by its
    size: below 1e11 seconds, below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds
    (any date from 1973 to 5138 has one reading). A value that overflows microseconds reads as
    a far-future time (quarantined as implausible, not as unreadable)."""
    if ts_format == "unix_auto":
        size = pc.abs(ints)
        unit = pc.if_else(pc.less(size, 10**11), 1_000_000, pc.if_else(pc.less(size, 10**14), 1_000,
                          pc.if_else(pc.less(size, 10**17), 1, -1_000)))
        return pc.if_else(pc.less(unit, 0), pc.divide(ints, 1_000), pc.multiply(ints, unit))
    factor = _PER_US.get(ts_format, 1_000_000)  # an integer column declared iso is read as seconds
    if factor < 0:
        return pc.divide(ints, -factor)  # integer division, truncating toward zero
    limit = (2**63 - 1) // factor
    overflow = pc.greater(pc.abs(ints), pa.scalar(limit, pa.int64()))
    safe = pc.if_else(overflow, pa.scalar(0, pa.int64()), ints)
    return pc.if_else(overflow, pa.scalar(2**63 - 1, pa.int64()), pc.multiply(safe, pa.scalar(factor, pa.int64())))


def _scale_float(values: pa.Array, ts_format: str) -> pa.Array:
    """Float Unix times in the unit of ``ts_format`` as (float) microseconds; ``unix_auto`` by size
    as in :func:`_scale`."""
    if ts_format == "unix_auto":
        size = pc.abs(values)
        factor = pc.if_else(pc.less(size, 1e11), 1e6, pc.if_else(pc.less(size, 1e14), 1e3,
                            pc.if_else(pc.less(size, 1e17), 1.0, 1e-3)))
        return pc.multiply(values, factor)
    per_us = _PER_US.get(ts_format, 1_000_000)
    return pc.multiply(values, float(per_us) if per_us > 0 else 1.0 / -per_us)


def _quoted_timestamps(details: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The quoted timestamp text of each detail of a timestamp reason (``<column>='<text>' ...``),
    details without one left out."""
    if isinstance(details, pa.ChunkedArray):
        details = details.combine_chunks()
    return pc.extract_regex(details, r"^[^=]*='(?P<d>[^']*)'").field("d").drop_null()


def guess_unix_unit(details: pa.Array | pa.ChunkedArray) -> str | None:
    """The ``unix_*`` format that most of the quoted timestamps (``<column>='<digits>' ...``) of
    ``details`` would read as a plausible date in, by their number of digits; None when unclear."""
    quoted = _quoted_timestamps(details)
    digits = quoted.filter(pc.match_substring_regex(quoted, r"^[0-9]{9,19}$"))
    lengths = pc.binary_length(digits).to_numpy(zero_copy_only=False)
    if len(lengths) == 0:
        return None
    units = {10: "unix_s", 13: "unix_ms", 16: "unix_us", 19: "unix_ns"}
    common = np.bincount(lengths).argmax()
    return units.get(int(common)) if np.mean(lengths == common) > 0.5 else None


def looks_iso(details: pa.Array | pa.ChunkedArray, sample: int = 200) -> bool:
    """Whether most of the quoted timestamps (``<column>='<text>' ...``) of the first ``sample``
    ``details`` read as ISO 8601 dates (the hint for a file landed with a unix ``--ts-format``)."""
    quoted = _quoted_timestamps(details[:sample])
    if len(quoted) == 0:
        return False
    parsed = _parse_iso(pc.utf8_trim_whitespace(quoted), "UTC")
    return parsed.null_count < 0.5 * len(parsed)


def _assume_zone(naive: pa.Array, timezone: str) -> pa.Array:
    """Naive timestamps read as wall-clock times in ``timezone``. A time that occurs twice (the hour
    a summer time ends) reads as its first occurrence; one that never occurs (skipped when summer
    time starts, 02:30 on a spring night in Berlin) as the first instant after the gap (03:00), as
    clocks and most exporters write it. CSV and Parquet sources read the same way."""
    return pc.assume_timezone(naive, timezone, ambiguous="earliest", nonexistent="latest")


# An offset after a time of day: Z, +08, +0800, +08:00, also after a space (``10:00:00 +0200``, as
# git and many log exporters write it); a date alone, 2017-11-25, has none.
_OFFSET = r"(?:Z|[T ]\d\d(?::?\d\d){0,2}(?:[.,]\d+)?\s*[+-]\d\d(?::?\d\d)?)$"


# A zone written as a name after the time, as exports of public logs have it (REES46:
# "2019-10-01 00:00:04 UTC"): read as the offset it names.
_ZONE_NAME = r"(?i)(\d)\s*(?:UTC|GMT)$"


def _parse_iso(strings: pa.Array, timezone: str) -> pa.Array:
    # RFC 3339 allows a lower-case t and z; pandas reads only upper case.
    strings = pc.utf8_upper(pc.replace_substring_regex(strings, _ZONE_NAME, r"\1+00:00"))
    text = strings.to_pandas()
    has_offset = text.str.contains(_OFFSET, regex=True, na=False).to_numpy()
    result = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    if has_offset.any():
        aware = pd.to_datetime(text[has_offset], format="ISO8601", errors="coerce", utc=True)
        result[has_offset] = aware.dt.as_unit("us")
    if (~has_offset).any():
        try:
            naive = pd.to_datetime(text[~has_offset], format="ISO8601", errors="coerce")
        except ValueError:  # pandas read a zone the pattern above did not see: value by value
            naive = _parse_iso_one_by_one(text[~has_offset], timezone)
        if getattr(naive.dt, "tz", None) is None:
            local = _assume_zone(pa.array(naive.dt.as_unit("us"), pa.timestamp("us")), timezone)
            naive = pd.Series(local.cast(pa.timestamp("us", tz="UTC")).to_pandas().array, index=naive.index)
        result[~has_offset] = naive.dt.tz_convert("UTC").dt.as_unit("us")
    return pa.array(result, pa.timestamp("us", tz="UTC")).cast(pa.int64())


def _parse_iso_one_by_one(text: pd.Series, timezone: str) -> pd.Series:
    """ISO 8601 times, each on its own: one with a zone at its instant, one without in ``timezone``,
    one that does not read as NaT (the slow path for a mix pandas refuses to read at once)."""
    instants: dict[str, Any] = {}
    for value in text.dropna().unique():
        try:
            stamp = pd.Timestamp(pd.to_datetime(value, format="ISO8601"))
        except (ValueError, OverflowError):
            instants[value] = pd.NaT
            continue
        if stamp is pd.NaT:
            instants[value] = pd.NaT
            continue
        if stamp.tzinfo is None:
            local = _assume_zone(pa.array([stamp.as_unit("us")], pa.timestamp("us")), timezone)
            stamp = pd.Timestamp(local.cast(pa.timestamp("us", tz="UTC"))[0].as_py())
        instants[value] = stamp.tz_convert("UTC")
    return pd.Series(pd.to_datetime(text.map(instants), utc=True), index=text.index).dt.as_unit("us")


def _canonical_behavior(codes: pa.Array) -> pa.Array:
    """``codes`` (lower-cased, trimmed) that are canonical behaviours; null for any other."""
    return pc.if_else(pc.is_in(codes, value_set=pa.array(BEHAVIORS)), codes, pa.scalar(None, pa.string()))


def id_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Ids of any Arrow type as text, the same id always the same text: a Parquet export that wrote
    ids as doubles or decimals gives ``123.0`` / ``123.00`` for user ``123``, which must not become a
    second user (nor a second pseudonym). Whole numbers lose their fraction, other decimals their
    trailing zeros (``10.50`` reads ``10.5``, as the double 10.5 does)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_floating(values.type):
        return _integral_floats_as_ints(values)
    text = pc.cast(values, pa.string())
    if pa.types.is_decimal(values.type) and values.type.scale > 0:
        text = pc.replace_substring_regex(text, r"(\.\d*?)0+$", r"\1")
        text = pc.replace_substring_regex(text, r"\.$", "")
    return text


def _integral_floats_as_ints(values: pa.Array) -> pa.Array:
    """Float ids as text, whole numbers without a fraction: a Parquet export that wrote ids as
    doubles gives ``123.0`` for user ``123``, which must not become a second user. NaN reads
    ``nan`` (a placeholder id), other fractions keep their digits."""
    f = values.to_numpy(zero_copy_only=False).astype(np.float64)
    whole = np.isfinite(f) & (np.abs(f) < 2.0**53)
    whole[whole] = f[whole] == np.round(f[whole])
    as_int = pc.cast(pa.array(np.where(whole, f, 0).astype(np.int64)), pa.string())
    return pc.if_else(pa.array(whole), as_int, pc.cast(values, pa.string()))


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
        arr = id_text(table[column])
        if not arr.null_count and _all_plain(arr):
            return arr  # nothing to trim, nothing empty: one pass instead of three copies
        s = pc.utf8_trim_whitespace(arr)
        return pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)

    out: dict[str, Any] = {}
    for f in ("user_id", "category_id"):
        out[f] = text(cmap[f])
    # A category-level log has no item ids: the category stands in for the item (nothing
    # downstream ranks items; duplicates are then the same user, category, behaviour and time).
    out["item_id"] = text(cmap["item_id"]) if "item_id" in cmap else out["category_id"]
    out = {f: out[f] for f in ("user_id", "item_id", "category_id")}
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
            mapped = pc.take(vals, index)
            # Canonical codes are themselves unless the map says otherwise (a map of the other codes only).
            out["behavior"] = pc.coalesce(mapped, _canonical_behavior(loose_b)) if mapped.null_count else mapped
        else:
            out["behavior"] = _canonical_behavior(loose_b)
    ts_col = table[cmap["ts"]]
    out["ts"] = parse_ts(ts_col, spec.ts_format, spec.timezone)
    out["ts_raw"] = pc.cast(ts_col, pa.string())
    if "value" in cmap:
        raw_v = text(cmap["value"])
        ok = pc.match_substring_regex(raw_v, _NUMBER)
        value = pc.cast(pc.if_else(ok, raw_v, pa.scalar(None, pa.string())), pa.float64())
        # A number too large for a float (1e400) reads as inf: bad_value, like the text 'inf'.
        out["value"] = pc.if_else(pc.is_finite(value), value, pa.scalar(None, pa.float64()))
        out["value_raw"] = raw_v
    else:
        out["value"] = pa.nulls(n, pa.float64())
        out["value_raw"] = pa.nulls(n, pa.string())
    out["row"] = pa.array(np.arange(n, dtype=np.int64))
    return pa.table(out)
