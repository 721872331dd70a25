"""Start, stop and check a stack: :func:`up`, :func:`down`, :func:`status`.

``up`` starts (team stack: PostgreSQL and Redis first) SeaweedFS, MLflow and Airflow's processes
(:mod:`.topology`: api-server, scheduler, dag-processor, triggerer, loopback log servers and, for
the team stack, the Celery workers), each in its own process group with the stack's marker and
only its own secrets in its environment, records them in ``stack.json`` as they start, and waits
until every service really answers. ``down`` stops the recorded groups, then ends whatever still
carries the marker.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from pipelines.devstack import airflow_api, backends, credentials, processes, services, topology
from pipelines.devstack.config import TEAM_FOLDER, Printer, StackConfig, StackError, port_variables
from pipelines.devstack.credentials import ADMIN_USER, ensure_secrets
from pipelines.devstack.environment import (
    mlflow_backend_uri,
    process_environment,
    stack_environment,
    write_env_file,
)
from pipelines.devstack.state import config_record, read_state, record_process, write_state
from pipelines.platform import layout

log = logging.getLogger(__name__)

AIRFLOW_COMPONENTS = topology.AIRFLOW_COMPONENTS
STATE_FOLDERS = ("seaweedfs", "mlflow", "airflow", "logs", "work")


def _check_ports(cfg: StackConfig) -> None:
    busy = {name: port for name, port in cfg.all_ports().items() if services.port_in_use(port)}
    if busy:
        listing = ", ".join(f"{port} ({name})" for name, port in busy.items())
        raise StackError(
            f"port already in use on {services.LOOPBACK}: {listing}. Another program (or another stack) holds "
            f"it: stop it (`make down`; `ss -ltnp | grep :<port>` shows who holds it) or choose other "
            f"ports with {', '.join(port_variables())}.")


def _spawn(cfg: StackConfig, name: str, argv: list[str], env: Mapping[str, str], health_url: str) -> services.Process:
    return services.spawn(name, argv, cfg.logs_dir / f"{name}.log", env, health_url, cwd=cfg.root)


def expected_dags(cfg: StackConfig) -> list[str]:
    """The DAG ids the repo defines (one DAG per file, dag_id = file name; helper modules, which
    do not name themselves, are skipped)."""
    return sorted(p.stem for p in (cfg.repo / "dags").glob("*.py")
                  if not p.name.startswith("_") and f'"{p.stem}"' in p.read_text(errors="replace"))


def is_up(cfg: StackConfig) -> bool:
    """Whether every process recorded in ``stack.json`` still runs."""
    recorded = read_state(cfg).get("processes", {})
    wanted = topology.expected_processes(cfg)
    return bool(recorded) and wanted <= recorded.keys() and all(processes.is_running(p) for p in recorded.values())


def up(cfg: StackConfig, *, out: Printer = print, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Start the stack (if it is not already up) and wait until every service really answers.

    ``environ`` (default: this process's) is what the services inherit; its settings variables
    reach the tasks. Returns the state written to ``stack.json``. Credentials generated now are
    printed once through ``out``; later starts only say where they are. Raises :class:`StackError`
    naming a busy port, or a service that did not start (with the tail of its log); whatever had
    started by then is stopped again.
    """
    if is_up(cfg):
        out(f"stack already up (state in {cfg.state_file}); `make status` checks it")
        return read_state(cfg)
    if read_state(cfg) or processes.find_stack_processes(cfg.root):
        log.info("cleaning up what is left of an earlier stack in %s", cfg.root)
        down(cfg, out=lambda _: None)
    _check_ports(cfg)
    started_at = time.monotonic()
    for sub in STATE_FOLDERS:
        (cfg.root / sub).mkdir(parents=True, exist_ok=True)
    if cfg.team and cfg.root.name == TEAM_FOLDER:
        credentials.make_private_dir(cfg.root.parent)  # .local/ itself: 0700 too
    secret, created = ensure_secrets(cfg)
    credentials.write_derived_files(cfg, secret)
    write_env_file(cfg, stack_environment(cfg, secret, environ))
    caller = dict(os.environ if environ is None else environ)

    state: dict[str, Any] = {"root": str(cfg.root), "repo": str(cfg.repo), "with_airflow": cfg.with_airflow,
                             "kind": cfg.kind,
                             "ports": cfg.all_ports(), "config": config_record(cfg),
                             "started": dt.datetime.now(dt.UTC).isoformat(), "processes": {}}
    write_state(cfg, state)
    try:
        _start_services(cfg, state, secret, caller)
    except BaseException:
        down(cfg, out=lambda _: None)
        raise
    state["ready_seconds"] = round(time.monotonic() - started_at, 1)
    write_state(cfg, state)
    if created:
        _print_secret_locations(cfg, created, out)
    out(summary_lines(cfg, state))
    return state


