"""The scoring engine: the events of a bucket of users -> prediction rows (PREDICTION_SCHEMA).

Two scorers, one output:

- :class:`CoreScorer` runs this product's own models on their fast core
  (:class:`~pipelines.model.core.ModelCore`): the batch encoder on Arrow data, the network in numpy
  (:mod:`pipelines.model.inference`) or as a fixed-signature ``tf.function``, the top-n taken
  inside it, batches ordered by history size so padding stays small and the [B, V] tensors stay
  within a fixed budget.
- :class:`PyfuncScorer` calls any registered pyfunc through its public contract
  (``predict(events_df, params={"as_of", "top_n"})``, one row per user with ``categories`` and
  ``scores``), so a champion from elsewhere still scores; its output is checked and ranked as is.

Both hand their ranking and the users' interests (:mod:`~pipelines.serving.interests`) to
:func:`pipelines.serving.contract.contract_columns`, which builds the columns for the whole batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import threadpoolctl

from pipelines.contracts import MODEL_INPUT_COLUMNS, PREDICTION_SCHEMA
from pipelines.features.batch import EventIndex, encode, index_events
from pipelines.features.vocab import RESERVED, Vocab
from pipelines.serving.contract import Ranked, ScoringError, contract_columns
from pipelines.serving.interests import InterestParams, interest_history

# Budgets of one model call: rows x categories of the [B, V] output, rows x history slots.
_CELL_BUDGET = 16_000_000
_SLOT_BUDGET = 1_000_000
# Model calls in flight at once for a network that may run in several threads (numpy releases the GIL
# in its array work): with two, both cores work while this thread builds inputs and columns.
_MODEL_THREADS = 2


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """What every row of one scoring run shares, and how many categories it lists."""

    as_of: dt.datetime
    as_of_date: dt.date
    horizon_days: int
    model_name: str
    model_version: str
    params: InterestParams
    top_k: int
    top_n: int
    batch_users: int


def prediction_table(users: pa.Array, columns: dict[str, pa.Array], spec: RowSpec) -> pa.Table:
    """A PREDICTION_SCHEMA table of ``users`` and their contract columns."""
    n = len(users)
    fixed = {
        "user_id": users,
        "as_of_date": pa.array(np.full(n, spec.as_of_date, "datetime64[D]"), pa.date32()),
        "horizon_days": pa.array(np.full(n, spec.horizon_days, np.int32)),
        "model_name": pa.array(np.full(n, spec.model_name, object), pa.string()),
        "model_version": pa.array(np.full(n, spec.model_version, object), pa.string()),
    }
    return pa.Table.from_arrays([fixed.get(name, columns.get(name)) for name in PREDICTION_SCHEMA.names],
                                schema=PREDICTION_SCHEMA)


class CoreScorer:
    """This product's model on its fast core (see the module doc)."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def score(self, events: pa.Table, spec: RowSpec) -> Iterator[pa.Table]:
        """Prediction rows of every user in ``events`` (MODEL_INPUT_COLUMNS), one table per batch.

        The model runs in worker threads (TensorFlow and numpy release the GIL) while this thread
        builds the next batch's inputs and the previous batch's columns: one thread for the Keras
        model (TensorFlow spreads one call over the cores itself), :data:`_MODEL_THREADS` for the
        numpy network, each call's BLAS then single-threaded."""
        vocab, config, predictor = self.core.vocab, self.core.config, self.core.predictor
        index = index_events(events, vocab)
        examples = encode(index, [spec.as_of], vocab, config, with_labels=False)
        categories, code_of_raw = category_space(vocab, index)
        history = interest_history(index, examples.user, spec.as_of, spec.params.half_life_days, code_of_raw)
        scale = self.core.scale(index, examples.user, spec.as_of)  # P(active): unconditional probabilities
        seq_lengths = np.diff(examples.seq_offsets)
        order = np.lexsort((examples.hist_counts(), seq_lengths))  # similar rows together: little padding

        def rows_of(batch: np.ndarray, ranked: concurrent.futures.Future) -> pa.Table:
            codes, values = ranked.result()
            columns = contract_columns(Ranked(codes, values * scale[batch][:, None]), categories,
                                       history.take(batch), spec.params, top_k=spec.top_k)
            return prediction_table(index.users.take(pa.array(examples.user[batch])), columns, spec)

        batches = list(_batches(examples.hist_counts()[order], vocab.n_categories, spec.batch_users))
        workers = min(_MODEL_THREADS, len(batches)) if getattr(predictor, "thread_safe", False) else 1
        # several model threads: each one's matrix products single-threaded, or BLAS threads fight them
        # for the cores (measured: 2.2-2.6 s instead of 1.3-1.4 s for 50k users)
        blas = threadpoolctl.threadpool_limits(1, user_api="blas") if workers > 1 else contextlib.nullcontext()
        with blas, concurrent.futures.ThreadPoolExecutor(max_workers=workers) as model_threads:
            pending: collections.deque = collections.deque()
            for rows in batches:
                batch = order[rows]
                inputs = examples.take(batch).model_inputs(config.seq_len, trim=predictor.sparse)
                pending.append((batch, model_threads.submit(predictor.top_n, inputs, spec.top_n)))
                if len(pending) > workers:
                    yield rows_of(*pending.popleft())
            while pending:
                yield rows_of(*pending.popleft())


