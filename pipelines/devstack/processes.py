"""Find and end the stack's processes by reading ``/proc`` (Linux only).

Every process the stack starts carries ``IM_STACK_ROOT=<root>`` in its environment, and its
children (Airflow's LocalExecutor workers and task runners) inherit it, so :func:`find_stack_processes`
finds them all even when the parent that started them died first. A process is identified by its
pid *and* its kernel start time, so a pid reused by an unrelated process is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipelines.devstack import services
from pipelines.devstack.config import TEAM_FOLDER

MARKER_VAR = "IM_STACK_ROOT"  # set by the stack in its children's environment, never read as a setting


def start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` (clock ticks since boot), or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_running(entry: Mapping[str, Any]) -> bool:
    """Whether the process recorded in ``entry`` (``pid``, ``start_time``) still runs: same pid
    *and* same start time."""
    return start_time(int(entry["pid"])) == entry.get("start_time")


def is_live(pid: int) -> bool:
    """Whether ``pid`` exists and is neither a zombie nor dead."""
    stat = services.proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


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


def names_root(cmdline: bytes, root_text: str) -> bool:
    """Whether ``cmdline`` names a path of the stack in ``root_text``, not one of the team stack
    kept inside it (``<root>/team``: the embedded stack must never stop the team stack's processes)."""
    return root_text.encode() in cmdline.replace(f"{root_text}/{TEAM_FOLDER}".encode(), b"")


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
        stat = services.proc_stat(int(entry.name))
        if stat is None or stat[0] in ("Z", "X"):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if stat[3] in session_ids or marker in environ.split(b"\0") or names_root(cmdline, root_text):
            found.append(int(entry.name))
    return sorted(found)


def describe(pid: int) -> str:
    """The start of ``pid``'s command line, for messages ("?" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return "?"


def kill_all(pids: Iterable[int], timeout: float = 15.0) -> None:
    """SIGTERM ``pids``, then SIGKILL those still there after ``timeout``."""
    targets = {pid: start_time(pid) for pid in pids}
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
        alive = {pid: st for pid, st in alive.items() if st is not None and start_time(pid) == st and is_live(pid)}
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)
