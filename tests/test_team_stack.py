"""The team stack for real: PostgreSQL, Redis, SeaweedFS, MLflow (basic auth, on PostgreSQL) and
Airflow with CeleryExecutor and two workers, on free ports in a temporary folder. The repository's
DAGs run on it unchanged: a training run, a 3-day scoring backfill whose shards spread over both
workers, and a day whose worker is killed in the middle of a shard. Small data, one epoch: the
suite is about orchestration and closed doors, not model quality (`make test-team`, its own CI step).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.config import load_settings
from pipelines.devstack import airflow_api, credentials, demo, environment, lifecycle, processes
from pipelines.devstack.backends import redis_ping
from pipelines.devstack.config import StackConfig, isolated_config
from pipelines.devstack.services import LOOPBACK
from pipelines.platform import layout, storage
from tests.stack_checks import (
    WILDCARD_ADDRESSES,
    assert_no_secret_in_logs,
    environ_of,
    http_status,
    listeners_of,
    restore_environ,
)

pytestmark = [pytest.mark.teamstack, pytest.mark.services, pytest.mark.airflow, pytest.mark.slow]

SHARDS = 2  # two workers with one task slot each: a day's two shards must run on both
DEMO_SIZE = {"users": 200, "days": 12, "categories": 24, "seed": 5, "score_days": 3, "timeout": 1500}
# What a task must never hold: it could mint tokens, decrypt connections or reach the database.
TASK_FORBIDDEN = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY",
                  "PGPASSFILE", "MLFLOW_AUTH_CONFIG_PATH")
SETTINGS_FOR_THE_SUITE = {
    "IM_EPOCHS": "1", "IM_HORIZON_DAYS": "1", "IM_GATE_MARGIN_VS_BASELINES": "-1",
    "IM_SCORING_SHARDS": str(SHARDS),
}
CLIENT_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "IM_S3_ENDPOINT_URL", "IM_MLFLOW_TRACKING_URI",
                    "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_USERNAME",
                    "MLFLOW_TRACKING_PASSWORD", "IM_BUCKET", "IM_WORK_DIR", *SETTINGS_FOR_THE_SUITE)


PROBE_DAG = '''
"""What a task on a Celery worker holds: the names of its environment variables and its hostname."""
import datetime as dt

from airflow.sdk import dag, task


@dag(dag_id="task_env_probe", schedule=None, start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), catchup=False)
def task_env_probe():
    @task
    def look() -> dict:
        import os
        import socket

        return {"names": sorted(os.environ), "fqdn": socket.getfqdn()}

    look()


task_env_probe()
'''
REPO_ROOT = Path(__file__).resolve().parents[1]


class TeamStack:
    """The running stack, what `up` printed, and what the demo ran on it."""

    def __init__(self, cfg: StackConfig, printed: list[str]) -> None:
        self.cfg = cfg
        self.printed = printed
        self.api = airflow_api.AirflowApi(cfg)
        self.secret, _ = credentials.ensure_secrets(cfg)
        self.demo_output: list[str] = []

    def state(self) -> dict:
        from pipelines.devstack.state import read_state

        return read_state(self.cfg)

    def pids(self) -> list[int]:
        recorded = self.state().get("processes", {}).values()
        return processes.find_stack_processes(self.cfg.root, [int(p["pid"]) for p in recorded])


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamStack]:
    saved = {k: os.environ.get(k) for k in CLIENT_VARIABLES}
    os.environ.update(SETTINGS_FOR_THE_SUITE)
    # The repository's DAG files, unchanged, plus a probe that reports what a task holds.
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPO_ROOT / "dags", repo / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "dags" / "task_env_probe.py").write_text(PROBE_DAG)
    cfg = isolated_config(tmp_path_factory.mktemp("team") / "stack", repo, team=True, worker_concurrency=1)
    printed: list[str] = []
    try:
        began = time.monotonic()
        lifecycle.up(cfg, out=printed.append)
        print(f"team stack up in {time.monotonic() - began:.1f}s")
        yield TeamStack(cfg, printed)
    finally:
        began = time.monotonic()
        lifecycle.down(cfg, out=lambda _: None)
        print(f"team stack down in {time.monotonic() - began:.1f}s")
        restore_environ(saved)
        storage.reset_clients()
    assert processes.find_stack_processes(cfg.root) == [], "down left team stack processes behind"


def test_every_process_is_up_on_loopback_with_only_its_secrets(team):
    report = lifecycle.status(team.cfg)
    assert report["up"], report
    names = set(report["processes"])
    assert {"postgres", "redis", "seaweedfs", "mlflow", "api-server", "scheduler", "dag-processor", "triggerer",
            "worker-1", "worker-2", "log-server-worker-1", "log-server-worker-2"} <= names
    assert stat.S_IMODE(team.cfg.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(team.cfg.secrets_dir.stat().st_mode) == 0o700

    # Nothing of the stack listens on a wildcard address; the workers' log servers each on their own.
    listeners = listeners_of(team.pids())
    assert listeners
    assert not [item for item in listeners if item[1] in WILDCARD_ADDRESSES], listeners
    worker_port = int(team.cfg.internal_ports["airflow.worker_log"])
    assert {(a, p) for _, a, p in listeners if p == worker_port} == {("127.0.0.1", worker_port),
                                                                       ("127.0.0.2", worker_port)}
    assert all(address.startswith("127.") for _, address, _ in listeners)

    # The first `up` said where the credentials are and never what they are.
    output = "\n".join(team.printed)
    assert str(team.cfg.secrets_dir / "redis_password") in output
    assert not [v for v in credentials.secret_values(team.secret) if v in output]

    # A task on a worker holds the client credentials, but no signing key, Fernet key or database
    # password (Airflow's processes rename themselves, so /proc/<pid>/environ cannot be read: a
    # task reports its own environment).
    team.api.call("POST", "/dags/task_env_probe/dagRuns", body={"dag_run_id": "probe", "logical_date": None})
    states = airflow_api.wait_for_runs(team.api, "task_env_probe", ["probe"], timeout=300, out=lambda _: None)
    assert states == {"probe": "success"}
    seen = team.api.get(f"{airflow_api.run_path('task_env_probe', 'probe')}/taskInstances/look/xcomEntries/"
                        "return_value")["value"]
    seen = json.loads(seen) if isinstance(seen, str) else seen
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY"} <= set(seen["names"])
    assert not set(TASK_FORBIDDEN) & set(seen["names"]), set(TASK_FORBIDDEN) & set(seen["names"])
    recorded = team.state()["processes"]
    seaweed = environ_of(int(recorded["seaweedfs"]["pid"]))
    assert "AIRFLOW__CORE__FERNET_KEY" not in seaweed and "MLFLOW_TRACKING_PASSWORD" not in seaweed

    # Closed doors: MLflow, Redis and the SeaweedFS filer refuse strangers; WebDAV is off.
    assert http_status(f"{team.cfg.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    assert not redis_ping(team.cfg.redis_port, None) and redis_ping(team.cfg.redis_port, team.secret["redis_password"])
    filer = f"http://{LOOPBACK}:{team.cfg.internal_ports['filer.port']}/buckets/{team.cfg.bucket}/"
    assert http_status(filer) == 401
    assert http_status(f"http://{LOOPBACK}:{team.cfg.internal_ports['webdav.port']}/") == 0


def test_training_and_a_three_day_backfill_run_on_both_workers(team):
    assert demo.run_demo(team.cfg, out=team.demo_output.append, **DEMO_SIZE), "\n".join(team.demo_output)
    storage.reset_clients()
    settings = load_settings(environ=environment.read_env_file(team.cfg.env_file))
    partitions = storage.list_partitions(settings, layout.PREDICTIONS)
    assert len(partitions) == 3
    manifests = [storage.get_json(settings, layout.success_key(d)) for d in partitions]
    assert all(m["row_count"] > 0 for m in manifests)

    training = team.api.get(f"/dags/{demo.TRAINING_DAG}/dagRuns")["dag_runs"]
    assert [r["state"] for r in training] == ["success"]
    scoring = team.api.get(f"/dags/{demo.SCORING_DAG}/dagRuns")["dag_runs"]
    assert len(scoring) == 3 and all(r["state"] == "success" for r in scoring)

    # The mapped shards ran on both workers (the hostname each task instance reported). Per day it
    # may be one: a shard takes about a second since scoring runs without TensorFlow, so a worker
    # with free slots can take a whole day's shards before the other one polls the queue.
    addresses = {team.cfg.worker_address(i) for i in range(1, team.cfg.workers + 1)}
    spread = []
    for run in scoring:
        tis = team.api.get(f"{airflow_api.run_path(demo.SCORING_DAG, run['dag_run_id'])}/taskInstances",
                           task_id="score_shard")["task_instances"]
        shards = [ti for ti in tis if ti["task_id"] == "score_shard"]
        assert len(shards) == SHARDS and all(ti["state"] == "success" for ti in shards)
        spread.append({ti["hostname"] for ti in shards})
    assert set().union(*spread) == addresses, f"the shards did not run on both workers: {spread}"

    # PostgreSQL holds the runs (Airflow's) and the experiment runs and versions (MLflow's).
    import psycopg2

    port = team.cfg.postgres_port
    with psycopg2.connect(host=LOOPBACK, port=port, user="airflow", dbname="airflow",
                          passfile=str(credentials.pgpass_file(team.cfg, "airflow"))) as conn, conn.cursor() as cur:
        cur.execute("SELECT dag_id, state, count(*) FROM dag_run GROUP BY dag_id, state")
        runs = {(dag, state): n for dag, state, n in cur.fetchall()}
        cur.execute("SELECT count(DISTINCT hostname) FROM task_instance WHERE task_id = 'score_shard'")
        hosts = cur.fetchone()[0]
    assert {k: v for k, v in runs.items() if k[0] != "task_env_probe"} == {
        (demo.TRAINING_DAG, "success"): 1, (demo.SCORING_DAG, "success"): 3}
    assert hosts == 2
    with psycopg2.connect(host=LOOPBACK, port=port, user="mlflow", dbname="mlflow",
                          passfile=str(credentials.pgpass_file(team.cfg, "mlflow"))) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        assert cur.fetchone()[0] >= 1
        cur.execute("SELECT count(*) FROM model_versions")
        assert cur.fetchone()[0] >= 1
    # The Airflow role cannot read MLflow's database.
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(host=LOOPBACK, port=port, user="airflow", dbname="mlflow",
                         passfile=str(credentials.pgpass_file(team.cfg, "airflow"))).close()


def _running_shard(api: airflow_api.AirflowApi, run_id: str) -> dict | None:
    tis = api.get(f"{airflow_api.run_path(demo.SCORING_DAG, run_id)}/taskInstances", task_id="score_shard")
    running = [ti for ti in tis["task_instances"] if ti["task_id"] == "score_shard" and ti["state"] == "running"
               and ti.get("hostname")]
    return running[0] if running else None


def test_killing_a_worker_mid_shard_lets_the_other_finish_the_day(team):
    settings = load_settings(environ=environment.read_env_file(team.cfg.env_file))
    day = max(storage.list_partitions(settings, layout.PREDICTIONS))
    body = {"dag_id": demo.SCORING_DAG, "from_date": f"{day}T00:00:00Z", "to_date": f"{day}T00:00:00Z",
            "reprocess_behavior": "completed", "max_active_runs": 1, "run_backwards": False, "dag_run_conf": {}}
    backfill = airflow_api.create_backfill(team.api, body)
    runs = team.api.get(f"/dags/{demo.SCORING_DAG}/dagRuns", logical_date_gte=body["from_date"],
                        logical_date_lte=body["to_date"])["dag_runs"]
    assert len(runs) == 1
    run_id = runs[0]["dag_run_id"]

    deadline = time.monotonic() + 600
    victim = None
    while victim is None and time.monotonic() < deadline:
        victim = _running_shard(team.api, run_id)
        time.sleep(0.3)
    assert victim is not None, "no shard was seen running"
    addresses = [team.cfg.worker_address(i) for i in range(1, team.cfg.workers + 1)]
    killed = team.cfg.worker_names()[addresses.index(victim["hostname"])]
    survivor = next(a for a in addresses if a != victim["hostname"])
    worker_pid = int(team.state()["processes"][killed]["pid"])
    os.killpg(os.getpgid(worker_pid), signal.SIGKILL)  # the worker, its pool and the task it runs

    states = airflow_api.wait_for_runs(team.api, demo.SCORING_DAG, [run_id], timeout=900, out=lambda _: None)
    airflow_api.wait_backfill(team.api, int(backfill["id"]), 120)
    assert states[run_id] == "success"
    path = f"{airflow_api.run_path(demo.SCORING_DAG, run_id)}/taskInstances/score_shard/{victim['map_index']}"
    final = team.api.get(path)
    assert final["state"] == "success"
    assert final["try_number"] >= 2, "the killed shard was not retried"
    assert final["hostname"] == survivor
    manifest = storage.get_json(settings, layout.success_key(day))
    assert manifest["row_count"] > 0
    assert dt.date.fromisoformat(str(manifest["as_of_date"])[:10]) == day
    assert_no_secret_in_logs(team.cfg, team.secret)


def test_compose_init_jobs_are_idempotent_against_the_team_stack(team, monkeypatch):
    """docker-compose.yml's postgres-init and mlflow-init run the same code against the team
    stack's servers: a second run changes nothing and the accounts still work."""
    from pipelines.devstack import compose_init

    monkeypatch.setenv("POSTGRES_HOST", LOOPBACK)
    monkeypatch.setenv("POSTGRES_PORT", str(team.cfg.postgres_port))
    monkeypatch.setenv("POSTGRES_PASSWORD", team.secret["postgres_superuser_password"])
    monkeypatch.setenv("POSTGRES_AIRFLOW_PASSWORD", team.secret["postgres_airflow_password"])
    monkeypatch.setenv("POSTGRES_MLFLOW_PASSWORD", team.secret["postgres_mlflow_password"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team.cfg.mlflow_url)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", team.secret["mlflow_admin_password"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team.secret["mlflow_client_password"])
    assert compose_init.main(["postgres"]) == 0
    assert compose_init.main(["mlflow-user"]) == 0
    search = f"{team.cfg.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(search, auth=(credentials.MLFLOW_CLIENT_USER, team.secret["mlflow_client_password"])) == 200
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "not-the-admin-password")
    assert compose_init.main(["mlflow-user"]) == 1  # a wrong admin password is an error, not a silent pass
    monkeypatch.delenv("POSTGRES_MLFLOW_PASSWORD")
    assert compose_init.main(["postgres"]) == 1
