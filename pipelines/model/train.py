"""Training: stream the example shards with ``tf.data``, fit the Keras model with early stopping on
validation NDCG, and log it to the MLflow run as a pyfunc model (the scoring contract).

:func:`fit_model` is the core (local dataset folder in, fitted model and timings out);
:func:`train_step` is the edge (S3 download, MLflow logging through :mod:`pipelines.platform.tracking`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
from keras import ops
from mlflow.models import infer_signature

from pipelines.config import Settings
from pipelines.contracts import MODEL_INPUT_COLUMNS
from pipelines.features.batch import Examples
from pipelines.features.dataset import Dataset
from pipelines.features.examples import N_HIST
from pipelines.model.metrics import ndcg_at
from pipelines.model.network import Predictor, build_model, configure_threads
from pipelines.model.pyfunc import (
    DEFAULT_TOP_N,
    InterestMigrationPyfunc,
    copy_package_source,
    pip_requirements,
    score_events,
    scoring_signature,
)
from pipelines.platform import tracking

log = logging.getLogger(__name__)

_READ_ROWS = 8192  # rows read from a shard at a time: the shuffle window
_STEPS_PER_EXECUTION = 8  # training steps per call into the compiled graph (less Python per step)
_VALIDATION_ROWS = 4096  # validation examples scored at a time by the early stopping
# Model/loss options measured on Ciao (docs/model.md, "Measurements"); train_step uses these.
LISTWISE_WEIGHT = 0.0  # listwise softmax term in the loss: 1.0 measured worse than BCE alone
RESIDUAL_BASE = True  # start the repeat path from the decayed-frequency score (wins the published gate: docs/experiments.md)
RECENCY_HALF_LIFE_DAYS = 0.0  # weight of a training example halves per this many days before the last as-of (0: equal)


def iter_batches(files: list[Path], n_categories: int, seq_len: int, batch_size: int, *, shuffle: bool,
                 seed: int, weight_of: Callable[[np.ndarray], np.ndarray] | None = None
                 ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray] | tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
    """(sparse inputs, labels) batches from Parquet shards, read ``_READ_ROWS`` rows at a time
    (bounded memory). With ``shuffle`` the shard order and the rows of each read are permuted, the
    read is cut into batches of examples with similar sequence lengths (each batch keeps only the
    columns its longest sequence needs: about half the recurrent steps on Ciao) and the batches
    are yielded in random order. ``weight_of`` (as-of times in microseconds -> weights) adds each
    example's weight as a third element."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files)) if shuffle else np.arange(len(files))
    for i in order:
        for record_batch in pq.ParquetFile(files[i]).iter_batches(batch_size=_READ_ROWS):
            examples = Examples.from_table(record_batch)
            weights = None
            if weight_of is not None:
                asof = record_batch.column("asof").cast(pa.int64()).to_numpy(zero_copy_only=False)
                weights = weight_of(asof).astype(np.float32)
            rows = np.arange(examples.n)
            if shuffle:
                rows = rng.permutation(examples.n)
                rows = rows[np.argsort(np.diff(examples.seq_offsets)[rows], kind="stable")]
            batches = [rows[lo:lo + batch_size] for lo in range(0, examples.n, batch_size)]
            for b in (rng.permutation(len(batches)) if shuffle else range(len(batches))):
                batch = examples.take(batches[b])
                pair = (batch.model_inputs(seq_len, trim=shuffle), batch.label_matrix(n_categories))
                yield pair if weights is None else (*pair, weights[batches[b]])


