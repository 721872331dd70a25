"""MLflow at the edge: the only module that builds an MLflow client or sets the tracking URI.

Run bookkeeping for the training DAG: one run per DAG run, resumed by every task. The first task
calls :func:`start_or_resume_run` with the Airflow dag id and run id; it returns the MLflow run
id, which travels to the other tasks through XCom. A retried or re-run task calls it again and
gets the *same* run (found by its ``airflow.dag_run_id`` tag), so retries never scatter a
training over several runs. Everything logs into a run **by id** (never through MLflow's global
"active run", which a worker may share between tasks): :func:`log_model` too, through
``mlflow.models.Model.log(run_id=...)``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines.config import Settings

log = logging.getLogger(__name__)

TAG_DAG_ID = "airflow.dag_id"
TAG_DAG_RUN_ID = "airflow.dag_run_id"
TAG_LOGICAL_DATE = "airflow.logical_date"
TAG_CODE_VERSION = "code_version"
TAG_DATA_START = "data.start"
TAG_DATA_END = "data.end"
TAG_VALIDATION = "validation.summary"
MAX_TAG_CHARS = 5000


class TrackingUnavailable(RuntimeError):
    """The MLflow server did not answer within the configured timeout and retries."""


def _bound_requests(settings: Settings) -> None:
    """Bound every MLflow request of this process (MLflow reads these at each request): a down
    server fails a task in about timeout x (retries + 1) + backoff, not after MLflow's default of
    7 retries with up to minutes of backoff."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(settings.mlflow_timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.mlflow_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0"


_UNREACHABLE = ("Max retries exceeded", "Connection refused", "ConnectionError", "RemoteDisconnected",
                "Connection aborted", "timed out")  # "timed out" covers urllib3's "Read timed out"


@contextlib.contextmanager
def reachable(settings: Settings, action: str) -> Iterator[None]:
    """Turn "MLflow did not answer" during ``action`` into :class:`TrackingUnavailable` naming the
    server, the time spent and the limits (instead of a page of urllib3 retries)."""
    started = time.monotonic()
    try:
        yield
    except Exception as exc:
        import requests
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException | requests.exceptions.RequestException | OSError) or not any(
                marker in str(exc) for marker in _UNREACHABLE):
            raise
        raise TrackingUnavailable(
            f"MLflow at {settings.mlflow_tracking_uri} did not answer while {action} (gave up after "
            f"{time.monotonic() - started:.0f} s: {settings.mlflow_retries} retries, {settings.mlflow_timeout_s} s "
            f"per request; IM_MLFLOW_RETRIES / IM_MLFLOW_TIMEOUT_S). The step is safe to repeat: run it again "
            f"once MLflow is back (Airflow retries the task)") from exc


def client(settings: Settings) -> Any:
    """An :class:`mlflow.MlflowClient` for the configured tracking (and registry) server."""
    from mlflow import MlflowClient  # mlflow takes seconds to import: only when tracking is used

    _bound_requests(settings)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def configure(settings: Settings) -> None:
    """Point MLflow's module-level API (model logging, loading, registration) at the configured
    server. Idempotent; called by the functions here that need it, never by stage code."""
    import mlflow

    _bound_requests(settings)
    # MLflow draws a tqdm bar for every download: in a task log or a terminal that is one line per
    # file, rewritten with carriage returns. A user who wants it sets the variable to true.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if mlflow.get_tracking_uri() != settings.mlflow_tracking_uri:
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)


def load_pyfunc(settings: Settings, model_uri: str, *, environment_warnings: bool = True) -> Any:
    """Load a pyfunc model (``runs:/...``, ``models:/name/version``, a local folder) from the
    configured server. ``environment_warnings=False`` skips MLflow's check of the model's
    requirements and Python version against this environment (it scans every installed package)."""
    import mlflow.pyfunc

    configure(settings)
    return mlflow.pyfunc.load_model(model_uri, suppress_warnings=not environment_warnings)


