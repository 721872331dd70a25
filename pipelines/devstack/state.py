"""``<root>/stack.json``: what the running stack was started with and which processes it started.

``up`` writes it (each process as soon as it is spawned, so a failed start can still be stopped),
``down`` reads it to know what to stop and deletes it, ``status`` reads it. It also records the
ports, bucket and repo, so commands talk to the stack that runs even when the ``IM_STACK_*``
variables changed since ``up`` (:func:`running_config`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.devstack import services
from pipelines.devstack.config import StackConfig, StackError
from pipelines.devstack.processes import start_time


def read_state(cfg: StackConfig) -> dict[str, Any]:
    """The recorded state, or {} when there is none. Raises :class:`StackError` when it is not JSON."""
    try:
        return dict(json.loads(cfg.state_file.read_text()))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise StackError(f"{cfg.state_file} is not valid JSON ({exc}); delete it after `ps` shows "
                         f"no stack process") from exc


def write_state(cfg: StackConfig, state: Mapping[str, Any]) -> None:
    """Replace ``stack.json`` atomically with ``state``."""
    cfg.state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg.state_file.with_name("stack.json.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, cfg.state_file)


def record_process(state: dict[str, Any], cfg: StackConfig, proc: services.Process) -> None:
    """Add ``proc`` (pid, start time, log, health URL) to ``state`` and write it."""
    state.setdefault("processes", {})[proc.name] = {
        "pid": proc.popen.pid, "start_time": start_time(proc.popen.pid), "log": str(proc.log_path),
        "health_url": proc.health_url}
    write_state(cfg, state)


def config_record(cfg: StackConfig) -> dict[str, Any]:
    """What :func:`running_config` needs to rebuild ``cfg`` (everything but the root)."""
    return {"s3_port": cfg.s3_port, "mlflow_port": cfg.mlflow_port, "airflow_port": cfg.airflow_port,
            "internal_ports": dict(cfg.internal_ports), "bucket": cfg.bucket, "with_airflow": cfg.with_airflow,
            "use_schedule": cfg.use_schedule, "repo": str(cfg.repo), "team": cfg.team, "workers": cfg.workers,
            "worker_concurrency": cfg.worker_concurrency, "online_port": cfg.online_port}


def running_config(cfg: StackConfig) -> StackConfig:
    """``cfg`` with the ports, bucket and repo the stack in ``cfg.root`` was started with (from
    ``stack.json``), so `status`, `env` and `run` talk to the stack that runs even when the
    IM_STACK_* variables changed since `up`. ``cfg`` itself when nothing is recorded."""
    try:
        record = read_state(cfg).get("config")
    except StackError:
        return cfg
    if not record:
        return cfg
    return dataclasses.replace(cfg, s3_port=record["s3_port"], mlflow_port=record["mlflow_port"],
                               airflow_port=record["airflow_port"], internal_ports=record["internal_ports"],
                               bucket=record["bucket"], with_airflow=record["with_airflow"],
                               use_schedule=record["use_schedule"], repo=Path(record["repo"]),
                               team=record.get("team", False), workers=record.get("workers", cfg.workers),
                               worker_concurrency=record.get("worker_concurrency", cfg.worker_concurrency),
                               online_port=record.get("online_port", 0))
