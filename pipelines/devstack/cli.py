"""``python -m pipelines stack up|down|status|env|run`` (``make up``, ``make down``, ``make status``,
``make env``, ``make run``); with ``--team`` the same commands act on the team stack (``make up-team``,
``make down-team``, ``make status-team``: PostgreSQL, Redis, CeleryExecutor with ``--workers`` workers).

The stack's folder and ports come from the settings (``IM_STACK_*``); once it runs, ``status``,
``env`` and ``run`` use what ``stack.json`` recorded at ``up``. Errors go to stderr as one
``error: ...`` line. The ``run`` handler imports the demo (MLflow, pyarrow) only when it runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.cli import Handler, add_json, fail
from pipelines.config import Settings, env_name
from pipelines.devstack import lifecycle, processes
from pipelines.devstack.config import DEFAULT_WORKERS, StackConfig, StackError, default_config, port_variables
from pipelines.devstack.environment import export_lines
from pipelines.devstack.services import ServiceError
from pipelines.devstack.state import running_config


def _config(args: argparse.Namespace, settings: Settings) -> StackConfig:
    return default_config(settings, team=getattr(args, "team", False),
                          workers=getattr(args, "workers", DEFAULT_WORKERS))


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    if args.workers < 1:
        return fail(f"--workers {args.workers}: at least one worker")
    try:
        lifecycle.up(_config(args, settings))
    except (StackError, ServiceError) as exc:
        return fail(f"stack up failed: {exc}")
    return 0


def _cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    try:
        lifecycle.down(running_config(_config(args, settings)))
    except StackError as exc:
        return fail(f"stack down: {exc}")
    return 0


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    cfg = running_config(_config(args, settings))
    try:
        report = lifecycle.status(cfg)
    except StackError as exc:
        return fail(f"stack status: {exc}")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["up"] else 1
    if not report["processes"]:
        print(f"stack is down (no {cfg.state_file})")
        for pid in report["stray"]:
            print(f"  stray stack process {pid}: {processes.describe(pid)} (`make down` ends it)")
        return 1
    for name, proc in report["processes"].items():
        health = {True: "healthy", False: "NOT ANSWERING", None: "-"}[proc["healthy"]]
        print(f"  {name:<14} pid {proc['pid']:<8} {'running' if proc['running'] else 'STOPPED':<8} "
              f"{health:<14} {proc['log']}")
    print(lifecycle.summary_lines(cfg, None))
    print("stack is up" if report["up"] else "stack is NOT fully up: `make down && make up` restarts it")
    return 0 if report["up"] else 1


def _cmd_env(args: argparse.Namespace, settings: Settings) -> int:
    cfg = running_config(_config(args, settings))
    if not cfg.env_file.exists():
        return fail(f"no {cfg.env_file} yet: run `make up` first")
    print("\n".join(export_lines(cfg)))
    return 0


def _cmd_compose_env(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.devstack.compose_env import write_compose_env

    try:
        path = write_compose_env(args.out, force=args.force)
    except OSError as exc:
        return fail(f"stack compose-env: {exc}")
    print(f"wrote {path} (mode 0600) with generated secrets for docker-compose.yml; values not shown")
    return 0


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.devstack import demo

    cfg = running_config(default_config(settings))
    try:
        ok = demo.run_demo(cfg, retrain=args.retrain, score_days=args.score_days, users=args.users, days=args.days,
                           categories=args.categories, seed=args.seed, timeout=args.timeout,
                           strict_gate=args.strict_gate or settings.stack_strict_gate)
    except demo.DEMO_FAILURES as exc:
        return fail(f"stack run failed: {exc}")
    return 0 if ok else 1


def register_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``stack up|down|status|env|run``."""
    stack = subparsers.add_parser(
        "stack", help="the embedded dev stack (SeaweedFS, MLflow, Airflow) under .local/ (Linux only)",
        description=f"Run the embedded stack on 127.0.0.1 (Linux only: it reads /proc). State lives in .local/ "
                    f"(or {env_name('stack_root_dir')}). Ports: {', '.join(port_variables())} (defaults 8333, "
                    f"5000, 8080, 18330; SeaweedFS's internal listeners and Airflow's log servers use the 14 "
                    f"ports from the base). {env_name('stack_use_schedule')}=1 lets the scheduler create "
                    f"scheduled runs (off: runs happen when triggered or backfilled).")
    sub = stack.add_subparsers(dest="stack_command", metavar="<command>", required=True,
                                help="what to do with the stack")
    def command(name: str, handler: Handler, summary: str, details: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=summary, description=details)
        parser.set_defaults(func=handler)
        return parser

    def team_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--team", action="store_true", help="the team stack (PostgreSQL, Redis, CeleryExecutor; "
                            "state in <stack folder>/team) instead of the embedded one")
        return parser

    up = team_flag(command("up", _cmd_up, "start the stack and wait until every service answers",
                           "Start the stack (credentials are generated on the first start; it prints where "
                           "they are, never their values)."))
    up.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                    help=f"Celery workers of the team stack ({DEFAULT_WORKERS})")
    team_flag(command("down", _cmd_down, "stop every stack process (data is kept)",
                      "Stop every process of the stack, leftovers (workers, task runners) included; data stays."))
    add_json(team_flag(command("status", _cmd_status, "show each process, its health and the URLs",
                               "Show each process, its health and the URLs; exit code 1 when the stack is not "
                               "fully up.")))
    team_flag(command("env", _cmd_env, "print `export` lines for the stack (secrets read from their files)",
                      "Print `export` lines for the running stack: eval \"$(make -s env)\"."))
    compose_env = command("compose-env", _cmd_compose_env, "write .env for docker-compose.yml with generated secrets",
                          "Write docker-compose.yml's .env (mode 0600) with every secret generated; prints where, "
                          "never a value.")
    compose_env.add_argument("--out", type=Path, default=Path(".env"), help="file to write (.env)")
    compose_env.add_argument("--force", action="store_true", help="replace an existing file (its secrets are in "
                             "the volumes: PostgreSQL keeps its first password)")
    run = command("run", _cmd_run, "the demo: up, synthetic data, train, backfill scoring, summary",
                  "The demo: up, synthetic data, train, backfill scoring, summary. Idempotent: a second run "
                  "reuses the data and the training run.")
    run.add_argument("--retrain", action="store_true", help="train again even if this data window has a "
                     "successful training run")
    run.add_argument("--score-days", type=int, default=3, help="score the last N days of the window (3)")
    run.add_argument("--users", type=int, default=2000, help="synthetic users (2000)")
    run.add_argument("--days", type=int, default=21, help="synthetic days (21)")
    run.add_argument("--categories", type=int, default=40, help="synthetic categories (40)")
    run.add_argument("--seed", type=int, default=7, help="synthetic data seed (7)")
    run.add_argument("--timeout", type=float, default=3600, help="seconds to wait for each DAG (3600)")
    run.add_argument("--strict-gate", action="store_true", help="stop when the gate promotes no champion "
                     f"(default: the demo promotes the first version by hand and says so; also "
                     f"{env_name('stack_strict_gate')}=1)")
