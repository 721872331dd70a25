"""Training and evaluation steps end to end on the real embedded services (SeaweedFS + MLflow), and
the logged model loading where this checkout is not importable."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.contracts import EVENT_SCHEMA
from pipelines.features import encoding
from pipelines.model import evaluate, train
from pipelines.model.pyfunc import score_events
from pipelines.platform import layout, storage, tracking

REPO_ROOT = Path(__file__).resolve().parents[1]


def synthetic_events(n_users: int = 40, days: int = 36, n_categories: int = 8, seed: int = 0) -> pa.Table:
    """Users with a home category, each moving to the next category half-way (a planted migration);
    every fourth user is quiet (no event on most days), so not everyone acts in every horizon."""
    rng = np.random.default_rng(seed)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rows = []
    for u in range(n_users):
        home = u % n_categories
        switch = int(rng.integers(days // 3, 2 * days // 3))
        for day in range(days):
            if u % 4 == 0 and rng.random() < 0.6:  # a quiet user: no event on most days
                continue
            for _ in range(int(rng.integers(1, 4))):
                cat = home if day < switch or rng.random() < 0.3 else (home + 1) % n_categories
                if rng.random() < 0.1:
                    cat = int(rng.integers(n_categories))
                ts = start + dt.timedelta(days=day, seconds=int(rng.integers(0, 86400)))
                rows.append((f"u{u}", f"i{cat}-{rng.integers(50)}", f"c{cat}", ["view", "cart", "buy"][rng.integers(3)],
                             ts, None))
    frame = pd.DataFrame(rows, columns=EVENT_SCHEMA.names)
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    return pa.Table.from_pandas(frame, schema=EVENT_SCHEMA, preserve_index=False)


def _land_clean(settings, table: pa.Table) -> tuple[dt.date, dt.date]:
    dates = pd.to_datetime(table["ts"].to_pandas()).dt.date
    for day in sorted(set(dates)):
        part = table.filter(pa.array((dates == day).to_numpy()))
        storage.write_parquet(settings, f"{layout.partition_prefix(layout.CLEAN, day)}part-00000.parquet", part)
    return min(dates), max(dates)


@pytest.mark.services
@pytest.mark.slow
def test_encode_train_evaluate_steps_log_model_metrics_and_plots(settings, tmp_path) -> None:
    settings = dataclasses.replace(settings, horizon_days=3, lookback_days=30, seq_len=20, asof_step_days=2,
                                   eval_asof_step_days=3, validation_asof_count=1, test_asof_count=2, epochs=2,
                                   batch_size=64, embed_dim=16)
    start, end = _land_clean(settings, synthetic_events())
    mlflow_client = tracking.client(settings)
    run_id = mlflow_client.create_run(tracking.ensure_experiment(settings)).info.run_id

    encoded = encoding.encode_step(settings, start, end, mlflow_run_id=run_id)
    assert encoded["dataset_uri"] == f"s3://{settings.bucket}/features/{run_id}/"
    assert encoded["examples"]["train"] > 0 and encoded["examples"]["test"] > 0

    trained = train.train_step(settings, encoded["dataset_uri"], mlflow_run_id=run_id)
    assert trained["model_uri"] == f"runs:/{run_id}/model"

    # the scoring contract: raw ids, unknown ids do not crash, only events before as_of count
    model = tracking.load_pyfunc(settings, trained["model_uri"])
    events = pd.DataFrame({"user_id": ["u1", "u1", "new-user", "u1"], "item_id": ["x", "y", "z", "w"],
                           "category_id": ["c1", "never-seen", "c2", "c3"], "behavior": ["view", "teleport", "buy", "buy"],
                           "ts": pd.to_datetime(["2024-01-30T10:00", "2024-01-30T11:00", "2024-01-29T00:00",
                                                 "2024-02-20T00:00"], utc=True).astype("datetime64[us, UTC]")})
    out = model.predict(events, params={"as_of": "2024-02-01T00:00:00+00:00", "top_n": 3})
    assert sorted(out["user_id"]) == ["new-user", "u1"]
    assert all(len(c) == 3 and len(s) == 3 for c, s in zip(out["categories"], out["scores"], strict=True))
    assert all(c.startswith("c") and c != "never-seen" for cats in out["categories"] for c in cats)
    assert all(0.0 <= x <= 1.0 for scores in out["scores"] for x in scores)
    assert all(list(s) == sorted(s, reverse=True) for s in out["scores"])
    # P(active) travels with the model: the served scores are P(active) x P(c | active), the ranking unchanged
    core = model.unwrap_python_model().core()
    assert core.activity is not None and 0.0 < core.activity.base_rate < 1.0
    conditional = score_events(core.predictor, core.vocab, core.config, events, "2024-02-01T00:00:00+00:00", 3)
    for with_p, without in zip(out["scores"], conditional["scores"], strict=True):
        assert all(a < b for a, b in zip(with_p, without, strict=True))

    metrics = evaluate.evaluate_step(settings, encoded["dataset_uri"], trained["model_uri"], mlflow_run_id=run_id)
    for key in ("model/ndcg_at_5", "model/recall_at_5", "model/explore_recall_at_3", "model/gauc", "model/brier",
                "baseline/popularity/ndcg_at_5", "baseline/last_day/recall_at_5",
                "baseline/decayed_frequency/ndcg_at_5", "baseline/markov/explore_recall_at_3",
                "model/published_ndcg_at_5", "model/published_migration_auc", "model/published_brier",
                "baseline/decayed_frequency/published_ndcg_at_5", "baseline/markov/published_explore_recall_at_3"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0, key
    run = mlflow_client.get_run(run_id)
    assert run.data.metrics["model/ndcg_at_5"] == pytest.approx(metrics["model/ndcg_at_5"])
    artifacts = {a.path for a in mlflow_client.list_artifacts(run_id, "plots")}
    assert {"plots/roc.png", "plots/recall_at_k.png", "plots/reliability.png",
            "plots/sample_users_interest.png"} <= artifacts
    assert {a.path for a in mlflow_client.list_artifacts(run_id, "evaluation")} >= {
        "evaluation/comparison.csv", "evaluation/comparison_table.json"}

    # the registry's path: the same model metrics for any pyfunc URI, keys without the prefix
    again = evaluate.evaluate_model_uri(settings, encoded["dataset_uri"], trained["model_uri"])
    assert again["ndcg_at_5"] == pytest.approx(metrics["model/ndcg_at_5"])

    # the logged model carries its code and names only real packages: it loads and predicts where
    # this checkout is neither on sys.path nor installed
    requirements = (Path(mlflow_client.download_artifacts(run_id, "model/requirements.txt", str(tmp_path)))
                    .read_text().split())
    assert not [r for r in requirements if "interest" in r or "pipelines" in r], requirements
    assert {r.split("==")[0] for r in requirements} >= {"mlflow", "tensorflow-cpu", "keras", "pandas", "pyarrow",
                                                        "numpy"}
    outside = _predict_outside_checkout(settings, trained["model_uri"], tmp_path / "outside")
    assert outside["pipelines_file"].startswith(outside["model_path"])
    assert "/code/pipelines/" in outside["pipelines_file"]
    assert outside["users"] > 0 and outside["top_n"] == min(50, encoded["categories"])


# Runs with ``python -I -S``: no PYTHONPATH, no current folder, no site folder (so none of its
# .pth files, among them the editable install of this project); only the plain site-packages
# folder is added, so mlflow, keras and the rest import but ``pipelines`` cannot.
_OUTSIDE = textwrap.dedent("""
    import importlib.util, json, sys
    sys.path.append(SITE_PACKAGES)
    assert importlib.util.find_spec("pipelines") is None, "pipelines is importable outside the model"
    import mlflow.pyfunc
    from mlflow.models import Model
    path = mlflow.artifacts.download_artifacts(MODEL_URI, dst_path=DEST)
    logged = Model.load(path)
    events, params = logged.load_input_example(path), logged.load_input_example_params(path)
    out = mlflow.pyfunc.load_model(path).predict(events, params=params)
    import pipelines
    print("RESULT " + json.dumps({"model_path": path, "pipelines_file": pipelines.__file__,
                                  "users": int(out["user_id"].nunique()),
                                  "top_n": max(len(c) for c in out["categories"])}))
