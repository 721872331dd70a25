"""Operations commands: ``migration-report`` (write reports/migration/dt=D/), ``monitor`` (judge
published days against outcomes: reports/monitoring/dt=D/), ``ingest-inbox`` (land what is announced
in the inbox now) and ``notify-test`` (send a test alert through the configured channel)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from pipelines.cli import UsageError, add_days, add_json, days_of, emit, fail
from pipelines.config import Settings


def _cmd_migration_report(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.ops import migration_report
    from pipelines.serving.predictions import PredictionsNotFound

    try:
        days = days_of(args)
    except UsageError as exc:
        return fail(str(exc), 2)
    summaries = []
    for day in days:
        try:
            summary = migration_report.write_report(settings, day)
        except PredictionsNotFound as exc:
            return fail(str(exc))
        summaries.append(summary)
        if not args.json:
            print(_report_line(summary))
    if args.json:
        emit(args, summaries if len(summaries) > 1 else summaries[0], "")
    return 0


def _report_line(summary: dict[str, Any]) -> str:
    if not summary["users"]:
        return f"{summary['uri']}: no users"
    line = (f"{summary['uri']}: {summary['users']} users, {summary['migrating_users']} migrating "
            f"({summary['migrating_share']:.1%}: the most likely category new)")
    if summary.get("expected_new_category_users") is not None:  # reports written before it lack it
        line += (f", {summary['expected_new_category_users']:.1f} expected to touch a new category "
                 f"({summary['expected_new_category_share']:.1%}: the sum of migration scores)")
    if summary["top_flows"]:
        top = summary["top_flows"][0]
        line += f"; top flow {top['from_category']} -> {top['to_category']} ({top['weight']:.1f} users)"
    return line


def _cmd_monitor(args: argparse.Namespace, settings: Settings) -> int:
    import sys

    from pipelines.ops import monitor_alerts, monitoring
    from pipelines.serving.predictions import PredictionsNotFound

    try:
        days = days_of(args) or monitoring.pending_days(settings)
    except UsageError as exc:
        return fail(str(exc), 2)
    reports = []
    for day in days:
        try:
            report = monitoring.monitor_day(settings, day, intraday=args.intraday)
        except (PredictionsNotFound, monitoring.HorizonNotPassed) as exc:
            return fail(str(exc))
        reports.append(report)
        if report["streak"]["fired"]:
            print(f"warning: {monitor_alerts.degraded_message(settings.model_name, report['streak'])}",
                  file=sys.stderr)
    emit(args, reports, lambda: _monitor_text(reports) if reports else
         "nothing to monitor: no published day whose horizon has passed is without a report")
    return 0


def _monitor_text(reports: list[dict[str, Any]]) -> str:
    from pipelines.ops import monitoring

    lines = [monitoring.format_table(reports)]
    for report in reports:
        for hour in report.get("intraday", []):
            model = hour.get("metrics", {}).get("model", {})
            lines.append(f"{report['as_of_date']} hour {hour['hour']:02d}: " + (
                hour["waiting"] if "waiting" in hour else f"{model.get('users')} users, ndcg_at_5 "
                f"{model.get('ndcg_at_5')} -> {hour['uri']}"))
    return "\n".join(lines)


def _cmd_ingest_inbox(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.ops import inbox

    batch = inbox.batch_id(args.batch or f"cli-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}")
    summary = inbox.ingest_pending(settings, batch)
    emit(args, summary, lambda: "\n".join(
        [f"batch {batch}: {summary['files']} file(s), {summary['rows_landed']} rows landed on "
         f"{', '.join(summary['dates']) or 'no day'}"]
        + [f"  {o['manifest']}: {o['outcome']}" + (f" ({o['error']})" if o["outcome"] == "failed" else "")
           for o in summary["outcomes"]]))
    return 1 if summary["failed"] else 0


def _cmd_notify_test(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.ops.notify import Alert, NotifyError, send
    from pipelines.ops.options import ops_options

    options = ops_options(settings)
    try:
        channel = send(options, Alert("test", "test alert from python -m pipelines notify-test",
                                      {"bucket": settings.bucket}))
    except NotifyError as exc:
        return fail(f"{options.notify_channel}: {exc}")
    emit(args, {"channel": channel, "delivered": True}, f"test alert delivered through {channel}")
    return 0


def register_cli(subparsers: Any) -> None:
    """``migration-report --date D``, ``monitor [--date D | --start A --end B]``, ``ingest-inbox`` and
    ``notify-test``."""
    report = subparsers.add_parser("migration-report", help="write the population migration report of published "
                                                            "day D under reports/migration/dt=D/")
    add_days(report)
    add_json(report)
    report.set_defaults(func=_cmd_migration_report)

    monitor = subparsers.add_parser("monitor", help="judge published days against what users did in their horizon "
                                                    "(model and baselines): reports/monitoring/dt=D/ and MLflow; "
                                                    "without a day, every published day whose horizon has passed and "
                                                    "that has no report yet")
    add_days(monitor, required=False)
    monitor.add_argument("--intraday", action="store_true", help="also judge the day's intraday partitions "
                                                                 "(predictions_intraday/dt=D/hour=HH/) whose horizon "
                                                                 "has passed: reports/monitoring_intraday/")
    add_json(monitor)
    monitor.set_defaults(func=_cmd_monitor)

    ingest = subparsers.add_parser("ingest-inbox", help="land every file announced by a manifest in inbox/events/ "
                                                        "now and move it to inbox/processed/ or inbox/failed/")
    ingest.add_argument("--batch", default=None, help="folder name under inbox/processed|failed/ (default: "
                                                      "cli-<UTC time>)")
    add_json(ingest)
    ingest.set_defaults(func=_cmd_ingest_inbox)

    notify = subparsers.add_parser("notify-test", help="send a test alert through IM_NOTIFY_CHANNEL (exit 1 with "
                                                       "the reason when it cannot be delivered)")
    add_json(notify)
    notify.set_defaults(func=_cmd_notify_test)
