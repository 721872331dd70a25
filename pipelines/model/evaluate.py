"""Evaluation of the model and every baseline on the held-out as-of times (DESIGN.md protocol).

Pure part: :func:`example_metrics` turns a score matrix [N, V], multi-hot labels and the
known-category mask into per-example metric arrays; :func:`summarize` averages them;
:func:`bootstrap_ci` gives confidence intervals by resampling users. Columns 0 (padding) and 1
(OOV) are never ranked, but an OOV truth category still counts in the recall denominators.

Metric names (``<metric>_at_<k>``): precision, recall, f1, ndcg, hitrate over the whole list;
``repeat_recall`` and ``list_explore_recall`` (recall of the truth categories the user has / has
not touched before, in the whole list); ``explore_recall`` of the *emerging list* (the ranking with
the user's known categories removed); ``auc`` (pooled), ``gauc`` (mean per-user AUC), ``brier``,
``migration_auc`` (does P(any new category) separate users who move to a new category).

Edge: :func:`evaluate_step` and :func:`evaluate_model_uri` score a pyfunc model through its
public contract on the dataset's raw test events, so a champion with another vocabulary is
measured on the same truth.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.config import Settings
from pipelines.features.encoding import RESERVED

log = logging.getLogger(__name__)

LIST_METRICS = ("precision", "recall", "f1", "ndcg", "hitrate", "repeat_recall", "list_explore_recall")
EMERGING_KS = (3, 5, 10)
PROBABILISTIC = ("model", "popularity")  # methods whose scores are probabilities (Brier, migration AUC)
_AUC_MAX_PAIRS = 2_000_000


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    ranked = scores.copy()
    ranked[:, :RESERVED] = -np.inf
    k = min(k, ranked.shape[1] - RESERVED)
    part = np.argpartition(-ranked, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(ranked, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _row_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    s, y = scores[:, RESERVED:], labels[:, RESERVED:] > 0
    ranks = rankdata(s, axis=1)
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def example_metrics(scores: np.ndarray, labels: np.ndarray, known: np.ndarray, ks: tuple[int, ...],
                    *, emerging_ks: tuple[int, ...] = EMERGING_KS, probabilities: bool = False) -> dict[str, np.ndarray]:
    """Per-example metrics of one method. ``scores``/``labels``/``known`` are [N, V]; returns
    arrays of length N (NaN where a metric is undefined for the example, e.g. explore recall of
    a user with no new category). With ``probabilities`` also ``brier`` and ``migration_score``.
    """
    if scores.shape != labels.shape or labels.shape != known.shape:
        raise ValueError(f"shapes differ: scores {scores.shape}, labels {labels.shape}, known {known.shape}")
    scores = np.asarray(scores, np.float64)
    truth = labels > 0
    is_known = known > 0
    new = truth & ~is_known
    new[:, :RESERVED] = truth[:, :RESERVED] & False
    repeat = truth & is_known
    n_true = truth.sum(axis=1)
    n_new = new.sum(axis=1)
    n_repeat = repeat.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    rows = np.arange(len(scores))[:, None]
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    top = _topk(scores, max(ks))
    hit = truth[rows, top]
    hit_new = new[rows, top]
    hit_repeat = repeat[rows, top]
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in ks:
            hits = hit[:, :k].sum(axis=1)
            out[f"precision_at_{k}"] = hits / k
            out[f"recall_at_{k}"] = hits / np.maximum(n_true, 1)
            p, r = out[f"precision_at_{k}"], out[f"recall_at_{k}"]
            out[f"f1_at_{k}"] = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
            depth = min(k, hit.shape[1])  # fewer categories than k: the list is all of them
            dcg = (hit[:, :depth] * discounts[:depth]).sum(axis=1)
            ideal = np.cumsum(discounts[:depth])[np.clip(np.minimum(n_true, depth) - 1, 0, depth - 1)]
            out[f"ndcg_at_{k}"] = np.where(n_true > 0, dcg / ideal, np.nan)
            out[f"hitrate_at_{k}"] = (hits > 0).astype(np.float64)
            out[f"repeat_recall_at_{k}"] = np.where(n_repeat > 0, hit_repeat[:, :k].sum(axis=1) / n_repeat, np.nan)
            out[f"list_explore_recall_at_{k}"] = np.where(n_new > 0, hit_new[:, :k].sum(axis=1) / n_new, np.nan)
        emerging = np.where(is_known, -np.inf, scores)
        top_e = _topk(emerging, max(emerging_ks))
        hit_e = new[rows, top_e]
        for k in emerging_ks:
            out[f"explore_recall_at_{k}"] = np.where(n_new > 0, hit_e[:, :k].sum(axis=1) / n_new, np.nan)
    out["gauc"] = _row_auc(scores, labels)
    out["has_new"] = (n_new > 0).astype(np.float64)
    if probabilities:
        p = np.clip(scores[:, RESERVED:], 0.0, 1.0)
        out["brier"] = ((p - truth[:, RESERVED:]) ** 2).mean(axis=1)
        unknown = ~is_known[:, RESERVED:]
        out["migration_score"] = 1.0 - np.exp(np.sum(np.where(unknown, np.log1p(-np.clip(p, 0, 1 - 1e-7)), 0.0),
                                                     axis=1))
    return out


def pooled_auc(scores: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """AUC over every (example, category) pair (subsampled above 2M pairs); NaN if one class."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, np.float64)[:, RESERVED:].ravel()
    y = (labels[:, RESERVED:] > 0).ravel()
    if len(s) > _AUC_MAX_PAIRS:
        pick = np.random.default_rng(seed).choice(len(s), _AUC_MAX_PAIRS, replace=False)
        s, y = s[pick], y[pick]
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def migration_auc(per_example: dict[str, np.ndarray]) -> float:
    """AUC of the migration score (P(any new category)) for "the user touches a new category"."""
    from sklearn.metrics import roc_auc_score

    if "migration_score" not in per_example:
        return float("nan")
    y = per_example["has_new"] > 0
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, per_example["migration_score"]))


