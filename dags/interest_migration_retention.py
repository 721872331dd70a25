"""
### Interest-migration retention

**Runs** daily (00:30 UTC), and on demand (param `as_of`).

**Does**: deletes whole date partitions older than the retention limits, counted back from the
run's day (its data interval end; or `as_of`): raw, quarantine and validated hand-overs older than
`IM_RETENTION_RAW_DAYS`, clean partitions older than `IM_RETENTION_CLEAN_DAYS`, prediction
partitions older than `IM_RETENTION_PREDICTIONS_DAYS` (manifest first). A limit of 0 keeps the area.
With `dry_run`, deletes nothing and records what it would delete.

**Produces**: the audit record `reports/retention/<UTC timestamp>.json` (what was deleted, object
counts per partition). See docs/privacy.md.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task

from pipelines.ops import callbacks

DEFAULT_ARGS = {
    "owner": "interest-migration",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=1),
    "execution_timeout": dt.timedelta(hours=1),
    "on_failure_callback": callbacks.on_task_failure,
}


@dag(
    dag_id="interest_migration_retention",
    schedule="30 0 * * *",
    start_date=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["interest-migration", "privacy"],
    doc_md=__doc__,
    params={
        "as_of": Param("", type="string", description="reference day YYYY-MM-DD (empty: the run's day)"),
        "dry_run": Param(False, type="boolean", description="record what would be deleted, delete nothing"),
    },
)
def interest_migration_retention():
    @task
    def apply_retention() -> dict:
        """Delete the partitions older than the limits and write the audit record; returns its summary."""
        from pipelines.config import load_settings
        from pipelines.privacy import retention

        context = get_current_context()
        params = context["params"]
        when = context.get("data_interval_end") or context["dag_run"].run_after
        record = retention.apply_retention(load_settings(), params["as_of"] or when.date(),
                                           dry_run=bool(params["dry_run"]))
        return {k: record[k] for k in ("as_of", "dry_run", "by_area", "objects_deleted", "report")}

    apply_retention()


interest_migration_retention()
