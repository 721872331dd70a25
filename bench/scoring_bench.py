"""Scoring benchmark: users scored end to end for one day, from clean partitions in S3 to a published
partition, on the real embedded services.

Starts SeaweedFS + an MLflow server on free ports (as the tests do), writes synthetic clean events
for the look-back window (``--users`` users, about ``--events-per-user`` events each, spread over
``--days`` days) into a bucket of their own, puts a champion in the registry, and runs the scoring
steps (resolve, plan, every shard, publish) in a child process, printing the time of each phase,
users/second and the child's peak RSS (the services run in their own processes and are not counted).

    .venv/bin/python bench/scoring_bench.py                      # 100k users, ~1k categories, the Keras model
    .venv/bin/python bench/scoring_bench.py --scale-curve        # 10k, 100k and 1M users, one table
    .venv/bin/python bench/scoring_bench.py --categories 20000 --train-users 20000 --min-category-count 2
                                                                 # Taobao's scale: ~10k categories
    .venv/bin/python bench/scoring_bench.py --model baseline     # a pyfunc from elsewhere, through predict

``--model keras`` (default) trains the product's model with the product's own steps before scoring:
synthetic events of ``--train-users`` users over the ``--train-days`` days *before* the scoring
window are written as clean partitions, then a child process (this script with ``--train-only``)
opens an MLflow run, runs ``encoding.encode_step`` and ``train.train_step`` (1 epoch), registers the
logged model and sets the ``champion`` alias. The vocabulary (the model's V) is what that window
keeps. The scoring window holds all ``--users`` users, so most scored users were never seen in
training. ``--model baseline`` logs a vectorised decayed-frequency + popularity pyfunc instead: it
obeys the public scoring contract, so it measures the path of champions from elsewhere.
``--profile N`` runs the scoring phase under cProfile and prints the N most expensive functions
(profiling slows the Python-heavy parts, so its timings are not the figures). ``--log-level INFO``
shows the product's own log lines (e.g. how long the model's checked copy took to fetch).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _memory import peak_rss_mb

from pipelines.config import Settings, load_settings
from pipelines.contracts import BEHAVIORS, EVENT_SCHEMA
from pipelines.devstack import services
from pipelines.platform import layout, storage
from pipelines.serving import scoring

AS_OF_DATE = dt.date(2024, 6, 30)


def _pyfunc_base() -> type:
    import mlflow

    return mlflow.pyfunc.PythonModel


class VectorFrequencyModel(_pyfunc_base()):  # type: ignore[misc]
    """Decayed user category frequency (80%) + global popularity (20%), vectorised over users."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = params or {}
        as_of = pd.Timestamp(params["as_of"])
        top_n = int(params.get("top_n", 50))
        frame = model_input.loc[model_input["ts"] < as_of, ["user_id", "category_id", "ts"]]
        age = (as_of - frame["ts"]).dt.total_seconds().to_numpy() / 86400.0
        weights = pd.DataFrame({"user_id": frame["user_id"].to_numpy(), "category_id": frame["category_id"].to_numpy(),
                                "w": np.exp2(-age / 7.0)})
        per_user = weights.groupby(["user_id", "category_id"], sort=False)["w"].sum().reset_index()
        per_user["w"] = 0.8 * per_user["w"] / per_user.groupby("user_id")["w"].transform("sum")
        popular = frame["category_id"].value_counts(normalize=True).head(top_n)
        users = pd.unique(model_input["user_id"])
        candidates = pd.DataFrame({"user_id": np.repeat(users, len(popular)),
                                   "category_id": np.tile(popular.index.to_numpy(), len(users)),
                                   "w": np.tile(0.2 * popular.to_numpy(), len(users))})
        scored = (pd.concat([per_user, candidates]).groupby(["user_id", "category_id"], sort=False)["w"].sum()
                  .reset_index().sort_values(["user_id", "w"], ascending=[True, False]))
        top = scored.groupby("user_id", sort=False).head(top_n)
        owner = top["user_id"].to_numpy()
        bounds = np.flatnonzero(owner[1:] != owner[:-1]) + 1
        return pd.DataFrame({
            "user_id": owner[np.r_[0, bounds]] if len(owner) else owner,
            "categories": [part.tolist() for part in np.split(top["category_id"].to_numpy(), bounds)] if len(owner) else [],
            "scores": [part.tolist() for part in np.split(top["w"].to_numpy(), bounds)] if len(owner) else []})


