"""
### Interest-migration outcome monitoring

**Schedule**: daily. The run for logical date X monitors the published day D = X - (H + 1) days
(`IM_HORIZON_DAYS` = H): D's predictions are about [D+1, D+H], and the clean partition of D+H = X-1
was written by the scoring run of X-1, which started a day before this one. A run triggered with
`{"date": "YYYY-MM-DD"}` monitors that day instead; `{"intraday": true}` also judges the day's
intraday partitions `predictions_intraday/dt=D/hour=HH/` (reports under
`reports/monitoring_intraday/`). Backfill a range like scoring's (`airflow backfill create --dag-id
interest_migration_monitoring --from-date A --to-date B` monitors A-H-1 .. B-H-1).

**Does**: `monitor` scores the published `predictions/dt=D/` against what users did in [D+1, D+1+H)
with the evaluation's scorer (`pipelines/model/outcomes.py`), and the baselines (decayed
frequency, Markov, popularity) on the same users.

**Produces**: `reports/monitoring/dt=D/metrics.json` and `metrics.parquet` (model and baselines, the
day's verdict); one point per day (step = days since 1970-01-01) on the MLflow run
`monitoring <model> v<version>`; an event on `s3://<bucket>/requests/retraining` when it fires.
When the model has been below the best baseline, or below its own evaluation, by more than
`IM_MONITOR_MARGIN` on `IM_MONITOR_METRIC` for `IM_MONITOR_CONSECUTIVE_DAYS` days in a row:
`request_retraining` emits an event on the retraining-request asset (the training DAG runs), and
`check` fails with the reason, which sends a `model_degraded` alert (`IM_NOTIFY_CHANNEL`).
Otherwise `request_retraining` is skipped and `check` succeeds.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

from pipelines.config import load_settings
from pipelines.ops import monitor_alerts
from pipelines.ops.retraining import retraining_request_asset

SETTINGS = load_settings()  # light: IM_* variables only
RETRAINING = retraining_request_asset(SETTINGS.bucket)

DEFAULT_ARGS = {
    "owner": "interest-migration",
    "retries": 1,
    "retry_delay": dt.timedelta(seconds=30),
    "execution_timeout": dt.timedelta(hours=1),
    "on_failure_callback": monitor_alerts.on_check_failure,
}


def _monitored_day() -> dt.date:
    """D: the ``date`` param, else the logical date minus (horizon + 1) days."""
    context = get_current_context()
    chosen = (context.get("params") or {}).get("date")
    if chosen:
        return dt.date.fromisoformat(str(chosen))
    when = context.get("logical_date") or context.get("data_interval_start") or context["dag_run"].run_after
    return when.date() - dt.timedelta(days=load_settings().horizon_days + 1)


@dag(
    dag_id="interest_migration_monitoring",
    schedule=CronDataIntervalTimetable("0 6 * * *", timezone="UTC"),
    start_date=dt.datetime.combine(SETTINGS.scoring_start_date, dt.time(), tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={"date": Param(None, type=["null", "string"], description="monitor this published day (YYYY-MM-DD) "
                                                                      "instead of logical date - horizon - 1"),
            "intraday": Param(False, type="boolean", description="also judge the day's intraday partitions "
                                                                  "(predictions_intraday/dt=D/hour=HH/)")},
    tags=["interest-migration", "monitoring"],
    doc_md=__doc__,
)
def interest_migration_monitoring():
    @task
    def monitor() -> dict:
        """Score day D's published partition and the baselines against the outcomes; write the report."""
        from pipelines.ops import monitoring

        intraday = bool((get_current_context().get("params") or {}).get("intraday"))
        report = monitoring.monitor_day(load_settings(), _monitored_day(), intraday=intraday)
        return {"as_of_date": report["as_of_date"], "uri": report["uri"], "check": report["check"],
                "streak": report["streak"],
                "intraday": [h.get("uri") or h.get("waiting") for h in report.get("intraday", [])]}

    @task(outlets=[RETRAINING])
    def request_retraining(result: dict) -> dict:
        """Emit a retraining request when the degradation streak fired; skipped otherwise."""
        from airflow.sdk.exceptions import AirflowSkipException

        streak = result["streak"]
        if not streak["fired"]:
            raise AirflowSkipException(f"no retraining: {result['check']['summary']}")
        get_current_context()["outlet_events"][RETRAINING].extra = {
            "reason": "model_degraded", "as_of_date": streak["as_of_date"], "model_version": streak["model_version"]}
        return streak

    @task(trigger_rule="none_failed", retries=0)
    def check(result: dict) -> dict:
        """Fail with the reason when the model degraded for IM_MONITOR_CONSECUTIVE_DAYS days in a row."""
        return monitor_alerts.raise_if_fired(load_settings(), result["streak"])

    result = monitor()
    request_retraining(result) >> check(result)


interest_migration_monitoring()
