"""Task bodies of the training DAG (``interest_migration_training``), one function per task.

The tasks pass a small *run* dict (:func:`start_training`: the MLflow run id, the data window and
the report id). Every function takes the settings first and returns a small JSON-able dict for
XCom; the data stays in object storage. The model stage (TensorFlow) is imported only by the tasks
that train or evaluate, so the data tasks of a worker do not pay for it.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pipelines.config import Settings
from pipelines.data import preprocess, validation
from pipelines.data.events import MissingInputError
from pipelines.platform import layout, storage, tracking
from pipelines.platform.dates import date_range, parse_date, to_date

log = logging.getLogger(__name__)


def resolve_window(settings: Settings, data_start: str | None, data_end: str | None) -> tuple[dt.date, dt.date]:
    """The training window: given bounds, else the first/last landed raw partition.

    Raises :class:`MissingInputError` when nothing has been landed in the window.
    """
    start = parse_date(data_start, "data_start")
    end = parse_date(data_end, "data_end")
    landed = [d for d in storage.list_partitions(settings, layout.RAW)
              if (start is None or d >= start) and (end is None or d <= end)]
    if not landed:
        raise MissingInputError(
            f"no raw partitions under s3://{settings.bucket}/{layout.RAW}/ in window "
            f"[{start or 'first'}, {end or 'last'}]; land data first: python -m pipelines land --source ...")
    return (start or landed[0], end or landed[-1])


def start_training(settings: Settings, *, dag_id: str, dag_run_id: str, logical_date: Any,
                   data_start: str | None, data_end: str | None) -> dict[str, Any]:
    """Resolve the data window and open (or resume) this DAG run's MLflow run; returns the *run*
    dict the other training tasks take: mlflow_run_id, data_start, data_end, report_id."""
    start, end = resolve_window(settings, data_start, data_end)
    run_id = tracking.start_or_resume_run(settings, dag_id=dag_id, dag_run_id=dag_run_id,
                                          logical_date=logical_date, data_start=start, data_end=end)
    return {"mlflow_run_id": run_id, "data_start": start.isoformat(), "data_end": end.isoformat(),
            "report_id": dag_run_id}


def _run_window(run: dict[str, Any]) -> tuple[dt.date, dt.date]:
    return to_date(run["data_start"], "data_start"), to_date(run["data_end"], "data_end")


def _landed_days(settings: Settings, start: dt.date, end: dt.date) -> list[dt.date]:
    raw_dates = set(storage.list_partitions(settings, layout.RAW))
    return [d for d in date_range(start, end) if d in raw_dates]


def validate_window(settings: Settings, start: dt.date, end: dt.date, *, report_id: str,
                    mlflow_run_id: str | None = None) -> dict[str, Any]:
    """Validate every landed raw partition in [start, end] in one run (the Great Expectations suites
    run once over all of them); returns totals, the days and the Data Docs index.

    Every partition is validated and the numbers (with the Data Docs link) are logged before a
    batch-level failure of any partition raises (the task fails with the validator's message).
    """
    days = _landed_days(settings, start, end)
    if not days:
        raise MissingInputError(f"no raw partitions in [{start}, {end}] under s3://{settings.bucket}/{layout.RAW}/")
    run = validation.validate_partitions(settings, days, report_id=report_id)
    results = [r.to_dict() for r in run.results]
    log.info("validated %d partitions (%d failed); Data Docs %s", len(days), len(run.errors),
             storage.uri(settings, run.data_docs_key) if run.data_docs_key else "none")
    summary = {"partitions": [d.isoformat() for d in days], "totals": _totals(results),
               "failed": {d.isoformat(): msg for d, msg in sorted(run.errors.items())},
               "data_docs": storage.uri(settings, run.data_docs_key) if run.data_docs_key else None}
    if mlflow_run_id:
        validation.log_to_mlflow(results, mlflow_run_id, settings, data_docs_key=run.data_docs_key)
        tracking.log_validation_summary(settings, mlflow_run_id, {**summary, "per_partition": results})
    run.raise_for_errors()
    return summary


def preprocess_window(settings: Settings, start: dt.date, end: dt.date) -> dict[str, Any]:
    """Preprocess every landed raw partition in [start, end] into clean/; returns totals. A partition
    that cannot be preprocessed fails the task after the others are done."""
    days = _landed_days(settings, start, end)
    run = preprocess.preprocess_partitions(settings, days)
    results = [r.to_dict() for r in run.results]
    if run.errors:
        shown = "; ".join(run.errors[d] for d in sorted(run.errors)[:3])
        raise preprocess.PreprocessError(f"{len(run.errors)} partition(s) could not be preprocessed: {shown}")
    return {"partitions": [d.isoformat() for d in days], "totals": _totals(results)}


def validate_training_data(settings: Settings, run: dict[str, Any]) -> dict[str, Any]:
    """Task ``validate``: the run's window, with the summary logged to its MLflow run."""
    start, end = _run_window(run)
    return validate_window(settings, start, end, report_id=run["report_id"], mlflow_run_id=run["mlflow_run_id"])


def preprocess_training_data(settings: Settings, run: dict[str, Any]) -> dict[str, Any]:
    """Task ``preprocess``: clean partitions of the run's window."""
    return preprocess_window(settings, *_run_window(run))


def encode_training_data(settings: Settings, run: dict[str, Any]) -> dict[str, Any]:
    """Task ``encode``: examples of the run's window, recorded as the run's dataset input."""
    from pipelines.features import encoding

    start, end = _run_window(run)
    mlflow_run_id = run["mlflow_run_id"]
    result = encoding.encode_step(settings, start, end, mlflow_run_id=mlflow_run_id)
    tracking.log_dataset_input(
        settings, mlflow_run_id, source_uri=result["dataset_uri"], name=f"examples {start}..{end}",
        digest=result["dataset_uri"].rstrip("/").rsplit("/", 1)[-1][:36],
        profile={"window": f"{start}..{end}", "examples": result.get("examples"),
                 "categories": result.get("categories")})
    return result


def train_model(settings: Settings, run: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    """Task ``train``: fit on the encoded dataset and log the pyfunc model to the run."""
    from pipelines.model import train

    return train.train_step(settings, dataset["dataset_uri"], mlflow_run_id=run["mlflow_run_id"])


def evaluate_model(settings: Settings, run: dict[str, Any], dataset: dict[str, Any],
                   model: dict[str, Any]) -> dict[str, Any]:
    """Task ``evaluate``: the model and every baseline on the held-out as-of times."""
    from pipelines.model import evaluate

    return evaluate.evaluate_step(settings, dataset["dataset_uri"], model["model_uri"],
                                  mlflow_run_id=run["mlflow_run_id"])


def register_and_close(settings: Settings, run: dict[str, Any], dataset: dict[str, Any],
                       model: dict[str, Any]) -> dict[str, Any]:
    """Task ``register``: run the registry gate, then mark the MLflow run FINISHED (the last task)."""
    from pipelines.model import registry

    decision = registry.register_step(settings, mlflow_run_id=run["mlflow_run_id"], model_uri=model["model_uri"],
                                      dataset_uri=dataset["dataset_uri"])
    tracking.finish_run(settings, run["mlflow_run_id"])
    return decision


def run_training(settings: Settings, *, data_start: str | None, data_end: str | None, run_name: str,
                 progress: Any = log.info) -> dict[str, Any]:
    """The training DAG's tasks in this process, in order (``python -m pipelines training``): one
    MLflow run named by ``run_name`` (a rerun with the same name resumes it), the gate at the end.
    Returns every task's result by task id."""
    run = start_training(settings, dag_id="cli", dag_run_id=run_name, logical_date=None,
                         data_start=data_start, data_end=data_end)
    progress(f"MLflow run {run['mlflow_run_id']} for {run['data_start']}..{run['data_end']}")
    results: dict[str, Any] = {"start_run": run}
    try:
        results["validate"] = validate_training_data(settings, run)
        progress(f"validate: {results['validate']['totals']}")
        results["preprocess"] = preprocess_training_data(settings, run)
        progress(f"preprocess: {results['preprocess']['totals']}")
        results["encode"] = encode_training_data(settings, run)
        progress(f"encode: {results['encode']['examples']} examples in {results['encode']['dataset_uri']}")
        results["train"] = train_model(settings, run, results["encode"])
        progress(f"train: {results['train']['model_uri']}")
        results["evaluate"] = evaluate_model(settings, run, results["encode"], results["train"])
        progress("evaluate: done")
        results["register"] = register_and_close(settings, run, results["encode"], results["train"])
    except BaseException:
        tracking.finish_run(settings, run["mlflow_run_id"], status="FAILED")
        raise
    return results


def _totals(results: list[dict[str, Any]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for result in results:
        for key, value in result.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and (
                    key.startswith(("rows", "duplicates", "quarantined", "dropped")) or key.endswith("_rows")):
                totals[key] = totals.get(key, 0) + value
    return totals
