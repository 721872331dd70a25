"""A small client of the stack's Airflow REST API v2: login, readiness, runs, backfills, task logs.

JSON in, JSON out over ``urllib`` (no extra dependency); the admin token comes from
``POST /auth/token`` with the generated password and is refreshed once on HTTP 401.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.devstack import services
from pipelines.devstack.config import Printer, StackConfig, StackError
from pipelines.devstack.credentials import ADMIN_USER, admin_password

log = logging.getLogger(__name__)

TERMINAL_STATES = ("success", "failed")
HEALTH_PATH = "/api/v2/monitor/health"


class ApiError(StackError):
    """Airflow answered an API call with an HTTP error; ``code`` is its status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def http_json(url: str, *, method: str = "GET", body: Any = None, token: str | None = None,
              timeout: float = 30.0) -> Any:
    """Send ``body`` as JSON to ``url`` and return the decoded answer (None when empty).
    Raises :class:`urllib.error.HTTPError` / ``URLError`` as urllib does."""
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


def airflow_token(cfg: StackConfig) -> str:
    """A JWT for the admin user from ``POST /auth/token``."""
    body = {"username": ADMIN_USER, "password": admin_password(cfg)}
    try:
        answer = http_json(f"{cfg.airflow_url}/auth/token", method="POST", body=body)
    except urllib.error.HTTPError as exc:
        raise StackError(f"Airflow at {cfg.airflow_url} refused the admin login (HTTP {exc.code}); is the "
                         f"password file {cfg.passwords_file} the one it started with?") from exc
    return str(answer["access_token"])


def run_path(dag_id: str, run_id: str) -> str:
    """``/dags/<dag>/dagRuns/<run>`` with the run id quoted (run ids hold ``:`` and ``+``)."""
    return f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"


class AirflowApi:
    """A small client of Airflow's REST API v2 (JSON in, JSON out, admin token refreshed on 401)."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.base = f"{cfg.airflow_url}/api/v2"
        self._token: str | None = None

    def call(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        """``method`` on ``/api/v2<path>``; raises :class:`ApiError` with the status and the answer."""
        url = self.base + path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        for attempt in (1, 2):
            self._token = self._token or airflow_token(self.cfg)
            try:
                return http_json(url, method=method, body=body, token=self._token)
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 1:
                    self._token = None
                    continue
                detail = exc.read().decode(errors="replace")[:500]
                raise ApiError(exc.code, f"{method} {path}: HTTP {exc.code} {detail}") from exc
        raise AssertionError("unreachable")

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query or None)


def wait_until_ready(cfg: StackConfig, procs: Mapping[str, services.Process], expect_dags: list[str],
                     timeout: float = 300.0) -> None:
    """Wait until the API answers, scheduler/dag-processor/triggerer report healthy and the
    expected DAGs are parsed (their import errors, if any, end the wait with the error). Raises
    :class:`StackError` when a component exits or the time runs out."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    token: str | None = None
    while time.monotonic() < deadline:
        for proc in procs.values():
            if proc.popen.poll() is not None:
                raise StackError(f"Airflow {proc.name} exited with code {proc.popen.returncode} during start; "
                                 f"log {proc.log_path}:\n{services.tail(proc.log_path)}")
        try:
            health = http_json(cfg.airflow_url + HEALTH_PATH, timeout=5)
            unhealthy = [part for part in ("metadatabase", "scheduler", "dag_processor", "triggerer")
                         if (health.get(part) or {}).get("status") != "healthy"]
            if unhealthy:
                last = f"not yet healthy: {', '.join(unhealthy)}"
            else:
                token = token or airflow_token(cfg)
                listed = http_json(f"{cfg.airflow_url}/api/v2/dags?limit=100", token=token)
                have = {d["dag_id"] for d in listed.get("dags", [])}
                missing = [d for d in expect_dags if d not in have]
                if not missing:
                    return
                errors = http_json(f"{cfg.airflow_url}/api/v2/importErrors?limit=100", token=token)
                for item in errors.get("import_errors", []):
                    if any(Path(item.get("filename", "")).stem == d for d in missing):
                        raise StackError(f"DAG file {item['filename']} does not import:\n{item.get('stack_trace')}")
                last = f"DAGs not parsed yet: {', '.join(missing)}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(2)
    raise StackError(f"Airflow at {cfg.airflow_url} was not ready within {timeout:.0f}s ({last}); "
                     f"logs in {cfg.logs_dir}")


def wait_workers_ready(procs: Mapping[str, services.Process], timeout: float = 180.0) -> None:
    """Wait until every Celery worker in ``procs`` logged ``<name>@<host> ready.`` (connected to
    the broker and consuming). Raises :class:`StackError` when one exits or the time runs out."""
    deadline = time.monotonic() + timeout
    waiting = dict(procs)
    while waiting:
        for name, proc in list(waiting.items()):
            if proc.popen.poll() is not None:
                raise StackError(f"Celery {name} exited with code {proc.popen.returncode} during start; "
                                 f"log {proc.log_path}:\n{services.tail(proc.log_path)}")
            text = proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""
            if f"{name}@" in text and " ready." in text:
                del waiting[name]
        if waiting and time.monotonic() > deadline:
            raise StackError(f"Celery worker(s) {', '.join(waiting)} not ready within {timeout:.0f}s; logs in "
                             f"{next(iter(waiting.values())).log_path.parent}")
        if waiting:
            time.sleep(1)


def ensure_unpaused(api: AirflowApi, dag_id: str) -> None:
    dag = api.get(f"/dags/{dag_id}")
    if dag.get("is_paused"):
        log.info("unpausing %s", dag_id)
        api.call("PATCH", f"/dags/{dag_id}", body={"is_paused": False})


def task_states(api: AirflowApi, dag_id: str, run_id: str) -> dict[str, str]:
    """Task (``task[map_index]`` for mapped ones) -> state, in the order the tasks started."""
    answer = api.get(f"{run_path(dag_id, run_id)}/taskInstances", limit=500)
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
            run = api.get(run_path(dag_id, run_id))
            for task, state in task_states(api, dag_id, run_id).items():
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


def create_backfill(api: AirflowApi, body: Mapping[str, Any], attempts: int = 10) -> dict[str, Any]:
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


def wait_backfill(api: AirflowApi, backfill_id: int, timeout: float) -> None:
    """Wait until backfill ``backfill_id`` is completed; raises :class:`StackError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while api.get(f"/backfills/{backfill_id}").get("completed_at") is None:
        if time.monotonic() > deadline:
            raise StackError(f"backfill {backfill_id} not completed after {timeout:.0f}s")
        time.sleep(5)


def task_log_tail(cfg: StackConfig, dag_id: str, run_id: str, task_id: str, lines: int = 30) -> str:
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
    for task, state in sorted(task_states(api, dag_id, run_id).items()):
        if state == "failed":
            tail = task_log_tail(cfg, dag_id, run_id, task.split("[")[0])
            out(f"FAILED: {dag_id} {run_id} task {task}; log tail from {tail}")
