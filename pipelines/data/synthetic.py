"""Synthetic Taobao-format behaviour logs with planted interest shifts (the data of ``make run``).

:func:`generate_taobao` writes the official UserBehavior raw format (headerless CSV
``user_id,item_id,category_id,behavior_type,timestamp``, behaviours pv/cart/fav/buy, Unix
seconds) for any number of users, days and categories, day by day and in bounded user chunks,
so 10 million events stream to disk without being held in memory. Beside it, ``truth.json``
lists the planted shifts: for a share of users, on a shift day part of their interest moves
from the categories they used to touch to categories of a category *family* they never
touched. Tests (and the model helper) use the truth to check that a model finds the shifts.

The shape follows the real data: Zipf-like category and item popularity, heavy-tailed user
activity (log-normal), sessions within a day with short gaps between events, a behaviour mix
close to Taobao's (~89% views), and a little exploration noise for every user.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines.platform.dates import start_of_day

log = logging.getLogger(__name__)

BEHAVIOR_CODES = ("pv", "cart", "fav", "buy")
BEHAVIOR_MIX = (0.89, 0.055, 0.03, 0.025)
TRUTH_FILE = "truth.json"
TAOBAO_SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("category_id", pa.int64()),
                           ("behavior_type", pa.string()), ("timestamp", pa.int64())])


@dataclass(frozen=True)
class GeneratedData:
    """Where the generated logs and their ground truth are, and how much was written."""

    events_path: Path
    truth_path: Path
    rows: int
    users: int
    days: int
    categories: int
    start: dt.date
    shifted_users: int
    late_path: Path | None = None  # events that arrive after the rest (the migrations generator's noise)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["events_path"] = str(self.events_path)
        out["truth_path"] = str(self.truth_path)
        out["late_path"] = str(self.late_path) if self.late_path else None
        out["start"] = self.start.isoformat()
        return out


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like weights over ``n`` things in a random order (so id order says nothing)."""
    w = 1.0 / np.arange(1, n + 1) ** exponent
    rng.shuffle(w)
    return w / w.sum()


