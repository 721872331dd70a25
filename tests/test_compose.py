"""docker-compose.yml (team deployment) is complete and safe, checked without a Docker engine:
services, health checks, volumes, 127.0.0.1-only ports, shared DAGs/plugins, CeleryExecutor, and
that the Airflow services get every variable the package needs, with no secret in the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipelines.config import settings_table

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / "docker" / ".env.example"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker")
LONG_RUNNING = ("postgres", "redis", "s3", "mlflow", *AIRFLOW_SERVICES)
ONE_SHOT = ("postgres-init", "s3-init", "airflow-init")
# IM_* settings whose default points at 127.0.0.1 or a relative folder: wrong inside a container.
CONTAINER_REQUIRED = {"IM_S3_ENDPOINT_URL", "IM_BUCKET", "IM_MLFLOW_TRACKING_URI", "IM_WORK_DIR"}
SECRET_VARS = ("POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD",
               "AIRFLOW_FERNET_KEY", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_JWT_SECRET")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_every_service_is_there(compose):
    assert set(LONG_RUNNING + ONE_SHOT) <= set(compose["services"])


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
    assert {"postgres-data", "s3-data", "airflow-logs"} <= named
    for name in ("postgres", "s3"):
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
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
    assert "@postgres:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    depends = service.get("depends_on") or {}
    assert depends.get("airflow-init", {}).get("condition") == "service_completed_successfully", name
    assert depends.get("postgres", {}).get("condition") == "service_healthy", name


def test_airflow_services_get_the_package_environment(compose):
    """Every IM_* variable that has no usable default inside a container, plus the S3 credentials
    and MLflow variables, reaches every Airflow service (through the x-airflow-common anchor)."""
    known = {var for var, _, _ in settings_table()}
    assert CONTAINER_REQUIRED <= known, "a required variable is no longer a setting"
    anchor_env = _env(compose["x-airflow-common"])
    for name in AIRFLOW_SERVICES:
        env = _env(compose["services"][name])
        assert anchor_env.items() <= env.items(), f"{name} does not use the shared environment"
        missing = [v for v in sorted(CONTAINER_REQUIRED) if not env.get(v)]
        assert not missing, f"{name} lacks {missing}"
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI",
                    "MLFLOW_S3_ENDPOINT_URL"):
            assert env.get(var), f"{name} lacks {var}"
        assert env["IM_S3_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://s3:8333"
        assert env["IM_MLFLOW_TRACKING_URI"] == env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        unknown = [v for v in env if v.startswith("IM_") and v not in known
                   and v != "IM_CONFIG_FILE"]
        assert not unknown, f"{name} sets IM_ variables the package does not read: {unknown}"


def test_mlflow_server_uses_postgres_and_the_bucket(compose):
    service = compose["services"]["mlflow"]
    command = " ".join(service["command"]) if isinstance(service["command"], list) else service["command"]
    assert "@postgres:5432/mlflow" in command and "s3://$${IM_BUCKET}/mlflow-artifacts" in command
    assert "--host 0.0.0.0" in command and "--allowed-hosts" in command
    assert service["depends_on"]["postgres-init"]["condition"] == "service_completed_successfully"
    assert service["depends_on"]["s3-init"]["condition"] == "service_completed_successfully"


def test_no_secret_values_in_the_file(compose):
    text = COMPOSE.read_text()
    for var in SECRET_VARS:
        # ${VAR...} is compose interpolation from .env; $${VAR} is the container's own variable.
        uses = re.findall(r"(?<!\$)\$\{" + var + r"(:\?[^}]*)?\}", text)
        assert uses, f"{var} is never used"
        assert all(u.startswith(":?") for u in uses), f"{var} must be required (${{{var}:?...}}), not defaulted"
    for name, service in compose["services"].items():
        for key, value in _env(service).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "FERNET", "ACCESS_KEY")) \
                    and not key.endswith("_FILE"):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value), f"{name}: {key} is not taken from .env"
    example = ENV_EXAMPLE.read_text()
    for var in SECRET_VARS:
        assert re.search(rf"^{var}=$", example, re.M), f"docker/.env.example must list {var} with no value"


def test_dockerfile_builds_on_the_pinned_airflow_image():
    text = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2-python3\.11$", text, re.M)
    assert "constraints.txt" in text and "pip install" in text