def _start_services(cfg: StackConfig, state: dict[str, Any], secret: Mapping[str, str],
                    environ: Mapping[str, str]) -> None:
    """Start every service, recording each in ``state`` as soon as it is spawned; each gets the
    environment of its row in :data:`~.environment.PROCESS_SECRETS`."""
    def record(proc: services.Process) -> None:
        record_process(state, cfg, proc)

    def env_for(name: str, hostname: str = services.LOOPBACK) -> dict[str, str]:
        return {**process_environment(cfg, secret, name, environ, hostname), processes.MARKER_VAR: str(cfg.root)}

    if cfg.team:
        _start_backends(cfg, secret, env_for("postgres"), record)
    log.info("starting SeaweedFS (S3 on %s, data in %s)", cfg.s3_endpoint_url, cfg.root / "seaweedfs")
    services.start_seaweedfs(cfg.root / "seaweedfs", cfg.seaweed_ports(), env_for("seaweedfs"), cfg.bucket,
                             cfg.logs_dir / "seaweedfs.log", record=record,
                             security_dir=credentials.seaweed_conf_dir(cfg))
    migrate = None
    if cfg.with_airflow:
        # The metadata DB migration is slow and independent of MLflow: run both at once.
        log.info("migrating the Airflow metadata DB (%s)", cfg.kind)
        migrate = _spawn(cfg, "airflow-db-migrate", [services.bin_path("airflow"), "db", "migrate"],
                         env_for("airflow-db-migrate"), "")
    artifacts = layout.mlflow_artifacts_uri(cfg.bucket)
    log.info("starting MLflow (%s, artifacts in %s, basic auth)", cfg.mlflow_url, artifacts)
    services.start_mlflow(cfg.mlflow_port, mlflow_backend_uri(cfg), artifacts, env_for("mlflow"),
                          cfg.logs_dir / "mlflow.log", record=record, auth=mlflow_auth(cfg, secret))
    if cfg.online_port:
        _start_online(cfg, env_for("online"), record)
    if migrate is None:
        return
    code = migrate.popen.wait(timeout=600)
    if code != 0:
        raise StackError(f"`airflow db migrate` failed with code {code}; log {migrate.log_path}:\n"
                         f"{services.tail(migrate.log_path)}")
    procs: dict[str, services.Process] = {}
    for spec in topology.airflow_processes(cfg):
        proc = _spawn(cfg, spec.name, list(spec.argv), env_for(spec.name, spec.hostname), spec.health_url)
        record(proc)
        procs[spec.name] = proc
    dags = expected_dags(cfg)
    log.info("starting Airflow (%s); waiting for the scheduler and DAGs %s", cfg.airflow_url, dags)
    airflow_api.wait_until_ready(cfg, procs, dags)
    if cfg.team:
        airflow_api.wait_workers_ready({n: procs[n] for n in cfg.worker_names()})


def _start_online(cfg: StackConfig, env: dict[str, str], record: Callable[[services.Process], None]) -> None:
    """The online scoring endpoint (``python -m pipelines serve-online``): it answers its health
    check at once when there is no champion yet, and loads the champion when the alias moves."""
    url = f"http://{services.LOOPBACK}:{cfg.online_port}"
    log.info("starting online scoring (%s)", url)
    proc = _spawn(cfg, "online", [sys.executable, "-m", "pipelines", "serve-online", "--port", str(cfg.online_port)],
                  env, f"{url}/healthz")
    record(proc)
    services.wait_healthy(proc, timeout=180)


def mlflow_auth(cfg: StackConfig, secret: Mapping[str, str]) -> services.MlflowAuth:
    """The basic-auth setup of the stack's MLflow server (from the secrets folder)."""
    return services.MlflowAuth(
        config_path=credentials.mlflow_auth_file(cfg), flask_secret=secret["mlflow_flask_secret"],
        admin_user=credentials.MLFLOW_ADMIN_USER, admin_password=secret["mlflow_admin_password"],
        client_user=credentials.MLFLOW_CLIENT_USER, client_password=secret["mlflow_client_password"])


def _start_backends(cfg: StackConfig, secret: Mapping[str, str], env: Mapping[str, str],
                    record: Callable[[services.Process], None]) -> None:
    """The team stack's PostgreSQL (roles and databases created or re-passworded) and Redis."""
    data = cfg.root / "postgres" / "data"
    if backends.init_postgres(data, secret["postgres_superuser_password"], cfg.logs_dir / "postgres-initdb.log"):
        log.info("created the PostgreSQL cluster in %s", data)
    log.info("starting PostgreSQL on %s:%d and Redis on %s:%d", services.LOOPBACK, cfg.postgres_port,
             services.LOOPBACK, cfg.redis_port)
    backends.start_postgres(data, cfg.postgres_port, cfg.logs_dir / "postgres.log", env, record=record)
    backends.ensure_databases(cfg.postgres_port, secret["postgres_superuser_password"],
                              {role: secret[f"postgres_{role}_password"] for role in credentials.POSTGRES_ROLES})
    backends.start_redis(credentials.redis_conf_file(cfg), cfg.root / "redis", cfg.redis_port,
                         secret["redis_password"], cfg.logs_dir / "redis.log", env, record=record)


