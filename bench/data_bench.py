"""Benchmark of the data layer: generate -> land -> validate + preprocess, events/s and peak memory.

Usage: ``python bench/data_bench.py --events 1000000 [--events 10000000] [--days 30]``

Starts its own SeaweedFS (S3) on free ports, writes synthetic Taobao-format logs to a temporary
folder (not the repo), lands them, then validates and preprocesses every partition. Each phase
runs in a fresh child process so its peak memory (ru_maxrss) is its own. The figure that matters
is "validate+preprocess": events/s over all partitions and the peak RSS of that process
(validation hands its valid rows to preprocessing through staging/validated/, as in the DAG).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import resource
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

START = dt.date(2017, 11, 1)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _phase(name: str, env: dict[str, str], args: dict[str, Any], queue: Any) -> None:
    # Each phase imports only what it runs, so the peak memory of its child process is its own.
    os.environ.update(env)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from pipelines.config import load_settings

    settings = load_settings(environ={}, s3_endpoint_url=env["IM_S3_ENDPOINT_URL"], bucket=env["IM_BUCKET"],
                             work_dir=Path(args["work"]) / "work", min_volume_ratio=0.2)
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if name == "generate":
        from pipelines.data.synthetic import generate_taobao

        users = max(10, round(args["events"] / (args["days"] * 5.0)))
        gen = generate_taobao(Path(args["work"]) / "gen", users=users, days=args["days"], categories=300,
                              start=START, seed=1)
        out = {"rows": gen.rows, "path": str(gen.events_path), "bytes": gen.events_path.stat().st_size}
    elif name == "land":
        from pipelines.data.landing import land_events

        res = land_events(settings, args["path"], "taobao", name="bench")
        out = {"rows": res.rows, "dates": [d.isoformat() for d in res.dates]}
    elif name == "process":
        from pipelines.data.preprocess import preprocess_partition
        from pipelines.data.validation import validate_partition

        rows = clean = 0
        validate_s = preprocess_s = 0.0
        for text in args["dates"]:
            d = dt.date.fromisoformat(text)
            a = time.perf_counter()
            res = validate_partition(settings, d, report_id="bench")
            b = time.perf_counter()
            validate_s += b - a
            pre = preprocess_partition(settings, d)
            preprocess_s += time.perf_counter() - b
            assert pre.rows_in == pre.clean + pre.quarantined + pre.duplicates_dropped
            rows += res.rows
            clean += pre.clean
        out = {"rows": rows, "clean": clean, "validate_s": validate_s, "preprocess_s": preprocess_s}
    out["seconds"] = time.perf_counter() - t0
    out["peak_mb"] = _peak_mb()
    queue.put(out)


def _run_phase(ctx: Any, name: str, env: dict[str, str], args: dict[str, Any]) -> dict[str, Any]:
    queue = ctx.Queue()
    proc = ctx.Process(target=_phase, args=(name, env, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"phase {name} failed with exit code {proc.exitcode}")
    return dict(result)


def bench(events: int, days: int, env: dict[str, str], root: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    work = root / f"run-{events}"
    work.mkdir(parents=True)
    base = {"events": events, "days": days, "work": str(work)}
    gen = _run_phase(ctx, "generate", env, base)
    land = _run_phase(ctx, "land", env, {**base, "path": gen["path"]})
    proc = _run_phase(ctx, "process", env, {**base, "dates": land["dates"]})
    shutil.rmtree(work, ignore_errors=True)
    return {"events": gen["rows"], "csv_mib": gen["bytes"] / 2**20, "generate": gen, "land": land, "process": proc}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, action="append", help="events to generate (repeatable)")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--tmp", default=None, help="scratch folder (default: a new folder under /tmp)")
    args = parser.parse_args(argv)
    sizes = args.events or [1_000_000]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipelines.devstack import services as svc

    root = Path(args.tmp or tempfile.mkdtemp(prefix="im-data-bench-"))
    env = dict(os.environ)
    env["AWS_ACCESS_KEY_ID"] = "bench-" + secrets.token_hex(4)
    env["AWS_SECRET_ACCESS_KEY"] = secrets.token_hex(16)
    bucket = "im-bench"
    seaweed = svc.start_seaweedfs(root / "seaweedfs", svc.seaweed_ports(svc.free_port()), env, bucket,
                                  root / "seaweedfs.log")
    try:
        env.update({"IM_S3_ENDPOINT_URL": seaweed.extra["s3_endpoint_url"], "IM_BUCKET": bucket,
                    "AWS_DEFAULT_REGION": "us-east-1"})
        print(f"{'events':>10} {'csv MiB':>8} | {'land ev/s':>10} {'land MB':>8} | "
              f"{'validate+preprocess ev/s':>24} {'peak MB':>8} {'seconds':>8} {'(validate s)':>12} {'(preprocess s)':>14}")
        for n in sizes:
            env["IM_BUCKET"] = bucket
            r = bench(n, args.days, env, root)
            land, proc = r["land"], r["process"]
            print(f"{r['events']:>10} {r['csv_mib']:>8.0f} | {land['rows'] / land['seconds']:>10,.0f} "
                  f"{land['peak_mb']:>8.0f} | {proc['rows'] / proc['seconds']:>24,.0f} {proc['peak_mb']:>8.0f} "
                  f"{proc['seconds']:>8.1f} {proc['validate_s']:>12.1f} {proc['preprocess_s']:>14.1f}", flush=True)
            # The next size lands under the same name: landing replaces, so partitions do not mix.
    finally:
        seaweed.stop()
        if not args.tmp:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
