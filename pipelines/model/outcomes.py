"""Published contract rows judged against what the users did next: ONE definition of every metric.

Pure (numpy + pyarrow). Monitoring scores published partitions with it, the training evaluation
scores its test examples turned into contract columns (``pipelines/serving/contract.py``) with it,
and baselines are judged by turning their score matrices into the same columns. Definitions:

- *truth* (:func:`truth_sets`): the categories a user touches in the horizon ``[start, end)``;
- *known* (:func:`known_sets`): the categories a user touched in the look-back ``[start, end)``;
  a category is *new* to the user when it is not known (the one definition of "new");
- a user *adopts* a new category when truth - known is not empty.

:func:`score_rows` metrics (``k`` and ``explore_k`` in the names), NaN where undefined:

- ``recall_at_k``, ``precision_at_k`` (hits / k), ``ndcg_at_k`` (binary gains, ideal over
  min(|truth|, k) hits), ``hit_rate_at_k``: first k ``predicted_categories``, mean over the users
  with truth (users without any event in the horizon have no truth: a ranking cannot be judged);
- ``explore_recall_at_{explore_k}``: first ``explore_k`` ``emerging_categories`` against truth -
  known, mean over the users who adopt a new category;
- ``migration_auc``: ``migration_score`` against "adopts a new category", over every user (no
  truth = did not adopt); ties count one half;
- ``fading_precision``: share of all listed ``fading_categories`` the user did NOT touch;
- ``brier``: mean (p - touched)^2 over every listed (user, predicted category, score) pair;
- ``calibration``: those pairs in :data:`CALIBRATION_BINS` equal-width bins of p: ``lower``,
  ``upper``, ``mean_predicted``, ``observed_rate``, ``count`` (non-empty bins only).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CALIBRATION_BINS = 10
ROW_COLUMNS = ("user_id", "predicted_categories", "predicted_scores", "emerging_categories", "fading_categories",
               "migration_score")
_EMPTY: frozenset[str] = frozenset()


def _sets(events: pa.Table, start: dt.datetime, end: dt.datetime) -> dict[str, set[str]]:
    for name in ("user_id", "category_id", "ts"):
        if name not in events.column_names:
            raise ValueError(f"events table has no {name!r} column (columns: {', '.join(events.column_names)})")
    ts = events["ts"]
    unit = ts.type.unit if pa.types.is_timestamp(ts.type) else "us"
    lo = pa.scalar(start, pa.timestamp(unit, "UTC")).cast(ts.type)
    hi = pa.scalar(end, pa.timestamp(unit, "UTC")).cast(ts.type)
    inside = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
    pairs = events.select(["user_id", "category_id"]).filter(inside).group_by(["user_id", "category_id"]).aggregate([])
    out: dict[str, set[str]] = {}
    for user, category in zip(pairs["user_id"].to_pylist(), pairs["category_id"].to_pylist(), strict=True):
        out.setdefault(user, set()).add(category)
    return out


def truth_sets(events: pa.Table, start: dt.datetime, end: dt.datetime) -> dict[str, set[str]]:
    """user_id -> categories the user touched in [start, end) (EVENT_SCHEMA-like table: user_id,
    category_id, ts; ``start``/``end`` timezone-aware UTC)."""
    return _sets(events, start, end)


def known_sets(events: pa.Table, start: dt.datetime, end: dt.datetime) -> dict[str, set[str]]:
    """user_id -> categories in the user's look-back [start, end): "known to the user". A category
    is NEW to a user when it is not in this set. This is THE definition of "new" (published
    emerging list, evaluation, docs)."""
    return _sets(events, start, end)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC of ``scores`` for boolean ``labels`` (ties one half); NaN with one class."""
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    average_rank = upper - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = average_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def calibration(predicted: np.ndarray, observed: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict[str, float]]:
    """Reliability bins of (probability, outcome) pairs: equal-width bins over [0, 1] (1 in the
    last), non-empty ones only."""
    p = np.clip(np.asarray(predicted, np.float64), 0.0, 1.0)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            out.append({"lower": b / bins, "upper": (b + 1) / bins, "mean_predicted": float(p[inside].mean()),
                        "observed_rate": float(np.asarray(observed)[inside].mean()), "count": int(inside.sum())})
    return out


