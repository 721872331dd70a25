"""Airflow callbacks of the DAGs: failures, gate refusals and late partitions become alerts.

- :func:`on_training_failure` (``on_failure_callback`` of every training task): marks the DAG
  run's MLflow run FAILED (found by its ``airflow.dag_id`` / ``airflow.dag_run_id`` tags; without
  it the run would stay RUNNING forever) and sends a ``failure`` alert.
- :func:`on_task_failure` (every task of the other DAGs): a ``failure`` alert.
- :func:`on_register_success` (``on_success_callback`` of the training DAG's ``register`` task):
  a ``gate_refused`` alert when the gate kept the new version out of ``champion``.
- :func:`scoring_deadline` builds the scoring DAG's deadline alert ("predictions for D published
  by HH:MM UTC on D+1", ``IM_SCORING_DEADLINE``); when it is missed the triggerer awaits
  :func:`on_scoring_deadline_missed`, which sends a ``late_partition`` alert.

Failure callbacks are task callbacks, called once a task has failed for good (no retry left):
Airflow runs them in the worker, next to the task and with its credentials (the DAG processor,
which runs DAG-level callbacks, holds no MLflow or S3 credentials). Deadline callbacks run in the
triggerer and only need the notifier's settings. Each callback loads the settings itself. This
module is imported when DAG files are parsed, so its top level stays light (MLflow is imported
only on a failure).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from pipelines.config import load_settings
from pipelines.ops.notify import Alert, notify
from pipelines.ops.options import OpsOptions, ops_options

log = logging.getLogger(__name__)

TAG_FAILURE = "airflow.failure"


def _run_identity(context: Mapping[str, Any]) -> tuple[str, str]:
    """(dag id, run id) of a callback context (DAG-level contexts may hold only ``dag`` and ``run_id``)."""
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    dag_id = getattr(dag, "dag_id", None) or getattr(dag_run, "dag_id", None) or "?"
    run_id = context.get("run_id") or getattr(dag_run, "run_id", None) or "?"
    return str(dag_id), str(run_id)


def failure_alert(context: Mapping[str, Any]) -> Alert:
    """The ``failure`` alert of a failure callback context (a task's, or a DAG's with ``reason``)."""
    dag_id, run_id = _run_identity(context)
    ti = context.get("ti") or context.get("task_instance")
    task = str(getattr(ti, "task_id", "") or "")
    index = getattr(ti, "map_index", -1)
    if task and isinstance(index, int) and index >= 0:
        task += f"[{index}]"
    error = context.get("exception")
    return Alert("failure", f"{dag_id} run {run_id} failed" + (f" in task {task}" if task else ""), {
        "dag": dag_id, "run": run_id, "failed task": task,
        "error": f"{type(error).__name__}: {error}"[:1000] if error is not None else str(context.get("reason") or ""),
        "log": str(getattr(ti, "log_url", "") or ""),
    })


def mark_mlflow_run_failed(settings: Any, dag_id: str, run_id: str, reason: str) -> str | None:
    """Set the MLflow run of Airflow run ``run_id`` FAILED (tagged with ``reason``); returns its id,
    or None when that DAG run never opened one."""
    from pipelines.platform import tracking

    mlflow_run_id = tracking.find_run(settings, dag_id=dag_id, dag_run_id=run_id)
    if mlflow_run_id is None:
        log.info("no MLflow run is tagged with %s / %s: nothing to mark failed", dag_id, run_id)
        return None
    tracking.client(settings).set_tag(mlflow_run_id, TAG_FAILURE, reason[:4000] or "failed")
    tracking.finish_run(settings, mlflow_run_id, status="FAILED")
    log.info("marked MLflow run %s of %s / %s FAILED", mlflow_run_id, dag_id, run_id)
    return mlflow_run_id


def on_training_failure(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` of the training tasks: MLflow run FAILED, then a ``failure`` alert."""
    settings = load_settings()
    alert = failure_alert(context)
    dag_id, run_id = _run_identity(context)
    try:
        mlflow_run_id = mark_mlflow_run_failed(settings, dag_id, run_id, alert.text())
    except Exception as exc:  # noqa: BLE001 - the alert below must go out even when MLflow is down
        log.error("could not mark the MLflow run of %s / %s failed: %s", dag_id, run_id, exc)
        mlflow_run_id = f"not marked ({type(exc).__name__}: {str(exc)[:200]})"
    notify(ops_options(settings), Alert(alert.kind, alert.subject,
                                        {**alert.details, "mlflow run": mlflow_run_id or "none"}))


