"""Top-n of score matrices without a full sort: ``argpartition``, then a sort of the n kept.

The order is exactly a stable full sort's (descending score, ties by lower column first), also
when ties straddle the cut: the few rows where they do are sorted in full.
"""

from __future__ import annotations

import numpy as np


def top_n(scores: np.ndarray, n: int, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Columns (int64 [B, n']) and scores ([B, n']) of the ``n`` best columns of each row, best
    first, among columns ``first..V-1`` (``n' = min(n, V - first)``)."""
    scores = np.asarray(scores)
    pool = scores[:, first:]
    n = max(0, min(int(n), pool.shape[1]))
    if n == 0 or len(pool) == 0:
        return np.zeros((len(pool), n), np.int64), np.zeros((len(pool), n), scores.dtype)
    if n < pool.shape[1]:
        part = np.argpartition(-pool, n - 1, axis=1)[:, :n]
    else:
        part = np.broadcast_to(np.arange(n), pool.shape).copy()
    values = np.take_along_axis(pool, part, axis=1)
    order = np.lexsort((part, -values), axis=1)
    part = np.take_along_axis(part, order, axis=1)
    if n < pool.shape[1]:
        # ties at the cut: argpartition may have kept any of the tied columns, a stable sort keeps the first
        cut = np.take_along_axis(pool, part[:, -1:], axis=1)
        ambiguous = np.flatnonzero((pool >= cut).sum(axis=1) > n)
        if len(ambiguous):
            part[ambiguous] = np.argsort(-pool[ambiguous], axis=1, kind="stable")[:, :n]
    return part + first, np.take_along_axis(pool, part, axis=1)
