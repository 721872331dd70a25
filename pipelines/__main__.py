"""One command line for every step: ``python -m pipelines <step> ...`` (also ``interest-migration``).

Each stage package has a ``cli`` module whose ``register_cli(subparsers)`` adds its sub-commands
with ``set_defaults(func=handler)``; a handler takes the parsed arguments and the
:class:`~pipelines.config.Settings` and returns an exit code. The conventions every command
follows (``--date`` / ``--start --end``, ``--json``, errors on stderr) are in :mod:`pipelines.cli`.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from pipelines.cli import add_json, emit, fail, json_output
from pipelines.config import ConfigError, Settings, load_settings, settings_table

STAGE_CLIS = (
    "pipelines.flows.cli",
    "pipelines.data.cli",
    "pipelines.features.cli",
    "pipelines.model.cli",
    "pipelines.serving.cli",
    "pipelines.devstack.cli",
    "pipelines.ops.cli",
    "pipelines.privacy.cli",
    "pipelines.online.cli",
)


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print every setting: variable, current value, default and meaning."""
    current = settings.describe()
    rows = [{"variable": var, "value": current[var.removeprefix("IM_").lower()], "default": default, "meaning": doc}
            for var, default, doc in settings_table()]
    emit(args, rows, lambda: "\n".join(
        f"{r['variable']:<38} {r['value']!s:<32} (default {r['default'] or '-'}) {r['meaning']}" for r in rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<step>")
    config = sub.add_parser("config", help="print the effective settings (IM_* variables)")
    add_json(config)
    config.set_defaults(func=_cmd_config)
    for name in STAGE_CLIS:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        _quiet_libraries()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with json_output(args):
        return _run(args)


def _quiet_libraries() -> None:
    """Leave out the libraries' start-up notices (``--verbose`` keeps them): Great Expectations logs
    about 200 INFO lines per process ("Skipping registering function ...", its datasources as a
    bare ``[]``), botocore one per client, TensorFlow's C++ layer its CPU features and oneDNN."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read when TensorFlow is imported (later, if at all)
    for name in ("great_expectations", "botocore.credentials"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        return fail(f"configuration: {exc}", 2)
    from pipelines.platform.storage import StorageError

    try:
        return int(args.func(args, settings) or 0)
    except StorageError as exc:  # the store unreachable, a bucket or key missing: named, one line
        return fail(f"{args.command} failed: {exc}")
    except OSError as exc:  # a full disk, a permission, a vanished folder: one line, not a traceback
        where = ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
            where = f" (work folder {settings.work_dir}, IM_WORK_DIR: free space there and run it again)"
        return fail(f"{args.command} failed: {exc}{where}")


if __name__ == "__main__":
    sys.exit(main())
