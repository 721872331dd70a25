"""Reading published predictions: only partitions with _SUCCESS, only the manifest's files; the
user view, the day summary and the CLI."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pyarrow as pa
import pytest

from pipelines.contracts import PREDICTION_SCHEMA
from pipelines.platform import layout, storage
from pipelines.serving import predictions, scoring
from tests import pyfunc_models as pm

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
EVENTS = {
    D1: [("alice", "i1", "shoes", "buy", 8), ("bob", "i2", "books", "view", 9), ("carol", "i3", "toys", "view", 9)],
    D2: [("alice", "i4", "bags", "view", 8), ("alice", "i5", "bags", "cart", 9), ("bob", "i2", "books", "buy", 10)],
}


def _row(user: str, migration: float, emerging: list[str], fading: list[str]) -> dict:
    return {"user_id": user, "as_of_date": D2, "horizon_days": 3, "predicted_categories": ["a"],
            "predicted_scores": [0.5], "current_categories": ["b"], "current_strengths": [1.0],
            "migration_score": migration, "emerging_categories": emerging, "fading_categories": fading,
            "model_name": "m", "model_version": "1"}


def test_summarize_counts_users_and_lists():
    rows = pa.Table.from_pylist([_row("a", 0.2, ["x", "y"], ["z"]), _row("b", 0.6, ["x"], []),
                                 _row("c", 1.0, [], ["z", "w"])], schema=PREDICTION_SCHEMA)
    summary = predictions.summarize(rows, top=1)
    assert summary["users_scored"] == 3
    assert summary["migration_mean"] == pytest.approx(0.6) and summary["migration_median"] == pytest.approx(0.6)
    assert summary["top_emerging"] == [("x", 2)] and summary["top_fading"] == [("z", 2)]
    text = predictions.format_user(rows.to_pylist()[0])
    assert "current:   b (1.00)" in text and "emerging:  x, y" in text


@pytest.fixture()
def published(settings):
    configured = dataclasses.replace(pm.isolate(settings), lookback_days=2, scoring_shards=2)
    pm.write_clean(configured, pm.clean_events(EVENTS))
    pm.register_as_champion(configured)
    scoring.score_date(configured, D2)
    return configured


@pytest.mark.services
def test_reader_trusts_only_the_manifest(published):
    prefix = layout.partition_prefix(layout.PREDICTIONS, D2)
    table = predictions.read_predictions(published, D2)
    assert sorted(table["user_id"].to_pylist()) == ["alice", "bob", "carol"]
    # A part the manifest does not list (a crashed run's leftover) is never read.
    storage.write_parquet(published, prefix + "part-00042.parquet", table)
    assert predictions.read_predictions(published, D2).num_rows == 3
    view = predictions.user_view(published, D2, "alice")
    assert view["current_categories"][0] == "bags" and view["model_version"] == "1"
    summary = predictions.summarize_day(published, D2)
    assert summary["users_scored"] == summary["manifest_row_count"] == 3
    assert summary["migration_mean"] == pytest.approx(sum(table["migration_score"].to_pylist()) / 3, rel=1e-6)
    with pytest.raises(predictions.PredictionsNotFound, match="user 'zed'"):
        predictions.user_view(published, D2, "zed")
    # Without _SUCCESS the partition does not exist for readers, even though its parts are there.
    storage.s3_client(published).delete_object(Bucket=published.bucket, Key=prefix + layout.SUCCESS)
    with pytest.raises(predictions.PredictionsNotFound, match="no published predictions for 2024-03-02"):
        predictions.read_predictions(published, D2)
    assert predictions.published_dates(published) == []


@pytest.mark.services
def test_cli_scores_and_prints_user_and_summary(published, monkeypatch, capsys):
    from pipelines.__main__ import main

    for name, value in {"IM_BUCKET": published.bucket, "IM_MODEL_NAME": published.model_name,
                        "IM_S3_ENDPOINT_URL": published.s3_endpoint_url, "IM_LOOKBACK_DAYS": "2",
                        "IM_MLFLOW_TRACKING_URI": published.mlflow_tracking_uri}.items():
        monkeypatch.setenv(name, value)
    assert main(["score", "--date", D1.isoformat()]) == 0
    assert "3 users scored by" in capsys.readouterr().out
    assert main(["predictions", "--date", D2.isoformat(), "--user", "alice", "--summary"]) == 0
    out = capsys.readouterr().out
    assert "user alice as of 2024-03-02" in out and "migration score:" in out
    assert "users scored: 3" in out and "top emerging (users):" in out
    assert main(["predictions", "--date", "2024-03-09"]) == 1
    assert "no published predictions for 2024-03-09" in capsys.readouterr().err
    # An empty --user printed the day's summary and --top -2 empty lists, both with exit 0.
    assert main(["predictions", "--date", D2.isoformat(), "--user", " "]) == 2
    assert "--user is empty" in capsys.readouterr().err
    assert main(["predictions", "--date", D2.isoformat(), "--top", "-2"]) == 2
    assert "--top -2: give at least 1" in capsys.readouterr().err
    assert main(["score", "--date", "2024-03-09"]) == 1
    assert "no clean events for 2024-03-09" in capsys.readouterr().err
    # Programs read --json: one JSON document, the manifest and the user's row.
    assert main(["score", "--date", D1.isoformat(), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["row_count"] == 3
    assert main(["predictions", "--date", D2.isoformat(), "--user", "alice", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["user"]["user_id"] == "alice"
    # A range went on no further than its first failed day; now every day is tried and the failures
    # are listed. A day with no events names the setting for sparse logs whose quiet days are real.
    assert main(["score", "--start", "2024-03-03", "--end", "2024-03-04", "--json"]) == 1
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert document["published"] == [] and set(document["failed"]) == {"2024-03-03", "2024-03-04"}
    assert "IM_SCORE_QUIET_DAYS=1 scores it" in document["failed"]["2024-03-03"]
    assert err.strip().splitlines()[-1] == "error: scored 0 of 2 days; failed: 2024-03-03, 2024-03-04"
    monkeypatch.setenv("IM_SCORE_QUIET_DAYS", "1")
    assert main(["score", "--start", "2024-03-03", "--end", "2024-03-04", "--json"]) == 1  # 03-04: D2 out of the look-back
    document = json.loads(capsys.readouterr().out)
    assert [m["as_of_date"] for m in document["published"]] == ["2024-03-03"] and list(document["failed"]) == ["2024-03-04"]
    assert document["published"][0]["row_count"] == 2  # alice and bob, active on 03-02
