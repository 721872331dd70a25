"""docker-compose.yml (team deployment) is complete, safe and in step with the local team stack,
checked without a Docker engine: services, health checks, init jobs, volumes, 127.0.0.1-only ports,
the same Airflow commands as pipelines/devstack/topology.py, the same per-process secrets as
pipelines/devstack/environment.py, no secret in the file or on a command line, and a generated
.env that fills every variable."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
import yaml

from pipelines.config import settings_table
from pipelines.devstack import compose_env, environment, topology

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / "docker" / ".env.example"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker")
LONG_RUNNING = ("postgres", "redis", "s3", "mlflow", *AIRFLOW_SERVICES)
ONE_SHOT = ("postgres-init", "airflow-init", "mlflow-init")
# IM_* settings whose default points at 127.0.0.1 or a relative folder: wrong inside a container.
CONTAINER_REQUIRED = {"IM_S3_ENDPOINT_URL", "IM_BUCKET", "IM_MLFLOW_TRACKING_URI", "IM_WORK_DIR", "IM_MLFLOW_UI_URL"}
SECRET_VARS = tuple(compose_env.GENERATED)
REQUIRED_USE = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+):\?[^}]*\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _secrets_used(service: dict) -> set[str]:
    """The .env secrets a service's environment references."""
    return {name for value in _env(service).values() for name in REQUIRED_USE.findall(value) if name in SECRET_VARS}


def _command(service: dict) -> tuple[str, ...]:
    command = service.get("command", ())
    return tuple(command.split()) if isinstance(command, str) else tuple(command)


def test_every_service_is_there(compose):
    assert set(LONG_RUNNING + ONE_SHOT) <= set(compose["services"])
    assert {"cli", "airflow-cli"} <= set(compose["services"])


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_have_health_checks_and_restart(compose, name):
    service = compose["services"][name]
    check = service.get("healthcheck")
    assert check and check.get("test"), f"{name} has no healthcheck"
    assert check.get("interval") and check.get("retries"), f"{name} healthcheck lacks interval/retries"
    assert service.get("restart") == "unless-stopped", name


def test_published_ports_bind_loopback_only(compose):
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond 127.0.0.1"
            published[name] = str(port)
    assert set(published) == {"s3", "mlflow", "airflow-apiserver"}, published
    assert published["airflow-apiserver"].endswith(":8080")
    assert published["mlflow"].endswith(":5000") and published["s3"].endswith(":8333")
    for internal in ("postgres", "redis"):
        assert "ports" not in compose["services"][internal], f"{internal} must stay on the compose network"


def test_state_lives_in_named_volumes(compose):
    named = set(compose.get("volumes") or {})
    assert {"postgres-data", "s3-data", "airflow-logs", "mlflow-auth", "redis-data"} <= named
    for name in ("postgres", "s3", "redis", "mlflow"):
        mounts = [str(v).split(":")[0] for v in compose["services"][name]["volumes"]]
        assert any(m in named for m in mounts), f"{name} data is not on a named volume: {mounts}"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_services_share_dags_and_celery(compose, name):
    service = compose["services"][name]
    mounts = [str(v) for v in service["volumes"]]
    assert any(m.startswith("./dags:/opt/airflow/dags") for m in mounts), mounts
    # The UI plugin is installed with the package (airflow.plugins entry point): no plugins mount.
    assert not any("/opt/airflow/plugins" in m for m in mounts), mounts
    env = _env(service)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"].lower() == "true"  # documented: DAGs start paused
    depends = service.get("depends_on") or {}
    for job in ("airflow-init", "mlflow-init"):
        assert depends.get(job, {}).get("condition") == "service_completed_successfully", (name, job)
    assert depends.get("postgres", {}).get("condition") == "service_healthy", name


