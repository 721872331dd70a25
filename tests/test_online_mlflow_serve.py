"""``mlflow models serve -m models:/<name>@champion`` serves this product's pyfunc: a real model
registered on the test session's MLflow server, the real ``mlflow`` command (local environment)
on a free loopback port, and an events frame POSTed to ``/invocations`` gives the top-n answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipelines.devstack import services as svc
from pipelines.features.examples import EncodingConfig
from pipelines.features.vocab import build_vocab
from tests import pyfunc_models as pm

pytestmark = [pytest.mark.services, pytest.mark.slow]

EVENTS = {
    "columns": ["user_id", "item_id", "category_id", "behavior", "ts"],
    "data": [["u1", "i1", "shoes", "view", "2024-01-02T08:00:00+00:00"],
             ["u1", "i2", "bags", "buy", "2024-01-03T09:00:00+00:00"],
             ["u2", "i3", "books", "view", "2024-01-03T10:00:00+00:00"]],
}


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, seconds: float = 240.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow models serve exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(1.0)
    raise AssertionError(f"mlflow models serve not ready after {seconds}s: {log.read_text()[-3000:]}")


def test_mlflow_models_serve_answers_the_scoring_contract(settings, tmp_path):
    from pipelines.model.network import build_model

    configured = pm.isolate(settings)
    vocab = build_vocab(["shoes", "books", "toys", "bags", "music"], 1)
    path = tmp_path / "model.keras"
    build_model(vocab.n_categories, vocab.n_behaviors, 8, embed_dim=8, age_scale=1.0).save(path)
    pm.register_keras_champion(configured, str(path), vocab,
                               EncodingConfig(horizon_days=1.0, lookback_days=3.0, seq_len=8))
    port = svc.free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # MLflow execs `uvicorn` by name: the environment's bin folder must be on PATH (an activated venv)
    env = {**os.environ, "MLFLOW_TRACKING_URI": configured.mlflow_tracking_uri,
           "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("w") as out:
        proc = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", f"models:/{configured.model_name}@champion",
                                 "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(url, proc, log)
        body = json.dumps({"dataframe_split": EVENTS,
                           "params": {"as_of": "2024-01-04T00:00:00+00:00", "top_n": 3}}).encode()
        request = urllib.request.Request(url + "/invocations", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                rows = json.loads(answer.read())["predictions"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"/invocations answered {exc.code}: {exc.read()[:2000]!r}") from exc
        assert sorted(r["user_id"] for r in rows) == ["u1", "u2"]
        for row in rows:
            assert len(row["categories"]) == len(row["scores"]) == 3
            assert set(row["categories"]) <= {"shoes", "books", "toys", "bags", "music"}
            assert row["scores"] == sorted(row["scores"], reverse=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
