"""
### Interest-migration intraday micro-batches (optional, paused when created)

**Runs** hourly once switched on (unpause it), and on demand (params `date`, `hour`).

**Does**: scores only the users of the raw files of day D landed since the last intraday run (the
ingest DAG lands the inbox under `raw/events/dt=D/`), from their clean look-back history plus
every raw row of D so far, as of the end of the hour, with the pinned champion. An hour without a
new file publishes nothing.

**Produces**: `predictions_intraday/dt=D/hour=HH/part-00000.parquet` (the daily contract's
columns) and, last, its `_SUCCESS` manifest (model version, `as_of`, the raw files consumed). The
monitoring DAG's `intraday` param judges these partitions. See docs/online.md.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task

from pipelines.ops import callbacks

DEFAULT_ARGS = {
    "owner": "interest-migration",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=1),
    "execution_timeout": dt.timedelta(minutes=30),
    "on_failure_callback": callbacks.on_task_failure,
}


@dag(
    dag_id="interest_migration_intraday",
    schedule="5 * * * *",
    start_date=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    default_args=DEFAULT_ARGS,
    tags=["interest-migration", "scoring"],
    doc_md=__doc__,
    params={
        "date": Param("", type="string", description="day YYYY-MM-DD (empty: the day of the hour just ended)"),
        "hour": Param(-1, type="integer", minimum=-1, maximum=23,
                      description="hour 0..23 (-1: the hour just ended)"),
    },
)
def interest_migration_intraday():
    @task
    def score_new_users() -> dict:
        """Score the users with new raw events of the day and publish the hour's partition."""
        from pipelines.config import load_settings
        from pipelines.serving import intraday

        context = get_current_context()
        params = context["params"]
        ended = (context.get("data_interval_end") or context["dag_run"].run_after) - dt.timedelta(hours=1)
        day = params["date"] or ended.date()
        hour = ended.hour if int(params["hour"]) < 0 else int(params["hour"])
        result = intraday.score_hour(load_settings(), day, hour)
        return {k: result.get(k) for k in ("as_of_date", "hour", "row_count", "model_version", "skipped", "uri")}

    score_new_users()


interest_migration_intraday()
