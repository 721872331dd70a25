"""Faults on real services: a SeaweedFS of the test's own (so killing it breaks no other test) is
SIGKILLed between a scoring run's parts and its publish, then restarted on the same data folder.
The published partition must stay whole and readable, and the retried publish must complete."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.config import load_settings
from pipelines.contracts import PREDICTION_SCHEMA
from pipelines.devstack import credentials
from pipelines.devstack import services as svc
from pipelines.platform import layout, storage
from pipelines.serving import predictions, scoring

pytestmark = pytest.mark.faults

D = dt.date(2024, 1, 3)
MODEL = {"model_name": "interest_migration", "model_version": "7", "model_uri": "models:/interest_migration/7"}


def _rows(users: list[str], score: float) -> pa.Table:
    return pa.Table.from_pylist([
        {"user_id": u, "as_of_date": D, "horizon_days": 7, "predicted_categories": ["a"], "predicted_scores": [score],
         "current_categories": ["a"], "current_strengths": [1.0], "migration_score": score,
         "emerging_categories": [], "fading_categories": [], "model_name": MODEL["model_name"],
         "model_version": MODEL["model_version"]} for u in users], schema=PREDICTION_SCHEMA)


def _write_run(settings, score: float) -> list[dict]:
    """One scoring run's parts (two shards) as score_shard writes them; returns the shard results."""
    run_id = scoring.new_run_id() + secrets.token_hex(1)
    results = []
    for shard, users in enumerate((["u1", "u2"], ["u3"])):
        key = layout.prediction_run_part_key(D, run_id, shard)
        storage.write_parquet(settings, key, _rows(users, score))
        results.append({"shard": shard, "shards": 2, "key": key, "run_id": run_id, "rows": len(users)})
    return results


def _start(root: Path, ports: dict[str, int], env: dict[str, str], security: Path) -> svc.Process:
    return svc.start_seaweedfs(root / "seaweedfs", ports, env, "im-faults", root / "seaweedfs.log",
                               security_dir=security.parent)


def test_seaweedfs_killed_before_the_switch_loses_nothing_and_the_retry_publishes(tmp_path: Path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = "faults-" + secrets.token_hex(4), secrets.token_hex(16)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, env[key])
    security = credentials.write_seaweed_security(
        credentials.make_private_dir(tmp_path / "secrets") / "seaweedfs",
        "\n".join(secrets.token_hex(24) for _ in credentials.SEAWEED_JWT_SECTIONS))
    ports = svc.seaweed_ports(svc.free_port())
    seaweed = _start(tmp_path, ports, env, security)
    try:
        settings = load_settings(environ={}, s3_endpoint_url=seaweed.extra["s3_endpoint_url"], bucket="im-faults",
                                 work_dir=tmp_path / "work")
        storage.reset_clients()
        storage.ensure_bucket(settings)
        first = scoring.publish_partition(settings, D, MODEL, _write_run(settings, 0.25))
        rerun = _write_run(settings, 0.75)
        # The store dies (SIGKILL, no shutdown) after the rerun's parts, before its manifest switch.
        svc.stop_process_group(seaweed.popen.pid, first=signal.SIGKILL)
        seaweed.popen.wait(timeout=10)
        with pytest.raises(Exception):  # noqa: B017 - whatever the client raises for a dead endpoint
            scoring.publish_partition(settings, D, MODEL, rerun)
        seaweed = _start(tmp_path, ports, env, security)  # same data folder, same ports
        storage.reset_clients()
        # Nothing lost, nothing half-visible: the old manifest and every part it lists are there.
        assert predictions.read_manifest(settings, D)["files"] == first["files"]
        table = predictions.read_predictions(settings, D)
        assert table.num_rows == 3 and set(table["migration_score"].to_pylist()) == {0.25}
        # The retry switches to the rerun whole and removes the old run.
        second = scoring.publish_partition(settings, D, MODEL, rerun)
        table = predictions.read_predictions(settings, D)
        assert table.num_rows == 3 and set(table["migration_score"].to_pylist()) == {0.75}
        assert storage.list_keys(settings, layout.partition_prefix(layout.PREDICTIONS, D)) == sorted(
            [*second["files"], layout.success_key(D)])
    finally:
        seaweed.stop()
        storage.reset_clients()


def test_concurrent_preprocess_of_one_date_equals_one_run(settings, tmp_path: Path):
    # A training preprocess and a scoring re-clean of the same day at once (here: four threads):
    # every run reconciles, and the clean partition equals that of a run on its own.
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.data import validation
    from pipelines.data.events import read_clean_events
    from pipelines.data.landing import land_events
    from pipelines.data.preprocess import preprocess_partition
    from pipelines.data.synthetic import generate_taobao

    day = dt.date(2017, 11, 25)
    gen = generate_taobao(tmp_path / "gen", users=150, days=1, categories=20, start=day, seed=3)
    land_events(settings, gen.events_path, "taobao", name="synthetic")
    validation.validate_partition(settings, day, report_id="alone")
    alone = preprocess_partition(settings, day)
    reference = read_clean_events(settings, day, day)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: preprocess_partition(settings, day), range(4)))
    assert all(r.to_dict() == alone.to_dict() for r in results)
    assert read_clean_events(settings, day, day).equals(reference)
    assert storage.list_keys(settings, layout.partition_prefix(layout.CLEAN, day)) == [layout.clean_key(day)]


