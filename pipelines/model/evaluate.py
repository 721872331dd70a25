"""Evaluation at the edge: the model (through its pyfunc contract) and every baseline on the held-out
as-of times of a dataset, logged to the MLflow run (evaluation protocol: docs/design.md).

:func:`evaluate_step` and :func:`evaluate_model_uri` score a pyfunc model through its public
contract on the dataset's raw test events, so a champion with another vocabulary is measured on
the same truth. The metrics themselves are :mod:`pipelines.model.metrics`; the figures are
:mod:`pipelines.model.plots`.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.config import Settings
from pipelines.features.batch import to_model_inputs
from pipelines.features.dataset import Dataset
from pipelines.features.vocab import RESERVED
from pipelines.model import published
from pipelines.model.baselines import DECAY_FEATURES, fit_baselines, score_all, score_decayed_frequency
from pipelines.model.metrics import (
    EMERGING_KS,
    comparison_table,
    evaluate_methods,
    example_metrics,
    pooled_auc,
    summarize,
)
from pipelines.model.plots import evaluation_figures
from pipelines.platform import tracking

log = logging.getLogger(__name__)


def score_pyfunc_on_examples(pyfunc: Any, events: pd.DataFrame, examples: pa.Table, category_ids: np.ndarray,
                             ) -> np.ndarray:
    """Scores [N, V] (dataset vocabulary) of a pyfunc model for each example row (user, as-of),
    by calling the public scoring contract once per as-of time with the users' raw events."""
    index = {c: i for i, c in enumerate(category_ids) if i >= RESERVED}
    users = np.asarray(examples["user_id"].to_pylist(), dtype=object)
    asofs = examples["asof"].to_pandas()
    scores = np.zeros((examples.num_rows, len(category_ids)))
    for asof in sorted(asofs.unique()):
        rows = np.flatnonzero((asofs == asof).to_numpy())
        wanted = set(users[rows])
        frame = events[events["user_id"].isin(wanted) & (events["ts"] < asof)]
        pred = pyfunc.predict(frame, params={"as_of": pd.Timestamp(asof).isoformat(), "top_n": len(category_ids)})
        by_user = {u: (c, s) for u, c, s in zip(pred["user_id"], pred["categories"], pred["scores"], strict=True)}
        for r in rows:
            cats, vals = by_user.get(users[r], ([], []))
            for c, v in zip(cats, vals, strict=True):
                j = index.get(str(c))
                if j is not None:
                    scores[r, j] = v
    return scores


def choose_decay_feature(dataset: Dataset, ks: tuple[int, ...]) -> str:
    """The decayed-frequency half-life that is best (NDCG@first k) on the validation split: the
    baseline gets the same tuning chance the model gets."""
    val = dataset.read_split("validation")
    if val.num_rows == 0:
        return "decay_mid"
    inputs, labels, known = to_model_inputs(val, dataset.vocab.n_categories, dataset.config.seq_len)
    best, best_value = "decay_mid", -1.0
    for name in DECAY_FEATURES:
        models = fit_baselines(dataset.stats, dataset.vocab.n_categories, name)
        value = float(np.nanmean(example_metrics(score_decayed_frequency(models, inputs), labels, known,
                                                 (ks[0],))[f"ndcg_at_{ks[0]}"]))
        if value > best_value:
            best, best_value = name, value
    return best


def evaluate_dataset(dataset: Dataset, model_scores: np.ndarray | None, ks: tuple[int, ...], *,
                     examples: pa.Table | None = None, seed: int = 0) -> dict[str, Any]:
    """Metrics of ``model_scores`` (None: baselines only) and every baseline on the test split
    (or on ``examples``, rows of it).

    Returns ``{"summaries", "per_example", "labels", "known", "inputs", "examples", "scores"}``.
    """
    examples = dataset.read_split("test") if examples is None else examples
    inputs, labels, known = to_model_inputs(examples, dataset.vocab.n_categories, dataset.config.seq_len)
    models = fit_baselines(dataset.stats, dataset.vocab.n_categories, choose_decay_feature(dataset, ks))
    scores: dict[str, np.ndarray] = {} if model_scores is None else {"model": model_scores}
    scores.update(score_all(models, inputs))
    summaries, per = evaluate_methods(scores, labels, known, ks, seed)
    summaries.setdefault("decayed_frequency", {})["half_life_horizons"] = models.decay_half_life_horizons
    return {"summaries": summaries, "per_example": per, "labels": labels, "known": known, "inputs": inputs,
            "examples": examples, "scores": scores}


def flatten_metrics(summaries: dict[str, dict[str, float]], *, model_prefix: str = "model/") -> dict[str, float]:
    """``model/<metric>`` and ``baseline/<name>/<metric>`` keys, finite values only."""
    out = {}
    for name, summary in summaries.items():
        prefix = model_prefix if name == "model" else f"baseline/{name}/"
        for metric, value in summary.items():
            if value is not None and np.isfinite(value):
                out[prefix + metric] = float(value)
    return out


