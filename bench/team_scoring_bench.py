"""Scoring wall time of one day on the team stack with 2 Celery workers, then with 1.

Starts a team stack (PostgreSQL, Redis, SeaweedFS, MLflow, Airflow with CeleryExecutor) in a
temporary folder on free ports, lands synthetic Taobao-format data, trains once (1 epoch) through
the training DAG, then re-scores the last day of the data ``--repeats`` times with both workers,
stops one worker (warm shutdown) and re-scores it again. For each run it prints the DAG run's
wall time and the shard phase (first ``score_shard`` start to last end), read from Airflow's REST
API, and the load average, because the figures only mean something on a quiet machine.

    python bench/team_scoring_bench.py --users 5000 --shards 4 --repeats 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.devstack import airflow_api, demo, lifecycle, processes  # noqa: E402
from pipelines.devstack.config import isolated_config  # noqa: E402
from pipelines.devstack.state import read_state  # noqa: E402


def _seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        return float("nan")
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def score_day_once(api: airflow_api.AirflowApi, day: dt.date) -> tuple[float, float, set[str]]:
    """Re-score ``day`` (a one-day backfill); returns (run wall s, shard phase s, worker hostnames)."""
    body = {"dag_id": demo.SCORING_DAG, "from_date": f"{day}T00:00:00Z", "to_date": f"{day}T00:00:00Z",
            "reprocess_behavior": "completed", "max_active_runs": 1, "run_backwards": False, "dag_run_conf": {}}
    backfill = airflow_api.create_backfill(api, body)
    runs = api.get(f"/dags/{demo.SCORING_DAG}/dagRuns", logical_date_gte=body["from_date"],
                   logical_date_lte=body["to_date"])["dag_runs"]
    run_id = runs[0]["dag_run_id"]
    states = airflow_api.wait_for_runs(api, demo.SCORING_DAG, [run_id], timeout=3600, out=lambda _: None, poll=2)
    airflow_api.wait_backfill(api, int(backfill["id"]), 300)
    if states[run_id] != "success":
        raise SystemExit(f"scoring run {run_id} ended {states[run_id]}")
    run = api.get(airflow_api.run_path(demo.SCORING_DAG, run_id))
    tis = api.get(f"{airflow_api.run_path(demo.SCORING_DAG, run_id)}/taskInstances")["task_instances"]
    shards = [ti for ti in tis if ti["task_id"] == "score_shard"]
    phase = _seconds(min(ti["start_date"] for ti in shards), max(ti["end_date"] for ti in shards))
    return _seconds(run["start_date"], run["end_date"]), phase, {ti["hostname"] for ti in shards}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=5000, help="synthetic users (5000)")
    parser.add_argument("--days", type=int, default=14, help="synthetic days (14)")
    parser.add_argument("--categories", type=int, default=60, help="synthetic categories (60)")
    parser.add_argument("--shards", type=int, default=4, help="mapped scoring shards per day (4)")
    parser.add_argument("--repeats", type=int, default=2, help="scoring runs per worker count (2)")
    args = parser.parse_args()
    os.environ.update({"IM_EPOCHS": "1", "IM_HORIZON_DAYS": "1", "IM_GATE_MARGIN_VS_BASELINES": "-1",
                       "IM_SCORING_SHARDS": str(args.shards)})
    root = Path(tempfile.mkdtemp(prefix="im-team-bench-"))
    cfg = isolated_config(root / "stack", team=True, workers=2)
    print(f"team stack in {cfg.root}; load average at start {os.getloadavg()[0]:.2f} (2 cores)")
    try:
        began = time.monotonic()
        lifecycle.up(cfg, out=lambda _: None)
        print(f"up in {time.monotonic() - began:.0f}s; training once ({args.users} users, {args.days} days)")
        ok = demo.run_demo(cfg, users=args.users, days=args.days, categories=args.categories, seed=11,
                           score_days=1, timeout=3600, out=lambda _: None)
        if not ok:
            raise SystemExit("the demo run (training + first scoring) failed; see the stack's logs in " + str(cfg.root))
        api = airflow_api.AirflowApi(cfg)
        day = dt.date.fromisoformat(api.get(f"/dags/{demo.SCORING_DAG}/dagRuns")["dag_runs"][0]["logical_date"][:10])
        results: dict[int, list[tuple[float, float]]] = {}
        for workers in (2, 1):
            if workers == 1:
                entry = read_state(cfg)["processes"]["worker-2"]
                os.killpg(os.getpgid(int(entry["pid"])), signal.SIGTERM)  # warm shutdown: idle, so at once
                processes.kill_all([int(entry["pid"])], timeout=60)
            for repeat in range(args.repeats):
                load = os.getloadavg()[0]
                wall, phase, hosts = score_day_once(api, day)
                results.setdefault(workers, []).append((wall, phase))
                print(f"  {workers} worker(s) run {repeat + 1}: run {wall:.1f}s, shards {phase:.1f}s on "
                      f"{sorted(hosts)} (load {load:.2f})")
        print(f"\nscoring one day ({args.users} users, {args.shards} shards), median of {args.repeats}:")
        print("| workers | run wall time (s) | shard phase (s) |")
        print("|---|---|---|")
        for workers, rows in results.items():
            print(f"| {workers} | {statistics.median(r[0] for r in rows):.1f} | "
                  f"{statistics.median(r[1] for r in rows):.1f} |")
        print(f"load average at end {os.getloadavg()[0]:.2f}")
    finally:
        lifecycle.down(cfg, out=lambda _: None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
