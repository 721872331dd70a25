"""DAG files: import cleanly, fast, with the expected tasks, edges, schedules, callbacks and no heavy imports."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time

import pytest

from pipelines.ops import callbacks, monitor_alerts
from pipelines.ops.sensors import InboxSensor
from tests.conftest import REPO_ROOT

# Every DAG file defines exactly the DAG named after it (the file list is the expected set).
DAG_IDS = {path.stem for path in (REPO_ROOT / "dags").glob("interest_migration_*.py")}


def _bag(monkeypatch: pytest.MonkeyPatch | None = None, **env: str):
    from airflow.dag_processing.dagbag import DagBag

    if monkeypatch is not None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


@pytest.fixture(scope="module")
def dagbag():
    return _bag()


def _downstream(dag) -> dict[str, list[str]]:
    return {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}


def test_no_import_errors_and_dag_id_is_file_name(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == DAG_IDS
    for dag_id, dag in dagbag.dags.items():
        assert dag.fileloc.endswith(f"{dag_id}.py")
        assert dag.doc_md and "Produces" in dag.doc_md
        expected = callbacks.on_training_failure if dag_id.endswith("training") else callbacks.on_task_failure
        if dag_id.endswith("monitoring"):  # model_degraded for its check task, failure for the others
            expected = monitor_alerts.on_check_failure
        for task in dag.tasks:
            assert task.on_failure_callback in (expected, [expected]), f"{dag_id}.{task.task_id} has no failure alert"


def test_training_edges_schedule_and_callbacks(dagbag):
    dag = dagbag.dags["interest_migration_training"]
    downstream = _downstream(dag)
    assert downstream["start_run"] == ["encode", "evaluate", "preprocess", "register", "train", "validate"]
    assert downstream["validate"] == ["preprocess"]
    assert downstream["preprocess"] == ["encode"]
    assert downstream["encode"] == ["evaluate", "register", "train"]
    assert downstream["train"] == ["evaluate", "register"]
    assert downstream["evaluate"] == ["register"]
    assert dag.max_active_runs == 1 and dag.params["data_start"] == ""
    # Default: no time schedule, only retraining requests (an asset) start it.
    assert [a.uri for a in dag.timetable.asset_condition.objects] == ["s3://interest-migration/requests/retraining"]
    register = dag.get_task("register")
    assert register.on_success_callback in (callbacks.on_register_success, [callbacks.on_register_success])


def test_training_schedule_comes_from_the_settings(monkeypatch):
    bag = _bag(monkeypatch, IM_TRAINING_SCHEDULE="0 3 * * 1")
    timetable = bag.dags["interest_migration_training"].timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert timetable.timetable.expression == "0 3 * * 1"
    assert [a.uri for a in timetable.asset_condition.objects] == ["s3://interest-migration/requests/retraining"]
    broken = _bag(monkeypatch, IM_TRAINING_SCHEDULE="every monday")
    (error,) = broken.import_errors.values()
    assert "IM_TRAINING_SCHEDULE='every monday'" in error


def test_scoring_is_daily_mapped_publishes_asset_then_reports(dagbag):
    dag = dagbag.dags["interest_migration_scoring"]
    assert dag.timetable.expression == "0 0 * * *"
    tasks = {t.task_id: t for t in dag.tasks}
    assert sorted(tasks["plan_shards"].downstream_task_ids) == ["score_shard"]
    assert "publish" in tasks["score_shard"].downstream_task_ids
    assert tasks["score_shard"].is_mapped if hasattr(tasks["score_shard"], "is_mapped") else True
    outlets = [str(getattr(o, "uri", o)) for o in tasks["publish"].outlets]
    assert any(uri.endswith("/predictions") for uri in outlets)
    assert _downstream(dag)["publish"] == ["report_migration"] and _downstream(dag)["report_migration"] == []
    assert not dag.deadline  # IM_SCORING_DEADLINE is empty by default


def test_scoring_deadline_comes_from_the_settings(monkeypatch):
    dag = _bag(monkeypatch, IM_SCORING_DEADLINE="06:30").dags["interest_migration_scoring"]
    (alert,) = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
    assert alert.interval == dt.timedelta(days=1, hours=6, minutes=30)
    assert alert.callback.path == "pipelines.ops.callbacks.on_scoring_deadline_missed"
    assert type(alert.reference).__name__ == "DagRunLogicalDateDeadline"


def test_ingest_waits_deferrably_then_lands_announces_and_checks(dagbag):
    dag = dagbag.dags["interest_migration_ingest"]
    assert dag.max_active_runs == 1 and type(dag.timetable).__name__ == "ContinuousTimetable"
    assert _downstream(dag) == {"wait_for_files": ["land_files"], "land_files": ["announce_landed", "check_failures"],
                                "announce_landed": [], "check_failures": []}
    sensor = dag.get_task("wait_for_files")
    assert isinstance(sensor, InboxSensor) and sensor.soft_fail and sensor.retries == 0
    outlets = [str(getattr(o, "uri", o)) for o in dag.get_task("announce_landed").outlets]
    assert outlets == ["s3://interest-migration/raw/events"]


def test_dag_files_do_not_import_heavy_modules_at_top_level():
    code = (
        "import sys, runpy, glob\n"
        f"for f in sorted(glob.glob('{REPO_ROOT}/dags/*.py')):\n"
        "    runpy.run_path(f)\n"
        # boto3 is left out: Airflow's amazon provider imports it to normalise the s3:// asset URI.
        "heavy = [m for m in ('tensorflow', 'keras', 'mlflow', 'great_expectations', 'pandas', 'duckdb', "
        "'matplotlib', 'scipy', 'sklearn') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT)
    assert out.stdout.strip().splitlines()[-1:] in ([], [""]), f"heavy imports at parse time: {out.stdout}"
    assert time.monotonic() - start < 60
