"""Encoding: vocabularies and (user, as-of time) examples for the interest-migration model.

An example is one user at one as-of time T. Its features come only from the user's events in
``[T - lookback, T)``: the last ``seq_len`` events (category, behaviour, age in days, day of week,
hour) and a per-category history summary (counts, decayed counts at three half-lives, recency,
first touch, share, "was the last event"). Its label is the set of categories the user touches in
``[T, T + horizon)``. As-of times are planned on a time line: training, then validation, then test,
each split's label windows ending before the next split's first as-of time.

Pure functions here (:func:`build_vocab`, :func:`plan_asof_times`, :func:`encode_examples`,
:func:`to_model_inputs`) never touch storage; :func:`encode_step` is the storage/MLflow edge that
writes ``features/<id>/`` (Parquet shards per split, ``vocab.json``, ``metadata.json``,
``baseline_stats.json`` and the raw events of the test users for pyfunc evaluation).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.contracts import BEHAVIORS, EVENT_SCHEMA

log = logging.getLogger(__name__)

PAD = 0
OOV = 1
RESERVED = 2  # indices 0 (padding) and 1 (out-of-vocabulary) come before the real ids
SPLITS = ("train", "validation", "test")
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
class Vocab:
    """Category and behaviour vocabularies: index 0 padding, 1 out-of-vocabulary, then the ids."""

    categories: tuple[str, ...]
    behaviors: tuple[str, ...]

    @property
    def n_categories(self) -> int:
        return len(self.categories) + RESERVED

    @property
    def n_behaviors(self) -> int:
        return len(self.behaviors) + RESERVED

    def category_index(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Indices of raw category ids; unknown ids map to :data:`OOV` (never raises)."""
        lookup = {c: i + RESERVED for i, c in enumerate(self.categories)}
        return np.fromiter((lookup.get(str(c), OOV) for c in ids), dtype=np.int32, count=len(ids))

    def behavior_index(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        lookup = {b: i + RESERVED for i, b in enumerate(self.behaviors)}
        return np.fromiter((lookup.get(str(b), OOV) for b in ids), dtype=np.int32, count=len(ids))

    def category_ids(self) -> np.ndarray:
        """Raw id per index (padding and OOV as empty strings), for mapping scores back."""
        return np.array(["", ""] + list(self.categories), dtype=object)

    def to_dict(self) -> dict[str, Any]:
        return {"categories": list(self.categories), "behaviors": list(self.behaviors)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocab:
        return cls(tuple(str(c) for c in data["categories"]), tuple(str(b) for b in data["behaviors"]))


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


def build_vocab(categories: Iterable[str], min_count: int, behaviors: Iterable[str] = ()) -> Vocab:
    """Vocabulary of the categories seen at least ``min_count`` times (most frequent first, then id),
    and of the behaviours (the canonical :data:`BEHAVIORS` first, then any others seen)."""
    values, counts = np.unique(np.asarray(list(categories), dtype=object).astype(str), return_counts=True)
    order = sorted(((-int(n), str(v)) for v, n in zip(values, counts, strict=True) if n >= min_count))
    seen = [b for b in dict.fromkeys(str(b) for b in behaviors) if b not in BEHAVIORS]
    return Vocab(tuple(v for _, v in order), tuple(BEHAVIORS) + tuple(sorted(seen)))


def _floor_day(ts: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(ts.astimezone(dt.UTC).date(), dt.time(), tzinfo=dt.UTC)


def plan_asof_times(first_event: dt.datetime, data_end: dt.datetime, *, horizon_days: float,
                    train_step_days: int, eval_step_days: int, validation_count: int,
                    test_count: int) -> dict[str, list[dt.datetime]]:
    """As-of times per split, at UTC midnights, oldest first.

    ``data_end`` is the first instant with no data. The last test as-of time leaves a full horizon
    before ``data_end``; validation as-of times end one horizon before the first test one, training
    ones one horizon before the first validation one (no label window overlaps a later split's).
    Training goes back while there is at least one day of history. Raises ValueError (with the
    dates) when the window is too short for one training as-of time.
    """
    horizon = dt.timedelta(days=horizon_days)
    last_test = _floor_day(data_end - horizon)
    test = [last_test - dt.timedelta(days=eval_step_days * i) for i in range(test_count)][::-1]
    last_val = _floor_day(test[0] - horizon)
    validation = [last_val - dt.timedelta(days=eval_step_days * i) for i in range(validation_count)][::-1]
    train: list[dt.datetime] = []
    t = _floor_day(validation[0] - horizon)
    earliest = first_event + dt.timedelta(days=1)
    while t >= earliest:
        train.append(t)
        t -= dt.timedelta(days=train_step_days)
    if not train:
        raise ValueError(
            f"data from {first_event.isoformat()} to {data_end.isoformat()} is too short for horizon "
            f"{horizon_days} days with {validation_count} validation and {test_count} test as-of times "
            f"(first validation as-of {validation[0].isoformat()})")
    return {"train": train[::-1], "validation": validation, "test": test}


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


def history_features(cats: np.ndarray, ages_days: np.ndarray, horizon_days: float,
                     n_categories: int) -> tuple[np.ndarray, np.ndarray]:
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
            hist_cat, hist_feat = history_features(h_cat, ages, config.horizon_days, vocab.n_categories)
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


# --------------------------------------------------------------------------------------------
# storage edge


def dataset_id(settings: Settings, start: dt.date, end: dt.date, mlflow_run_id: str | None) -> str:
    """The folder name under ``features/``: the MLflow run id, or a hash of window and settings."""
    if mlflow_run_id:
        return mlflow_run_id
    key = json.dumps([start.isoformat(), end.isoformat(), settings.describe()], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _shards(table: pa.Table, rows_per_shard: int) -> Iterator[pa.Table]:
    for offset in range(0, max(table.num_rows, 1), rows_per_shard):
        yield table.slice(offset, rows_per_shard)


def encode_events(events: pa.Table, settings: Settings) -> dict[str, Any]:
    """Plan as-of times, build the vocabulary from the training window and encode every split.

    Returns ``{"vocab", "config", "asof", "examples": {split: table}, "stats", "test_events"}``.
    Pure (no storage): used by :func:`encode_step` and by the benchmark.
    """
    if events.num_rows == 0:
        raise ValueError("no clean events in the window: nothing to encode")
    config = EncodingConfig.from_settings(settings)
    ts = events["ts"]
    first = pc.min(ts).as_py()
    last = pc.max(ts).as_py()
    data_end = _floor_day(last) + dt.timedelta(days=1)
    asof = plan_asof_times(first, data_end, horizon_days=config.horizon_days,
                           train_step_days=settings.asof_step_days, eval_step_days=settings.eval_asof_step_days,
                           validation_count=settings.validation_asof_count, test_count=settings.test_asof_count)
    train_end = pa.scalar(asof["validation"][0], type=EVENT_SCHEMA.field("ts").type)
    train_events = events.filter(pc.less(ts, train_end))
    vocab = build_vocab(train_events["category_id"].to_numpy(zero_copy_only=False), settings.min_category_count,
                        events["behavior"].unique().to_pylist())
    log.info("vocabulary: %d categories (min count %d), %d behaviours; as-of times train %d, validation %d, "
             "test %d", len(vocab.categories), settings.min_category_count, len(vocab.behaviors),
             len(asof["train"]), len(asof["validation"]), len(asof["test"]))
    examples = {}
    for split in SPLITS:
        examples[split] = encode_examples(events, asof[split], vocab, config)
        log.info("%s: %d examples", split, examples[split].num_rows)
    if examples["train"].num_rows == 0 or examples["test"].num_rows == 0:
        raise ValueError(f"no training or test examples (train {examples['train'].num_rows}, test "
                         f"{examples['test'].num_rows}): the window is too short or too sparse")
    stats = baseline_statistics(train_events, examples["train"], vocab)
    test_users = pa.array(sorted(set(examples["test"]["user_id"].to_pylist())), pa.string())
    lookback_start = asof["test"][0] - dt.timedelta(days=config.lookback_days)
    test_events = events.filter(
        pc.and_(pc.is_in(events["user_id"], value_set=test_users),
                pc.and_(pc.greater_equal(ts, pa.scalar(lookback_start, type=ts.type)),
                        pc.less(ts, pa.scalar(asof["test"][-1], type=ts.type)))))
    return {"vocab": vocab, "config": config, "asof": asof, "examples": examples, "stats": stats,
            "test_events": test_events}


def encode_step(settings: Settings, start: dt.date, end: dt.date, *, mlflow_run_id: str | None) -> dict[str, Any]:
    """Encode clean events of ``[start, end]`` into ``s3://<bucket>/features/<id>/`` and return
    ``{"dataset_uri", "examples": {split: n}, "categories", "asof_times": {split: n}}``.

    The folder holds ``<split>/part-NNNNN.parquet`` (:data:`EXAMPLE_SCHEMA`), ``vocab.json``,
    ``metadata.json``, ``baseline_stats.json`` and ``test_events/part-00000.parquet``. The folder
    is replaced whole on rerun. With ``mlflow_run_id`` the counts are logged to that run.
    """
    from pipelines.data import events as events_mod
    from pipelines.platform import storage

    events = events_mod.read_clean_events(settings, start, end)
    log.info("encoding %d clean events of %s..%s", events.num_rows, start, end)
    encoded = encode_events(events, settings)
    prefix = f"features/{dataset_id(settings, start, end, mlflow_run_id)}/"
    storage.delete_prefix(settings, prefix)
    for split in SPLITS:
        for i, shard in enumerate(_shards(encoded["examples"][split], 50_000)):
            storage.write_parquet(settings, f"{prefix}{split}/part-{i:05d}.parquet", shard)
    storage.write_parquet(settings, f"{prefix}test_events/part-00000.parquet",
                          encoded["test_events"].select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA))
    storage.put_json(settings, f"{prefix}vocab.json", encoded["vocab"].to_dict())
    storage.put_json(settings, f"{prefix}baseline_stats.json", encoded["stats"])
    counts = {split: encoded["examples"][split].num_rows for split in SPLITS}
    metadata = {
        "config": encoded["config"].to_dict(), "data_start": start.isoformat(), "data_end": end.isoformat(),
        "asof": {s: [t.isoformat() for t in ts] for s, ts in encoded["asof"].items()},
        "examples": counts, "n_categories": encoded["vocab"].n_categories, "hist_features": list(HIST_FEATURES),
    }
    storage.put_json(settings, f"{prefix}metadata.json", metadata)
    result = {"dataset_uri": storage.uri(settings, prefix), "examples": counts,
              "categories": len(encoded["vocab"].categories),
              "asof_times": {s: len(ts) for s, ts in encoded["asof"].items()}}
    if mlflow_run_id:
        import mlflow

        client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
        client.log_param(mlflow_run_id, "dataset_uri", result["dataset_uri"])
        for split, n in counts.items():
            client.log_metric(mlflow_run_id, f"data/{split}_examples", n)
        client.log_metric(mlflow_run_id, "data/categories", result["categories"])
    log.info("encoded dataset %s: %s", result["dataset_uri"], counts)
    return result


@dataclasses.dataclass(frozen=True)
class LocalDataset:
    """A dataset folder downloaded to local disk."""

    root: Path
    vocab: Vocab
    metadata: dict[str, Any]
    stats: dict[str, Any]

    def files(self, split: str) -> list[Path]:
        return sorted((self.root / split).glob("part-*.parquet"))

    @property
    def config(self) -> EncodingConfig:
        return EncodingConfig(**self.metadata["config"])


def download_dataset(settings: Settings, dataset_uri: str, dest: Path) -> LocalDataset:
    """Copy ``dataset_uri`` (``s3://bucket/features/<id>/``) to ``dest`` and open it."""
    from pipelines.platform import storage

    parsed = storage.S3Uri.parse(dataset_uri)
    if parsed.bucket != settings.bucket:
        settings = dataclasses.replace(settings, bucket=parsed.bucket)
    prefix = parsed.key if parsed.key.endswith("/") else parsed.key + "/"
    keys = storage.list_keys(settings, prefix)
    if not keys:
        raise FileNotFoundError(f"dataset {dataset_uri} holds no files")
    for key in keys:
        path = dest / key[len(prefix):]
        path.parent.mkdir(parents=True, exist_ok=True)
        storage.download_file(settings, key, str(path))
    return open_dataset(dest)


def open_dataset(root: Path) -> LocalDataset:
    """Open a local dataset folder written by :func:`write_local_dataset` or downloaded."""
    def read(name: str) -> Any:
        path = root / name
        if not path.exists():
            raise FileNotFoundError(f"dataset file {path} is missing")
        return json.loads(path.read_text())

    return LocalDataset(root, Vocab.from_dict(read("vocab.json")), read("metadata.json"), read("baseline_stats.json"))


def write_local_dataset(encoded: dict[str, Any], root: Path) -> LocalDataset:
    """Write the output of :func:`encode_events` to a local folder with the layout of the S3 one."""
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (root / split).mkdir(exist_ok=True)
        for i, shard in enumerate(_shards(encoded["examples"][split], 50_000)):
            pq.write_table(shard, root / split / f"part-{i:05d}.parquet")
    (root / "test_events").mkdir(exist_ok=True)
    pq.write_table(encoded["test_events"], root / "test_events" / "part-00000.parquet")
    (root / "vocab.json").write_text(json.dumps(encoded["vocab"].to_dict()))
    (root / "baseline_stats.json").write_text(json.dumps(encoded["stats"]))
    metadata = {"config": encoded["config"].to_dict(),
                "asof": {s: [t.isoformat() for t in ts] for s, ts in encoded["asof"].items()},
                "examples": {s: encoded["examples"][s].num_rows for s in SPLITS},
                "n_categories": encoded["vocab"].n_categories, "hist_features": list(HIST_FEATURES)}
    (root / "metadata.json").write_text(json.dumps(metadata))
    return open_dataset(root)


def read_split(dataset: LocalDataset, split: str) -> pa.Table:
    """All example rows of one split (small splits: validation, test)."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in dataset.files(split)]
    return pa.concat_tables(tables) if tables else EXAMPLE_SCHEMA.empty_table()


def _cmd_encode(args: argparse.Namespace, settings: Settings) -> int:
    result = encode_step(settings, dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end),
                         mlflow_run_id=args.mlflow_run_id)
    print(json.dumps(result, indent=2))
    return 0


def register_cli(subparsers: Any) -> None:
    """``python -m pipelines encode --start D --end D [--mlflow-run-id ID]``."""
    parser = subparsers.add_parser("encode", help="encode clean events into (user, as-of) examples in S3")
    parser.add_argument("--start", required=True, help="first event date YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="last event date YYYY-MM-DD")
    parser.add_argument("--mlflow-run-id", default=None)
    parser.set_defaults(func=_cmd_encode)
