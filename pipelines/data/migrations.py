"""Synthetic Taobao-format logs whose interest migrations behaviour predicts (the data of ``make run``).

Where :func:`pipelines.data.synthetic.generate_taobao` plants shifts out of the blue, this generator
plants migrations that a model can see coming, the way they come in real shops:

- **chains** (life-cycle sequences such as maternity -> baby -> toddler): a user dwells some days in
  each stage category of a chain, then moves to the next; the next stage is new to the user;
- **browse, then buy**: a few page views in a new category for some days, then most of the user's
  activity there, with more carts and purchases;
- **family shifts**: a share of the activity moves to 2-3 categories of a family the user never
  touched (as in ``generate_taobao``);
- **weekend switches** (a weekly season): a leisure category the user engages with on Saturdays
  and Sundays only.

Everyone else keeps a stable mix of base interests with a little exploration. With ``noise`` the
file also carries what real exports carry: malformed lines (wrong column count, unreadable and
millisecond timestamps, an empty id), exact duplicate rows, a crawler (thousands of page views in
one hour) and a *late file*: part of the last day's events arrive in ``events_late.csv``, to be
landed after the rest. ``truth.json`` lists every planted migration (``migrations``; the family
shifts also under ``shifts``, as ``generate_taobao`` writes them) and the noise counts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines.data.synthetic import (
    BEHAVIOR_CODES,
    BEHAVIOR_MIX,
    TAOBAO_SCHEMA,
    TRUTH_FILE,
    GeneratedData,
    place_in_day,
    zipf_weights,
)
from pipelines.platform.dates import start_of_day

log = logging.getLogger(__name__)

LATE_FILE = "events_late.csv"
KINDS = ("stable", "chain", "browse_then_buy", "family_shift", "weekend")
KIND_SHARES = (0.30, 0.25, 0.20, 0.15, 0.10)  # of the users, in KINDS order
SLOTS = 3  # planted segments per user
NORMAL, VIEW_ONLY, BUY_HEAVY = 0, 1, 2
BUY_HEAVY_MIX = (0.6, 0.15, 0.1, 0.15)
STAGE_SHARE = 0.6
BROWSE_DAYS = 3


def generate_migrations(out_dir: Path, *, users: int = 2000, days: int = 28, categories: int = 40,
                        start: dt.date = dt.date(2017, 11, 1), seed: int = 42,
                        mean_events_per_user_day: float = 5.0, explore_rate: float = 0.03,
                        items_per_category: int = 200, noise: bool = False, compress: bool = False,
                        chunk_users: int = 20000) -> GeneratedData:
    """Write ``events.csv`` (or ``.csv.gz``), with ``noise`` also ``events_late.csv``, and ``truth.json``.

    Deterministic for a given ``seed``. Raises ValueError for sizes that cannot hold the scenarios
    (at least 12 categories and 8 days)."""
    if users <= 0 or days < 8 or categories < 12:
        raise ValueError(f"need users > 0, days >= 8 and categories >= 12 (got {users}, {days}, {categories})")
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_fam = max(3, categories // 6)
    cat_ids = rng.choice(np.arange(10_000, 5_000_000), size=categories, replace=False)
    cat_family = rng.integers(0, n_fam, size=categories)
    cat_family[:n_fam] = np.arange(n_fam)
    cat_pop = zipf_weights(categories, 1.0, rng)
    user_ids = 1 + rng.permutation(users * 3)[:users]
    activity = rng.lognormal(mean=0.0, sigma=0.8, size=users)
    activity *= mean_events_per_user_day / activity.mean()
    base_cats = np.stack([rng.choice(categories, size=3, replace=False, p=cat_pop) for _ in range(users)])
    base_w = rng.dirichlet(np.full(3, 1.0), size=users)
    plan = _plan(rng, users, days, base_cats, cat_family, cat_pop)
    truth = _truth(plan, user_ids, cat_ids, base_cats, start, days)

    item_base = 1_000_000 + np.arange(categories, dtype=np.int64) * items_per_category * 7
    item_zipf = 1.0 / np.arange(1, items_per_category + 1) ** 1.1
    item_cdf = np.cumsum(item_zipf / item_zipf.sum())
    epoch0 = int(start_of_day(start).timestamp())
    tables: list[pa.Table] = []
    held_back: list[pa.Table] = []
    for day in range(days):
        weekend = (start + dt.timedelta(days=day)).weekday() >= 5
        for c0 in range(0, users, chunk_users):
            sl = slice(c0, min(users, c0 + chunk_users))
            table = _day_events(rng, day, weekend, sl, activity, base_cats, base_w, plan, explore_rate, cat_pop,
                                cat_ids, item_base, item_cdf, user_ids, epoch0)
            if noise and day == days - 1 and table.num_rows:
                late = rng.random(table.num_rows) < 0.1
                held_back.append(table.filter(pa.array(late)))
                table = table.filter(pa.array(~late))
            tables.append(table)
    events = pa.concat_tables(tables)
    noise_counts: dict[str, int] = {}
    extra_lines: list[str] = []
    if noise:
        events, extra_lines, noise_counts = _add_noise(rng, events, user_ids, cat_ids, item_base, epoch0, days)
    events_path = out_dir / ("events.csv.gz" if compress else "events.csv")
    _write_csv(events, extra_lines, events_path, compress)
    late_path = None
    if held_back:
        late_path = out_dir / LATE_FILE
        late = pa.concat_tables(held_back)
        _write_csv(late, [], late_path, False)
        noise_counts["late_rows"] = late.num_rows
    rows = events.num_rows + len(extra_lines)
    truth_path = out_dir / TRUTH_FILE
    truth_path.write_text(json.dumps({
        "format": "taobao", "generator": "migrations", "start": start.isoformat(), "days": days,
        "users": users, "categories": categories, "seed": seed, "rows": rows,
        "families": {str(cat_ids[c]): int(cat_family[c]) for c in range(categories)},
        "migrations": truth, "shifts": [t for t in truth if t["kind"] == "family_shift"],
        "noise": noise_counts,
    }, indent=1))
    migrating = len({t["user_id"] for t in truth if t["kind"] != "weekend"})
    log.info("generated %d rows for %d users over %d days (%d users with a planted migration, noise %s) in %s",
             rows, users, days, migrating, noise_counts or "off", events_path)
    return GeneratedData(events_path, truth_path, rows, users, days, categories, start, migrating, late_path)


def _plan(rng: np.random.Generator, users: int, days: int, base_cats: np.ndarray, cat_family: np.ndarray,
          cat_pop: np.ndarray) -> dict[str, np.ndarray]:
    """Per user: kind and up to SLOTS planted segments (category, [start, end) day, share, mode, weekend)."""
    categories = len(cat_family)
    kind = rng.choice(len(KINDS), size=users, p=KIND_SHARES)
    seg = {"cat": np.full((users, SLOTS), -1), "start": np.zeros((users, SLOTS), np.int64),
           "end": np.zeros((users, SLOTS), np.int64), "share": np.zeros((users, SLOTS)),
           "mode": np.zeros((users, SLOTS), np.int64), "weekend": np.zeros((users, SLOTS), bool),
           "kind": kind}
    chains = _chains(rng, cat_family, cat_pop)
    dmin, dmax = max(3, days // 6), max(4, days // 3)
    for u in range(users):
        own = set(base_cats[u].tolist())
        fresh = [c for c in range(categories) if c not in own and cat_family[c] not in set(cat_family[list(own)])]
        fresh = fresh or [c for c in range(categories) if c not in own]
        k = KINDS[kind[u]]
        if k == "chain":
            chain = chains[int(rng.integers(len(chains)))]
            t = -int(rng.integers(0, dmin))
            for s, cat in enumerate(chain):
                # the first stage lasts up to most of the window, so stage changes happen all along
                # it (also in its last days, where a model is judged)
                dwell = int(rng.integers(dmin, dmax + 1 if s else max(dmax + 1, days - dmax)))
                end = t + dwell if s < len(chain) - 1 else days + 1
                _set(seg, u, s, cat, t, end, STAGE_SHARE, NORMAL)
                t = end
        elif k == "browse_then_buy":
            target = int(rng.choice(fresh))
            onset = int(rng.integers(max(BROWSE_DAYS + 1, int(days * 0.35)), max(BROWSE_DAYS + 2, int(days * 0.9))))
            _set(seg, u, 0, target, onset - BROWSE_DAYS, onset, 0.2, VIEW_ONLY)
            _set(seg, u, 1, target, onset, days + 1, 0.5, BUY_HEAVY)
        elif k == "family_shift":
            fam = int(rng.choice(np.unique(cat_family[fresh])))
            members = [c for c in fresh if cat_family[c] == fam]
            chosen = rng.choice(members, size=min(len(members), int(rng.integers(2, SLOTS + 1))), replace=False)
            day = int(rng.integers(max(1, int(days * 0.3)), max(2, int(days * 0.85))))
            shares = rng.dirichlet(np.full(len(chosen), 2.0)) * 0.6
            for s, (cat, share) in enumerate(zip(chosen, shares, strict=True)):
                _set(seg, u, s, int(cat), day, days + 1, float(share), NORMAL)
        elif k == "weekend":
            _set(seg, u, 0, int(rng.choice(fresh)), -days, days + 1, 0.6, NORMAL)
            seg["weekend"][u, 0] = True
    return seg


def _set(seg: dict[str, np.ndarray], u: int, slot: int, cat: int, start: int, end: int, share: float,
         mode: int) -> None:
    seg["cat"][u, slot], seg["start"][u, slot], seg["end"][u, slot] = cat, start, end
    seg["share"][u, slot], seg["mode"][u, slot] = share, mode


def _chains(rng: np.random.Generator, cat_family: np.ndarray, cat_pop: np.ndarray) -> list[list[int]]:
    """Disjoint 3-stage chains, each stage in another family (so the next stage is really new)."""
    order = list(rng.permutation(len(cat_family)))
    chains: list[list[int]] = []
    while len(chains) < max(2, len(cat_family) // 8) and order:
        chain: list[int] = []
        for c in list(order):
            if all(cat_family[c] != cat_family[x] for x in chain):
                chain.append(int(c))
                order.remove(c)
            if len(chain) == 3:
                break
        if len(chain) < 3:
            break
        chains.append(chain)
    return chains


def _truth(seg: dict[str, np.ndarray], user_ids: np.ndarray, cat_ids: np.ndarray, base_cats: np.ndarray,
           start: dt.date, days: int) -> list[dict[str, Any]]:
    """One entry per planted migration that happens inside the data: kind, user, date, from, to."""
    out: list[dict[str, Any]] = []

    def entry(u: int, kind: str, day: int, src: list[int], dst: list[int]) -> None:
        out.append({"kind": kind, "user_id": str(user_ids[u]),
                    "date": (start + dt.timedelta(days=day)).isoformat(),
                    "shift_date": (start + dt.timedelta(days=day)).isoformat(),
                    "from_categories": [str(cat_ids[c]) for c in src],
                    "to_categories": [str(cat_ids[c]) for c in dst]})

    for u, k in enumerate(seg["kind"]):
        kind, cats = KINDS[k], seg["cat"][u]
        if kind == "chain":
            for s in range(1, SLOTS):
                if 0 < seg["start"][u, s] < days:
                    entry(u, kind, int(seg["start"][u, s]), [int(cats[s - 1])], [int(cats[s])])
        elif kind == "browse_then_buy" and seg["start"][u, 1] < days:
            entry(u, kind, int(seg["start"][u, 1]), [int(c) for c in base_cats[u]], [int(cats[1])])
        elif kind == "family_shift" and seg["start"][u, 0] < days:
            entry(u, kind, int(seg["start"][u, 0]), [int(c) for c in base_cats[u]], [int(c) for c in cats if c >= 0])
        elif kind == "weekend":
            entry(u, kind, 0, [], [int(cats[0])])
    return out


def _day_events(rng: np.random.Generator, day: int, weekend: bool, sl: slice, activity: np.ndarray,
                base_cats: np.ndarray, base_w: np.ndarray, seg: dict[str, np.ndarray], explore_rate: float,
                cat_pop: np.ndarray, cat_ids: np.ndarray, item_base: np.ndarray, item_cdf: np.ndarray,
                user_ids: np.ndarray, epoch0: int) -> pa.Table:
    """One day's events of users ``sl``: planted segments first, base interests and exploration for the rest."""
    act = activity[sl]
    p_active = np.clip(act / (act + 2.0), 0.05, 0.95)
    counts = np.where(rng.random(len(act)) < p_active, rng.poisson(act / p_active), 0)
    total = int(counts.sum())
    if total == 0:
        return TAOBAO_SCHEMA.empty_table()
    uidx = np.repeat(np.arange(len(act)), counts)
    g = uidx + sl.start
    live = (seg["start"][g] <= day) & (day < seg["end"][g]) & (seg["cat"][g] >= 0)
    live &= ~seg["weekend"][g] | weekend
    shares = np.where(live, seg["share"][g], 0.0)
    cum = np.cumsum(shares, axis=1)
    r = rng.random(total)
    slot = (cum <= r[:, None]).sum(axis=1)  # SLOTS = none of the planted segments
    planted = slot < SLOTS
    cat = np.empty(total, np.int64)
    mode = np.zeros(total, np.int64)
    rows = np.flatnonzero(planted)
    cat[rows] = seg["cat"][g[rows], slot[rows]]
    mode[rows] = seg["mode"][g[rows], slot[rows]]
    rest = np.flatnonzero(~planted)
    bw = np.cumsum(base_w[g[rest]], axis=1)
    pick = np.minimum((bw < rng.random(len(rest))[:, None] * bw[:, -1:]).sum(axis=1), base_cats.shape[1] - 1)
    cat[rest] = base_cats[g[rest], pick]
    explore = rest[rng.random(len(rest)) < explore_rate]
    cat[explore] = np.minimum(np.searchsorted(np.cumsum(cat_pop), rng.random(len(explore))), len(cat_pop) - 1)
    items = item_base[cat] + np.minimum(np.searchsorted(item_cdf, rng.random(total)), len(item_cdf) - 1)
    draw = rng.random(total)
    behavior = np.minimum(np.searchsorted(np.cumsum(BEHAVIOR_MIX), draw), 3)
    behavior = np.where(mode == BUY_HEAVY, np.minimum(np.searchsorted(np.cumsum(BUY_HEAVY_MIX), draw), 3), behavior)
    behavior = np.where(mode == VIEW_ONLY, 0, behavior)
    return place_in_day(rng, day, uidx, len(act), user_ids[sl], cat_ids[cat], items,
                        np.array(BEHAVIOR_CODES, dtype=object)[behavior], epoch0)


