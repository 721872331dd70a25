"""The interest arithmetic of a prediction row, vectorised over a batch: decayed current interests,
JS migration score, emerging, fading. Hand-computed cases state the definitions; random batches
prove the vectorised contract equal to the per-user reference (tests/reference_interests.py)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.contracts import EVENT_SCHEMA
from pipelines.features.batch import index_events
from pipelines.features.vocab import Vocab, build_vocab
from pipelines.serving import interests as it
from pipelines.serving.contract import (
    CONTRACT_COLUMNS,
    Ranked,
    ScoringError,
    columns_from_scores,
    contract_columns,
)
from pipelines.serving.engine import category_space
from tests import reference_interests as ref

AS_OF = dt.datetime(2024, 1, 10, tzinfo=dt.UTC)
NAMES = ["a", "b", "c", "shoes", "bags", "hats", "toys", "socks", "pins"] + [f"c{i}" for i in range(40)]
CATEGORIES = pa.array(NAMES, pa.string())
CODE = {name: i for i, name in enumerate(NAMES)}


def _events(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    """(user, category, behavior, days before AS_OF) -> canonical event frame."""
    return pd.DataFrame({
        "user_id": [r[0] for r in rows], "item_id": [f"i{i}" for i in range(len(rows))],
        "category_id": [r[1] for r in rows], "behavior": [r[2] for r in rows],
        "ts": pd.to_datetime([AS_OF - dt.timedelta(days=r[3]) for r in rows], utc=True).as_unit("us"),
    })


def _table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame.assign(value=np.nan), schema=EVENT_SCHEMA, preserve_index=False)


def shares(frame: pd.DataFrame, half_life: float = 7.0) -> dict[str, dict[str, tuple[float, float]]]:
    """{user: {category: (current share, history share)}} through :func:`interests.interest_history`."""
    index = index_events(_table(frame), Vocab((), ()))
    history = it.interest_history(index, np.arange(index.n_users), AS_OF, half_life, np.arange(len(index.raw_categories)))
    names = index.raw_categories.to_pylist()
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for row, user in enumerate(index.users.to_pylist()):
        lo, hi = history.offsets[row], history.offsets[row + 1]
        if hi > lo:
            out[user] = {names[c]: (cur, his) for c, cur, his in
                         zip(history.code[lo:hi], history.current[lo:hi], history.history[lo:hi], strict=True)}
    return out


def row(current: dict[str, float], predicted: list[str], scores: list[float], params: it.InterestParams,
        history: dict[str, float] | None = None) -> dict[str, object]:
    """The contract columns of one user with these current shares (history shares default to them)."""
    history = current if history is None else history
    names = sorted(set(current) | set(history))
    interest = it.InterestHistory(np.array([0, len(names)]), np.array([CODE[n] for n in names]),
                                  np.array([history.get(n, 0.0) for n in names]),
                                  np.array([current.get(n, 0.0) for n in names]))
    ranked = Ranked(np.array([[CODE[c] for c in predicted]], np.int64).reshape(1, -1),
                    np.array([scores], np.float64).reshape(1, -1))
    columns = contract_columns(ranked, CATEGORIES, interest, params, top_k=len(predicted))
    return {name: columns[name][0].as_py() for name in CONTRACT_COLUMNS}


def migration(current: dict[str, float], predicted: list[str], scores: list[float]) -> float:
    return float(row(current, predicted, scores, it.InterestParams())["migration_score"])


def test_recent_events_weigh_more_than_old_ones():
    result = shares(_events([("u", "shoes", "view", 15.0), ("u", "bags", "view", 1.0)]))["u"]
    # Two half-lives apart: weights 1/4 and 1, so shares 0.2 and 0.8; history ignores decay.
    assert result["shoes"] == pytest.approx((0.2, 0.5)) and result["bags"] == pytest.approx((0.8, 0.5))


def test_purchases_count_more_than_views():
    result = shares(_events([("u", "shoes", "view", 1.0), ("u", "bags", "buy", 1.0)]))["u"]
    assert result["bags"][0] == pytest.approx(3 * result["shoes"][0])


def test_events_at_or_after_as_of_are_ignored():
    result = shares(_events([("u", "shoes", "view", 1.0), ("u", "bags", "buy", 0.0), ("v", "toys", "view", -1.0)]))
    assert set(result) == {"u"} and result["u"] == {"shoes": pytest.approx((1.0, 1.0))}


def test_a_look_back_leaves_older_events_out():
    frame = _events([("u", "shoes", "view", 15.0), ("u", "bags", "view", 1.0), ("v", "toys", "view", 12.0)])
    index = index_events(_table(frame), Vocab((), ()))
    history = it.interest_history(index, np.arange(2), AS_OF, 7.0, np.arange(3), lookback_days=10.0)
    names = index.raw_categories.to_pylist()
    assert [names[c] for c in history.code] == ["bags"] and history.offsets.tolist() == [0, 1, 1]
    assert history.current.tolist() == [1.0] and history.history.tolist() == [1.0]


def test_as_of_must_be_timezone_aware_and_the_half_life_positive():
    index = index_events(_table(_events([("u", "a", "view", 1.0)])), Vocab((), ()))
    with pytest.raises(ValueError, match="timezone-aware"):
        it.interest_history(index, np.arange(1), dt.datetime(2024, 1, 10), 7.0, np.arange(1))
    with pytest.raises(ValueError, match="half_life_days"):
        it.interest_history(index, np.arange(1), AS_OF, 0.0, np.arange(1))


def test_migration_is_the_probability_of_touching_a_new_category():
    known = {"a": 0.5, "b": 0.5}
    assert migration(known, ["a", "b"], [0.9, 0.8]) == 0.0  # only known categories ranked
    assert migration(known, ["a", "c", "hats"], [0.9, 0.5, 0.2]) == pytest.approx(1 - 0.5 * 0.8)
    assert migration({}, [], []) == 0.0
    assert migration({}, ["a", "b"], [0.5, 0.5]) == pytest.approx(0.75)  # no history: everything is new
    assert migration(known, ["c"], [1.5]) == pytest.approx(1.0, abs=1e-6)  # scores clipped to [0, 1]
    with pytest.raises(ScoringError, match="scores_finite_non_negative"):  # refused, not clipped: a broken model
        migration(known, ["c"], [-0.5])
    # a category listed twice adds up: the same as listing it once with the sum
    assert migration(known, ["c", "a", "c"], [0.2, 0.9, 0.3]) == pytest.approx(0.5)


def test_a_category_touched_in_the_look_back_is_known_however_small_its_share():
    """"New" is "not in the look-back history" (the outcomes scorer's known_sets), not a share bound."""
    out = row({"a": 1.0}, ["a", "c", "hats"], [0.9, 0.4, 0.5], it.InterestParams(), history={"a": 0.999, "c": 0.001})
    assert out["migration_score"] == pytest.approx(0.5)  # only hats is new


def test_migration_does_not_change_with_top_n_once_every_category_is_ranked():
    """Ranked lists cut after every category with a positive score give the same migration score."""
    known = {"a": 0.7, "b": 0.3}
    full = migration(known, ["a", "c", "b", "hats", "toys"], [0.9, 0.4, 0.3, 0.1, 0.0])
    assert migration(known, ["a", "c", "b", "hats"], [0.9, 0.4, 0.3, 0.1]) == pytest.approx(full)


def test_emerging_keeps_model_order_and_skips_known_categories():
    history = {"shoes": 0.995, "socks": 0.005}
    predicted = ["shoes", "bags", "socks", "toys", "hats"]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    two = it.InterestParams(emerging_k=2, emerging_max_history_share=0.01)
    assert row(history, predicted, scores, two)["emerging_categories"] == ["bags", "socks"]
    none_known = it.InterestParams(emerging_k=5, emerging_max_history_share=0.0)
    assert row(history, predicted, scores, none_known)["emerging_categories"] == ["bags", "toys", "hats"]


def test_fading_is_strong_now_and_weak_later_biggest_drop_first():
    current = {"shoes": 0.5, "bags": 0.3, "hats": 0.15, "pins": 0.05}
    # Probabilities: shoes 0.4 (kept), bags 0.1 (fades), hats absent (fades), pins too weak to count.
    five = it.InterestParams(fading_k=5, fading_min_current_share=0.1, fading_max_probability=0.25)
    assert row(current, ["shoes", "bags", "toys"], [0.4, 0.1, 0.5], five)["fading_categories"] == ["bags", "hats"]
    one = it.InterestParams(fading_k=1, fading_min_current_share=0.1, fading_max_probability=0.25)
    assert row(current, ["shoes", "bags", "toys"], [0.4, 0.1, 0.5], one)["fading_categories"] == ["bags"]


def test_a_sole_interest_predicted_likely_is_not_fading_even_when_mass_spreads():
    # Many small probabilities elsewhere shrink shoes' normalised share, not its probability.
    cats = ["shoes"] + [f"c{i}" for i in range(40)]
    params = it.InterestParams(fading_k=5, fading_min_current_share=0.1, fading_max_probability=0.25)
    assert row({"shoes": 1.0}, cats, [0.85] + [0.04] * 40, params)["fading_categories"] == []
    assert row({"shoes": 1.0}, cats, [0.1] + [0.04] * 40, params)["fading_categories"] == ["shoes"]


def test_current_categories_are_the_biggest_shares_ties_by_id():
    current = {"toys": 0.3, "bags": 0.3, "shoes": 0.4}
    out = row(current, ["a"], [0.5], it.InterestParams(current_k=2))
    assert out["current_categories"] == ["shoes", "bags"]
    assert out["current_strengths"] == [pytest.approx(0.4), pytest.approx(0.3)]


def describe_through_events(frame: pd.DataFrame, predicted: list[str], scores: list[float],
                            params: it.InterestParams) -> dict[str, object]:
    """One user "u": the engine's path from events (score matrix over a vocabulary) to its columns."""
    vocab = build_vocab(predicted, 1)
    index = index_events(_table(frame), vocab)
    categories, code_of_raw = category_space(vocab, index)
    matrix = np.zeros((1, vocab.n_categories))
    matrix[0, vocab.category_index(predicted)] = scores
    history = it.interest_history(index, np.arange(1), AS_OF, params.half_life_days, code_of_raw)
    columns = columns_from_scores(matrix, categories, history, params, top_k=len(predicted), top_n=50, first=2)
    return {name: columns[name][0].as_py() for name in CONTRACT_COLUMNS}


def test_a_user_moving_from_shoes_to_bags():
    frame = _events([("u", "shoes", "buy", 9.0), ("u", "shoes", "view", 8.0), ("u", "bags", "view", 0.5)])
    params = it.InterestParams(current_k=2, emerging_k=2, fading_k=2)
    out = describe_through_events(frame, ["bags", "hats", "shoes"], [0.8, 0.4, 0.05], params)
    assert out["predicted_categories"] == ["bags", "hats", "shoes"]
    assert out["current_categories"] == ["shoes", "bags"]
    assert sum(out["current_strengths"]) == pytest.approx(1.0)
    assert out["emerging_categories"] == ["hats"]
    assert out["fading_categories"] == ["shoes"]
    assert 0.0 < out["migration_score"] < 1.0


def test_a_user_without_history():
    out = row({}, ["a", "b"], [0.5, 0.5], it.InterestParams(emerging_k=5))
    assert out == {"predicted_categories": ["a", "b"], "predicted_scores": [0.5, 0.5], "current_categories": [],
                   "current_strengths": [], "migration_score": 0.75, "emerging_categories": ["a", "b"],
                   "fading_categories": []}


@pytest.mark.parametrize("seed", range(4))
def test_the_vectorised_contract_equals_the_per_user_definitions_on_random_batches(seed: int):
    rng = np.random.default_rng(seed)
    users = [f"u{i}" for i in range(60)]
    raw = [f"k{i}" for i in range(25)]  # k20..k24 are not in the model's vocabulary (history only)
    rows = [(users[rng.integers(len(users))], raw[min(int(rng.zipf(1.5)) - 1, 24)],
             ["view", "buy", "cart", "fav", "teleport"][rng.integers(5)], float(rng.choice([0.5, 1.0, 2.0, 3.0, 9.0])
                                                                                 + np.round(rng.random() * 20, 1)))
            for _ in range(900)]
    rows += [("late", "k1", "view", -1.0), ("u0", "k2", "buy", 0.0)]  # at or after as-of: no history
    frame = _events(rows)
    params = it.InterestParams(half_life_days=5.0, current_k=4, emerging_k=3, emerging_max_history_share=0.05,
                               fading_k=3, fading_min_current_share=0.1, fading_max_probability=0.3)
    vocab = Vocab(tuple(raw[:20]), ("view",))
    index = index_events(_table(frame), vocab)
    categories, code_of_raw = category_space(vocab, index)
    scores = rng.random((index.n_users, vocab.n_categories)).astype(np.float32)
    scores[:, 5] = scores[:, 9]  # ties
    scores[rng.random(scores.shape) < 0.2] = 0.0  # zero probabilities
    history = it.interest_history(index, np.arange(index.n_users), AS_OF, params.half_life_days, code_of_raw)
    columns = columns_from_scores(scores, categories, history, params, top_k=7, top_n=12, first=2)
    table = pa.table(columns).to_pylist()
    reference = ref.user_interests(frame, AS_OF, params.half_life_days)
    ids = vocab.category_ids()
    for r, user in enumerate(index.users.to_pylist()):
        order = np.argsort(-scores[r, 2:], kind="stable")[:12] + 2
        predicted, probs = [str(ids[c]) for c in order], scores[r, order].astype(float).tolist()
        expected = ref.describe_user(reference.get(user), predicted, probs, params)
        got = table[r]
        assert got["predicted_categories"] == predicted[:7] and got["predicted_scores"] == pytest.approx(probs[:7])
        for name in ("current_categories", "emerging_categories", "fading_categories"):
            assert got[name] == expected[name], (user, name)
        assert got["current_strengths"] == pytest.approx(expected["current_strengths"], rel=1e-6)
        assert got["migration_score"] == pytest.approx(expected["migration_score"], abs=1e-6), user