""")


def _predict_outside_checkout(settings, model_uri: str, workdir: Path) -> dict:
    """Download, load and call ``predict`` on the logged input example in a child Python whose
    working directory is ``workdir`` and whose import path holds neither the repo nor its
    editable install; returns what the child reports (model folder, where ``pipelines`` came from)."""
    workdir.mkdir()
    values = {"SITE_PACKAGES": sysconfig.get_paths()["purelib"], "MODEL_URI": model_uri,
              "DEST": str(workdir / "model")}
    script = "".join(f"{name} = {json.dumps(value)}\n" for name, value in values.items()) + _OUTSIDE
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert not result["pipelines_file"].startswith(str(REPO_ROOT)), result
    return result


def _epochs_run(curve: list[float], patience: int, min_epochs: int) -> tuple[int, int]:
    """(epochs run, best epoch) of the early-stopping callback fed the validation NDCG ``curve``."""

    class Model:
        stop_training = False

        def get_weights(self) -> list:
            return []

    stopper = train.ValidationNdcgStopping(None, 2, 4, 5, patience, min_epochs)
    stopper.set_model(Model())
    values = iter(curve)
    stopper.validation_ndcg = lambda: next(values)
    epochs = 0
    for epoch in range(len(curve)):
        stopper.on_epoch_end(epoch, {})
        epochs = epoch + 1
        if stopper.model.stop_training:
            break
    return epochs, stopper.best_epoch


def test_recency_weights_travel_with_their_examples(tmp_path) -> None:
    import pyarrow.parquet as pq

    from pipelines.features import batch
    from pipelines.features.examples import EncodingConfig
    from pipelines.features.vocab import build_vocab

    events = synthetic_events()
    vocab = build_vocab([f"c{i}" for i in range(8)], 1)
    asofs = [dt.datetime(2024, 1, 20, tzinfo=dt.UTC), dt.datetime(2024, 1, 30, tzinfo=dt.UTC)]
    index = batch.index_events(events, vocab)
    examples = batch.encode(index, asofs, vocab, EncodingConfig(3, 30, 6))
    path = tmp_path / "part.parquet"
    pq.write_table(examples.to_table(index.users), path)
    args = ([path], vocab.n_categories, 6, 7)
    plain = list(train.iter_batches(*args, shuffle=True, seed=3))
    # A weight naming each example's row in the read: every batch must carry its own rows' weights.
    tagged = list(train.iter_batches(*args, shuffle=True, seed=3,
                                     weight_of=lambda asof: np.arange(len(asof), dtype=np.float64)))
    assert len(tagged) == len(plain) and {len(b) for b in tagged} == {3}
    for (inputs, labels), (t_inputs, t_labels, rows) in zip(plain, tagged, strict=True):
        np.testing.assert_array_equal(labels, t_labels)  # the same batches in the same order
        np.testing.assert_array_equal(examples.take(rows.astype(np.int64)).label_matrix(vocab.n_categories), labels)
        np.testing.assert_array_equal(inputs["hist_cat"], t_inputs["hist_cat"])
    weigh = train.recency_weights(asofs[-1].isoformat(), half_life_days=5.0)
    us = np.array([a.timestamp() * 1e6 for a in asofs])
    np.testing.assert_allclose(weigh(us), [0.25, 1.0])


def test_early_stopping_waits_for_min_epochs_past_an_early_dip() -> None:
    # Ciao, rolling origin, block 3 (docs/experiments.md M8): validation NDCG@5 per epoch.
    curve = [0.6843, 0.6791, 0.6789, 0.6838, 0.6835, 0.6860, 0.6866, 0.6857, 0.6864, 0.6825, 0.6850, 0.6840]
    assert _epochs_run(curve, patience=3, min_epochs=1) == (4, 1)  # patience alone stops in the dip
    assert _epochs_run(curve, patience=3, min_epochs=6) == (10, 7)
    assert _epochs_run([0.5, 0.6, 0.7], patience=3, min_epochs=6) == (3, 3)  # max epochs still end it
    assert train.stops_after(8, 3, 3, 6) and not train.stops_after(5, 4, 3, 6) and not train.stops_after(8, 2, 3, 6)


def test_logged_code_is_the_modules_the_pyfunc_imports(tmp_path) -> None:
    from pipelines.model.pyfunc import PACKAGE_DIR, copy_package_source, model_modules

    modules = {p.as_posix() for p in model_modules()}
    # what loading the model imports, directly or through another module, and the package folders
    # on the way; nothing of the data path, the stack, the UI or the scoring job
    assert {"__init__.py", "model/__init__.py", "model/pyfunc.py", "model/core.py", "features/batch.py",
            "model/inference.py", "platform/tracking.py", "config.py"} <= modules
    assert not [m for m in modules if m.split("/")[0] in ("devstack", "ops", "ui", "data", "serving", "flows")]
    copied = copy_package_source(tmp_path)
    assert {p.relative_to(copied).as_posix() for p in copied.rglob("*") if p.is_file()} == modules
    assert all((copied / m).read_bytes() == (PACKAGE_DIR / m).read_bytes() for m in modules)
