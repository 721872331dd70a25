"""The batch encoder: events of many users -> (user, as-of time) examples, for all users at once.

Training (every as-of time of a split) and scoring (one as-of time per day) both call it; the only
Python loop is over as-of times. :func:`index_events` dictionary-encodes the ids with Arrow and
sorts the events by (user, time) once; :func:`encode` cuts every user's look-back history, label
window and last ``seq_len`` events out of that order with integer arithmetic (per-user counts by
``bincount``, ranges by ``repeat``), and summarises each (example, category) pair with one stable
sort and ``reduceat``. The history is *sparse*: each example carries only its K history
categories and their features (:data:`~pipelines.features.examples.HIST_FEATURES`), never a
dense [B, V, 8] tensor.

The features are defined exactly as before the batch encoder (``tests/reference_encoder.py``
keeps the per-user definition and the parity tests compare both on real data).
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

from pipelines.features.examples import DECAY_HALF_LIVES, EXAMPLE_SCHEMA, N_HIST, EncodingConfig
from pipelines.features.vocab import Vocab
from pipelines.platform.dates import epoch_us

DAY_S = 86400.0
_TS_TYPE = pa.timestamp("us", tz="UTC")


@dataclasses.dataclass(frozen=True)
class EventIndex:
    """Events sorted by (user, time) as integer columns, with the dictionaries to map them back.

    ``users`` and ``raw_categories`` / ``raw_behaviors`` are sorted string dictionaries; user u
    owns the event rows ``bounds[u]:bounds[u + 1]`` (every user has at least one event).
    """

    users: pa.Array
    bounds: np.ndarray  # int64 [U + 1]
    ts: np.ndarray  # float64 seconds since the epoch
    ts_us: np.ndarray  # int64 microseconds since the epoch
    cat: np.ndarray  # int32 vocabulary index of the category
    beh: np.ndarray  # int32 vocabulary index of the behaviour
    raw_cat: np.ndarray  # int32 code into raw_categories
    raw_categories: pa.Array
    raw_beh: np.ndarray  # int32 code into raw_behaviors
    raw_behaviors: pa.Array
    cat_of_raw: np.ndarray  # int32 vocabulary index of each raw category
    order: np.ndarray  # int64 row of each sorted event in the input table

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_events(self) -> int:
        return len(self.ts)

    def user_of_event(self) -> np.ndarray:
        """The user index of every event row (int64)."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.bounds))


def sorted_codes(column: pa.Array | pa.ChunkedArray, name: str) -> tuple[np.ndarray, pa.Array]:
    """Dictionary codes of a string column whose dictionary is sorted (code order = string order).
    Raises ValueError naming the column when it holds nulls."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if column.null_count:
        raise ValueError(f"events column {name!r} holds {column.null_count} null value(s)")
    if not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    encoded = pc.dictionary_encode(column)
    order = pc.array_sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)] if len(column) else np.zeros(0, np.int32)
    return codes, encoded.dictionary.take(pa.array(order, pa.int64()))


def index_events(events: pa.Table, vocab: Vocab) -> EventIndex:
    """Sort and integer-encode ``events`` (columns user_id, category_id, behavior, ts). Raises
    ValueError when ``ts`` is not a timestamp or an id column holds nulls."""
    if not pa.types.is_timestamp(events.schema.field("ts").type):
        raise ValueError(f"events column 'ts' must be a timestamp, got {events.schema.field('ts').type}")
    user_codes, users = sorted_codes(events["user_id"], "user_id")
    raw_cat, raw_categories = sorted_codes(events["category_id"], "category_id")
    raw_beh, raw_behaviors = sorted_codes(events["behavior"], "behavior")
    ts_col = events["ts"]
    if ts_col.null_count:
        raise ValueError(f"events column 'ts' holds {ts_col.null_count} null value(s)")
    ts_us = pc.cast(pc.cast(ts_col, _TS_TYPE), pa.int64()).to_numpy(zero_copy_only=False)
    order = _user_time_order(user_codes, ts_us, len(users))
    counts = np.bincount(user_codes, minlength=len(users))
    cat_of_raw = vocab.category_index(raw_categories)
    beh_of_raw = vocab.behavior_index(raw_behaviors)
    raw_cat, raw_beh, ts_us = raw_cat[order], raw_beh[order], ts_us[order]
    return EventIndex(users=users, bounds=np.r_[0, np.cumsum(counts)].astype(np.int64),
                      ts=ts_us.astype(np.float64) / 1e6, ts_us=ts_us, cat=cat_of_raw[raw_cat],
                      beh=beh_of_raw[raw_beh], raw_cat=raw_cat, raw_categories=raw_categories, raw_beh=raw_beh,
                      raw_behaviors=raw_behaviors, cat_of_raw=cat_of_raw, order=order)


def _user_time_order(users: np.ndarray, ts_us: np.ndarray, n_users: int) -> np.ndarray:
    """Stable order by (user, ts): one sort of a combined int64 key when it fits, else lexsort."""
    if len(ts_us) == 0:
        return np.zeros(0, np.int64)
    low = int(ts_us.min())
    span = int(ts_us.max()) - low + 1
    if n_users * span < 2**62:
        return np.argsort(users.astype(np.int64) * span + (ts_us - low), kind="stable")
    return np.lexsort((ts_us, users))


def ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated row indices of the ranges ``[starts[i], stops[i])`` and their offsets [n + 1]."""
    lengths = np.asarray(stops, np.int64) - np.asarray(starts, np.int64)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    index = np.arange(offsets[-1], dtype=np.int64) + np.repeat(np.asarray(starts, np.int64) - offsets[:-1], lengths)
    return index, offsets


