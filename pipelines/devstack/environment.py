"""The environment the stack hands to each of its processes, and to its users.

Layers: the caller's settings (the ``IM_*`` variables that name a setting, e.g. ``IM_EPOCHS=2``,
so they reach the tasks), the package's contract against this stack (S3 and MLflow endpoints,
bucket, the S3 keys and the MLflow client account), Airflow's configuration without secrets, and
per process only the secrets that process needs (:data:`PROCESS_SECRETS`; docs/deployment.md has
the table). Celery workers and the tasks they run get no database password, no JWT signing key,
no Fernet key and no API secret: a task talks to Airflow only through the execution API, with
the short-lived token the scheduler put in its workload.

``stack.env`` (0600, for a shell to ``source``) holds what a user of the stack needs: the package
contract and Airflow's configuration, with no Airflow signing key.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path

from pipelines.config import setting_variables
from pipelines.devstack import credentials, services
from pipelines.devstack.config import StackConfig
from pipelines.devstack.credentials import ADMIN_USER, MLFLOW_CLIENT_USER, write_private
from pipelines.devstack.log_server import HOSTNAME_VAR

REGION = "us-east-1"
# The scoring DAG's start date bounds backfills; the demo data (like Taobao's) is from 2017.
SCORING_START_DATE_VAR = "IM_SCORING_START_DATE"
STACK_SCORING_START_DATE = "2017-01-01"

# Variables whose value is a secret, and the file in <root>/secrets that holds it (`stack env`
# prints a file read instead of the value).
SECRET_VARIABLES = {
    "AWS_ACCESS_KEY_ID": "s3_access_key", "AWS_SECRET_ACCESS_KEY": "s3_secret_key",
    "MLFLOW_TRACKING_PASSWORD": "mlflow_client_password",
    "AIRFLOW__CORE__FERNET_KEY": "airflow_fernet_key", "AIRFLOW__API__SECRET_KEY": "airflow_api_secret_key",
    "AIRFLOW__API_AUTH__JWT_SECRET": "airflow_jwt_secret",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "mlflow_flask_secret"}
# Variables whose value embeds a secret that no single file holds (never in stack.env).
EMBEDDING_VARIABLES = ("AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND")
# Variables that point at a file of secrets.
SECRET_FILE_VARIABLES = ("PGPASSFILE", "MLFLOW_AUTH_CONFIG_PATH", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
CLIENT_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD")

# Process -> the secret-bearing variables it gets. Log servers are "log-server-<name>", Celery
# workers "worker-<n>". In the embedded stack tasks run as children of the scheduler
# (LocalExecutor) and inherit its environment: its row adds the client secrets they need.
PROCESS_SECRETS: dict[str, tuple[str, ...]] = {
    "postgres": (),  # reads its own data folder; roles and passwords are set by `up`
    "redis": (),  # its password is in redis.conf, which it is given as an argument
    "seaweedfs": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    "mlflow": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_AUTH_CONFIG_PATH",
               "MLFLOW_FLASK_SERVER_SECRET_KEY", "PGPASSFILE"),
    "airflow-db-migrate": ("PGPASSFILE",),
    "api-server": ("PGPASSFILE", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY",
                   "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
                   *CLIENT_SECRETS),  # the UI plugin reads S3 and MLflow
    # The scheduler encrypts the kwargs of the triggers it creates (deadline callbacks): without the
    # Fernet key it stores them in clear and the triggerer, which has the key, dies decrypting them.
    "scheduler": ("PGPASSFILE", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", *EMBEDDING_VARIABLES),
    "dag-processor": ("PGPASSFILE", "AIRFLOW__CORE__FERNET_KEY"),
    "triggerer": ("PGPASSFILE", "AIRFLOW__CORE__FERNET_KEY"),
    "log-server": ("AIRFLOW__API__SECRET_KEY",),
    "worker": (*EMBEDDING_VARIABLES, *CLIENT_SECRETS),
    "online": CLIENT_SECRETS,  # reads clean events and the champion; its token is a file (IM_ONLINE_TOKEN_FILE)
}
EMBEDDED_SCHEDULER_EXTRA = CLIENT_SECRETS
ALL_SECRET_VARIABLES = frozenset(v for names in PROCESS_SECRETS.values() for v in names) | {
    "PGPASSWORD", "AIRFLOW_CONN_AWS_DEFAULT"}


def process_role(name: str) -> str:
    """The :data:`PROCESS_SECRETS` row of process ``name`` (``worker-2`` -> ``worker``)."""
    for prefix in ("log-server", "worker"):
        if name == prefix or name.startswith(prefix + "-"):
            return prefix
    return name


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
        # A path, not the key: pseudonymisation (IM_PSEUDONYMIZE) reads the file when it needs the key.
        "IM_PSEUDONYM_KEY_FILE": str(cfg.secrets_dir / credentials.PSEUDONYM_KEY_FILE),
        "IM_ONLINE_TOKEN_FILE": str(cfg.secrets_dir / credentials.ONLINE_TOKEN_FILE),
        "MLFLOW_TRACKING_URI": cfg.mlflow_url,
        "MLFLOW_TRACKING_USERNAME": MLFLOW_CLIENT_USER,
        "MLFLOW_TRACKING_PASSWORD": secret["mlflow_client_password"],
        "MLFLOW_S3_ENDPOINT_URL": cfg.s3_endpoint_url,
    }


def database_url(cfg: StackConfig) -> str:
    """Airflow's metadata database: SQLite in AIRFLOW_HOME, or the team stack's PostgreSQL (the
    password comes from the role's libpq password file, never from the URL)."""
    if cfg.team:
        return f"postgresql+psycopg2://airflow@{services.LOOPBACK}:{cfg.postgres_port}/airflow"
    return f"sqlite:///{cfg.airflow_home / 'airflow.db'}"


def mlflow_backend_uri(cfg: StackConfig) -> str | Path:
    """MLflow's tracking store: a SQLite file, or the team stack's ``mlflow`` database."""
    if cfg.team:
        return f"postgresql+psycopg2://mlflow@{services.LOOPBACK}:{cfg.postgres_port}/mlflow"
    return cfg.root / "mlflow" / "mlflow.db"


def redis_url(cfg: StackConfig, secret: Mapping[str, str], db: int) -> str:
    return f"redis://:{secret['redis_password']}@{services.LOOPBACK}:{cfg.redis_port}/{db}"


# Retraining cadence of the team deployment (Mondays 03:00 UTC over the last 28 days); the same
# defaults are in docker-compose.yml.
TEAM_RETRAINING = {"IM_TRAINING_SCHEDULE": "0 3 * * 1", "IM_TRAINING_WINDOW_DAYS": "28"}


def airflow_environment(cfg: StackConfig) -> dict[str, str]:
    """Airflow's configuration for the stack, without a secret: home, folders, ports, executor,
    auth manager, database URL. The UI plugin is not a folder: it comes with the installed
    package (``airflow.plugins`` entry point)."""
    home = cfg.airflow_home
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(cfg.repo / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if cfg.team else "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(max(4, cfg.workers * cfg.worker_concurrency)) if cfg.team else "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "pipelines.devstack.log_server.hostname",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.airflow_url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url(cfg),
        "AIRFLOW__API__HOST": services.LOOPBACK,
        "AIRFLOW__API__PORT": str(cfg.airflow_port),
        "AIRFLOW__API__BASE_URL": cfg.airflow_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(cfg.internal_ports["airflow.worker_log"]),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(cfg.internal_ports["airflow.trigger_log"]),
        # New DAG files show up within ~20 s instead of 5 minutes.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # The dev stacks run what they are asked to (trigger, backfill); the daily schedule would
        # otherwise score "yesterday" for data that ends years ago. IM_STACK_USE_SCHEDULE=1 turns it on.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(cfg.use_schedule),
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "http", "host": cfg.mlflow_url}),
    }
    if cfg.team:
        env.update({
            "PGPASSFILE": str(credentials.pgpass_file(cfg, "airflow")),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(cfg.worker_concurrency),
            # A task whose worker died is failed (and retried) after this many seconds without
            # a heartbeat; the default of 5 minutes makes the kill-a-worker case slow.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        })
    return env


def secret_environment(cfg: StackConfig, secret: Mapping[str, str]) -> dict[str, str]:
    """Every secret-bearing variable with its value (processes get a subset: :func:`process_environment`)."""
    env = {
        **{var: secret[name] for var, name in SECRET_VARIABLES.items()},
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(cfg.passwords_file),
        "MLFLOW_AUTH_CONFIG_PATH": str(credentials.mlflow_auth_file(cfg)),
    }
    if cfg.team:
        env["AIRFLOW__CELERY__BROKER_URL"] = redis_url(cfg, secret, 0)
        env["AIRFLOW__CELERY__RESULT_BACKEND"] = redis_url(cfg, secret, 1)
    return env


def stack_environment(cfg: StackConfig, secret: Mapping[str, str],
                      environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a user of the stack needs (``stack.env``): the caller's settings (the ``IM_*``
    variables of ``environ``, default this process, that name a setting; not the stack's own
    ``IM_STACK_*``), the package contract and (with Airflow) Airflow's configuration; no Airflow
    signing key, Fernet key or broker password."""
    env = setting_variables(environ)
    env.update(package_environment(cfg, secret))
    if cfg.with_airflow:
        env.update(airflow_environment(cfg))
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(cfg.passwords_file)
        env.setdefault(SCORING_START_DATE_VAR, STACK_SCORING_START_DATE)
    if cfg.team:
        # The team deployment retrains weekly over a sliding window (docs/operations.md, "Retraining");
        # a value in the caller's environment wins.
        for var, value in TEAM_RETRAINING.items():
            env.setdefault(var, value)
    return env


def process_environment(cfg: StackConfig, secret: Mapping[str, str], name: str,
                        environ: Mapping[str, str], hostname: str = services.LOOPBACK) -> dict[str, str]:
    """The environment of stack process ``name``: ``environ`` (the caller's, without any variable
    that could carry one of the stack's secrets), the stack's settings and Airflow configuration,
    and only the secrets of ``name``'s row in :data:`PROCESS_SECRETS`."""
    role = process_role(name)
    allowed = set(PROCESS_SECRETS[role])
    if role == "scheduler" and not cfg.team:
        allowed |= set(EMBEDDED_SCHEDULER_EXTRA)
    env = {k: v for k, v in environ.items()
           if k not in ALL_SECRET_VARIABLES and k != "MLFLOW_TRACKING_USERNAME" and not k.startswith("AIRFLOW__")}
    env.update(stack_environment(cfg, secret, environ))
    everything = {**env, **secret_environment(cfg, secret)}
    if role in ("mlflow",) and cfg.team:
        everything["PGPASSFILE"] = str(credentials.pgpass_file(cfg, "mlflow"))
    for var in ALL_SECRET_VARIABLES:
        if var in allowed and var in everything:
            env[var] = everything[var]
        else:
            env.pop(var, None)
    if "MLFLOW_TRACKING_PASSWORD" not in env:
        env.pop("MLFLOW_TRACKING_USERNAME", None)
    env[HOSTNAME_VAR] = hostname
    return env


def shell_quote(value: str) -> str:
    """``value`` in single quotes, safe for ``sh`` whatever it holds."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def write_env_file(cfg: StackConfig, env: Mapping[str, str]) -> Path:
    """Write ``<root>/stack.env`` (0600): ``export`` lines a shell can ``source``."""
    lines = [f"# Environment of the {cfg.kind} stack (holds credentials: keep it 0600, never commit it).",
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
        elif key not in EMBEDDING_VARIABLES:
            lines.append(f"export {key}={shell_quote(value)}")
    return lines
