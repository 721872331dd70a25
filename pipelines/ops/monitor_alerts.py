"""When monitoring says the model has degraded: the daily verdict, the streak, the alert and its callback.

- :func:`judge_day`: a monitored day is *degraded* when the model's ``IM_MONITOR_METRIC`` is more
  than ``IM_MONITOR_MARGIN`` below the best baseline's on the same users and day, or more than the
  margin below the model's own evaluation figure (``model/<metric>`` on the version's training
  run, when it has one).
- :func:`streak`: the last ``IM_MONITOR_CONSECUTIVE_DAYS`` calendar days up to D all monitored,
  all by the same model version and all degraded -> the alert *fires*.
- When it fires the monitoring DAG emits a retraining request (the asset of
  :mod:`pipelines.ops.retraining`) and its ``check`` task fails with :class:`ModelDegraded`; the
  task's failure callback :func:`on_check_failure` sends a ``model_degraded`` alert through the
  configured notifier (:mod:`pipelines.ops.notify`).

Imported when the monitoring DAG is parsed: MLflow and boto3 are imported inside functions only.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from typing import Any

from pipelines.config import Settings, load_settings
from pipelines.ops.notify import Alert, notify
from pipelines.ops.options import ops_options

log = logging.getLogger(__name__)

# evaluation runs log the whole-list hit rate as ``hitrate_at_k`` (pipelines/model/metrics.py)
_EVALUATION_NAMES = {"hit_rate_at_5": "hitrate_at_5"}


class ModelDegraded(RuntimeError):
    """The monitored model has been degraded for IM_MONITOR_CONSECUTIVE_DAYS days in a row."""


def evaluation_metric(settings: Settings, model_name: str, version: str) -> float | None:
    """``model/<IM_MONITOR_METRIC>`` of the training run of ``model_name`` version ``version``
    (None when the version has no run or the run has no such metric)."""
    from pipelines.platform import tracking

    name = "model/" + _EVALUATION_NAMES.get(settings.monitor_metric, settings.monitor_metric)
    try:
        client = tracking.client(settings)
        run_id = client.get_model_version(model_name, version).run_id
        value = client.get_run(run_id).data.metrics.get(name) if run_id else None
    except Exception as exc:  # noqa: BLE001 - a version registered from elsewhere may have no readable run
        log.warning("no evaluation figure for %s v%s (%s): comparing with the baselines only", model_name, version,
                    str(exc)[:200])
        return None
    return None if value is None or not math.isfinite(value) else float(value)


def judge_day(summaries: Mapping[str, Mapping[str, Any]], metric: str, margin: float,
              evaluation: float | None) -> dict[str, Any]:
    """The verdict of one monitored day: ``metric``, ``model``, ``best_baseline`` and its value,
    ``evaluation``, ``margin``, ``degraded`` (bool), ``reasons`` and a one-line ``summary``."""
    model = summaries["model"].get(metric)
    baselines = {name: s.get(metric) for name, s in summaries.items() if name != "model"}
    baselines = {n: v for n, v in baselines.items() if v is not None and math.isfinite(v)}
    best = max(baselines, key=lambda n: baselines[n]) if baselines else None
    reasons = []
    if model is None or not math.isfinite(model):
        summary = f"{metric} undefined for the model (no user with truth): not judged"
    else:
        if best is not None and model < baselines[best] - margin:
            reasons.append(f"{metric} {model:.4f} is below the best baseline {best} {baselines[best]:.4f} "
                           f"by more than {margin}")
        if evaluation is not None and model < evaluation - margin:
            reasons.append(f"{metric} {model:.4f} is below the model's own evaluation {evaluation:.4f} "
                           f"by more than {margin}")
        summary = "; ".join(reasons) if reasons else (
            f"ok: {metric} {model:.4f}" + (f", best baseline {best} {baselines[best]:.4f}" if best else "")
            + (f", evaluation {evaluation:.4f}" if evaluation is not None else ""))
    return {"metric": metric, "model": model if model is None or math.isfinite(model) else None,
            "best_baseline": best, "best_baseline_value": baselines.get(best) if best else None,
            "evaluation": evaluation, "margin": margin, "degraded": bool(reasons), "reasons": reasons,
            "summary": summary}


def streak(settings: Settings, day: dt.date, version: str) -> dict[str, Any]:
    """Whether the last ``IM_MONITOR_CONSECUTIVE_DAYS`` days up to ``day`` were all degraded under
    model ``version`` (a missing day, another version or a day not degraded breaks the run):
    ``{"fired", "days", "needed", "degraded_days", "reasons", "model_version", "as_of_date"}``."""
    from pipelines.platform import layout, storage

    needed = settings.monitor_consecutive_days
    degraded, reasons = [], []
    for back in range(needed):
        when = day - dt.timedelta(days=back)
        try:
            report = storage.get_json(settings, layout.monitoring_report_key(when, "metrics"))
        except storage.StorageError:
            break
        if str(report.get("model_version")) != str(version) or not report.get("check", {}).get("degraded"):
            break
        degraded.append(when.isoformat())
        reasons.append(f"{when}: {report['check']['summary']}")
    return {"fired": len(degraded) >= needed, "needed": needed, "degraded_days": sorted(degraded),
            "reasons": list(reversed(reasons)), "model_version": str(version), "as_of_date": day.isoformat()}


def degraded_message(model_name: str, state: Mapping[str, Any]) -> str:
    """The check task's error: which version, how many days, why."""
    return (f"model {model_name} v{state['model_version']} degraded for {len(state['degraded_days'])} consecutive "
            f"monitored days up to {state['as_of_date']} (IM_MONITOR_CONSECUTIVE_DAYS={state['needed']}): "
            + " | ".join(state["reasons"]) + "; a retraining request was emitted")


def raise_if_fired(settings: Settings, state: Mapping[str, Any]) -> dict[str, Any]:
    """The ``check`` task: raise :class:`ModelDegraded` when the streak fired, else return it."""
    if state.get("fired"):
        raise ModelDegraded(degraded_message(settings.model_name, state))
    return dict(state)


def degraded_alert(context: Mapping[str, Any]) -> Alert | None:
    """The ``model_degraded`` alert of a failed check task (None when it failed for another reason)."""
    error = context.get("exception")
    if not isinstance(error, ModelDegraded):
        return None
    dag_run = context.get("dag_run")
    ti = context.get("ti") or context.get("task_instance")
    return Alert("model_degraded", "the model has degraded: retraining requested", {
        "why": str(error)[:2000],
        "dag": str(getattr(dag_run, "dag_id", "") or ""), "run": str(context.get("run_id") or ""),
        "log": str(getattr(ti, "log_url", "") or "")})


def on_check_failure(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` of the monitoring DAG's tasks: ``model_degraded`` for the check, a
    ``failure`` alert for anything else."""
    from pipelines.ops.callbacks import failure_alert

    notify(ops_options(load_settings()), degraded_alert(context) or failure_alert(context))