def log_model(settings: Settings, run_id: str, flavor: Any, *, name: str, **kwargs: Any) -> str:
    """Log a model of ``flavor`` (e.g. ``mlflow.pyfunc``) as ``name`` into run ``run_id`` by id (no
    active run), so ``runs:/<run_id>/<name>`` finds it; ``kwargs`` go to the flavor's ``save_model``.
    Returns the logged model's URI (``models:/<model id>``)."""
    from mlflow.models import Model

    configure(settings)
    mlflow_client = client(settings)
    run = mlflow_client.get_run(run_id)
    # Without an active run, Model.log creates the logged model in the *default* experiment, where
    # ``runs:/<run>/<name>`` (a search in the run's experiment) cannot find it: create it in the
    # run's experiment first and log into it.
    logged = mlflow_client.create_logged_model(
        experiment_id=run.info.experiment_id, name=name, source_run_id=run_id,
        params={key: str(value) for key, value in run.data.params.items()})
    info = Model.log(artifact_path=None, flavor=flavor, run_id=run_id, name=name, model_id=logged.model_id,
                     **kwargs)
    return str(info.model_uri)


def register_model(settings: Settings, model_uri: str, tags: Mapping[str, str]) -> Any:
    """A new version of ``settings.model_name`` from ``model_uri``, with ``tags``."""
    import mlflow

    configure(settings)
    return mlflow.register_model(model_uri, settings.model_name, tags=dict(tags))


def code_version(settings: Settings) -> str:
    """``settings.code_version`` if set (CI and images set ``IM_CODE_VERSION``), else the git commit
    of this checkout (with ``-dirty`` when it has changes), else the package version."""
    if settings.code_version:
        return settings.code_version
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from pipelines import __version__

        return __version__


def ensure_experiment(settings: Settings) -> str:
    """The id of ``settings.mlflow_experiment``, created when missing."""
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(experiment.experiment_id)
        return str(experiment.experiment_id)
    try:
        return str(mlflow_client.create_experiment(settings.mlflow_experiment))
    except Exception:  # another worker created it at the same moment
        experiment = mlflow_client.get_experiment_by_name(settings.mlflow_experiment)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def _iso(value: dt.date | dt.datetime | str | None) -> str:
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, dt.date | dt.datetime) else str(value)