def summarize(per_example: dict[str, np.ndarray]) -> dict[str, float]:
    """Means of the per-example metrics (NaN-aware), plus ``migration_auc`` where defined."""
    out = {name: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
           for name, values in per_example.items() if name not in ("has_new", "migration_score")}
    out["new_category_share"] = float(np.mean(per_example["has_new"]))
    if "migration_score" in per_example:
        out["migration_auc"] = migration_auc(per_example)
    return out


def bootstrap_ci(per_example: dict[str, np.ndarray], users: np.ndarray, metrics: list[str], *,
                 baseline: dict[str, np.ndarray] | None = None, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals of the mean of each metric, resampling *users* (all of a
    user's examples go together). With ``baseline`` the interval is of the difference
    (per_example - baseline) on the same resampled users."""
    rng = np.random.default_rng(seed)
    codes, inverse = np.unique(np.asarray(users).astype(str), return_inverse=True)
    n_users = len(codes)
    draws = rng.integers(0, n_users, size=(n_boot, n_users))
    weights = np.stack([np.bincount(d, minlength=n_users) for d in draws])  # [n_boot, users]
    result = {}
    alpha = (1.0 - level) / 2.0
    for name in metrics:
        values = per_example[name] - (baseline[name] if baseline is not None else 0.0)
        ok = np.isfinite(values)
        sums = np.bincount(inverse[ok], weights=values[ok], minlength=n_users)
        counts = np.bincount(inverse[ok], minlength=n_users).astype(np.float64)
        means = (weights @ sums) / np.maximum(weights @ counts, 1e-12)
        result[name] = (float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha)))
    return result


def evaluate_methods(method_scores: dict[str, np.ndarray], labels: np.ndarray, known: np.ndarray,
                     ks: tuple[int, ...], seed: int = 0) -> tuple[dict[str, dict[str, float]],
                                                                   dict[str, dict[str, np.ndarray]]]:
    """Summaries and per-example metrics of every method on the same examples."""
    summaries, per = {}, {}
    for name, scores in method_scores.items():
        per[name] = example_metrics(scores, labels, known, ks, probabilities=name in PROBABILISTIC)
        summaries[name] = summarize(per[name])
        summaries[name]["auc"] = pooled_auc(scores, labels, seed)
    return summaries, per


def comparison_table(summaries: dict[str, dict[str, float]], ks: tuple[int, ...]) -> pd.DataFrame:
    """One row per method, the headline metrics as columns."""
    columns = [f"{m}_at_{k}" for k in ks for m in ("recall", "ndcg", "precision", "hitrate")]
    columns += [f"explore_recall_at_{k}" for k in EMERGING_KS] + [f"repeat_recall_at_{ks[0]}",
                                                                  f"list_explore_recall_at_{ks[0]}",
                                                                  "auc", "gauc", "brier", "migration_auc"]
    rows = []
    for name, s in summaries.items():
        rows.append({"method": name, **{c: s.get(c, float("nan")) for c in columns}})
    return pd.DataFrame(rows).set_index("method")


# --------------------------------------------------------------------------------------------
# scoring a pyfunc model on the dataset's raw test events


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


def _load_test(dataset: Any) -> tuple[pa.Table, pd.DataFrame]:
    import pyarrow.parquet as pq

    from pipelines.features.encoding import read_split

    examples = read_split(dataset, "test")
    events = pq.read_table(dataset.root / "test_events" / "part-00000.parquet").to_pandas()
    events["ts"] = pd.to_datetime(events["ts"], utc=True)
    return examples, events


def choose_decay_feature(dataset: Any, ks: tuple[int, ...]) -> str:
    """The decayed-frequency half-life that is best (NDCG@first k) on the validation split: the
    baseline gets the same tuning chance the model gets."""
    from pipelines.features.encoding import read_split, to_model_inputs
    from pipelines.model.baselines import fit_baselines, score_decayed_frequency

    val = read_split(dataset, "validation")
    if val.num_rows == 0:
        return "decay_mid"
    inputs, labels, known = to_model_inputs(val, dataset.vocab.n_categories, dataset.config.seq_len)
    best, best_value = "decay_mid", -1.0
    for name in ("decay_short", "decay_mid", "decay_long"):
        models = fit_baselines(dataset.stats, dataset.vocab.n_categories, name)
        value = float(np.nanmean(example_metrics(score_decayed_frequency(models, inputs), labels, known,
                                                 (ks[0],))[f"ndcg_at_{ks[0]}"]))
        if value > best_value:
            best, best_value = name, value
    return best


def evaluate_dataset(dataset: Any, model_scores: np.ndarray | None, ks: tuple[int, ...], *,
                     examples: pa.Table | None = None, seed: int = 0) -> dict[str, Any]:
    """Metrics of ``model_scores`` (None: baselines only) and every baseline on the test split.

    Returns ``{"summaries", "per_example", "labels", "known", "inputs", "examples", "scores"}``.
    """
    from pipelines.features.encoding import read_split, to_model_inputs
    from pipelines.model.baselines import fit_baselines, score_all

    examples = read_split(dataset, "test") if examples is None else examples
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


def _open_local(settings: Settings, dataset_uri: str, workdir: Path) -> Any:
    from pipelines.features.encoding import download_dataset

    return download_dataset(settings, dataset_uri, workdir / "dataset")


def evaluate_model_uri(settings: Settings, dataset_uri: str, model_uri: str) -> dict[str, float]:
    """Metrics (keys without prefix, e.g. ``ndcg_at_5``) of any pyfunc model URI on the test
    split of ``dataset_uri``, through the public scoring contract."""
    import mlflow

    from pipelines.features.encoding import to_model_inputs

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
        dataset = _open_local(settings, dataset_uri, Path(tmp))
        examples, events = _load_test(dataset)
        pyfunc = mlflow.pyfunc.load_model(model_uri)
        scores = score_pyfunc_on_examples(pyfunc, events, examples, dataset.vocab.category_ids())
        _, labels, known = to_model_inputs(examples, dataset.vocab.n_categories, dataset.config.seq_len)
        per = example_metrics(scores, labels, known, tuple(settings.eval_ks), probabilities=True)
        summary = summarize(per)
        summary["auc"] = pooled_auc(scores, labels, settings.seed)
    return {k: v for k, v in summary.items() if np.isfinite(v)}


def evaluate_step(settings: Settings, dataset_uri: str, model_uri: str, *, mlflow_run_id: str) -> dict[str, float]:
    """Evaluate the model (through its pyfunc contract) and every baseline on the test split; log
    ``model/...`` and ``baseline/<name>/...`` metrics, the comparison table and the plots to the
    run; return the logged metrics."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    ks = tuple(settings.eval_ks)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
        dataset = _open_local(settings, dataset_uri, Path(tmp))
        examples, events = _load_test(dataset)
        log.info("evaluating %s on %d test examples", model_uri, examples.num_rows)
        pyfunc = mlflow.pyfunc.load_model(model_uri)
        model_scores = score_pyfunc_on_examples(pyfunc, events, examples, dataset.vocab.category_ids())
        result = evaluate_dataset(dataset, model_scores, ks, examples=examples, seed=settings.seed)
        metrics = flatten_metrics(result["summaries"])
        metrics["eval/test_examples"] = float(examples.num_rows)
        metrics["eval/test_users"] = float(len(set(examples["user_id"].to_pylist())))
        table = comparison_table(result["summaries"], ks)
        out = Path(tmp) / "eval"
        out.mkdir()
        table.to_csv(out / "comparison.csv")
        (out / "comparison.md").write_text(table.to_markdown(floatfmt=".4f") if _has_tabulate() else
                                           table.to_string(float_format=lambda x: f"{x:.4f}"))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        client.log_artifacts(mlflow_run_id, str(out), "evaluation")
        client.log_table(mlflow_run_id, table.reset_index(), "evaluation/comparison_table.json")
        for name, fig in evaluation_figures(result, dataset.vocab, ks).items():
            client.log_figure(mlflow_run_id, fig, f"plots/{name}.png")
            _close(fig)
        client.log_batch(mlflow_run_id, params=[
            mlflow.entities.Param("eval.ks", ",".join(str(k) for k in ks)),
            mlflow.entities.Param("eval.emerging_ks", ",".join(str(k) for k in EMERGING_KS)),
            mlflow.entities.Param("eval.model_uri", model_uri)], metrics=[
            mlflow.entities.Metric(k, v, int(dt.datetime.now(dt.UTC).timestamp() * 1000), 0)
            for k, v in sorted(metrics.items())])
    log.info("model ndcg_at_%d %.4f, decayed_frequency %.4f", ks[0], metrics.get(f"model/ndcg_at_{ks[0]}", np.nan),
             metrics.get(f"baseline/decayed_frequency/ndcg_at_{ks[0]}", np.nan))
    return metrics


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    if args.mlflow_run_id:
        result = evaluate_step(settings, args.dataset_uri, args.model_uri, mlflow_run_id=args.mlflow_run_id)
    else:
        result = evaluate_model_uri(settings, args.dataset_uri, args.model_uri)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def register_cli(subparsers: Any) -> None:
    """``python -m pipelines evaluate --dataset-uri S3 --model-uri URI [--mlflow-run-id ID]``."""
    parser = subparsers.add_parser("evaluate", help="evaluate a model and the baselines on a dataset's test split")
    parser.add_argument("--dataset-uri", required=True)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--mlflow-run-id", default=None, help="log to this run (else only print)")
    parser.set_defaults(func=_cmd_evaluate)


# --------------------------------------------------------------------------------------------
# plots


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def evaluation_figures(result: dict[str, Any], vocab: Any, ks: tuple[int, ...], n_users: int = 4) -> dict[str, Any]:
    """Figures for the run: per-category current vs predicted interest of sample users, ROC curves,
    recall@k curves (model vs baselines) and the model's reliability diagram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    figures: dict[str, Any] = {}
    scores, labels, known = result["scores"], result["labels"], result["known"]
    ids = vocab.category_ids()
    # per-category interest of sample users: current (share of decayed history) vs predicted
    if "model" in scores and len(labels):
        rng = np.random.default_rng(0)
        moved = np.flatnonzero((labels > 0) & (known == 0)).tolist()
        candidates = np.unique(np.asarray(moved) // labels.shape[1]) if moved else np.arange(len(labels))
        picks = rng.choice(candidates, size=min(n_users, len(candidates)), replace=False)
        fig, axes = plt.subplots(len(picks), 1, figsize=(10, 2.6 * len(picks)), squeeze=False)
        hist = result["inputs"]["hist"][:, :, 2]  # decayed counts at one horizon half-life
        users = result["examples"]["user_id"].to_pylist()
        for ax, row in zip(axes[:, 0], picks, strict=True):
            current = hist[row] / max(hist[row].sum(), 1e-12)
            predicted = scores["model"][row]
            show = np.argsort(-(current + predicted))[:15]
            show = show[show >= RESERVED]
            x = np.arange(len(show))
            ax.bar(x - 0.2, current[show], 0.4, label="current (decayed share)")
            ax.bar(x + 0.2, predicted[show], 0.4, label="predicted P(engage)")
            ax.scatter(x[labels[row, show] > 0], np.zeros(int((labels[row, show] > 0).sum())), marker="^",
                       color="black", label="touched in horizon", zorder=3)
            ax.set_xticks(x, [str(ids[c]) for c in show], rotation=45, fontsize=7)
            ax.set_title(f"user {users[row]}", fontsize=9)
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        figures["sample_users_interest"] = fig
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        y = (labels[:, RESERVED:] > 0).ravel()
        if y.any() and not y.all():
            fpr, tpr, _ = roc_curve(y, s[:, RESERVED:].ravel())
            ax.plot(fpr, tpr, label=f"{name} (AUC {result['summaries'][name].get('auc', float('nan')):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC over (user, category) pairs")
    ax.legend(fontsize=7)
    figures["roc"] = fig
    k_max = min(max(max(ks), 20), labels.shape[1] - RESERVED)
    curve_ks = tuple(range(1, k_max + 1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, s in scores.items():
        per = example_metrics(s, labels, known, curve_ks, emerging_ks=curve_ks)
        axes[0].plot(curve_ks, [np.nanmean(per[f"recall_at_{k}"]) for k in curve_ks], label=name)
        axes[1].plot(curve_ks, [np.nanmean(per[f"explore_recall_at_{k}"]) for k in curve_ks], label=name)
    axes[0].set_title("Recall@k, whole list")
    axes[1].set_title("explore-Recall@k, emerging list (known removed)")
    for ax in axes:
        ax.set_xlabel("k")
        ax.legend(fontsize=7)
    figures["recall_at_k"] = fig
    if "model" in scores:
        p = scores["model"][:, RESERVED:].ravel()
        y = (labels[:, RESERVED:] > 0).ravel()
        bins = np.linspace(0, 1, 11)
        which = np.clip(np.digitize(p, bins) - 1, 0, 9)
        mean_p = np.array([p[which == b].mean() if (which == b).any() else np.nan for b in range(10)])
        rate = np.array([y[which == b].mean() if (which == b).any() else np.nan for b in range(10)])
        counts = np.bincount(which, minlength=10)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.plot(mean_p, rate, "o-", label="model")
        for x, yv, n in zip(mean_p, rate, counts, strict=True):
            if np.isfinite(x):
                ax.annotate(str(n), (x, yv), fontsize=6)
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(f"Reliability (Brier {result['summaries']['model'].get('brier', float('nan')):.4f})")
        figures["reliability"] = fig
    return figures
