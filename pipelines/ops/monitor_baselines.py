"""The baselines of a published day, as contract rows the outcomes scorer can judge next to the model's.

For the users of a published partition of day D (as-of = end of D), from the clean events of the
look-back window only (nothing after D), with the baseline scorers of
:mod:`pipelines.model.baselines` and the contract code of :mod:`pipelines.serving.contract`:

- ``popularity``: the share of the look-back's active users who touched each category in the
  last H days of the look-back (a probability of touching it in an H-day window);
- ``decayed_frequency``: the user's current interest (decayed shares, half-life
  ``IM_INTEREST_HALF_LIFE_DAYS``, the published ``current_strengths``);
- ``markov``: P(next category | the user's most recent category), transitions counted between
  consecutive events of each user in the look-back, smoothed toward popularity.

The baselines are refitted on every day's look-back (they never age); the category space is the
look-back's categories after the reserved codes 0 and 1 (:data:`pipelines.features.vocab.RESERVED`).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.features.batch import EventIndex, index_events
from pipelines.features.examples import HIST_FEATURES
from pipelines.features.vocab import RESERVED, Vocab
from pipelines.model.baselines import fit_baselines, score_decayed_frequency, score_markov, score_popularity
from pipelines.platform.dates import epoch_us
from pipelines.serving.contract import columns_from_scores
from pipelines.serving.interests import InterestHistory, InterestParams, interest_history

MONITORED_BASELINES = ("decayed_frequency", "markov", "popularity")
_DECAY_FEATURE = "decay_mid"  # the history feature slot the decayed shares are put in
_BATCH_CELLS = 4_000_000  # users x categories per batch of dense score matrices (~32 MB each)


def _vocab(events: pa.Table) -> Vocab:
    categories = tuple(sorted(set(events["category_id"].to_pylist())))
    behaviors = tuple(sorted(set(events["behavior"].to_pylist())))
    return Vocab(categories=categories, behaviors=behaviors)


def _statistics(index: EventIndex, as_of_us: int, horizon_days: int, n_categories: int) -> dict:
    """``baseline_statistics``-shaped counts from the look-back: label counts = users touching
    each category in [as_of - H, as_of) over the users active then; consecutive-event transitions."""
    recent = index.ts_us >= as_of_us - horizon_days * 86_400 * 1_000_000
    user = index.user_of_event()
    pairs = np.unique(user[recent] * n_categories + index.cat[recent])
    label_counts = np.bincount(pairs % n_categories, minlength=n_categories)
    same_user = np.ones(index.n_events, bool)
    same_user[index.bounds[:-1]] = False
    keep = same_user[1:]
    moves = index.cat[:-1][keep].astype(np.int64) * n_categories + index.cat[1:][keep]
    uniq, counts = np.unique(moves, return_counts=True)
    return {"n_train_examples": int(len(np.unique(user[recent]))), "label_counts": label_counts.tolist(),
            "transitions": np.stack([uniq // n_categories, uniq % n_categories, counts], axis=1).tolist()}


def _inputs(index: EventIndex, rows: np.ndarray, history: InterestHistory) -> dict[str, np.ndarray]:
    """The sparse inputs the baseline scorers read: the last category (``seq_cat``, one column) and
    the decayed shares in the ``decay_mid`` history feature slot."""
    present = rows >= 0  # every indexed user has at least one event: its last one ends its range
    last = np.where(present, index.cat[np.maximum(index.bounds[np.maximum(rows, 0) + 1] - 1, 0)], 0)
    width = max(int(np.diff(history.offsets).max(initial=0)), 1)
    hist_cat = np.zeros((len(rows), width), np.int64)
    hist_feat = np.zeros((len(rows), width, len(HIST_FEATURES)))
    entry_row = history.row_of_entry()
    slot = np.arange(len(entry_row)) - history.offsets[entry_row]
    hist_cat[entry_row, slot] = history.code
    hist_feat[entry_row, slot, HIST_FEATURES.index(_DECAY_FEATURE)] = history.current
    return {"seq_cat": last.astype(np.int64)[:, None], "hist_cat": hist_cat, "hist_feat": hist_feat}


def baseline_rows(events: pa.Table, user_ids: list[str], as_of: dt.datetime, *, horizon_days: int,
                  lookback_days: int, params: InterestParams, top_k: int, top_n: int) -> dict[str, pa.Table]:
    """Contract rows (``user_id`` + the contract columns) of every :data:`MONITORED_BASELINES`
    for ``user_ids``, in that order, from ``events`` (the look-back's clean events, EVENT_SCHEMA)
    as of ``as_of``. A user without look-back events gets popularity-only lists."""
    events = events.filter(pc.less(events["ts"], pa.scalar(as_of, events.schema.field("ts").type)))
    vocab = _vocab(events)
    n_categories = vocab.n_categories
    index = index_events(events, vocab)
    position = {u: i for i, u in enumerate(index.users.to_pylist())}
    rows = np.array([position.get(u, -1) for u in user_ids], np.int64)
    as_of_us = epoch_us(as_of)
    present = np.flatnonzero(rows >= 0)
    known = interest_history(index, rows[present], as_of, params.half_life_days, index.cat_of_raw,
                             lookback_days=lookback_days)
    counts = np.zeros(len(rows), np.int64)  # users without look-back events: no entries
    counts[present] = np.diff(known.offsets)
    history = InterestHistory(np.r_[0, np.cumsum(counts)].astype(np.int64), known.code, known.history, known.current)
    models = fit_baselines(_statistics(index, as_of_us, horizon_days, n_categories), n_categories, _DECAY_FEATURE)
    categories = pa.array(vocab.category_ids().tolist(), pa.string())
    scorers = {"decayed_frequency": score_decayed_frequency, "markov": score_markov, "popularity": score_popularity}
    parts: dict[str, list[pa.Table]] = {name: [] for name in MONITORED_BASELINES}
    batch = max(1, _BATCH_CELLS // n_categories)  # dense [B, V] score matrices stay bounded
    for lo in range(0, len(rows), batch):
        pick = np.arange(lo, min(lo + batch, len(rows)))
        part_history = history.take(pick)
        inputs = _inputs(index, rows[pick], part_history)
        users = pa.array(user_ids[lo:lo + batch], pa.string())
        for name in MONITORED_BASELINES:
            columns = columns_from_scores(scorers[name](models, inputs), categories, part_history, params,
                                          top_k=top_k, top_n=top_n, first=RESERVED)
            parts[name].append(pa.table({"user_id": users, **columns}))
    out = {name: pa.concat_tables(tables) for name, tables in parts.items() if tables}
    if not out:  # no user: empty tables with the contract columns
        empty = history.take(np.zeros(0, np.int64))
        inputs = _inputs(index, rows[:0], empty)
        for name in MONITORED_BASELINES:
            columns = columns_from_scores(scorers[name](models, inputs), categories, empty, params,
                                          top_k=top_k, top_n=top_n, first=RESERVED)
            out[name] = pa.table({"user_id": pa.array([], pa.string()), **columns})
    return out
