"""The per-user interest arithmetic the product used before the vectorised contract: the
definitions :mod:`pipelines.serving.contract` must reproduce, kept as the reference of the
equality tests (test code only, never imported by the package).

Definitions (docs/design.md): *history share* (undecayed, behaviour-weighted share of the
look-back events), *current interest* (the same with each event's weight halved every
``half_life_days``), *migration score* (the probability of touching at least one category that is
not in the look-back history: 1 - prod(1 - p) over the predicted new categories), *emerging* (best-ranked predicted categories whose
history share is at most a small share), *fading* (strong today, predicted probability below a
bound; biggest expected loss first).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.serving.interests import BEHAVIOR_WEIGHTS, DEFAULT_BEHAVIOR_WEIGHT, InterestParams

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class UserInterests:
    """One user's interests as of T: decayed current shares and undecayed history shares."""

    current: dict[str, float]
    history: dict[str, float]

    def top_current(self, k: int) -> tuple[list[str], list[float]]:
        """The ``k`` strongest current categories (ties by category id) and their shares."""
        ranked = sorted(self.current.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [c for c, _ in ranked], [float(s) for _, s in ranked]


def user_interests(events: pd.DataFrame, as_of: dt.datetime, half_life_days: float) -> dict[str, UserInterests]:
    """Current (decayed) and history (undecayed) category shares of every user in ``events``.

    ``events`` needs columns user_id, category_id, behavior, ts (tz-aware UTC); events at or after
    ``as_of`` are ignored (the as-of rule). Returns ``{user_id: UserInterests}``; each dict of
    shares sums to 1. A user with no event before ``as_of`` is absent from the result.
    """
    if half_life_days <= 0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
    cutoff = pd.Timestamp(as_of)
    if cutoff.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware (UTC), got {as_of!r}")
    frame = events.loc[events["ts"] < cutoff, ["user_id", "category_id", "behavior", "ts"]]
    if frame.empty:
        return {}
    weight = frame["behavior"].map(BEHAVIOR_WEIGHTS).fillna(DEFAULT_BEHAVIOR_WEIGHT).to_numpy(dtype=np.float64)
    age_days = (cutoff - frame["ts"]).dt.total_seconds().to_numpy(dtype=np.float64) / SECONDS_PER_DAY
    decayed = weight * np.exp2(-age_days / half_life_days)
    grouped = (pd.DataFrame({"user_id": frame["user_id"].to_numpy(), "category_id": frame["category_id"].to_numpy(),
                             "w": weight, "d": decayed})
               .groupby(["user_id", "category_id"], sort=True)[["w", "d"]].sum())
    totals = grouped.groupby(level=0).transform("sum")
    shares = grouped / totals
    result: dict[str, UserInterests] = {}
    users = shares.index.get_level_values(0).to_numpy()
    categories = shares.index.get_level_values(1).to_numpy()
    history = shares["w"].to_numpy()
    current = shares["d"].to_numpy()
    # Rows are sorted by user: split the arrays at user boundaries instead of a Python groupby.
    bounds = np.flatnonzero(users[1:] != users[:-1]) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(users)], strict=True):
        cats = categories[lo:hi].tolist()
        result[str(users[lo])] = UserInterests(current=dict(zip(cats, current[lo:hi].tolist(), strict=True)),
                                               history=dict(zip(cats, history[lo:hi].tolist(), strict=True)))
    return result


def normalize(scores: Mapping[str, float]) -> dict[str, float]:
    """Scores divided by their sum (negative scores count as 0); all-zero input gives {}."""
    positive = {k: v for k, v in scores.items() if v > 0 and v != math.inf}
    total = sum(positive.values())
    return {k: v / total for k, v in positive.items()} if total > 0 else {}


def migration_score(history: Mapping[str, float], predicted_categories: Sequence[str],
                    predicted_scores: Sequence[float]) -> float:
    """1 - prod(1 - p) over the predicted categories not in ``history`` (scores clipped to [0, 1])."""
    keep = 1.0
    for category, p in _as_mapping(predicted_categories, predicted_scores).items():
        if history.get(category, 0.0) <= 0.0 and math.isfinite(p):
            keep *= 1.0 - min(max(p, 0.0), 1.0 - 1e-7)
    return 1.0 - keep


def emerging_categories(predicted_categories: Sequence[str], history: Mapping[str, float], k: int,
                        max_history_share: float) -> list[str]:
    """The first ``k`` predicted categories (model order) with history share <= ``max_history_share``."""
    out: list[str] = []
    for category in predicted_categories:
        if history.get(category, 0.0) <= max_history_share:
            out.append(category)
            if len(out) == k:
                break
    return out


def fading_categories(current: Mapping[str, float], predicted_categories: Sequence[str],
                      predicted_scores: Sequence[float], k: int, min_current_share: float,
                      max_probability: float) -> list[str]:
    """Categories with current share >= ``min_current_share`` whose predicted probability (0 when
    not predicted) is below ``max_probability``; biggest expected loss first, at most ``k``."""
    return _fading(normalize(current), _as_mapping(predicted_categories, predicted_scores), k,
                   min_current_share, max_probability)


def _fading(current: Mapping[str, float], probability: Mapping[str, float], k: int,
            min_current_share: float, max_probability: float) -> list[str]:
    losses = []
    for category, share in current.items():
        if share >= min_current_share:
            p = probability.get(category, 0.0)
            if p < max_probability:
                losses.append((share * (1.0 - p), category))
    losses.sort(key=lambda t: (-t[0], t[1]))
    return [c for _, c in losses[:k]]


def describe_user(interests: UserInterests | None, predicted_categories: Sequence[str],
                  predicted_scores: Sequence[float], params: InterestParams) -> dict[str, object]:
    """The interest columns of one prediction row (current_*, migration_score, emerging, fading).

    ``interests`` None (no history before as-of) gives empty current lists, every predicted
    category counted as new (migration) and as emerging.
    """
    if interests is None:
        interests = UserInterests(current={}, history={})
    current_categories, current_strengths = interests.top_current(params.current_k)
    current = normalize(interests.current)
    probability = _as_mapping(predicted_categories, predicted_scores)
    return {
        "current_categories": current_categories,
        "current_strengths": current_strengths,
        "migration_score": migration_score(interests.history, predicted_categories, predicted_scores),
        "emerging_categories": emerging_categories(predicted_categories, interests.history, params.emerging_k,
                                                   params.emerging_max_history_share),
        "fading_categories": _fading(current, probability, params.fading_k,
                                     params.fading_min_current_share, params.fading_max_probability),
    }


def _as_mapping(categories: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    if len(categories) != len(scores):
        raise ValueError(f"predicted categories ({len(categories)}) and scores ({len(scores)}) differ in length")
    out = dict(zip(categories, scores, strict=True))
    if len(out) < len(categories):  # a category listed twice: add its scores up
        out = {}
        for category, score in zip(categories, scores, strict=True):
            out[category] = out.get(category, 0.0) + score
    return out
