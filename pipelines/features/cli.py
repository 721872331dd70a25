"""Features command: ``encode`` (clean events of a window -> an encoded dataset in the bucket)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from pipelines.cli import UsageError, add_days, days_of, fail
from pipelines.config import Settings


def _cmd_encode(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.features import encoding
    from pipelines.platform.storage import StorageError

    try:
        days = days_of(args)
    except UsageError as exc:
        return fail(str(exc), 2)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON alone
            result = encoding.encode_step(settings, days[0], days[-1], mlflow_run_id=args.mlflow_run_id)
    except (StorageError, ValueError) as exc:
        return fail(str(exc))
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def register_cli(subparsers: Any) -> None:
    """``encode --start A --end B [--mlflow-run-id ID]`` (or ``--date D`` for one day); prints JSON."""
    parser = subparsers.add_parser("encode", help="encode the clean events of a window into (user, as-of) "
                                                  "examples under features/<id>/; prints the result as JSON")
    add_days(parser)
    parser.add_argument("--mlflow-run-id", default=None, metavar="ID",
                        help="MLflow run to log the dataset URI and counts to; also names the dataset folder "
                             "(default: a hash of the window and the settings)")
    parser.set_defaults(func=_cmd_encode)
