"""The cleaning rules of preprocessing as a pure function: which valid rows are duplicates or noise.

:func:`plan_cleaning` gives every row that passed validation a *fate* (``clean``,
``duplicate_exact``, ``duplicate_near``, ``crawler_rate``, ``crawler_diversity``, ``burst``) and the
output order of the rows (user, time, item; ties in input order). Validation computes it once and
hands the rows over in that order with their fates (:mod:`pipelines.data.handover`), so
preprocessing only splits and writes; preprocessing computes it itself when the hand-over is
missing, stale, or was planned under other cleaning settings (:func:`cleaning_settings`).

1. **Exact duplicates**: all six canonical fields equal; the first copy in input order is kept.
2. **Near-exact duplicates**: same user, item, category and behaviour within
   ``near_duplicate_seconds`` of the previous such event (0 = off).
3. **Noise** on the rows left: ``crawler_rate`` (a user above ``crawler_max_events_per_hour`` in one
   clock hour: all the user's rows), ``crawler_diversity`` (at least
   ``crawler_min_events_for_diversity`` rows and distinct items / rows above
   ``crawler_max_item_diversity``), ``burst`` (a user's rows in one second beyond
   ``burst_max_events_per_second``), in that priority.

The noise rules count a user's events in a span of time, so they need timestamps at least that
fine. When every row of the partition lies on the same time of day (a log of dates without times:
a daily export stamps each event 00:00), ``crawler_rate`` and ``burst`` are not applied; when every
row lies on a whole hour, ``burst`` is not. :attr:`CleaningPlan.skipped` says which and why (such
data used to lose each user's events of a day beyond the 20th to ``burst``). The duplicate rules
still apply: the same event twice on a day without times is a duplicate, as documented for Ciao.

Vectorised: integer codes of the id columns (user and item codes sort like the strings), two
stable Arrow sorts over integer columns (by user, item, category, behaviour, time, value for the
duplicates; by user, time, item for the output order and the per-hour / per-second counts), NumPy
run arithmetic on the sorted codes. No storage here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.contracts import EVENT_SCHEMA

NOISE_REASONS = ("crawler_rate", "crawler_diversity", "burst")
DUPLICATE_FATES = ("duplicate_exact", "duplicate_near")
FATES = ("clean", *DUPLICATE_FATES, *NOISE_REASONS)
CLEAN, EXACT, NEAR, RATE, DIVERSITY, BURST = range(len(FATES))
CLEANING_SETTINGS = ("near_duplicate_seconds", "crawler_max_events_per_hour", "crawler_min_events_for_diversity",
                     "crawler_max_item_diversity", "burst_max_events_per_second")
_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 24 * _US_PER_HOUR
_US_PER_SECOND = 1_000_000


@dataclass
class CleaningPlan:
    """What cleaning does with a table of valid rows: ``fate`` per row (input order, an index into
    :data:`FATES`), ``order``, every row's index in output order (user, time, item), and ``stats``
    of the valid rows (distinct users, items, categories; items listed under several categories)."""

    fate: np.ndarray
    order: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)  # distinct users/items/categories, items under several
    users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # each row's user code
    skipped: dict[str, str] = field(default_factory=dict)  # rule -> why it was not applied (timestamps too coarse)

    def counts(self) -> dict[str, int]:
        """Rows per fate (fates with no row left out)."""
        return {FATES[k]: int(v) for k, v in enumerate(np.bincount(self.fate, minlength=len(FATES))) if v}

    def clean_indices(self) -> np.ndarray:
        """Indices of the clean rows, in output order."""
        return self.order[self.fate[self.order] == CLEAN]


def cleaning_settings(settings: Settings) -> dict[str, Any]:
    """The settings a :class:`CleaningPlan` depends on (a plan made under others must be redone)."""
    return {name: getattr(settings, name) for name in CLEANING_SETTINGS}


def _chunk(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def column_codes(column: pa.ChunkedArray | pa.Array, *, ordered: bool = False) -> np.ndarray:
    """Dense int64 codes of a string column (equal strings, equal codes); with ``ordered`` the codes
    also sort like the strings (byte order), so sorting by codes equals sorting by the strings."""
    arr = _chunk(column)
    encoded = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
    codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    if not ordered:
        return codes
    rank = np.empty(len(encoded.dictionary), dtype=np.int64)
    rank[np.asarray(pc.sort_indices(encoded.dictionary))] = np.arange(len(encoded.dictionary))
    return rank[codes]


def _runs(*keys: np.ndarray) -> np.ndarray:
    """Start flags of runs of equal consecutive rows over the sorted key arrays (first row: True)."""
    change = np.zeros(len(keys[0]), dtype=bool)
    if len(change):
        change[0] = True
        for k in keys:
            change[1:] |= k[1:] != k[:-1]
    return change


def _run_lengths_per_row(starts: np.ndarray) -> np.ndarray:
    """For start flags of runs, each row's run length."""
    idx = np.flatnonzero(starts)
    lengths = np.diff(np.r_[idx, len(starts)])
    return np.repeat(lengths, lengths)


