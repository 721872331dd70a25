"""Benchmark of the data path: land + validate + preprocess side by side with DuckDB, and a long history.

Usage::

    python bench/data_bench.py                               # 10.05M-event Taobao-format file
    python bench/data_bench.py --events 1000000              # a smaller file (repeatable)
    python bench/data_bench.py --history-days 4000 --rows-per-day 300   # fixed cost per partition

Starts its own SeaweedFS (S3) on free ports and writes its files to a temporary folder (not the repo).

*File mode* writes a Taobao-format file like the official one (headerless, sorted by user then
time, ~100 events per user over the official 9-day window), with 0.5% exact duplicate rows and
0.1% of the rows given a junk timestamp outside the window (2010 .. the window start). It then
runs, each in a fresh child process so its peak memory (ru_maxrss) is its own: DuckDB reading the
file, keeping the window, dropping exact duplicates and writing day-partitioned Parquet (the
yardstick), then the product's ``land`` (window set: junk to quarantine), ``validate`` (every day
in one run: row rules, quarantine, GE Checkpoints, reports, Data Docs, hand-over) and
``preprocess``, and prints one side-by-side table.

*History mode* lands ``--history-days`` days of ``--rows-per-day`` rows (no window) and validates
and preprocesses all of them in one run each: the fixed cost per partition.

Each line shows the load average: figures are only comparable on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _memory import peak_rss_mb

WINDOW = (dt.date(2017, 11, 25), dt.date(2017, 12, 3))
WINDOW_ZONE = "Asia/Shanghai"
WINDOW_US = (1511539200, 1512316800)  # the official window in Unix seconds, [start, end)
JUNK_FROM = 1262304000  # 2010-01-01: junk timestamps lie between this and the window start
HISTORY_START = dt.date(2000, 6, 1)


def write_taobao_file(path: Path, events: int, *, seed: int = 7, dup_share: float = 0.005,
                      outside_share: float = 0.001) -> int:
    """A Taobao UserBehavior-format file of ``events`` rows: ``events / (1 + dup_share)`` distinct
    events (~100 per user, sorted by user then time, in the official window), each of ``dup_share``
    of them followed by an exact copy, ``outside_share`` of them with a junk timestamp."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    base = int(round(events / (1 + dup_share)))
    n_users = max(1, base // 100)
    users = np.sort(rng.choice(np.arange(1, 300_001), size=min(n_users, 300_000), replace=False))
    activity = rng.lognormal(0, 1.0, len(users))
    uid = np.repeat(users, rng.multinomial(base, activity / activity.sum()))
    categories = rng.choice(np.arange(1, 100_001), size=9439, replace=False)
    n_items = 4_000_000
    item_ids = rng.choice(np.arange(1, 5_163_071), size=n_items, replace=False)
    item_cat = categories[rng.integers(0, len(categories), n_items)]
    pick = (rng.zipf(1.3, base) - 1) % n_items
    ts = rng.integers(*WINDOW_US, base)
    order = np.lexsort((ts, uid))
    uid, ts = uid[order], ts[order]
    junk = rng.random(base) < outside_share
    ts[junk] = rng.integers(JUNK_FROM, WINDOW_US[0] - 86400, int(junk.sum()))
    behavior = np.array(["pv", "cart", "fav", "buy"])[
        np.searchsorted(np.cumsum([0.89, 0.055, 0.03, 0.025]), rng.random(base))]
    copies = np.sort(rng.choice(base, size=events - base, replace=False))
    idx = np.sort(np.r_[np.arange(base), copies], kind="stable")  # each copy right after its original
    table = pa.table({"u": uid[idx], "i": item_ids[pick][idx], "c": item_cat[pick][idx], "b": behavior[idx],
                      "t": ts[idx]})
    pacsv.write_csv(table, str(path), pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return table.num_rows


def write_history_file(path: Path, days: int, rows_per_day: int, *, seed: int = 3) -> int:
    """``days`` consecutive days from 2000-06-01 of ``rows_per_day`` Taobao-format rows each."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    n = days * rows_per_day
    start = int(dt.datetime.combine(HISTORY_START, dt.time(), tzinfo=dt.UTC).timestamp())
    ts = start + np.repeat(np.arange(days) * 86400, rows_per_day) + rng.integers(0, 86400, n)
    table = pa.table({"u": rng.integers(1, 5000, n), "i": rng.integers(1, 100_000, n), "c": rng.integers(1, 30, n),
                      "b": np.array(["pv", "cart", "fav", "buy"])[rng.integers(0, 4, n)], "t": ts})
    pacsv.write_csv(table, str(path), pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return n


def _phase(name: str, env: dict[str, str], args: dict[str, Any], queue: Any) -> None:
    # Each phase imports only what it runs, so the peak memory of its child process is its own.
    os.environ.update(env)
    import logging

    logging.basicConfig(level=logging.WARNING)
    load = os.getloadavg()[0]
    profiler = None
    if args.get("profile") == name:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if name == "generate":
        writer = write_history_file if args.get("history") else write_taobao_file
        size = (args["days"], args["rows_per_day"]) if args.get("history") else (args["events"],)
        out["rows"] = writer(Path(args["path"]), *size)
    elif name == "duckdb":
        import duckdb

        target = Path(args["work"]) / "duckdb-out"
        con = duckdb.connect()
        con.execute(f"""COPY (SELECT DISTINCT *, CAST(to_timestamp(ts) AT TIME ZONE 'UTC' AS DATE) AS dt
            FROM read_csv('{args['path']}', header=false, columns={{'user_id': 'VARCHAR', 'item_id': 'VARCHAR',
                 'category_id': 'VARCHAR', 'behavior_type': 'VARCHAR', 'ts': 'BIGINT'}})
            WHERE ts >= {WINDOW_US[0]} AND ts < {WINDOW_US[1]}) TO '{target}' (FORMAT parquet, PARTITION_BY (dt))""")
        out["partitions"] = len(list(target.iterdir()))
    else:
        from pipelines.config import load_settings

        window = {} if args.get("history") else {"window_start": WINDOW[0], "window_end": WINDOW[1],
                                                  "window_timezone": WINDOW_ZONE}
        settings = load_settings(environ={}, s3_endpoint_url=env["IM_S3_ENDPOINT_URL"], bucket=env["IM_BUCKET"],
                                 work_dir=Path(args["work"]) / "work",
                                 min_volume_ratio=0.0 if args.get("history") else 0.2, **window)
        if name == "land":
            from pipelines.data.landing import land_events

            res = land_events(settings, args["path"], "taobao", name="bench")
            out = {"rows": res.rows, "quarantined": res.quarantined, "reasons": res.quarantine_reasons,
                   "dates": [d.isoformat() for d in res.dates]}
        elif name == "validate":
            from pipelines.data.validation import validate_partitions

            run = validate_partitions(settings, [dt.date.fromisoformat(d) for d in args["dates"]], report_id="bench")
            out = {"rows": sum(r.rows for r in run.results), "errors": {str(k): v for k, v in run.errors.items()}}
        elif name == "preprocess":
            from pipelines.data.preprocess import preprocess_partitions

            run = preprocess_partitions(settings, [dt.date.fromisoformat(d) for d in args["dates"]])
            for r in run.results:
                assert r.rows_in == r.clean + r.quarantined + r.duplicates_dropped, r
            out = {"rows": sum(r.rows_in for r in run.results), "clean": sum(r.clean for r in run.results),
                   "errors": {str(k): v for k, v in run.errors.items()}}
    out.update(seconds=time.perf_counter() - t0, peak_mb=peak_rss_mb(), load=load)
    if profiler is not None:
        import pstats

        profiler.disable()
        for order in ("tottime", "cumulative"):
            pstats.Stats(profiler, stream=sys.stdout).sort_stats(order).print_stats(30)
    queue.put(out)


def _run_phase(name: str, env: dict[str, str], args: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_phase, args=(name, env, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"phase {name} failed with exit code {proc.exitcode}")
    if result.get("errors"):
        raise SystemExit(f"phase {name}: partitions failed: {list(result['errors'].items())[:3]}")
    return dict(result)


def _rate(events: int, seconds: float) -> str:
    per_s = events / seconds
    return f"{per_s / 1e6:.2f}M events/s" if per_s >= 1e6 else f"{per_s / 1e3:.0f}k events/s"


def bench_file(events: int, env: dict[str, str], root: Path, profile: str | None = None) -> None:
    work = root / f"file-{events}"
    work.mkdir(parents=True)
    path = work / "UserBehavior_bench.csv"
    base = {"work": str(work), "path": str(path), "profile": profile}
    rows = _run_phase("generate", env, {**base, "events": events})["rows"]  # in a child: the parent stays small
    mib = path.stat().st_size / 2**20
    duck = _run_phase("duckdb", env, base)
    land = _run_phase("land", env, base)
    val = _run_phase("validate", env, {**base, "dates": land["dates"]})
    pre = _run_phase("preprocess", env, {**base, "dates": land["dates"]})
    total = land["seconds"] + val["seconds"] + pre["seconds"]
    product_rate = rows / total
    duck_rate = rows / duck["seconds"]
    print(f"\n{rows:,} events, {mib:.0f} MiB Taobao-format CSV (0.5% exact duplicates, 0.1% junk timestamps); "
          f"landed {land['rows']:,} into {len(land['dates'])} partitions, quarantined {land['reasons']}\n")
    print("| what | time | peak memory | rate | load avg |\n|---|---|---|---|---|")
    print(f"| DuckDB: read, window filter, distinct, day-partitioned Parquet | {duck['seconds']:.1f} s | "
          f"{duck['peak_mb'] / 1024:.2f} GB | {_rate(rows, duck['seconds'])} | {duck['load']:.1f} |")
    for label, r in (("land", land), ("validate", val), ("preprocess", pre)):
        print(f"| this product: `{label}` | {r['seconds']:.1f} s | {r['peak_mb'] / 1024:.2f} GB | "
              f"{_rate(rows, r['seconds'])} | {r['load']:.1f} |")
    print(f"| this product, all three | {total:.1f} s | {max(r['peak_mb'] for r in (land, val, pre)) / 1024:.2f} GB | "
          f"{_rate(rows, total)}, {product_rate / duck_rate:.2f}x DuckDB | |", flush=True)
    shutil.rmtree(work, ignore_errors=True)


def bench_history(days: int, rows_per_day: int, env: dict[str, str], root: Path, profile: str | None = None) -> None:
    work = root / f"history-{days}"
    work.mkdir(parents=True)
    path = work / "history.csv"
    base = {"work": str(work), "path": str(path), "history": True, "profile": profile}
    rows = _run_phase("generate", env, {**base, "days": days, "rows_per_day": rows_per_day})["rows"]
    land = _run_phase("land", env, base)
    val = _run_phase("validate", env, {**base, "dates": land["dates"]})
    pre = _run_phase("preprocess", env, {**base, "dates": land["dates"]})
    n = len(land["dates"])
    print(f"\nhistory: {n:,} daily partitions of {rows_per_day} rows ({rows:,} rows)\n")
    print("| what | time | per partition | peak memory | load avg |\n|---|---|---|---|---|")
    for label, r in (("land", land), ("validate", val), ("preprocess", pre)):
        print(f"| `{label}` | {r['seconds']:.1f} s | {1000 * r['seconds'] / n:.1f} ms | "
              f"{r['peak_mb'] / 1024:.2f} GB | {r['load']:.1f} |", flush=True)
    shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, action="append",
                        help="events in the generated file (repeatable; default 10,050,000)")
    parser.add_argument("--history-days", type=int, default=0,
                        help="instead: a history of this many daily partitions (e.g. 4000)")
    parser.add_argument("--rows-per-day", type=int, default=300, help="rows per day of the history (default 300)")
    parser.add_argument("--tmp", default=None, help="scratch folder (default: a new folder under /tmp)")
    parser.add_argument("--profile", choices=("land", "validate", "preprocess"), default=None,
                        help="print cProfile's top functions of this phase (its time then includes the profiler)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipelines.devstack import services as svc

    root = Path(args.tmp or tempfile.mkdtemp(prefix="im-data-bench-"))
    env = dict(os.environ)
    env["AWS_ACCESS_KEY_ID"] = "bench-" + secrets.token_hex(4)
    env["AWS_SECRET_ACCESS_KEY"] = secrets.token_hex(16)
    seaweed = svc.start_seaweedfs(root / "seaweedfs", svc.seaweed_ports(svc.free_port()), env, "im-bench",
                                  root / "seaweedfs.log")
    try:
        env.update({"IM_S3_ENDPOINT_URL": seaweed.extra["s3_endpoint_url"], "AWS_DEFAULT_REGION": "us-east-1"})
        if args.history_days:
            env["IM_BUCKET"] = "im-bench-history"
            _ensure_bucket(env)
            bench_history(args.history_days, args.rows_per_day, env, root, args.profile)
        for i, events in enumerate(args.events or ([] if args.history_days else [10_050_000])):
            env["IM_BUCKET"] = f"im-bench-{i}"  # a bucket per size: no partition of one run mixes with another
            _ensure_bucket(env)
            bench_file(events, env, root, args.profile)
    finally:
        seaweed.stop()
        if not args.tmp:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _ensure_bucket(env: dict[str, str]) -> None:
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    from pipelines.config import load_settings
    from pipelines.platform import storage

    storage.ensure_bucket(load_settings(environ={}, s3_endpoint_url=env["IM_S3_ENDPOINT_URL"], bucket=env["IM_BUCKET"]))


if __name__ == "__main__":
    sys.exit(main())
