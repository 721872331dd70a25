"""What a stack is: its folder, the repository it serves, the ports it binds, and its errors.

Two kinds share this description: the *embedded* stack of ``make up`` (SQLite, LocalExecutor) and
the *team* stack of ``make up-team`` (PostgreSQL, Redis, CeleryExecutor with several workers),
which keeps its state in ``<root>/team`` so both can exist side by side.

:func:`default_config` builds the stack of this checkout from :class:`~pipelines.config.Settings`
(``IM_STACK_ROOT_DIR``, ``IM_STACK_S3_PORT``, ``IM_STACK_MLFLOW_PORT``, ``IM_STACK_AIRFLOW_PORT``,
``IM_STACK_PORT_BASE``, ``IM_STACK_USE_SCHEDULE``, ``IM_BUCKET``); :mod:`pipelines.config` has already
checked that every port is a TCP port and names the variable when one is not.
:func:`isolated_config` builds one on free ports for tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

from pipelines.config import DEFAULT_BUCKET, Settings, env_name
from pipelines.devstack import services

REPO_ROOT = Path(__file__).resolve().parents[2]

# The settings that move the stack's ports (named in the "port already in use" message).
PORT_SETTINGS = ("stack_s3_port", "stack_mlflow_port", "stack_airflow_port", "stack_port_base")

PASSWORDS_FILE = "airflow_passwords.json"
TEAM_FOLDER = "team"  # the team stack's state, inside the embedded stack's folder
DEFAULT_WORKERS = 2
DEFAULT_WORKER_CONCURRENCY = 2  # task slots per Celery worker
# The team stack's PostgreSQL and Redis take the two ports after the embedded stack's 14.
TEAM_PORT_OFFSETS = {"postgres": 14, "redis": 15}  # in the secrets folder; Airflow's simple auth manager reads it

Printer = Callable[[str], None]


class StackError(RuntimeError):
    """The stack cannot start, answer or finish a run; the message says what and where to look."""


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its state, which repo it serves, and the ports it binds (127.0.0.1).

    ``internal_ports`` maps weed mini listener flags (``master.port``, ...),
    ``airflow.worker_log`` / ``airflow.trigger_log`` and, for the team stack, ``postgres`` and
    ``redis`` to ports. The team stack's Celery workers all use the ``airflow.worker_log`` port,
    each on a loopback address of its own (:meth:`worker_address`): Airflow's API server fetches
    a running task's log from ``http://<task hostname>:<worker_log_server_port>``.
    """

    root: Path
    repo: Path
    s3_port: int
    mlflow_port: int
    airflow_port: int
    internal_ports: Mapping[str, int]
    bucket: str = DEFAULT_BUCKET
    with_airflow: bool = True
    use_schedule: bool = False
    team: bool = False
    workers: int = DEFAULT_WORKERS
    worker_concurrency: int = DEFAULT_WORKER_CONCURRENCY
    # the online scoring endpoint (pipelines/online); 0: not started
    online_port: int = 0

    @property
    def kind(self) -> str:
        return "team" if self.team else "embedded"

    @property
    def postgres_port(self) -> int:
        return int(self.internal_ports["postgres"])

    @property
    def redis_port(self) -> int:
        return int(self.internal_ports["redis"])

    def worker_address(self, index: int) -> str:
        """The loopback address worker ``index`` (1-based) reports as its hostname and serves its
        logs on: 127.0.0.1, 127.0.0.2, ... (all of 127.0.0.0/8 is this machine's loopback)."""
        return f"127.0.0.{index}"

    def worker_names(self) -> list[str]:
        return [f"worker-{i}" for i in range(1, self.workers + 1)] if self.team else []

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def passwords_file(self) -> Path:
        """Airflow's simple auth manager password file (user -> password, JSON)."""
        return self.secrets_dir / PASSWORDS_FILE

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def env_file(self) -> Path:
        return self.root / "stack.env"

    @property
    def s3_endpoint_url(self) -> str:
        return f"http://{services.LOOPBACK}:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{services.LOOPBACK}:{self.mlflow_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://{services.LOOPBACK}:{self.airflow_port}"

    def seaweed_ports(self) -> dict[str, int]:
        """weed mini's listener flags (``s3.port``, ``master.port``, ...) -> port."""
        ports = {"s3.port": self.s3_port}
        ports.update({k: v for k, v in self.internal_ports.items() if k in services.SEAWEED_PORT_FLAGS})
        return ports

    def all_ports(self) -> dict[str, int]:
        """Every port the stack binds, by a name a person understands."""
        ports = {"S3 (SeaweedFS)": self.s3_port, "MLflow": self.mlflow_port}
        ports.update({f"SeaweedFS {k}": v for k, v in self.internal_ports.items()
                      if k in services.SEAWEED_PORT_FLAGS and k not in services.SEAWEED_DISABLED})
        if self.with_airflow:
            ports["Airflow API/UI"] = self.airflow_port
            ports.update({f"Airflow {k.removeprefix('airflow.')} server": v
                          for k, v in self.internal_ports.items() if k.startswith("airflow.")})
        if self.online_port:
            ports["Online scoring"] = self.online_port
        if self.team:
            ports["PostgreSQL"] = self.postgres_port
            ports["Redis"] = self.redis_port
        return ports


