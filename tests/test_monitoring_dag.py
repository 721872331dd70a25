"""The outcome-monitoring DAG file: parses, with the tasks, edges, schedule, outlet and callbacks it promises."""

from __future__ import annotations

import pytest

from pipelines.ops import monitor_alerts
from tests.conftest import REPO_ROOT

DAG_FILE = REPO_ROOT / "dags" / "interest_migration_monitoring.py"


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.dags["interest_migration_monitoring"]


def test_monitoring_dag_requests_retraining_then_checks(dag):
    assert dag.fileloc.endswith("interest_migration_monitoring.py") and "Produces" in dag.doc_md
    assert dag.timetable.expression == "0 6 * * *" and dag.max_active_runs == 1
    assert {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks} == {
        "monitor": ["check", "request_retraining"], "request_retraining": ["check"], "check": []}
    outlets = [str(getattr(o, "uri", o)) for o in dag.get_task("request_retraining").outlets]
    assert outlets == ["s3://interest-migration/requests/retraining"]
    check = dag.get_task("check")
    assert check.trigger_rule == "none_failed" and check.retries == 0  # a skipped request still checks; fails once
    for task in dag.tasks:
        assert task.on_failure_callback in (monitor_alerts.on_check_failure, [monitor_alerts.on_check_failure])
    assert "date" in dag.params and dag.params["intraday"] is False


def test_monitoring_settings_are_range_checked():
    from pipelines.config import ConfigError, load_settings

    settings = load_settings(environ={"IM_MONITOR_MARGIN": "0.05", "IM_MONITOR_CONSECUTIVE_DAYS": "2"})
    assert (settings.monitor_metric, settings.monitor_margin, settings.monitor_consecutive_days) == ("ndcg_at_5", 0.05, 2)
    for name, value in (("IM_MONITOR_METRIC", "auc"), ("IM_MONITOR_MARGIN", "1.5"), ("IM_MONITOR_CONSECUTIVE_DAYS", "0")):
        with pytest.raises(ConfigError, match=name):
            load_settings(environ={name: value})
