"""``python -m pipelines training``: the training DAG's tasks in this process, without Airflow."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from pipelines.cli import UsageError, add_days, add_json, days_of, emit, fail
from pipelines.config import Settings


def _cmd_training(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.flows import training as flows

    try:
        days = days_of(args)
    except UsageError as exc:
        return fail(str(exc), 2)
    run_name = args.run_name or dt.datetime.now(dt.UTC).strftime("cli-%Y%m%dT%H%M%SZ")
    say = (lambda _: None) if args.json else (lambda text: print(f"training: {text}", flush=True))
    try:
        results = flows.run_training(settings, data_start=days[0].isoformat() if days else None,
                                     data_end=days[-1].isoformat() if days else None, run_name=run_name,
                                     progress=say)
    except Exception as exc:  # every step raises its own error type; the message names the cause
        return fail(f"training {run_name} failed: {type(exc).__name__}: {exc}")
    decision = results["register"]
    emit(args, results, f"training: {decision['model_name']} version {decision['model_version']} "
                        f"{decision['decision']}: {decision['reason']}")
    return 0


def register_cli(subparsers: Any) -> None:
    """``training [--start A --end B] [--run-name NAME]``."""
    parser = subparsers.add_parser(
        "training", help="run the training DAG's tasks in this process: open the MLflow run, validate, "
                         "preprocess, encode, train, evaluate, register (the promotion gate)")
    add_days(parser, required=False)
    parser.add_argument("--run-name", default=None, help="names the MLflow run; the same name resumes it "
                                                         "(default: cli-<UTC time>)")
    add_json(parser)
    parser.set_defaults(func=_cmd_training)