def on_task_failure(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` of the scoring and ingest tasks: a ``failure`` alert."""
    notify(ops_options(load_settings()), failure_alert(context))


def gate_alert(decision: Mapping[str, Any], dag_id: str, run_id: str) -> Alert | None:
    """The ``gate_refused`` alert of a registry decision, or None when the version was promoted."""
    if not decision or decision.get("promoted"):
        return None
    return Alert("gate_refused", f"version {decision.get('model_version')} of {decision.get('model_name')} "
                 "was not promoted to champion", {
                     "reason": str(decision.get("reason", "")),
                     "metric": f"{decision.get('metric')}: challenger {decision.get('challenger')}, champion "
                               f"{decision.get('champion')} (v{decision.get('champion_version')}), best baseline "
                               f"{decision.get('best_baseline')} {decision.get('best_baseline_value')}",
                     "dag": dag_id, "run": run_id})


def on_register_success(context: Mapping[str, Any]) -> None:
    """``on_success_callback`` of the ``register`` task: alert when the gate refused the version."""
    ti = context["ti"]
    decision = ti.xcom_pull(task_ids=ti.task_id) or {}
    dag_id, run_id = _run_identity(context)
    alert = gate_alert(decision, dag_id, run_id)
    if alert is None:
        log.info("gate promoted version %s: no alert", decision.get("model_version"))
        return
    notify(ops_options(load_settings()), alert)


def scoring_deadline(options: OpsOptions) -> Any:
    """The scoring DAG's ``deadline``: a DeadlineAlert firing when day D's run has not finished by
    ``IM_SCORING_DEADLINE`` (HH:MM UTC) on D+1; None when no deadline is set."""
    after = options.deadline_after_day_end
    if after is None:
        return None
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    hours, minutes = after
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
                         interval=dt.timedelta(days=1, hours=hours, minutes=minutes),
                         callback=AsyncCallback(on_scoring_deadline_missed), name="predictions published")


def _instant(value: Any) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def late_partition_alert(context: Mapping[str, Any]) -> Alert | None:
    """The ``late_partition`` alert of a missed deadline, or None when the run was created after its
    deadline had passed (a backfill or a late manual run of an old day is not late news)."""
    dag_run = context.get("dag_run") or {}
    deadline = _instant((context.get("deadline") or {}).get("deadline_time"))
    created = _instant(dag_run.get("queued_at") or dag_run.get("run_after"))
    if deadline is not None and created is not None and created >= deadline:
        return None
    # The deadline is counted from the logical date (DAGRUN_LOGICAL_DATE): name that day.
    day = _instant(dag_run.get("logical_date") or dag_run.get("data_interval_start"))
    return Alert("late_partition", f"predictions for {day.date() if day else '?'} not published by "
                 f"{deadline.isoformat() if deadline else 'the deadline'}", {
                     "dag": str(dag_run.get("dag_id", "")), "run": str(dag_run.get("dag_run_id", "")),
                     "state": str(dag_run.get("state", ""))})


async def on_scoring_deadline_missed(context: Mapping[str, Any], **_: Any) -> None:
    """Deadline callback (runs in the triggerer): a ``late_partition`` alert."""
    alert = late_partition_alert(context)
    if alert is None:
        log.info("deadline passed before run %s was created: no alert", (context.get("dag_run") or {}).get("dag_run_id"))
        return
    await asyncio.to_thread(notify, ops_options(load_settings()), alert)
