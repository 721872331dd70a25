"""
### Interest-migration training

**Runs** when triggered (Trigger DAG, optionally with config; `make run`; the CLI
`airflow dags trigger interest_migration_training -c '{"data_start": "...", "data_end": "..."}'`),
on every event of the asset `s3://<bucket>/requests/retraining` (the outcome-monitoring alert, or
a person: Assets -> Create event) and, when `IM_TRAINING_SCHEDULE` is a cron expression (the team
deployment: weekly), on that schedule. Without a config window, `IM_TRAINING_WINDOW_DAYS` = N > 0
trains on the last N landed days up to the run's data interval end; 0 = every landed day.

**Does**: validate -> preprocess -> encode -> train -> evaluate -> register, over the landed raw
partitions in the window `[data_start, data_end]` (empty = every landed day). Every task logs into
**one MLflow run** per DAG run (retries resume it), tagged with this DAG run's ids.

**Produces**: `clean/events/dt=*/` partitions, validation reports under `reports/validation/<run>/`,
quarantined rows under `quarantine/events/dt=*/`, an MLflow run with metrics, comparison table and
plots, and a new version of the registered model `interest_migration` with alias `challenger`;
the version becomes `champion` only when it beats the current champion and the baselines on the
gate metric. The decision and its numbers are written on the model version.

**Alerts** (`IM_NOTIFY_CHANNEL`): a failed run marks its MLflow run FAILED and notifies; a version
the gate keeps out of `champion` notifies too (see docs/operations.md).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task

from pipelines.config import load_settings
from pipelines.ops import callbacks, retraining
from pipelines.ops.options import ops_options

# Light: reads IM_* variables only (a bad value fails the parse with a message naming it).
SETTINGS = load_settings()

DEFAULT_ARGS = {
    "owner": "interest-migration",
    "retries": 1,
    "retry_delay": dt.timedelta(seconds=30),
    "execution_timeout": dt.timedelta(hours=2),
    "on_failure_callback": callbacks.on_training_failure,  # MLflow run FAILED + an alert, once no retry is left
}


@dag(
    dag_id="interest_migration_training",
    schedule=retraining.training_schedule(ops_options(SETTINGS), SETTINGS.bucket),
    start_date=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "data_start": Param("", type="string", description="first event date YYYY-MM-DD (empty: first landed day)"),
        "data_end": Param("", type="string", description="last event date YYYY-MM-DD (empty: last landed day)"),
    },
    tags=["interest-migration", "training"],
    doc_md=__doc__,
)
def interest_migration_training():
    @task
    def start_run() -> dict:
        """Resolve the data window and open (or resume) this DAG run's MLflow run."""
        from pipelines.config import load_settings
        from pipelines.flows import training as flows

        context = get_current_context()
        dag_run = context["dag_run"]
        settings = load_settings()
        window = retraining.training_window(settings, context)  # config window, else the sliding one
        return flows.start_training(
            settings, dag_id=dag_run.dag_id, dag_run_id=dag_run.run_id,
            logical_date=context.get("logical_date") or dag_run.run_after,
            data_start=window["data_start"], data_end=window["data_end"])

    @task
    def validate(run: dict) -> dict:
        """Great Expectations gate: row failures quarantined, batch failures fail this task."""
        from pipelines.config import load_settings
        from pipelines.flows import training as flows

        return flows.validate_training_data(load_settings(), run)

    @task
    def preprocess(run: dict, validated: dict) -> dict:
        """De-duplicate, normalise, set aside crawler-like users; write clean partitions."""
        from pipelines.config import load_settings
        from pipelines.flows import training as flows

        return flows.preprocess_training_data(load_settings(), run)

    @task
    def encode(run: dict, cleaned: dict) -> dict:
        """Vocabularies and (user, as-of) examples, time-split, written to object storage."""
        from pipelines.config import load_settings
        from pipelines.flows import training as flows

        return flows.encode_training_data(load_settings(), run)

    @task
    def train(run: dict, dataset: dict) -> dict:
        """Fit the Keras model with early stopping; log it to the run as a pyfunc model."""
        from pipelines.config import load_settings
        from pipelines.flows import training as flows

        return flows.train_model(load_settings(), run, dataset)

    @task
    def evaluate(run: dict, dataset: dict, model: dict) -> dict:
        """Metrics of the model and every baseline on the held-out as-of times, plots, table."""
        from pipelines.config import load_settings
        from pipelines.flows import training as flows

        return flows.evaluate_model(load_settings(), run, dataset, model)

    @task(on_success_callback=callbacks.on_register_success)
    def register(run: dict, dataset: dict, model: dict, metrics: dict) -> dict:
        """Register the version as challenger; promote to champion only through the gate; close the run."""
        from pipelines.config import load_settings
        from pipelines.flows import training as flows

        return flows.register_and_close(load_settings(), run, dataset, model)

    run = start_run()
    dataset = encode(run, preprocess(run, validate(run)))
    model = train(run, dataset)
    register(run, dataset, model, evaluate(run, dataset, model))


interest_migration_training()
