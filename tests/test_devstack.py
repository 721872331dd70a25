"""The embedded stack (pipelines.devstack): real SeaweedFS, MLflow and Airflow processes on free
ports in a temporary folder, never touching the repository's .local/.

The full-stack test runs a throw-away repo whose only DAG sleeps, so `down` is checked while a
LocalExecutor task is running (the case where killing the scheduler alone leaves workers behind).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_settings
from pipelines.devstack import airflow_api, credentials, demo, environment, lifecycle, processes
from pipelines.devstack import services as svc
from pipelines.devstack.config import StackConfig, StackError, default_config, isolated_config
from pipelines.platform import layout, storage, tracking
from tests.stack_checks import (
    WILDCARD_ADDRESSES,
    assert_no_secret_in_logs,
    http_status,
    listeners_of,
    restore_environ,
)

SLEEPY_DAG = '''
"""A DAG whose task sleeps, to check that `stack down` ends running task processes."""
import datetime as dt

from airflow.sdk import dag, task


@dag(dag_id="sleepy", schedule=None, start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), catchup=False)
def sleepy():
    @task
    def nap() -> None:
        import time

        time.sleep(600)

    nap()


sleepy()
'''


def _stack_pids(root: Path) -> list[str]:
    """Every live process whose command line or environment mentions ``root``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            blob = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
        except OSError:
            continue
        if str(root).encode() in blob:
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:120]!r}")
    return found


def test_default_config_reads_ports_and_root_from_env(tmp_path):
    settings = load_settings(environ={"IM_STACK_S3_PORT": "9100", "IM_STACK_AIRFLOW_PORT": "9101",
                                      "IM_STACK_PORT_BASE": "20000"})
    cfg = default_config(settings, tmp_path)
    assert (cfg.s3_port, cfg.mlflow_port, cfg.airflow_port) == (9100, 5000, 9101)
    assert cfg.root == (tmp_path / ".local").resolve()
    internal = sorted(cfg.internal_ports.values())
    assert internal == list(range(20000, 20000 + len(internal)))
    assert 8080 not in cfg.all_ports().values() or cfg.airflow_port == 8080
    # A bad port is named by the settings, before any stack is built.
    with pytest.raises(ConfigError, match="IM_STACK_MLFLOW_PORT='five'"):
        default_config(load_settings(environ={"IM_STACK_MLFLOW_PORT": "five"}), tmp_path)
    with pytest.raises(ConfigError, match="IM_STACK_PORT_BASE='65530' is out of range"):
        default_config(load_settings(environ={"IM_STACK_PORT_BASE": "65530"}), tmp_path)
    other_root = default_config(load_settings(environ={"IM_STACK_ROOT_DIR": str(tmp_path / "elsewhere")}), tmp_path)
    assert other_root.root == (tmp_path / "elsewhere").resolve()


def test_default_ports_never_reuse_weeds_defaults(tmp_path):
    cfg = default_config(load_settings(environ={}), tmp_path)
    ports = list(cfg.all_ports().values())
    assert len(ports) == len(set(ports)), "two listeners on one port"
    assert (cfg.s3_port, cfg.mlflow_port, cfg.airflow_port) == (8333, 5000, 8080)
    assert 8080 not in cfg.seaweed_ports().values() and 8793 not in ports


