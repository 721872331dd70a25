"""The environment the stack hands to its processes and to its users.

Three layers: the caller's settings (the ``IM_*`` variables that name a setting, e.g.
``IM_EPOCHS=2``, so they reach the tasks), the package's contract against this stack (S3 and
MLflow endpoints, bucket, credentials) and, with Airflow, Airflow's own configuration. The result
is written to ``<root>/stack.env`` (0600) for a shell to ``source``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path

from pipelines.config import setting_variables
from pipelines.devstack import services
from pipelines.devstack.config import StackConfig
from pipelines.devstack.credentials import ADMIN_USER, write_private

REGION = "us-east-1"
# The scoring DAG's start date bounds backfills; the demo data (like Taobao's) is from 2017.
SCORING_START_DATE_VAR = "IM_SCORING_START_DATE"
STACK_SCORING_START_DATE = "2017-01-01"

# Variables whose value is a secret, and the file in <root>/secrets that holds it (`stack env`
# prints a file read instead of the value).
SECRET_VARIABLES = {
    "AWS_ACCESS_KEY_ID": "s3_access_key", "AWS_SECRET_ACCESS_KEY": "s3_secret_key",
    "AIRFLOW__CORE__FERNET_KEY": "airflow_fernet_key", "AIRFLOW__API__SECRET_KEY": "airflow_api_secret_key",
    "AIRFLOW__API_AUTH__JWT_SECRET": "airflow_jwt_secret"}
# Variables `stack env` leaves out: their value embeds a secret that no single file holds.
UNPRINTABLE_VARIABLES = ("AIRFLOW_CONN_AWS_DEFAULT",)


def package_environment(cfg: StackConfig, secret: Mapping[str, str]) -> dict[str, str]:
    """The environment contract of the package against this stack (what tasks and the CLI need)."""
    return {
        "AWS_ACCESS_KEY_ID": secret["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": secret["s3_secret_key"],
        "AWS_DEFAULT_REGION": REGION,
        "IM_S3_ENDPOINT_URL": cfg.s3_endpoint_url,
        "IM_S3_REGION": REGION,
        "IM_BUCKET": cfg.bucket,
        "IM_MLFLOW_TRACKING_URI": cfg.mlflow_url,
        "IM_WORK_DIR": str(cfg.root / "work"),
        "MLFLOW_TRACKING_URI": cfg.mlflow_url,
        "MLFLOW_S3_ENDPOINT_URL": cfg.s3_endpoint_url,
    }


def airflow_environment(cfg: StackConfig, secret: Mapping[str, str]) -> dict[str, str]:
    """Airflow's configuration for the stack (AIRFLOW_HOME, folders, ports, auth, keys, connections).

    The UI plugin is not a folder: it comes with the installed package (``airflow.plugins`` entry
    point)."""
    home = cfg.airflow_home
    aws_conn = {"conn_type": "aws", "login": secret["s3_access_key"], "password": secret["s3_secret_key"],
                "extra": {"endpoint_url": cfg.s3_endpoint_url, "region_name": REGION}}
    mlflow_conn = {"conn_type": "http", "host": cfg.mlflow_url}
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(cfg.repo / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(cfg.passwords_file),
        "AIRFLOW__CORE__FERNET_KEY": secret["airflow_fernet_key"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.airflow_url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": services.LOOPBACK,
        "AIRFLOW__API__PORT": str(cfg.airflow_port),
        "AIRFLOW__API__BASE_URL": cfg.airflow_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secret["airflow_api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": secret["airflow_jwt_secret"],
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(cfg.internal_ports["airflow.worker_log"]),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(cfg.internal_ports["airflow.trigger_log"]),
        # New DAG files show up within ~20 s instead of 5 minutes.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # The dev stack runs what it is asked to (trigger, backfill); the daily schedule would
        # otherwise score "yesterday" for data that ends years ago. IM_STACK_USE_SCHEDULE=1 turns it on.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(cfg.use_schedule),
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws_conn),
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps(mlflow_conn),
    }


def stack_environment(cfg: StackConfig, secret: Mapping[str, str],
                      environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Everything a client of the stack needs: the caller's settings (the ``IM_*`` variables of
    ``environ``, default this process, that name a setting; not the stack's own ``IM_STACK_*``),
    the package contract and (with Airflow) the Airflow configuration."""
    env = setting_variables(environ)
    env.update(package_environment(cfg, secret))
    if cfg.with_airflow:
        env.update(airflow_environment(cfg, secret))
        env.setdefault(SCORING_START_DATE_VAR, STACK_SCORING_START_DATE)
    return env


def shell_quote(value: str) -> str:
    """``value`` in single quotes, safe for ``sh`` whatever it holds."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def write_env_file(cfg: StackConfig, env: Mapping[str, str]) -> Path:
    """Write ``<root>/stack.env`` (0600): ``export`` lines a shell can ``source``."""
    lines = ["# Environment of the embedded stack (holds credentials: keep it 0600, never commit it).",
             f"# source {cfg.env_file}"]
    lines += [f"export {key}={shell_quote(value)}" for key, value in sorted(env.items())]
    write_private(cfg.env_file, "\n".join(lines) + "\n")
    return cfg.env_file


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``stack.env`` written by :func:`write_env_file` back into a mapping."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, raw = line[len("export "):].partition("=")
            parts = shlex.split(raw)
            env[key] = parts[0] if parts else ""
    return env


def export_lines(cfg: StackConfig) -> list[str]:
    """``export`` lines for the stack's environment (``stack env``) in which every secret is a
    read of its file, so the output is safe to paste or log. Reads ``<root>/stack.env``."""
    lines = []
    for key, value in sorted(read_env_file(cfg.env_file).items()):
        if key in SECRET_VARIABLES:
            lines.append(f'export {key}="$(cat {shell_quote(str(cfg.secrets_dir / SECRET_VARIABLES[key]))})"')
        elif key not in UNPRINTABLE_VARIABLES:
            lines.append(f"export {key}={shell_quote(value)}")
    return lines