def offsets_of(counts: np.ndarray) -> np.ndarray:
    return np.r_[0, np.cumsum(counts)].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Examples:
    """Encoded examples as ragged arrays (``*_offsets`` [B + 1] into flat values).

    ``user`` indexes :attr:`EventIndex.users` and ``asof`` is in microseconds (both None for
    examples read back from a table). Sequences are in time order, the history sorted by category.
    """

    user: np.ndarray | None
    asof: np.ndarray | None
    seq_offsets: np.ndarray
    seq_cat: np.ndarray
    seq_beh: np.ndarray
    seq_age: np.ndarray
    seq_dow: np.ndarray
    seq_hour: np.ndarray
    hist_offsets: np.ndarray
    hist_cat: np.ndarray
    hist_feat: np.ndarray  # float32 [H, N_HIST]
    label_offsets: np.ndarray
    label: np.ndarray

    @property
    def n(self) -> int:
        return len(self.seq_offsets) - 1

    def hist_counts(self) -> np.ndarray:
        return np.diff(self.hist_offsets)

    def to_table(self, users: pa.Array) -> pa.Table:
        """The examples as :data:`EXAMPLE_SCHEMA` rows (``users`` is the index's user dictionary)."""
        if self.user is None or self.asof is None:
            raise ValueError("examples read back from a table have no user index")
        seq = _arrow_offsets(self.seq_offsets)
        columns = [users.take(pa.array(self.user, pa.int64())), pa.array(self.asof, pa.int64()).cast(_TS_TYPE)]
        for values in (self.seq_cat, self.seq_beh, self.seq_age, self.seq_dow, self.seq_hour):
            columns.append(pa.ListArray.from_arrays(seq, pa.array(values)))
        columns.append(pa.ListArray.from_arrays(_arrow_offsets(self.hist_offsets), pa.array(self.hist_cat)))
        columns.append(pa.ListArray.from_arrays(_arrow_offsets(self.hist_offsets * N_HIST),
                                                pa.array(self.hist_feat.reshape(-1))))
        columns.append(pa.ListArray.from_arrays(_arrow_offsets(self.label_offsets), pa.array(self.label)))
        return pa.Table.from_arrays(columns, schema=EXAMPLE_SCHEMA)

    @classmethod
    def from_table(cls, table: pa.Table | pa.RecordBatch) -> Examples:
        """Examples of :data:`EXAMPLE_SCHEMA` rows (a table, a slice of one, or a record batch)."""
        seq_offsets, seq_cat = _list_column(table, "seq_cat", np.int32)
        hist_offsets, hist_cat = _list_column(table, "hist_cat", np.int32)
        label_offsets, label = _list_column(table, "label", np.int32)
        _, feats = _list_column(table, "hist_feat", np.float32)
        return cls(None, None, seq_offsets, seq_cat, _list_column(table, "seq_beh", np.int32)[1],
                   _list_column(table, "seq_age", np.float32)[1], _list_column(table, "seq_dow", np.int32)[1],
                   _list_column(table, "seq_hour", np.int32)[1], hist_offsets, hist_cat, feats.reshape(-1, N_HIST),
                   label_offsets, label)

    def take(self, rows: np.ndarray) -> Examples:
        """The examples at ``rows`` (in that order)."""
        rows = np.asarray(rows, np.int64)
        seq, seq_off = ranges(self.seq_offsets[rows], self.seq_offsets[rows + 1])
        hist, hist_off = ranges(self.hist_offsets[rows], self.hist_offsets[rows + 1])
        lab, lab_off = ranges(self.label_offsets[rows], self.label_offsets[rows + 1])
        return Examples(None if self.user is None else self.user[rows], None if self.asof is None else self.asof[rows],
                        seq_off, self.seq_cat[seq], self.seq_beh[seq], self.seq_age[seq], self.seq_dow[seq],
                        self.seq_hour[seq], hist_off, self.hist_cat[hist], self.hist_feat[hist], lab_off,
                        self.label[lab])

    def model_inputs(self, seq_len: int, *, trim: bool = False) -> dict[str, np.ndarray]:
        """Sparse model inputs: ``seq_cat``/``seq_beh``/``seq_dow``/``seq_hour`` int32 and
        ``seq_age`` float32 [B, W] (right-aligned, most recent event last, 0 = padding; W =
        ``seq_len``, or with ``trim`` the longest sequence of the batch), ``hist_cat`` int32 [B, K]
        (0 = padding) and ``hist_feat`` float32 [B, K, N_HIST] (K = the most history categories
        of an example in the batch, at least 1)."""
        lengths = np.diff(self.seq_offsets)
        width = max(1, int(lengths.max(initial=0))) if trim else seq_len
        rows, pos = _positions(self.seq_offsets)
        pos = pos + np.repeat(width - lengths, lengths)
        keep = pos >= 0
        rows, pos = rows[keep], pos[keep]
        inputs = {}
        for name, values, dtype in (("seq_cat", self.seq_cat, np.int32), ("seq_beh", self.seq_beh, np.int32),
                                    ("seq_age", self.seq_age, np.float32), ("seq_dow", self.seq_dow, np.int32),
                                    ("seq_hour", self.seq_hour, np.int32)):
            matrix = np.zeros((self.n, width), dtype)
            matrix[rows, pos] = values[keep]
            inputs[name] = matrix
        k = max(1, int(self.hist_counts().max(initial=0)))
        h_rows, h_pos = _positions(self.hist_offsets)
        hist_cat = np.zeros((self.n, k), np.int32)
        hist_cat[h_rows, h_pos] = self.hist_cat
        hist_feat = np.zeros((self.n, k, N_HIST), np.float32)
        hist_feat[h_rows, h_pos] = self.hist_feat
        inputs["hist_cat"], inputs["hist_feat"] = hist_cat, hist_feat
        return inputs

    def label_matrix(self, n_categories: int) -> np.ndarray:
        """Multi-hot labels [B, V] (float32)."""
        return _multi_hot(self.label_offsets, self.label, n_categories)

    def known_matrix(self, n_categories: int) -> np.ndarray:
        """1 where the category is in the example's history [B, V] (float32)."""
        return _multi_hot(self.hist_offsets, self.hist_cat, n_categories)

    def dense_history(self, n_categories: int) -> np.ndarray:
        """The history as the dense [B, V, N_HIST] tensor models saved before the sparse path read."""
        rows, _ = _positions(self.hist_offsets)
        dense = np.zeros((self.n, n_categories, N_HIST), np.float32)
        dense[rows, self.hist_cat] = self.hist_feat
        return dense

    @classmethod
    def concat(cls, parts: Sequence[Examples]) -> Examples:
        if not parts:
            raise ValueError("nothing to concatenate")
        if len(parts) == 1:
            return parts[0]

        def offsets(name: str) -> np.ndarray:
            counts = [np.diff(getattr(p, name)) for p in parts]
            return offsets_of(np.concatenate(counts))

        def values(name: str) -> Any:
            items = [getattr(p, name) for p in parts]
            return None if any(v is None for v in items) else np.concatenate(items)

        fields = {f.name: (offsets(f.name) if f.name.endswith("_offsets") else values(f.name))
                  for f in dataclasses.fields(cls)}
        return cls(**fields)