def make_tf_dataset(files: list[Path], n_categories: int, seq_len: int, batch_size: int, *, shuffle: bool,
                    seed: int, weight_of: Callable[[np.ndarray], np.ndarray] | None = None) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` streaming :func:`iter_batches` (a new shuffle seed each epoch)."""
    epoch = {"n": 0}

    def generator() -> Iterator[Any]:
        epoch["n"] += 1
        yield from iter_batches(files, n_categories, seq_len, batch_size, shuffle=shuffle, seed=seed + epoch["n"],
                                weight_of=weight_of)

    spec = {name: tf.TensorSpec((None, None), tf.int32) for name in ("seq_cat", "seq_beh", "seq_dow", "seq_hour")}
    spec["seq_age"] = tf.TensorSpec((None, None), tf.float32)
    spec["hist_cat"] = tf.TensorSpec((None, None), tf.int32)
    spec["hist_feat"] = tf.TensorSpec((None, None, N_HIST), tf.float32)
    signature: tuple[Any, ...] = (spec, tf.TensorSpec((None, n_categories), tf.float32))
    if weight_of is not None:
        signature = (*signature, tf.TensorSpec((None,), tf.float32))
    return tf.data.Dataset.from_generator(generator, output_signature=signature).prefetch(2)


@dataclasses.dataclass
class FitResult:
    model: keras.Model
    best_epoch: int
    epochs_run: int
    best_val_ndcg: float
    train_seconds: float
    examples_per_second: float
    train_examples: int
    history: dict[str, list[float]]


def stops_after(epoch: int, wait: int, patience: int, min_epochs: int) -> bool:
    """Whether early stopping ends training after 1-based ``epoch``, ``wait`` epochs since the best:
    ``patience`` epochs without a new best, and never before ``min_epochs``. On Ciao (rolling
    origin, block 3; docs/experiments.md M8) validation NDCG@5 peaked at epoch 1, dipped for three
    epochs and rose above that peak at epochs 6-7: patience alone stopped at epoch 4."""
    return wait >= patience and epoch >= min_epochs


class ValidationNdcgStopping(keras.callbacks.Callback):
    """Early stopping on validation NDCG@k (:func:`stops_after`); restores the best weights at the
    end. The validation examples are scored ``_VALIDATION_ROWS`` at a time, so memory stays bounded
    by that chunk (not by validation examples x categories)."""

    def __init__(self, val: Examples, n_categories: int, seq_len: int, k: int, patience: int,
                 min_epochs: int = 1) -> None:
        super().__init__()
        self.val, self.n_categories, self.seq_len = val, n_categories, seq_len
        self.k, self.patience, self.min_epochs = k, patience, min_epochs
        self.best, self.best_epoch, self.wait, self.best_weights = -1.0, 0, 0, None
        self.values: list[float] = []
        self.predictor: Predictor | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.predictor = Predictor(self.model)  # traced once; it reads the live weights every epoch

    def validation_ndcg(self) -> float:
        predictor = self.predictor or Predictor(self.model)
        total, count = 0.0, 0
        for lo in range(0, self.val.n, _VALIDATION_ROWS):
            chunk = self.val.take(np.arange(lo, min(lo + _VALIDATION_ROWS, self.val.n)))
            values = ndcg_at(predictor(chunk.model_inputs(self.seq_len)), chunk.label_matrix(self.n_categories), self.k)
            total += float(np.nansum(values))
            count += int(np.isfinite(values).sum())
        return total / count if count else float("nan")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        k = self.k
        value = self.validation_ndcg()
        self.values.append(value)
        if logs is not None:
            logs[f"val_ndcg_at_{k}"] = value
        log.info("epoch %d: val ndcg@%d %.4f (best %.4f)", epoch + 1, k, value, self.best)
        if value > self.best:
            self.best, self.best_epoch, self.wait = value, epoch + 1, 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if stops_after(epoch + 1, self.wait, self.patience, self.min_epochs):
                self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def ranking_loss(listwise_weight: float) -> Any:
    """Binary cross-entropy per category (keeps the scores calibrated probabilities) plus
    ``listwise_weight`` x a listwise softmax cross-entropy over the categories (target = the
    label set, normalised), which rewards putting the touched categories at the top of the list.
    The model outputs probabilities; the logits are recovered as log(p) - log(1 - p)."""
    bce = keras.losses.BinaryCrossentropy()
    if listwise_weight <= 0:
        return bce
    eps = 1e-6

    def loss(y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(y_true, "float32")
        p = ops.clip(ops.cast(y_pred, "float32"), eps, 1.0 - eps)
        logits = ops.log(p) - ops.log(1.0 - p)
        # padding and OOV never win (they score 0 at prediction time): keep them out of the softmax
        reserved = ops.cast(ops.arange(ops.shape(logits)[-1]) < 2, "float32")[None, :]
        logits = logits - reserved * 1e4
        # ... and out of the target: an OOV label would otherwise cost 1e4 x its share
        listed = y_true * (1.0 - reserved)
        target = listed / ops.maximum(ops.sum(listed, axis=-1, keepdims=True), 1.0)
        listwise = -ops.sum(target * ops.log_softmax(logits, axis=-1), axis=-1)
        return bce(y_true, y_pred) + listwise_weight * ops.mean(listwise)

    return loss


def recency_weights(last_asof: str, half_life_days: float) -> Callable[[np.ndarray], np.ndarray]:
    """As-of times (microseconds) -> example weights: 1 at ``last_asof`` (ISO-8601), halving per
    ``half_life_days`` before it."""
    last_us = dt.datetime.fromisoformat(last_asof).timestamp() * 1e6

    def weight_of(asof_us: np.ndarray) -> np.ndarray:
        return np.exp2(-(last_us - asof_us.astype(np.float64)) / (half_life_days * 86_400e6))
    return weight_of


def fit_model(dataset: Dataset, settings: Settings, *, use_repeat: bool = True,
              listwise_weight: float = LISTWISE_WEIGHT, residual_base: bool = RESIDUAL_BASE,
              recency_half_life_days: float = RECENCY_HALF_LIFE_DAYS) -> FitResult:
    """Fit the model on the dataset's training shards, early-stopping on validation NDCG@k (first
    of ``settings.eval_ks``), seeded by ``settings.seed``. ``listwise_weight`` adds a listwise
    softmax loss to the BCE (:func:`ranking_loss`); ``residual_base`` starts the repeat path from
    the decayed-frequency score (:class:`pipelines.model.network.MigrationScorer`)."""
    configure_threads()
    keras.utils.set_random_seed(settings.seed)
    vocab, config = dataset.vocab, dataset.config
    n_train = dataset.n_examples("train")
    if n_train == 0:
        raise ValueError(f"dataset {dataset.root} has no training examples")
    val = dataset.read_split("validation")
    if val.num_rows == 0:
        raise ValueError(f"dataset {dataset.root} has no validation examples (needed for early stopping)")
    model = build_model(vocab.n_categories, vocab.n_behaviors, config.seq_len, embed_dim=settings.embed_dim,
                        encoder=settings.sequence_encoder, age_scale=config.horizon_days, use_repeat=use_repeat,
                        residual_base=residual_base)
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=ranking_loss(listwise_weight),
                  steps_per_execution=_STEPS_PER_EXECUTION)
    weight_of = (recency_weights(dataset.asof_times("train")[-1], recency_half_life_days)
                 if recency_half_life_days > 0 else None)
    train_ds = make_tf_dataset(dataset.files("train"), vocab.n_categories, config.seq_len, settings.batch_size,
                               shuffle=True, seed=settings.seed, weight_of=weight_of)
    stopper = ValidationNdcgStopping(Examples.from_table(val), vocab.n_categories, config.seq_len, settings.eval_ks[0],
                                     settings.patience, settings.min_epochs)
    log.info("training on %d examples, %d categories, encoder %s, up to %d epochs", n_train, vocab.n_categories,
             settings.sequence_encoder, settings.epochs)
    started = time.perf_counter()
    # shuffling happens in the stream (shard order + rows of each read); Keras cannot shuffle a tf.data set
    history = model.fit(train_ds, epochs=settings.epochs, callbacks=[stopper], verbose=0, shuffle=False)
    seconds = time.perf_counter() - started
    epochs_run = len(history.history.get("loss", []))
    return FitResult(model=model, best_epoch=stopper.best_epoch, epochs_run=epochs_run, best_val_ndcg=stopper.best,
                     train_seconds=seconds, examples_per_second=n_train * epochs_run / max(seconds, 1e-9),
                     train_examples=n_train, history={k: [float(x) for x in v] for k, v in history.history.items()})


def save_model_artifacts(result: FitResult, dataset: Dataset, out_dir: Path) -> dict[str, str]:
    """Write ``model.keras``, ``vocab.json``, ``encoding.json`` and (when the dataset fitted one)
    ``activity.json``; returns the pyfunc artifacts map."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"keras_model": out_dir / "model.keras", "vocab": out_dir / "vocab.json",
             "encoding": out_dir / "encoding.json"}
    result.model.save(paths["keras_model"])
    paths["vocab"].write_text(json.dumps(dataset.vocab.to_dict()))
    paths["encoding"].write_text(json.dumps(dataset.config.to_dict()))
    if dataset.stats.get("activity"):  # P(active): scoring publishes P(active) x P(c | active)
        paths["activity"] = out_dir / "activity.json"
        paths["activity"].write_text(json.dumps(dataset.stats["activity"]))
    return {k: str(v) for k, v in paths.items()}


def input_example(dataset: Dataset, max_rows: int = 20) -> tuple[pd.DataFrame, str]:
    """A few raw test events (scoring-contract input) and an as-of time for them (the last test one)."""
    events = dataset.read_test_events()[list(MODEL_INPUT_COLUMNS)].head(max_rows).reset_index(drop=True)
    return events, dataset.asof_times("test")[-1]


def log_pyfunc(settings: Settings, result: FitResult, dataset: Dataset, workdir: Path, run_id: str) -> str:
    """Log the fitted model as an MLflow pyfunc at artifact path ``model`` of ``run_id`` (by id, no
    active run), with signature, input example, the Keras model + vocabularies as artifacts and the
    ``pipelines`` source as code, so it loads where this project is not installed; returns its URI."""
    artifacts = save_model_artifacts(result, dataset, workdir / "artifacts")
    code = copy_package_source(workdir / "code")
    events, as_of = input_example(dataset)
    params = {"as_of": as_of, "top_n": DEFAULT_TOP_N}
    sample_out = score_events(result.model, dataset.vocab, dataset.config, events, as_of, DEFAULT_TOP_N)
    signature = scoring_signature(infer_signature(events, sample_out, params=params).outputs)
    uri = tracking.log_model(settings, run_id, mlflow.pyfunc, name="model", python_model=InterestMigrationPyfunc(),
                             artifacts=artifacts, signature=signature, input_example=(events, params),
                             pip_requirements=pip_requirements(), code_paths=[str(code)])
    log.info("logged pyfunc model %s", uri)
    return uri


def train_step(settings: Settings, dataset_uri: str, *, mlflow_run_id: str) -> dict[str, Any]:
    """Download ``dataset_uri``, fit, log the pyfunc model at ``runs:/<run>/model`` plus training
    params/metrics; returns ``{"model_uri", "logged_model_uri", "best_epoch", "train_seconds",
    "examples_per_second", "val_ndcg"}``."""
    tracking.run_exists(settings, mlflow_run_id)  # before the training, not after it
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
        dataset = Dataset.download(settings, dataset_uri, Path(tmp) / "dataset")
        result = fit_model(dataset, settings)
        logged = log_pyfunc(settings, result, dataset, Path(tmp), mlflow_run_id)
    k = settings.eval_ks[0]
    tracking.log_params(settings, mlflow_run_id, {
        "model.embed_dim": settings.embed_dim, "model.encoder": settings.sequence_encoder,
        "model.learning_rate": settings.learning_rate, "model.batch_size": settings.batch_size,
        "model.max_epochs": settings.epochs, "model.patience": settings.patience,
        "model.min_epochs": settings.min_epochs, "model.seed": settings.seed,
        "data.horizon_days": settings.horizon_days, "data.lookback_days": settings.lookback_days,
        "data.seq_len": settings.seq_len, "data.min_category_count": settings.min_category_count,
        "model.listwise_weight": LISTWISE_WEIGHT, "model.residual_base": RESIDUAL_BASE})
    tracking.log_metrics(settings, mlflow_run_id, {
        "train/best_epoch": result.best_epoch, "train/epochs_run": result.epochs_run,
        "train/seconds": result.train_seconds, "train/examples_per_second": result.examples_per_second,
        f"train/val_ndcg_at_{k}": result.best_val_ndcg})
    for step, loss in enumerate(result.history.get("loss", [])):
        tracking.log_metrics(settings, mlflow_run_id, {"train/loss": loss}, step=step)
    return {"model_uri": f"runs:/{mlflow_run_id}/model", "logged_model_uri": logged,
            "best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
            "examples_per_second": result.examples_per_second, "val_ndcg": result.best_val_ndcg}
