"""What every command of ``python -m pipelines`` shares: day arguments, ``--json`` output, errors.

Conventions (the same for every command):

- one day is ``--date YYYY-MM-DD``; a window of days is ``--start YYYY-MM-DD --end YYYY-MM-DD``
  (``--end`` defaults to ``--start``); commands that work on days accept either;
- ``--json`` prints one JSON document on stdout for programs, instead of the readable lines; when
  the command fails, that document is ``{"error": "...", "exit_code": N}``;
- errors go to stderr as one ``error: ...`` line, with exit code 1 (2 for bad arguments), never
  a traceback for a known failure.

Each stage package has a ``cli`` module with ``register_cli(subparsers)``; its handlers import the
stage's heavy modules (TensorFlow, MLflow, Great Expectations) only when they run, so ``--help``
stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pipelines.platform.dates import date_range, to_date

Handler = Callable[[argparse.Namespace, Any], int]


class UsageError(ValueError):
    """The command line is inconsistent (exit code 2)."""


def add_days(parser: argparse.ArgumentParser, *, window: bool = True, required: bool = True) -> None:
    """``--date D`` (one day) and, with ``window``, ``--start A --end B`` (a window of days)."""
    parser.add_argument("--date", default=None, metavar="YYYY-MM-DD", help="one day (UTC)")
    if window:
        parser.add_argument("--start", default=None, metavar="YYYY-MM-DD",
                            help="first day of a window (UTC, inclusive); with --end")
        parser.add_argument("--end", default=None, metavar="YYYY-MM-DD",
                            help="last day of the window (inclusive; default: --start)")
        parser.add_argument("--to", dest="end_deprecated", default=None, help=argparse.SUPPRESS)
    parser.set_defaults(_days_required=required)


def days_of(args: argparse.Namespace) -> list[dt.date]:
    """The days named by :func:`add_days` arguments, oldest first. Raises :class:`UsageError`.

    The old spelling ``--date D --to D2`` is still read as the window [D, D2]."""
    date, start = args.date, getattr(args, "start", None)
    end, old_end = getattr(args, "end", None), getattr(args, "end_deprecated", None)
    try:
        if date and (start or end):
            raise UsageError("give either --date or --start/--end, not both")
        first_text, first_name = (date, "--date") if date else (start, "--start")
        if first_text:
            first = to_date(first_text, first_name)
            last_text = end or old_end
            return date_range(first, to_date(last_text, "--end") if last_text else first)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if getattr(args, "_days_required", True):
        raise UsageError("give the day with --date YYYY-MM-DD (or a window with --start/--end)")
    return []


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document for programs")


def emit(args: argparse.Namespace, payload: Any, text: str | Callable[[], str]) -> None:
    """Print ``payload`` as JSON with ``--json``, else ``text`` (a string or a function making it)."""
    global _json_errors
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, sort_keys=True, default=str), file=_document or sys.stdout)
        _json_errors = False  # one document per command: a later error goes to stderr only
    else:
        print(text() if callable(text) else text)


def error_line(message: str) -> None:
    """Print ``error: message`` on stderr only (a failed part of a command whose JSON document, with
    that failure in it, follows)."""
    print(f"error: {message}", file=sys.stderr)


_json_errors = False  # set by :func:`json_output` for a command run with --json; off once a document is out
_document = None  # with --json: the real stdout, where only the document goes


@contextlib.contextmanager
def json_output(args: argparse.Namespace) -> Iterator[None]:
    """Run a command so that, with ``--json``, stdout holds its JSON document and nothing else:
    whatever else is printed meanwhile (MLflow's "View run ... at" lines, a library's notice) goes
    to stderr; and :func:`fail` prints its error as the document too (a program reading stdout then
    gets a document on failure, not nothing)."""
    global _json_errors, _document
    _json_errors = bool(getattr(args, "json", False))
    if not _json_errors:
        yield
        return
    _document = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _document = None


def fail(message: str, code: int = 1) -> int:
    """Print ``error: message`` on stderr (with ``--json`` also ``{"error", "exit_code"}`` on
    stdout); returns ``code`` for the handler to return."""
    error_line(message)
    if _json_errors:
        print(json.dumps({"error": message, "exit_code": code}, indent=2, sort_keys=True), file=_document or sys.stdout)
    return code