def find_run(settings: Settings, *, dag_id: str, dag_run_id: str) -> str | None:
    """The run id tagged with this Airflow dag id and run id, or None."""
    experiment_id = ensure_experiment(settings)
    escaped_run = dag_run_id.replace("'", "\\'")
    escaped_dag = dag_id.replace("'", "\\'")
    runs = client(settings).search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_DAG_RUN_ID}` = '{escaped_run}' and tags.`{TAG_DAG_ID}` = '{escaped_dag}'",
        order_by=["attributes.start_time ASC"], max_results=5)
    if not runs:
        return None
    if len(runs) > 1:
        log.warning("%d MLflow runs carry dag_run_id %s; resuming the oldest, %s", len(runs), dag_run_id,
                    runs[0].info.run_id)
    return str(runs[0].info.run_id)


def start_or_resume_run(settings: Settings, *, dag_id: str, dag_run_id: str,
                        logical_date: dt.date | dt.datetime | str | None,
                        data_start: dt.date | str | None, data_end: dt.date | str | None) -> str:
    """The MLflow run id of this Airflow DAG run: found by tags when it exists, else created.

    The run is tagged with the dag id, run id, logical date, code version and data window, and
    set RUNNING (a retry after a failure resumes it). Returns the run id (a string for XCom).
    """
    mlflow_client = client(settings)
    tags = {
        TAG_DAG_ID: dag_id,
        TAG_DAG_RUN_ID: dag_run_id,
        TAG_LOGICAL_DATE: _iso(logical_date),
        TAG_CODE_VERSION: code_version(settings),
        TAG_DATA_START: _iso(data_start),
        TAG_DATA_END: _iso(data_end),
    }
    run_id = find_run(settings, dag_id=dag_id, dag_run_id=dag_run_id)
    if run_id is None:
        experiment_id = ensure_experiment(settings)
        run = mlflow_client.create_run(experiment_id, tags=tags, run_name=f"{dag_id}:{dag_run_id}"[:250])
        run_id = str(run.info.run_id)
        log.info("started MLflow run %s for %s / %s", run_id, dag_id, dag_run_id)
    else:
        for key, value in tags.items():
            mlflow_client.set_tag(run_id, key, value)
        if mlflow_client.get_run(run_id).info.status != "RUNNING":
            mlflow_client.update_run(run_id, status="RUNNING")
        log.info("resumed MLflow run %s for %s / %s", run_id, dag_id, dag_run_id)
    return run_id


def first_line(exc: Exception) -> str:
    """The first line of an MLflow error (its text goes on with the server's whole JSON answer)."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def run_exists(settings: Settings, run_id: str) -> None:
    """Nothing when run ``run_id`` can be read on the tracking server; ValueError in one line when
    it cannot (an unknown id answers 403 or 404 there)."""
    from mlflow.exceptions import MlflowException

    try:
        client(settings).get_run(run_id)
    except MlflowException as exc:
        raise ValueError(f"MLflow run {run_id!r} cannot be read at {settings.mlflow_tracking_uri} "
                         f"(an unknown run id?): {first_line(exc)}") from exc


def finish_run(settings: Settings, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run FINISHED (or FAILED/KILLED): the last task of the DAG calls it."""
    client(settings).set_terminated(run_id, status=status)


def log_metrics(settings: Settings, run_id: str, metrics: Mapping[str, float], *, step: int = 0) -> None:
    """Log many metrics in one call (one timestamp)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client(settings).log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in sorted(metrics.items())])


def log_params(settings: Settings, run_id: str, params: Mapping[str, Any]) -> None:
    """Log many params in one call (values as strings)."""
    from mlflow.entities import Param

    client(settings).log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])


def log_validation_summary(settings: Settings, run_id: str, summary: dict[str, Any]) -> None:
    """Record the data-validation summary on the run: a compact tag plus the full JSON artifact."""
    text = json.dumps(summary, sort_keys=True, default=str)
    mlflow_client = client(settings)
    mlflow_client.set_tag(run_id, TAG_VALIDATION, text if len(text) <= MAX_TAG_CHARS else text[:MAX_TAG_CHARS - 3] + "...")
    mlflow_client.log_dict(run_id, summary, "validation/summary.json")


def log_dataset_input(settings: Settings, run_id: str, *, source_uri: str, name: str, digest: str | None = None,
                      context: str = "training", profile: dict[str, Any] | None = None) -> None:
    """Record a dataset (an s3:// URI of the encoded examples) as an MLflow dataset input of the run.

    ``digest`` identifies the content (e.g. a hash of the example files); ``profile`` holds small
    numbers shown in the UI (rows, users, window). Logging the same dataset twice is harmless.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    source = resolve_dataset_source(source_uri)
    dataset = MetaDataset(source=source, name=name, digest=digest)
    entity = dataset._to_mlflow_entity()
    if profile:
        entity = type(entity)(name=entity.name, digest=entity.digest, source_type=entity.source_type,
                              source=entity.source, schema=entity.schema,
                              profile=json.dumps(profile, sort_keys=True, default=str))
    client(settings).log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution``; ``tensorflow-cpu`` also matches ``tensorflow``."""
    # A GPU or macOS environment installs TensorFlow as "tensorflow": pin tensorflow-cpu to its version.
    for name in dict.fromkeys((distribution, distribution.removesuffix("-cpu"))):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    raise metadata.PackageNotFoundError(distribution)


def requirement_mismatches(model_dir: Path) -> list[str]:
    """The pins of a logged model's ``requirements.txt`` that this environment does not meet, one
    line each (what MLflow's load warns about, without its scan of every installed package)."""
    path = model_dir / "requirements.txt"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        name, pinned, wanted = (part.strip() for part in line.split("#", 1)[0].partition("=="))
        if not pinned or not name or name.startswith("-"):
            continue
        try:
            installed = installed_version(name)
        except metadata.PackageNotFoundError:
            out.append(f"the model was logged with {name}=={wanted}, which is not installed here")
            continue
        if installed != wanted:
            out.append(f"the model was logged with {name}=={wanted}, {installed} is installed here")
    return out
