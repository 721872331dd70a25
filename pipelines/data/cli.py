"""Data commands: ``generate`` (synthetic logs), ``land`` (a source file -> raw/), ``validate`` and
``preprocess`` (raw partitions -> quarantine/, reports/ and clean/).

``validate`` and ``preprocess`` take ``--date D`` or ``--start A --end B`` (the older ``--date A
--to B`` still works). Each command prints one line per partition and a summary (``--json``: one
JSON document), and exits non-zero with a one-line ``error: ...`` on stderr for bad input. The
handlers import the stage modules when they run (validation brings Great Expectations), so
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from pipelines.cli import UsageError, add_days, add_json, days_of, emit, error_line, fail
from pipelines.config import Settings
from pipelines.data.formats import FORMATS, TS_FORMATS, SourceError, read_column_map_file
from pipelines.platform import layout, storage
from pipelines.platform.dates import to_date


def _reasons(reasons: dict[str, int]) -> str:
    """`` (reason: n, ...)`` for a summary line; empty when nothing was quarantined."""
    if not reasons:
        return ""
    return " (" + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])) + ")"


# --- generate ------------------------------------------------------------------------------------


def _cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.data.synthetic import generate_taobao

    if not 0.0 <= args.shift_share <= 1.0:
        return fail(f"generate: --shift-share {args.shift_share} is not a share in [0, 1]", 2)
    try:
        result = generate_taobao(
            Path(args.out), users=args.users, days=args.days, categories=args.categories,
            start=to_date(args.start, "--start"), seed=args.seed if args.seed is not None else settings.seed,
            mean_events_per_user_day=args.events_per_user_day, shift_share=args.shift_share,
            compress=args.gzip)
    except OverflowError as exc:  # --start near year 9999: the days run past the last date Python has
        return fail(f"generate failed: --start {args.start} plus {args.days} days runs past 9999-12-31 ({exc})", 2)
    except (ValueError, OSError) as exc:
        return fail(f"generate failed: {exc}")
    emit(args, result.to_dict(),
         f"generated {result.rows} events ({result.users} users, {result.days} days, "
         f"{result.categories} categories, {result.shifted_users} planted shifts) -> {result.events_path}; "
         f"truth -> {result.truth_path}")
    return 0


# --- land ----------------------------------------------------------------------------------------


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    """``KEY=VALUE`` flags as a dict; raises :class:`SourceError` naming the flag for a malformed one."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SourceError(f"{flag} {item!r}: expected KEY=VALUE")
        key, value = key.strip(), value.strip()
        if out.get(key, value) != value:  # the last one silently won
            raise SourceError(f"{flag} gives {key!r} twice ({out[key]!r} and {value!r}): give each once")
        out[key] = value
    return out


