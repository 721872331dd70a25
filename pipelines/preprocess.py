"""Preprocess one raw partition into ``clean/events/dt=D/part-00000.parquet`` (canonical events).

For partition D, :func:`preprocess_partition` recomputes the validation row flags
(:func:`pipelines.validation.flag_partition`, the same pure rules, so both steps agree), then on
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
run vectorised (NumPy over dictionary codes), one partition at a time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pipelines import storage
from pipelines.config import Settings

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

PREPROCESS_REPORTS = "reports/preprocess"
NOISE_REASONS = ("crawler_rate", "crawler_diversity", "burst")
DUPLICATE_FATES = ("duplicate_exact", "duplicate_near")
FATES = ("clean", *DUPLICATE_FATES, *NOISE_REASONS)


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


def _codes(column: pa.ChunkedArray | pa.Array) -> Any:
    """Dense int64 codes of a string column (equal strings, equal codes)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = pc.dictionary_encode(arr)
    return np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)


def clean_events(valid: pa.Table, settings: Settings) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """Dedupe and de-noise validated canonical rows (``ts`` int64 microseconds).

    Returns (clean rows in :data:`EVENT_SCHEMA`, set-aside noise rows with a ``fate`` column, counts
    per fate: ``clean``, ``duplicate_exact``, ``duplicate_near`` and each noise reason). Pure: no
    storage. Vectorised with NumPy over dictionary codes of the string columns (one partition).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipelines.contracts import EVENT_SCHEMA

    n = valid.num_rows
    clean_code, exact_code, near_code, rate_code, div_code, burst_code = range(len(FATES))
    fate = np.zeros(n, dtype=np.int64)
    if n:
        u, i, c, b = (_codes(valid[f]) for f in ("user_id", "item_id", "category_id", "behavior"))
        ts = np.asarray(valid["ts"].to_numpy(), dtype=np.int64)
        value = valid["value"].to_numpy(zero_copy_only=False).astype(np.float64)
        vkey = np.where(np.isnan(value), np.inf, value)  # null values compare equal to each other
        rid = np.arange(n)
        order = np.lexsort((rid, vkey, ts, b, c, i, u))
        su, si, sc, sb, sts, sv = u[order], i[order], c[order], b[order], ts[order], vkey[order]
        same_group = np.r_[False, (su[1:] == su[:-1]) & (si[1:] == si[:-1]) & (sc[1:] == sc[:-1])
                           & (sb[1:] == sb[:-1])]
        exact = same_group & np.r_[False, (sts[1:] == sts[:-1]) & (sv[1:] == sv[:-1])]
        fate[order[exact]] = exact_code
        # Near duplicates: among the remaining rows, a repeat of the previous one in its group within the gap.
        near_us = int(settings.near_duplicate_seconds) * 1_000_000
        if near_us > 0:
            keep_idx = np.flatnonzero(~exact)
            k_order = order[keep_idx]
            # Group boundaries recomputed over the kept rows only.
            ku, ki, kc, kb, kts = su[keep_idx], si[keep_idx], sc[keep_idx], sb[keep_idx], sts[keep_idx]
            k_group = np.r_[False, (ku[1:] == ku[:-1]) & (ki[1:] == ki[:-1]) & (kc[1:] == kc[:-1])
                            & (kb[1:] == kb[:-1])]
            gap = np.r_[0, np.diff(kts)]
            fate[k_order[k_group & (gap <= near_us)]] = near_code
        live = fate == clean_code
        lu, lts, li = u[live], ts[live], i[live]
        n_users = int(u.max()) + 1
        hour = lts // 3_600_000_000
        _, h_inv, h_cnt = np.unique(lu * 1_000_000 + (hour - hour.min()), return_inverse=True, return_counts=True)
        max_hour = np.zeros(n_users, dtype=np.int64)
        np.maximum.at(max_hour, lu, h_cnt[h_inv])
        per_user = np.bincount(lu, minlength=n_users)
        pairs = np.unique(lu * (int(i.max()) + 1) + li)
        items_per_user = np.bincount(pairs // (int(i.max()) + 1), minlength=n_users)
        rate_bad = max_hour > settings.crawler_max_events_per_hour
        with np.errstate(divide="ignore", invalid="ignore"):
            diversity = np.where(per_user > 0, items_per_user / np.maximum(per_user, 1), 0.0)
        div_bad = (per_user >= settings.crawler_min_events_for_diversity) & (
            diversity > settings.crawler_max_item_diversity) & ~rate_bad
        second = lts // 1_000_000
        _, s_inv, s_cnt = np.unique(lu * 10_000_000_000 + (second - second.min()), return_inverse=True,
                                    return_counts=True)
        burst = s_cnt[s_inv] > settings.burst_max_events_per_second
        live_idx = np.flatnonzero(live)
        live_fate = np.zeros(len(live_idx), dtype=np.int64)
        live_fate[burst] = burst_code
        live_fate[div_bad[lu]] = div_code
        live_fate[rate_bad[lu]] = rate_code
        fate[live_idx] = live_fate
    counts = {FATES[k]: int(v) for k, v in enumerate(np.bincount(fate, minlength=len(FATES))) if v}
    clean_rows = valid.filter(pa.array(fate == clean_code))
    noisy = fate >= rate_code
    noise = valid.filter(pa.array(noisy))
    noise = noise.append_column("fate", pc.take(pa.array(FATES), pa.array(fate[noisy])))
    if clean_rows.num_rows:
        clean_rows = clean_rows.take(pc.sort_indices(clean_rows, [("user_id", "ascending"), ("ts", "ascending"),
                                                                  ("item_id", "ascending")]))
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
    ``quarantine/events/dt=date/preprocess.parquet`` (validation's quarantine file is rewritten
    too, from the same rules). Raises :class:`PreprocessError` if counts do not reconcile and
    :class:`pipelines.validation.ValidationError` if the raw partition cannot be read.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipelines import validation

    flagged = validation.flag_partition(settings, date)
    canon = flagged.canon
    if not flagged.in_window:
        canon = canon.set_column(canon.column_names.index("reason"), "reason",
                                 pc.if_else(pc.is_null(canon["reason"]), "outside_window", canon["reason"]))
    bad_mask = pc.is_valid(canon["reason"])
    bad = canon.filter(bad_mask)
    valid = canon.filter(pc.invert(bad_mask))
    clean, noise, counts = clean_events(valid, settings)

    rows_in = canon.num_rows
    q_validation = bad.num_rows
    q_noise = noise.num_rows
    exact = counts.get("duplicate_exact", 0)
    near = counts.get("duplicate_near", 0)
    if rows_in != clean.num_rows + q_validation + q_noise + exact + near:
        raise PreprocessError(f"dt={date}: counts do not reconcile: rows in {rows_in} != clean {clean.num_rows} + "
                              f"quarantined {q_validation} + noise {q_noise} + duplicates {exact + near}")

    clean_prefix = storage.partition_prefix(storage.CLEAN, date)
    storage.delete_prefix(settings, clean_prefix)
    clean_keys: list[str] = []
    if clean.num_rows:
        key = f"{clean_prefix}part-00000.parquet"
        storage.write_parquet(settings, key, clean)
        clean_keys.append(key)
    validation._write_quarantine(settings, date, bad)
    q_key = f"{storage.partition_prefix(storage.QUARANTINE, date)}preprocess.parquet"
    if q_noise:
        table = noise.select(["source_file", "row", "user_id", "item_id", "category_id", "behavior", "ts", "value"])
        table = table.set_column(6, "ts", pc.cast(table["ts"], pa.timestamp("us", tz="UTC")))
        table = table.append_column("reason", noise["fate"]).append_column(
            "stage", pa.array(["preprocess"] * q_noise))
        storage.write_parquet(settings, q_key, table)
    else:
        storage.s3_client(settings).delete_object(Bucket=settings.bucket, Key=q_key)
    reasons = dict(validation._count(canon["reason"]))
    for r in NOISE_REASONS:
        if counts.get(r):
            reasons[r] = counts[r]
    users = len(pc.unique(clean["user_id"])) if clean.num_rows else 0
    result = PreprocessResult(
        date=date, rows_in=rows_in, clean=clean.num_rows, quarantined=q_validation + q_noise,
        quarantined_validation=q_validation, quarantined_noise=q_noise, duplicates_dropped=exact + near,
        exact_duplicates=exact, near_duplicates=near, reasons=reasons, clean_keys=clean_keys,
        quarantine_key=q_key if q_noise else None, users=users)
    storage.put_json(settings, f"{PREPROCESS_REPORTS}/dt={date.isoformat()}.json", result.to_dict())
    log.info("preprocessed dt=%s: %d in = %d clean + %d quarantined + %d duplicates %s", date, rows_in,
             result.clean, result.quarantined, result.duplicates_dropped, reasons or "")
    return result


# --- command line -------------------------------------------------------------------------------


def _cmd_preprocess(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.validation import ValidationError, date_range

    try:
        dates = date_range(dt.date.fromisoformat(args.date), dt.date.fromisoformat(args.to) if args.to else None)
    except ValueError as exc:
        print(f"preprocess: bad date: {exc}")
        return 2
    failed = 0
    total = {"rows_in": 0, "clean": 0, "quarantined": 0, "duplicates_dropped": 0}
    for date in dates:
        try:
            res = preprocess_partition(settings, date)
        except (ValidationError, PreprocessError) as exc:
            failed += 1
            print(f"dt={date}: FAILED: {exc}")
            continue
        for k in total:
            total[k] += getattr(res, k)
        print(f"dt={date}: {res.rows_in} in = {res.clean} clean + {res.quarantined} quarantined + "
              f"{res.duplicates_dropped} duplicates {res.reasons or ''}")
    print(f"preprocessed {len(dates) - failed}/{len(dates)} partitions: {total['rows_in']} in = {total['clean']} "
          f"clean + {total['quarantined']} quarantined + {total['duplicates_dropped']} duplicates")
    return 1 if failed else 0


def register_cli(subparsers: Any) -> None:
    """``python -m pipelines preprocess --date D [--to D2]``."""
    p = subparsers.add_parser("preprocess", help="dedupe and de-noise raw partitions into clean/events/dt=.../")
    p.add_argument("--date", required=True, help="first partition date YYYY-MM-DD")
    p.add_argument("--to", default=None, help="last partition date (inclusive)")
    p.set_defaults(func=_cmd_preprocess)
