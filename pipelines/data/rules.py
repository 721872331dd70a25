"""Row rules: which rows of a raw partition are quarantined, and why (shared by validation and preprocessing).

:func:`flag_rows` is a pure function of canonical candidates (:func:`~pipelines.data.canonical.canonicalize`),
the source spec, the partition date and the settings: each row gets ``reason`` (the first rule it
fails in :data:`ROW_RULES` order, null when it passes) and ``rules`` (all it fails).
:func:`flag_partition` reads every landed file of a partition and flags it; :func:`split_flagged`
divides the flagged rows into valid and quarantined, with a partition wholly outside the window
set aside as ``outside_window``. Validation and preprocessing both call these, so the clean and
quarantined rows of a partition always reconcile with its raw rows. Rules and reasons are
documented in docs/data.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.contracts import BEHAVIORS, IGNORE_BEHAVIOR
from pipelines.data.canonical import canonicalize, digits_mask, plausible_bounds_us
from pipelines.data.formats import DIGITS, SourceError, SourceSpec
from pipelines.data.raw import RawFile, RawPartition, list_raw_partitions, parse_raw_file
from pipelines.platform import layout, storage
from pipelines.platform.dates import utc_day_us

# Row rules in priority order: a row's reason is the first that fails.
ROW_RULES = ("null_user_id", "null_item_id", "null_category_id", "placeholder_id", "bad_id_format",
             "ignored_behavior", "unknown_behavior", "unparseable_timestamp", "implausible_timestamp", "outside_window",
             "wrong_partition", "bad_value", "value_out_of_range")
OUTSIDE_WINDOW = "outside_window"
IGNORED_BEHAVIOR = "ignored_behavior"
# Reasons for rows that are out of scope, not broken: they do not count toward the bad-row share.
OUT_OF_SCOPE = (IGNORED_BEHAVIOR, OUTSIDE_WINDOW)


def broken_reasons(reasons: dict[str, int]) -> dict[str, int]:
    """The quarantine ``reasons`` (rows per reason) of broken rows: those not :data:`OUT_OF_SCOPE`."""
    return {reason: rows for reason, rows in reasons.items() if reason not in OUT_OF_SCOPE}
# Texts that exports write for a missing id (pandas, SQL, spreadsheets): not a user, item or category.
PLACEHOLDER_IDS = pa.array(["nan", "null", "none", "nil", "na", "n/a", "-", "--", "?", "\\n", "undefined", "<na>",
                            "#n/a"], pa.string())
CANONICAL_KEY_COLUMNS = ["user_id", "item_id", "category_id", "behavior", "ts", "value"]


class ValidationError(RuntimeError):
    """A batch-level rule failed; the message names the partition, file(s), rule and numbers."""


@dataclass
class FlaggedPartition:
    """The canonical candidates of one raw partition with each row's failed rule (``reason``)."""

    date: dt.date
    canon: pa.Table  # canonicalize() columns + source_file, reason, rules
    files: list[RawFile]
    in_window: bool

    @property
    def rows(self) -> int:
        return self.canon.num_rows


# --- the window ----------------------------------------------------------------------------------


def window_bounds_us(settings: Settings) -> tuple[int | None, int | None]:
    """The window [start 00:00, end+1 00:00) in ``window_timezone``, as UTC microseconds (None = open)."""
    zone = ZoneInfo(settings.window_timezone)

    def at(d: dt.date) -> int:
        return int(dt.datetime.combine(d, dt.time(), tzinfo=zone).timestamp()) * 1_000_000

    lo = at(settings.window_start) if settings.window_start else None
    hi = at(settings.window_end + dt.timedelta(days=1)) if settings.window_end else None
    return lo, hi


def in_window(settings: Settings, date: dt.date) -> bool:
    """Whether the UTC day ``date`` overlaps the configured window (None bounds = unbounded)."""
    lo, hi = window_bounds_us(settings)
    d_lo, d_hi = utc_day_us(date)
    return (lo is None or d_hi > lo) and (hi is None or d_lo < hi)


# --- flagging ------------------------------------------------------------------------------------


