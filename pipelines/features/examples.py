"""Examples: one user at one as-of time T, and the dense model inputs built from them.

An example's features come only from the user's events in ``[T - lookback, T)``: the last
``seq_len`` events (category, behaviour, age in days, day of week, hour) and a per-category
history summary (counts, decayed counts at three half-lives, recency, first touch, share, "was the
last event"). Its label is the set of categories the user touches in ``[T, T + horizon)``.

Every function here is pure: Arrow tables and numpy arrays in, Arrow tables and numpy arrays out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.features.vocab import Vocab

DAY_S = 86400.0
# Half-lives of the decayed counts, in units of the horizon (scale-free: days for Taobao, months for Ciao).
DECAY_HALF_LIVES = (1.0 / 3.0, 1.0, 4.0)
HIST_FEATURES = ("log_count", "decay_short", "decay_mid", "decay_long", "log_last_age", "log_first_age",
                 "share", "is_last")
N_HIST = len(HIST_FEATURES)
EXAMPLE_SCHEMA = pa.schema([
    pa.field("user_id", pa.string()),
    pa.field("asof", pa.timestamp("us", tz="UTC")),
    pa.field("seq_cat", pa.list_(pa.int32())),
    pa.field("seq_beh", pa.list_(pa.int32())),
    pa.field("seq_age", pa.list_(pa.float32())),
    pa.field("seq_dow", pa.list_(pa.int32())),
    pa.field("seq_hour", pa.list_(pa.int32())),
    pa.field("hist_cat", pa.list_(pa.int32())),
    pa.field("hist_feat", pa.list_(pa.float32())),
    pa.field("label", pa.list_(pa.int32())),
])


@dataclasses.dataclass(frozen=True)
class EncodingConfig:
    """What shapes an example: horizon and look-back (days) and the sequence length."""

    horizon_days: float
    lookback_days: float
    seq_len: int

    @classmethod
    def from_settings(cls, settings: Settings) -> EncodingConfig:
        return cls(float(settings.horizon_days), float(settings.lookback_days), int(settings.seq_len))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _EventArrays:
    """Events as sorted numpy arrays grouped by user (seconds since epoch as float64)."""

    users: np.ndarray
    bounds: np.ndarray  # user u owns rows bounds[u]:bounds[u+1]
    ts: np.ndarray
    cat: np.ndarray
    beh: np.ndarray


def _event_arrays(events: pa.Table, vocab: Vocab) -> _EventArrays:
    users = np.asarray(events["user_id"].to_numpy(zero_copy_only=False), dtype=object).astype(str)
    ts_col = events["ts"]
    if not pa.types.is_timestamp(ts_col.type):
        raise ValueError(f"events column 'ts' must be a timestamp, got {ts_col.type}")
    ts = pc.cast(pc.cast(ts_col, pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy(
        zero_copy_only=False).astype(np.float64) / 1e6
    cats = vocab.category_index(np.asarray(events["category_id"].to_numpy(zero_copy_only=False), dtype=object))
    behs = vocab.behavior_index(np.asarray(events["behavior"].to_numpy(zero_copy_only=False), dtype=object))
    order = np.lexsort((ts, users))
    users, ts, cats, behs = users[order], ts[order], cats[order], behs[order]
    if len(users):
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    else:
        starts = np.zeros(0, dtype=np.int64)
    bounds = np.r_[starts, len(users)].astype(np.int64)
    return _EventArrays(users[starts] if len(users) else users, bounds, ts, cats, behs)


def history_features(cats: np.ndarray, ages_days: np.ndarray, horizon_days: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-category summary of one user's history: (category indices, features [n, N_HIST]).

    ``cats``/``ages_days`` are the history events (age = days before the as-of time, > 0), in
    time order. Features follow :data:`HIST_FEATURES`; ages are measured in horizons.
    """
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
    """Examples (:data:`EXAMPLE_SCHEMA`) of ``events`` (EVENT_SCHEMA columns) at each as-of time.

    With labels, a user counts at T when it has history in ``[T - lookback, T)`` and at least one
    event in ``[T, T + horizon)`` (the evaluation protocol). Without labels (scoring), every user
    in ``events`` gets one row per as-of time, from whatever history it has before T (possibly none);
    the label is empty.
    """
    arr = _event_arrays(events, vocab)
    horizon_s = config.horizon_days * DAY_S
    lookback_s = config.lookback_days * DAY_S
    rows: dict[str, list[Any]] = {name: [] for name in EXAMPLE_SCHEMA.names}
    for asof in asof_times:
        t = asof.timestamp()
        asof_value = asof.astimezone(dt.UTC)
        for u in range(len(arr.users)):
            lo, hi = arr.bounds[u], arr.bounds[u + 1]
            ts = arr.ts[lo:hi]
            start = lo + int(np.searchsorted(ts, t - lookback_s, side="left"))
            before = lo + int(np.searchsorted(ts, t, side="left"))
            if with_labels:
                after = lo + int(np.searchsorted(ts, t + horizon_s, side="left"))
                if before == start or after == before:
                    continue
                label = np.unique(arr.cat[before:after]).astype(np.int32)
            else:
                label = np.zeros(0, np.int32)
            h_ts = arr.ts[start:before]
            h_cat = arr.cat[start:before]
            ages = (t - h_ts) / DAY_S
            hist_cat, hist_feat = history_features(h_cat, ages, config.horizon_days)
            s = slice(max(0, len(h_ts) - config.seq_len), len(h_ts))
            seq_dt = h_ts[s]
            rows["user_id"].append(arr.users[u])
            rows["asof"].append(asof_value)
            rows["seq_cat"].append(h_cat[s])
            rows["seq_beh"].append(arr.beh[start:before][s])
            rows["seq_age"].append(ages[s].astype(np.float32))
            days = np.floor(seq_dt / DAY_S)
            rows["seq_dow"].append(((days + 3) % 7).astype(np.int32))  # 1970-01-01 was a Thursday
            rows["seq_hour"].append(((seq_dt - days * DAY_S) // 3600).astype(np.int32))
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


def _list_matrix(column: pa.ChunkedArray | pa.Array, width: int, dtype: Any, *, align_right: bool) -> np.ndarray:
    """A list column as a dense [rows, width] array, padded with 0 (right-aligned: last item last)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.flatten().to_numpy(zero_copy_only=False).astype(dtype)
    lengths = np.diff(offsets)
    out = np.zeros((len(lengths), width), dtype)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(values)) - np.repeat(offsets[:-1] - offsets[0], lengths)
    if align_right:
        pos = pos + np.repeat(width - lengths, lengths)
    keep = (pos >= 0) & (pos < width)
    out[rows[keep], pos[keep]] = values[keep]
    return out


def to_model_inputs(batch: pa.Table | pa.RecordBatch, n_categories: int, seq_len: int
                    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Dense model inputs, multi-hot labels [B, V] and known-category mask [B, V] of example rows.

    Inputs: ``seq_cat``/``seq_beh``/``seq_dow``/``seq_hour`` int32 [B, L] and ``seq_age`` float32
    [B, L] (right-aligned, most recent event last, 0 = padding), ``hist`` float32 [B, V, N_HIST].
    """
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    n = table.num_rows
    inputs = {
        "seq_cat": _list_matrix(table["seq_cat"], seq_len, np.int32, align_right=True),
        "seq_beh": _list_matrix(table["seq_beh"], seq_len, np.int32, align_right=True),
        "seq_age": _list_matrix(table["seq_age"], seq_len, np.float32, align_right=True),
        "seq_dow": _list_matrix(table["seq_dow"], seq_len, np.int32, align_right=True),
        "seq_hour": _list_matrix(table["seq_hour"], seq_len, np.int32, align_right=True),
    }
    hist = np.zeros((n, n_categories, N_HIST), np.float32)
    hist_cat = table["hist_cat"].combine_chunks()
    lengths = np.diff(hist_cat.offsets.to_numpy())
    rows = np.repeat(np.arange(n), lengths)
    cats = hist_cat.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    feats = table["hist_feat"].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, N_HIST)
    hist[rows, cats] = feats
    inputs["hist"] = hist
    known = np.zeros((n, n_categories), np.float32)
    known[rows, cats] = 1.0
    labels = np.zeros((n, n_categories), np.float32)
    label_col = table["label"].combine_chunks()
    l_len = np.diff(label_col.offsets.to_numpy())
    labels[np.repeat(np.arange(n), l_len), label_col.flatten().to_numpy(zero_copy_only=False)] = 1.0
    return inputs, labels, known


def baseline_statistics(events: pa.Table, train_examples: pa.Table, vocab: Vocab) -> dict[str, Any]:
    """Training-window statistics the baselines need: label rate per category over the training
    examples (popularity) and first-order category transition counts between consecutive events
    of each user (Markov), as sparse ``[from, to, count]`` triples."""
    v = vocab.n_categories
    label_col = train_examples["label"].combine_chunks()
    label_counts = np.bincount(label_col.flatten().to_numpy(zero_copy_only=False), minlength=v)
    arr = _event_arrays(events, vocab)
    same_user = np.ones(len(arr.cat), bool)
    same_user[arr.bounds[1:-1]] = False  # first event of each user has no predecessor
    prev, nxt = arr.cat[:-1], arr.cat[1:]
    keep = same_user[1:]
    pairs = prev[keep].astype(np.int64) * v + nxt[keep]
    uniq, counts = np.unique(pairs, return_counts=True)
    return {
        "n_train_examples": int(train_examples.num_rows),
        "label_counts": label_counts.astype(int).tolist(),
        "transitions": [[int(p // v), int(p % v), int(c)] for p, c in zip(uniq, counts, strict=True)],
    }
