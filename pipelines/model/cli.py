"""Model commands: ``train``, ``evaluate`` and ``promote`` (move the champion alias by hand).

``train`` and ``evaluate`` print their result as JSON; ``promote`` prints one line, or JSON with
``--json``. Handlers import the training and evaluation modules (TensorFlow, MLflow) only when they
run; the registry module is light (it imports MLflow inside its functions).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

from pipelines.cli import add_json, emit, fail
from pipelines.config import Settings
from pipelines.model import registry
from pipelines.platform.tracking import TrackingUnavailable, first_line


def _run_step(step: Callable[[], Any]) -> int:
    """Run a training or evaluation step: its result as JSON on stdout, a known failure (missing
    dataset, unknown run or model, too little data) as one error line on stderr."""
    from mlflow.exceptions import MlflowException

    from pipelines.platform.storage import StorageError

    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON alone (MLflow prints "View run")
            result = step()
    except (FileNotFoundError, MlflowException, StorageError, TrackingUnavailable, ValueError) as exc:
        return fail(str(exc))
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.model import train

    return _run_step(lambda: train.train_step(settings, args.dataset_uri, mlflow_run_id=args.mlflow_run_id))


def _cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.model import evaluate

    if args.mlflow_run_id:
        return _run_step(lambda: evaluate.evaluate_step(settings, args.dataset_uri, args.model_uri,
                                                        mlflow_run_id=args.mlflow_run_id))
    return _run_step(lambda: evaluate.evaluate_model_uri(settings, args.dataset_uri, args.model_uri))


def _cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    try:
        moved = registry.promote_version(settings, args.version, alias=args.alias, reason=args.reason)
    except (registry.RegistryError, TrackingUnavailable) as exc:
        return fail(str(exc))
    emit(args, moved, f"{moved['model_name']}@{moved['alias']}: version {moved['previous'] or 'none'} -> "
                      f"{moved['current']}")
    return 0


def _cmd_register(args: argparse.Namespace, settings: Settings) -> int:
    from mlflow.exceptions import MlflowException

    try:
        decision = registry.register_step(settings, mlflow_run_id=args.mlflow_run_id, model_uri=args.model_uri,
                                          dataset_uri=args.dataset_uri)
    except (registry.RegistryError, TrackingUnavailable) as exc:
        return fail(str(exc))
    except MlflowException as exc:  # an unknown run id: the server's answer, its first line
        return fail(f"register: MLflow run {args.mlflow_run_id!r}: {first_line(exc)}")
    emit(args, decision, f"{decision['model_name']} version {decision['model_version']} {decision['decision']}: "
                         f"{decision['reason']}")
    return 0


def register_cli(subparsers: Any) -> None:
    """``train --dataset-uri S3 --mlflow-run-id ID``, ``evaluate --dataset-uri S3 --model-uri URI
    [--mlflow-run-id ID]`` and ``promote --version N [--alias A] [--reason TEXT] [--json]``."""
    train = subparsers.add_parser("train", help="fit the model on an encoded dataset and log it to an MLflow run "
                                                "as a pyfunc model; prints the result as JSON")
    train.add_argument("--dataset-uri", required=True, metavar="S3_URI",
                       help="encoded dataset folder, s3://<bucket>/features/<id>/ (the output of encode)")
    train.add_argument("--mlflow-run-id", required=True, metavar="ID",
                       help="MLflow run the model, params and training metrics are logged to")
    train.set_defaults(func=_cmd_train)

    evaluate = subparsers.add_parser("evaluate", help="evaluate a model and the baselines on a dataset's test "
                                                      "split; prints the metrics as JSON")
    evaluate.add_argument("--dataset-uri", required=True, metavar="S3_URI",
                          help="encoded dataset folder, s3://<bucket>/features/<id>/")
    evaluate.add_argument("--model-uri", required=True, metavar="URI",
                          help="pyfunc model to evaluate: runs:/<run>/model, models:/<name>/<version> or "
                               "models:/<name>@<alias>")
    evaluate.add_argument("--mlflow-run-id", default=None, metavar="ID",
                          help="log metrics, table and plots (model and baselines) to this run; without it, "
                               "print the model's metrics only")
    evaluate.set_defaults(func=_cmd_evaluate)

    register = subparsers.add_parser("register", help="register a run's model as a new version (alias "
                                                      "challenger) and apply the promotion gate")
    register.add_argument("--mlflow-run-id", required=True, metavar="ID",
                          help="the training run: its model/... and baseline/... metrics decide the gate")
    register.add_argument("--model-uri", required=True, metavar="URI", help="the run's model, runs:/<run>/model")
    register.add_argument("--dataset-uri", required=True, metavar="S3_URI",
                          help="the encoded dataset whose test split the champion is re-evaluated on")
    add_json(register)
    register.set_defaults(func=_cmd_register)

    promote = subparsers.add_parser("promote", help="move the champion alias to a model version by hand "
                                                    "(promotion or rollback); prints the previous version")
    promote.add_argument("--version", required=True, help="registered model version number")
    promote.add_argument("--alias", default=registry.CHAMPION, help=f"alias to move (default: {registry.CHAMPION})")
    promote.add_argument("--reason", default="manual", help="why, recorded on the version (default: manual)")
    add_json(promote)
    promote.set_defaults(func=_cmd_promote)
