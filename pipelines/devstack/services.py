"""Start and stop the embedded services (SeaweedFS S3, MLflow server) as local processes.

Used by the development stacks (:mod:`pipelines.devstack.lifecycle`, ``make up``, ``make up-team``)
and by the test suite (``tests/conftest.py``, on free ports so it never collides with a running
``make up``). Each service runs in its own process group so stopping it also ends every child it
spawned (found through ``/proc``: Linux only). Everything binds to 127.0.0.1.

Closed doors: SeaweedFS runs without WebDAV, telemetry, Iceberg and Lance listeners and, given a
``security.toml`` folder, with JWT-signed volume and filer access (anonymous filer requests get
401); MLflow, given an :class:`MlflowAuth`, runs its basic-auth app (anonymous calls get 401).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.platform import layout, storage

LOOPBACK = "127.0.0.1"

# weed mini opens many listeners; each gets an explicit port so two stacks can live side by side.
SEAWEED_PORT_FLAGS = (
    "s3.port", "master.port", "volume.port", "filer.port", "admin.port", "webdav.port",
    "s3.port.grpc", "master.port.grpc", "volume.port.grpc", "filer.port.grpc", "admin.port.grpc",
    "s3.port.iceberg", "s3.port.lance",
)
# Listeners the product does not use are switched off (their ports stay reserved in the layout).
SEAWEED_DISABLED = ("s3.port.iceberg", "s3.port.lance")
SEAWEED_OFF_FLAGS = ("-webdav=false", "-master.telemetry=false", "-admin.ui=false")


class ServiceError(RuntimeError):
    """A service did not start, or a port it needs is taken; the message says which."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on ``port`` of 127.0.0.1."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def bin_path(name: str) -> str:
    """An executable of this virtual environment (weed, mlflow, airflow), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"{name!r} is not installed; run `make install` first")
    return found


@dataclass
class Process:
    """A started service: its name, process, log file and the URL that says it is healthy."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    health_url: str
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = 20.0) -> None:
        stop_process_group(self.popen.pid, timeout)
        try:
            self.popen.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, parent pid, process group, session) of ``pid`` from /proc, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[2] == pgid and stat[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_process_group(pid: int, timeout: float = 20.0, first: signal.Signals = signal.SIGTERM) -> None:
    """Send ``first`` (SIGTERM) to the process group of ``pid``, then SIGKILL whatever is left
    after ``timeout``.

    Zombies do not count as left: the group is done when every member has exited.
    """
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    try:
        os.killpg(pgid, first)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not group_members(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


def spawn(name: str, argv: list[str], log_path: Path, env: Mapping[str, str], health_url: str,
          cwd: Path | None = None) -> Process:
    """Start ``argv`` in a new session (own process group) with output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed by the OS
    popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(env), cwd=cwd, start_new_session=True)
    log.close()
    return Process(name, popen, log_path, health_url)


def wait_healthy(proc: Process, timeout: float = 120.0, accept: tuple[int, ...] = (200,)) -> None:
    """Poll ``proc.health_url`` until it answers with a status in ``accept``.

    Raises :class:`ServiceError` with the tail of the service log when the process exits or the
    time runs out.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise ServiceError(f"{proc.name} exited with code {proc.popen.returncode} during start; "
                               f"log {proc.log_path}:\n{tail(proc.log_path)}")
        try:
            with urllib.request.urlopen(proc.health_url, timeout=3) as resp:
                if resp.status in accept:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if exc.code in accept:
                return
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise ServiceError(f"{proc.name} did not become healthy at {proc.health_url} within {timeout:.0f}s "
                       f"(last answer: {last}); log {proc.log_path}:\n{tail(proc.log_path)}")


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def check_ports_free(ports: Mapping[str, int]) -> None:
    """Raise :class:`ServiceError` naming every port of ``ports`` (name -> port) that is taken."""
    busy = {name: port for name, port in ports.items() if port_in_use(port)}
    if busy:
        listing = ", ".join(f"{name} {port}" for name, port in busy.items())
        raise ServiceError(f"port(s) already in use on {LOOPBACK}: {listing}. Stop what holds them "
                           f"(`make down`, or `ss -ltnp`) or choose other ports.")


def seaweed_ports(s3_port: int, base: int | None = None) -> dict[str, int]:
    """Ports for every weed mini listener: S3 on ``s3_port``, the others from ``base`` upward
    (or free ports when ``base`` is None)."""
    ports: dict[str, int] = {"s3.port": s3_port}
    for offset, flag in enumerate(f for f in SEAWEED_PORT_FLAGS if f != "s3.port"):
        ports[flag] = free_port() if base is None else base + offset
    return ports


def _started(proc: Process, record: Callable[[Process], None] | None, ready: Callable[[], None]) -> Process:
    """Report ``proc`` to ``record`` (so a caller can stop it later), run ``ready``; on any failure
    stop the process group before re-raising, so a failed start leaves nothing behind."""
    try:
        if record is not None:
            record(proc)
        ready()
    except BaseException:
        proc.stop(timeout=10)
        raise
    return proc


def start_seaweedfs(data_dir: Path, ports: Mapping[str, int], env: Mapping[str, str], bucket: str,
                    log_path: Path, record: Callable[[Process], None] | None = None,
                    security_dir: Path | None = None) -> Process:
    """Start ``weed mini`` (S3 API on ``ports['s3.port']``) and create ``bucket``.

    ``env`` must hold AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: weed takes its S3 identity
    from them at start. ``security_dir`` is weed's working folder, where it reads
    ``security.toml`` (JWT keys). ``record`` is called with the process as soon as it is spawned.
    """
    check_ports_free({k: v for k, v in ports.items() if k not in SEAWEED_DISABLED})
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [bin_path("weed"), "mini", f"-dir={data_dir}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            f"-bucket={bucket}", *SEAWEED_OFF_FLAGS]
    argv += [f"-{flag}={0 if flag in SEAWEED_DISABLED else port}" for flag, port in ports.items()]
    proc = spawn("seaweedfs", argv, log_path, env, f"http://{LOOPBACK}:{ports['s3.port']}/healthz",
                 cwd=security_dir)
    proc.extra["s3_endpoint_url"] = f"http://{LOOPBACK}:{ports['s3.port']}"
    proc.extra["filer_url"] = f"http://{LOOPBACK}:{ports['filer.port']}"

    def ready() -> None:
        # The S3 gateway answers /healthz once it is serving; any HTTP answer means it is up.
        wait_healthy(proc, timeout=90, accept=(200, 403, 404))
        _wait_bucket(proc.extra["s3_endpoint_url"], bucket, env)

    return _started(proc, record, ready)


def _wait_bucket(endpoint: str, bucket: str, env: Mapping[str, str], timeout: float = 60.0) -> None:
    """Wait until ``bucket`` exists (creating it if needed) and accepts a write, signing with the
    credentials in ``env`` (not this process's environment: the server was just given them)."""
    try:
        storage.wait_writable(endpoint, bucket, layout.STACK_HEALTHCHECK, env, timeout=timeout)
    except storage.StorageError as exc:
        raise ServiceError(f"SeaweedFS: {exc}") from exc


@dataclass(frozen=True)
class MlflowAuth:
    """MLflow's basic-auth app: its configuration file (admin account, user database), the
    session/CSRF secret, and the non-admin account created for clients once the server answers."""

    config_path: Path
    flask_secret: str
    admin_user: str
    admin_password: str
    client_user: str
    client_password: str

    def client_env(self) -> dict[str, str]:
        """What an MLflow client needs to authenticate as the client account."""
        return {"MLFLOW_TRACKING_USERNAME": self.client_user, "MLFLOW_TRACKING_PASSWORD": self.client_password}


def start_mlflow(port: int, backend_db: Path | str, artifacts_destination: str, env: Mapping[str, str],
                 log_path: Path, record: Callable[[Process], None] | None = None,
                 auth: MlflowAuth | None = None) -> Process:
    """Start an MLflow tracking server: SQLite file (or a database URI) as backend, artifacts
    proxied to S3, with the basic-auth app when ``auth`` is given.

    ``env`` must hold MLFLOW_S3_ENDPOINT_URL and the AWS credentials. The server's background
    job runner is switched off: the product does not use it and it costs several processes.
    """
    check_ports_free({"mlflow": port})
    if isinstance(backend_db, Path):
        backend_db.parent.mkdir(parents=True, exist_ok=True)
        backend_uri = f"sqlite:///{backend_db}"
    else:
        backend_uri = backend_db
    server_env = dict(env)
    server_env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    argv = [bin_path("mlflow"), "server", "--host", LOOPBACK, "--port", str(port),
            "--backend-store-uri", backend_uri,
            "--artifacts-destination", artifacts_destination, "--workers", "1"]
    if auth is not None:
        argv += ["--app-name", "basic-auth"]
        server_env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth.config_path)
        server_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = auth.flask_secret
    proc = spawn("mlflow", argv, log_path, server_env, f"http://{LOOPBACK}:{port}/health")
    proc.extra["tracking_uri"] = f"http://{LOOPBACK}:{port}"

    def ready() -> None:
        wait_healthy(proc, timeout=180)
        if auth is not None:
            ensure_mlflow_user(proc.extra["tracking_uri"], auth)

    return _started(proc, record, ready)


def _mlflow_call(url: str, method: str, body: Mapping[str, str], user: str, password: str) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method)
    request.add_header("Content-Type", "application/json")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def ensure_mlflow_user(tracking_uri: str, auth: MlflowAuth) -> None:
    """Create MLflow's client account (as the admin), or reset its password to the one on file.
    Raises :class:`ServiceError` when the admin login is refused."""
    users = f"{tracking_uri}/api/2.0/mlflow/users"
    body = {"username": auth.client_user, "password": auth.client_password}
    code = _mlflow_call(f"{users}/create", "POST", body, auth.admin_user, auth.admin_password)
    if code == 400:  # RESOURCE_ALREADY_EXISTS: keep it in step with the secrets folder
        code = _mlflow_call(f"{users}/update-password", "PATCH", body, auth.admin_user, auth.admin_password)
    if code != 200:
        raise ServiceError(f"MLflow at {tracking_uri} answered HTTP {code} when creating user "
                           f"{auth.client_user!r} as {auth.admin_user!r}; is {auth.config_path} the file its "
                           f"user database was created with?")
