"""A backfill of the outcome-monitoring DAG over three days through Airflow (``dag.test`` in a child
process with its own SQLite metadata database), on partitions published by real scoring with a
champion forced worse than the baselines: the first day reports, the second and third fire the
alert (failed ``check``, a ``model_degraded`` webhook message, a retraining-request asset event)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from pipelines.config import env_name
from pipelines.platform import layout, storage
from tests import pyfunc_models as pm
from tests.conftest import REPO_ROOT
from tests.test_monitoring import DAYS, LOOKBACK, D, _events
from tests.test_ops_notify import webhook_server

pytestmark = [pytest.mark.services, pytest.mark.airflow, pytest.mark.slow]

H = 2
RUNNER = """
import datetime as dt, json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.models.asset import AssetEvent
from airflow.utils.session import create_session

dag = DagBag(dag_folder=sys.argv[1]).dags["interest_migration_monitoring"]
out = []
for day in sys.argv[2:]:
    run = dag.test(logical_date=dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC))
    out.append({ti.task_id: str(ti.state) for ti in run.get_task_instances()})
with create_session() as session:
    events = [(e.asset.uri, e.extra) for e in session.query(AssetEvent).all()]
print("RESULT " + json.dumps({"runs": out, "events": events}))
"""


def test_backfill_over_three_days_reports_and_fires_through_airflow(settings, tmp_path):
    configured = dataclasses.replace(pm.isolate(settings), lookback_days=LOOKBACK, horizon_days=H)
    pm.write_clean(configured, pm.clean_events(_events()))
    pm.register_as_champion(configured, variant="bad")
    from pipelines.serving import scoring

    monitored = [D, D + dt.timedelta(days=1), D + dt.timedelta(days=2)]
    assert monitored[-1] + dt.timedelta(days=H) <= DAYS[-1]
    for day in monitored:
        scoring.score_date(configured, day)

    home = tmp_path / "airflow"
    home.mkdir()
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}
    for name in ("bucket", "model_name", "mlflow_experiment", "lookback_days", "horizon_days", "s3_endpoint_url",
                 "mlflow_tracking_uri"):
        env[env_name(name)] = str(getattr(configured, name))
    env[env_name("monitor_consecutive_days")] = "2"
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    with webhook_server() as server:
        url_file = tmp_path / "webhook_url"
        url_file.write_text(f"http://127.0.0.1:{server.server_address[1]}/hook")
        env[env_name("notify_channel")] = "webhook"
        env[env_name("notify_webhook_url_file")] = str(url_file)
        # logical date X monitors X - (H + 1) days
        logical = [(day + dt.timedelta(days=H + 1)).isoformat() for day in monitored]
        done = subprocess.run([sys.executable, "-c", RUNNER, str(REPO_ROOT / "dags" / "interest_migration_monitoring.py"),
                               *logical], env=env, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
        received = list(server.received)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])

    first, second, third = result["runs"]
    assert first == {"monitor": "success", "request_retraining": "skipped", "check": "success"}
    assert second == third == {"monitor": "success", "request_retraining": "success", "check": "failed"}
    requests = [extra for uri, extra in result["events"] if uri == layout.retraining_requests_uri(configured.bucket)]
    assert [r["as_of_date"] for r in requests] == [monitored[1].isoformat(), monitored[2].isoformat()]
    assert all(r["reason"] == "model_degraded" for r in requests)
    texts = [body["text"] for _, _, body in received]
    assert len(texts) == 2 and all("the model has degraded: retraining requested" in t for t in texts)
    assert "degraded for 2 consecutive monitored days" in texts[0]
    assert storage.list_partitions(configured, layout.MONITORING_REPORTS) == monitored
