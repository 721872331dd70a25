"""Online scoring command: ``serve-online`` (the endpoint of :mod:`pipelines.online.server`, in the foreground)."""

from __future__ import annotations

import argparse
import dataclasses
import threading

from pipelines.cli import fail
from pipelines.config import Settings


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.online.server import start

    if args.port is not None:
        settings = dataclasses.replace(settings, online_port=args.port)
    try:
        server = start(settings)
    except (ValueError, OSError) as exc:
        return fail(f"serve-online: {exc}")
    print(f"online scoring on {server.url} (POST /v1/score, GET /healthz); Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve-online", help="serve the champion over HTTP on 127.0.0.1 (POST /v1/score)")
    serve.add_argument("--port", type=int, default=None, help="port (default IM_ONLINE_PORT; 0 picks a free one)")
    serve.set_defaults(func=_cmd_serve)
