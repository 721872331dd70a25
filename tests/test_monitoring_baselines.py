"""The monitored baselines of a published day, on a hand-made look-back (no services)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from pipelines.contracts import EVENT_SCHEMA
from pipelines.ops import monitor_baselines
from pipelines.serving.interests import InterestParams

AS_OF = dt.datetime(2024, 3, 11, tzinfo=dt.UTC)


def _events() -> pa.Table:
    """a: x x y (x on day -5 and -4, y yesterday); b: y then z yesterday; c: z two days ago; one event at as_of."""
    rows = [("a", "x", 5), ("a", "x", 4), ("a", "y", 1), ("b", "y", 1), ("b", "z", 0.5), ("c", "z", 2),
            ("a", "q", 0)]
    return pa.Table.from_pylist([{"user_id": u, "item_id": "i", "category_id": c, "behavior": "view",
                                  "ts": AS_OF - dt.timedelta(days=d), "value": None} for u, c, d in rows],
                                schema=EVENT_SCHEMA)


def _rows(**kwargs):
    return monitor_baselines.baseline_rows(_events(), ["a", "b", "c", "nobody"], AS_OF, horizon_days=2,
                                           lookback_days=10, params=InterestParams(half_life_days=1.0),
                                           top_k=3, top_n=10, **kwargs)


def test_baselines_follow_their_definitions():
    out = _rows()
    assert set(out) == {"decayed_frequency", "markov", "popularity"}
    for table in out.values():
        assert table["user_id"].to_pylist() == ["a", "b", "c", "nobody"]
    decayed = out["decayed_frequency"]["predicted_categories"].to_pylist()
    assert decayed[0][:2] == ["y", "x"]  # y yesterday outweighs x 4-5 days ago at a 1-day half-life
    assert decayed[1][:2] == ["z", "y"] and decayed[2][0] == "z"
    # popularity over the last 2 days of the look-back: y (a, b) and z (b; c is 2 days back: in) -> z 2, y 2, x 0
    popular = out["popularity"]["predicted_categories"].to_pylist()
    assert popular[0] == popular[3] and set(popular[0][:2]) == {"y", "z"}
    # markov: a's last move x->y, b's y->z: from y the next is z
    markov = out["markov"]["predicted_categories"].to_pylist()
    assert markov[0][0] == "z"
    assert "q" not in {c for lists in decayed for c in lists}  # the event at as_of is not in the look-back


def test_batches_give_the_same_rows(monkeypatch):
    whole = _rows()
    monkeypatch.setattr(monitor_baselines, "_BATCH_CELLS", 1)
    for name, table in _rows().items():
        assert table.equals(whole[name]), name
