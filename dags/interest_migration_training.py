"""
### Interest-migration training

**Triggered** by hand (Trigger DAG, optionally with config), by `make run`, or by the CLI
`airflow dags trigger interest_migration_training -c '{"data_start": "...", "data_end": "..."}'`.

**Does**: validate -> preprocess -> encode -> train -> evaluate -> register, over the landed raw
partitions in the window `[data_start, data_end]` (empty = every landed day). Every task logs into
**one MLflow run** per DAG run (retries resume it), tagged with this DAG run's ids.

**Produces**: `clean/events/dt=*/` partitions, validation reports under `reports/validation/<run>/`,
quarantined rows under `quarantine/events/dt=*/`, an MLflow run with metrics, comparison table and
plots, and a new version of the registered model `interest_migration` with alias `challenger`;
the version becomes `champion` only when it beats the current champion and the baselines on the
gate metric. The decision and its numbers are written on the model version.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task

DEFAULT_ARGS = {
    "owner": "interest-migration",
    "retries": 1,
    "retry_delay": dt.timedelta(seconds=30),
    "execution_timeout": dt.timedelta(hours=2),
}


@dag(
    dag_id="interest_migration_training",
    schedule=None,
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
        from pipelines import flows
        from pipelines.config import load_settings
        from pipelines.platform import tracking

        context = get_current_context()
        settings = load_settings()
        params = context["params"]
        start, end = flows.resolve_window(settings, params.get("data_start"), params.get("data_end"))
        dag_run = context["dag_run"]
        logical = context.get("logical_date") or dag_run.run_after
        run_id = tracking.start_or_resume_run(
            settings, dag_id=dag_run.dag_id, dag_run_id=dag_run.run_id, logical_date=logical,
            data_start=start, data_end=end)
        return {"mlflow_run_id": run_id, "data_start": start.isoformat(), "data_end": end.isoformat(),
                "report_id": dag_run.run_id}

    @task
    def validate(run: dict) -> dict:
        """Great Expectations gate: row failures quarantined, batch failures fail this task."""
        from pipelines import flows
        from pipelines.config import load_settings

        return flows.validate_window(load_settings(), flows.parse_date(run["data_start"], "data_start"),
                                     flows.parse_date(run["data_end"], "data_end"),
                                     report_id=run["report_id"], mlflow_run_id=run["mlflow_run_id"])

    @task
    def preprocess(run: dict, validated: dict) -> dict:
        """De-duplicate, normalise, set aside crawler-like users; write clean partitions."""
        from pipelines import flows
        from pipelines.config import load_settings

        return flows.preprocess_window(load_settings(), flows.parse_date(run["data_start"], "data_start"),
                                       flows.parse_date(run["data_end"], "data_end"))

    @task
    def encode(run: dict, cleaned: dict) -> dict:
        """Vocabularies and (user, as-of) examples, time-split, written to object storage."""
        from pipelines import flows
        from pipelines.config import load_settings

        return flows.encode_window(load_settings(), flows.parse_date(run["data_start"], "data_start"),
                                   flows.parse_date(run["data_end"], "data_end"),
                                   mlflow_run_id=run["mlflow_run_id"])

    @task
    def train(run: dict, dataset: dict) -> dict:
        """Fit the Keras model with early stopping; log it to the run as a pyfunc model."""
        from pipelines.config import load_settings
        from pipelines.model import train as training

        return training.train_step(load_settings(), dataset["dataset_uri"], mlflow_run_id=run["mlflow_run_id"])

    @task
    def evaluate(run: dict, dataset: dict, model: dict) -> dict:
        """Metrics of the model and every baseline on the held-out as-of times, plots, table."""
        from pipelines.config import load_settings
        from pipelines.model import evaluate as evaluation

        return evaluation.evaluate_step(load_settings(), dataset["dataset_uri"], model["model_uri"],
                                        mlflow_run_id=run["mlflow_run_id"])

    @task
    def register(run: dict, dataset: dict, model: dict, metrics: dict) -> dict:
        """Register the version as challenger; promote to champion only through the gate; close the run."""
        from pipelines import flows
        from pipelines.config import load_settings

        return flows.register_and_close(load_settings(), mlflow_run_id=run["mlflow_run_id"],
                                        model_uri=model["model_uri"], dataset_uri=dataset["dataset_uri"])

    run = start_run()
    dataset = encode(run, preprocess(run, validate(run)))
    model = train(run, dataset)
    register(run, dataset, model, evaluate(run, dataset, model))


interest_migration_training()
