"""Online requests scored together: the batcher's leader/follower hand-over, and the vectorised
pass over a batch (each request at its own as-of time) giving exactly the answers of one call
per request. The product's real Keras model and encoder; no services."""

from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pyarrow as pa
import pytest

from pipelines.config import load_settings
from pipelines.features.examples import EncodingConfig
from pipelines.features.vocab import build_vocab
from pipelines.model.network import Predictor, build_model
from pipelines.model.pyfunc import ModelCore
from pipelines.online.batching import Batcher
from pipelines.online.state import INPUT_SCHEMA, AnswerCache, OnlineState, Pending, prepare, score_batch, user_ranges
from pipelines.serving.engine import CoreScorer
from tests.test_engine import events


def test_requests_waiting_together_run_as_one_batch_in_their_order():
    batcher: Batcher[int] = Batcher(max_items=10)
    calls: list[list[int]] = []
    entered, gate = threading.Event(), threading.Event()

    def score(items):
        calls.append(list(items))
        if len(calls) == 1:
            entered.set()
            gate.wait(30)
        return [item * 10 for item in items]

    answers: dict[int, int] = {}

    def ask(i: int) -> None:
        answers[i] = batcher.run(i, score)

    first = threading.Thread(target=ask, args=(0,))
    first.start()
    assert entered.wait(30)  # request 0 leads and is busy ...
    others = [threading.Thread(target=ask, args=(i,)) for i in range(1, 6)]
    for t in others:
        t.start()
    while len(batcher._pending) < 5:  # ... while the others queue up behind it
        threading.Event().wait(0.01)
    gate.set()
    for t in [first, *others]:
        t.join(30)
    assert calls[0] == [0] and sorted(calls[1]) == [1, 2, 3, 4, 5] and len(calls) == 2
    assert answers == {i: i * 10 for i in range(6)} and (batcher.batches, batcher.items) == (2, 6)


def test_one_bad_request_does_not_fail_the_others_of_its_batch():
    batcher: Batcher[int] = Batcher()
    entered, gate = threading.Event(), threading.Event()
    calls: list[list[int]] = []

    def score(items):
        calls.append(list(items))
        if len(calls) == 1:
            entered.set()
            gate.wait(30)
        if -1 in items:
            raise ValueError(f"bad item among {list(items)}")
        return list(items)

    answers: dict[int, object] = {}

    def ask(i: int) -> None:
        try:
            answers[i] = batcher.run(i, score)
        except ValueError as exc:
            answers[i] = exc

    threads = [threading.Thread(target=ask, args=(0,))]
    threads[0].start()
    assert entered.wait(30)
    threads += [threading.Thread(target=ask, args=(i,)) for i in (-1, 2, 3)]
    for t in threads[1:]:
        t.start()
    while len(batcher._pending) < 3:
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(30)
    assert sorted(calls[1]) == [-1, 2, 3]  # together first, then each alone
    assert answers[0] == 0 and answers[2] == 2 and answers[3] == 3
    assert isinstance(answers[-1], ValueError) and "[-1]" in str(answers[-1])
    assert batcher.run(4, score) == 4


def test_a_batch_answers_each_request_as_if_it_were_alone():
    table = events(n_users=30, seed=5)
    vocab = build_vocab([f"c{i}" for i in range(10)], 1, ["view", "buy", "cart"])
    config = EncodingConfig(horizon_days=1, lookback_days=3, seq_len=5)
    core = ModelCore(Predictor(build_model(vocab.n_categories, vocab.n_behaviors, 5, embed_dim=8)), vocab, config)
    history = table.select(INPUT_SCHEMA.names).cast(INPUT_SCHEMA).sort_by([("user_id", "ascending"),
                                                                            ("ts", "ascending")])
    state = OnlineState({"model_name": "m", "model_version": "7", "model_uri": "models:/m/7"}, CoreScorer(core),
                        dt.date(2024, 1, 3), history, user_ranges(history["user_id"]), "now", AnswerCache(0))
    settings = load_settings(environ={}, horizon_days=1, lookback_days=3, top_k=4, scoring_top_n=6)
    users = sorted(state.rows_of)[:8]
    pending = []
    for i, user in enumerate(users):  # every other request posts an event at its own time of day
        posted = INPUT_SCHEMA.empty_table()
        if i % 2:
            posted = pa.table({"user_id": [user], "item_id": ["i"], "category_id": [f"c{i}"], "behavior": ["buy"],
                               "ts": pa.array([dt.datetime(2024, 1, 4, i, 30, tzinfo=dt.UTC)], INPUT_SCHEMA.field("ts").type)}
                              ).cast(INPUT_SCHEMA)
        pending.append(prepare(state, user, posted))
    assert all(isinstance(p, Pending) for p in pending) and len({p.as_of for p in pending}) == 5
    together = score_batch(state, settings, pending)
    for p, answer in zip(pending, together, strict=True):
        alone = score_batch(state, settings, [p])[0]
        assert answer["user_id"] == p.user and answer["as_of"] == p.as_of.isoformat()
        for key in ("predicted_categories", "current_categories", "emerging_categories", "fading_categories",
                    "as_of_date", "history_events", "posted_events"):
            assert answer[key] == alone[key], (p.user, key)
        np.testing.assert_allclose(answer["predicted_scores"], alone["predicted_scores"], rtol=1e-5)
        np.testing.assert_allclose(answer["migration_score"], alone["migration_score"], rtol=1e-5, atol=1e-7)
