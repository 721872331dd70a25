"""The interest side of a prediction row, for a whole batch of users at once: each user's current
(decayed) and history (undecayed) share of every category it touched.

Definitions (the same words as docs/design.md):
- *history share*: a category's share of the user's behaviour-weighted events in the look-back
  window (no decay): it says whether the user has ever really been into the category.
- *current interest*: the same, with every event's weight halved each ``half_life_days`` before
  the as-of time; ``current_categories`` are the top categories, ``current_strengths`` their shares.

Only events strictly before the as-of time count. :func:`interest_history` computes both shares
with one sort of the (user, category) keys; :mod:`pipelines.serving.contract` turns them and a
score matrix into the contract's columns. Nothing here touches storage, MLflow or the clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pyarrow as pa

from pipelines.features.batch import EventIndex, ranges
from pipelines.platform.dates import epoch_us

# Why weights: a purchase says more about an interest than a page view (Taobao is ~90% views).
BEHAVIOR_WEIGHTS: dict[str, float] = {"view": 1.0, "fav": 2.0, "cart": 2.0, "buy": 3.0, "review": 3.0}
DEFAULT_BEHAVIOR_WEIGHT = 1.0
SECONDS_PER_DAY = 86_400.0


@dataclasses.dataclass(frozen=True)
class InterestParams:
    """The knobs of the interest arithmetic (from Settings, see :func:`params_from_settings`)."""

    half_life_days: float = 7.0
    current_k: int = 10
    emerging_k: int = 5
    emerging_max_history_share: float = 0.0
    fading_k: int = 5
    fading_min_current_share: float = 0.1
    fading_max_probability: float = 0.25


def params_from_settings(settings: object) -> InterestParams:
    """:class:`InterestParams` from a :class:`~pipelines.config.Settings`."""
    return InterestParams(
        half_life_days=settings.interest_half_life_days,  # type: ignore[attr-defined]
        current_k=settings.top_k,  # type: ignore[attr-defined]
        emerging_k=settings.emerging_k,  # type: ignore[attr-defined]
        emerging_max_history_share=settings.emerging_max_history_share,  # type: ignore[attr-defined]
        fading_k=settings.fading_k,  # type: ignore[attr-defined]
        fading_min_current_share=settings.fading_min_current_share,  # type: ignore[attr-defined]
        fading_max_probability=settings.fading_max_probability,  # type: ignore[attr-defined]
    )


@dataclasses.dataclass(frozen=True)
class InterestHistory:
    """The interests of B users as ragged arrays: row r owns entries ``offsets[r]:offsets[r + 1]``,
    one per category it touched before the as-of time (``code``: the category's code in the
    caller's category space), with its ``history`` and ``current`` share (each sums to 1 per
    non-empty row). A user with no event before the as-of time has no entry."""

    offsets: np.ndarray  # int64 [B + 1]
    code: np.ndarray  # int64 [M]
    history: np.ndarray  # float64 [M]
    current: np.ndarray  # float64 [M]

    @property
    def n_rows(self) -> int:
        return len(self.offsets) - 1

    def row_of_entry(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), np.diff(self.offsets))

    def take(self, rows: np.ndarray) -> InterestHistory:
        """The rows ``rows``, in that order."""
        rows = np.asarray(rows, np.int64)
        entries, offsets = ranges(self.offsets[rows], self.offsets[rows + 1])
        return InterestHistory(offsets, self.code[entries], self.history[entries], self.current[entries])


def behavior_weights(behaviors: pa.Array) -> np.ndarray:
    """The weight of each behaviour of a string dictionary (:data:`BEHAVIOR_WEIGHTS`, else 1)."""
    return np.array([BEHAVIOR_WEIGHTS.get(b, DEFAULT_BEHAVIOR_WEIGHT) for b in behaviors.to_pylist()], np.float64)


def interest_history(index: EventIndex, users: np.ndarray, as_of: dt.datetime | np.ndarray, half_life_days: float,
                     code_of_raw: np.ndarray, *, lookback_days: float | None = None) -> InterestHistory:
    """Current and history shares of the users ``users`` (indices into ``index.users``, one row
    each, in that order) as of ``as_of`` (UTC-aware), from their events before ``as_of`` (and, with
    ``lookback_days``, not before ``as_of - lookback_days``: scoring reads only the look-back
    window, an evaluation over a longer history passes it); ``as_of`` may also be one time per user
    (int64 microseconds, aligned with ``users``, which are then distinct). ``code_of_raw`` maps each raw category
    of the index to the caller's category code. Raises ValueError on a bad half-life or a naive
    ``as_of``."""
    if half_life_days <= 0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
    users = np.asarray(users, np.int64)
    if isinstance(as_of, np.ndarray):
        as_of_us: int | np.ndarray = as_of.astype(np.int64)
    elif as_of.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware (UTC), got {as_of!r}")
    else:
        as_of_us = epoch_us(as_of)
    # events are sorted by time inside each user: those in the window are a range of its rows
    before = index.bounds[users] + _count_before(index, users, as_of_us)
    first = index.bounds[users]
    if lookback_days is not None:
        first = first + _count_before(index, users, as_of_us - int(round(lookback_days * 86_400 * 1e6)))
    rows, _ = ranges(first, before)
    row = np.repeat(np.arange(len(users), dtype=np.int64), before - first)
    n_raw = max(len(index.raw_categories), 1)
    key = row * n_raw + index.raw_cat[rows]
    order = np.argsort(key, kind="stable")
    key, rows = key[order], rows[order]
    if len(key) == 0:
        empty = np.zeros(0)
        return InterestHistory(np.zeros(len(users) + 1, np.int64), empty.astype(np.int64), empty, empty)
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    weight = behavior_weights(index.raw_behaviors)[index.raw_beh[rows]]
    as_of_at = as_of_us if np.isscalar(as_of_us) else as_of_us[key // n_raw]
    age_days = (as_of_at - index.ts_us[rows]) / 1e6 / SECONDS_PER_DAY
    w = np.add.reduceat(weight, starts)
    d = np.add.reduceat(weight * np.exp2(-age_days / half_life_days), starts)
    entry_row = key[starts] // n_raw
    counts = np.bincount(entry_row, minlength=len(users))
    with np.errstate(invalid="ignore", divide="ignore"):
        history = w / np.bincount(entry_row, weights=w, minlength=len(users))[entry_row]
        current = d / np.bincount(entry_row, weights=d, minlength=len(users))[entry_row]
    return InterestHistory(np.r_[0, np.cumsum(counts)].astype(np.int64),
                           np.asarray(code_of_raw, np.int64)[key[starts] % n_raw], history, current)


def _count_before(index: EventIndex, users: np.ndarray, as_of_us: int | np.ndarray) -> np.ndarray:
    """Events of each user strictly before ``as_of_us`` (one time, or one per user of ``users``)."""
    if index.n_events == 0 or int(index.ts_us.max()) < np.min(as_of_us, initial=np.iinfo(np.int64).max):
        return np.diff(index.bounds)[users]
    user_of = index.user_of_event()
    if np.isscalar(as_of_us):
        return np.bincount(user_of[index.ts_us < as_of_us], minlength=index.n_users)[users]
    per_user = np.full(index.n_users, np.iinfo(np.int64).min)
    per_user[users] = as_of_us
    return np.bincount(user_of[index.ts_us < per_user[user_of]], minlength=index.n_users)[users]
