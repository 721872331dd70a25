"""Preprocess one raw partition into ``clean/events/dt=D/part-00000.parquet`` (canonical events).

For partition D, :func:`preprocess_partition` takes the rows that passed validation from its
hand-over (``staging/validated/dt=D/valid.parquet``, used while the raw files and window are
unchanged) or else recomputes the validation row flags
(:func:`pipelines.data.rules.flag_partition`, the same pure rules, so both steps agree), then on
the rows that passed:

1. removes exact duplicates (every canonical field equal) and near-exact duplicates (same user,
   item, category and behaviour within ``near_duplicate_seconds`` of the previous such event) —
   counted, not quarantined: they carry no information;
2. sets aside noise with a reason (``quarantine/events/dt=D/preprocess.parquet``):
   ``crawler_rate`` (a user above ``crawler_max_events_per_hour`` events in one clock hour),
   ``crawler_diversity`` (at least ``crawler_min_events_for_diversity`` events in the day with
   distinct items/events above ``crawler_max_item_diversity``) and ``burst`` (a user's events in
   one second beyond ``burst_max_events_per_second``);
3. normalises types (strings, ``ts`` timestamp[us, UTC], ``value`` float64 or null) to
   :data:`pipelines.contracts.EVENT_SCHEMA`, sorted by user then time.

Counts reconcile for every partition — rows in = clean + quarantined (validation + noise) +
duplicates dropped — asserted here and recorded in ``reports/preprocess/dt=D.json``. The
partition is replaced whole (its prefix is deleted first). Duplicate removal and noise rules
run vectorised (NumPy over integer codes that sort like the strings), one partition at a time.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.contracts import EVENT_SCHEMA
from pipelines.data import handover, rules
from pipelines.data.quarantine import PREPROCESS, write_quarantine, write_validation_quarantine
from pipelines.platform import layout, storage

log = logging.getLogger(__name__)

NOISE_REASONS = ("crawler_rate", "crawler_diversity", "burst")
DUPLICATE_FATES = ("duplicate_exact", "duplicate_near")
FATES = ("clean", *DUPLICATE_FATES, *NOISE_REASONS)
NOISE_COLUMNS = ["source_file", "row", "user_id", "item_id", "category_id", "behavior", "ts", "value"]


class PreprocessError(RuntimeError):
    """Counts did not reconcile or a partition cannot be preprocessed; the message names the partition."""


@dataclass
class PreprocessResult:
    """Counts of one preprocessed partition: rows_in = clean + quarantined + duplicates_dropped."""

    date: dt.date
    rows_in: int
    clean: int
    quarantined: int
    quarantined_validation: int
    quarantined_noise: int
    duplicates_dropped: int
    exact_duplicates: int
    near_duplicates: int
    reasons: dict[str, int]
    clean_keys: list[str]
    quarantine_key: str | None
    users: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["date"] = self.date.isoformat()
        return out


def _codes(column: pa.ChunkedArray | pa.Array, *, ordered: bool = False) -> np.ndarray:
    """Dense int64 codes of a string column (equal strings, equal codes); with ``ordered`` the codes
    also sort like the strings (byte order), so sorting by codes equals sorting by the strings."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
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