def generate_events(users: int, days: int, events_per_user: int, categories: int, seed: int,
                    end: dt.date = AS_OF_DATE) -> Iterator[tuple[dt.date, Any]]:
    """Yield (day, clean events table) for each day of the ``days`` days ending on ``end``, one day
    in memory at a time.

    Each user has a favourite category (Zipf-popular) and a drift category that takes over half
    of its favourite's share in the last 40% of the window; 30% of events go to popular categories.
    """
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    favourite = rng.zipf(1.3, users) % categories
    drift = rng.integers(0, categories, users)
    start = dt.datetime.combine(end - dt.timedelta(days=days - 1), dt.time(), tzinfo=dt.UTC)
    per_day = users * events_per_user // days
    cover = -(-users // days)  # every user gets at least one event somewhere in the window
    for offset in range(days):
        user_index = rng.integers(0, users, per_day)
        user_index[:cover] = np.arange(offset * cover, (offset + 1) * cover) % users
        own = np.where((offset > days * 0.6) & (rng.random(per_day) < 0.5), drift[user_index], favourite[user_index])
        pick = np.where(rng.random(per_day) < 0.7, own, rng.zipf(1.2, per_day) % categories)
        ts = pd.Timestamp(start) + pd.to_timedelta(offset * 86_400 + rng.integers(0, 86_400, per_day), unit="s")
        table = pa.table({
            "user_id": pa.array(np.char.add("u", user_index.astype(str))),
            "item_id": pa.array(np.char.add("i", rng.integers(0, 1_000_000, per_day).astype(str))),
            "category_id": pa.array(np.char.add("c", pick.astype(str))),
            "behavior": pa.array(np.array(BEHAVIORS[:4])[rng.choice(4, per_day, p=[0.88, 0.05, 0.04, 0.03])]),
            "ts": pa.array(ts.as_unit("us")),
            "value": pa.nulls(per_day, pa.float64()),
        }).cast(EVENT_SCHEMA)
        yield start.date() + dt.timedelta(days=offset), table


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_events(settings: Settings, events: Iterator[tuple[dt.date, Any]]) -> int:
    """Write each (day, table) as ``clean/events/dt=D/part-00000.parquet``; returns the row count."""
    rows = 0
    for day, table in events:
        storage.write_parquet(settings, layout.clean_key(day), table)
        rows += table.num_rows
    return rows


def register_baseline(settings: Settings) -> None:
    """Log :class:`VectorFrequencyModel` as a pyfunc, register it and make it champion."""
    import cloudpickle
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    from pipelines.model import registry
    from pipelines.platform import tracking

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    signature = ModelSignature(inputs=None, outputs=None, params=ParamSchema(
        [ParamSpec("as_of", "string", "1970-01-01T00:00:00+00:00"), ParamSpec("top_n", "long", 50)]))
    run_id = tracking.start_or_resume_run(settings, dag_id="scoring_bench", dag_run_id="baseline", logical_date=None,
                                          data_start=None, data_end=None)
    tracking.log_model(settings, run_id, mlflow.pyfunc, name="model", python_model=VectorFrequencyModel(),
                       signature=signature)
    version = tracking.register_model(settings, f"runs:/{run_id}/model", {"source_run_id": run_id}).version
    registry.promote_version(settings, str(version), reason="scoring benchmark")


def train_keras(spec: dict[str, Any]) -> dict[str, Any]:
    """The product's training path on the clean events of ``[train_start, train_end]``: MLflow run,
    ``encode_step``, ``train_step``, register the model and move ``champion`` to it. ``spec`` holds
    the settings overrides (JSON-able) and the window; returns timings, counts and the version."""
    from pipelines.features import encoding
    from pipelines.model import registry, train
    from pipelines.platform import tracking

    overrides = dict(spec["settings"])
    overrides["work_dir"] = Path(overrides["work_dir"])
    settings = load_settings(environ={}, **overrides)
    start, end = dt.date.fromisoformat(spec["train_start"]), dt.date.fromisoformat(spec["train_end"])
    t0 = time.monotonic()
    run_id = tracking.start_or_resume_run(settings, dag_id="scoring_bench", dag_run_id=spec["run_key"],
                                          logical_date=end, data_start=start, data_end=end)
    encoded = encoding.encode_step(settings, start, end, mlflow_run_id=run_id)
    t1 = time.monotonic()
    trained = train.train_step(settings, encoded["dataset_uri"], mlflow_run_id=run_id)
    t2 = time.monotonic()
    version = str(tracking.register_model(settings, trained["model_uri"], {"source_run_id": run_id}).version)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:  # as the product registers: files SHA-256
        registry.record_digest(settings, version, Path(tmp))
    registry.promote_version(settings, version, reason="scoring benchmark")
    tracking.finish_run(settings, run_id)
    t3 = time.monotonic()
    return {"run_id": run_id, "model_version": version, "examples": encoded["examples"],
            "categories": encoded["categories"], "encode_seconds": t1 - t0, "train_seconds": t2 - t1,
            "fit_seconds": trained["train_seconds"], "register_seconds": t3 - t2, "val_ndcg": trained["val_ndcg"],
            "peak_rss_mb": peak_rss_mb()}


RESULT_MARK = "CHILD_RESULT "


def run_child(flag: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run this script with ``flag SPEC_JSON`` in a child process (training: its memory does not
    count in the scoring's peak; scoring: each size gets its own peak RSS); returns its result dict."""
    command = [sys.executable, str(Path(__file__).resolve()), flag, json.dumps(spec)]
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {command[:3]} exited {proc.returncode} without a result; "
                           f"stdout tail: {proc.stdout[-2000:]!r}")
    print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith(RESULT_MARK)), end="")
    return dict(json.loads(lines[-1][len(RESULT_MARK):]))