def test_secrets_are_private_generated_once_and_stable(tmp_path):
    cfg = isolated_config(tmp_path / "stack", with_airflow=False)
    values, created = credentials.ensure_secrets(cfg)
    assert sorted(created) == sorted(credentials.SECRET_FILES)
    assert stat.S_IMODE(cfg.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(cfg.secrets_dir.stat().st_mode) == 0o700
    for name in credentials.SECRET_FILES:
        assert stat.S_IMODE((cfg.secrets_dir / name).stat().st_mode) == 0o600, name
    again, created_again = credentials.ensure_secrets(cfg)
    assert created_again == [] and again == values
    assert len(credentials.admin_password(cfg)) >= 16
    caller = {"IM_EPOCHS": "2", "IM_STACK_S3_PORT": "9999", "IM_NOT_A_SETTING": "x"}
    env_file = environment.write_env_file(cfg, environment.stack_environment(cfg, values, environ=caller))
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    parsed = environment.read_env_file(env_file)
    assert parsed["AWS_SECRET_ACCESS_KEY"] == values["s3_secret_key"]
    assert parsed["IM_EPOCHS"] == "2" and parsed["IM_S3_ENDPOINT_URL"] == cfg.s3_endpoint_url
    # Only variables that name a setting reach the tasks, never the stack's own.
    assert "IM_STACK_S3_PORT" not in parsed and "IM_NOT_A_SETTING" not in parsed
    # `stack env` shows secrets as reads of their files, never their values.
    shown = "\n".join(environment.export_lines(cfg))
    assert values["s3_secret_key"] not in shown and str(cfg.secrets_dir / "s3_secret_key") in shown


def test_the_embedded_stack_never_claims_the_team_stacks_processes(tmp_path):
    """The team stack lives in <root>/team: the embedded stack's `down` (and `up`'s clean-up of
    leftovers) must not take its processes for leftovers of its own."""
    import subprocess
    import sys

    root = (tmp_path / ".local").resolve()
    (root / "team" / "postgres").mkdir(parents=True)
    (root / "logs").mkdir()
    code = "import time; time.sleep(60)"
    team_proc = subprocess.Popen([sys.executable, "-c", code, str(root / "team" / "postgres")])
    own_proc = subprocess.Popen([sys.executable, "-c", code, str(root / "logs")])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and own_proc.pid not in processes.find_stack_processes(root):
            time.sleep(0.1)
        embedded = processes.find_stack_processes(root)
        assert own_proc.pid in embedded and team_proc.pid not in embedded
        assert team_proc.pid in processes.find_stack_processes(root / "team")
    finally:
        for proc in (team_proc, own_proc):
            proc.kill()
            proc.wait()


def test_port_in_use_names_the_port_and_starts_nothing(tmp_path):
    cfg = isolated_config(tmp_path / "stack")
    with socket.socket() as holder:
        holder.bind((svc.LOOPBACK, cfg.mlflow_port))
        holder.listen()
        with pytest.raises(StackError) as info:
            lifecycle.up(cfg, out=lambda _: None)
    message = str(info.value)
    assert f"{cfg.mlflow_port} (MLflow)" in message and "already in use" in message
    assert "IM_STACK_MLFLOW_PORT" in message
    assert _stack_pids(cfg.root) == []


def _trigger_sleepy(cfg: StackConfig) -> None:
    api = airflow_api.AirflowApi(cfg)
    api.call("POST", "/dags/sleepy/dagRuns", body={"dag_run_id": "nap1", "logical_date": None})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        states = airflow_api.task_states(api, "sleepy", "nap1")
        if states.get("nap") == "running":
            return
        time.sleep(2)
    raise AssertionError(f"task never started running: {states}")


@pytest.mark.services
@pytest.mark.airflow
@pytest.mark.slow
def test_up_status_down_up_keeps_data_and_leaves_nothing(tmp_path):
    repo = tmp_path / "repo"
    (repo / "dags").mkdir(parents=True)
    (repo / "dags" / "sleepy.py").write_text(SLEEPY_DAG)
    cfg = isolated_config(tmp_path / "stack", repo)
    printed: list[str] = []
    try:
        began = time.monotonic()
        lifecycle.up(cfg, out=printed.append)
        first_up = time.monotonic() - began
        password = credentials.admin_password(cfg)
        secret, _ = credentials.ensure_secrets(cfg)
        first_output = "\n".join(printed)
        # The first start says where the credentials are, never what they are.
        leaked = [v for v in credentials.secret_values(secret) if v in first_output]
        assert not leaked, "the first `up` printed a secret"
        assert cfg.airflow_url in first_output and str(cfg.passwords_file) in first_output
        assert str(cfg.secrets_dir / "s3_secret_key") in first_output
        assert stat.S_IMODE(cfg.root.stat().st_mode) == 0o700

        report = lifecycle.status(cfg)
        assert report["up"], report
        assert set(report["processes"]) == {"seaweedfs", "mlflow", *lifecycle.AIRFLOW_COMPONENTS,
                                            "log-server-scheduler", "log-server-triggerer", "online"}
        # The online endpoint is up (no champion yet: its health says so) and scores only with its token.
        online = f"http://127.0.0.1:{cfg.online_port}"
        with urllib.request.urlopen(f"{online}/healthz", timeout=10) as answer:
            assert json.load(answer)["status"] == "no_model"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(urllib.request.Request(f"{online}/v1/score", data=b'{"user_id": "1"}'), timeout=10)
        assert denied.value.code == 401
        # No listener of the stack on a wildcard address (Airflow's own log servers would be).
        pids = processes.find_stack_processes(cfg.root, [p["pid"] for p in json.loads(
            cfg.state_file.read_text())["processes"].values()])
        listeners = listeners_of(pids)
        assert listeners and all(address == svc.LOOPBACK for _, address, _ in listeners), listeners
        assert not [item for item in listeners if item[1] in WILDCARD_ADDRESSES]
        ports = {port for _, _, port in listeners}
        assert cfg.internal_ports["airflow.worker_log"] in ports and cfg.internal_ports["airflow.trigger_log"] in ports
        assert cfg.internal_ports["webdav.port"] not in ports  # WebDAV is off
        # MLflow refuses strangers.
        assert http_status(f"{cfg.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1") == 401
        state = json.loads(cfg.state_file.read_text())
        assert state["ports"]["Airflow API/UI"] == cfg.airflow_port
        health = json.load(urllib.request.urlopen(f"{cfg.airflow_url}/api/v2/monitor/health"))
        assert health["scheduler"]["status"] == "healthy"

        # Data in S3 and MLflow, written as a user of the stack would (through stack.env).
        env = environment.read_env_file(cfg.env_file)
        settings = load_settings(environ=env)
        storage.reset_clients()
        saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        os.environ.update({k: env[k] for k in saved})
        try:
            storage.put_text(settings, "keep/me.txt", "still here")
            assert settings.mlflow_tracking_uri == cfg.mlflow_url
            client = tracking.client(settings)
            experiment = client.create_experiment("kept")

            _trigger_sleepy(cfg)
            began = time.monotonic()
            lifecycle.down(cfg, out=printed.append)
            first_down = time.monotonic() - began
            assert _stack_pids(cfg.root) == []
            assert not cfg.state_file.exists()
            assert lifecycle.status(cfg)["up"] is False

            printed.clear()
            began = time.monotonic()
            lifecycle.up(cfg, out=printed.append)
            second_up = time.monotonic() - began
            second_output = "\n".join(printed)
            assert password not in second_output and secret["s3_secret_key"] not in second_output
            assert credentials.admin_password(cfg) == password
            storage.reset_clients()
            assert storage.get_bytes(settings, "keep/me.txt") == b"still here"
            assert client.get_experiment(experiment).name == "kept"
            runs = airflow_api.AirflowApi(cfg).get("/dags/sleepy/dagRuns")["dag_runs"]
            assert [r["dag_run_id"] for r in runs] == ["nap1"]
        finally:
            restore_environ(saved)
            storage.reset_clients()

        # No credential in any log the stack wrote.
        assert_no_secret_in_logs(cfg, secret)
        print(f"first up {first_up:.1f}s, down with a running task {first_down:.1f}s, second up {second_up:.1f}s")
    finally:
        lifecycle.down(cfg, out=lambda _: None)
    assert _stack_pids(cfg.root) == []


@pytest.mark.services
@pytest.mark.airflow
@pytest.mark.slow
def test_stack_run_twice_trains_once_and_rescores_without_duplicates(tmp_path, monkeypatch):
    """`make run`'s driver end to end on the real DAGs, twice: the second run reuses the data and
    the successful training run, re-scores the same days and replaces (not adds) partitions."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "IM_S3_ENDPOINT_URL", "IM_MLFLOW_TRACKING_URI",
                "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "IM_BUCKET", "IM_WORK_DIR",
                "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # run_demo sets them; restored afterwards
    # Tiny model budget; the gate margin lets the first version become champion whatever its score,
    # because this test is about orchestration, not model quality.
    monkeypatch.setenv("IM_EPOCHS", "1")
    monkeypatch.setenv("IM_HORIZON_DAYS", "1")  # 12 days hold train, validation and test as-of times
    monkeypatch.setenv("IM_GATE_MARGIN_VS_BASELINES", "-1")
    cfg = isolated_config(tmp_path / "stack")
    size = {"users": 200, "days": 12, "categories": 24, "seed": 5, "score_days": 3, "timeout": 1500}
    try:
        first: list[str] = []
        assert demo.run_demo(cfg, out=first.append, **size), "\n".join(first)
        storage.reset_clients()
        settings = load_settings(environ=environment.read_env_file(cfg.env_file))
        api = airflow_api.AirflowApi(cfg)
        partitions = storage.list_partitions(settings, layout.PREDICTIONS)
        assert len(partitions) == 3  # a backfill over three consecutive days
        keys_before = storage.list_keys(settings, layout.PREDICTIONS + "/")
        manifests = [storage.get_json(settings, layout.success_key(d)) for d in partitions]
        assert all(m["row_count"] > 0 for m in manifests)
        summary = "\n".join(first)
        assert "champion" in summary and cfg.airflow_url in summary and cfg.mlflow_url in summary

        second: list[str] = []
        assert demo.run_demo(cfg, out=second.append, **size), "\n".join(second)
        assert any("already succeeded" in line for line in second)
        training_runs = api.get(f"/dags/{demo.TRAINING_DAG}/dagRuns")["dag_runs"]
        assert len(training_runs) == 1
        scoring_runs = api.get(f"/dags/{demo.SCORING_DAG}/dagRuns")["dag_runs"]
        assert len(scoring_runs) == 3 and all(r["state"] == "success" for r in scoring_runs)
        assert storage.list_partitions(settings, layout.PREDICTIONS) == partitions
        assert len(storage.list_keys(settings, layout.PREDICTIONS + "/")) == len(keys_before)
        versions = demo.champion_version(settings)
        assert versions == "1"
    finally:
        lifecycle.down(cfg, out=lambda _: None)
        storage.reset_clients()
    assert _stack_pids(cfg.root) == []
