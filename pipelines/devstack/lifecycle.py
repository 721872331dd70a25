"""Start, stop and check the stack: :func:`up`, :func:`down`, :func:`status`.

``up`` starts SeaweedFS, MLflow and Airflow's components (api-server, scheduler, dag-processor,
triggerer), each in its own process group with the stack's marker in its environment, records
them in ``stack.json`` as they start, and waits until every service really answers. ``down``
stops the recorded groups, then ends whatever still carries the marker.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from pipelines.devstack import airflow_api, processes, services
from pipelines.devstack.config import Printer, StackConfig, StackError, port_variables
from pipelines.devstack.credentials import ADMIN_USER, admin_password, ensure_secrets
from pipelines.devstack.environment import stack_environment, write_env_file
from pipelines.devstack.state import config_record, read_state, record_process, write_state
from pipelines.platform import layout

log = logging.getLogger(__name__)

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
STOP_ORDER = ("scheduler", "triggerer", "dag-processor", "api-server", "mlflow", "seaweedfs")
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
    state = read_state(cfg)
    recorded = state.get("processes", {})
    wanted = {"seaweedfs", "mlflow", *(AIRFLOW_COMPONENTS if state.get("with_airflow") else ())}
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
    secret, created = ensure_secrets(cfg)
    client_env = stack_environment(cfg, secret, environ)
    write_env_file(cfg, client_env)
    base_env = {**(os.environ if environ is None else environ), **client_env, processes.MARKER_VAR: str(cfg.root)}

    state: dict[str, Any] = {"root": str(cfg.root), "repo": str(cfg.repo), "with_airflow": cfg.with_airflow,
                             "ports": cfg.all_ports(), "config": config_record(cfg),
                             "started": dt.datetime.now(dt.UTC).isoformat(), "processes": {}}
    write_state(cfg, state)
    try:
        _start_services(cfg, state, base_env)
    except BaseException:
        down(cfg, out=lambda _: None)
        raise
    state["ready_seconds"] = round(time.monotonic() - started_at, 1)
    write_state(cfg, state)
    if created:
        _print_new_credentials(cfg, secret, created, out)
    out(summary_lines(cfg, state))
    return state


def _start_services(cfg: StackConfig, state: dict[str, Any], env: Mapping[str, str]) -> None:
    """Start every service, recording each in ``state`` as soon as it is spawned."""
    def record(proc: services.Process) -> None:
        record_process(state, cfg, proc)

    log.info("starting SeaweedFS (S3 on %s, data in %s)", cfg.s3_endpoint_url, cfg.root / "seaweedfs")
    services.start_seaweedfs(cfg.root / "seaweedfs", cfg.seaweed_ports(), env, cfg.bucket,
                             cfg.logs_dir / "seaweedfs.log", record=record)
    migrate = None
    if cfg.with_airflow:
        # The metadata DB migration is slow and independent of MLflow: run both at once.
        log.info("migrating the Airflow metadata DB in %s", cfg.airflow_home)
        migrate = _spawn(cfg, "airflow-db-migrate", [services.bin_path("airflow"), "db", "migrate"], env, "")
    artifacts = layout.mlflow_artifacts_uri(cfg.bucket)
    log.info("starting MLflow (%s, artifacts in %s)", cfg.mlflow_url, artifacts)
    services.start_mlflow(cfg.mlflow_port, cfg.root / "mlflow" / "mlflow.db", artifacts, env,
                          cfg.logs_dir / "mlflow.log", record=record)
    if migrate is None:
        return
    code = migrate.popen.wait(timeout=600)
    if code != 0:
        raise StackError(f"`airflow db migrate` failed with code {code}; log {migrate.log_path}:\n"
                         f"{services.tail(migrate.log_path)}")
    procs: dict[str, services.Process] = {}
    for component in AIRFLOW_COMPONENTS:
        argv = [services.bin_path("airflow"), component]
        proc = _spawn(cfg, component, argv, env, cfg.airflow_url + airflow_api.HEALTH_PATH)
        record(proc)
        procs[component] = proc
    dags = expected_dags(cfg)
    log.info("starting Airflow (%s); waiting for the scheduler and DAGs %s", cfg.airflow_url, dags)
    airflow_api.wait_until_ready(cfg, procs, dags)


def _print_new_credentials(cfg: StackConfig, secret: Mapping[str, str], created: list[str], out: Printer) -> None:
    """Show freshly generated credentials once; afterwards they are only in ``<root>/secrets``."""
    lines = ["", "Generated credentials (shown only now; kept 0600 in "
             f"{cfg.secrets_dir}, and in {cfg.env_file}):"]
    if cfg.passwords_file.name in created and cfg.with_airflow:
        lines.append(f"  Airflow UI   user {ADMIN_USER}  password {admin_password(cfg)}")
    if "s3_access_key" in created or "s3_secret_key" in created:
        lines.append(f"  S3           access key {secret['s3_access_key']}  secret key {secret['s3_secret_key']}")
    out("\n".join(lines))


def summary_lines(cfg: StackConfig, state: Mapping[str, Any] | None = None) -> str:
    """Where to reach the stack and where its credentials are (no secret values)."""
    lines = ["", "Stack is up:" if state else "Stack:"]
    if cfg.with_airflow:
        lines.append(f"  Airflow UI/API  {cfg.airflow_url}   (user {ADMIN_USER}; password in {cfg.passwords_file})")
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
    running after the recorded groups were stopped; raises :class:`StackError` naming any that
    could not be ended."""
    state = read_state(cfg)
    recorded: dict[str, Any] = state.get("processes", {})
    order = [n for n in STOP_ORDER if n in recorded] + [n for n in recorded if n not in STOP_ORDER]
    sessions = [int(p["pid"]) for p in recorded.values() if processes.is_running(p)]
    before = set(processes.find_stack_processes(cfg.root, sessions))
    stopped = []
    for name in order:
        entry = recorded[name]
        if processes.is_running(entry):
            services.stop_process_group(int(entry["pid"]), timeout)
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