def test_airflow_commands_match_the_local_team_stack(compose):
    """The same subcommands as pipelines/devstack/topology.py (less --skip-serve-logs: in a
    container Airflow's own log server is reachable only over the compose network)."""
    services = compose["services"]
    for component in topology.AIRFLOW_COMPONENTS:
        name = "airflow-apiserver" if component == "api-server" else f"airflow-{component}"
        assert _command(services[name]) == topology.compose_command(component), name
    assert _command(services["airflow-worker"]) == topology.compose_command("worker")
    assert services["airflow-worker"]["deploy"]["replicas"] == 2  # as many workers as `make up-team`
    mlflow = " ".join(_command(services["mlflow"]))
    assert "--app-name=basic-auth" in mlflow and "--host=0.0.0.0" in mlflow and "--allowed-hosts=" in mlflow
    assert "s3://${IM_BUCKET:-interest-migration}/mlflow-artifacts" in mlflow
    seaweed = " ".join(_command(services["s3"]))
    assert services["s3"]["image"] == "chrislusf/seaweedfs:4.48" and seaweed.startswith("mini ")
    for flag in ("-webdav=false", "-master.telemetry=false", "-admin.ui=false"):
        assert flag in seaweed


def test_each_service_gets_only_the_secrets_of_its_process(compose):
    """Per-service environments: each service references exactly the .env secrets that its
    processes get in the local team stack (environment.PROCESS_SECRETS)."""
    for service_name, roles in topology.COMPOSE_SERVICES.items():
        expected: set[str] = set()
        for role in roles:
            for var in environment.PROCESS_SECRETS[role]:
                if var == "PGPASSFILE":
                    expected.add("POSTGRES_MLFLOW_PASSWORD" if role == "mlflow" else "POSTGRES_AIRFLOW_PASSWORD")
                else:
                    expected.update(topology.COMPOSE_SECRET_SOURCES[var])
        if service_name == "s3":  # locally in security.toml, here WEED_JWT_* variables
            expected |= {"SEAWEEDFS_VOLUME_JWT_KEY", "SEAWEEDFS_FILER_JWT_KEY"}
        assert _secrets_used(compose["services"][service_name]) == expected, service_name
    worker = _secrets_used(compose["services"]["airflow-worker"])
    assert not worker & {"POSTGRES_AIRFLOW_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY"}
    assert _secrets_used(compose["services"]["airflow-init"]) == {"AIRFLOW_ADMIN_PASSWORD", "POSTGRES_AIRFLOW_PASSWORD"}
    assert "x-airflow-env" in compose and not _secrets_used({"environment": compose["x-airflow-env"]})