def internal_ports(base: int | None, *, team: bool = False) -> dict[str, int]:
    """weed mini's listeners other than S3 and Airflow's two log servers, from ``base`` upward
    (free ports when ``base`` is None); with ``team``, PostgreSQL and Redis after them."""
    ports = {k: v for k, v in services.seaweed_ports(0, base).items() if k != "s3.port"}
    after = max(ports.values()) + 1 if base is not None else None
    ports["airflow.worker_log"] = after if after is not None else services.free_port()
    ports["airflow.trigger_log"] = after + 1 if after is not None else services.free_port()
    if team:
        ports.update({name: services.free_port() if base is None else base + offset
                      for name, offset in TEAM_PORT_OFFSETS.items()})
    return ports


def port_variables() -> list[str]:
    """The variables that move the stack's ports (``IM_STACK_S3_PORT``, ...)."""
    return [env_name(name) for name in PORT_SETTINGS]


def default_config(settings: Settings, repo: Path = REPO_ROOT, *, team: bool = False,
                   workers: int = DEFAULT_WORKERS) -> StackConfig:
    """The stack of this checkout: state in ``<repo>/.local`` (or ``settings.stack_root_dir``), ports
    from ``settings.stack_s3_port`` (8333), ``stack_mlflow_port`` (5000), ``stack_airflow_port``
    (8080) and ``stack_port_base`` (18330: weed's internal listeners and Airflow's log servers take
    the 14 ports from there), bucket ``settings.bucket``. With ``team``: the team stack, state in
    ``<that folder>/team``, the same ports plus PostgreSQL and Redis on the base's next two ports
    (18344, 18345), ``workers`` Celery workers."""
    root = Path(settings.stack_root_dir or repo / ".local").resolve()
    return StackConfig(root=root / TEAM_FOLDER if team else root, repo=repo.resolve(),
                       s3_port=settings.stack_s3_port, mlflow_port=settings.stack_mlflow_port,
                       airflow_port=settings.stack_airflow_port,
                       internal_ports=internal_ports(settings.stack_port_base, team=team), bucket=settings.bucket,
                       use_schedule=settings.stack_use_schedule, team=team, workers=workers,
                       online_port=settings.online_port)


def isolated_config(root: Path, repo: Path = REPO_ROOT, *, with_airflow: bool = True, team: bool = False,
                    workers: int = DEFAULT_WORKERS,
                    worker_concurrency: int = DEFAULT_WORKER_CONCURRENCY) -> StackConfig:
    """A stack in ``root`` on free ports (tests; never collides with a running ``make up``)."""
    return StackConfig(root=root.resolve(), repo=repo.resolve(), s3_port=services.free_port(),
                       mlflow_port=services.free_port(), airflow_port=services.free_port(),
                       internal_ports=internal_ports(None, team=team), with_airflow=with_airflow, team=team,
                       workers=workers, worker_concurrency=worker_concurrency,
                       online_port=services.free_port() if with_airflow else 0)
