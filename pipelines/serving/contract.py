"""Scores -> the contract's columns, for a whole batch of users at once (no per-user Python).

The one place that turns a model's (or a baseline's) scores and the users' interests
(:class:`~pipelines.serving.interests.InterestHistory`) into the published columns
``predicted_categories``, ``predicted_scores``, ``current_categories``, ``current_strengths``,
``migration_score``, ``emerging_categories`` and ``fading_categories`` (docs/design.md):

- :func:`columns_from_scores` takes any score matrix [B, V] (column j = category ``categories[j]``)
  and ranks it (:func:`pipelines.model.ranking.top_n`);
- :func:`contract_columns` takes a ranking that is already made (:class:`Ranked`: the best
  ``top_n`` codes per row, best first, -1 = empty slot), e.g. a pyfunc's lists or a top-k done
  inside the model.

Definitions: the *predicted probability* of a category is its ranked score (a category listed twice
adds up); the *migration score* is the probability that the user touches at least one category new
to them in the horizon, ``1 - prod(1 - p)`` over the ranked categories that are not in the user's
look-back history (scores clipped to [0, 1]; no ranked new category: 0). It equals
``outcomes.migration_auc``'s target ("adopts a new category") in meaning; it does not depend on
``top_n`` once every category the model can score is ranked (``top_n`` >= the vocabulary), and
otherwise leaves out only the tail below the ``top_n``-th score. *Emerging* are the first
``emerging_k`` ranked categories whose history share is at most ``emerging_max_history_share`` (0:
not touched in the look-back, the outcomes scorer's "new"); *fading* are categories whose normalised
current share is at least ``fading_min_current_share`` and whose ranked score (0 when not ranked) is
below ``fading_max_probability``, biggest share x (1 - probability) first, ties by category id;
``current_categories`` are the ``current_k`` biggest current shares, ties by category id. The other
definitions are those of the per-user code ``tests/reference_interests.py`` keeps.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.model.ranking import top_n as rank_top_n
from pipelines.serving.interests import InterestHistory, InterestParams

CONTRACT_COLUMNS = ("predicted_categories", "predicted_scores", "current_categories", "current_strengths",
                    "migration_score", "emerging_categories", "fading_categories")


@dataclasses.dataclass(frozen=True)
class Ranked:
    """The best categories of each of B rows, best first: ``codes`` int64 [B, n] (-1 = empty
    slot, empty slots last) and their ``scores`` [B, n]."""

    codes: np.ndarray
    scores: np.ndarray


def columns_from_scores(scores: np.ndarray, categories: pa.Array, history: InterestHistory, params: InterestParams,
                        *, top_k: int, top_n: int, first: int = 0) -> dict[str, pa.Array]:
    """The contract columns of a score matrix [B, V]: its ``top_n`` best columns among
    ``first..V-1`` (exact stable order) feed :func:`contract_columns`. ``categories`` names every
    code (at least the V columns; codes above V may name history-only categories)."""
    codes, values = rank_top_n(scores, top_n, first)
    return contract_columns(Ranked(codes, values), categories, history, params, top_k=top_k)


class ScoringError(RuntimeError):
    """The model's output or the written partition breaks the contract; the message says how."""


def check_scores(scores: np.ndarray, valid: np.ndarray) -> None:
    """Raise :class:`ScoringError` when a ranked score is not a finite number >= 0 (NaN would
    publish as a migration score of 0, a negative score as a probability below zero)."""
    bad = valid & ~(np.isfinite(scores) & (scores >= 0))
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise ScoringError(f"the model returned {int(bad.sum())} scores that are not finite numbers >= 0 in "
                           f"{int(bad.any(axis=1).sum())} of {len(scores)} rows (first: row {row}, rank {col + 1}: "
                           f"{float(scores[row, col])}); nothing is published (rule: scores_finite_non_negative)")