def score_rows(rows: pa.Table, truth: Mapping[str, set[str]], known: Mapping[str, set[str]], *,
               k: int = 5, explore_k: int = 3) -> tuple[dict[str, float], pa.Table]:
    """Judge contract rows (columns :data:`ROW_COLUMNS`; ``current_categories`` is not needed)
    against ``truth`` and ``known`` (see the module doc for every definition). Returns (summary,
    per-user table). Summary keys: users, users_with_truth, users_adopting, recall_at_k,
    precision_at_k, ndcg_at_k, hit_rate_at_k, explore_recall_at_{explore_k}, migration_auc,
    fading_precision, fading_listed, brier, scored_pairs, calibration."""
    if k < 1 or explore_k < 1:
        raise ValueError(f"k={k} and explore_k={explore_k} must be at least 1")
    missing = [c for c in ROW_COLUMNS if c not in rows.column_names]
    if missing:
        raise ValueError(f"contract rows lack the column(s) {', '.join(missing)}")
    users = rows["user_id"].to_pylist()
    if len(set(users)) != len(users):
        raise ValueError("contract rows list a user more than once: score one row per user")
    predicted = rows["predicted_categories"].to_pylist()
    scores = rows["predicted_scores"].to_pylist()
    emerging = rows["emerging_categories"].to_pylist()
    fading = rows["fading_categories"].to_pylist()
    migration = np.asarray(rows["migration_score"].to_numpy(zero_copy_only=False), np.float64)

    n = len(users)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)
    recall, precision, ndcg, hit, explore = (np.full(n, np.nan) for _ in range(5))
    n_truth, n_new = np.zeros(n, np.int64), np.zeros(n, np.int64)
    fading_listed, fading_untouched = np.zeros(n, np.int64), np.zeros(n, np.int64)
    pair_p: list[float] = []
    pair_y: list[bool] = []
    for i, user in enumerate(users):
        touched = truth.get(user) or _EMPTY
        new = touched - (known.get(user) or _EMPTY)
        ranked = predicted[i] or []
        n_truth[i], n_new[i] = len(touched), len(new)
        if touched:
            gains = np.array([c in touched for c in ranked[:k]], np.float64)
            hits = gains.sum()
            recall[i], precision[i], hit[i] = hits / len(touched), hits / k, float(hits > 0)
            ndcg[i] = (gains * discounts[:len(gains)]).sum() / ideal[min(len(touched), k) - 1]
        if new:
            explore[i] = sum(c in new for c in (emerging[i] or [])[:explore_k]) / len(new)
        faded = fading[i] or []
        fading_listed[i] = len(faded)
        fading_untouched[i] = sum(c not in touched for c in faded)
        for c, p in zip(ranked, scores[i] or [], strict=False):
            pair_p.append(p)
            pair_y.append(c in touched)

    adopting = n_new > 0
    p_arr, y_arr = np.asarray(pair_p, np.float64), np.asarray(pair_y, np.float64)
    finite = np.isfinite(migration)
    summary: dict[str, float] = {
        "users": n,
        "users_with_truth": int((n_truth > 0).sum()),
        "users_adopting": int(adopting.sum()),
        f"recall_at_{k}": _mean(recall),
        f"precision_at_{k}": _mean(precision),
        f"ndcg_at_{k}": _mean(ndcg),
        f"hit_rate_at_{k}": _mean(hit),
        f"explore_recall_at_{explore_k}": _mean(explore),
        "migration_auc": auc(migration[finite], adopting[finite]),
        "fading_precision": float(fading_untouched.sum() / fading_listed.sum()) if fading_listed.sum() else float("nan"),
        "fading_listed": int(fading_listed.sum()),
        "brier": float(((p_arr - y_arr) ** 2).mean()) if len(p_arr) else float("nan"),
        "scored_pairs": len(p_arr),
        "calibration": calibration(p_arr, y_arr),
    }
    per_user = pa.table({
        "user_id": pa.array(users, pa.string()),
        "truth_count": pa.array(n_truth, pa.int32()),
        "new_count": pa.array(n_new, pa.int32()),
        f"recall_at_{k}": pa.array(recall),
        f"precision_at_{k}": pa.array(precision),
        f"ndcg_at_{k}": pa.array(ndcg),
        f"hit_rate_at_{k}": pa.array(hit),
        f"explore_recall_at_{explore_k}": pa.array(explore),
        "adopted_new": pa.array(adopting),
        "migration_score": pa.array(migration),
        "fading_listed": pa.array(fading_listed, pa.int32()),
        "fading_untouched": pa.array(fading_untouched, pa.int32()),
    })
    return summary, per_user