def _land_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``land_events`` from the column-map file and the flags (flags win)."""
    options: dict[str, Any] = read_column_map_file(Path(args.column_map)) if args.column_map else {}
    column_map = _pairs(args.map, "--map")
    if column_map:
        options["column_map"] = {**options.get("column_map", {}), **column_map}
    behavior_map = _pairs(args.behavior_map, "--behavior-map")
    if behavior_map:
        options["behavior_map"] = {**options.get("behavior_map", {}), **behavior_map}
    for name in ("ts_format", "timezone", "behavior_constant", "delimiter", "encoding"):
        if getattr(args, name):
            options[name] = getattr(args, name)
    if args.no_header:
        options["has_header"] = False
    return options


def _cmd_land(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.data.landing import land_events

    try:
        result = land_events(settings, args.source, args.format, name=args.name, replace=args.replace,
                             **_land_options(args))
    except SourceError as exc:
        return fail(f"land failed: {exc}")
    except storage.StorageError as exc:
        return fail(f"land failed (storage): {exc}")
    span = f"{result.dates[0]}..{result.dates[-1]}" if result.dates else "no dates"
    emit(args, result.to_dict(),
         f"landed {result.rows} of {result.rows_read} rows from {result.source} as '{result.name}' into "
         f"{len(result.dates)} partitions ({span}); quarantined {result.quarantined}"
         f"{_reasons(result.quarantine_reasons)}")
    return 0


# --- validate and preprocess ---------------------------------------------------------------------


def _report_failed_days(errors: dict[dt.date, str]) -> None:
    """One stderr line per failed day; consecutive days failing for the same reason (a window with
    no landed data: the same message but for its date) share one line naming the range."""
    runs: list[tuple[dt.date, dt.date, str]] = []
    for day, message in sorted(errors.items()):
        text = message.replace(day.isoformat(), "<day>")
        if text.startswith("dt=<day>: "):
            text = text[len("dt=<day>: "):]
        if runs and runs[-1][2] == text and runs[-1][1] + dt.timedelta(days=1) == day:
            runs[-1] = (runs[-1][0], day, text)
        else:
            runs.append((day, day, text))
    for first, last, text in runs:
        if first == last:
            error_line(f"dt={first}: FAILED: {text.replace('<day>', first.isoformat())}")
        else:
            error_line(f"dt={first}..{last} ({(last - first).days + 1} days): FAILED: {text}")


def _cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.data.validation import validate_partitions

    try:
        dates = days_of(args)
    except UsageError as exc:
        return fail(f"validate: {exc}", 2)
    report_id = args.report_id or dt.datetime.now(dt.UTC).strftime("manual-%Y%m%dT%H%M%SZ")
    if not layout.is_name(report_id):  # it names a folder of reports
        return fail(f"validate: --report-id {report_id!r}: use 1-120 letters, digits, '_', '.', '-' (not only dots)", 2)
    run = validate_partitions(settings, dates, report_id=report_id)
    results = [r.to_dict() for r in run.results if r.date not in run.errors]
    failed = {d.isoformat(): msg for d, msg in sorted(run.errors.items())}
    _report_failed_days(run.errors)
    if not args.json:
        for res in run.results:
            if res.date not in run.errors:
                print(f"dt={res.date}: {res.rows} rows, {res.quarantined} quarantined{_reasons(res.reasons)}, "
                      f"{res.duplicate_rows} duplicates")
    rows = sum(r["rows"] for r in results)
    quarantined = sum(r["quarantined"] for r in results)
    reports = storage.uri(settings, layout.validation_run_prefix(report_id))
    docs = storage.uri(settings, run.data_docs_key) if run.data_docs_key else None
    # The failed days that were read (a batch rule failed them, after their reports): their counts
    # too, or a run whose every day failed reads "0 rows" although thousands came in, and a program
    # could not reconcile those days' rows with their quarantine.
    failed_results = [r.to_dict() for r in run.results if r.date in run.errors]
    failed_rows = sum(r["rows"] for r in failed_results)
    failed_note = f"; {len(failed)} failed ({failed_rows} rows there, not handed over)" if failed else ""
    emit(args, {"report_id": report_id, "reports": reports, "data_docs": docs, "partitions": results,
                "failed": failed, "failed_partitions": failed_results,
                "totals": {"rows": rows, "quarantined": quarantined, "failed_rows": failed_rows,
                           "failed_quarantined": sum(r["quarantined"] for r in failed_results)}},
         f"validated {len(dates) - len(failed)}/{len(dates)} partitions: {rows} rows, "
         f"{quarantined} quarantined{failed_note}; reports under {reports}" + (f"; Data Docs {docs}" if docs else ""))
    return 1 if failed else 0


def _cmd_preprocess(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.data.preprocess import preprocess_partitions

    try:
        dates = days_of(args)
    except UsageError as exc:
        return fail(f"preprocess: {exc}", 2)
    run = preprocess_partitions(settings, dates)
    failed = {d.isoformat(): msg for d, msg in sorted(run.errors.items())}
    _report_failed_days(run.errors)
    total = {"rows_in": 0, "clean": 0, "quarantined": 0, "duplicates_dropped": 0}
    for res in run.results:
        for key in total:
            total[key] += getattr(res, key)
        if not args.json:
            print(f"dt={res.date}: {res.rows_in} in = {res.clean} clean + {res.quarantined} quarantined + "
                  f"{res.duplicates_dropped} duplicates{_reasons(res.reasons)}")
    emit(args, {"partitions": [r.to_dict() for r in run.results], "failed": failed, "totals": total},
         f"preprocessed {len(dates) - len(failed)}/{len(dates)} partitions: {total['rows_in']} in = "
         f"{total['clean']} clean + {total['quarantined']} quarantined + {total['duplicates_dropped']} duplicates")
    return 1 if failed else 0


# --- registration --------------------------------------------------------------------------------


def register_cli(subparsers: Any) -> None:
    """``generate``, ``land``, ``validate`` and ``preprocess`` (see the module docstring)."""
    gen = subparsers.add_parser("generate", help="write synthetic Taobao-format logs with planted interest shifts")
    gen.add_argument("--out", required=True, help="output folder (events.csv[.gz] + truth.json)")
    gen.add_argument("--users", type=int, default=2000, help="number of users (default 2000)")
    gen.add_argument("--days", type=int, default=30, help="number of days (default 30)")
    gen.add_argument("--categories", type=int, default=200, help="number of categories, at least 4 (default 200)")
    gen.add_argument("--start", default="2017-11-01", metavar="YYYY-MM-DD",
                     help="first day of the generated logs (UTC; default 2017-11-01)")
    gen.add_argument("--seed", type=int, default=None, help="random seed (default: IM_SEED)")
    gen.add_argument("--events-per-user-day", type=float, default=5.0,
                     help="mean events per user and day (default 5.0)")
    gen.add_argument("--shift-share", type=float, default=0.3, help="share of users with a planted shift (default 0.3)")
    gen.add_argument("--gzip", action="store_true", help="write events.csv.gz")
    add_json(gen)
    gen.set_defaults(func=_cmd_generate)

    land = subparsers.add_parser("land", help="land a source file under raw/events/dt=.../ (by UTC event date)")
    land.add_argument("--source", required=True, help="local path or s3://bucket/key")
    land.add_argument("--format", required=True, choices=FORMATS, help="source format (see docs/data.md)")
    land.add_argument("--name", default=None, help="landing name (default: the file name); same name replaces")
    land.add_argument("--replace", action="store_true",
                      help="allow a file to replace the rows an earlier, different file landed under the same "
                           "default name (refused otherwise)")
    land.add_argument("--column-map", default=None, metavar="FILE",
                      help="JSON/YAML column-map file (csv/parquet; see docs/data.md)")
    land.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                      help="canonical field to source column, repeatable (e.g. --map ts=event_time)")
    land.add_argument("--behavior-map", action="append", metavar="CODE=BEHAVIOR",
                      help="source behaviour code to canonical behaviour, repeatable (e.g. click=view); "
                           "CODE=ignore sets that event type's rows aside as out of scope (ignored_behavior)")
    land.add_argument("--behavior-constant", default=None, help="every row has this behaviour (e.g. review)")
    land.add_argument("--ts-format", default=None, choices=TS_FORMATS,
                      help="how timestamps are written (default: the format's, unix_s for csv/parquet)")
    land.add_argument("--timezone", default=None, help="zone of timestamps without an offset (default UTC)")
    land.add_argument("--delimiter", default=None,
                      help="csv field delimiter (default ','; a tab as '\\t' or tab)")
    land.add_argument("--encoding", default=None,
                      help="csv: the file's text encoding (default utf-8; e.g. latin-1, cp1252, gb18030)")
    land.add_argument("--no-header", action="store_true", help="csv: the file has no header line")
    add_json(land)
    land.set_defaults(func=_cmd_land)

    validate = subparsers.add_parser("validate", help="validate raw partitions (quarantine bad rows, gate batches)")
    add_days(validate)
    validate.add_argument("--report-id", default=None, metavar="ID",
                          help="folder under reports/validation/ (default: manual-<time>)")
    add_json(validate)
    validate.set_defaults(func=_cmd_validate)

    preprocess = subparsers.add_parser("preprocess", help="dedupe and de-noise raw partitions into clean/events/dt=.../")
    add_days(preprocess)
    add_json(preprocess)
    preprocess.set_defaults(func=_cmd_preprocess)
