"""Encoding a window of clean events into a dataset of (user, as-of time) examples.

:func:`encode_events` is pure: it plans the as-of times (:mod:`~pipelines.features.asof`), builds
the vocabulary from the training window (:mod:`~pipelines.features.vocab`), encodes every split
(:mod:`~pipelines.features.examples`) and collects the baselines' statistics and the raw events of
the test users. :func:`encode_step` is the storage/MLflow edge: clean events in, the dataset
folder ``features/<id>/`` out (its layout is :class:`~pipelines.features.dataset.Dataset`'s).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.contracts import EVENT_SCHEMA
from pipelines.data.events import read_clean_events
from pipelines.features.asof import SPLITS, plan_asof_times
from pipelines.features.batch import EventIndex, encode, index_events
from pipelines.features.dataset import Dataset, EncodedData
from pipelines.features.examples import EncodingConfig
from pipelines.features.vocab import Vocab, build_vocab
from pipelines.model.activity import fit_activity
from pipelines.platform import tracking
from pipelines.platform.dates import floor_day

log = logging.getLogger(__name__)


_RUN_ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")


def dataset_id(settings: Settings, start: dt.date, end: dt.date, mlflow_run_id: str | None) -> str:
    """The folder name under ``features/``: the MLflow run id, or a hash of window and settings.
    Raises ValueError for a run id that is not one (it becomes a key segment: ``../../raw`` is refused)."""
    if mlflow_run_id:
        if not _RUN_ID.fullmatch(mlflow_run_id):
            raise ValueError(f"--mlflow-run-id {mlflow_run_id!r} is not an MLflow run id (letters, digits, '_', '-')")
        return mlflow_run_id
    key = json.dumps([start.isoformat(), end.isoformat(), settings.describe()], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def encode_events(events: pa.Table, settings: Settings, *, data_end: dt.datetime | None = None) -> EncodedData:
    """Plan as-of times, build the vocabulary from the training window and encode every split.

    Pure (no storage): used by :func:`encode_step` and by the benchmark. ``data_end`` is the first
    instant with no data (default: the UTC midnight after the last event); the last test as-of time
    leaves one horizon before it. Raises ValueError when there are no events, or too few for one
    training and one test example.
    """
    if events.num_rows == 0:
        raise ValueError("no clean events in the window: nothing to encode")
    config = EncodingConfig.from_settings(settings)
    ts = events["ts"]
    first = pc.min(ts).as_py()
    last = pc.max(ts).as_py()
    if data_end is None:
        data_end = floor_day(last) + dt.timedelta(days=1)
    asof = plan_asof_times(first, data_end, horizon_days=config.horizon_days,
                           train_step_days=settings.asof_step_days, eval_step_days=settings.eval_asof_step_days,
                           validation_count=settings.validation_asof_count, test_count=settings.test_asof_count)
    train_end = pa.scalar(asof["validation"][0], type=EVENT_SCHEMA.field("ts").type)
    train_events = events.filter(pc.less(ts, train_end))
    vocab = build_vocab(train_events["category_id"].to_numpy(zero_copy_only=False), settings.min_category_count,
                        train_events["behavior"].unique().to_pylist())  # both from the training window only
    log.info("vocabulary: %d categories (min count %d), %d behaviours; as-of times train %d, validation %d, "
             "test %d", len(vocab.categories), settings.min_category_count, len(vocab.behaviors),
             len(asof["train"]), len(asof["validation"]), len(asof["test"]))
    index = index_events(events, vocab)
    examples = {}
    for split in SPLITS:
        examples[split] = encode(index, asof[split], vocab, config).to_table(index.users)
        log.info("%s: %d examples", split, examples[split].num_rows)
    if examples["train"].num_rows == 0 or examples["test"].num_rows == 0:
        raise ValueError(f"no training or test examples (train {examples['train'].num_rows}, test "
                         f"{examples['test'].num_rows}): the window is too short or too sparse")
    stats = baseline_statistics(index_events(train_events, vocab), examples["train"], vocab)
    # P(active in the horizon) of every look-back user at the training as-of times (the network
    # only sees users who act): it makes the published probabilities unconditional.
    activity = fit_activity(index, asof["train"], lookback_days=config.lookback_days, horizon_days=config.horizon_days)
    stats["activity"] = activity.to_dict() if activity is not None else None
    # The test period's events of every user: each test as-of time's look-back (the users scoring
    # would score, with or without an event in the horizon) and its horizon (what they did next),
    # so the evaluation can judge the published columns (pipelines/model/published.py).
    lookback_start = asof["test"][0] - dt.timedelta(days=config.lookback_days)
    test_end = asof["test"][-1] + dt.timedelta(days=config.horizon_days)
    test_events = events.filter(pc.and_(pc.greater_equal(ts, pa.scalar(lookback_start, type=ts.type)),
                                        pc.less(ts, pa.scalar(test_end, type=ts.type))))
    return EncodedData(vocab=vocab, config=config, asof=asof, examples=examples, stats=stats,
                       test_events=test_events)


def baseline_statistics(index: EventIndex, train_examples: pa.Table, vocab: Vocab) -> dict[str, Any]:
    """Training-window statistics the baselines need: label rate per category over the training
    examples (popularity) and first-order category transition counts between consecutive events
    of each user (Markov), as sparse ``[from, to, count]`` triples. ``index`` holds the training
    window's events."""
    v = vocab.n_categories
    labels = train_examples["label"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    label_counts = np.bincount(labels, minlength=v)
    same_user = np.ones(index.n_events, bool)
    same_user[index.bounds[:-1]] = False  # the first event of each user has no predecessor
    keep = same_user[1:]
    pairs = index.cat[:-1][keep].astype(np.int64) * v + index.cat[1:][keep]
    uniq, counts = np.unique(pairs, return_counts=True)
    return {
        "n_train_examples": int(train_examples.num_rows),
        "label_counts": label_counts.astype(int).tolist(),
        "transitions": np.stack([uniq // v, uniq % v, counts], axis=1).astype(int).tolist(),
    }


def encode_step(settings: Settings, start: dt.date, end: dt.date, *, mlflow_run_id: str | None) -> dict[str, Any]:
    """Encode clean events of ``[start, end]`` into ``s3://<bucket>/features/<id>/`` and return
    ``{"dataset_uri", "examples": {split: n}, "categories", "asof_times": {split: n}}``.

    The folder (see :class:`~pipelines.features.dataset.Dataset`) is replaced whole on rerun.
    With ``mlflow_run_id`` the dataset URI and the counts are logged to that run. Raises
    ValueError when the window holds no clean events or is too short for the as-of plan.
    """
    if mlflow_run_id:  # an unknown run fails here, before anything is encoded or uploaded
        dataset_id(settings, start, end, mlflow_run_id)
        tracking.run_exists(settings, mlflow_run_id)
    events = read_clean_events(settings, start, end)
    log.info("encoding %d clean events of %s..%s", events.num_rows, start, end)
    encoded = encode_events(events, settings)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
        dataset = Dataset.write(encoded, Path(tmp) / "dataset", window=(start, end))
        uri = dataset.upload(settings, dataset_id(settings, start, end, mlflow_run_id))
    counts = encoded.counts()
    result = {"dataset_uri": uri, "examples": counts, "categories": len(encoded.vocab.categories),
              "asof_times": {s: len(ts) for s, ts in encoded.asof.items()}}
    if mlflow_run_id:
        tracking.log_params(settings, mlflow_run_id, {"dataset_uri": uri})
        tracking.log_metrics(settings, mlflow_run_id, {**{f"data/{split}_examples": n for split, n in counts.items()},
                                                       "data/categories": result["categories"]})
    log.info("encoded dataset %s: %s", uri, counts)
    return result
