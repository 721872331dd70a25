"""P(active): how likely a user is to do anything at all in the horizon, so that published
probabilities are unconditional.

The network learns P(category c | the user acts in the horizon): its training examples are users
with an event in the horizon (a user who does nothing has no label to learn from). Scoring covers
every user of the look-back window, most of whom do nothing in the next days, so its raw
probabilities overstate every user's chances, and the migration score (1 - prod(1 - p) over new
categories) ranks heavy and light users alike. The published probability is therefore

    P(c) = P(active) x P(c | active)

with P(active) a logistic regression on a few activity features of the look-back (events in the
last day, week and window, active days, days since the last and the first event), fitted on
*every* user of the look-back at each training as-of time, active in the horizon or not
(:func:`fit_activity`). It is a handful of numbers: the model stores it as ``activity.json``
beside the network, and scoring multiplies each row's scores by its user's P(active)
(:func:`ActivityModel.p_active`). Rankings within a user do not change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.features.batch import EventIndex

DAY_S = 86_400.0
FEATURES = ("events_1d", "events_7d", "events_window", "active_days", "days_since_last", "days_since_first")


@dataclasses.dataclass(frozen=True)
class ActivityModel:
    """Logistic regression of "any event in the horizon" on :data:`FEATURES` (log1p of each),
    standardised with the training ``mean``/``scale``."""

    coef: list[float]
    intercept: float
    mean: list[float]
    scale: list[float]
    lookback_days: float
    fitted_rows: int = 0
    base_rate: float = 0.0  # share of the fitted rows active in the horizon

    def p_active(self, index: EventIndex, users: np.ndarray, as_of: dt.datetime | np.ndarray) -> np.ndarray:
        """P(active in the horizon) of ``users`` (indices into ``index``) at ``as_of`` (one time, or
        int64 microseconds per user of ``users``)."""
        as_of_s = as_of.timestamp() if isinstance(as_of, dt.datetime) else np.asarray(as_of, np.float64) / 1e6
        x = (activity_features(index, users, as_of_s, self.lookback_days) - self.mean) / self.scale
        return _sigmoid(x @ np.asarray(self.coef) + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActivityModel:
        if list(data.get("features", [])) != list(FEATURES):
            raise ValueError(f"activity model features {data.get('features')} differ from {list(FEATURES)}")
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def activity_features(index: EventIndex, users: np.ndarray, as_of_s: float | np.ndarray,
                      lookback_days: float) -> np.ndarray:
    """``[len(users), len(FEATURES)]`` log1p activity features of the events in
    ``[as_of - lookback, as_of)`` (events are sorted by user, then time). ``as_of_s`` is one time
    (seconds) for all, or one per user of ``users`` (which are then distinct)."""
    users = np.asarray(users, np.int64)
    user_of = index.user_of_event()
    ts = index.ts
    n_users = index.n_users
    t_all = np.full(n_users, float(as_of_s) if np.isscalar(as_of_s) else np.nan)
    if not np.isscalar(as_of_s):
        t_all[users] = np.asarray(as_of_s, np.float64)
    t_ev = t_all[user_of]
    lookback_s = lookback_days * DAY_S
    window = (ts >= t_ev - lookback_s) & (ts < t_ev)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(user_of[mask], minlength=n_users).astype(np.float64)

    n_window = count(window)
    n_7 = count(window & (ts >= t_ev - 7 * DAY_S))
    n_1 = count(window & (ts >= t_ev - DAY_S))
    first = index.bounds[:-1]
    before = first + count(ts < t_ev).astype(np.int64)
    start = first + count(ts < t_ev - lookback_s).astype(np.int64)
    has = before > start
    empty = t_all - lookback_s
    last_ts = np.where(has, ts[np.clip(before - 1, 0, max(len(ts) - 1, 0))] if len(ts) else 0.0, empty)
    first_ts = np.where(has, ts[np.clip(start, 0, max(len(ts) - 1, 0))] if len(ts) else 0.0, empty)
    # events are sorted by user, then time: a new active day starts where the user or the day changes
    w_user, w_day = user_of[window], np.floor(ts[window] / DAY_S)
    starts = np.r_[True, (w_user[1:] != w_user[:-1]) | (w_day[1:] != w_day[:-1])] if len(w_user) else np.zeros(0, bool)
    active_days = np.bincount(w_user[starts], minlength=n_users).astype(np.float64)
    raw = np.stack([n_1, n_7, n_window, active_days, (t_all - last_ts) / DAY_S, (t_all - first_ts) / DAY_S], 1)
    return np.log1p(np.maximum(raw[users], 0.0))


def fit_activity(index: EventIndex, asof_times: Sequence[dt.datetime], *, lookback_days: float,
                 horizon_days: float, ridge: float = 1e-3) -> ActivityModel | None:
    """Fit :class:`ActivityModel` on every user with an event in the look-back of each as-of time
    (label: an event in ``[T, T + horizon)``). None when there is nothing to fit (no rows, or
    every row has the same label)."""
    xs, ys = [], []
    user_of = index.user_of_event()
    for as_of in asof_times:
        t = as_of.timestamp()
        in_window = np.bincount(user_of[(index.ts >= t - lookback_days * DAY_S) & (index.ts < t)],
                                minlength=index.n_users) > 0
        users = np.flatnonzero(in_window)
        if len(users) == 0:
            continue
        active = np.bincount(user_of[(index.ts >= t) & (index.ts < t + horizon_days * DAY_S)],
                             minlength=index.n_users) > 0
        xs.append(activity_features(index, users, t, lookback_days))
        ys.append(active[users].astype(np.float64))
    if not xs:
        return None
    x, y = np.concatenate(xs), np.concatenate(ys)
    if y.min() == y.max():
        return None
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    coef, intercept = _logistic_irls((x - mean) / scale, y, ridge)
    return ActivityModel(coef=coef.tolist(), intercept=float(intercept), mean=mean.tolist(), scale=scale.tolist(),
                         lookback_days=float(lookback_days), fitted_rows=len(y), base_rate=float(y.mean()))


def _logistic_irls(x: np.ndarray, y: np.ndarray, ridge: float, iterations: int = 25) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (a few features, many rows)."""
    design = np.c_[np.ones(len(x)), x]
    w = np.zeros(design.shape[1])
    penalty = np.eye(design.shape[1]) * ridge * len(x)
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    for _ in range(iterations):
        p = _sigmoid(design @ w)
        gradient = design.T @ (p - y) + penalty @ w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(w)), gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[1:], float(w[0])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))