def contract_columns(ranked: Ranked, categories: pa.Array, history: InterestHistory, params: InterestParams,
                     *, top_k: int) -> dict[str, pa.Array]:
    """The :data:`CONTRACT_COLUMNS` of B rows as Arrow arrays, row r from ``ranked`` row r and
    ``history`` row r (both in the code space ``categories``)."""
    codes = np.asarray(ranked.codes, np.int64)
    scores = np.asarray(ranked.scores, np.float64)
    n_rows = len(codes)
    if history.n_rows != n_rows:
        raise ValueError(f"ranked scores have {n_rows} rows but the interest history {history.n_rows}")
    n_codes = max(len(categories), 1)
    valid = codes >= 0
    check_scores(scores, valid)
    rank_row = np.broadcast_to(np.arange(n_rows, dtype=np.int64)[:, None], codes.shape)

    # the predicted probability of each (row, category): duplicates add up; sorted keys for lookups
    keys = np.where(valid, rank_row * n_codes + codes, np.iinfo(np.int64).max)
    order = np.argsort(keys, axis=1, kind="stable")
    flat_keys = np.take_along_axis(keys, order, axis=1).ravel()
    flat_scores = np.take_along_axis(scores, order, axis=1).ravel()
    live = flat_keys != np.iinfo(np.int64).max
    flat_keys, flat_scores = flat_keys[live], flat_scores[live]
    heads = np.flatnonzero(np.r_[True, flat_keys[1:] != flat_keys[:-1]]) if len(flat_keys) else np.zeros(0, np.int64)
    prob_keys = flat_keys[heads]
    prob = np.add.reduceat(flat_scores, heads) if len(heads) else np.zeros(0)
    prob_row = prob_keys // n_codes

    # the interests, looked up by the same keys
    h_row = history.row_of_entry()
    h_keys = h_row * n_codes + history.code
    h_order = np.argsort(h_keys, kind="stable")
    h_sorted = h_keys[h_order]
    cur = history.current
    p_positive = (cur > 0) & (cur != np.inf)
    p_total = _row_sums(h_row, np.where(p_positive, cur, 0.0), n_rows)
    p = np.where(p_positive, cur / np.where(p_total[h_row] > 0, p_total[h_row], 1.0), 0.0)

    h_prob, = _lookup(prob_keys, (prob,), h_keys)
    rank_share, = _lookup(h_sorted, (history.history[h_order],), keys.ravel())

    # migration: the probability of touching at least one category new to the user (not in the
    # look-back history), 1 - prod(1 - p) over the ranked new categories
    in_history, = _lookup(h_sorted, (history.history[h_order] > 0,), prob_keys)
    new_p = np.where((in_history > 0) | ~np.isfinite(prob), 0.0, np.clip(prob, 0.0, 1.0 - 1e-7))
    migration = 1.0 - np.exp(_row_sums(prob_row, np.log1p(-new_p), n_rows))

    rank = _string_rank(categories)
    out = {
        "predicted_categories": _lists(valid[:, :top_k], codes[:, :top_k], categories),
        "predicted_scores": _float_lists(valid[:, :top_k], scores[:, :top_k]),
        "migration_score": pa.array(migration.astype(np.float32)),
    }
    emerging = valid & (rank_share.reshape(codes.shape) <= params.emerging_max_history_share)
    emerging &= np.cumsum(emerging, axis=1) <= params.emerging_k
    out["emerging_categories"] = _lists(emerging, codes, categories)

    # current: the biggest current shares; fading: strong now, unlikely in the horizon
    code_rank = rank[history.code] if len(history.code) else np.zeros(0, np.int64)
    pick, lengths = _first_per_row(h_row, (code_rank, -cur), params.current_k, n_rows)
    out["current_categories"] = _ragged(lengths, categories.take(pa.array(history.code[pick], pa.int64())))
    out["current_strengths"] = _ragged(lengths, pa.array(cur[pick].astype(np.float32)))
    fading = np.flatnonzero((p > 0) & (p >= params.fading_min_current_share) & (h_prob < params.fading_max_probability))
    loss = p[fading] * (1.0 - h_prob[fading])
    pick, lengths = _first_per_row(h_row[fading], (code_rank[fading], -loss), params.fading_k, n_rows)
    out["fading_categories"] = _ragged(lengths, categories.take(pa.array(history.code[fading][pick], pa.int64())))
    return {name: out[name] for name in CONTRACT_COLUMNS}


def _row_sums(rows: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    """Sum of ``values`` per row (float64, 0 for rows without values)."""
    return np.bincount(rows, weights=values, minlength=n_rows).astype(np.float64, copy=False)


def _lookup(sorted_keys: np.ndarray, values: tuple[np.ndarray, ...], wanted: np.ndarray) -> list[np.ndarray]:
    """``values`` at the positions of ``wanted`` in ``sorted_keys``; 0 where a key is absent."""
    if len(sorted_keys) == 0:
        return [np.zeros(len(wanted)) for _ in values]
    pos = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
    found = sorted_keys[pos] == wanted
    return [np.where(found, v[pos], 0.0) for v in values]


def _first_per_row(rows: np.ndarray, sort_keys: tuple[np.ndarray, ...], k: int, n_rows: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first ``k`` entries of each row in the order of ``sort_keys`` (last key
    first, as in ``np.lexsort``), rows in order; and the count kept per row."""
    order = np.lexsort((*sort_keys, rows))
    rows = rows[order]
    starts = np.r_[0, np.cumsum(np.bincount(rows, minlength=n_rows))][:-1]
    keep = (np.arange(len(rows)) - starts[rows]) < k
    return order[keep], np.bincount(rows[keep], minlength=n_rows)


def _string_rank(categories: pa.Array) -> np.ndarray:
    """Position of each code's id in string order (the tie-break of the per-user definitions)."""
    order = pc.array_sort_indices(categories).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _lists(mask: np.ndarray, codes: np.ndarray, categories: pa.Array) -> pa.Array:
    """list<string> of the masked codes of each row, in column order."""
    return _ragged(mask.sum(axis=1), categories.take(pa.array(codes[mask], pa.int64())))


def _float_lists(mask: np.ndarray, values: np.ndarray) -> pa.Array:
    return _ragged(mask.sum(axis=1), pa.array(values[mask].astype(np.float32)))


def _ragged(lengths: np.ndarray, values: pa.Array) -> pa.Array:
    offsets = pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32))
    return pa.ListArray.from_arrays(offsets, values)