def encode(index: EventIndex, asof_times: Sequence[dt.datetime], vocab: Vocab, config: EncodingConfig,
           *, with_labels: bool = True) -> Examples:
    """Examples of every user of ``index`` at each as-of time (as-of times in the given order,
    users in id order within each).

    With labels, a user counts at T when it has history in ``[T - lookback, T)`` and at least one
    event in ``[T, T + horizon)``; without labels (scoring) every user gets a row, with whatever
    history it has (possibly none) and an empty label.
    """
    parts = [_encode_at(index, asof, vocab.n_categories, config, with_labels) for asof in asof_times]
    if not parts:
        return _encode_at(index, None, vocab.n_categories, config, with_labels)
    return Examples.concat(parts)


def encode_each(index: EventIndex, asof_us: np.ndarray, vocab: Vocab, config: EncodingConfig) -> Examples:
    """Scoring examples (no labels) of every user of ``index``, each at its own as-of time:
    ``asof_us[u]`` (microseconds since the epoch) for user ``u``. The same features as
    :func:`encode` at that time; the online endpoint scores a batch of requests in one call."""
    asof_us = np.asarray(asof_us, np.int64)
    if len(asof_us) != index.n_users:
        raise ValueError(f"{len(asof_us)} as-of times for {index.n_users} users")
    return _encode_at(index, None, vocab.n_categories, config, False, asof_us=asof_us if index.n_users else None)