def generate_taobao(
    out_dir: Path,
    *,
    users: int = 2000,
    days: int = 30,
    categories: int = 200,
    start: dt.date = dt.date(2017, 11, 1),
    seed: int = 42,
    mean_events_per_user_day: float = 5.0,
    families: int | None = None,
    interests_per_user: int = 4,
    shift_share: float = 0.3,
    shift_strength: float = 0.7,
    explore_rate: float = 0.03,
    items_per_category: int = 200,
    chunk_users: int = 20000,
    compress: bool = False,
) -> GeneratedData:
    """Write ``out_dir/events.csv`` (or ``.csv.gz``) and ``out_dir/truth.json``.

    ``users`` users over ``days`` days from ``start`` (UTC), ``categories`` categories grouped in
    ``families`` families (default ~categories/10). Each user has ``interests_per_user`` base
    categories; ``shift_share`` of the users (those with enough activity) get a shift day in the
    middle 30%-85% of the range, after which ``shift_strength`` of their events go to 2-3
    categories of a family they never touched. Expected rows ~ users * days *
    ``mean_events_per_user_day``. Deterministic for a given ``seed``. Returns
    :class:`GeneratedData`.
    """
    if users <= 0 or days <= 0 or categories < 4:
        raise ValueError(f"need users > 0, days > 0 and categories >= 4 (got {users}, {days}, {categories})")
    rng = np.random.default_rng(seed)
    n_fam = families or max(2, categories // 10)
    n_fam = min(n_fam, categories // 2)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Catalogue: categories with Taobao-like ids, grouped in families; items per category.
    cat_ids = rng.choice(np.arange(10_000, 5_000_000), size=categories, replace=False)
    cat_family = rng.integers(0, n_fam, size=categories)
    cat_family[:n_fam] = np.arange(n_fam)  # every family has at least one category
    cat_pop = zipf_weights(categories, 1.0, rng)
    item_base = 1_000_000 + np.arange(categories, dtype=np.int64) * items_per_category * 7
    item_zipf = 1.0 / np.arange(1, items_per_category + 1) ** 1.1
    item_cdf = np.cumsum(item_zipf / item_zipf.sum())

    # Users: heavy-tailed activity, base interests drawn by popularity.
    user_ids = 1 + rng.permutation(users * 3)[:users]
    activity = rng.lognormal(mean=0.0, sigma=1.0, size=users)
    activity *= mean_events_per_user_day / activity.mean()
    k = min(interests_per_user, categories)
    base_cats = np.stack([rng.choice(categories, size=k, replace=False, p=cat_pop) for _ in range(users)])
    base_w = rng.dirichlet(np.full(k, 1.0), size=users)

    # Shifts: to a family none of the user's base categories belongs to.
    n_new = 3
    new_cats = np.full((users, n_new), -1, dtype=np.int64)
    new_w = np.zeros((users, n_new))
    shift_day = np.full(users, -1, dtype=np.int64)
    eligible = np.flatnonzero(activity >= np.quantile(activity, 0.2))
    n_shift = int(round(shift_share * users))
    shifted = np.sort(rng.choice(eligible, size=min(n_shift, len(eligible)), replace=False))
    lo, hi = max(1, int(days * 0.3)), max(2, int(days * 0.85))
    truth: list[dict[str, Any]] = []
    for u in shifted:
        own = set(cat_family[base_cats[u]].tolist())
        options = [f for f in range(n_fam) if f not in own]
        if not options:
            continue
        fam = int(rng.choice(options))
        members = np.flatnonzero(cat_family == fam)
        m = min(len(members), int(rng.integers(2, n_new + 1)))
        p = cat_pop[members] / cat_pop[members].sum()
        chosen = rng.choice(members, size=m, replace=False, p=p)
        new_cats[u, :m] = chosen
        new_w[u, :m] = rng.dirichlet(np.full(m, 2.0))
        shift_day[u] = int(rng.integers(lo, hi))
        truth.append({
            "user_id": str(user_ids[u]),
            "shift_date": (start + dt.timedelta(days=int(shift_day[u]))).isoformat(),
            "from_categories": [str(cat_ids[c]) for c in base_cats[u]],
            "to_categories": [str(cat_ids[c]) for c in chosen],
            "to_family": fam,
            "to_share": shift_strength,
        })

    events_path = out_dir / ("events.csv.gz" if compress else "events.csv")
    schema = TAOBAO_SCHEMA
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    sink = pa.CompressedOutputStream(str(events_path), "gzip") if compress else pa.OSFile(str(events_path), "wb")
    behavior_arr = np.array(BEHAVIOR_CODES, dtype=object)
    behavior_cdf = np.cumsum(BEHAVIOR_MIX)
    cat_cdf = np.cumsum(cat_pop)
    rows = 0
    epoch0 = int(start_of_day(start).timestamp())
    with pacsv.CSVWriter(sink, schema, write_options=options) as writer:
        for day in range(days):
            day_rows = 0
            for c0 in range(0, users, chunk_users):
                sl = slice(c0, min(users, c0 + chunk_users))
                table = _day_chunk(rng, day, sl, activity, base_cats, base_w, new_cats, new_w, shift_day,
                                   shift_strength, explore_rate, cat_cdf, cat_ids, item_base, item_cdf,
                                   user_ids, behavior_arr, behavior_cdf, epoch0, schema)
                if table.num_rows:
                    writer.write_table(table)
                    day_rows += table.num_rows
            rows += day_rows
            log.debug("day %s: %d events", start + dt.timedelta(days=day), day_rows)
    sink.close()

    truth_path = out_dir / TRUTH_FILE
    truth_path.write_text(json.dumps({
        "format": "taobao",
        "start": start.isoformat(), "days": days, "users": users, "categories": categories,
        "families": {str(cat_ids[c]): int(cat_family[c]) for c in range(categories)},
        "seed": seed, "shift_strength": shift_strength, "rows": rows,
        "shifts": truth,
    }, indent=1))
    log.info("generated %d events for %d users over %d days (%d planted shifts) in %s",
             rows, users, days, len(truth), events_path)
    return GeneratedData(events_path, truth_path, rows, users, days, categories, start, len(truth))


def _day_chunk(rng: np.random.Generator, day: int, sl: slice, activity: np.ndarray, base_cats: np.ndarray,
               base_w: np.ndarray, new_cats: np.ndarray, new_w: np.ndarray, shift_day: np.ndarray,
               shift_strength: float, explore_rate: float, cat_cdf: np.ndarray, cat_ids: np.ndarray,
               item_base: np.ndarray, item_cdf: np.ndarray, user_ids: np.ndarray, behavior_arr: np.ndarray,
               behavior_cdf: np.ndarray, epoch0: int, schema: pa.Schema) -> pa.Table:
    """Events of one day for users ``sl``: a table in the Taobao column order (time-sorted per user)."""
    act = activity[sl]
    n_user = len(act)
    # Active today with probability ~ activity; active users draw a count around their rate.
    p_active = np.clip(act / (act + 2.0), 0.05, 0.95)
    active = rng.random(n_user) < p_active
    counts = np.where(active, rng.poisson(act / p_active), 0)
    total = int(counts.sum())
    if total == 0:
        return schema.empty_table()
    uidx = np.repeat(np.arange(n_user), counts)
    g = uidx + sl.start

    # Category: base mix, the new mix after the shift day, or exploration by popularity.
    shifted = (shift_day[g] >= 0) & (day >= shift_day[g])
    to_new = shifted & (rng.random(total) < shift_strength)
    explore = rng.random(total) < explore_rate
    cat = np.empty(total, dtype=np.int64)
    bw = np.cumsum(base_w[g], axis=1)
    slot = (bw < rng.random(total)[:, None] * bw[:, -1:]).sum(axis=1)
    slot = np.minimum(slot, base_cats.shape[1] - 1)
    cat[:] = base_cats[g, slot]
    if to_new.any():
        nw = np.cumsum(new_w[g[to_new]], axis=1)
        nslot = (nw < rng.random(int(to_new.sum()))[:, None] * nw[:, -1:]).sum(axis=1)
        nslot = np.minimum(nslot, new_cats.shape[1] - 1)
        cat[to_new] = new_cats[g[to_new], nslot]
    if explore.any():
        cat[explore] = np.minimum(np.searchsorted(cat_cdf, rng.random(int(explore.sum()))), len(cat_cdf) - 1)

    item_rank = np.minimum(np.searchsorted(item_cdf, rng.random(total)), len(item_cdf) - 1)
    items = item_base[cat] + item_rank
    behavior = behavior_arr[np.minimum(np.searchsorted(behavior_cdf, rng.random(total)), 3)]
    return place_in_day(rng, day, uidx, n_user, user_ids[sl], cat_ids[cat], items, behavior, epoch0)


def place_in_day(rng: np.random.Generator, day: int, uidx: np.ndarray, n_user: int, user_ids: np.ndarray,
                 categories: np.ndarray, items: np.ndarray, behavior: np.ndarray, epoch0: int) -> pa.Table:
    """Timestamps for one day's events (``uidx`` indexes ``user_ids``): 1-3 sessions per user-day
    starting at a random second, events ~90 s apart within one; a Taobao-column table time-sorted
    per user."""
    total = len(uidx)
    sessions = rng.integers(1, 4, size=n_user)
    sess_of_event = (rng.random(total) * sessions[uidx]).astype(np.int64)
    sess_start = rng.integers(0, 86_400 - 3_600, size=(n_user, 3))
    gaps = rng.exponential(90.0, size=total).astype(np.int64) + 1
    order = np.lexsort((sess_of_event, uidx))
    uidx, sess_of_event, categories, items, behavior = (
        a[order] for a in (uidx, sess_of_event, categories, items, behavior))
    key = uidx * 4 + sess_of_event
    csum = np.cumsum(gaps)
    first = np.r_[True, key[1:] != key[:-1]]
    starts_at = np.maximum.accumulate(np.where(first, np.arange(total), 0))
    offset = csum - csum[starts_at]
    secs = np.minimum(sess_start[uidx, sess_of_event] + offset, 86_399)
    ts = epoch0 + day * 86_400 + secs
    order = np.lexsort((ts, uidx))
    return pa.table({
        "user_id": pa.array(user_ids[uidx[order]], pa.int64()),
        "item_id": pa.array(items[order], pa.int64()),
        "category_id": pa.array(categories[order], pa.int64()),
        "behavior_type": pa.array(behavior[order].tolist(), pa.string()),
        "timestamp": pa.array(ts[order], pa.int64()),
    }, schema=TAOBAO_SCHEMA)


def read_truth(path: Path) -> dict[str, Any]:
    """The planted-shift ground truth written beside the events (``truth.json``)."""
    return dict(json.loads(Path(path).read_text()))
