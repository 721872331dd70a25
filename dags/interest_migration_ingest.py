"""
### Interest-migration ingest

**Runs** continuously, one run at a time: `wait_for_files` (a deferrable sensor) lists
`inbox/events/` of the bucket for a manifest `*.manifest.json` and, while there is none, defers to
a timer for `IM_INBOX_POLL_SECONDS` (no worker slot is held while it waits); a run that finds
nothing for 23 hours is skipped and the next one starts. It can also be triggered by hand.

**Does**: lands every announced file through the same adapters as `python -m pipelines land`
(the manifest names the file, its format and column map; see docs/operations.md), then moves the
file and its manifest to `inbox/processed/<run>/` with what landing wrote, or to
`inbox/failed/<run>/` with an `error.json` naming the file and the rule.

**Produces**: raw partitions `raw/events/dt=D/`, and an event on the asset `s3://<bucket>/raw/events`
(extra: `dates` that received data, `rows`, `batch`) when anything landed. The daily scoring run of
D picks the landed day up; downstream DAGs can be scheduled on the asset. `check_failures` fails
the run when a file could not be landed; every failed task notifies through `IM_NOTIFY_CHANNEL`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, dag, get_current_context, task

from pipelines.config import load_settings
from pipelines.ops import callbacks
from pipelines.ops.options import ops_options
from pipelines.ops.sensors import InboxSensor
from pipelines.platform.layout import raw_events_uri

# Light: reads IM_* variables only (a bad value fails the parse with a message naming it).
SETTINGS = load_settings()
RAW_EVENTS = Asset(raw_events_uri(SETTINGS.bucket), extra={"contract": "raw/events/dt=YYYY-MM-DD/<name>.*"})

DEFAULT_ARGS = {
    "owner": "interest-migration",
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=30),
    "execution_timeout": dt.timedelta(hours=2),
    "on_failure_callback": callbacks.on_task_failure,  # an alert once a task fails for good (no retry left)
}


@dag(
    dag_id="interest_migration_ingest",
    schedule="@continuous",
    start_date=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["interest-migration", "ingest"],
    doc_md=__doc__,
)
def interest_migration_ingest():
    wait_for_files = InboxSensor(task_id="wait_for_files", poll_seconds=ops_options(SETTINGS).inbox_poll_seconds,
                                 timeout=dt.timedelta(hours=23), soft_fail=True, retries=0)

    @task
    def land_files(manifests: list[str]) -> dict:
        """Land every announced file and move it (with its manifest) to processed/ or failed/."""
        from pipelines.ops import inbox

        return inbox.ingest_pending(load_settings(), inbox.batch_id(get_current_context()["dag_run"].run_id))

    @task(outlets=[RAW_EVENTS])
    def announce_landed(summary: dict) -> dict:
        """Emit the raw-events asset event with the dates that got data (skipped when none did)."""
        from pipelines.ops import inbox

        extra = inbox.landed_event(summary)
        get_current_context()["outlet_events"][RAW_EVENTS].extra = extra
        return extra

    @task
    def check_failures(summary: dict) -> None:
        """Fail the run, naming each file that could not be landed and where it was moved."""
        from pipelines.ops import inbox

        inbox.raise_for_failures(summary)

    summary = land_files(wait_for_files.output)
    announce_landed(summary)
    check_failures(summary)


interest_migration_ingest()
