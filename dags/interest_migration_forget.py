"""
### Interest-migration forget (erasure of one user)

**Runs** when triggered, one run at a time, with the param `pseudonym` (preferred: the raw id then
never enters Airflow's database; `python -m pipelines pseudonym --user ID` prints it) or `user`
(the raw id; it is kept in this run's configuration in Airflow's database).

**Does**: removes every row of the user from raw, quarantine, validated hand-overs, clean and
published predictions (parts rewritten, then one manifest write), as `python -m pipelines forget`.

**Produces**: `reports/erasure/<erasure id>.json`: rows before and after in every object it
changed; the user is named by pseudonym only. See docs/privacy.md.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task

from pipelines.ops import callbacks

DEFAULT_ARGS = {
    "owner": "interest-migration",
    "retries": 1,
    "retry_delay": dt.timedelta(minutes=1),
    "execution_timeout": dt.timedelta(hours=2),
    "on_failure_callback": callbacks.on_task_failure,
}


@dag(
    dag_id="interest_migration_forget",
    schedule=None,
    start_date=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # two erasures rewriting the same partitions would race
    default_args=DEFAULT_ARGS,
    tags=["interest-migration", "privacy"],
    doc_md=__doc__,
    params={
        "pseudonym": Param("", type="string", description="the user's pseudonym (20 digits)"),
        "user": Param("", type="string", description="or the user's raw id (kept in Airflow's database)"),
    },
)
def interest_migration_forget():
    @task
    def forget_user() -> dict:
        """Erase the user; returns the erasure id, the user's pseudonym, rows removed and the report URI."""
        from pipelines.config import load_settings
        from pipelines.privacy import erasure

        params = get_current_context()["params"]
        pseudonym, user = params["pseudonym"].strip(), params["user"].strip()
        if bool(pseudonym) == bool(user):
            raise ValueError("give exactly one of the params 'pseudonym' and 'user'")
        report = erasure.forget_user(load_settings(), user or None, pseudonym=pseudonym or None)
        return {k: report[k] for k in ("erasure_id", "user_ref", "rows_removed", "report")}

    forget_user()


interest_migration_forget()
