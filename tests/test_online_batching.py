"""Online requests scored together: the endpoint's batch scorer, and the vectorised
pass over a batch (each request at its own as-of time) giving exactly the answers of one call
per request. The product's real Keras model and encoder; no services."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading

import numpy as np
import pyarrow as pa

from pipelines.config import load_settings
from pipelines.features.examples import EncodingConfig
from pipelines.features.vocab import build_vocab
from pipelines.model.core import ModelCore
from pipelines.model.network import Predictor, build_model
from pipelines.online.server import BatchScorer
from pipelines.online.state import (
    INPUT_SCHEMA,
    AnswerCache,
    OnlineState,
    Pending,
    prepare,
    score_batch,
    user_ranges,
)
from pipelines.serving.engine import CoreScorer
from tests.test_engine import events


def _first_then_together(answer, rest: list[int]) -> tuple[list[list[int]], list[object], BatchScorer]:
    """Submit request 0; while the scorer is busy with it, submit ``rest``; then let it go on.
    ``answer(pendings)`` is the score function's work. Returns (the batches the scorer was called
    with, every request's answer or exception, in submission order, the scorer)."""
    calls: list[list[int]] = []
    entered, gate = threading.Event(), threading.Event()

    def score(state, settings, pendings):
        calls.append(list(pendings))
        if len(calls) == 1:
            entered.set()
            gate.wait(30)
        return answer(pendings)

    scorer = BatchScorer(load_settings(environ={}, online_batch_requests=10), score)

    async def run() -> list[object]:
        first = scorer.submit("state", 0)
        while not entered.is_set():  # request 0 is being scored ...
            await asyncio.sleep(0.01)
        others = [scorer.submit("state", i) for i in rest]  # ... while the others arrive
        gate.set()
        return list(await asyncio.gather(first, *others, return_exceptions=True))

    try:
        return calls, asyncio.run(run()), scorer
    finally:
        scorer.close()


def test_requests_waiting_together_are_scored_as_one_batch_in_their_order():
    calls, answers, scorer = _first_then_together(lambda pendings: [p * 10 for p in pendings], [1, 2, 3, 4, 5])
    assert answers == [0, 10, 20, 30, 40, 50]
    assert calls == [[0], [1, 2, 3, 4, 5]] and (scorer.batches, scorer.scored) == (2, 6)


def test_one_bad_request_does_not_fail_the_others_of_its_batch():
    def answer(pendings):
        if -1 in pendings:
            raise ValueError(f"bad item among {list(pendings)}")
        return list(pendings)

    calls, (first, bad, two, three), _ = _first_then_together(answer, [-1, 2, 3])
    assert calls[1] == [-1, 2, 3] and calls[2:] == [[-1], [2], [3]]  # together first, then each alone
    assert (first, two, three) == (0, 2, 3) and isinstance(bad, ValueError) and "[-1]" in str(bad)


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
