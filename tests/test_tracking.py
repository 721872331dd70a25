"""One MLflow run per Airflow DAG run, on the real MLflow server: retries resume it, tags say where
it came from, the training data is a dataset input."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.platform import tracking
from tests import pyfunc_models as pm

pytestmark = pytest.mark.services

WINDOW = {"data_start": dt.date(2017, 11, 25), "data_end": dt.date(2017, 12, 3)}


def test_same_dag_run_resumes_the_same_mlflow_run(settings):
    settings = pm.isolate(settings)
    logical = dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    first = tracking.start_or_resume_run(settings, dag_id="interest_migration_training",
                                         dag_run_id="manual__2024-01-02", logical_date=logical, **WINDOW)
    tracking.finish_run(settings, first, status="FAILED")  # the task failed; Airflow retries it
    again = tracking.start_or_resume_run(settings, dag_id="interest_migration_training",
                                         dag_run_id="manual__2024-01-02", logical_date=logical, **WINDOW)
    other = tracking.start_or_resume_run(settings, dag_id="interest_migration_training",
                                         dag_run_id="manual__2024-01-03", logical_date=logical, **WINDOW)
    assert again == first and other != first
    run = tracking.client(settings).get_run(first)
    assert run.info.status == "RUNNING"
    assert run.data.tags[tracking.TAG_DAG_ID] == "interest_migration_training"
    assert run.data.tags[tracking.TAG_DAG_RUN_ID] == "manual__2024-01-02"
    assert run.data.tags[tracking.TAG_LOGICAL_DATE] == logical.isoformat()
    assert run.data.tags[tracking.TAG_DATA_START] == "2017-11-25"
    assert run.data.tags[tracking.TAG_DATA_END] == "2017-12-03"
    assert run.data.tags[tracking.TAG_CODE_VERSION]
    experiment = tracking.client(settings).get_experiment(run.info.experiment_id)
    assert experiment.name == settings.mlflow_experiment


def test_same_run_id_in_another_dag_is_another_run(settings):
    settings = pm.isolate(settings)
    a = tracking.start_or_resume_run(settings, dag_id="dag_a", dag_run_id="scheduled__x", logical_date=None, **WINDOW)
    b = tracking.start_or_resume_run(settings, dag_id="dag_b", dag_run_id="scheduled__x", logical_date=None, **WINDOW)
    assert a != b


def test_dataset_input_and_validation_summary_are_recorded(settings):
    settings = pm.isolate(settings)
    run_id = tracking.start_or_resume_run(settings, dag_id="d", dag_run_id="r", logical_date="2024-01-02", **WINDOW)
    tracking.log_dataset_input(settings, run_id, source_uri=f"s3://{settings.bucket}/examples/abc/",
                               name="examples-2017-11-25_2017-12-03", digest="abc123",
                               profile={"train_rows": 10, "test_rows": 3})
    tracking.log_validation_summary(settings, run_id, {"partitions": ["2017-11-25"], "rows_quarantined": 4})
    run = tracking.client(settings).get_run(run_id)
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "examples-2017-11-25_2017-12-03"
    assert dataset_input.dataset.digest == "abc123"
    assert f"s3://{settings.bucket}/examples/abc/" in dataset_input.dataset.source
    assert '"test_rows": 3' in dataset_input.dataset.profile
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert '"rows_quarantined": 4' in run.data.tags[tracking.TAG_VALIDATION]
    tracking.finish_run(settings, run_id)
    assert tracking.client(settings).get_run(run_id).info.status == "FINISHED"


def test_requirement_mismatches_name_each_pin_this_environment_does_not_meet(tmp_path) -> None:
    numpy = tracking.installed_version("numpy")
    (tmp_path / "requirements.txt").write_text(
        f"mlflow=={tracking.installed_version('mlflow')}\nnumpy==0.0.1  # pinned by hand\n"
        "-c constraints.txt\nno-such-distribution-xyz==1.0\npandas\n")
    assert tracking.requirement_mismatches(tmp_path) == [
        f"the model was logged with numpy==0.0.1, {numpy} is installed here",
        "the model was logged with no-such-distribution-xyz==1.0, which is not installed here"]
    assert tracking.requirement_mismatches(tmp_path / "absent") == []