def _print_secret_locations(cfg: StackConfig, created: list[str], out: Printer) -> None:
    """Say once where freshly generated credentials are: their values are never printed (they
    would end up in terminal scroll-back and CI logs)."""
    files = credentials.secret_files(cfg)
    lines = ["", f"Generated credentials in {cfg.secrets_dir} (folder 0700, files 0600; values not shown):"]
    lines += [f"  {cfg.secrets_dir / name}   {files[name]}" for name in created]
    lines.append(f"  Airflow UI login: user {ADMIN_USER}, password in {cfg.passwords_file}")
    lines.append(f"  MLflow UI login: user {credentials.MLFLOW_ADMIN_USER}, password in "
                 f"{cfg.secrets_dir / 'mlflow_admin_password'}")
    out("\n".join(lines))


def summary_lines(cfg: StackConfig, state: Mapping[str, Any] | None = None) -> str:
    """Where to reach the stack and where its credentials are (no secret values)."""
    lines = ["", "Stack is up:" if state else "Stack:"]
    if cfg.with_airflow:
        lines.append(f"  Airflow UI/API  {cfg.airflow_url}   (user {ADMIN_USER}; password in {cfg.passwords_file})")
    lines.append(f"  MLflow UI       {cfg.mlflow_url}")
    if cfg.online_port:
        lines.append(f"  online scoring  http://{services.LOOPBACK}:{cfg.online_port} (POST /v1/score with the "
                     f"bearer token in {cfg.secrets_dir / credentials.ONLINE_TOKEN_FILE}; GET /healthz)")
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
    running after the recorded groups were stopped; raises :class:`StackError` naming any that
    could not be ended."""
    state = read_state(cfg)
    recorded: dict[str, Any] = state.get("processes", {})
    order = sorted(recorded, key=topology.stop_rank)
    sessions = [int(p["pid"]) for p in recorded.values() if processes.is_running(p)]
    before = set(processes.find_stack_processes(cfg.root, sessions))
    stopped = []
    for name in order:
        entry = recorded[name]
        if processes.is_running(entry):
            # PostgreSQL's SIGTERM waits for every client to leave; SIGINT is its fast shutdown.
            first = signal.SIGINT if name == "postgres" else signal.SIGTERM
            services.stop_process_group(int(entry["pid"]), timeout, first)
            stopped.append(name)
    leftovers = [pid for pid in sorted(before | set(processes.find_stack_processes(cfg.root, sessions)))
                 if processes.is_live(pid)]
    if leftovers:
        log.info("ending %d leftover stack process(es): %s", len(leftovers),
                 "; ".join(f"{pid} {processes.describe(pid)}" for pid in leftovers))
        processes.kill_all(leftovers, timeout)
    remaining = [pid for pid in leftovers if processes.is_live(pid)]
    remaining += [pid for pid in processes.find_stack_processes(cfg.root, sessions) if pid not in remaining]
    if remaining:
        raise StackError("could not end stack processes: "
                         + "; ".join(f"{p} {processes.describe(p)}" for p in remaining))
    with contextlib.suppress(FileNotFoundError):
        cfg.state_file.unlink()
    out(f"stack stopped ({', '.join(stopped) or 'nothing was running'}"
        f"{f'; {len(leftovers)} leftover process(es) ended' if leftovers else ''}); data kept in {cfg.root}")
    return leftovers


def _answers(url: str) -> bool:
    """Whether ``url`` answers without a server error."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bool(resp.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError):
        return False


def status(cfg: StackConfig) -> dict[str, Any]:
    """Per process: recorded pid, whether it runs and whether its health URL answers; plus ports
    and, when nothing is recorded, stray processes of the stack (``stray``: their pids)."""
    state = read_state(cfg)
    report: dict[str, Any] = {"root": str(cfg.root), "up": False, "processes": {}}
    for name, entry in state.get("processes", {}).items():
        running = processes.is_running(entry)
        healthy = _answers(entry["health_url"]) if running and entry.get("health_url") else None
        report["processes"][name] = {"pid": entry["pid"], "running": running, "healthy": healthy,
                                     "log": entry.get("log")}
    report["up"] = is_up(cfg) and all(p["healthy"] is not False for p in report["processes"].values())
    report["ports"] = state.get("ports", {})
    report["stray"] = [] if state else processes.find_stack_processes(cfg.root)
    return report