def _add_noise(rng: np.random.Generator, events: pa.Table, user_ids: np.ndarray, cat_ids: np.ndarray,
               item_base: np.ndarray, epoch0: int, days: int) -> tuple[pa.Table, list[str], dict[str, int]]:
    """Exact duplicates and a crawler mixed into the rows; malformed lines as raw text."""
    n = events.num_rows
    dup = np.sort(rng.choice(n, size=max(1, n // 200), replace=False))
    crawler_id = int(user_ids.max()) + 1
    day = days // 2
    hour_start = epoch0 + day * 86_400 + 10 * 3600
    n_crawl = 2500
    crawl = pa.table({
        "user_id": pa.array(np.full(n_crawl, crawler_id), pa.int64()),
        "item_id": pa.array(item_base[0] + rng.permutation(n_crawl * 2)[:n_crawl], pa.int64()),
        "category_id": pa.array(rng.choice(cat_ids, n_crawl), pa.int64()),
        "behavior_type": pa.array(["pv"] * n_crawl),
        "timestamp": pa.array(np.sort(hour_start + rng.integers(0, 3600, n_crawl)), pa.int64()),
    }, schema=TAOBAO_SCHEMA)
    events = pa.concat_tables([events, events.take(pa.array(dup)), crawl])
    ts = epoch0 + day * 86_400 + 7200
    uid, item, cat = int(user_ids[0]), int(item_base[0]), int(cat_ids[0])
    malformed = [f"{uid},{item},{cat},pv", f"{uid},{item},{cat},pv,yesterday", f",{item},{cat},pv,{ts}",
                 f"{uid},{item},{cat},pv,{ts * 1000}", f"{uid},{item},{cat},pv,{ts},extra"]
    counts = {"duplicate_rows": len(dup), "crawler_rows": n_crawl, "crawler_user_id": crawler_id,
              "malformed_lines": len(malformed)}
    return events, malformed, counts


def _write_csv(table: pa.Table, extra_lines: list[str], path: Path, compress: bool) -> None:
    sink = pa.CompressedOutputStream(str(path), "gzip") if compress else pa.OSFile(str(path), "wb")
    with pacsv.CSVWriter(sink, TAOBAO_SCHEMA,
                         write_options=pacsv.WriteOptions(include_header=False, quoting_style="none")) as writer:
        writer.write_table(table)
    for line in extra_lines:
        sink.write((line + "\n").encode())
    sink.close()
