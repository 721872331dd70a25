"""What the online endpoint holds in memory, and how it scores one user.

An :class:`OnlineState` is built once per reload (:func:`load_state`): the champion pinned to
its version, its scorer (this product's models on the fast core, any other pyfunc through
``predict``; :func:`pipelines.serving.scoring.load_scorer`), and the clean events of the look-back
window that ends on the latest clean day D, sorted by user with a per-user row range, so a
request slices its user's history without touching storage.

The answer of a user who posts no events is kept per state (:class:`AnswerCache`,
``IM_ONLINE_CACHE_USERS``): a returning user costs a lookup, not a model call.

A request (:func:`prepare`, then :func:`score_batch` with the requests that arrive with it)
scores the user's history plus the events it posts (events since the last partition) with
``as_of`` = the end of D, or just after the latest posted event when that is later, and returns
the contract row (:data:`~pipelines.contracts.PREDICTION_SCHEMA`), the same columns the daily
partition holds. Bad requests raise :class:`RequestError` with the HTTP
status and a message naming the field.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.contracts import EVENT_SCHEMA, MODEL_INPUT_COLUMNS
from pipelines.data.events import iter_clean_events
from pipelines.features.batch import encode_each, index_events
from pipelines.platform import layout, storage
from pipelines.platform.dates import end_of_day, epoch_us, lookback_window
from pipelines.serving.contract import Ranked, contract_columns
from pipelines.serving.engine import CoreScorer, RowSpec, category_space, prediction_table
from pipelines.serving.interests import interest_history, params_from_settings
from pipelines.serving.scoring import load_scorer, resolve_champion

log = logging.getLogger(__name__)

INPUT_SCHEMA = pa.schema([EVENT_SCHEMA.field(c) for c in MODEL_INPUT_COLUMNS])
EVENT_FIELDS = ("item_id", "category_id", "behavior", "ts")
_ONE_US = dt.timedelta(microseconds=1)


class AnswerCache:
    """A thread-safe LRU of at most ``size`` answers by user id (``size`` 0: off). A state never
    changes once built (a reload builds a new one, with an empty cache), so the answer of a user
    who posts no events stays right for as long as its state serves."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._answers: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, user: str) -> dict[str, Any] | None:
        if self.size <= 0:
            return None
        with self._lock:
            answer = self._answers.get(user)
            if answer is not None:
                self._answers.move_to_end(user)
            return answer

    def put(self, user: str, answer: dict[str, Any]) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._answers[user] = answer
            self._answers.move_to_end(user)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)


