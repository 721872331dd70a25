"""The retention and forget DAG files: parse cleanly, with their params, schedule and failure alerts."""

from __future__ import annotations

import pytest

from pipelines.ops import callbacks
from tests.conftest import REPO_ROOT

FILES = {"interest_migration_retention": "retention", "interest_migration_forget": "forget"}


@pytest.fixture(scope="module")
def dags():
    from airflow.dag_processing.dagbag import DagBag

    found = {}
    for dag_id in FILES:
        bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / f"{dag_id}.py"))
        assert bag.import_errors == {}
        found.update(bag.dags)
    return found


def test_privacy_dags_parse_with_params_and_alerts(dags):
    assert set(dags) == set(FILES)
    for dag_id, dag in dags.items():
        assert dag.fileloc.endswith(f"{dag_id}.py") and "Produces" in dag.doc_md
        assert dag.max_active_runs == 1
        for task in dag.tasks:
            assert task.on_failure_callback in (callbacks.on_task_failure, [callbacks.on_task_failure])
    retention = dags["interest_migration_retention"]
    assert [t.task_id for t in retention.tasks] == ["apply_retention"]
    assert retention.params["as_of"] == "" and retention.params["dry_run"] is False
    assert type(retention.timetable).__name__ == "CronTriggerTimetable" and not retention.catchup
    forget = dags["interest_migration_forget"]
    assert [t.task_id for t in forget.tasks] == ["forget_user"]
    assert type(forget.timetable).__name__ == "NullTimetable"
    assert forget.params["pseudonym"] == "" and forget.params["user"] == ""
