"""Privacy commands: ``pseudonym`` (map ids to pseudonyms, make a key), ``forget`` (erase one user),
``retention`` (delete partitions older than the retention limits). See docs/privacy.md."""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.cli import UsageError, add_days, add_json, days_of, emit, fail
from pipelines.config import Settings
from pipelines.platform import layout

# A --restricted name becomes a key segment (restricted/pseudonyms/<name>.parquet): a layout.NAME,
# and without '..' anywhere, so it cannot reach another prefix or make an odd key.


def _read_ids(path: Path) -> list[str]:
    """Ids of a UTF-8 file, one per line (blank lines skipped). Read as ``utf-8-sig``: a byte-order
    mark an editor put first would otherwise become part of the first id (and give it another
    pseudonym). Raises UnicodeDecodeError for bytes that are not UTF-8."""
    return [line.strip() for line in path.read_bytes().decode("utf-8-sig").splitlines() if line.strip()]


def _cmd_pseudonym(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.privacy.pseudonym import Pseudonymizer, PseudonymKeyError, read_key, write_key

    if args.new_key:
        try:
            path = write_key(Path(args.new_key))
        except FileExistsError:
            return fail(f"{args.new_key} exists: a key is never replaced (every pseudonym would change)")
        emit(args, {"key_file": str(path)}, f"wrote a new key to {path} (0600); set IM_PSEUDONYM_KEY_FILE={path}")
        return 0
    ids = list(args.user or [])
    if any(not i.strip() for i in ids):  # an empty id has no pseudonym (landing keeps it empty)
        return fail("--user: an empty or blank id has no pseudonym; give the raw id", 2)
    if args.out is not None and args.restricted is not None:
        return fail("give --out or --restricted, not both", 2)
    if args.out is not None and not args.out.strip():
        return fail("--out: give a file path (it is empty)", 2)
    if args.restricted is not None and (not layout.is_name(args.restricted) or ".." in args.restricted):
        return fail(f"--restricted {args.restricted!r}: use letters, digits, '_', '.', '-' (no '/', no '..', "
                    "not only dots): the name becomes restricted/pseudonyms/<name>.parquet", 2)
    if args.ids_file:
        try:
            ids += _read_ids(Path(args.ids_file))
        except OSError as exc:
            return fail(f"{args.ids_file}: cannot read ({exc.strerror})")
        except UnicodeDecodeError as exc:
            return fail(f"{args.ids_file}: not UTF-8 text (byte {exc.start}); save it as UTF-8, one id per line")
    if not ids:
        return fail("give --user ID (repeatable), --ids-file FILE or --new-key PATH", 2)
    try:
        mapper = Pseudonymizer(read_key(settings.pseudonym_key_file))
    except PseudonymKeyError as exc:
        return fail(str(exc))
    rows = [{"user_id": i, "pseudonym": mapper.one(i)} for i in ids]
    if args.out is not None:  # a local table, readable by its owner only
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["user_id", "pseudonym"])
        writer.writeheader()
        writer.writerows(rows)
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(buffer.getvalue())
        emit(args, {"file": args.out, "rows": len(rows)}, f"wrote {len(rows)} pseudonyms to {args.out} (0600)")
        return 0
    if args.restricted is not None:
        from pipelines.platform import storage

        uri = storage.write_parquet(settings, layout.pseudonym_map_key(args.restricted), pa.Table.from_pylist(
            rows, schema=pa.schema([("user_id", pa.string()), ("pseudonym", pa.string())])))
        emit(args, {"uri": uri, "rows": len(rows)}, f"wrote {len(rows)} pseudonyms to {uri}")
        return 0
    emit(args, rows, lambda: "\n".join(f"{r['user_id']}\t{r['pseudonym']}" for r in rows))
    return 0


def _cmd_forget(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.privacy.erasure import forget_user
    from pipelines.privacy.pseudonym import PseudonymKeyError

    try:
        if (args.user is None) == (args.pseudonym is None):
            return fail("give --user ID or --pseudonym P (one of them)", 2)
        report = forget_user(settings, args.user, pseudonym=args.pseudonym)
    except (ValueError, PseudonymKeyError) as exc:
        return fail(str(exc))
    dropped = report["rows_dropped_with_caches"]
    emit(args, report, lambda: "\n".join(
        [f"erasure {report['erasure_id']} of user {report['user_ref']}: {report['rows_removed']} rows removed "
         f"from {len(report['changes'])} objects"
         + (f" ({dropped} rows of other users went with deleted hand-overs; the next validation rebuilds them)"
            if dropped else "") + f"; report {report['report']}"]
        + [f"  {c['area']:<11} {c['key']}: {c['rows_before']} -> {c['rows_after']} ({c['action']}"
           + (f"; {c['user_rows']} of them the user's" if c["user_rows"] != c["rows_before"] - c["rows_after"]
              else "") + ")"
           for c in report["changes"]]))
    return 0


def _cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.privacy.retention import apply_retention

    try:
        (day,) = days_of(args)
    except UsageError as exc:
        return fail(str(exc), 2)
    record = apply_retention(settings, day, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    emit(args, record, lambda: "\n".join(
        [f"retention as of {record['as_of']}: {verb} {len(record['partitions'])} partitions "
         f"({record['by_area'] or 'none'}); record {record['report']}"]
        + [f"  {p['prefix']} ({p['objects']} objects)" for p in record["partitions"]]))
    return 0


def register_cli(subparsers: Any) -> None:
    """``pseudonym``, ``forget --user U`` and ``retention --date D``."""
    pseudonym = subparsers.add_parser("pseudonym", help="print the pseudonyms of user ids under the configured key "
                                                        "(needs read access to IM_PSEUDONYM_KEY_FILE)")
    pseudonym.add_argument("--user", action="append", metavar="ID", help="a raw user id (repeatable)")
    pseudonym.add_argument("--ids-file", metavar="FILE", help="a UTF-8 file of raw user ids, one per line")
    pseudonym.add_argument("--out", metavar="PATH", help="write the id -> pseudonym table to this local CSV "
                                                         "file (0600) instead of printing it")
    pseudonym.add_argument("--restricted", metavar="NAME", help="write the table to the bucket's restricted "
                                                                "prefix, restricted/pseudonyms/NAME.parquet "
                                                                "(NAME: letters, digits, '_', '.', '-')")
    pseudonym.add_argument("--new-key", metavar="PATH", help="write a new random key to PATH (0600) and stop; "
                                                             "an existing file is never replaced")
    add_json(pseudonym)
    pseudonym.set_defaults(func=_cmd_pseudonym)

    forget = subparsers.add_parser("forget", help="erase one user's rows from raw, quarantine, clean and "
                                                  "predictions; report under reports/erasure/")
    forget.add_argument("--user", metavar="ID", help="the user's raw id (its pseudonym is derived with the key)")
    forget.add_argument("--pseudonym", metavar="P", help="the user's pseudonym instead of the raw id")
    add_json(forget)
    forget.set_defaults(func=_cmd_forget)

    retention = subparsers.add_parser("retention", help="delete partitions older than the IM_RETENTION_* limits "
                                                        "as of day D; record under reports/retention/")
    add_days(retention, window=False)
    retention.add_argument("--dry-run", action="store_true", help="record what would be deleted, delete nothing")
    add_json(retention)
    retention.set_defaults(func=_cmd_retention)