class RequestError(ValueError):
    """A request the endpoint refuses: ``status`` (4xx/503) and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class OnlineState:
    """One loaded champion and the look-back history it scores against (immutable: a reload
    builds a new one and swaps the reference)."""

    model: dict[str, Any]
    scorer: Any
    day: dt.date | None
    events: pa.Table  # INPUT_SCHEMA, sorted by user_id
    rows_of: dict[str, tuple[int, int]]
    loaded_at: str
    answers: AnswerCache = dataclasses.field(default_factory=lambda: AnswerCache(0), compare=False)

    @property
    def version(self) -> str:
        return str(self.model["model_version"])


def latest_clean_day(settings: Settings) -> dt.date | None:
    days = storage.list_partitions(settings, layout.CLEAN)
    return max(days) if days else None


def load_state(settings: Settings) -> OnlineState:
    """Pin the champion, load its scorer and index the look-back history of the latest clean day.
    Raises :class:`~pipelines.serving.scoring.NoChampionError` when there is no champion."""
    model = resolve_champion(settings)
    scorer = load_scorer(settings, model["model_uri"])
    day = latest_clean_day(settings)
    tables = []
    if day is not None:
        start, end = lookback_window(day, settings.lookback_days)
        tables = [t.select(MODEL_INPUT_COLUMNS).cast(INPUT_SCHEMA)
                  for t in iter_clean_events(settings, start, end, list(MODEL_INPUT_COLUMNS))]
    events = pa.concat_tables(tables) if tables else INPUT_SCHEMA.empty_table()
    events = events.sort_by([("user_id", "ascending"), ("ts", "ascending")]).combine_chunks()
    state = OnlineState(model, scorer, day, events, user_ranges(events["user_id"]),
                        dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), AnswerCache(settings.online_cache_users))
    log.info("online state: %s version %s, clean day %s, %d events of %d users", model["model_name"],
             state.version, day, events.num_rows, len(state.rows_of))
    return state


def user_ranges(users: pa.ChunkedArray) -> dict[str, tuple[int, int]]:
    """user id -> (first row, end row) of a column sorted by user id."""
    if len(users) == 0:
        return {}
    codes = pc.dictionary_encode(users.combine_chunks())
    idx = codes.indices.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    ends = np.r_[starts[1:], len(idx)]
    names = codes.dictionary.take(pa.array(idx[starts])).to_pylist()
    return {name: (int(s), int(e)) for name, s, e in zip(names, starts, ends, strict=True)}


def parse_request(payload: Any, max_events: int) -> tuple[str, pa.Table]:
    """The user id and the posted events (INPUT_SCHEMA) of a request body; :class:`RequestError` 400
    naming the field otherwise."""
    if not isinstance(payload, dict):
        raise RequestError(400, "the body must be a JSON object {\"user_id\": ..., \"events\": [...]}")
    user = payload.get("user_id")
    if not isinstance(user, str | int) or isinstance(user, bool) or str(user) == "":
        raise RequestError(400, "'user_id' is required: a non-empty string (or integer)")
    user = str(user)
    events = payload.get("events") or []
    if not isinstance(events, list):
        raise RequestError(400, "'events' must be a list of {item_id, category_id, behavior, ts} objects")
    if len(events) > max_events:
        raise RequestError(400, f"'events' holds {len(events)} events; at most {max_events} per request")
    columns: dict[str, list[Any]] = {c: [] for c in EVENT_FIELDS}
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise RequestError(400, f"events[{i}] must be an object with {list(EVENT_FIELDS)}")
        for name in EVENT_FIELDS:
            value = event.get(name)
            if value is None or (isinstance(value, str) and not value.strip()) or isinstance(value, bool) \
                    or not isinstance(value, str | int):
                raise RequestError(400, f"events[{i}].{name} is missing or not a string")
            columns[name].append(str(value))
        columns["ts"][-1] = _parse_ts(columns["ts"][-1], i)
    table = pa.table({"user_id": pa.array([user] * len(events), pa.string()),
                      **{c: pa.array(columns[c], pa.string()) for c in EVENT_FIELDS[:3]},
                      "ts": pa.array(columns["ts"], INPUT_SCHEMA.field("ts").type)})
    return user, table.select(MODEL_INPUT_COLUMNS).cast(INPUT_SCHEMA)


def _parse_ts(text: str, i: int) -> dt.datetime:
    try:
        ts = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise RequestError(400, f"events[{i}].ts {text!r} is not an ISO-8601 timestamp") from exc
    if ts.tzinfo is None:
        raise RequestError(400, f"events[{i}].ts {text!r} has no time zone (give UTC, e.g. ...+00:00 or Z)")
    return ts.astimezone(dt.UTC)


@dataclasses.dataclass(frozen=True)
class Pending:
    """One request to score: the user, its rows of the loaded history, what it posts, its as-of time."""

    user: str
    lo: int
    hi: int
    posted: pa.Table
    as_of: dt.datetime

    @property
    def as_of_date(self) -> dt.date:
        return (self.as_of - _ONE_US).date()  # the day the last counted instant is in


def prepare(state: OnlineState, user: str, posted: pa.Table) -> dict[str, Any] | Pending:
    """The cached answer of ``user`` (no posted events), or what scoring it needs."""
    if posted.num_rows == 0 and (cached := state.answers.get(user)) is not None:
        return cached
    lo, hi = state.rows_of.get(user, (0, 0))
    if hi == lo and posted.num_rows == 0:
        raise RequestError(404, f"user {user!r} has no events in the look-back window of {state.day} and the "
                           f"request posts none: post its events (\"events\": [...]) to score it")
    as_of = end_of_day(state.day) if state.day else dt.datetime.min.replace(tzinfo=dt.UTC)
    if posted.num_rows:
        as_of = max(as_of, pc.max(posted["ts"]).as_py() + _ONE_US)
    return Pending(user, lo, hi, posted, as_of)


def score_batch(state: OnlineState, settings: Settings, batch: Sequence[Pending]) -> list[dict[str, Any]]:
    """The answers of ``batch`` (in its order): this product's models in one vectorised call (each
    request at its own as-of time), any other pyfunc one request at a time."""
    spec = RowSpec(as_of=batch[0].as_of, as_of_date=batch[0].as_of_date, horizon_days=settings.horizon_days,
                   model_name=state.model["model_name"], model_version=state.version,
                   params=params_from_settings(settings), top_k=settings.top_k, top_n=settings.scoring_top_n,
                   batch_users=settings.scoring_batch_users)
    if isinstance(state.scorer, CoreScorer):
        rows = _score_on_core(state.scorer.core, [_events_of(state, p) for p in batch],
                              np.array([epoch_us(p.as_of) for p in batch], np.int64), spec).to_pylist()
    else:
        rows = []
        for pending in batch:
            one = dataclasses.replace(spec, as_of=pending.as_of, as_of_date=pending.as_of_date)
            found = [row for table in state.scorer.score(_events_of(state, pending), one) for row in table.to_pylist()]
            if len(found) != 1:
                raise RequestError(500, f"the scorer returned {len(found)} rows for user {pending.user!r}; expected 1")
            rows.extend(found)
    answers = []
    for pending, row in zip(batch, rows, strict=True):
        row["user_id"], row["as_of_date"] = pending.user, pending.as_of_date.isoformat()
        answers.append({**row, "as_of": pending.as_of.isoformat(), "model_uri": state.model["model_uri"],
                        "loaded_day": state.day.isoformat() if state.day else None,
                        "history_events": pending.hi - pending.lo, "posted_events": pending.posted.num_rows})
    return answers


def _events_of(state: OnlineState, pending: Pending) -> pa.Table:
    history = state.events.slice(pending.lo, pending.hi - pending.lo)
    return pa.concat_tables([history, pending.posted]) if pending.posted.num_rows else history


def _score_on_core(core: Any, events: list[pa.Table], asof_us: np.ndarray, spec: RowSpec) -> pa.Table:
    """:meth:`CoreScorer.score` for the requests of one batch in one pass: the same encoder, model
    call and contract columns, each request (its events under a key of its own, in batch order) at
    its own as-of time."""
    keyed = [t.set_column(0, "user_id", pa.array([f"{i:08d}"] * t.num_rows, pa.string())) for i, t in enumerate(events)]
    index = index_events(pa.concat_tables(keyed), core.vocab)  # users sorted by key: the batch order
    examples = encode_each(index, asof_us, core.vocab, core.config)
    categories, code_of_raw = category_space(core.vocab, index)
    history = interest_history(index, examples.user, asof_us[examples.user], spec.params.half_life_days, code_of_raw)
    inputs = examples.model_inputs(core.config.seq_len, trim=core.predictor.sparse)
    codes, values = core.predictor.top_n(inputs, spec.top_n)
    ranked = Ranked(codes, values * core.scale(index, examples.user, asof_us[examples.user])[:, None])
    columns = contract_columns(ranked, categories, history, spec.params, top_k=spec.top_k)
    return prediction_table(index.users.take(pa.array(examples.user)), columns, spec)
