"""The per-user encoder the product used before the batch encoder: the reference the parity tests
compare :mod:`pipelines.features.batch` against. Test code only, never imported by the package.

It loops over as-of times and users in Python and builds each example's history summary with
numpy calls on that user's events; slow but simple enough to read as the definition of the features.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.features.examples import DECAY_HALF_LIVES, EXAMPLE_SCHEMA, N_HIST, EncodingConfig
from pipelines.features.vocab import Vocab

DAY_S = 86400.0


def _event_arrays(events: pa.Table, vocab: Vocab) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                           np.ndarray]:
    users = np.asarray(events["user_id"].to_numpy(zero_copy_only=False), dtype=object).astype(str)
    ts = pc.cast(pc.cast(events["ts"], pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy(
        zero_copy_only=False).astype(np.float64) / 1e6
    lookup = {value: i + 2 for i, value in enumerate(vocab.categories)}
    cats = np.fromiter((lookup.get(str(v), 1) for v in events["category_id"].to_pylist()), np.int32, events.num_rows)
    blookup = {value: i + 2 for i, value in enumerate(vocab.behaviors)}
    behs = np.fromiter((blookup.get(str(v), 1) for v in events["behavior"].to_pylist()), np.int32, events.num_rows)
    order = np.lexsort((ts, users))
    users, ts, cats, behs = users[order], ts[order], cats[order], behs[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    bounds = np.r_[starts, len(users)].astype(np.int64)
    return (users[starts] if len(users) else users), bounds, ts, cats, behs


def history_features(cats: np.ndarray, ages_days: np.ndarray, horizon_days: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-category summary of one user's history: (sorted category indices, features [n, N_HIST])."""
    if len(cats) == 0:
        return np.zeros(0, np.int32), np.zeros((0, N_HIST), np.float32)
    uniq, inv = np.unique(cats, return_inverse=True)
    age_h = ages_days / horizon_days
    feats = np.zeros((len(uniq), N_HIST), np.float64)
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    feats[:, 0] = np.log1p(counts)
    for j, half_life in enumerate(DECAY_HALF_LIVES):
        feats[:, 1 + j] = np.bincount(inv, weights=np.exp(-math.log(2.0) * age_h / half_life), minlength=len(uniq))
    last = np.full(len(uniq), np.inf)
    np.minimum.at(last, inv, age_h)
    first = np.zeros(len(uniq))
    np.maximum.at(first, inv, age_h)
    feats[:, 4] = np.log1p(last)
    feats[:, 5] = np.log1p(first)
    feats[:, 6] = counts / counts.sum()
    feats[:, 7] = (uniq == cats[-1]).astype(np.float64)
    return uniq.astype(np.int32), feats.astype(np.float32)


def encode_examples(events: pa.Table, asof_times: Sequence[dt.datetime], vocab: Vocab, config: EncodingConfig,
                    *, with_labels: bool = True) -> pa.Table:
    """Examples (EXAMPLE_SCHEMA) of ``events`` at each as-of time, one user at a time."""
    users, bounds, all_ts, all_cat, all_beh = _event_arrays(events, vocab)
    horizon_s = config.horizon_days * DAY_S
    lookback_s = config.lookback_days * DAY_S
    rows: dict[str, list[Any]] = {name: [] for name in EXAMPLE_SCHEMA.names}
    for asof in asof_times:
        t = asof.timestamp()
        for u in range(len(users)):
            lo, hi = bounds[u], bounds[u + 1]
            ts = all_ts[lo:hi]
            start = lo + int(np.searchsorted(ts, t - lookback_s, side="left"))
            before = lo + int(np.searchsorted(ts, t, side="left"))
            if with_labels:
                after = lo + int(np.searchsorted(ts, t + horizon_s, side="left"))
                if before == start or after == before:
                    continue
                label = np.unique(all_cat[before:after]).astype(np.int32)
            else:
                label = np.zeros(0, np.int32)
            h_ts, h_cat = all_ts[start:before], all_cat[start:before]
            ages = (t - h_ts) / DAY_S
            hist_cat, hist_feat = history_features(h_cat, ages, config.horizon_days)
            s = slice(max(0, len(h_ts) - config.seq_len), len(h_ts))
            days = np.floor(h_ts[s] / DAY_S)
            rows["user_id"].append(users[u])
            rows["asof"].append(asof.astimezone(dt.UTC))
            rows["seq_cat"].append(h_cat[s])
            rows["seq_beh"].append(all_beh[start:before][s])
            rows["seq_age"].append(ages[s].astype(np.float32))
            rows["seq_dow"].append(((days + 3) % 7).astype(np.int32))
            rows["seq_hour"].append(((h_ts[s] - days * DAY_S) // 3600).astype(np.int32))
            rows["hist_cat"].append(hist_cat)
            rows["hist_feat"].append(hist_feat.reshape(-1))
            rows["label"].append(label)
    columns = []
    for field in EXAMPLE_SCHEMA:
        values = rows[field.name]
        if pa.types.is_list(field.type):
            values = [v.tolist() for v in values]
        columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=EXAMPLE_SCHEMA)
