"""Scoring benchmark: 100,000 users scored and written for one day, on the real embedded services.

Starts SeaweedFS + an MLflow server on free ports (as the tests do), writes synthetic clean events
for the look-back window (``--users`` users, about ``--events-per-user`` events each, spread over
``--days`` days), logs and registers a vectorised decayed-frequency + popularity pyfunc as
champion, runs the scoring steps in this process (resolve, plan, every shard, publish), and prints
users/second for the scoring and write phases and the peak RSS of this process (the services
run in their own processes and are not counted).

    .venv/bin/python bench/scoring_bench.py                 # 100k users, 2 shards
    .venv/bin/python bench/scoring_bench.py --users 20000   # quicker

The model is *not* the Keras model of ``pipelines.model``: it is a baseline-style pyfunc that obeys
the same scoring contract, so the numbers measure the scoring pipeline (read, batch, model call,
interest arithmetic, Parquet write), with a cheap model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import scoring, services, storage
from pipelines.config import load_settings
from pipelines.contracts import BEHAVIORS, EVENT_SCHEMA

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


def generate_events(users: int, days: int, events_per_user: int, categories: int, seed: int) -> Iterator[tuple[dt.date, Any]]:
    """Yield (day, clean events table) for each day of the window, one day in memory at a time.

    Each user has a favourite category (Zipf-popular) and a drift category that takes over half
    of its favourite's share in the last 40% of the window; 30% of events go to popular categories.
    """
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    favourite = rng.zipf(1.3, users) % categories
    drift = rng.integers(0, categories, users)
    start = dt.datetime.combine(AS_OF_DATE - dt.timedelta(days=days - 1), dt.time(), tzinfo=dt.UTC)
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


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30, help="look-back window length (lookback_days)")
    parser.add_argument("--events-per-user", type=int, default=20)
    parser.add_argument("--categories", type=int, default=2_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--batch-users", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

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
        settings = load_settings(environ={}, s3_endpoint_url=endpoint, bucket=bucket,
                                 mlflow_tracking_uri=mlflow_proc.extra["tracking_uri"], lookback_days=args.days,
                                 scoring_shards=args.shards, scoring_batch_users=args.batch_users,
                                 work_dir=root / "work")

        t0 = time.monotonic()
        rows = 0
        for day, table in generate_events(args.users, args.days, args.events_per_user, args.categories, args.seed):
            storage.write_parquet(settings, storage.partition_prefix(storage.CLEAN, day) + "part-00000.parquet", table)
            rows += table.num_rows
        print(f"generated and wrote {rows:,} clean events of {args.users:,} users over {args.days} days "
              f"in {time.monotonic() - t0:.1f}s")

        import cloudpickle
        import mlflow
        from mlflow.models import ModelSignature
        from mlflow.types.schema import ParamSchema, ParamSpec

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        mlflow.set_experiment("scoring-bench")
        signature = ModelSignature(inputs=None, outputs=None, params=ParamSchema(
            [ParamSpec("as_of", "string", "1970-01-01T00:00:00+00:00"), ParamSpec("top_n", "long", 50)]))
        with mlflow.start_run() as run:
            mlflow.pyfunc.log_model(name="model", python_model=VectorFrequencyModel(), signature=signature)
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", settings.model_name).version
        mlflow.MlflowClient().set_registered_model_alias(settings.model_name, "champion", str(version))

        rss_before = _rss_mb()
        t1 = time.monotonic()
        model = scoring.resolve_champion(settings)
        shards = scoring.plan_shards(settings, AS_OF_DATE, model)
        results = [scoring.score_shard(settings, AS_OF_DATE, model, shard) for shard in shards]
        manifest = scoring.publish_partition(settings, AS_OF_DATE, model, results)
        total = time.monotonic() - t1
        scored = manifest["row_count"]
        read_s = sum(r["read_seconds"] for r in results)
        score_s = sum(r["score_seconds"] for r in results)
        write_s = sum(r["write_seconds"] for r in results)
        print(f"users scored: {scored:,} in {len(results)} shards (batches of {args.batch_users}), "
              f"model {settings.model_name} v{model['model_version']} (bench pyfunc, not the Keras model)")
        print(f"read events:  {read_s:7.1f}s  {scored / read_s:10,.0f} users/s")
        print(f"score:        {score_s:7.1f}s  {scored / score_s:10,.0f} users/s  (model call + interests + rows)")
        print(f"write:        {write_s:7.1f}s  {scored / write_s:10,.0f} users/s  (Parquet zstd to S3)")
        print(f"end to end:   {total:7.1f}s  {scored / total:10,.0f} users/s  (resolve+plan+shards+publish)")
        print(f"peak RSS of this process: {_rss_mb():,.0f} MB (before scoring: {rss_before:,.0f} MB)")
        return 0 if scored == args.users else 1
    finally:
        for proc in reversed(started):
            proc.stop()


if __name__ == "__main__":
    sys.exit(main())
