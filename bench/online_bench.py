"""Online scoring benchmark: latency of one user and throughput under a bounded local load, over loopback.

Starts SeaweedFS + an MLflow server on free ports, writes synthetic clean events for the look-back
window (``--users`` users), trains and registers the product's Keras model as champion with the
scoring benchmark's own steps (bench/scoring_bench.py, in a child process), then starts the online
endpoint (pipelines/online/server.py) in this process and measures:

1. latency: ``--requests`` sequential POST /v1/score for random users over one keep-alive
   connection (half of them post 3 events since the partition), p50/p99/max in milliseconds;
2. throughput: ``--clients`` client processes (``bench/_load_client.py``, standard library only,
   started before the measured window), each one keep-alive connection sending requests back to
   back for ``--seconds`` seconds; requests/s, the p50/p99 seen under that load and the CPU
   seconds the endpoint and the clients used.

The clients run on the same machine as the server (loopback only), so they take CPU from it: the
figures are for the whole machine. It prints the load average at the end.

    .venv/bin/python bench/online_bench.py                 # 10,000 users, 16 clients for 10 s
    .venv/bin/python bench/online_bench.py --clients 4 --seconds 20
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import http.client
import json
import logging
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _load_client as load_client  # noqa: E402  # the load clients' request bodies and timing
import scoring_bench as sb  # noqa: E402  # the scoring benchmark's generator and training child

from pipelines.config import load_settings  # noqa: E402
from pipelines.devstack import services  # noqa: E402
from pipelines.online import server as online  # noqa: E402


def _body(rng: random.Random, users: int, post_events: bool) -> bytes:
    return load_client.body(rng, users, (sb.AS_OF_DATE + dt.timedelta(days=1)).isoformat(), post_events)


def _load(port: int, token_file: Path, users: int, clients: int, seconds: float, seed: int) -> tuple[list[float], float]:
    """``clients`` client processes (bench/_load_client.py: standard library only), started first and
    all sending from the same instant for ``seconds``; returns every latency and the wall time."""
    start_at = time.time() + 2.0 + 0.05 * clients  # every client is up and connected before it
    day = (sb.AS_OF_DATE + dt.timedelta(days=1)).isoformat()
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent / "_load_client.py"), str(port),
                               str(token_file), str(users), day, f"{start_at:.3f}", str(seconds), str(seed + i)],
                              stdout=subprocess.PIPE, text=True) for i in range(clients)]
    t0 = time.monotonic()
    outputs = [p.communicate(timeout=seconds + 120)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a load client failed (exit codes {[p.returncode for p in procs]})")
    return [t for out in outputs for t in json.loads(out)], time.monotonic() - t0


def _ms(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times) * 1000.0, q)) if times else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000, help="users in the look-back window (default 10,000)")
    parser.add_argument("--days", type=int, default=30, help="look-back window length (lookback_days)")
    parser.add_argument("--events-per-user", type=int, default=20, help="mean events per user in the window")
    parser.add_argument("--categories", type=int, default=2_000, help="categories the generator draws from")
    parser.add_argument("--train-users", type=int, default=1_000, help="users in the training window")
    parser.add_argument("--requests", type=int, default=1_000, help="sequential requests of the latency phase")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client processes of the load phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the load phase")
    parser.add_argument("--seed", type=int, default=7, help="generator seed")
    parser.add_argument("--returning-users", type=int, default=0,
                        help="requests draw their user from the first N users only (returning users, answered "
                             "from the endpoint's cache when they post no events); default 0: from all users")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    root = Path(tempfile.mkdtemp(prefix="online-bench-"))
    env = dict(os.environ)
    env["AWS_ACCESS_KEY_ID"] = "bench-" + secrets.token_hex(4)
    env["AWS_SECRET_ACCESS_KEY"] = secrets.token_hex(16)
    bucket = "bench"
    started: list[services.Process] = []
    server = None
    try:
        seaweed = services.start_seaweedfs(root / "seaweedfs", services.seaweed_ports(services.free_port()), env,
                                           bucket, root / "logs" / "seaweedfs.log", record=started.append)
        env["MLFLOW_S3_ENDPOINT_URL"] = seaweed.extra["s3_endpoint_url"]
        mlflow_proc = services.start_mlflow(services.free_port(), root / "mlflow.db", f"s3://{bucket}/mlflow",
                                            env, root / "logs" / "mlflow.log")
        started.append(mlflow_proc)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
            os.environ[key] = env[key]
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # the endpoint's model download: no bar
        token_file = root / "online_token"
        token_file.write_text(secrets.token_urlsafe(32))
        overrides: dict[str, Any] = {
            "s3_endpoint_url": seaweed.extra["s3_endpoint_url"], "bucket": bucket,
            "mlflow_tracking_uri": mlflow_proc.extra["tracking_uri"], "lookback_days": args.days,
            "work_dir": root / "work"}
        settings = load_settings(environ={}, **overrides)
        train_end = sb.AS_OF_DATE - dt.timedelta(days=args.days)
        sb.write_events(settings, sb.generate_events(args.train_users, 21, args.events_per_user, args.categories,
                                                     args.seed + 1, end=train_end))
        trained = sb.run_child("--train-only", {
            "settings": {**overrides, "work_dir": str(root / "train-work"), "epochs": 1, "asof_step_days": 2},
            "train_start": (train_end - dt.timedelta(days=20)).isoformat(), "train_end": train_end.isoformat(),
            "run_key": "online-bench-" + secrets.token_hex(4)})
        events = sb.write_events(settings, sb.generate_events(args.users, args.days, args.events_per_user,
                                                              args.categories, args.seed))
        settings = dataclasses.replace(settings, online_token_file=token_file, online_reload_seconds=3600.0)
        t0 = time.monotonic()
        server = online.start(settings, port=0)
        state = server.reloader.state
        print(f"champion version {trained['model_version']} ({trained['categories']} categories); look-back "
              f"{state.day} with {events:,} events of {len(state.rows_of):,} users; endpoint loaded in "
              f"{time.monotonic() - t0:.1f}s")
        port, token = server.port, token_file.read_text()

        rng = random.Random(args.seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(20):  # warm-up: the model's first calls trace its graph
            load_client.post(conn, token, _body(rng, args.users, rng.random() < 0.5))
        times = [load_client.post(conn, token, _body(rng, args.users, i % 2 == 1)) for i in range(args.requests)]
        conn.close()
        print(f"latency, one client, {args.requests} sequential requests (half post 3 events): p50 "
              f"{_ms(times, 50):.1f} ms, p99 {_ms(times, 99):.1f} ms, max {max(times) * 1000:.1f} ms "
              f"(target p99 <= 50 ms)")

        pool_users = args.returning_users or args.users
        cpu0 = os.times()
        loaded, wall = _load(port, token_file, pool_users, args.clients, args.seconds, args.seed)
        cpu1 = os.times()
        server_cpu = cpu1.user - cpu0.user + cpu1.system - cpu0.system
        client_cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
        print(f"throughput, {args.clients} concurrent clients for {args.seconds:.0f}s over loopback, users drawn "
              f"from {pool_users:,}: "
              f"{len(loaded) / args.seconds:,.0f} requests/s ({len(loaded):,} requests; CPU seconds: endpoint "
              f"{server_cpu:.1f}, clients {client_cpu:.1f}, wall {wall:.1f}s); "
              f"latency under load p50 {_ms(loaded, 50):.1f} ms, p99 {_ms(loaded, 99):.1f} ms "
              f"(target >= 1,000 requests/s)")
        load = os.getloadavg()
        print(f"machine: {os.cpu_count()} CPUs; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        return 0
    finally:
        if server is not None:
            server.stop()
        for proc in reversed(started):
            proc.stop()


if __name__ == "__main__":
    sys.exit(main())
