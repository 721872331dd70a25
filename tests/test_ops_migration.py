"""Population migration reports: the flows, per-category shares and strengths match a plain-Python
recomputation from the same rows, on a tiny table and on partitions published by real scoring."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import pyarrow as pa
import pytest

from pipelines.contracts import PREDICTION_SCHEMA
from pipelines.ops import migration, migration_report
from pipelines.platform import layout, storage
from pipelines.serving import predictions
from tests.published import publish

D = dt.date(2024, 3, 10)


def _row(user: str, current: dict[str, float], predicted: dict[str, float], emerging: list[str],
         score: float) -> dict:
    return {"user_id": user, "as_of_date": D, "horizon_days": 3, "predicted_categories": list(predicted),
            "predicted_scores": list(predicted.values()), "current_categories": list(current),
            "current_strengths": list(current.values()), "migration_score": score, "emerging_categories": emerging,
            "fading_categories": [], "model_name": "m", "model_version": "1"}


def independent(rows: list[dict]) -> dict:
    """The definitions of pipelines.ops.migration, written out loop by loop."""
    weight: dict[tuple[str, str], float] = defaultdict(float)
    users: dict[tuple[str, str], int] = defaultdict(int)
    by_dominant: dict[str, list[dict]] = defaultdict(list)
    current_strength: dict[str, float] = defaultdict(float)
    predicted_strength: dict[str, float] = defaultdict(float)
    for row in rows:
        total = sum(max(s, 0.0) for s in row["current_strengths"])
        sources = ({c: s / total for c, s in zip(row["current_categories"], row["current_strengths"], strict=True)}
                   if total > 0 else {migration.NO_CATEGORY: 1.0})
        for source, share in sources.items():
            for target in row["emerging_categories"] if share > 0 else []:  # a zero share carries no flow
                weight[(source, target)] += share / len(row["emerging_categories"])
                users[(source, target)] += 1
        dominant = row["current_categories"][0] if row["current_categories"] else migration.NO_CATEGORY
        by_dominant[dominant].append(row)
        for c, s in zip(row["current_categories"], row["current_strengths"], strict=True):
            current_strength[c] += s / len(rows)
        score_total = sum(row["predicted_scores"])
        for c, s in zip(row["predicted_categories"], row["predicted_scores"], strict=True):
            predicted_strength[c] += s / score_total / len(rows)
    migrating = {c: sum(1 for r in rs if r["predicted_categories"] and r["predicted_categories"][0]
                        in r["emerging_categories"]) for c, rs in by_dominant.items()}
    return {"weight": dict(weight), "users": dict(users), "dominant_users": {c: len(rs) for c, rs in by_dominant.items()},
            "migrating": migrating, "current_strength": dict(current_strength),
            "predicted_strength": dict(predicted_strength)}


def _check(rows: pa.Table) -> None:
    expected = independent(rows.to_pylist())
    flows = migration.flow_matrix(rows)
    got = {(f["from_category"], f["to_category"]): f for f in flows.to_pylist()}
    assert got.keys() == expected["weight"].keys()
    for pair, flow in got.items():
        assert flow["weight"] == pytest.approx(expected["weight"][pair], rel=1e-6), pair
        assert flow["users"] == expected["users"][pair], pair
    weights = flows["weight"].to_pylist()
    assert weights == sorted(weights, reverse=True)
    assert sum(f["share"] for f in got.values()) == pytest.approx(1.0)
    categories = {c["category"]: c for c in migration.category_table(rows).to_pylist()}
    for category, count in expected["dominant_users"].items():
        assert categories[category]["users"] == count
        assert categories[category]["migrating_users"] == expected["migrating"][category]
    for category, strength in expected["current_strength"].items():
        assert categories[category]["current_strength"] == pytest.approx(strength, rel=1e-6)
    for category, strength in expected["predicted_strength"].items():
        assert categories[category]["predicted_strength"] == pytest.approx(strength, rel=1e-6)


def test_flows_and_categories_match_a_plain_recomputation():
    rows = pa.Table.from_pylist([
        _row("a", {"shoes": 0.6, "bags": 0.2}, {"hats": 0.5, "shoes": 0.4}, ["hats"], 0.5),
        _row("b", {"shoes": 1.0}, {"shoes": 0.9, "socks": 0.1}, ["socks"], 0.1),
        _row("c", {}, {"toys": 0.3}, ["toys"], 1.0),                      # no history: from "(none)"
        _row("d", {"books": 0.7}, {"books": 0.8}, [], 0.05),              # no emerging: no flow
        _row("e", {"bags": 0.5, "hats": 0.5}, {"socks": 0.6, "toys": 0.3}, ["socks", "toys"], 0.7),
        _row("f", {"books": 1.0, "shoes": 0.0}, {"hats": 0.9}, ["hats"], 0.9),  # a zero share: no flow from shoes
    ], schema=PREDICTION_SCHEMA)
    _check(rows)
    flows = migration.flow_matrix(rows)
    assert flows.num_rows == 9 and sum(flows["weight"].to_pylist()) == pytest.approx(5.0)  # 5 users with emerging
    summary = migration.day_summary(rows, flows, migration.category_table(rows))
    assert (summary["users"], summary["users_with_emerging"], summary["migrating_users"]) == (6, 5, 4)
    # The users expected to touch a new category: the sum of the migration scores (each is that
    # probability for one user), a headline that does not read 0% where no one's top category is new.
    assert summary["expected_new_category_users"] == pytest.approx(0.5 + 0.1 + 1.0 + 0.05 + 0.7 + 0.9, abs=0.05)
    assert summary["expected_new_category_share"] == pytest.approx(3.25 / 6)


def test_top_flows_compare_with_the_week_before():
    now = pa.Table.from_pylist([{"from_category": "a", "to_category": "b", "users": 3, "weight": 3.0, "share": 0.75},
                                {"from_category": "a", "to_category": "c", "users": 1, "weight": 1.0, "share": 0.25}],
                               schema=migration.FLOW_SCHEMA)
    before = pa.Table.from_pylist([{"from_category": "a", "to_category": "b", "users": 1, "weight": 1.0, "share": 1.0}],
                                  schema=migration.FLOW_SCHEMA)
    top = migration.top_flows(now, before, 5).to_pylist()
    assert [(t["previous_share"], t["share_change"]) for t in top] == [(1.0, -0.25), (0.0, 0.25)]
    assert migration.top_flows(now, None, 1).to_pylist()[0]["previous_share"] is None


def test_empty_day_has_no_flows():
    empty = PREDICTION_SCHEMA.empty_table()
    assert migration.flow_matrix(empty).num_rows == 0
    assert migration.day_summary(empty, migration.flow_matrix(empty), migration.category_table(empty))["users"] == 0


@pytest.mark.services
def test_report_of_published_days_matches_the_rows_and_the_week_before(settings):
    later = D + dt.timedelta(days=7)
    events = {}
    for offset, day in enumerate([D - dt.timedelta(days=1), D, later - dt.timedelta(days=1), later]):
        events[day] = [(f"u{u}", f"i{u}{offset}", f"c{(u + offset * (u % 3)) % 6}", "view", 8 + u % 10)
                       for u in range(30)] + [(f"u{u}", f"j{u}", "c0", "buy", 20) for u in range(0, 30, 4)]
    configured = publish(settings, events, [D, later], lookback_days=10, scoring_shards=2)
    first = migration_report.write_report(configured, D)
    assert first["compared_with"] is None and first["users"] == 30
    second = migration_report.write_report(configured, later)
    assert second["compared_with"] == D.isoformat()

    rows = predictions.read_predictions(configured, later, columns=migration.ROW_COLUMNS)
    _check(rows)
    flows = storage.read_parquet(configured, layout.migration_report_key(later, "flows"))
    assert flows.equals(migration.flow_matrix(rows))
    before = {(f["from_category"], f["to_category"]): f["share"]
              for f in storage.read_parquet(configured, layout.migration_report_key(D, "flows")).to_pylist()}
    for top in second["top_flows"]:
        assert top["previous_share"] == pytest.approx(before.get((top["from_category"], top["to_category"]), 0.0))
    assert storage.get_bytes(configured, layout.migration_report_key(later, "chart"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert migration_report.report_dates(configured) == [D, later]
    assert migration_report.read_summary(configured, later)["files"]["chart"].endswith("interest_by_category.png")
    with pytest.raises(migration_report.ReportNotFound, match="no migration report for 2024-03-11"):
        migration_report.read_summary(configured, D + dt.timedelta(days=1))
    with pytest.raises(predictions.PredictionsNotFound):
        migration_report.write_report(configured, D + dt.timedelta(days=1))
    # `make run` prints the day's headline under "insight:" (users, expected new-category users).
    from types import SimpleNamespace

    from pipelines.devstack import demo

    text = demo._insight_lines(SimpleNamespace(airflow_url="http://127.0.0.1:8080"), configured, later)
    assert (f"    30 users; {second['expected_new_category_users']:.1f} ({second['expected_new_category_share']:.1%}) "
            "expected to touch a category new to them in the horizon") in text
