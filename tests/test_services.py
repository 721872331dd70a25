"""The embedded services really answer: S3 round trip and an MLflow run with an S3 artifact."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.platform import layout, storage, tracking

pytestmark = pytest.mark.services


def test_s3_round_trip_and_partition_listing(settings):
    first, second = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    storage.put_text(settings, layout.partition_prefix(layout.CLEAN, second) + "a.txt", "x")
    storage.put_json(settings, layout.partition_prefix(layout.CLEAN, first) + "b.json", {"n": 1})
    assert storage.list_partitions(settings, layout.CLEAN) == [first, second]
    assert storage.get_json(settings, layout.partition_prefix(layout.CLEAN, first) + "b.json") == {"n": 1}
    assert storage.delete_prefix(settings, layout.area_prefix(layout.CLEAN)) == 2
    assert storage.list_keys(settings, layout.area_prefix(layout.CLEAN)) == []


def test_missing_object_names_the_key(settings):
    with pytest.raises(storage.StorageError, match="nothing/here"):
        storage.get_bytes(settings, "nothing/here")


def test_mlflow_logs_artifact_to_s3(settings, tmp_path):
    import mlflow

    tracking.configure(settings)
    mlflow.set_experiment("services-smoke")
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with mlflow.start_run() as run:
        mlflow.log_metric("m", 1.0)
        mlflow.log_artifact(str(note))
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="note.txt",
                                                dst_path=str(tmp_path / "dl"))
    assert open(local).read() == "hello"
