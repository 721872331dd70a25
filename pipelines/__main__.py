"""One command line for every step: ``python -m pipelines <step> ...`` (also ``interest-migration``).

Each stage module that offers steps defines ``register_cli(subparsers)``, adding its
sub-commands with ``set_defaults(func=handler)``; a handler takes the parsed arguments and the
:class:`~pipelines.config.Settings` and returns an exit code. Stage modules keep heavy imports
(TensorFlow, MLflow, Great Expectations) inside functions, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipelines.config import ConfigError, load_settings, settings_table

STAGE_MODULES = (
    "pipelines.data.sources",
    "pipelines.data.synthetic",
    "pipelines.data.validation",
    "pipelines.data.preprocess",
    "pipelines.features.encoding",
    "pipelines.model.train",
    "pipelines.model.evaluate",
    "pipelines.model.registry",
    "pipelines.serving.scoring",
    "pipelines.serving.predictions",
    "pipelines.devstack.stack",
)


def _cmd_config(args: argparse.Namespace, settings: object) -> int:
    """Print every setting: variable, current value, default and meaning."""
    current = settings.describe()  # type: ignore[attr-defined]
    for var, default, doc in settings_table():
        name = var.removeprefix("IM_").lower()
        print(f"{var:<38} {current[name]!s:<32} (default {default or '-'}) {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<step>")
    config = sub.add_parser("config", help="print the effective settings (IM_* variables)")
    config.set_defaults(func=_cmd_config)
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        register = getattr(module, "register_cli", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
