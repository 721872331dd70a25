"""Cleaning rules: the Arrow-sorted plan gives exactly what the previous NumPy implementation gave.

``_reference_clean_events`` is the former ``preprocess.clean_events`` (two ``np.lexsort`` passes),
kept here as the specification: on random partitions with ties, values, near duplicates, crawlers
and bursts, :func:`pipelines.data.cleaning.clean_events` must return the same clean rows (same
order), the same noise rows and the same counts.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines.config import load_settings
from pipelines.contracts import EVENT_SCHEMA
from pipelines.data.cleaning import CLEAN, FATES, clean_events, plan_cleaning

T0_US = 1511568000 * 1_000_000


def _codes(column, *, ordered=False):
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = pc.dictionary_encode(arr)
    codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    if not ordered:
        return codes
    rank = np.empty(len(encoded.dictionary), dtype=np.int64)
    rank[np.asarray(pc.sort_indices(encoded.dictionary))] = np.arange(len(encoded.dictionary))
    return rank[codes]


def _runs(*keys):
    change = np.zeros(len(keys[0]), dtype=bool)
    if len(change):
        change[0] = True
        for k in keys:
            change[1:] |= k[1:] != k[:-1]
    return change


def _reference_clean_events(valid, settings):
    n = valid.num_rows
    clean_code, exact_code, near_code, rate_code, div_code, burst_code = range(len(FATES))
    fate = np.zeros(n, dtype=np.int64)
    out_idx = np.zeros(0, dtype=np.int64)
    if n:
        u, i = _codes(valid["user_id"], ordered=True), _codes(valid["item_id"], ordered=True)
        c, b = _codes(valid["category_id"]), _codes(valid["behavior"])
        ts = np.asarray(valid["ts"].to_numpy(), dtype=np.int64)
        value = valid["value"].to_numpy(zero_copy_only=False).astype(np.float64)
        vkey = np.where(np.isnan(value), np.inf, value)
        n_users, n_items = int(u.max()) + 1, int(i.max()) + 1
        ui = u * n_items + i
        cb = c * (int(b.max()) + 1) + b
        order = np.lexsort((vkey, ts, cb, ui))
        s_ui, s_cb, sts, sv = ui[order], cb[order], ts[order], vkey[order]
        exact = ~_runs(s_ui, s_cb) & np.r_[False, (sts[1:] == sts[:-1]) & (sv[1:] == sv[:-1])]
        fate[order[exact]] = exact_code
        near_us = int(settings.near_duplicate_seconds) * 1_000_000
        if near_us > 0:
            keep_idx = np.flatnonzero(~exact)
            k_group = ~_runs(s_ui[keep_idx], s_cb[keep_idx])
            gap = np.r_[0, np.diff(sts[keep_idx])]
            fate[order[keep_idx[k_group & (gap <= near_us)]]] = near_code
        l_ui = s_ui[fate[order] == clean_code]
        items_per_user = np.bincount(l_ui[_runs(l_ui)] // n_items, minlength=n_users)
        live_idx = np.flatnonzero(fate == clean_code)
        out = np.lexsort((i[live_idx], ts[live_idx], u[live_idx]))
        su, sts_live = u[live_idx][out], ts[live_idx][out]
        per_user = np.bincount(su, minlength=n_users)
        hour_start = _runs(su, sts_live // 3_600_000_000)
        max_hour = np.zeros(n_users, dtype=np.int64)
        np.maximum.at(max_hour, su[hour_start], np.diff(np.r_[np.flatnonzero(hour_start), len(su)]))
        rate_bad = max_hour > settings.crawler_max_events_per_hour
        diversity = np.where(per_user > 0, items_per_user / np.maximum(per_user, 1), 0.0)
        div_bad = (per_user >= settings.crawler_min_events_for_diversity) & (
            diversity > settings.crawler_max_item_diversity) & ~rate_bad
        starts = _runs(su, sts_live // 1_000_000)
        lengths = np.diff(np.r_[np.flatnonzero(starts), len(starts)])
        burst = np.repeat(lengths, lengths) > settings.burst_max_events_per_second
        sorted_fate = np.zeros(len(su), dtype=np.int64)
        sorted_fate[burst] = burst_code
        sorted_fate[div_bad[su]] = div_code
        sorted_fate[rate_bad[su]] = rate_code
        fate[live_idx[out]] = sorted_fate
        out_idx = live_idx[out][sorted_fate == clean_code]
    counts = {FATES[k]: int(v) for k, v in enumerate(np.bincount(fate, minlength=len(FATES))) if v}
    rows = valid.take(pa.array(out_idx, pa.int64()))
    noisy = fate >= rate_code
    noise = valid.filter(pa.array(noisy)).append_column("fate", pc.take(pa.array(FATES), pa.array(fate[noisy])))
    clean = pa.table({"user_id": rows["user_id"], "item_id": rows["item_id"], "category_id": rows["category_id"],
                      "behavior": rows["behavior"], "ts": pc.cast(rows["ts"], pa.timestamp("us", tz="UTC")),
                      "value": pc.cast(rows["value"], pa.float64())}).cast(EVENT_SCHEMA)
    return clean, noise, counts


def _random_partition(rng: np.random.Generator, n: int, *, with_values: bool) -> pa.Table:
    step = int(rng.integers(1, 40))  # small steps: many rows share a second (ties, bursts, near duplicates)
    values = np.where(rng.random(n) < 0.5, np.nan, rng.integers(1, 3, n).astype(float)) if with_values else None
    return pa.table({
        "user_id": pa.array(rng.integers(0, 25, n).astype(str)),
        "item_id": pa.array(rng.integers(0, 40, n).astype(str)),
        "category_id": pa.array(rng.integers(0, 3, n).astype(str)),
        "behavior": pa.array(rng.choice(["view", "buy", "cart"], n)),
        "ts": pa.array(T0_US + rng.integers(0, 3600, n) * 1_000_000 // step, pa.int64()),
        "value": pa.array(values, pa.float64(), from_pandas=True) if with_values else pa.nulls(n, pa.float64()),
        "source_file": pa.array(["f"] * n),
        "row": pa.array(np.arange(n), pa.int64()),
    })


@pytest.mark.parametrize("seed", range(24))
def test_cleaning_matches_the_previous_implementation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    valid = _random_partition(rng, int(rng.integers(1, 4000)), with_values=seed % 2 == 1)
    settings = load_settings(
        environ={}, crawler_max_events_per_hour=int(rng.integers(20, 300)),
        burst_max_events_per_second=int(rng.integers(1, 6)),
        crawler_min_events_for_diversity=int(rng.integers(5, 60)),
        crawler_max_item_diversity=float(rng.uniform(0.3, 1.0)), near_duplicate_seconds=int(rng.integers(0, 3)))
    clean, noise, counts = clean_events(valid, settings)
    ref_clean, ref_noise, ref_counts = _reference_clean_events(valid, settings)
    assert counts == ref_counts
    assert clean.equals(ref_clean) and noise.equals(ref_noise)
    assert sum(counts.values()) == valid.num_rows


def test_plan_orders_every_row_and_keeps_the_first_copy() -> None:
    rows = {"user_id": ["2", "1", "1", "1", "10"], "item_id": ["a", "b", "b", "a", "a"],
            "category_id": ["c"] * 5, "behavior": ["view"] * 5,
            "ts": [T0_US + 5, T0_US + 9, T0_US + 9, T0_US + 9, T0_US], "value": [None] * 5}
    valid = pa.table({**rows, "ts": pa.array(rows["ts"], pa.int64()), "value": pa.array(rows["value"], pa.float64())})
    plan = plan_cleaning(valid, load_settings(environ={}, near_duplicate_seconds=0))
    # Output order: user (as strings: "1" < "10" < "2"), then time, then item; ties in input order.
    assert plan.order.tolist() == [3, 1, 2, 4, 0]
    assert [FATES[f] for f in plan.fate] == ["clean", "clean", "duplicate_exact", "clean", "clean"]
    assert plan.clean_indices().tolist() == [3, 1, 4, 0] and (plan.fate[plan.clean_indices()] == CLEAN).all()
    assert plan.stats == {"users": 3, "items": 2, "categories": 1, "items_with_several_categories": 0}
