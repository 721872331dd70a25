"""The outcomes scorer against numbers worked out by hand on a small case (docstrings show the sums)."""

from __future__ import annotations

import datetime as dt
import math

import pyarrow as pa
import pytest

from pipelines.model import outcomes

UTC = dt.UTC


def _rows() -> pa.Table:
    return pa.table({
        "user_id": ["u1", "u2", "u3", "u4"],
        "predicted_categories": [["a", "b", "c"], ["b", "a"], ["d"], ["c", "a"]],
        "predicted_scores": pa.array([[0.75, 0.5, 0.125], [0.625, 0.25], [0.375], [0.875, 0.25]],
                                     pa.list_(pa.float32())),
        "current_categories": [["a"], ["b"], ["x"], []],
        "emerging_categories": [["c", "d"], [], ["d"], ["b", "a"]],
        "fading_categories": [["e"], ["a", "b"], [], []],
        "migration_score": pa.array([0.9, 0.2, 0.5, 0.5], pa.float32()),
    })


TRUTH = {"u1": {"a", "c", "d"}, "u2": {"b"}, "u4": {"a"}}  # u3 does nothing in the horizon
KNOWN = {"u1": {"a", "e"}, "u2": {"b"}, "u3": {"x"}}  # u4 has no look-back categories


def test_score_rows_matches_hand_computation() -> None:
    """k=2, explore_k=1. Users with truth: u1 (top-2 a,b: 1 hit of 3), u2 (b,a: 1 of 1), u4 (c,a: 1 of 1).
    NDCG: u1 1/(1+1/log2 3), u2 1, u4 (1/log2 3)/1. New: u1 {c,d} (emerging[:1] = c: 1/2), u4 {a}
    (emerging[:1] = b: 0). Migration AUC: positives u1 0.9, u4 0.5; negatives u2 0.2, u3 0.5 -> 3.5/4.
    Fading: e (untouched), a (untouched), b (touched) -> 2/3. Brier over 8 pairs: 2.75/8."""
    summary, per_user = outcomes.score_rows(_rows(), TRUTH, KNOWN, k=2, explore_k=1)
    d = 1.0 / math.log2(3)
    assert summary["users"] == 4 and summary["users_with_truth"] == 3 and summary["users_adopting"] == 2
    assert summary["recall_at_2"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert summary["precision_at_2"] == pytest.approx(0.5)
    assert summary["hit_rate_at_2"] == pytest.approx(1.0)
    assert summary["ndcg_at_2"] == pytest.approx((1 / (1 + d) + 1 + d) / 3)
    assert summary["explore_recall_at_1"] == pytest.approx(0.25)
    assert summary["migration_auc"] == pytest.approx(0.875)
    assert summary["fading_precision"] == pytest.approx(2 / 3) and summary["fading_listed"] == 3
    assert summary["brier"] == pytest.approx(2.75 / 8) and summary["scored_pairs"] == 8
    bins = {round(b["lower"], 1): b for b in summary["calibration"]}
    assert sorted(bins) == [0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8]
    assert bins[0.2] == {"lower": 0.2, "upper": 0.3, "mean_predicted": 0.25, "observed_rate": 0.5, "count": 2}
    assert bins[0.1]["observed_rate"] == 1.0 and bins[0.8]["observed_rate"] == 0.0

    table = per_user.to_pydict()
    assert table["user_id"] == ["u1", "u2", "u3", "u4"]
    assert table["truth_count"] == [3, 1, 0, 1] and table["new_count"] == [2, 0, 0, 1]
    assert table["adopted_new"] == [True, False, False, True]
    assert math.isnan(table["recall_at_2"][2]) and math.isnan(table["explore_recall_at_1"][1])
    assert table["fading_untouched"] == [1, 1, 0, 0]


def test_score_rows_names_say_k_and_undefined_is_nan() -> None:
    """Default k=5/explore_k=3: u1's whole list (a,b,c) hits a,c of 3; nobody adopting -> explore NaN."""
    rows = _rows().slice(0, 2)
    summary, _ = outcomes.score_rows(rows, {"u1": {"a", "c"}, "u2": {"b"}}, {"u1": {"a", "c"}, "u2": {"b"}})
    assert summary["recall_at_5"] == pytest.approx(1.0) and summary["precision_at_5"] == pytest.approx((2 / 5 + 1 / 5) / 2)
    assert math.isnan(summary["explore_recall_at_3"]) and math.isnan(summary["migration_auc"])


def test_score_rows_rejects_bad_rows() -> None:
    with pytest.raises(ValueError, match="more than once"):
        outcomes.score_rows(pa.concat_tables([_rows(), _rows()]), TRUTH, KNOWN)
    with pytest.raises(ValueError, match="fading_categories"):
        outcomes.score_rows(_rows().drop_columns(["fading_categories"]), TRUTH, KNOWN)


def test_truth_and_known_sets_use_half_open_windows() -> None:
    t0 = dt.datetime(2024, 1, 2, tzinfo=UTC)
    events = pa.table({
        "user_id": ["u1", "u1", "u1", "u2", "u2"],
        "category_id": ["a", "b", "c", "a", "a"],
        "ts": pa.array([t0 - dt.timedelta(microseconds=1), t0, t0 + dt.timedelta(days=1), t0, t0],
                       pa.timestamp("us", "UTC")),
    })
    assert outcomes.truth_sets(events, t0, t0 + dt.timedelta(days=1)) == {"u1": {"b"}, "u2": {"a"}}
    assert outcomes.known_sets(events, t0 - dt.timedelta(days=1), t0) == {"u1": {"a"}}
    with pytest.raises(ValueError, match="category_id"):
        outcomes.truth_sets(events.drop_columns(["category_id"]), t0, t0)
