"""The consumer contract: the committed JSON Schemas describe what scoring really publishes, and the
documented recipes (pandas and DuckDB through the S3 endpoint, the example downstream DAG) read it."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json

import jsonschema
import pyarrow as pa
import pytest

from pipelines.contracts import PREDICTION_SCHEMA
from pipelines.platform import layout, storage
from pipelines.serving import predictions
from tests.conftest import REPO_ROOT
from tests.published import publish

SCHEMAS = REPO_ROOT / "schemas"
EXAMPLE_DAG = REPO_ROOT / "examples" / "dags" / "interest_migration_consumer_example.py"
D1, D2 = dt.date(2024, 5, 1), dt.date(2024, 5, 2)
# The keys publish must add to the manifest (docs/operations.md, "Consumer contract").
CONTRACT_KEYS = {"schema_version": "1.0", "training_window": {"start": "2024-04-01", "end": "2024-04-28"}}


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def _as_json(row: dict) -> dict:
    return json.loads(json.dumps(row, default=lambda v: v.isoformat()))


def _example_module():
    spec = importlib.util.spec_from_file_location("consumer_example", EXAMPLE_DAG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_row_schema_lists_exactly_the_published_columns():
    schema = json.loads((SCHEMAS / "prediction_row.schema.json").read_text())
    assert list(schema["properties"]) == PREDICTION_SCHEMA.names
    assert schema["required"] == PREDICTION_SCHEMA.names
    manifest = json.loads((SCHEMAS / "predictions_manifest.schema.json").read_text())
    assert schema["x-schema-version"] == manifest["x-schema-version"]
    assert manifest["properties"]["schema_version"]["pattern"].startswith("^" + schema["x-schema-version"][0])
    # The migration score's definition changed (it was a Jensen-Shannon divergence) and the schema
    # kept the old text: the schema and the contract table of docs/design.md say the same.
    design = (REPO_ROOT / "docs" / "design.md").read_text()
    definition = "1 - prod(1 - p) over the ranked new categories"
    assert definition in schema["properties"]["migration_score"]["description"]
    assert "| `migration_score` | float32 in [0, 1] | probability of touching at least one category new" in design
    assert definition in design


def test_example_dag_is_outside_the_dags_folder_and_scheduled_on_the_predictions_asset():
    from airflow.dag_processing.dagbag import DagBag

    assert not (REPO_ROOT / "dags" / EXAMPLE_DAG.name).exists()
    bag = DagBag(dag_folder=str(EXAMPLE_DAG.parent))
    assert bag.import_errors == {}
    dag = bag.dags["interest_migration_consumer_example"]
    assert [a.uri for a in dag.timetable.asset_condition.objects] == [layout.predictions_uri("interest-migration")]
    assert [t.task_id for t in dag.tasks] == ["use_predictions"]


@pytest.fixture()
def published(settings):
    return publish(settings, {
        D1: [("alice", "i1", "shoes", "buy", 8), ("bob", "i2", "books", "view", 9), ("carol", "i3", "toys", "view", 9)],
        D2: [("alice", "i4", "bags", "view", 8), ("bob", "i2", "books", "buy", 10), ("dan", "i5", "toys", "cart", 11)]},
        [D2], lookback_days=2, scoring_shards=2)


@pytest.mark.services
def test_published_rows_and_manifest_follow_the_schemas(published):
    rows = [_as_json(r) for r in predictions.read_predictions(published, D2).to_pylist()]
    assert len(rows) == 4
    row_validator = _validator("prediction_row.schema.json")
    for row in rows:
        row_validator.validate(row)
    broken = {**rows[0], "migration_score": 1.5}
    del broken["user_id"]
    messages = sorted(e.message for e in row_validator.iter_errors(broken))
    assert messages == ["'user_id' is a required property", "1.5 is greater than the maximum of 1"]
    assert not row_validator.is_valid({**rows[0], "as_of_date": "02/05/2024"})

    manifest = predictions.read_manifest(published, D2)
    manifest_validator = _validator("predictions_manifest.schema.json")
    manifest_validator.validate({**manifest, **CONTRACT_KEYS})
    assert not manifest_validator.is_valid({**manifest, **CONTRACT_KEYS, "schema_version": "2.0"})
    assert not manifest_validator.is_valid({**manifest, **CONTRACT_KEYS, "files": ["elsewhere/part.parquet"]})


@pytest.mark.services
def test_the_real_manifest_carries_the_contract_keys(published):
    _validator("predictions_manifest.schema.json").validate(predictions.read_manifest(published, D2))


@pytest.mark.services
def test_recipes_read_a_partition_with_pandas_and_duckdb(published):
    import duckdb

    expected = predictions.read_predictions(published, D2)
    example = _example_module()
    manifest, frame = example.read_partition(D2.isoformat(), bucket=published.bucket,
                                             endpoint_url=published.s3_endpoint_url)
    assert manifest["row_count"] == len(frame) == expected.num_rows
    assert sorted(frame["user_id"]) == sorted(expected["user_id"].to_pylist())
    got = pa.Table.from_pandas(frame, preserve_index=False).select(PREDICTION_SCHEMA.names).cast(PREDICTION_SCHEMA)
    assert got.sort_by("user_id").equals(expected.sort_by("user_id"))
    summary = example.summarize(frame)
    assert summary["users"] == 4 and 0 <= summary["migrating_users"] <= 4
    # DuckDB over the frame read through the S3 endpoint (the recipe that needs no DuckDB extension).
    top = duckdb.sql("SELECT user_id, migration_score FROM frame ORDER BY migration_score DESC, user_id").fetchall()
    assert [u for u, _ in top] == [r["user_id"] for r in sorted(
        expected.to_pylist(), key=lambda r: (-r["migration_score"], r["user_id"]))]
    with pytest.raises(FileNotFoundError):
        example.read_partition(D1.isoformat(), bucket=published.bucket, endpoint_url=published.s3_endpoint_url)
    storage.put_json(published, layout.success_key(D1), {**manifest, "schema_version": "2.0", "files": []})
    with pytest.raises(ValueError, match="use contract 2.0; this reader knows 1.x"):
        example.read_partition(D1.isoformat(), bucket=published.bucket, endpoint_url=published.s3_endpoint_url)


@pytest.mark.services
def test_duckdb_httpfs_recipe_reads_the_manifest_files(published):
    import duckdb

    connection = duckdb.connect()
    try:
        connection.sql("LOAD httpfs")
    except duckdb.Error as exc:
        pytest.skip(f"DuckDB's httpfs extension is not installed here and cannot be downloaded offline: {exc}"[:300])
    host = published.s3_endpoint_url.split("://", 1)[1]
    import os

    connection.sql(f"CREATE SECRET im (TYPE s3, KEY_ID '{os.environ['AWS_ACCESS_KEY_ID']}', SECRET "
                   f"'{os.environ['AWS_SECRET_ACCESS_KEY']}', ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false, "
                   f"REGION 'us-east-1')")
    manifest = predictions.read_manifest(published, D2)
    files = ", ".join(f"'s3://{published.bucket}/{key}'" for key in manifest["files"])
    count = connection.sql(f"SELECT count(*) FROM read_parquet([{files}])").fetchone()[0]
    assert count == manifest["row_count"]