def test_airflow_services_get_the_package_environment(compose):
    known = {var for var, _, _ in settings_table()}
    assert CONTAINER_REQUIRED <= known, "a required variable is no longer a setting"
    for name in (*AIRFLOW_SERVICES, "cli"):
        env = _env(compose["services"][name])
        missing = [v for v in sorted(CONTAINER_REQUIRED) if not env.get(v)]
        assert not missing, f"{name} lacks {missing}"
        assert env["IM_S3_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://s3:8333"
        assert env["IM_MLFLOW_TRACKING_URI"] == env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        # The MLflow link in Airflow's navigation is the browser's address, not the internal one.
        assert "mlflow:5000" not in env["IM_MLFLOW_UI_URL"] and "127.0.0.1" in env["IM_MLFLOW_UI_URL"]
        unknown = [v for v in env if v.startswith("IM_") and v not in known and v != "IM_CONFIG_FILE"]
        assert not unknown, f"{name} sets IM_ variables the package does not read: {unknown}"
    for name in ("airflow-apiserver", "airflow-worker", "cli"):
        env = _env(compose["services"][name])
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert env.get(var), f"{name} lacks {var}"


def test_init_jobs_run_as_root_and_write_json_with_python(compose):
    init = compose["services"]["airflow-init"]
    assert init["user"] == "0:0"  # to chown the shared volumes to AIRFLOW_UID
    assert _env(init)["AIRFLOW_UID"] == "${AIRFLOW_UID:-50000}"
    assert _command(init) == ("airflow",) and init["entrypoint"][-1] == "pipelines.devstack.compose_init"
    text = COMPOSE.read_text()
    assert "printf '{" not in text, "no JSON written with printf"
    for job in ONE_SHOT:
        assert compose["services"][job]["restart"] == "no"


def test_cli_service_lands_files(compose):
    cli = compose["services"]["cli"]
    assert cli["entrypoint"] == ["python", "-m", "pipelines"] and cli["profiles"] == ["cli"]
    assert any(str(v).endswith(":/data:ro") for v in cli["volumes"])


def test_no_secret_values_and_no_password_on_a_command_line(compose):
    text = COMPOSE.read_text()
    file_secrets = {spec["environment"] for spec in compose["secrets"].values()}  # see the next test
    for var in (v for v in SECRET_VARS if v not in file_secrets):
        uses = re.findall(r"(?<!\$)\$\{" + var + r"(:\?[^}]*|[^}]*)\}", text)
        assert uses, f"{var} is never used"
        assert all(u.startswith(":?") for u in uses), f"{var} must be required (${{{var}:?...}}), not defaulted"
    for name, service in compose["services"].items():
        command = " ".join(_command(service)) + " " + " ".join(service.get("entrypoint") or [])
        assert not REQUIRED_USE.findall(command), f"{name} has a secret on its command line"
        check = service.get("healthcheck", {}).get("test", [])
        assert not REQUIRED_USE.findall(" ".join(check) if isinstance(check, list) else check), name
        for key, value in _env(service).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "FERNET", "ACCESS_KEY")) and not key.endswith("_FILE"):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value), f"{name}: {key} is not taken from .env"
    redis = compose["services"]["redis"]
    assert "requirepass" in " ".join(_command(redis)) and "$$REDIS_PASSWORD" in " ".join(_command(redis))
    example = ENV_EXAMPLE.read_text()
    for var in SECRET_VARS:
        assert re.search(rf"^{var}=$", example, re.M), f"docker/.env.example must list {var} with no value"


def test_the_pseudonym_key_is_a_file_only_in_the_services_that_pseudonymise_or_look_up_users(compose):
    assert compose["secrets"] == {"pseudonym_key": {"environment": "PSEUDONYM_KEY"}}
    for name, service in compose["services"].items():
        mounted = "pseudonym_key" in (service.get("secrets") or [])
        assert mounted == (name in {"airflow-apiserver", "airflow-worker", "cli"}), name  # UI plugin, tasks, CLI
        if mounted:
            assert _env(service)["IM_PSEUDONYM_KEY_FILE"] == "/run/secrets/pseudonym_key"
    # The key reaches no process's environment: the only mention is the secret's source.
    assert re.findall(r"PSEUDONYM_KEY\b(?!_FILE)", COMPOSE.read_text()) == ["PSEUDONYM_KEY"]
    assert re.search(r"^PSEUDONYM_KEY=$", ENV_EXAMPLE.read_text(), re.M)


def test_generated_env_fills_every_variable_with_url_safe_values(tmp_path):
    path = compose_env.write_compose_env(tmp_path / ".env")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    required = set(REQUIRED_USE.findall(COMPOSE.read_text()))
    assert required <= set(values), required - set(values)
    for name in SECRET_VARS:
        assert re.fullmatch(r"[A-Za-z0-9_=-]{16,}", values[name]), name
    assert len(values["AIRFLOW_JWT_SECRET"]) >= 64
    with pytest.raises(FileExistsError):
        compose_env.write_compose_env(path)
    again = compose_env.write_compose_env(path, force=True)
    assert dict(line.split("=", 1) for line in again.read_text().splitlines() if "=" in line and
                not line.startswith("#"))["REDIS_PASSWORD"] != values["REDIS_PASSWORD"]


def test_dockerfile_builds_on_the_pinned_airflow_image():
    text = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2-python3\.11$", text, re.M)
    assert "constraints.txt" in text and '".[team]"' in text
    assert "docker/mlflow_auth.ini" in text
    ini = (REPO_ROOT / "docker" / "mlflow_auth.ini").read_text()
    assert "admin_password" not in ini.replace("MLFLOW_AUTH_ADMIN_PASSWORD", "")