def score_child(spec: dict[str, Any]) -> dict[str, Any]:
    """The scoring phase alone, timed: resolve, plan (read the window once, stage the shards), score
    every shard, publish; ``spec`` holds the settings overrides and an optional profile depth."""
    overrides = dict(spec["settings"])
    overrides["work_dir"] = Path(overrides["work_dir"])
    settings = load_settings(environ={}, **overrides)
    rss_before = peak_rss_mb()
    cpu_before = _cpu_seconds()
    t0 = time.monotonic()
    model = scoring.resolve_champion(settings)
    if settings.scoring_runtime == "keras":
        import tensorflow  # noqa: F401  # timed apart from the model's own loading

    t_tf = time.monotonic()
    if spec.get("profile"):
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
    # The DAG's order: the plan task (which fetches the version's checked copy while it stages the
    # window), then the shard tasks, the first of which loads the network from that copy.
    t1 = time.monotonic()
    shards = scoring.plan_shards(settings, AS_OF_DATE, model)
    t2 = time.monotonic()
    scorer = scoring.load_scorer(settings, model["model_uri"])  # (download) + SHA-256 check + network load
    runtime = getattr(getattr(scorer, "core", None), "runtime", "pyfunc predict")
    t_loaded = time.monotonic()
    rss_plan = peak_rss_mb()
    results = [scoring.score_shard(settings, AS_OF_DATE, model, shard) for shard in shards]
    t3 = time.monotonic()
    manifest = scoring.publish_partition(settings, AS_OF_DATE, model, results)
    t4 = time.monotonic()
    if spec.get("profile"):
        profiler.disable()
        for order in ("tottime", "cumulative"):
            pstats.Stats(profiler, stream=sys.stdout).sort_stats(order).print_stats(int(spec["profile"]))
    return {"users": manifest["row_count"], "model_version": model["model_version"],
            "load": (t1 - t0) + (t_loaded - t2), "tf_import": t_tf - t0, "runtime": runtime,
            "plan": t2 - t1, "shards": t3 - t_loaded, "publish": t4 - t3, "total": t4 - t0,
            "read": sum(r["read_seconds"] for r in results), "score": sum(r["score_seconds"] for r in results),
            "write": sum(r["write_seconds"] for r in results), "peak_rss_mb": peak_rss_mb(),
            "cpu_seconds": _cpu_seconds() - cpu_before,
            "rss_before_mb": rss_before, "rss_after_plan_mb": rss_plan, "buckets": shards[0]["buckets"] if shards else 0}


