"""Which processes a stack runs, with which command, and in which order they stop.

One definition for both local stacks (and the one docker-compose.yml is checked against in
tests/test_compose.py): Airflow's components with the same subcommands, the log servers bound to
loopback addresses (Airflow's own ``serve-logs`` listens on every interface, so the components
run with ``--skip-serve-logs`` and :mod:`.log_server` serves their logs), and, for the team
stack, one Celery worker per ``cfg.workers`` with its own Celery hostname, task hostname
(:meth:`~.config.StackConfig.worker_address`) and log server.
"""

from __future__ import annotations

import dataclasses
import sys

from pipelines.devstack import services
from pipelines.devstack.config import StackConfig

# Airflow subcommands of the long-running components (the same in docker-compose.yml).
AIRFLOW_COMMANDS = {
    "api-server": ("api-server",),
    "scheduler": ("scheduler", "--skip-serve-logs"),
    "dag-processor": ("dag-processor",),
    "triggerer": ("triggerer", "--skip-serve-logs"),
}
AIRFLOW_COMPONENTS = tuple(AIRFLOW_COMMANDS)
WORKER_CONCURRENCY = 2  # the default task slots per worker (config.DEFAULT_WORKER_CONCURRENCY)
CELERY_QUEUE = "default"
# Stop order: who creates work first, then who does it, then what they all depend on.
STOP_ORDER = ("scheduler", "worker", "triggerer", "dag-processor", "api-server", "log-server", "online", "mlflow",
              "seaweedfs", "redis", "postgres")


@dataclasses.dataclass(frozen=True)
class StackProcess:
    """A long-running Airflow-side process: its name (``stack.json``, log file, environment row),
    its command, the hostname it reports and the URL that says it is healthy (or "")."""

    name: str
    argv: tuple[str, ...]
    hostname: str = services.LOOPBACK
    health_url: str = ""


def worker_command(name: str, concurrency: int = WORKER_CONCURRENCY) -> tuple[str, ...]:
    """``airflow celery worker`` for worker ``name`` (without the binary)."""
    return ("celery", "worker", "--celery-hostname", f"{name}@%h", "--queues", CELERY_QUEUE,
            "--concurrency", str(concurrency), "--skip-serve-logs")


def log_server(name: str, address: str, port: int) -> StackProcess:
    return StackProcess(f"log-server-{name}", (sys.executable, "-m", "pipelines.devstack.log_server", address,
                                               str(port)))


def airflow_processes(cfg: StackConfig) -> list[StackProcess]:
    """Every Airflow-side process of ``cfg``'s stack, in start order."""
    airflow = services.bin_path("airflow")
    health = cfg.airflow_url + "/api/v2/monitor/health"
    worker_port = int(cfg.internal_ports["airflow.worker_log"])
    trigger_port = int(cfg.internal_ports["airflow.trigger_log"])
    procs = [StackProcess(name, (airflow, *command), health_url=health) for name, command in AIRFLOW_COMMANDS.items()]
    procs.append(log_server("triggerer", services.LOOPBACK, trigger_port))
    if not cfg.team:
        # LocalExecutor: tasks run under the scheduler, which reports 127.0.0.1.
        procs.append(log_server("scheduler", services.LOOPBACK, worker_port))
        return procs
    for index, name in enumerate(cfg.worker_names(), start=1):
        address = cfg.worker_address(index)
        procs.append(StackProcess(name, (airflow, *worker_command(name, cfg.worker_concurrency)), hostname=address))
        procs.append(log_server(name, address, worker_port))
    return procs


def stop_rank(name: str) -> tuple[int, str]:
    """Sort key of process ``name`` in :data:`STOP_ORDER` (unknown names just before the stores)."""
    for rank, prefix in enumerate(STOP_ORDER):
        if name == prefix or name.startswith(prefix + "-"):
            return rank, name
    return STOP_ORDER.index("mlflow"), name


def expected_processes(cfg: StackConfig) -> set[str]:
    """The names ``stack.json`` must record for the stack to count as up."""
    names = {"seaweedfs", "mlflow"}
    if cfg.team:
        names |= {"postgres", "redis"}
    if cfg.with_airflow:
        names |= {p.name for p in airflow_processes(cfg)}
    if cfg.online_port:
        names.add("online")
    return names


# --- docker-compose.yml: the same processes as services (tests/test_compose.py holds the file to this)

# Inside a container Airflow's own log server is the one to use: it listens on the container's
# address, which only the compose network reaches, so the components keep their serve-logs.
COMPOSE_WORKER_COMMAND = ("celery", "worker", "--queues", CELERY_QUEUE, "--concurrency", str(WORKER_CONCURRENCY))
# Compose service -> the process roles (environment.PROCESS_SECRETS rows) it runs.
COMPOSE_SERVICES = {
    "airflow-apiserver": ("api-server",),
    "airflow-scheduler": ("scheduler",),
    "airflow-dag-processor": ("dag-processor",),
    "airflow-triggerer": ("triggerer", "log-server"),
    "airflow-worker": ("worker", "log-server"),
    "mlflow": ("mlflow",),
    "s3": ("seaweedfs",),
}
# A secret-bearing variable of the local stacks -> the .env variables that carry it in compose.
COMPOSE_SECRET_SOURCES = {
    "AWS_ACCESS_KEY_ID": ("S3_ACCESS_KEY",), "AWS_SECRET_ACCESS_KEY": ("S3_SECRET_KEY",),
    "MLFLOW_TRACKING_PASSWORD": ("MLFLOW_CLIENT_PASSWORD",),
    "AIRFLOW__CORE__FERNET_KEY": ("AIRFLOW_FERNET_KEY",), "AIRFLOW__API__SECRET_KEY": ("AIRFLOW_API_SECRET_KEY",),
    "AIRFLOW__API_AUTH__JWT_SECRET": ("AIRFLOW_JWT_SECRET",),
    "AIRFLOW__CELERY__BROKER_URL": ("REDIS_PASSWORD",), "AIRFLOW__CELERY__RESULT_BACKEND": ("REDIS_PASSWORD",),
    "MLFLOW_FLASK_SERVER_SECRET_KEY": ("MLFLOW_FLASK_SECRET",), "MLFLOW_AUTH_CONFIG_PATH": ("MLFLOW_ADMIN_PASSWORD",),
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": (),  # a file on the airflow-auth volume
}


def compose_command(name: str) -> tuple[str, ...]:
    """The compose ``command`` of Airflow component ``name`` (or ``worker``)."""
    if name == "worker":
        return COMPOSE_WORKER_COMMAND
    return tuple(word for word in AIRFLOW_COMMANDS[name] if word != "--skip-serve-logs")