def flag_rows(canon: pa.Table, spec: SourceSpec, date: dt.date, settings: Settings,
              now: dt.datetime | None = None) -> tuple[pa.Array, pa.Array]:
    """Row rules over canonical candidates: (``reason`` = first failed rule or null, ``rules`` = all,
    comma separated). Pure function of the table, the source spec, the partition date and settings."""
    n = canon.num_rows
    false = pa.scalar(False)
    ts = canon["ts"]
    lo, hi = plausible_bounds_us(now)
    w_lo, w_hi = window_bounds_us(settings)
    d_lo, d_hi = utc_day_us(date)

    def ids_bad() -> pa.Array:
        out = pa.array([False] * n)
        for f in ("user_id", "item_id", "category_id"):
            # The built-in digits pattern is checked without a regex engine (same answer, ~50x faster).
            ok = (digits_mask(canon[f], 20) if spec.id_pattern == DIGITS
                  else pc.match_substring_regex(canon[f], spec.id_pattern))
            out = pc.or_(out, pc.fill_null(pc.invert(ok), False))
        return out

    def placeholders() -> pa.Array:
        out = pa.array([False] * n)
        if spec.id_pattern == DIGITS:  # no placeholder is digits: bad_id_format catches them, cheaper
            return out
        for f in ("user_id", "item_id", "category_id"):
            out = pc.or_(out, pc.fill_null(pc.is_in(pc.utf8_lower(canon[f]), value_set=PLACEHOLDER_IDS), False))
        return out

    known = pc.is_in(canon["behavior"], value_set=pa.array(BEHAVIORS))
    ignored = pc.fill_null(pc.equal(canon["behavior"], IGNORE_BEHAVIOR), false)
    parsed = pc.is_valid(ts)
    plausible = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
    window = pa.array([True] * n)
    if w_lo is not None:
        window = pc.and_(window, pc.greater_equal(ts, w_lo))
    if w_hi is not None:
        window = pc.and_(window, pc.less(ts, w_hi))
    in_part = pc.and_(pc.greater_equal(ts, d_lo), pc.less(ts, d_hi))
    value_given = pc.is_valid(canon["value_raw"])
    value_bad = pc.and_(value_given, pc.is_null(canon["value"]))
    if spec.value_range:
        vlo, vhi = spec.value_range
        out_of_range = pc.fill_null(pc.or_(pc.less(canon["value"], vlo), pc.greater(canon["value"], vhi)), False)
    else:
        out_of_range = pa.array([False] * n)
    checks = {
        "null_user_id": pc.is_null(canon["user_id"]),
        # Without an item column the category stands in for the item: a missing one is the category's.
        "null_item_id": pc.is_null(canon["item_id"]) if "item_id" in spec.column_map else pa.array(np.zeros(n, bool)),
        "null_category_id": pc.is_null(canon["category_id"]),
        "placeholder_id": placeholders(),
        "bad_id_format": ids_bad(),
        IGNORED_BEHAVIOR: ignored,
        "unknown_behavior": pc.and_(pc.invert(pc.fill_null(known, false)), pc.invert(ignored)),
        "unparseable_timestamp": pc.invert(parsed),
        "implausible_timestamp": pc.and_(parsed, pc.invert(pc.fill_null(plausible, false))),
        OUTSIDE_WINDOW: pc.and_(pc.fill_null(plausible, false), pc.invert(pc.fill_null(window, false))),
        "wrong_partition": pc.and_(pc.fill_null(plausible, false), pc.invert(pc.fill_null(in_part, false))),
        "bad_value": value_bad,
        "value_out_of_range": out_of_range,
    }
    return _reasons(n, [_mask(checks[name], n) for name in ROW_RULES])


