"""DAG callbacks: a failed training run's MLflow run is marked FAILED on the real MLflow server and an
alert reaches a real webhook receiver; gate refusals and late partitions make the right alerts."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.ops import callbacks
from pipelines.platform import tracking
from tests.conftest import REPO_ROOT
from tests.test_ops_notify import webhook_server


@pytest.fixture(scope="module")
def training_dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags" / "interest_migration_training.py")).dags[
        "interest_migration_training"]


def _use(monkeypatch, settings, **extra: str) -> None:
    env = {"IM_S3_ENDPOINT_URL": settings.s3_endpoint_url, "IM_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
           "IM_BUCKET": settings.bucket, "IM_MLFLOW_EXPERIMENT": f"exp-{settings.bucket}", **extra}
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.services
def test_training_failure_marks_the_mlflow_run_failed_and_alerts(settings, training_dag, monkeypatch, tmp_path):
    import dataclasses

    isolated = dataclasses.replace(settings, mlflow_experiment=f"exp-{settings.bucket}")
    run_id = "manual__2024-06-01T00:00:00+00:00"
    mlflow_run = tracking.start_or_resume_run(isolated, dag_id=training_dag.dag_id, dag_run_id=run_id,
                                              logical_date=None, data_start=None, data_end=None)
    other = tracking.start_or_resume_run(isolated, dag_id=training_dag.dag_id, dag_run_id="another",
                                         logical_date=None, data_start=None, data_end=None)
    client = tracking.client(isolated)
    assert client.get_run(mlflow_run).info.status == "RUNNING"
    with webhook_server() as server:
        url_file = tmp_path / "hook"
        url_file.write_text(f"http://127.0.0.1:{server.server_port}/hook")
        _use(monkeypatch, settings, IM_NOTIFY_CHANNEL="webhook", IM_NOTIFY_WEBHOOK_URL_FILE=str(url_file))
        # The keys of a task's context the callback reads (the stack test runs it inside Airflow).
        callbacks.on_training_failure({"dag": training_dag, "run_id": run_id,
                                       "exception": ValueError("encode: 1 day holds no split")})
        callbacks.on_training_failure({"dag": training_dag, "run_id": "never-started", "reason": "task_failure"})
    run = client.get_run(mlflow_run)
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert "interest_migration_training run manual__2024-06-01T00:00:00+00:00 failed" in run.data.tags[callbacks.TAG_FAILURE]
    assert client.get_run(other).info.status == "RUNNING"  # only the failed DAG run's MLflow run
    first, second = (body["text"] for _, _, body in server.received)
    assert "error: ValueError: encode: 1 day holds no split" in first and f"mlflow run: {mlflow_run}" in first
    assert "error: task_failure" in second and "mlflow run: none" in second


@pytest.mark.services
def test_failure_alert_still_goes_out_when_mlflow_is_down(settings, training_dag, monkeypatch, tmp_path, caplog):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with webhook_server() as server:
        url_file = tmp_path / "hook"
        url_file.write_text(f"http://127.0.0.1:{server.server_port}/hook")
        _use(monkeypatch, settings, IM_NOTIFY_CHANNEL="webhook", IM_NOTIFY_WEBHOOK_URL_FILE=str(url_file),
             IM_MLFLOW_TRACKING_URI=f"http://127.0.0.1:{dead}")
        callbacks.on_training_failure({"dag": training_dag, "run_id": "r1", "reason": "task_failure"})
    ((_, _, body),) = server.received
    assert "mlflow run: not marked (" in body["text"]
    assert "could not mark the MLflow run of interest_migration_training / r1 failed" in caplog.text


def test_gate_alert_only_for_a_refused_version():
    refused = {"model_name": "interest_migration", "model_version": "4", "promoted": False, "metric": "ndcg_at_5",
               "challenger": 0.21, "champion": 0.25, "champion_version": "3", "best_baseline": "decayed_frequency",
               "best_baseline_value": 0.22, "reason": "challenger 0.2100 <= champion 0.2500"}
    alert = callbacks.gate_alert(refused, "interest_migration_training", "manual__1")
    assert alert.kind == "gate_refused" and alert.subject == "version 4 of interest_migration was not promoted to champion"
    assert "champion 0.25 (v3)" in alert.details["metric"] and alert.details["reason"].startswith("challenger")
    assert callbacks.gate_alert({**refused, "promoted": True}, "d", "r") is None
    assert callbacks.gate_alert({}, "d", "r") is None


def test_late_partition_alert_skips_runs_created_after_their_deadline():
    deadline = dt.datetime(2024, 6, 2, 6, 0, tzinfo=dt.UTC)
    dag_run = {"dag_id": "interest_migration_scoring", "dag_run_id": "scheduled__2024-06-01T00:00:00+00:00",
               "logical_date": "2024-06-01T00:00:00Z", "data_interval_start": "2024-06-01T00:00:00Z",
               "queued_at": "2024-06-02T00:00:05Z", "state": "running"}
    # The context Airflow's scheduler hands a deadline callback: the run as the REST API shows it.
    alert = callbacks.late_partition_alert({"dag_run": dag_run, "deadline": {"deadline_time": deadline}})
    assert alert.kind == "late_partition"
    assert alert.subject == "predictions for 2024-06-01 not published by 2024-06-02T06:00:00+00:00"
    # A manual run's data interval ends at its logical date; the deadline counts from the logical date.
    manual = {**dag_run, "data_interval_start": "2024-05-31T00:00:00Z", "run_type": "manual"}
    assert callbacks.late_partition_alert({"dag_run": manual, "deadline": {"deadline_time": deadline}}).subject == \
        alert.subject
    backfill = {**dag_run, "queued_at": "2024-07-15T10:00:00Z"}
    assert callbacks.late_partition_alert({"dag_run": backfill, "deadline": {"deadline_time": deadline}}) is None