def _encode_at(index: EventIndex, asof: dt.datetime | None, n_categories: int, config: EncodingConfig,
               with_labels: bool, *, asof_us: np.ndarray | None = None) -> Examples:
    if asof is None and asof_us is None:  # no as-of time: an empty set of examples of the right shapes
        empty = np.zeros(0, np.int64)
        return Examples(empty, empty, np.zeros(1, np.int64), empty.astype(np.int32), empty.astype(np.int32),
                        empty.astype(np.float32), empty.astype(np.int32), empty.astype(np.int32),
                        np.zeros(1, np.int64), empty.astype(np.int32), np.zeros((0, N_HIST), np.float32),
                        np.zeros(1, np.int64), empty.astype(np.int32))
    first = index.bounds[:-1]
    user_of = index.user_of_event()
    # one as-of time for everyone (a float), or one per user (``asof_us``: then t_ev per event)
    t = asof.timestamp() if asof_us is None else asof_us.astype(np.float64) / 1e6
    t_ev = t if asof_us is None else t[user_of]
    start = first + np.bincount(user_of[index.ts < t_ev - config.lookback_days * DAY_S], minlength=index.n_users)
    before = first + np.bincount(user_of[index.ts < t_ev], minlength=index.n_users)
    if with_labels:
        after = first + np.bincount(user_of[index.ts < t_ev + config.horizon_days * DAY_S], minlength=index.n_users)
        chosen = np.flatnonzero((before > start) & (after > before))
        start, before, after = start[chosen], before[chosen], after[chosen]
    else:
        chosen = np.arange(index.n_users, dtype=np.int64)
        after = before
    n = len(chosen)
    t_ex = t if asof_us is None else t[chosen]
    hist_offsets, hist_cat, hist_feat = _history(index, start, before, t_ex, n_categories, config.horizon_days)
    label_offsets, label = _labels(index, before, after, n_categories)
    seq, seq_offsets = ranges(np.maximum(start, before - config.seq_len), before)
    seq_ts = index.ts[seq]
    days = np.floor(seq_ts / DAY_S)
    t_seq = t if asof_us is None else np.repeat(t_ex, np.diff(seq_offsets))
    example_us = np.full(n, epoch_us(asof), np.int64) if asof_us is None else asof_us[chosen]
    return Examples(chosen.astype(np.int64), example_us, seq_offsets, index.cat[seq],
                    index.beh[seq], ((t_seq - seq_ts) / DAY_S).astype(np.float32), ((days + 3) % 7).astype(np.int32),
                    ((seq_ts - days * DAY_S) // 3600).astype(np.int32), hist_offsets, hist_cat, hist_feat,
                    label_offsets, label)


def _history(index: EventIndex, start: np.ndarray, before: np.ndarray, t: float | np.ndarray, n_categories: int,
             horizon_days: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (example, category) summary of the events ``[start, before)`` of each example, as of
    ``t`` (seconds: one for all, or one per example)."""
    rows, _ = ranges(start, before)
    lengths = before - start
    example = np.repeat(np.arange(len(start), dtype=np.int64), lengths)
    key = example * n_categories + index.cat[rows]
    order = np.argsort(key, kind="stable")  # stable: time order inside each (example, category) group
    key = key[order]
    if len(key) == 0:
        return np.zeros(len(start) + 1, np.int64), np.zeros(0, np.int32), np.zeros((0, N_HIST), np.float32)
    group_start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    group_end = np.r_[group_start[1:], len(key)]
    t_at = t if np.isscalar(t) else np.asarray(t)[example[order]]
    age_h = ((t_at - index.ts[rows[order]]) / DAY_S) / horizon_days
    counts = (group_end - group_start).astype(np.float64)
    group_example = key[group_start] // n_categories
    group_cat = (key[group_start] % n_categories).astype(np.int32)
    feats = np.empty((len(group_start), N_HIST), np.float64)
    feats[:, 0] = np.log1p(counts)
    for j, half_life in enumerate(DECAY_HALF_LIVES):
        feats[:, 1 + j] = np.add.reduceat(np.exp(-math.log(2.0) * age_h / half_life), group_start)
    feats[:, 4] = np.log1p(age_h[group_end - 1])  # most recent touch: the group's last event
    feats[:, 5] = np.log1p(age_h[group_start])  # first touch
    feats[:, 6] = counts / lengths[group_example]
    feats[:, 7] = group_cat == index.cat[before - 1][group_example]
    per_example = np.bincount(group_example, minlength=len(start))
    return offsets_of(per_example), group_cat, feats.astype(np.float32)


def _labels(index: EventIndex, before: np.ndarray, after: np.ndarray, n_categories: int
            ) -> tuple[np.ndarray, np.ndarray]:
    rows, _ = ranges(before, after)
    example = np.repeat(np.arange(len(before), dtype=np.int64), after - before)
    keys = np.unique(example * n_categories + index.cat[rows])
    return offsets_of(np.bincount(keys // n_categories, minlength=len(before))), (keys % n_categories).astype(np.int32)


def _positions(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, position within the row) of every flat value of a ragged array."""
    lengths = np.diff(offsets)
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return rows, np.arange(offsets[-1] - offsets[0], dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], lengths)


def _multi_hot(offsets: np.ndarray, values: np.ndarray, n_categories: int) -> np.ndarray:
    rows, _ = _positions(offsets)
    out = np.zeros((len(offsets) - 1, n_categories), np.float32)
    out[rows, values] = 1.0
    return out


def _arrow_offsets(offsets: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(offsets, np.int32))


def _list_column(table: pa.Table | pa.RecordBatch, name: str, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat values) of a list column, honouring slices."""
    column = table[name]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return offsets - offsets[0], values


def encode_examples(events: pa.Table, asof_times: Sequence[dt.datetime], vocab: Vocab, config: EncodingConfig,
                    *, with_labels: bool = True) -> pa.Table:
    """:func:`encode` of ``events`` (EVENT_SCHEMA columns) as :data:`EXAMPLE_SCHEMA` rows."""
    index = index_events(events, vocab)
    return encode(index, asof_times, vocab, config, with_labels=with_labels).to_table(index.users)


def to_model_inputs(rows: pa.Table | pa.RecordBatch, n_categories: int, seq_len: int, *, trim: bool = False
                    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Sparse model inputs (:meth:`Examples.model_inputs`), multi-hot labels [B, V] and the
    known-category mask [B, V] of :data:`EXAMPLE_SCHEMA` rows."""
    examples = Examples.from_table(rows)
    return (examples.model_inputs(seq_len, trim=trim), examples.label_matrix(n_categories),
            examples.known_matrix(n_categories))