def _mask(check: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    arr = check.combine_chunks() if isinstance(check, pa.ChunkedArray) else check
    return np.zeros(n, dtype=bool) if len(arr) == 0 else pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def _reasons(n: int, masks: list[np.ndarray]) -> tuple[pa.Array, pa.Array]:
    """(first failed rule, all failed rules comma separated) per row from one mask per rule in
    :data:`ROW_RULES` order; computed over the failing rows only (usually few)."""
    failing = np.flatnonzero(np.logical_or.reduce(masks)) if masks else np.zeros(0, dtype=np.int64)
    if len(failing) == 0:
        return pa.nulls(n, pa.string()), pa.nulls(n, pa.string())
    bits = np.zeros(len(failing), dtype=np.int64)
    for k, mask in enumerate(masks):
        bits |= mask[failing].astype(np.int64) << k
    combos, combo_of_row = np.unique(bits, return_inverse=True)
    names = [[ROW_RULES[k] for k in range(len(ROW_RULES)) if int(c) >> k & 1] for c in combos]
    first = pa.array([ns[0] for ns in names], pa.string())
    joined = pa.array([",".join(ns) for ns in names], pa.string())
    code = np.full(n, -1, dtype=np.int64)
    code[failing] = combo_of_row
    index = pa.array(code, mask=code < 0)
    return pc.take(first, index), pc.take(joined, index)


def flag_partition(settings: Settings, date: dt.date, now: dt.datetime | None = None, *,
                   partition: RawPartition | None = None, contents: Mapping[str, bytes] | None = None
                   ) -> FlaggedPartition:
    """Read every landed file of ``raw/events/dt=date/`` and flag its rows (see :func:`flag_rows`).

    ``partition`` (its listing and sidecars) and ``contents`` (the files' bytes by key) are used
    when the caller already has them (validation fetches many partitions at once). Raises
    :class:`ValidationError` for an empty partition, a data file without sidecar, or an unreadable
    file / changed columns (batch-level: the message names the file and the rule).
    """
    if partition is None:
        partition = list_raw_partitions(settings, [date]).get(date) or RawPartition(date, (), (), ())
    if partition.orphans:
        orphans = partition.orphans
        raise ValidationError(f"dt={date}: rule files_have_sidecar failed: {len(orphans)} raw file(s) without "
                              f"a .meta.json sidecar ({', '.join(orphans[:3])}); land files with "
                              "`python -m pipelines land`")
    if not partition.files:
        prefix = layout.partition_prefix(layout.RAW, date)
        raise ValidationError(f"dt={date}: rule partition_not_empty failed: no landed files under "
                              f"{storage.uri(settings, prefix)}")
    parts: list[pa.Table] = []
    for raw in partition.files:
        try:
            data = contents[raw.key] if contents is not None else storage.get_bytes(settings, raw.key)
            table = parse_raw_file(settings, raw, data)
        except (SourceError, storage.StorageError) as exc:
            raise ValidationError(f"dt={date}: rule readable_file failed: {exc}") from exc
        canon = canonicalize(table, raw.spec)
        reason, rules = flag_rows(canon, raw.spec, date, settings, now)
        # One dictionary entry per file instead of the key repeated on every row.
        source = pa.DictionaryArray.from_arrays(pa.array(np.zeros(canon.num_rows, np.int32)), pa.array([raw.key]))
        canon = canon.append_column("source_file", source)
        canon = canon.append_column("reason", reason).append_column("rules", rules)
        parts.append(canon)
    canon_all = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    return FlaggedPartition(date=date, canon=canon_all, files=list(partition.files),
                            in_window=in_window(settings, date))


def mark_outside_window(flagged: FlaggedPartition) -> pa.Table:
    """The flagged rows, where a partition wholly outside the configured window has every row that
    passed the rules set aside as ``outside_window`` (out of scope, not broken: not an error)."""
    canon = flagged.canon
    if flagged.in_window:
        return canon
    reason = pc.if_else(pc.is_null(canon["reason"]), OUTSIDE_WINDOW, canon["reason"])
    return canon.set_column(canon.column_names.index("reason"), "reason", reason)


def split_flagged(flagged: FlaggedPartition) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """(valid rows, quarantined rows, quarantined rows per reason) of a flagged partition, after
    :func:`mark_outside_window`."""
    canon = mark_outside_window(flagged)
    if canon["reason"].null_count == canon.num_rows:  # no row fails a rule: nothing to filter
        return canon, canon.slice(0, 0), {}
    bad_mask = pc.is_valid(canon["reason"])
    return canon.filter(pc.invert(bad_mask)), canon.filter(bad_mask), count_reasons(canon["reason"])


# --- counting ------------------------------------------------------------------------------------


def count_reasons(reason: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """Rows per non-null reason."""
    counts = pc.value_counts(reason.drop_null())
    return {str(c["values"]): int(c["counts"]) for c in counts.to_pylist() if c["values"] is not None}


def count_exact_duplicates(valid: pa.Table) -> int:
    """Rows that repeat an earlier row on every canonical field (user, item, category, behaviour, ts, value)."""
    if valid.num_rows == 0:
        return 0
    groups = valid.select(CANONICAL_KEY_COLUMNS).group_by(CANONICAL_KEY_COLUMNS, use_threads=True).aggregate([])
    return valid.num_rows - groups.num_rows


def count_items_with_several_categories(valid: pa.Table) -> int:
    """Items listed under more than one category among ``valid`` rows (reported, not a rule)."""
    if valid.num_rows == 0:
        return 0
    pairs = valid.select(["item_id", "category_id"]).group_by(["item_id", "category_id"]).aggregate([])
    per_item = pairs.group_by("item_id").aggregate([("category_id", "count")])
    return int(pc.sum(pc.greater(per_item["category_id_count"], 1)).as_py() or 0)