def test_mlflow_stopped_fails_lookup_and_registration_within_bounds_and_the_retry_works(settings, tmp_path: Path):
    """A private MLflow server (the session's stays up) is SIGKILLed with a champion registered
    and a challenger run logged; champion lookup and registration then fail within the configured
    bounds, naming MLflow; once it is back on the same database both work, and a registration
    retried after dying before its digest records the digest."""
    import time

    from pipelines.model import registry
    from pipelines.platform import tracking
    from tests import pyfunc_models as pm
    from tests.conftest import BASE_BUCKET

    port = svc.free_port()
    env = dict(os.environ)  # the session's S3 credentials and MLFLOW_S3_ENDPOINT_URL

    def start() -> svc.Process:
        return svc.start_mlflow(port, tmp_path / "mlflow" / "mlflow.db", f"s3://{BASE_BUCKET}/faults-mlflow", env,
                                tmp_path / "mlflow.log")

    server = start()
    try:
        configured = pm.isolate(dataclasses.replace(settings, mlflow_tracking_uri=server.extra["tracking_uri"],
                                                    mlflow_timeout_s=2, mlflow_retries=1))
        champion = pm.register_as_champion(configured)
        run_id, uri = pm.log_model(configured, metrics={"model/ndcg_at_5": 0.9, "baseline/popular/ndcg_at_5": 0.1})
        svc.stop_process_group(server.popen.pid, first=signal.SIGKILL)
        server.popen.wait(timeout=10)

        def register() -> dict:
            return registry.register_step(configured, mlflow_run_id=run_id, model_uri=uri, dataset_uri="s3://x/y",
                                          evaluate_champion=lambda *_: {"ndcg_at_5": 0.5})

        for call, action in ((lambda: scoring.resolve_champion(configured), "looking up"), (register, "registering")):
            started = time.monotonic()
            with pytest.raises(tracking.TrackingUnavailable, match=rf"did not answer while {action} .*1 retries, "
                                                                   r"2 s per request.*safe to repeat"):
                call()
            assert time.monotonic() - started < 30  # MLflow's defaults (7 retries, 120 s) take minutes

        server = start()  # the same database: nothing was lost
        assert scoring.resolve_champion(configured)["model_version"] == champion
        decision = register()
        assert decision["promoted"] and decision["model_version"] != champion
        # A registration that died between registering and recording the files' SHA-256: the retry records it.
        client = tracking.client(configured)
        client.delete_model_version_tag(configured.model_name, decision["model_version"], registry.TAG_SHA256)
        assert register()["model_version"] == decision["model_version"]  # reused, not registered twice
        tags = client.get_model_version(configured.model_name, decision["model_version"]).tags
        assert len(tags[registry.TAG_SHA256]) == 64
    finally:
        server.stop()


def _in_small_tmpfs(work: Path, argv: list[str], env: dict[str, str], size: str) -> subprocess.CompletedProcess:
    """Run the CLI ``argv`` with its work folder on a fresh tmpfs of ``size`` (a private mount
    namespace: nothing outside the command sees it)."""
    work.mkdir(parents=True, exist_ok=True)
    script = (f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(work))} && "
              + " ".join(shlex.quote(a) for a in [sys.executable, "-m", "pipelines", *argv]))
    return subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=300)


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                          capture_output=True, timeout=30)
    return done.returncode == 0


def test_a_full_work_disk_fails_clearly_and_deletes_nothing_it_did_not_rewrite(settings, tmp_path: Path):
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs unshare and tmpfs mounts in a user namespace to fill a work disk without filling this one")
    from pipelines.data.landing import land_events
    from tests import pyfunc_models as pm

    day = dt.date(2017, 11, 25)
    first = tmp_path / "export.csv"
    first.write_text("".join(f"{u},{u},7,pv,{1511568000 + u}\n" for u in range(50)))
    before = land_events(settings, first, "taobao")
    raw_before = {k: storage.get_bytes(settings, k) for k in storage.list_keys(settings, "raw/")}
    bigger = tmp_path / "next" / "export.csv"
    bigger.parent.mkdir()
    bigger.write_text("".join(f"{u},{u},7,pv,{1511568000 + u % 80000}\n" for u in range(200_000)))
    env = {**os.environ, "IM_BUCKET": settings.bucket, "IM_S3_ENDPOINT_URL": settings.s3_endpoint_url,
           "IM_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "IM_WORK_DIR": str(tmp_path / "work")}
    done = _in_small_tmpfs(tmp_path / "work", ["land", "--source", str(bigger), "--format", "taobao", "--replace"],
                           env, "256k")
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: land failed") and "No space left on device" in last, done.stderr
    # The earlier landing is whole: same keys, same bytes, same report.
    assert {k: storage.get_bytes(settings, k) for k in storage.list_keys(settings, "raw/")} == raw_before
    assert storage.get_json(settings, layout.landing_report_key("export"))["landing_id"] == before.landing_id

    # Scoring on a full disk: a one-line failure, and the published partition stays as it was.
    configured = pm.isolate(settings)
    pm.register_as_champion(configured)
    pm.write_clean(configured, pm.clean_events({day: [(f"u{u}", "i", f"c{u % 5}", "view", 10) for u in range(300)]}))
    published = scoring.score_date(configured, day)
    env.update(IM_MODEL_NAME=configured.model_name, IM_MLFLOW_EXPERIMENT=configured.mlflow_experiment)
    done = _in_small_tmpfs(tmp_path / "work", ["score", "--date", day.isoformat()], env, "16k")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 2017-11-25: downloading models:/") and "No space left on device" in last, last
    assert predictions.read_manifest(configured, day)["files"] == published["files"]
    assert predictions.read_predictions(configured, day).num_rows == 300
