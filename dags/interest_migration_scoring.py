"""
### Interest-migration daily scoring

**Schedule**: daily, one run per UTC day D (the run for D starts after D has ended). Backfill a
range from the UI (Trigger -> Backfill) or with
`airflow backfill create --dag-id interest_migration_scoring --from-date A --to-date B`.

**Does**: for logical date D, uses only clean events up to the end of D (the day's raw partition
is validated and cleaned first when it exists), loads `models:/interest_migration@champion`,
pins that exact version for every shard, scores every user active in the look-back window in
mapped shards, and publishes the partition.

**Produces**: `predictions/dt=D/run=<id>/part-*.parquet` with the public prediction contract, then
the `_SUCCESS` manifest (model version, row count, files) switched with one PUT, and an event on the asset
`s3://<bucket>/predictions` (extra: `as_of_date`, `model_version`) that downstream DAGs can be
scheduled on. A rerun for D replaces the partition whole; until its
manifest switch, readers keep the old one. Then `report_migration` writes the
population migration report of D under `reports/migration/dt=D/` (flows between categories, the
top flows against the week before, the share of users migrating per category, a bar chart).

**Alerts** (`IM_NOTIFY_CHANNEL`): a failed run notifies; with `IM_SCORING_DEADLINE=HH:MM` a run for
D still unfinished at HH:MM UTC on D+1 notifies as a late partition (see docs/operations.md).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, CronDataIntervalTimetable, dag, get_current_context, task

from pipelines.config import load_settings
from pipelines.ops import callbacks
from pipelines.ops.options import ops_options
from pipelines.platform.layout import predictions_uri

# Light: reads IM_* variables only (a bad value fails the parse with a message naming it).
SETTINGS = load_settings()
PREDICTIONS = Asset(predictions_uri(SETTINGS.bucket),
                    extra={"contract": "predictions/dt=YYYY-MM-DD/part-*.parquet + _SUCCESS"})

DEFAULT_ARGS = {
    "owner": "interest-migration",
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=30),
    "execution_timeout": dt.timedelta(hours=1),
    "on_failure_callback": callbacks.on_task_failure,  # an alert once a task fails for good (no retry left)
}


def _as_of_date() -> dt.date:
    """D: the start of this run's data interval (a UI trigger's is the last complete day, not today)."""
    from pipelines.flows.scoring import scoring_day

    context = get_current_context()
    return scoring_day(context.get("data_interval_start"), context.get("logical_date"), context["dag_run"].run_after)


@dag(
    dag_id="interest_migration_scoring",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime.combine(SETTINGS.scoring_start_date, dt.time(), tzinfo=dt.UTC),
    catchup=SETTINGS.scoring_catchup,
    max_active_runs=2,
    default_args=DEFAULT_ARGS,
    tags=["interest-migration", "scoring"],
    doc_md=__doc__,
    deadline=callbacks.scoring_deadline(ops_options(SETTINGS)),
)
def interest_migration_scoring():
    @task
    def prepare_input() -> dict:
        """Validate and clean day D's raw partition (if landed); check the look-back window has data."""
        from pipelines.flows import scoring as flows

        context = get_current_context()
        return flows.prepare_scoring_input(load_settings(), _as_of_date(), report_id=context["dag_run"].run_id)

    @task
    def resolve_model(prepared: dict) -> dict:
        """Follow the champion alias once and pin the exact version for every shard."""
        from pipelines.flows import scoring as flows

        return flows.resolve_champion(load_settings())

    @task
    def plan_shards(model: dict) -> list[dict]:
        """Pick a run id (the published partition stays readable); one shard spec per mapped task."""
        from pipelines.flows import scoring as flows

        return flows.plan_scoring(load_settings(), _as_of_date(), model)

    @task(max_active_tis_per_dagrun=4)
    def score_shard(model: dict, shard: dict) -> dict:
        """Score one shard of users in bounded batches; write predictions/dt=D/run=<id>/part-<shard>.parquet."""
        from pipelines.flows import scoring as flows

        return flows.score_shard(load_settings(), _as_of_date(), model, shard)

    @task(outlets=[PREDICTIONS])
    def publish(model: dict, shard_results: list[dict]) -> dict:
        """Check every part, switch the _SUCCESS manifest with one PUT (a retry finding it in place
        succeeds), remove older runs, and emit the asset event."""
        from pipelines.flows import scoring as flows

        date = _as_of_date()
        manifest = flows.publish_predictions(load_settings(), date, model, list(shard_results))
        get_current_context()["outlet_events"][PREDICTIONS].extra = {
            "as_of_date": date.isoformat(), "model_version": str(model["model_version"])}
        return manifest

    @task
    def report_migration(manifest: dict) -> dict:
        """Population migration of D from the published partition: reports/migration/dt=D/."""
        from pipelines.ops import migration_report

        return migration_report.write_report(load_settings(), _as_of_date())

    model = resolve_model(prepare_input())
    results = score_shard.partial(model=model).expand(shard=plan_shards(model))
    report_migration(publish(model, results))


interest_migration_scoring()