def category_space(vocab: Vocab, index: EventIndex) -> tuple[pa.Array, np.ndarray]:
    """The codes of a vocabulary model's contract columns: 0..V-1 are the score columns (the
    vocabulary), V.. the raw ids of the events it does not know; and the code of each raw id."""
    known = index.cat_of_raw >= RESERVED
    extra = np.flatnonzero(~known)
    code_of_raw = index.cat_of_raw.astype(np.int64)
    code_of_raw[extra] = vocab.n_categories + np.arange(len(extra))
    categories = pa.concat_arrays([vocab.category_id_array(), index.raw_categories.take(pa.array(extra, pa.int64()))])
    return categories, code_of_raw


def _batches(hist_counts: np.ndarray, n_categories: int, batch_users: int) -> Iterator[np.ndarray]:
    """Consecutive row ranges with at most ``batch_users`` rows, rows x categories within
    :data:`_CELL_BUDGET` and rows x (the most history categories in the range) within
    :data:`_SLOT_BUDGET`."""
    n = len(hist_counts)
    limit = max(1, min(batch_users, _CELL_BUDGET // max(n_categories, 1)))
    widest = np.maximum.accumulate(np.maximum(hist_counts, 1)) if n else hist_counts
    start = 0
    while start < n:
        stop = min(n, start + limit)
        # the slot budget only binds for the widest rows: shrink until rows x widest fits
        while stop - start > 1 and (stop - start) * widest[stop - 1] > _SLOT_BUDGET:
            stop = start + max(1, _SLOT_BUDGET // int(widest[stop - 1]))
        yield np.arange(start, stop)
        start = stop


class PyfuncScorer:
    """Any registered pyfunc, through its public ``predict`` contract (see the module doc)."""

    def __init__(self, model: Any, model_uri: str, *, naive_ts: bool) -> None:
        self.model, self.model_uri, self.naive_ts = model, model_uri, naive_ts

    def score(self, events: pa.Table, spec: RowSpec) -> Iterator[pa.Table]:
        """Prediction rows of every user in ``events``, ``spec.batch_users`` users per ``predict``
        call (each user's events sorted by time, as the per-user scoring gave them)."""
        index = index_events(events, Vocab((), ()))
        raw_codes = np.arange(len(index.raw_categories))
        for lo in range(0, index.n_users, spec.batch_users):
            hi = min(lo + spec.batch_users, index.n_users)
            rows = pa.array(index.order[index.bounds[lo]:index.bounds[hi]])
            frame = events.take(rows).select(MODEL_INPUT_COLUMNS).to_pandas()
            if self.naive_ts:
                frame["ts"] = frame["ts"].dt.tz_convert(None)
            output = self.model.predict(frame, params={"as_of": spec.as_of.isoformat(), "top_n": spec.top_n})
            users = index.users.slice(lo, hi - lo)
            ranked, categories = self._ranked(output, users, index.raw_categories)
            history = interest_history(index, np.arange(lo, hi), spec.as_of, spec.params.half_life_days, raw_codes)
            yield prediction_table(users, contract_columns(ranked, categories, history, spec.params,
                                                           top_k=spec.top_k), spec)

    def _ranked(self, output: Any, users: pa.Array, raw_categories: pa.Array) -> tuple[Ranked, pa.Array]:
        """The pyfunc's rows as a :class:`Ranked` of ``users`` (in that order; a user's first row
        counts) over a category space that starts with ``raw_categories``; raises
        :class:`ScoringError` when the output breaks the contract."""
        missing_cols = {"user_id", "categories", "scores"} - set(output.columns)
        if missing_cols:
            raise ScoringError(f"{self.model_uri} returned columns {list(output.columns)}; missing "
                               f"{sorted(missing_cols)}")
        try:
            out_users = pa.array(output["user_id"].astype(str).to_numpy(), pa.string())
            cats = pa.array(list(output["categories"]))
            cats = cats.cast(pa.list_(pa.string())) if len(cats) else pa.array([], pa.list_(pa.string()))
            scores = pa.array(list(output["scores"]))
            scores = scores.cast(pa.list_(pa.float64())) if len(scores) else pa.array([], pa.list_(pa.float64()))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
            raise ScoringError(f"{self.model_uri}: 'categories' must hold lists of ids and 'scores' lists of "
                               f"numbers ({exc})") from exc
        lengths = pc.list_value_length(cats).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        score_lengths = pc.list_value_length(scores).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        bad = np.flatnonzero(lengths != score_lengths)
        if len(bad):
            raise ScoringError(f"{self.model_uri}: user {out_users[int(bad[0])].as_py()!r} got {lengths[bad[0]]} "
                               f"categories but {score_lengths[bad[0]]} scores")
        found = pc.index_in(users, value_set=out_users)
        absent = np.flatnonzero(pc.is_null(found).to_numpy(zero_copy_only=False))
        if len(absent):
            raise ScoringError(f"{self.model_uri} returned no row for {len(absent)} of {len(users)} users "
                               f"(e.g. {users.take(pa.array(absent[:3])).to_pylist()}); the scoring contract "
                               f"wants one row per input user")
        flat = pc.list_flatten(cats)
        extra = pc.unique(flat.filter(pc.is_null(pc.index_in(flat, value_set=raw_categories))))
        categories = pa.concat_arrays([raw_categories, extra])
        codes_flat = pc.index_in(flat, value_set=categories).to_numpy(zero_copy_only=False).astype(np.int64)
        values_flat = pc.list_flatten(scores).to_numpy(zero_copy_only=False).astype(np.float64)
        wrong = np.flatnonzero(~(np.isfinite(values_flat) & (values_flat >= 0)))
        if len(wrong):
            owner = int(np.searchsorted(np.cumsum(lengths), wrong[0], side="right"))
            raise ScoringError(f"{self.model_uri}: {len(wrong)} scores are not finite numbers >= 0 (user "
                               f"{out_users[owner].as_py()!r} got {float(values_flat[wrong[0]])}); nothing is published "
                               "(rule: scores_finite_non_negative)")
        source = found.to_numpy(zero_copy_only=False).astype(np.int64)
        take, pos = _ragged_positions(np.r_[0, np.cumsum(lengths)], source)
        row = np.repeat(np.arange(len(users)), lengths[source])
        codes = np.full((len(users), int(lengths[source].max(initial=0))), -1, np.int64)
        values = np.zeros(codes.shape)
        codes[row, pos], values[row, pos] = codes_flat[take], values_flat[take]
        return Ranked(codes, values), categories


def _ragged_positions(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the items of ``rows`` (in that order) and each item's position in its row."""
    lengths = offsets[rows + 1] - offsets[rows]
    starts = np.r_[0, np.cumsum(lengths)][:-1]
    flat = np.arange(lengths.sum()) - np.repeat(starts, lengths)
    return np.repeat(offsets[rows], lengths) + flat, flat