def _prepare_size(settings: Settings, users: int, args: argparse.Namespace) -> tuple[Settings, int]:
    """A bucket of its own holding the clean look-back window of ``users`` users; returns its
    settings and the event count."""
    sized = dataclasses.replace(settings, bucket=f"{settings.bucket}-{users}")
    storage.ensure_bucket(sized)
    rows = write_events(sized, generate_events(users, args.days, args.events_per_user, args.categories, args.seed))
    return sized, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("keras", "baseline"), default="keras",
                        help="champion to score with: the product's Keras model trained here (default) or "
                             "the cheap vectorised baseline pyfunc (scored through its public predict contract)")
    parser.add_argument("--users", type=int, default=100_000, help="users in the scoring window (default 100,000)")
    parser.add_argument("--scale-curve", action="store_true",
                        help="score 10,000, 100,000 and 1,000,000 users (one child process each) and print the table")
    parser.add_argument("--days", type=int, default=30, help="look-back window length (lookback_days)")
    parser.add_argument("--events-per-user", type=int, default=20, help="mean events per user in the window")
    parser.add_argument("--categories", type=int, default=2_000, help="categories the generator draws from")
    parser.add_argument("--shards", type=int, default=2, help="scoring shards (scoring_shards)")
    parser.add_argument("--batch-users", type=int, default=5_000, help="users per model call (scoring_batch_users)")
    parser.add_argument("--runtime", choices=("numpy", "keras"), default="numpy",
                        help="what runs the product's model (scoring_runtime): numpy (default, no TensorFlow import) "
                             "or the Keras model (TensorFlow imported and timed apart)")
    parser.add_argument("--seed", type=int, default=7, help="generator seed")
    parser.add_argument("--train-users", type=int, default=1_000, help="users in the training window (keras)")
    parser.add_argument("--train-days", type=int, default=21, help="training window length before the "
                                                                     "scoring window (keras)")
    parser.add_argument("--train-asof-step", type=int, default=2, help="asof_step_days for training (keras)")
    parser.add_argument("--min-category-count", type=int, default=None,
                        help="min_category_count for the training vocabulary (keras; default: the setting's)")
    parser.add_argument("--runs", type=int, default=1, metavar="N",
                        help="score each size N times in a row in one work folder: the first run downloads the "
                             "model's files, later ones reuse the checked local copy (as later days do)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile the model load and the scoring phase and print the N most expensive functions")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="level of the product's log lines on stderr (default WARNING)")
    parser.add_argument("--train-only", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    parser.add_argument("--score-only", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (args.train_only or args.score_only):
        os.environ["BENCH_LOG_LEVEL"] = args.log_level  # the child processes log at the same level
    logging.basicConfig(level=os.environ.get("BENCH_LOG_LEVEL", args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows in a log file
    if args.train_only:
        print(RESULT_MARK + json.dumps(train_keras(json.loads(args.train_only))), flush=True)
        return 0
    if args.score_only:
        print(RESULT_MARK + json.dumps(score_child(json.loads(args.score_only))), flush=True)
        return 0

    root = Path(tempfile.mkdtemp(prefix="scoring-bench-"))
    env = dict(os.environ)
    env["AWS_ACCESS_KEY_ID"] = "bench-" + secrets.token_hex(4)
    env["AWS_SECRET_ACCESS_KEY"] = secrets.token_hex(16)
    bucket = "bench"
    started: list[services.Process] = []
    try:
        seaweed = services.start_seaweedfs(root / "seaweedfs", services.seaweed_ports(services.free_port()), env,
                                           bucket, root / "logs" / "seaweedfs.log", record=started.append)
        endpoint = seaweed.extra["s3_endpoint_url"]
        env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
        mlflow_proc = services.start_mlflow(services.free_port(), root / "mlflow.db", f"s3://{bucket}/mlflow",
                                            env, root / "logs" / "mlflow.log")
        started.append(mlflow_proc)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
            os.environ[key] = env[key]
        overrides: dict[str, Any] = {
            "s3_endpoint_url": endpoint, "bucket": bucket, "mlflow_tracking_uri": mlflow_proc.extra["tracking_uri"],
            "lookback_days": args.days, "scoring_shards": args.shards, "scoring_batch_users": args.batch_users,
            "scoring_runtime": args.runtime, "work_dir": root / "work"}
        settings = load_settings(environ={}, **overrides)

        if args.model == "baseline":
            register_baseline(settings)
            label = "bench baseline pyfunc through predict, not the Keras model"
        else:
            train_end = AS_OF_DATE - dt.timedelta(days=args.days)
            t0 = time.monotonic()
            train_rows = write_events(settings, generate_events(args.train_users, args.train_days, args.events_per_user,
                                                                args.categories, args.seed + 1, end=train_end))
            extra = {} if args.min_category_count is None else {"min_category_count": args.min_category_count}
            spec = {"settings": {**overrides, "work_dir": str(root / "train-work"), "epochs": 1,
                                 "asof_step_days": args.train_asof_step, **extra},
                    "train_start": (train_end - dt.timedelta(days=args.train_days - 1)).isoformat(),
                    "train_end": train_end.isoformat(), "run_key": "bench-" + secrets.token_hex(4)}
            t1 = time.monotonic()
            trained = run_child("--train-only", spec)
            t2 = time.monotonic()
            print(f"training window: {train_rows:,} events of {args.train_users:,} users, {spec['train_start']}.."
                  f"{spec['train_end']} (written in {t1 - t0:.1f}s); examples {trained['examples']}, "
                  f"{trained['categories']} categories")
            print(f"train (child process, not in the scoring figures): {t2 - t1:.1f}s wall = encode_step "
                  f"{trained['encode_seconds']:.1f}s + train_step {trained['train_seconds']:.1f}s (fit "
                  f"{trained['fit_seconds']:.1f}s, 1 epoch, val ndcg {trained['val_ndcg']:.3f}) + register/"
                  f"promote {trained['register_seconds']:.1f}s + process start; child peak RSS "
                  f"{trained['peak_rss_mb']:,.0f} MB")
            label = f"Keras model trained above, {trained['categories']} categories"

        sizes = [10_000, 100_000, 1_000_000] if args.scale_curve else [args.users]
        rows_out = []
        for users in sizes:
            t0 = time.monotonic()
            sized, events = _prepare_size(settings, users, args)
            print(f"\n{users:,} users: wrote {events:,} clean events over {args.days} days in "
                  f"{time.monotonic() - t0:.1f}s; scoring in a child process ({label})")
            child = {**overrides, "bucket": sized.bucket, "work_dir": str(root / f"work-{users}")}
            for run in range(1, args.runs + 1):
                if args.runs > 1:
                    print(f"-- run {run} of {args.runs} in the same work folder"
                          + (" (the model's files are downloaded)" if run == 1 else
                             " (the checked local copy of the model's files is reused)"))
                result = run_child("--score-only", {"settings": child, "profile": args.profile})
                result["events"] = events
                _print_result(result, args)
            rows_out.append(result)
        if len(rows_out) > 1:
            print("\nscale curve (end to end: resolve + plan + shards + publish, model load included):")
            print(f"{'users':>10} {'events':>12} {'seconds':>8} {'users/s':>9} {'model load s':>13} "
                  f"{'CPU s':>7} {'peak RSS MB':>12}")
            for r in rows_out:
                print(f"{r['users']:>10,} {r['events']:>12,} {r['total']:>8.1f} {r['users'] / r['total']:>9,.0f} "
                      f"{r['load']:>13.1f} {r['cpu_seconds']:>7.1f} {r['peak_rss_mb']:>12,.0f}")
        os_load = os.getloadavg()
        print(f"\nload average during the run: {os_load[0]:.2f} {os_load[1]:.2f} {os_load[2]:.2f}")
        return 0 if all(r["users"] == u for r, u in zip(rows_out, sizes, strict=True)) else 1
    finally:
        for proc in reversed(started):
            proc.stop()


def _print_result(r: dict[str, Any], args: argparse.Namespace) -> None:
    users = r["users"]
    print(f"users scored: {users:,} in {args.shards} shards x {r['buckets']} bucket(s), batches of up to "
          f"{args.batch_users:,}, model v{r['model_version']} on {r['runtime']}" + ("  [PROFILED: timings inflated]" if args.profile
                                                                 else ""))
    print(f"plan (read the window once, stage shards; the model's checked copy fetched alongside): {r['plan']:6.1f}s")
    print(f"shards: read staged input {r['read']:6.1f}s | score {r['score']:6.1f}s "
          f"({users / max(r['score'], 1e-9):,.0f} users/s) | write {r['write']:5.1f}s")
    tf_import = f" of which TensorFlow import {r['tf_import']:.1f}s" if r["runtime"] == "keras" else ""
    print(f"end to end:  {r['total']:6.1f}s  {users / r['total']:10,.0f} users/s  (resolve + model load "
          f"{r['load']:.1f}s{tf_import}; publish {r['publish']:.1f}s; without the load: "
          f"{users / max(r['total'] - r['load'], 1e-9):,.0f} users/s)")
    print(f"peak RSS of the scoring process: {r['peak_rss_mb']:,.0f} MB (after imports: {r['rss_before_mb']:,.0f} MB, "
          f"after model load and plan: {r['rss_after_plan_mb']:,.0f} MB); "
          f"CPU time {r['cpu_seconds']:.1f}s on {len(os.sched_getaffinity(0))} cores")


if __name__ == "__main__":
    sys.exit(main())