def evaluate_published(settings: Settings, dataset: Dataset, model_uri: str) -> dict[str, dict[str, Any]]:
    """The published columns of ``model_uri`` and of every baseline at the dataset's test as-of
    times, judged by the outcomes scorer (:mod:`pipelines.model.published`): summaries by name."""
    from pipelines.serving.scoring import load_scorer

    asofs = [dt.datetime.fromisoformat(t) for t in dataset.asof_times("test")]
    return published.published_summaries(settings, load_scorer(settings, model_uri), dataset.read_test_event_table(),
                                         asofs)


def evaluate_model_uri(settings: Settings, dataset_uri: str, model_uri: str) -> dict[str, float]:
    """Metrics (keys without prefix, e.g. ``ndcg_at_5``, and the published columns' metrics
    ``published_ndcg_at_5`` ...) of any pyfunc model URI on the test split of ``dataset_uri``,
    through the public scoring contract."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
        dataset = Dataset.download(settings, dataset_uri, Path(tmp) / "dataset")
        examples, events = dataset.read_split("test"), dataset.read_test_events()
        pyfunc = tracking.load_pyfunc(settings, model_uri)
        scores = score_pyfunc_on_examples(pyfunc, events, examples, dataset.vocab.category_ids())
        _, labels, known = to_model_inputs(examples, dataset.vocab.n_categories, dataset.config.seq_len)
        per = example_metrics(scores, labels, known, tuple(settings.eval_ks), probabilities=True)
        summary = summarize(per)
        summary["auc"] = pooled_auc(scores, labels, settings.seed)
        model_published = evaluate_published(settings, dataset, model_uri)["model"]
        summary.update({published.PREFIX + k: v for k, v in model_published.items() if isinstance(v, int | float)})
    return {k: v for k, v in summary.items() if np.isfinite(v)}


def evaluate_step(settings: Settings, dataset_uri: str, model_uri: str, *, mlflow_run_id: str) -> dict[str, float]:
    """Evaluate the model (through its pyfunc contract) and every baseline on the test split; log
    ``model/...`` and ``baseline/<name>/...`` metrics, the comparison table and the plots to the
    run; return the logged metrics."""
    ks = tuple(settings.eval_ks)
    tracking.run_exists(settings, mlflow_run_id)  # before the evaluation, not after it
    mlflow_client = tracking.client(settings)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
        dataset = Dataset.download(settings, dataset_uri, Path(tmp) / "dataset")
        examples, events = dataset.read_split("test"), dataset.read_test_events()
        log.info("evaluating %s on %d test examples", model_uri, examples.num_rows)
        pyfunc = tracking.load_pyfunc(settings, model_uri)
        model_scores = score_pyfunc_on_examples(pyfunc, events, examples, dataset.vocab.category_ids())
        result = evaluate_dataset(dataset, model_scores, ks, examples=examples, seed=settings.seed)
        metrics = flatten_metrics(result["summaries"])
        published_result = evaluate_published(settings, dataset, model_uri)
        metrics.update(published.flat_metrics(published_result))
        metrics["eval/test_examples"] = float(examples.num_rows)
        metrics["eval/test_users"] = float(len(set(examples["user_id"].to_pylist())))
        table = comparison_table(result["summaries"], ks)
        out = Path(tmp) / "eval"
        out.mkdir()
        table.to_csv(out / "comparison.csv")
        (out / "comparison.md").write_text(_markdown(table))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        (out / "published.json").write_text(json.dumps(published_result, indent=2, sort_keys=True, default=str))
        mlflow_client.log_artifacts(mlflow_run_id, str(out), "evaluation")
        mlflow_client.log_table(mlflow_run_id, table.reset_index(), "evaluation/comparison_table.json")
        for name, fig in evaluation_figures(result, dataset.vocab, ks).items():
            mlflow_client.log_figure(mlflow_run_id, fig, f"plots/{name}.png")
    tracking.log_params(settings, mlflow_run_id, {"eval.ks": ",".join(str(k) for k in ks),
                                                  "eval.emerging_ks": ",".join(str(k) for k in EMERGING_KS),
                                                  "eval.model_uri": model_uri})
    tracking.log_metrics(settings, mlflow_run_id, metrics)
    log.info("model ndcg_at_%d %.4f, decayed_frequency %.4f", ks[0], metrics.get(f"model/ndcg_at_{ks[0]}", np.nan),
             metrics.get(f"baseline/decayed_frequency/ndcg_at_{ks[0]}", np.nan))
    return metrics


def _markdown(table: pd.DataFrame) -> str:
    """The comparison table as Markdown (plain text when the optional ``tabulate`` is missing)."""
    if importlib.util.find_spec("tabulate") is not None:
        return table.to_markdown(floatfmt=".4f")
    return table.to_string(float_format=lambda x: f"{x:.4f}")
