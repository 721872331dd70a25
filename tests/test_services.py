"""The embedded services really answer: S3 round trip and an MLflow run with an S3 artifact."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.platform import layout, storage, tracking
from tests.stack_checks import http_status

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


def test_mlflow_refuses_anonymous_calls_and_the_client_account_cannot_manage_users(services):
    search = f"{services.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(search) == 401
    assert http_status(f"{services.tracking_uri}/") == 401  # the UI too
    client = (services.env["MLFLOW_TRACKING_USERNAME"], services.env["MLFLOW_TRACKING_PASSWORD"])
    assert http_status(search, auth=client) == 200
    assert http_status(search, auth=(client[0], "wrong-password")) == 401
    # The tasks' account is not an admin: it cannot create users (or move permissions).
    create = f"{services.tracking_uri}/api/2.0/mlflow/users/create"
    body = b'{"username": "intruder", "password": "Intruder-password-123"}'
    assert http_status(create, "POST", body, auth=client) == 403
    assert http_status(f"{services.tracking_uri}/health") == 200  # health stays open for probes


def test_seaweedfs_filer_refuses_anonymous_access(settings, services):
    storage.put_text(settings, "private/note.txt", "not for strangers")
    path = f"{services.filer_url}/buckets/{settings.bucket}/private/note.txt"
    assert http_status(path) == 401
    assert http_status(f"{services.filer_url}/buckets/{settings.bucket}/") == 401
    assert http_status(f"{services.filer_url}/buckets/{settings.bucket}/evil.txt", "PUT", b"x") == 401
    assert storage.get_bytes(settings, "private/note.txt") == b"not for strangers"  # S3 with keys still works


def test_parallel_transfers_keep_their_connections(settings, tmp_path, caplog):
    # The scoring plan uploads and downloads several large files at once, each in parallel parts: with
    # boto3's default pool of 10 connections urllib3 discarded connections ("Connection pool is full")
    # and logged a warning for each, on every scoring run.
    from concurrent.futures import ThreadPoolExecutor

    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (80 * 1024))  # 20 MiB: multipart, several threads per file
    with caplog.at_level("WARNING", logger="urllib3.connectionpool"), ThreadPoolExecutor(4) as pool:
        keys = [f"transfer/part-{i}.bin" for i in range(4)]
        list(pool.map(lambda k: storage.upload_file(settings, big, k), keys))
        list(pool.map(lambda k: storage.download_file(settings, k, tmp_path / k.replace("/", "_")), keys))
    assert "Connection pool is full" not in caplog.text
    assert all((tmp_path / k.replace("/", "_")).read_bytes() == big.read_bytes() for k in keys)