def _stable_order(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Indices that sort the rows by the columns in order (ties keep input order): Arrow's stable
    multi-key sort over integer/float columns, several times faster than ``np.lexsort``."""
    table = pa.table(columns)
    return pc.sort_indices(table, sort_keys=[(name, "ascending") for name in columns]).to_numpy()


def plan_cleaning(valid: pa.Table, settings: Settings) -> CleaningPlan:
    """The :class:`CleaningPlan` of validated canonical rows (``user_id``, ``item_id``,
    ``category_id``, ``behavior``, ``ts`` int64 microseconds, ``value``). Pure: no storage."""
    n = valid.num_rows
    fate = np.zeros(n, dtype=np.int8)
    if n == 0:
        return CleaningPlan(fate=fate, order=np.zeros(0, dtype=np.int64),
                            stats={"users": 0, "items": 0, "categories": 0, "items_with_several_categories": 0})
    u = column_codes(valid["user_id"], ordered=True)
    i = column_codes(valid["item_id"], ordered=True)
    c, b = column_codes(valid["category_id"]), column_codes(valid["behavior"])
    ts = np.asarray(_chunk(valid["ts"]).to_numpy(zero_copy_only=False), dtype=np.int64)
    value = _chunk(valid["value"]).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    n_users = int(u.max()) + 1
    n_cats = int(c.max()) + 1
    pairs = np.asarray(pc.unique(pa.array(i * n_cats + c)).to_numpy())
    stats = {"users": n_users, "items": int(i.max()) + 1, "categories": n_cats,
             "items_with_several_categories": int(np.count_nonzero(np.bincount(pairs // n_cats) > 1))}

    skipped = _coarse_time_rules(ts)
    # 1-2. Duplicates: sorted by user, item, category, behaviour, time (and value when there are values).
    keys = {"u": u, "i": i, "c": c, "b": b, "ts": ts}
    has_values = not np.isnan(value).all()
    if has_values:
        keys["v"] = np.where(np.isnan(value), np.inf, value)  # null values compare equal to each other
    order = _stable_order(keys)
    # Two composite keys (user+item, category+behaviour) fit in int64 for any partition held in memory.
    s_ui = (u * (int(i.max()) + 1) + i)[order]
    s_cb = (c * (int(b.max()) + 1) + b)[order]
    sts = ts[order]
    same = sts[1:] == sts[:-1]
    if has_values:
        sv = keys["v"][order]
        same &= sv[1:] == sv[:-1]
    group_start = _runs(s_ui, s_cb)
    exact = ~group_start & np.r_[False, same]
    fate[order[exact]] = EXACT
    near_us = int(settings.near_duplicate_seconds) * _US_PER_SECOND
    if near_us > 0:
        kept = np.flatnonzero(~exact)
        later_in_group = ~_runs(s_ui[kept], s_cb[kept])
        gap = np.r_[0, np.diff(sts[kept])]
        fate[order[kept[later_in_group & (gap <= near_us)]]] = NEAR
    # Distinct items per user among the rows left (runs of user+item in the first sort).
    l_ui = s_ui[fate[order] == CLEAN]
    items_per_user = np.bincount(l_ui[_runs(l_ui)] // (int(i.max()) + 1), minlength=n_users)

    # 3. Output order (user, time, item) over every row; the noise counts run over the rows left.
    out = _stable_order({"u": u, "ts": ts, "i": i})
    live_out = out[fate[out] == CLEAN]
    su, sts_live = u[live_out], ts[live_out]
    per_user = np.bincount(su, minlength=n_users)
    hour_start = _runs(su, sts_live // _US_PER_HOUR)
    max_hour = np.zeros(n_users, dtype=np.int64)
    np.maximum.at(max_hour, su[hour_start], np.diff(np.r_[np.flatnonzero(hour_start), len(su)]))
    rate_bad = (max_hour > settings.crawler_max_events_per_hour) & ("crawler_rate" not in skipped)
    with np.errstate(divide="ignore", invalid="ignore"):
        diversity = np.where(per_user > 0, items_per_user / np.maximum(per_user, 1), 0.0)
    div_bad = (per_user >= settings.crawler_min_events_for_diversity) & (
        diversity > settings.crawler_max_item_diversity) & ~rate_bad
    burst = _run_lengths_per_row(_runs(su, sts_live // _US_PER_SECOND)) > settings.burst_max_events_per_second
    burst &= "burst" not in skipped
    live_fate = np.zeros(len(su), dtype=np.int8)
    live_fate[burst] = BURST
    live_fate[div_bad[su]] = DIVERSITY
    live_fate[rate_bad[su]] = RATE
    fate[live_out] = live_fate
    return CleaningPlan(fate=fate, order=out, stats=stats, users=u, skipped=skipped)


def _coarse_time_rules(ts: np.ndarray) -> dict[str, str]:
    """The time-span rules the timestamps are too coarse for (see the module doc), with the reason."""
    step = int(np.gcd.reduce(ts - ts.min())) if len(ts) > 1 else 0  # 0: every row at one instant
    if step % _US_PER_DAY == 0:
        why = "every row at the same time of day (dates without times)"
        return {"crawler_rate": why, "burst": why}
    if step % _US_PER_HOUR == 0:
        return {"burst": "every row on a whole hour"}
    return {}


def to_event_schema(rows: pa.Table) -> pa.Table:
    """Canonical columns of ``rows`` (``ts`` int64 microseconds) as :data:`EVENT_SCHEMA`."""
    return pa.table({
        "user_id": rows["user_id"], "item_id": rows["item_id"], "category_id": rows["category_id"],
        "behavior": rows["behavior"], "ts": pc.cast(rows["ts"], pa.timestamp("us", tz="UTC")),
        "value": pc.cast(rows["value"], pa.float64()),
    }).cast(EVENT_SCHEMA)


def fate_names(codes: np.ndarray) -> pa.Array:
    """Fate codes as their names (a string array)."""
    return pc.take(pa.array(FATES), pa.array(codes.astype(np.int64)))


def clean_events(valid: pa.Table, settings: Settings) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """Dedupe and de-noise validated canonical rows (``ts`` int64 microseconds).

    Returns (clean rows in :data:`EVENT_SCHEMA` sorted by user, time, item; set-aside noise rows in
    input order with a ``fate`` column; counts per fate). Pure: no storage.
    """
    clean, aside, counts = split_events(valid, settings)
    return clean, aside.filter(pc.invert(pc.is_in(aside["fate"], pa.array(DUPLICATE_FATES)))), counts


def split_events(valid: pa.Table, settings: Settings) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """:func:`clean_events`, but the set-aside rows include the dropped duplicates (``fate``
    ``duplicate_exact`` / ``duplicate_near``), so every input row is in exactly one output."""
    plan = plan_cleaning(valid, settings)
    clean = to_event_schema(valid.take(pa.array(plan.clean_indices(), pa.int64())))
    aside = plan.fate != CLEAN
    rows = valid.filter(pa.array(aside))
    return clean, rows.append_column("fate", fate_names(plan.fate[aside])), plan.counts()
