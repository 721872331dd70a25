"""Pure interest arithmetic: decayed current interests, JS migration score, emerging, fading."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import pytest

from pipelines.serving import interests as it

AS_OF = dt.datetime(2024, 1, 10, tzinfo=dt.UTC)


def _events(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    """(user, category, behavior, days before AS_OF) -> canonical event frame."""
    return pd.DataFrame({
        "user_id": [r[0] for r in rows], "item_id": [f"i{i}" for i in range(len(rows))],
        "category_id": [r[1] for r in rows], "behavior": [r[2] for r in rows],
        "ts": pd.to_datetime([AS_OF - dt.timedelta(days=r[3]) for r in rows], utc=True).as_unit("us"),
    })


def test_recent_events_weigh_more_than_old_ones():
    frame = _events([("u", "shoes", "view", 15.0), ("u", "bags", "view", 1.0)])
    result = it.user_interests(frame, AS_OF, half_life_days=7.0)["u"]
    # Two half-lives apart: weights 1/4 and 1, so shares 0.2 and 0.8; history ignores decay.
    assert result.current == pytest.approx({"shoes": 0.2, "bags": 0.8})
    assert result.history == pytest.approx({"shoes": 0.5, "bags": 0.5})
    assert result.top_current(1) == (["bags"], [pytest.approx(0.8)])


def test_purchases_count_more_than_views():
    frame = _events([("u", "shoes", "view", 1.0), ("u", "bags", "buy", 1.0)])
    shares = it.user_interests(frame, AS_OF, 7.0)["u"].current
    assert shares["bags"] == pytest.approx(3 * shares["shoes"])


def test_events_at_or_after_as_of_are_ignored():
    frame = _events([("u", "shoes", "view", 1.0), ("u", "bags", "buy", 0.0), ("v", "toys", "view", -1.0)])
    result = it.user_interests(frame, AS_OF, 7.0)
    assert set(result) == {"u"}
    assert result["u"].current == pytest.approx({"shoes": 1.0})


def test_as_of_must_be_timezone_aware():
    with pytest.raises(ValueError, match="timezone-aware"):
        it.user_interests(_events([("u", "a", "view", 1.0)]), dt.datetime(2024, 1, 10), 7.0)


def test_jensen_shannon_bounds_and_symmetry():
    p = {"a": 0.5, "b": 0.5}
    assert it.jensen_shannon(p, p) == pytest.approx(0.0)
    assert it.jensen_shannon({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
    q = {"a": 0.9, "c": 0.1}
    assert it.jensen_shannon(p, q) == pytest.approx(it.jensen_shannon(q, p))
    # Worked value: P=(1,0), Q=(1/2,1/2), M=(3/4,1/4): JS = (KL(P||M) + KL(Q||M)) / 2.
    expected = 0.5 * (1.0 * math.log2(1.0 / 0.75)) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25))
    assert it.jensen_shannon({"a": 1.0}, {"a": 1.0, "b": 1.0}) == pytest.approx(expected)
    assert it.jensen_shannon({}, {}) == 0.0 and it.jensen_shannon({}, p) == 1.0


def test_migration_score_normalises_predicted_scores():
    current = {"shoes": 0.6, "bags": 0.4}
    # Scores are probabilities, not shares: 0.3/0.2 is the same distribution as 0.6/0.4.
    assert it.migration_score(current, ["shoes", "bags"], [0.3, 0.2]) == pytest.approx(0.0)
    assert it.migration_score(current, ["toys"], [0.9]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in length"):
        it.migration_score(current, ["toys"], [0.9, 0.1])


def test_emerging_keeps_model_order_and_skips_known_categories():
    history = {"shoes": 0.995, "socks": 0.005}
    predicted = ["shoes", "bags", "socks", "toys", "hats"]
    assert it.emerging_categories(predicted, history, k=2, max_history_share=0.01) == ["bags", "socks"]
    assert it.emerging_categories(predicted, history, k=5, max_history_share=0.0) == ["bags", "toys", "hats"]


def test_fading_is_strong_now_and_weak_later_biggest_drop_first():
    current = {"shoes": 0.5, "bags": 0.3, "hats": 0.15, "pins": 0.05}
    # Probabilities: shoes 0.4 (kept), bags 0.1 (fades), hats absent (fades), pins too weak to count.
    fading = it.fading_categories(current, ["shoes", "bags", "toys"], [0.4, 0.1, 0.5], k=5,
                                  min_current_share=0.1, max_probability=0.25)
    assert fading == ["bags", "hats"]
    assert it.fading_categories(current, ["shoes", "bags", "toys"], [0.4, 0.1, 0.5], k=1,
                                min_current_share=0.1, max_probability=0.25) == ["bags"]


def test_a_sole_interest_predicted_likely_is_not_fading_even_when_mass_spreads():
    # Many small probabilities elsewhere shrink shoes' normalised share, not its probability.
    cats = ["shoes"] + [f"c{i}" for i in range(40)]
    scores = [0.85] + [0.04] * 40
    assert it.fading_categories({"shoes": 1.0}, cats, scores, k=5, min_current_share=0.1,
                                max_probability=0.25) == []
    assert it.fading_categories({"shoes": 1.0}, cats, [0.1] + [0.04] * 40, k=5, min_current_share=0.1,
                                max_probability=0.25) == ["shoes"]


def test_describe_user_for_a_user_moving_from_shoes_to_bags():
    frame = _events([("u", "shoes", "buy", 9.0), ("u", "shoes", "view", 8.0), ("u", "bags", "view", 0.5)])
    interests = it.user_interests(frame, AS_OF, 7.0)["u"]
    params = it.InterestParams(current_k=2, emerging_k=2, fading_k=2)
    row = it.describe_user(interests, ["bags", "hats", "shoes"], [0.8, 0.4, 0.05], params)
    assert row["current_categories"] == ["shoes", "bags"]
    assert sum(row["current_strengths"]) == pytest.approx(1.0)
    assert row["emerging_categories"] == ["hats"]
    assert row["fading_categories"] == ["shoes"]
    assert 0.0 < row["migration_score"] < 1.0


def test_describe_user_without_history():
    row = it.describe_user(None, ["a", "b"], [0.5, 0.5], it.InterestParams(emerging_k=5))
    assert row == {"current_categories": [], "current_strengths": [], "migration_score": 1.0,
                   "emerging_categories": ["a", "b"], "fading_categories": []}
