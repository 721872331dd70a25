"""Evaluation metrics: pure functions of score matrices, labels and known-category masks.

:func:`example_metrics` turns a score matrix [N, V], multi-hot labels and the known-category
mask into per-example metric arrays; :func:`summarize` averages them; :func:`bootstrap_ci` gives
confidence intervals by resampling users. Columns 0 (padding) and 1 (OOV) are never ranked, but
an OOV truth category still counts in the recall denominators (the evaluation protocol of
docs/design.md).

Metric names (``<metric>_at_<k>``): precision, recall, f1, ndcg, hitrate over the whole list;
``repeat_recall`` and ``list_explore_recall`` (recall of the truth categories the user has / has
not touched before, in the whole list); ``explore_recall`` of the *emerging list* (the ranking with
the user's known categories removed); ``auc`` (pooled), ``gauc`` (mean per-user AUC), ``brier``,
``migration_auc`` (does P(any new category) separate users who move to a new category).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from pipelines.features.vocab import RESERVED

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


def ndcg_at(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of each row (NaN without truth), exactly as :func:`example_metrics` computes it with
    ``ks=(k,)``, without the other metrics (cheap enough for every epoch's early stopping)."""
    truth = labels > 0
    n_true = truth.sum(axis=1)
    top = _topk(np.asarray(scores, np.float64), k)
    hit = truth[np.arange(len(truth))[:, None], top]
    depth = min(k, hit.shape[1])
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hit[:, :depth] * discounts[:depth]).sum(axis=1)
    ideal = np.cumsum(discounts[:depth])[np.clip(np.minimum(n_true, depth) - 1, 0, depth - 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_true > 0, dcg / ideal, np.nan)


def _row_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
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
