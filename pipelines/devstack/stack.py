"""The embedded development stack: SeaweedFS (S3), MLflow and Airflow 3 as local processes.

``python -m pipelines stack up|down|status|env|run`` (the Makefile's ``make up``, ``make down``,
``make status`` and ``make run``). Everything lives under one git-ignored folder (``.local/`` in
the repository root)::

    .local/seaweedfs/        S3 data (bucket ``interest-migration``)
    .local/mlflow/mlflow.db  MLflow backend store (artifacts go to s3://<bucket>/mlflow-artifacts)
    .local/airflow/          AIRFLOW_HOME (SQLite metadata DB, task logs); dags/ and plugins/ from the repo
    .local/logs/*.log        one log per service process
    .local/secrets/          0700; generated credentials, each file 0600
    .local/stack.json        process ids, start times and ports, so `down`/`status` know what to stop
    .local/stack.env         0600; `source` it to run `python -m pipelines ...` (or `airflow ...`) against the stack

Every service binds 127.0.0.1. Each component runs in its own process group; every process the
stack starts carries ``IM_STACK_ROOT=<root>`` in its environment, which its children (Airflow's
LocalExecutor workers and task runners) inherit, so ``down`` can find and end them all even when a
parent died first. Credentials are generated on first start, printed once with where they are
kept, and never logged.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pipelines.devstack import services as svc

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUCKET = "interest-migration"
ADMIN_USER = "admin"
TRAINING_DAG = "interest_migration_training"
SCORING_DAG = "interest_migration_scoring"
MARKER_VAR = "IM_STACK_ROOT"
REGION = "us-east-1"

# Ports: the three a user talks to, and a block for weed mini's internal listeners and
# Airflow's log servers (weed's volume server would take 8080 by default, Airflow's log server 8793).
PORT_VARS = {
    "s3": ("IM_STACK_S3_PORT", 8333),
    "mlflow": ("IM_STACK_MLFLOW_PORT", 5000),
    "airflow": ("IM_STACK_AIRFLOW_PORT", 8080),
}
PORT_BASE_VAR = "IM_STACK_PORT_BASE"
DEFAULT_PORT_BASE = 18330
ROOT_VAR = "IM_STACK_ROOT_DIR"

SECRET_FILES = {
    "s3_access_key": "S3 access key (AWS_ACCESS_KEY_ID)",
    "s3_secret_key": "S3 secret key (AWS_SECRET_ACCESS_KEY)",
    "airflow_passwords.json": "Airflow UI/API users and passwords (user 'admin')",
    "airflow_jwt_secret": "Airflow JWT signing key",
    "airflow_api_secret_key": "Airflow API session secret",
    "airflow_fernet_key": "Airflow Fernet key (encrypts connections)",
}
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
STOP_ORDER = ("scheduler", "triggerer", "dag-processor", "api-server", "mlflow", "seaweedfs")

Printer = Callable[[str], None]


class StackError(RuntimeError):
    """The stack cannot start, answer or finish a run; the message says what and where to look."""


# --------------------------------------------------------------------------------------------
# configuration


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its state, which repo it serves, and the ports it binds (127.0.0.1).

    ``internal_ports`` maps weed mini listener flags (``master.port``, ...) and
    ``airflow.worker_log`` / ``airflow.trigger_log`` to ports.
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

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

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
        return f"http://{svc.LOOPBACK}:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{svc.LOOPBACK}:{self.mlflow_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://{svc.LOOPBACK}:{self.airflow_port}"

    def seaweed_ports(self) -> dict[str, int]:
        ports = {"s3.port": self.s3_port}
        ports.update({k: v for k, v in self.internal_ports.items() if not k.startswith("airflow.")})
        return ports

    def all_ports(self) -> dict[str, int]:
        """Every port the stack binds, by a name a person understands."""
        ports = {"S3 (SeaweedFS)": self.s3_port, "MLflow": self.mlflow_port}
        ports.update({f"SeaweedFS {k}": v for k, v in self.internal_ports.items() if not k.startswith("airflow.")})
        if self.with_airflow:
            ports["Airflow API/UI"] = self.airflow_port
            ports.update({f"Airflow {k.removeprefix('airflow.')} server": v
                          for k, v in self.internal_ports.items() if k.startswith("airflow.")})
        return ports


def _internal_ports(base: int | None) -> dict[str, int]:
    """weed mini's listeners other than S3 and Airflow's two log servers, from ``base`` upward
    (free ports when ``base`` is None)."""
    ports = {k: v for k, v in svc.seaweed_ports(0, base).items() if k != "s3.port"}
    after = max(ports.values()) + 1 if base is not None else None
    ports["airflow.worker_log"] = after if after is not None else svc.free_port()
    ports["airflow.trigger_log"] = after + 1 if after is not None else svc.free_port()
    return ports


def default_config(repo: Path = REPO_ROOT, environ: Mapping[str, str] | None = None) -> StackConfig:
    """The stack of this checkout: state in ``<repo>/.local`` (or ``IM_STACK_ROOT_DIR``), ports
    from ``IM_STACK_S3_PORT`` (8333), ``IM_STACK_MLFLOW_PORT`` (5000), ``IM_STACK_AIRFLOW_PORT``
    (8080) and ``IM_STACK_PORT_BASE`` (18330: weed's internal listeners and Airflow's log servers
    take the 14 ports from there). Raises :class:`StackError` naming a variable that is not a port."""
    env = os.environ if environ is None else environ
    values: dict[str, int] = {}
    for key, (var, default) in {**PORT_VARS, "base": (PORT_BASE_VAR, DEFAULT_PORT_BASE)}.items():
        raw = env.get(var, "").strip()
        try:
            port = int(raw) if raw else default
        except ValueError:
            raise StackError(f"{var}={raw!r} is not a port number") from None
        if not 1 <= port <= 65535 - (20 if key == "base" else 0):
            raise StackError(f"{var}={raw!r} is out of range for a TCP port")
        values[key] = port
    root = Path(env.get(ROOT_VAR) or repo / ".local").resolve()
    use_schedule = env.get("IM_STACK_USE_SCHEDULE", "").lower() in ("1", "true", "yes")
    return StackConfig(root=root, repo=repo.resolve(), s3_port=values["s3"], mlflow_port=values["mlflow"],
                       airflow_port=values["airflow"], internal_ports=_internal_ports(values["base"]),
                       use_schedule=use_schedule)


def isolated_config(root: Path, repo: Path = REPO_ROOT, *, with_airflow: bool = True) -> StackConfig:
    """A stack in ``root`` on free ports (tests; never collides with a running ``make up``)."""
    return StackConfig(root=root.resolve(), repo=repo.resolve(), s3_port=svc.free_port(),
                       mlflow_port=svc.free_port(), airflow_port=svc.free_port(),
                       internal_ports=_internal_ports(None), with_airflow=with_airflow)


# --------------------------------------------------------------------------------------------
# secrets and environment


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (0600), replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _generate_secret(name: str) -> str:
    if name == "s3_access_key":
        return "IM" + secrets.token_hex(9).upper()
    if name == "airflow_passwords.json":
        alphabet = "abcdefghkmnpqrstuvwxyzABCDEFGHKMNPQRSTUVWXYZ23456789"
        return json.dumps({ADMIN_USER: "".join(secrets.choice(alphabet) for _ in range(20))}) + "\n"
    if name == "airflow_fernet_key":
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    if name == "airflow_jwt_secret":
        return secrets.token_urlsafe(64)  # HS512 wants at least 64 bytes
    return secrets.token_urlsafe(32)


def ensure_secrets(cfg: StackConfig) -> tuple[dict[str, str], list[str]]:
    """Read the stack's credentials from ``<root>/secrets``, generating the missing ones.

    Returns (name -> value, names generated now). The folder is 0700 and every file 0600; an
    existing file with looser permissions is tightened.
    """
    cfg.secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.secrets_dir, 0o700)
    values: dict[str, str] = {}
    created: list[str] = []
    for name in SECRET_FILES:
        path = cfg.secrets_dir / name
        if not path.exists():
            _write_private(path, _generate_secret(name))
            created.append(name)
        os.chmod(path, 0o600)
        values[name] = path.read_text().strip()
    return values, created


def admin_password(cfg: StackConfig) -> str:
    """The Airflow admin password from ``<root>/secrets/airflow_passwords.json``."""
    path = cfg.secrets_dir / "airflow_passwords.json"
    try:
        return str(json.loads(path.read_text())[ADMIN_USER])
    except (OSError, ValueError, KeyError) as exc:
        raise StackError(f"cannot read the Airflow admin password from {path}: {exc}") from exc


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
    """Airflow's configuration for the stack (AIRFLOW_HOME, folders, ports, auth, keys, connections)."""
    home = cfg.airflow_home
    aws_conn = {"conn_type": "aws", "login": secret["s3_access_key"], "password": secret["s3_secret_key"],
                "extra": {"endpoint_url": cfg.s3_endpoint_url, "region_name": REGION}}
    mlflow_conn = {"conn_type": "http", "host": cfg.mlflow_url}
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(cfg.repo / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(cfg.repo / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(cfg.secrets_dir / "airflow_passwords.json"),
        "AIRFLOW__CORE__FERNET_KEY": secret["airflow_fernet_key"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.airflow_url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": svc.LOOPBACK,
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


def _passthrough(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's ``IM_*`` settings (e.g. IM_EPOCHS=2), which reach the tasks; not the stack's own."""
    return {k: v for k, v in environ.items() if k.startswith("IM_") and not k.startswith("IM_STACK_")}


def stack_environment(cfg: StackConfig, secret: Mapping[str, str],
                      environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Everything a client of the stack needs: the caller's IM_* settings, the package contract
    and (with Airflow) the Airflow configuration."""
    env = _passthrough(os.environ if environ is None else environ)
    env.update(package_environment(cfg, secret))
    if cfg.with_airflow:
        env.update(airflow_environment(cfg, secret))
        # The scoring DAG's start date bounds backfills; the demo data (like Taobao's) is from 2017.
        env.setdefault("IM_SCORING_START_DATE", "2017-01-01")
    return env


def write_env_file(cfg: StackConfig, env: Mapping[str, str]) -> Path:
    """Write ``<root>/stack.env`` (0600): ``export`` lines a shell can ``source``."""
    lines = ["# Environment of the embedded stack (holds credentials: keep it 0600, never commit it).",
             f"# source {cfg.env_file}"]
    lines += [f"export {key}={_shell_quote(value)}" for key, value in sorted(env.items())]
    _write_private(cfg.env_file, "\n".join(lines) + "\n")
    return cfg.env_file


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``stack.env`` written by :func:`write_env_file` back into a mapping."""
    import shlex

    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, raw = line[len("export "):].partition("=")
            parts = shlex.split(raw)
            env[key] = parts[0] if parts else ""
    return env


# --------------------------------------------------------------------------------------------
# process bookkeeping


def _start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` (clock ticks since boot), or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(entry: Mapping[str, Any]) -> bool:
    """Whether the process recorded in ``entry`` still runs (same pid *and* same start time)."""
    return _start_time(int(entry["pid"])) == entry.get("start_time")


def _read_state(cfg: StackConfig) -> dict[str, Any]:
    try:
        return dict(json.loads(cfg.state_file.read_text()))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise StackError(f"{cfg.state_file} is not valid JSON ({exc}); delete it after `ps` shows "
                         f"no stack process") from exc


def _write_state(cfg: StackConfig, state: Mapping[str, Any]) -> None:
    cfg.state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg.state_file.with_name("stack.json.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, cfg.state_file)


def _record(state: dict[str, Any], cfg: StackConfig, proc: svc.Process) -> None:
    state.setdefault("processes", {})[proc.name] = {
        "pid": proc.popen.pid, "start_time": _start_time(proc.popen.pid), "log": str(proc.log_path),
        "health_url": proc.health_url}
    _write_state(cfg, state)


def _ancestors() -> set[int]:
    pids = {os.getpid()}
    pid = os.getpid()
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        pids.add(pid)
    return pids


def find_stack_processes(root: Path, sessions: Iterable[int] = ()) -> list[int]:
    """Pids of processes that belong to the stack in ``root``: its marker in their environment,
    ``root`` on their command line, or membership of one of ``sessions`` (the recorded service
    leaders each started a session; Airflow renames its workers with setproctitle, which can hide
    their environment). This process and its ancestors are never included."""
    root_text = str(root.resolve())
    marker = f"{MARKER_VAR}={root_text}".encode()
    session_ids = set(sessions)
    mine = _ancestors()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        stat = svc.proc_stat(int(entry.name))
        if stat is None or stat[0] in ("Z", "X"):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if stat[3] in session_ids or marker in environ.split(b"\0") or root_text.encode() in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return "?"


def _kill_all(pids: Iterable[int], timeout: float = 15.0) -> None:
    """SIGTERM ``pids``, then SIGKILL those still there after ``timeout``."""
    targets = {pid: _start_time(pid) for pid in pids}
    for pid in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    targets = _wait_gone(targets, timeout)
    for pid in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: on a loaded machine a killed process stays visible for
    # a moment (empty command line, still not a zombie). Wait for it before anyone counts leftovers.
    _wait_gone(targets, 10.0)


def _wait_gone(targets: Mapping[int, int | None], timeout: float) -> dict[int, int | None]:
    """Poll until every pid in ``targets`` (pid -> start time) has exited or become a zombie, or
    ``timeout`` passes; returns those still alive. A pid reused by a new process counts as gone."""
    alive = dict(targets)
    deadline = time.monotonic() + timeout
    while True:
        alive = {pid: st for pid, st in alive.items() if st is not None and _start_time(pid) == st and _live(pid)}
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


def _live(pid: int) -> bool:
    stat = svc.proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


# --------------------------------------------------------------------------------------------
# up / down / status


def _config_record(cfg: StackConfig) -> dict[str, Any]:
    return {"s3_port": cfg.s3_port, "mlflow_port": cfg.mlflow_port, "airflow_port": cfg.airflow_port,
            "internal_ports": dict(cfg.internal_ports), "bucket": cfg.bucket, "with_airflow": cfg.with_airflow,
            "use_schedule": cfg.use_schedule, "repo": str(cfg.repo)}


def running_config(cfg: StackConfig) -> StackConfig:
    """``cfg`` with the ports, bucket and repo the stack in ``cfg.root`` was started with (from
    ``stack.json``), so `status`, `env` and `run` talk to the stack that runs even when the
    IM_STACK_* variables changed since `up`. ``cfg`` itself when nothing is recorded."""
    try:
        record = _read_state(cfg).get("config")
    except StackError:
        return cfg
    if not record:
        return cfg
    return dataclasses.replace(cfg, s3_port=record["s3_port"], mlflow_port=record["mlflow_port"],
                               airflow_port=record["airflow_port"], internal_ports=record["internal_ports"],
                               bucket=record["bucket"], with_airflow=record["with_airflow"],
                               use_schedule=record["use_schedule"], repo=Path(record["repo"]))


def _check_ports(cfg: StackConfig) -> None:
    busy = {name: port for name, port in cfg.all_ports().items() if svc.port_in_use(port)}
    if busy:
        listing = ", ".join(f"{port} ({name})" for name, port in busy.items())
        hint = ", ".join(f"{var}" for var, _ in PORT_VARS.values()) + f", {PORT_BASE_VAR}"
        raise StackError(
            f"port already in use on {svc.LOOPBACK}: {listing}. Another program (or another stack) holds "
            f"it: stop it (`make down`; `ss -ltnp | grep :<port>` shows who holds it) or choose other "
            f"ports with {hint}.")


def _spawn(cfg: StackConfig, name: str, argv: list[str], env: Mapping[str, str], health_url: str) -> svc.Process:
    return svc.spawn(name, argv, cfg.logs_dir / f"{name}.log", env, health_url, cwd=cfg.root)


def _http_json(url: str, *, method: str = "GET", body: Any = None, token: str | None = None,
               timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _wait_airflow(cfg: StackConfig, procs: Mapping[str, svc.Process], expect_dags: list[str],
                  timeout: float = 300.0) -> None:
    """Wait until the API answers, scheduler/dag-processor/triggerer report healthy and the
    expected DAGs are parsed (their import errors, if any, end the wait with the error)."""
    health_url = f"{cfg.airflow_url}/api/v2/monitor/health"
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    token: str | None = None
    while time.monotonic() < deadline:
        for proc in procs.values():
            if proc.popen.poll() is not None:
                raise StackError(f"Airflow {proc.name} exited with code {proc.popen.returncode} during start; "
                                 f"log {proc.log_path}:\n{svc.tail(proc.log_path)}")
        try:
            health = _http_json(health_url, timeout=5)
            unhealthy = [part for part in ("metadatabase", "scheduler", "dag_processor", "triggerer")
                         if (health.get(part) or {}).get("status") != "healthy"]
            if unhealthy:
                last = f"not yet healthy: {', '.join(unhealthy)}"
            else:
                token = token or airflow_token(cfg)
                listed = _http_json(f"{cfg.airflow_url}/api/v2/dags?limit=100", token=token)
                have = {d["dag_id"] for d in listed.get("dags", [])}
                missing = [d for d in expect_dags if d not in have]
                if not missing:
                    return
                errors = _http_json(f"{cfg.airflow_url}/api/v2/importErrors?limit=100", token=token)
                for item in errors.get("import_errors", []):
                    if any(Path(item.get("filename", "")).stem == d for d in missing):
                        raise StackError(f"DAG file {item['filename']} does not import:\n{item.get('stack_trace')}")
                last = f"DAGs not parsed yet: {', '.join(missing)}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(2)
    raise StackError(f"Airflow at {cfg.airflow_url} was not ready within {timeout:.0f}s ({last}); "
                     f"logs in {cfg.logs_dir}")


def expected_dags(cfg: StackConfig) -> list[str]:
    """The DAG ids the repo defines (one DAG per file, dag_id = file name; helper modules, which
    do not name themselves, are skipped)."""
    return sorted(p.stem for p in (cfg.repo / "dags").glob("*.py")
                  if not p.name.startswith("_") and f'"{p.stem}"' in p.read_text(errors="replace"))


def is_up(cfg: StackConfig) -> bool:
    """Whether every process recorded in ``stack.json`` still runs."""
    state = _read_state(cfg)
    processes = state.get("processes", {})
    wanted = {"seaweedfs", "mlflow", *(AIRFLOW_COMPONENTS if state.get("with_airflow") else ())}
    return bool(processes) and wanted <= processes.keys() and all(_alive(p) for p in processes.values())


def up(cfg: StackConfig, *, out: Printer = print, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Start the stack (if it is not already up) and wait until every service really answers.

    Returns the state written to ``stack.json``. Credentials generated now are printed once
    through ``out``; later starts only say where they are. Raises :class:`StackError` naming
    a busy port, or a service that did not start (with the tail of its log); whatever had
    started by then is stopped again.
    """
    if is_up(cfg):
        out(f"stack already up (state in {cfg.state_file}); `make status` checks it")
        return _read_state(cfg)
    if _read_state(cfg) or find_stack_processes(cfg.root):
        log.info("cleaning up what is left of an earlier stack in %s", cfg.root)
        down(cfg, out=lambda _: None)
    _check_ports(cfg)
    started_at = time.monotonic()
    for sub in ("seaweedfs", "mlflow", "airflow", "logs", "work"):
        (cfg.root / sub).mkdir(parents=True, exist_ok=True)
    secret, created = ensure_secrets(cfg)
    client_env = stack_environment(cfg, secret, environ)
    write_env_file(cfg, client_env)
    base_env = {**(os.environ if environ is None else environ), **client_env, MARKER_VAR: str(cfg.root)}

    state: dict[str, Any] = {"root": str(cfg.root), "repo": str(cfg.repo), "with_airflow": cfg.with_airflow,
                             "ports": cfg.all_ports(), "config": _config_record(cfg), "started": dt.datetime.now(dt.UTC).isoformat(),
                             "processes": {}}
    _write_state(cfg, state)
    try:
        log.info("starting SeaweedFS (S3 on %s, data in %s)", cfg.s3_endpoint_url, cfg.root / "seaweedfs")
        svc.start_seaweedfs(cfg.root / "seaweedfs", cfg.seaweed_ports(), base_env, cfg.bucket,
                                      cfg.logs_dir / "seaweedfs.log", record=lambda p: _record(state, cfg, p))
        migrate = None
        if cfg.with_airflow:
            # The metadata DB migration is slow and independent of MLflow: run both at once.
            log.info("migrating the Airflow metadata DB in %s", cfg.airflow_home)
            migrate = _spawn(cfg, "airflow-db-migrate", [svc.bin_path("airflow"), "db", "migrate"], base_env, "")
        log.info("starting MLflow (%s, artifacts in s3://%s/mlflow-artifacts)", cfg.mlflow_url, cfg.bucket)
        svc.start_mlflow(cfg.mlflow_port, cfg.root / "mlflow" / "mlflow.db",
                         f"s3://{cfg.bucket}/mlflow-artifacts", base_env, cfg.logs_dir / "mlflow.log",
                         record=lambda p: _record(state, cfg, p))
        if migrate is not None:
            code = migrate.popen.wait(timeout=600)
            if code != 0:
                raise StackError(f"`airflow db migrate` failed with code {code}; log {migrate.log_path}:\n"
                                 f"{svc.tail(migrate.log_path)}")
            procs: dict[str, svc.Process] = {}
            for component in AIRFLOW_COMPONENTS:
                argv = [svc.bin_path("airflow"), component]
                proc = _spawn(cfg, component, argv, base_env, f"{cfg.airflow_url}/api/v2/monitor/health")
                _record(state, cfg, proc)
                procs[component] = proc
            dags = expected_dags(cfg)
            log.info("starting Airflow (%s); waiting for the scheduler and DAGs %s", cfg.airflow_url, dags)
            _wait_airflow(cfg, procs, dags)
    except BaseException:
        down(cfg, out=lambda _: None)
        raise
    state["ready_seconds"] = round(time.monotonic() - started_at, 1)
    _write_state(cfg, state)
    if created:
        _print_new_credentials(cfg, secret, created, out)
    out(summary_lines(cfg, state))
    return state


def _print_new_credentials(cfg: StackConfig, secret: Mapping[str, str], created: list[str], out: Printer) -> None:
    """Show freshly generated credentials once; afterwards they are only in ``<root>/secrets``."""
    lines = ["", "Generated credentials (shown only now; kept 0600 in "
             f"{cfg.secrets_dir}, and in {cfg.env_file}):"]
    if "airflow_passwords.json" in created and cfg.with_airflow:
        lines.append(f"  Airflow UI   user {ADMIN_USER}  password {admin_password(cfg)}")
    if "s3_access_key" in created or "s3_secret_key" in created:
        lines.append(f"  S3           access key {secret['s3_access_key']}  secret key {secret['s3_secret_key']}")
    out("\n".join(lines))


def summary_lines(cfg: StackConfig, state: Mapping[str, Any] | None = None) -> str:
    """Where to reach the stack and where its credentials are (no secret values)."""
    lines = ["", "Stack is up:" if state else "Stack:"]
    if cfg.with_airflow:
        lines.append(f"  Airflow UI/API  {cfg.airflow_url}   (user {ADMIN_USER}; password in "
                     f"{cfg.secrets_dir / 'airflow_passwords.json'})")
    lines.append(f"  MLflow UI       {cfg.mlflow_url}")
    lines.append(f"  S3 endpoint     {cfg.s3_endpoint_url}   bucket {cfg.bucket} (keys in {cfg.secrets_dir})")
    lines.append(f"  environment     source {cfg.env_file}")
    lines.append(f"  logs            {cfg.logs_dir}")
    if state and state.get("ready_seconds") is not None:
        lines.append(f"  started in {state['ready_seconds']}s; `make down` stops it, data stays in {cfg.root}")
    return "\n".join(lines)


def down(cfg: StackConfig, *, out: Printer = print, timeout: float = 30.0) -> list[int]:
    """Stop every process of the stack: the recorded process groups (scheduler first, SeaweedFS
    last so it flushes after its clients are gone), then any process still carrying the stack's
    marker (LocalExecutor workers, task runners). Data stays. Returns the pids that were found
    running after the recorded groups were stopped."""
    state = _read_state(cfg)
    processes: dict[str, Any] = state.get("processes", {})
    order = [n for n in STOP_ORDER if n in processes] + [n for n in processes if n not in STOP_ORDER]
    sessions = [int(p["pid"]) for p in processes.values() if _alive(p)]
    before = set(find_stack_processes(cfg.root, sessions))
    stopped = []
    for name in order:
        entry = processes[name]
        if _alive(entry):
            svc.stop_process_group(int(entry["pid"]), timeout)
            stopped.append(name)
    leftovers = [pid for pid in sorted(before | set(find_stack_processes(cfg.root, sessions)))
                 if (stat := svc.proc_stat(pid)) is not None and stat[0] not in ("Z", "X")]
    if leftovers:
        log.info("ending %d leftover stack process(es): %s", len(leftovers),
                 "; ".join(f"{pid} {_describe(pid)}" for pid in leftovers))
        _kill_all(leftovers, timeout)
    remaining = [pid for pid in leftovers if _live(pid)]
    remaining += [pid for pid in find_stack_processes(cfg.root, sessions) if pid not in remaining]
    if remaining:
        raise StackError("could not end stack processes: " + "; ".join(f"{p} {_describe(p)}" for p in remaining))
    with contextlib.suppress(FileNotFoundError):
        cfg.state_file.unlink()
    out(f"stack stopped ({', '.join(stopped) or 'nothing was running'}"
        f"{f'; {len(leftovers)} leftover process(es) ended' if leftovers else ''}); data kept in {cfg.root}")
    return leftovers


def status(cfg: StackConfig) -> dict[str, Any]:
    """Per process: recorded pid, whether it runs and whether its health URL answers; plus ports."""
    state = _read_state(cfg)
    report: dict[str, Any] = {"root": str(cfg.root), "up": False, "processes": {}}
    for name, entry in state.get("processes", {}).items():
        running = _alive(entry)
        healthy = None
        if running and entry.get("health_url"):
            try:
                with urllib.request.urlopen(entry["health_url"], timeout=3) as resp:
                    healthy = resp.status < 500
            except urllib.error.HTTPError as exc:
                healthy = exc.code < 500
            except (urllib.error.URLError, OSError):
                healthy = False
        report["processes"][name] = {"pid": entry["pid"], "running": running, "healthy": healthy,
                                     "log": entry.get("log")}
    report["up"] = is_up(cfg) and all(p["healthy"] is not False for p in report["processes"].values())
    report["ports"] = state.get("ports", {})
    report["stray"] = [] if state else find_stack_processes(cfg.root)
    return report


# --------------------------------------------------------------------------------------------
# Airflow REST API


def airflow_token(cfg: StackConfig) -> str:
    """A JWT for the admin user from ``POST /auth/token``."""
    body = {"username": ADMIN_USER, "password": admin_password(cfg)}
    try:
        answer = _http_json(f"{cfg.airflow_url}/auth/token", method="POST", body=body)
    except urllib.error.HTTPError as exc:
        raise StackError(f"Airflow at {cfg.airflow_url} refused the admin login (HTTP {exc.code}); is the "
                         f"password file {cfg.secrets_dir / 'airflow_passwords.json'} the one it started with?") from exc
    return str(answer["access_token"])


class AirflowApi:
    """A small client of Airflow's REST API v2 (JSON in, JSON out, admin token refreshed on 401)."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.base = f"{cfg.airflow_url}/api/v2"
        self._token: str | None = None

    def call(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        for attempt in (1, 2):
            self._token = self._token or airflow_token(self.cfg)
            try:
                return _http_json(url, method=method, body=body, token=self._token)
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 1:
                    self._token = None
                    continue
                detail = exc.read().decode(errors="replace")[:500]
                raise ApiError(exc.code, f"{method} {path}: HTTP {exc.code} {detail}") from exc
        raise AssertionError("unreachable")

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query or None)


class ApiError(StackError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------
# the demo driver (`make run`)

TERMINAL_STATES = ("success", "failed")


@dataclasses.dataclass(frozen=True)
class DemoData:
    """The default data set: synthetic Taobao-format logs generated once into ``<root>/data``."""

    events_path: Path
    truth_path: Path
    params: dict[str, Any]
    fingerprint: str


def ensure_demo_data(cfg: StackConfig, *, users: int, days: int, categories: int, seed: int,
                     start: dt.date = dt.date(2017, 11, 1)) -> DemoData:
    """Generate the synthetic data set unless the same parameters already produced it (same seed,
    same data: a second `make run` reuses the files)."""
    import hashlib

    params = {"users": users, "days": days, "categories": categories, "seed": seed, "start": start.isoformat()}
    fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    out_dir = cfg.root / "data" / f"synthetic-{fingerprint}"
    done = out_dir / "params.json"
    if done.exists():
        saved = json.loads(done.read_text())
        log.info("reusing synthetic data in %s", out_dir)
        return DemoData(Path(saved["events_path"]), Path(saved["truth_path"]), params, fingerprint)
    from pipelines.data import synthetic

    log.info("generating synthetic Taobao-format data (%s) into %s", params, out_dir)
    data = synthetic.generate_taobao(out_dir, users=users, days=days, categories=categories, start=start,
                                     seed=seed)
    done.write_text(json.dumps({**params, "events_path": str(data.events_path),
                                "truth_path": str(data.truth_path)}, indent=2) + "\n")
    return DemoData(Path(data.events_path), Path(data.truth_path), params, fingerprint)


def _task_states(api: AirflowApi, dag_id: str, run_id: str) -> dict[str, str]:
    """Task (``task[map_index]`` for mapped ones) -> state, in the order the tasks started."""
    answer = api.get(f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances", limit=500)
    rows = []
    for ti in answer.get("task_instances", []):
        index = ti.get("map_index")
        name = ti["task_id"] + (f"[{index}]" if index is not None and index >= 0 else "")
        rows.append((ti.get("start_date") or "9999", name, ti.get("state") or "none"))
    return {name: state for _, name, state in sorted(rows)}


def wait_for_runs(api: AirflowApi, dag_id: str, run_ids: list[str], *, timeout: float,
                  out: Printer = print, poll: float = 5.0) -> dict[str, str]:
    """Wait until every run in ``run_ids`` is success or failed, printing task state changes as
    they happen. Returns run id -> final state; raises :class:`StackError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen: dict[tuple[str, str], str] = {}
    run_states: dict[str, str] = {}
    while True:
        for run_id in run_ids:
            if run_states.get(run_id) in TERMINAL_STATES:
                continue
            run = api.get(f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")
            for task, state in _task_states(api, dag_id, run_id).items():
                if seen.get((run_id, task)) != state and state != "none":
                    out(f"  {dag_id} {run_id}: {task} {state}")
                    seen[(run_id, task)] = state
            if run_states.get(run_id) != run["state"]:
                out(f"  {dag_id} {run_id}: run {run['state']}")
            run_states[run_id] = run["state"]
        if all(run_states.get(r) in TERMINAL_STATES for r in run_ids):
            return run_states
        if time.monotonic() > deadline:
            raise StackError(f"{dag_id}: runs still not finished after {timeout:.0f}s: "
                             + ", ".join(f"{r} {run_states.get(r)}" for r in run_ids))
        time.sleep(poll)


def _log_tail(cfg: StackConfig, dag_id: str, run_id: str, task_id: str, lines: int = 30) -> str:
    """The last lines of a task's newest log file (Airflow 3 writes JSON lines: the events are shown)."""
    folder = cfg.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    files = sorted(folder.rglob("attempt=*.log"), key=lambda p: p.stat().st_mtime)
    if not files:
        return f"(no log under {folder})"
    shown = []
    for raw in files[-1].read_text(errors="replace").splitlines()[-lines:]:
        try:
            item = json.loads(raw)
            text = f"{item.get('level', '')} {item.get('event', '')}"
            if item.get("error_detail"):
                detail = item["error_detail"][-1] if isinstance(item["error_detail"], list) else item["error_detail"]
                text += f" {detail.get('exc_type', '')}: {detail.get('exc_value', '')}" if isinstance(detail, dict) else ""
            shown.append(text)
        except ValueError:
            shown.append(raw)
    return f"{files[-1]}:\n" + "\n".join("    " + line for line in shown)


def report_failures(cfg: StackConfig, api: AirflowApi, dag_id: str, run_id: str, out: Printer = print) -> None:
    """Print which tasks of a failed run failed, with the tail of each one's log."""
    for task, state in sorted(_task_states(api, dag_id, run_id).items()):
        if state == "failed":
            out(f"FAILED: {dag_id} {run_id} task {task}; log tail from {_log_tail(cfg, dag_id, run_id, task.split('[')[0])}")


def _ensure_unpaused(api: AirflowApi, dag_id: str) -> None:
    dag = api.get(f"/dags/{dag_id}")
    if dag.get("is_paused"):
        log.info("unpausing %s", dag_id)
        api.call("PATCH", f"/dags/{dag_id}", body={"is_paused": False})


def run_training(cfg: StackConfig, api: AirflowApi, start: dt.date, end: dt.date, fingerprint: str, *,
                 retrain: bool, timeout: float, out: Printer = print) -> tuple[str, str]:
    """Trigger (or reuse) the training run for the window [start, end]; returns (run id, state).

    The run id is fixed per data window and data set, so a second `make run` finds the successful
    run and does not train again (unless ``retrain``); a failed run is cleared and resumed."""
    _ensure_unpaused(api, TRAINING_DAG)
    run_id = f"stackrun__{start.isoformat()}_{end.isoformat()}__{fingerprint}"
    quoted = urllib.parse.quote(run_id, safe="")
    try:
        existing = api.get(f"/dags/{TRAINING_DAG}/dagRuns/{quoted}")
    except ApiError as exc:
        if exc.code != 404:
            raise
        existing = None
    conf = {"data_start": start.isoformat(), "data_end": end.isoformat()}
    if existing and existing["state"] == "success" and retrain:
        run_id = f"{run_id}__retrain_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
        existing = None
    if existing is None:
        out(f"training: triggering {TRAINING_DAG} run {run_id} on {start}..{end}")
        api.call("POST", f"/dags/{TRAINING_DAG}/dagRuns",
                 body={"dag_run_id": run_id, "logical_date": None, "conf": conf,
                       "note": "started by `python -m pipelines stack run`"})
    elif existing["state"] == "success":
        out(f"training: run {run_id} already succeeded for this window; reusing it (--retrain trains again)")
        return run_id, "success"
    elif existing["state"] == "failed":
        out(f"training: run {run_id} failed before; clearing its failed tasks to resume it")
        api.call("POST", f"/dags/{TRAINING_DAG}/dagRuns/{quoted}/clear",
                 body={"dry_run": False, "only_failed": True})
    else:
        out(f"training: run {run_id} is {existing['state']}; waiting for it")
    state = wait_for_runs(api, TRAINING_DAG, [run_id], timeout=timeout, out=out)[run_id]
    return run_id, state


def run_scoring_backfill(cfg: StackConfig, api: AirflowApi, first: dt.date, last: dt.date, *, timeout: float,
                         out: Printer = print, as_of: dict[str, str] | None = None) -> dict[str, str]:
    """Backfill the scoring DAG over [first, last] (re-scoring days that were scored before: their
    runs are cleared and rerun, their partitions replaced). Returns run id -> final state; fills
    ``as_of`` with run id -> the day D it scored (run ids carry the run's trigger time, D + 1)."""
    _ensure_unpaused(api, SCORING_DAG)
    for backfill in api.get("/backfills", dag_id=SCORING_DAG, limit=100).get("backfills", []):
        if backfill.get("completed_at") is None:
            out(f"scoring: backfill {backfill['id']} is still running; waiting for it first")
            _wait_backfill(api, int(backfill["id"]), timeout)
    body = {"dag_id": SCORING_DAG, "from_date": f"{first.isoformat()}T00:00:00Z",
            "to_date": f"{last.isoformat()}T00:00:00Z", "reprocess_behavior": "completed",
            "max_active_runs": 1, "run_backwards": False, "dag_run_conf": {}}
    out(f"scoring: backfilling {SCORING_DAG} for {first}..{last}")
    backfill = _create_backfill(api, body)
    runs = api.get(f"/dags/{SCORING_DAG}/dagRuns", logical_date_gte=body["from_date"],
                   logical_date_lte=body["to_date"], order_by="logical_date", limit=100)
    run_ids = [r["dag_run_id"] for r in runs.get("dag_runs", [])]
    as_of = {} if as_of is None else as_of
    as_of.update({r["dag_run_id"]: (r.get("logical_date") or "")[:10] for r in runs.get("dag_runs", [])})
    out("scoring: runs " + ", ".join(f"{rid} (as of {as_of[rid]})" for rid in run_ids))
    expected = (last - first).days + 1
    if len(run_ids) != expected:
        raise StackError(f"backfill {backfill['id']} made {len(run_ids)} scoring runs for {expected} days "
                         f"({first}..{last}): {run_ids}")
    states = wait_for_runs(api, SCORING_DAG, run_ids, timeout=timeout, out=out)
    _wait_backfill(api, int(backfill["id"]), 120)
    return states


def _create_backfill(api: AirflowApi, body: Mapping[str, Any], attempts: int = 10) -> dict[str, Any]:
    """``POST /backfills``, retried: on SQLite a concurrent writer can lock the DB mid-creation
    (HTTP 503), which may leave a backfill without runs; that one is cancelled before the retry."""
    for attempt in range(1, attempts + 1):
        try:
            return dict(api.call("POST", "/backfills", body=body))
        except ApiError as exc:
            if exc.code not in (409, 503) or attempt == attempts:
                raise
            log.info("backfill creation hit a busy metadata DB (attempt %d/%d): %s", attempt, attempts, exc)
        time.sleep(3)
        # Every earlier backfill was waited for before the first attempt: an open one is our orphan.
        for orphan in api.get("/backfills", dag_id=body["dag_id"], limit=100).get("backfills", []):
            if orphan.get("completed_at") is None:
                with contextlib.suppress(ApiError):
                    api.call("PUT", f"/backfills/{orphan['id']}/cancel")
    raise AssertionError("unreachable")


def _wait_backfill(api: AirflowApi, backfill_id: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while api.get(f"/backfills/{backfill_id}").get("completed_at") is None:
        if time.monotonic() > deadline:
            raise StackError(f"backfill {backfill_id} not completed after {timeout:.0f}s")
        time.sleep(5)


def _champion_version(settings: Any) -> str | None:
    """The version the ``champion`` alias points at, or None."""
    from pipelines.platform import tracking

    try:
        return str(tracking.client(settings).get_model_version_by_alias(settings.model_name, "champion").version)
    except Exception:  # noqa: BLE001 - MLflow raises its own RestException for "no such alias/model"
        return None


def _gate_reason(api: AirflowApi, run_id: str) -> str:
    """The registry step's decision for ``run_id`` (its XCom), as text; best effort."""
    path = (f"/dags/{TRAINING_DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/register/"
            "xcomEntries/return_value")
    try:
        value = api.get(path).get("value")
    except StackError as exc:
        return f"(decision not readable: {exc})"
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if isinstance(value, dict):
        return f"{value.get('decision', '?')}: {value.get('reason', value)}"
    return str(value)


def demo_summary(cfg: StackConfig, settings: Any, runs: Mapping[str, Mapping[str, str]]) -> str:
    """DAG runs and states, model versions and aliases, prediction partitions and their row counts,
    the URLs and where the credentials are."""
    from pipelines.platform import layout, storage, tracking

    lines = ["", "Summary", "  DAG runs:"]
    for dag_id, states in runs.items():
        for run_id, state in states.items():
            lines.append(f"    {dag_id:<30} {run_id:<60} {state}")
    client = tracking.client(settings)
    try:
        model = client.get_registered_model(settings.model_name)
        by_version: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        versions = sorted(client.search_model_versions(f"name='{settings.model_name}'"),
                          key=lambda v: int(v.version))
        lines.append(f"  registered model {settings.model_name}:")
        for v in versions:
            aliases = ", ".join(sorted(by_version.get(str(v.version), []))) or "-"
            lines.append(f"    version {v.version:<4} aliases: {aliases:<22} run {v.run_id}")
    except Exception as exc:  # noqa: BLE001 - the summary reports what it cannot read
        lines.append(f"  registered model {settings.model_name}: not readable ({exc})")
    lines.append("  prediction partitions (with _SUCCESS):")
    for date in storage.list_partitions(settings, layout.PREDICTIONS):
        key = layout.partition_prefix(layout.PREDICTIONS, date) + layout.SUCCESS
        if storage.exists(settings, key):
            manifest = storage.get_json(settings, key)
            lines.append(f"    {storage.uri(settings, layout.partition_prefix(layout.PREDICTIONS, date))}  "
                         f"{manifest.get('row_count')} rows  model version {manifest.get('model_version')}")
        else:
            lines.append(f"    {layout.partition_prefix(layout.PREDICTIONS, date)}  (no _SUCCESS: incomplete)")
    lines.append(summary_lines(cfg, None).replace("Stack:", "Explore (the stack stays up; `make down` stops it):"))
    return "\n".join(lines)


def _promote_for_demo(settings: Any, out: Printer) -> str:
    """No champion exists and the gate refused the only candidate: for the demo, do what a reviewer
    can do in the MLflow UI or with `python -m pipelines promote`, and say so on the version."""
    from pipelines.model import registry

    challenger = registry.version_by_alias(settings, "challenger")
    if challenger is None:
        raise StackError(f"{settings.model_name} has neither a champion nor a challenger version")
    version = str(challenger.version)
    registry.promote_version(settings, version, reason="make run demo: no champion yet and the gate refused "
                             "the first version; promoted by hand so the scoring backfill can be shown")
    out(f"training: demo only: promoted version {version} to champion BY HAND (the manual path a reviewer "
        f"has: python -m pipelines promote --version {version}); the gate's refusal stays on the version. "
        f"`make run` with IM_STRICT_GATE=1 stops here instead.")
    return version


def run_demo(cfg: StackConfig, *, retrain: bool = False, score_days: int = 3, users: int = 800, days: int = 21,
             categories: int = 40, seed: int = 7, timeout: float = 3600, strict_gate: bool = False,
             out: Printer = print) -> bool:
    """The `make run` job: bring the stack up, generate and land the default data, train, backfill
    scoring over the last ``score_days`` days, print the summary. Idempotent: a second call reuses
    the data and the successful training run and re-scores the same days (partitions replaced).
    When there is no champion and the gate refused the new version, the demo promotes it by hand
    (labelled as such) unless ``strict_gate``. Returns False (after printing the failed task and
    its log tail) when a run failed."""
    from pipelines.config import load_settings
    from pipelines.data import sources

    if score_days < 1 or score_days > days:
        raise StackError(f"--score-days {score_days} must be between 1 and --days {days}")
    up(cfg, out=out)
    secret, _ = ensure_secrets(cfg)
    env = stack_environment(cfg, secret)
    os.environ.update(package_environment(cfg, secret))  # boto3 and MLflow in this process read them
    settings = load_settings(environ=env)

    data = ensure_demo_data(cfg, users=users, days=days, categories=categories, seed=seed)
    out(f"data: landing {data.events_path} (Taobao format) into s3://{settings.bucket}/raw/events/")
    landed = sources.land_events(settings, data.events_path, "taobao", name="synthetic")
    if not landed.dates:
        raise StackError(f"landing {data.events_path} produced no partitions")
    start, end = min(landed.dates), max(landed.dates)
    out(f"data: {landed.rows} rows in {len(landed.dates)} daily partitions {start}..{end} "
        f"({landed.quarantined} quarantined)")

    api = AirflowApi(cfg)
    runs: dict[str, dict[str, str]] = {}
    run_id, state = run_training(cfg, api, start, end, data.fingerprint, retrain=retrain, timeout=timeout, out=out)
    runs[TRAINING_DAG] = {run_id: state}
    if state != "success":
        report_failures(cfg, api, TRAINING_DAG, run_id, out)
        out(demo_summary(cfg, settings, runs))
        return False
    champion = _champion_version(settings)
    if champion is None:
        reason = _gate_reason(api, run_id)
        out(f"training: the gate did not promote the new version; it said: {reason}")
        if strict_gate:
            out(f"training: no version of {settings.model_name} has the champion alias, so there is nothing "
                f"to score with (--strict-gate)")
            out(demo_summary(cfg, settings, runs))
            return False
        champion = _promote_for_demo(settings, out)
    out(f"training: champion is {settings.model_name} version {champion}")
    first = end - dt.timedelta(days=score_days - 1)
    as_of: dict[str, str] = {}
    states = run_scoring_backfill(cfg, api, first, end, timeout=timeout, out=out, as_of=as_of)
    runs[SCORING_DAG] = {f"{r} (as of {as_of.get(r, '?')})": state for r, state in states.items()}
    failed = [r for r, s in states.items() if s != "success"]
    for run in failed:
        report_failures(cfg, api, SCORING_DAG, run, out)
    out(demo_summary(cfg, settings, runs))
    return not failed


# --------------------------------------------------------------------------------------------
# command line


def _cmd_up(args: argparse.Namespace, settings: object) -> int:
    try:
        up(default_config())
    except (StackError, svc.ServiceError) as exc:
        print(f"stack up failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_down(args: argparse.Namespace, settings: object) -> int:
    try:
        down(default_config())
    except StackError as exc:
        print(f"stack down: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_status(args: argparse.Namespace, settings: object) -> int:
    cfg = running_config(default_config())
    report = status(cfg)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["up"] else 1
    if not report["processes"]:
        print(f"stack is down (no {cfg.state_file})")
        for pid in report["stray"]:
            print(f"  stray stack process {pid}: {_describe(pid)} (`make down` ends it)")
        return 1
    for name, proc in report["processes"].items():
        health = {True: "healthy", False: "NOT ANSWERING", None: "-"}[proc["healthy"]]
        print(f"  {name:<14} pid {proc['pid']:<8} {'running' if proc['running'] else 'STOPPED':<8} "
              f"{health:<14} {proc['log']}")
    print(summary_lines(cfg, None))
    print("stack is up" if report["up"] else "stack is NOT fully up: `make down && make up` restarts it")
    return 0 if report["up"] else 1


def _cmd_env(args: argparse.Namespace, settings: object) -> int:
    cfg = running_config(default_config())
    if not cfg.env_file.exists():
        print(f"no {cfg.env_file} yet: run `make up` first", file=sys.stderr)
        return 1
    # Secrets are shown as file reads, so this output is safe to paste or log.
    env = read_env_file(cfg.env_file)
    sources = {
        "AWS_ACCESS_KEY_ID": "s3_access_key", "AWS_SECRET_ACCESS_KEY": "s3_secret_key",
        "AIRFLOW__CORE__FERNET_KEY": "airflow_fernet_key", "AIRFLOW__API__SECRET_KEY": "airflow_api_secret_key",
        "AIRFLOW__API_AUTH__JWT_SECRET": "airflow_jwt_secret"}
    for key, value in sorted(env.items()):
        if key in sources:
            print(f'export {key}="$(cat {_shell_quote(str(cfg.secrets_dir / sources[key]))})"')
        elif key == "AIRFLOW_CONN_AWS_DEFAULT":
            continue
        else:
            print(f"export {key}={_shell_quote(value)}")
    return 0


def _cmd_run(args: argparse.Namespace, settings: object) -> int:
    cfg = running_config(default_config())
    try:
        ok = run_demo(cfg, retrain=args.retrain, score_days=args.score_days, users=args.users, days=args.days,
                      categories=args.categories, seed=args.seed, timeout=args.timeout,
                      strict_gate=args.strict_gate or os.environ.get("IM_STRICT_GATE", "") in ("1", "true"))
    except (StackError, svc.ServiceError) as exc:
        print(f"stack run failed: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def register_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``stack up|down|status|env|run``."""
    stack = subparsers.add_parser(
        "stack", help="the embedded dev stack (SeaweedFS, MLflow, Airflow) under .local/",
        description="Run the embedded stack on 127.0.0.1. State lives in .local/ (or IM_STACK_ROOT_DIR). "
                    "Ports: IM_STACK_S3_PORT (8333), IM_STACK_MLFLOW_PORT (5000), IM_STACK_AIRFLOW_PORT "
                    "(8080), IM_STACK_PORT_BASE (18330; SeaweedFS's internal listeners and Airflow's log "
                    "servers use the 14 ports from there). IM_STACK_USE_SCHEDULE=1 lets the scheduler "
                    "create scheduled runs (off: runs happen when triggered or backfilled).")
    sub = stack.add_subparsers(dest="stack_command", metavar="<command>", required=True)
    sub.add_parser("up", help="start the stack and wait until every service answers").set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop every stack process (data is kept)").set_defaults(func=_cmd_down)
    st = sub.add_parser("status", help="show each process, its health and the URLs")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_cmd_status)
    sub.add_parser("env", help="print `export` lines for the stack (secrets read from their files)"
                   ).set_defaults(func=_cmd_env)
    run = sub.add_parser("run", help="the demo: up, synthetic data, train, backfill scoring, summary")
    run.add_argument("--retrain", action="store_true", help="train again even if this data window has a "
                     "successful training run")
    run.add_argument("--score-days", type=int, default=3, help="score the last N days of the window (3)")
    run.add_argument("--users", type=int, default=800, help="synthetic users (800)")
    run.add_argument("--days", type=int, default=21, help="synthetic days (21)")
    run.add_argument("--categories", type=int, default=40, help="synthetic categories (40)")
    run.add_argument("--seed", type=int, default=7, help="synthetic data seed (7)")
    run.add_argument("--timeout", type=float, default=3600, help="seconds to wait for each DAG (3600)")
    run.add_argument("--strict-gate", action="store_true", help="stop when the gate promotes no champion "
                     "(default: the demo promotes the first version by hand and says so; also IM_STRICT_GATE=1)")
    run.set_defaults(func=_cmd_run)