def clean_events(valid: pa.Table, settings: Settings) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """Dedupe and de-noise validated canonical rows (``ts`` int64 microseconds).

    Returns (clean rows in :data:`EVENT_SCHEMA` sorted by user, time, item; set-aside noise rows with
    a ``fate`` column; counts per fate: ``clean``, ``duplicate_exact``, ``duplicate_near`` and each
    noise reason). Pure: no storage. Vectorised with NumPy over integer codes of the string columns
    (codes that sort like the strings, so the output order needs no string sort): one stable sort
    by (user, item, category, behaviour, time, value) finds duplicates and per-user item counts,
    one by (user, time, item) over the remaining rows gives hourly/second counts and the output order.
    """
    n = valid.num_rows
    clean_code, exact_code, near_code, rate_code, div_code, burst_code = range(len(FATES))
    fate = np.zeros(n, dtype=np.int64)
    out_idx = np.zeros(0, dtype=np.int64)
    if n:
        u = _codes(valid["user_id"], ordered=True)
        i = _codes(valid["item_id"], ordered=True)
        c, b = _codes(valid["category_id"]), _codes(valid["behavior"])
        ts = np.asarray(valid["ts"].to_numpy(), dtype=np.int64)
        value = valid["value"].to_numpy(zero_copy_only=False).astype(np.float64)
        vkey = np.where(np.isnan(value), np.inf, value)  # null values compare equal to each other
        n_users, n_items = int(u.max()) + 1, int(i.max()) + 1
        ui = u * n_items + i  # < n**2: no overflow for any partition that fits in memory
        cb = c * (int(b.max()) + 1) + b
        order = np.lexsort((vkey, ts, cb, ui))  # stable: equal rows keep their input order
        s_ui, s_cb, sts, sv = ui[order], cb[order], ts[order], vkey[order]
        group_start = _runs(s_ui, s_cb)
        exact = ~group_start & np.r_[False, (sts[1:] == sts[:-1]) & (sv[1:] == sv[:-1])]
        fate[order[exact]] = exact_code
        # Near duplicates: among the remaining rows, a repeat of the previous one in its group within the gap.
        near_us = int(settings.near_duplicate_seconds) * 1_000_000
        if near_us > 0:
            keep_idx = np.flatnonzero(~exact)
            k_group = ~_runs(s_ui[keep_idx], s_cb[keep_idx])
            gap = np.r_[0, np.diff(sts[keep_idx])]
            fate[order[keep_idx[k_group & (gap <= near_us)]]] = near_code
        # Distinct items per user among the remaining rows (runs of user*item in the first sort).
        live_sorted = fate[order] == clean_code
        l_ui = s_ui[live_sorted]
        pair_users = l_ui[_runs(l_ui)] // n_items
        items_per_user = np.bincount(pair_users, minlength=n_users)
        # Remaining rows in output order (user, time, item): hourly and per-second counts are runs.
        live_idx = np.flatnonzero(fate == clean_code)
        out = np.lexsort((i[live_idx], ts[live_idx], u[live_idx]))
        su, sts_live = u[live_idx][out], ts[live_idx][out]
        per_user = np.bincount(su, minlength=n_users)
        hour_start = _runs(su, sts_live // 3_600_000_000)
        max_hour = np.zeros(n_users, dtype=np.int64)
        np.maximum.at(max_hour, su[hour_start], np.diff(np.r_[np.flatnonzero(hour_start), len(su)]))
        rate_bad = max_hour > settings.crawler_max_events_per_hour
        with np.errstate(divide="ignore", invalid="ignore"):
            diversity = np.where(per_user > 0, items_per_user / np.maximum(per_user, 1), 0.0)
        div_bad = (per_user >= settings.crawler_min_events_for_diversity) & (
            diversity > settings.crawler_max_item_diversity) & ~rate_bad
        burst = _run_lengths_per_row(_runs(su, sts_live // 1_000_000)) > settings.burst_max_events_per_second
        sorted_fate = np.zeros(len(su), dtype=np.int64)
        sorted_fate[burst] = burst_code
        sorted_fate[div_bad[su]] = div_code
        sorted_fate[rate_bad[su]] = rate_code
        fate[live_idx[out]] = sorted_fate
        out_idx = live_idx[out][sorted_fate == clean_code]
    counts = {FATES[k]: int(v) for k, v in enumerate(np.bincount(fate, minlength=len(FATES))) if v}
    clean_rows = valid.take(pa.array(out_idx, pa.int64()))
    noisy = fate >= rate_code
    noise = valid.filter(pa.array(noisy))
    noise = noise.append_column("fate", pc.take(pa.array(FATES), pa.array(fate[noisy])))
    clean = pa.table({
        "user_id": clean_rows["user_id"], "item_id": clean_rows["item_id"],
        "category_id": clean_rows["category_id"], "behavior": clean_rows["behavior"],
        "ts": pc.cast(clean_rows["ts"], pa.timestamp("us", tz="UTC")),
        "value": pc.cast(clean_rows["value"], pa.float64()),
    }).cast(EVENT_SCHEMA)
    return clean, noise, counts


def preprocess_partition(settings: Settings, date: dt.date) -> PreprocessResult:
    """Preprocess ``raw/events/dt=date/`` into ``clean/events/dt=date/part-00000.parquet``.

    Replaces the clean partition whole and writes noise rows to
    ``quarantine/events/dt=date/preprocess.parquet``. Uses validation's hand-over when it matches
    the raw files; otherwise flags the raw partition itself and rewrites validation's quarantine
    file from the same rules. Raises :class:`PreprocessError` if counts do not reconcile and
    :class:`pipelines.data.rules.ValidationError` if the raw partition cannot be read.
    """
    validated = handover.read_handover(settings, date)
    if validated is not None:
        # Validation already read and flagged these raw files (same ETags, same window).
        valid, meta = validated
        rows_in = int(meta["rows"])
        reasons = {k: int(v) for k, v in meta["reasons"].items()}
        q_validation = sum(reasons.values())
        bad = None
    else:
        flagged = rules.flag_partition(settings, date)
        valid, bad, reasons = rules.split_flagged(flagged)
        rows_in = flagged.rows
        q_validation = bad.num_rows
    clean, noise, counts = clean_events(valid, settings)

    q_noise = noise.num_rows
    exact = counts.get("duplicate_exact", 0)
    near = counts.get("duplicate_near", 0)
    if rows_in != clean.num_rows + q_validation + q_noise + exact + near:
        raise PreprocessError(f"dt={date}: counts do not reconcile: rows in {rows_in} != clean {clean.num_rows} + "
                              f"quarantined {q_validation} + noise {q_noise} + duplicates {exact + near}")

    storage.delete_prefix(settings, layout.partition_prefix(layout.CLEAN, date))
    clean_keys: list[str] = []
    if clean.num_rows:
        key = layout.clean_key(date)
        storage.write_parquet(settings, key, clean)
        clean_keys.append(key)
    if bad is not None:
        write_validation_quarantine(settings, date, bad)
    q_key = write_quarantine(settings, date, PREPROCESS, _noise_rows(noise))
    for r in NOISE_REASONS:
        if counts.get(r):
            reasons[r] = counts[r]
    users = len(pc.unique(clean["user_id"])) if clean.num_rows else 0
    result = PreprocessResult(
        date=date, rows_in=rows_in, clean=clean.num_rows, quarantined=q_validation + q_noise,
        quarantined_validation=q_validation, quarantined_noise=q_noise, duplicates_dropped=exact + near,
        exact_duplicates=exact, near_duplicates=near, reasons=reasons, clean_keys=clean_keys,
        quarantine_key=q_key, users=users)
    storage.put_json(settings, layout.preprocess_report_key(date), result.to_dict())
    log.info("preprocessed dt=%s: %d in = %d clean + %d quarantined + %d duplicates %s", date, rows_in,
             result.clean, result.quarantined, result.duplicates_dropped, reasons or "")
    return result


def _noise_rows(noise: pa.Table) -> pa.Table:
    """The quarantine view of noise rows: :data:`NOISE_COLUMNS` (``ts`` as a timestamp), ``reason`` = fate."""
    rows = noise.select(NOISE_COLUMNS)
    rows = rows.set_column(rows.column_names.index("ts"), "ts", pc.cast(rows["ts"], pa.timestamp("us", tz="UTC")))
    return rows.append_column("reason", noise["fate"])
