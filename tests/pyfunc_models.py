"""A small real pyfunc model obeying the scoring contract, and helpers to log/register it for tests.

``FrequencyModel`` ranks categories by the user's decayed frequency blended with global
popularity (variant ``good``), or by *least* popular first (variant ``bad``: a deliberately worse
challenger). It follows the pyfunc scoring contract (:mod:`pipelines.model.pyfunc`): input events
(raw ids, tz-aware ``ts``), params ``as_of`` / ``top_n``, output one row per input user with
``categories``/``scores``.

It is pickled *by value* (cloudpickle), so loading it needs no import of this module, and it is
logged through :mod:`pipelines.platform.tracking` to the real MLflow server of the test session.
Nothing here is a mock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import sys
from typing import Any

import cloudpickle
import mlflow
import pandas as pd
import pyarrow as pa
from mlflow.models import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec

from pipelines.config import Settings
from pipelines.contracts import EVENT_SCHEMA
from pipelines.platform import layout, storage, tracking

PARAMS_EXAMPLE = {"as_of": "2024-01-04T00:00:00+00:00", "top_n": 50}


class FrequencyModel(mlflow.pyfunc.PythonModel):
    """Decayed user frequency + global popularity (``good``) or anti-popularity (``bad``)."""

    def __init__(self, variant: str = "good", half_life_days: float = 3.0) -> None:
        self.variant = variant
        self.half_life_days = half_life_days

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = params or {}
        as_of = pd.Timestamp(params.get("as_of", PARAMS_EXAMPLE["as_of"]))
        top_n = int(params.get("top_n", 50))
        ts = pd.to_datetime(model_input["ts"], utc=True)
        frame = model_input.loc[ts < as_of].assign(ts=ts[ts < as_of])
        popularity = frame["category_id"].value_counts(normalize=True).to_dict()
        rows = []
        for user in pd.unique(model_input["user_id"]):
            mine = frame[frame["user_id"] == user]
            scores: dict[str, float] = {}
            if self.variant == "good":
                ages = (as_of - mine["ts"]).dt.total_seconds() / 86400.0
                for category, age in zip(mine["category_id"], ages, strict=True):
                    scores[category] = scores.get(category, 0.0) + math.exp2(-age / self.half_life_days)
                total = sum(scores.values()) or 1.0
                scores = {c: 0.8 * s / total for c, s in scores.items()}
                for category, share in popularity.items():
                    scores[category] = scores.get(category, 0.0) + 0.2 * share
            else:
                scores = {c: 0.2 * (1.0 - share) for c, share in popularity.items()}
            ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
            rows.append({"user_id": str(user), "categories": [c for c, _ in ranked],
                         "scores": [float(min(1.0, s)) for _, s in ranked]})
        return pd.DataFrame(rows, columns=["user_id", "categories", "scores"])


def example_events() -> pd.DataFrame:
    """A tiny input example in the canonical event layout (tz-aware ts)."""
    return pd.DataFrame({
        "user_id": ["u1", "u1", "u2"], "item_id": ["i1", "i2", "i3"], "category_id": ["c1", "c2", "c1"],
        "behavior": ["view", "buy", "view"],
        "ts": pd.to_datetime(["2024-01-01T10:00:00Z", "2024-01-02T10:00:00Z", "2024-01-03T10:00:00Z"]).as_unit("us"),
    })


def isolate(settings: Settings) -> Settings:
    """Settings with a registered model name and experiment of the test's own (the MLflow server is
    shared by the whole test session; buckets are per test, registered models are not)."""
    return dataclasses.replace(settings, model_name=f"im-{settings.bucket}", mlflow_experiment=f"exp-{settings.bucket}")


def log_model(settings: Settings, *, variant: str = "good", metrics: dict[str, float] | None = None,
              run_id: str | None = None) -> tuple[str, str]:
    """Log a :class:`FrequencyModel` at artifact path ``model`` of a run (a new, finished one unless
    ``run_id``), with signature (params, no input schema: MLflow datetime columns refuse tz-aware
    values) and an input example, plus ``metrics``. Returns (run_id, ``runs:/<run_id>/model``)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    created = run_id is None
    if run_id is None:
        run_id = str(tracking.client(settings).create_run(tracking.ensure_experiment(settings)).info.run_id)
    signature = ModelSignature(inputs=None, outputs=None, params=ParamSchema(
        [ParamSpec("as_of", "string", PARAMS_EXAMPLE["as_of"]), ParamSpec("top_n", "long", 50)]))
    tracking.log_model(settings, run_id, mlflow.pyfunc, name="model", python_model=FrequencyModel(variant),
                       signature=signature, input_example=(example_events(), PARAMS_EXAMPLE))
    if metrics:
        tracking.log_metrics(settings, run_id, metrics)
    if created:
        tracking.finish_run(settings, run_id)
    return run_id, f"runs:/{run_id}/model"


def register_as_champion(settings: Settings, *, variant: str = "good") -> str:
    """Log, register and alias a model ``champion`` directly (no gate); returns the version."""
    _, uri = log_model(settings, variant=variant)
    version = str(tracking.register_model(settings, uri, {}).version)
    tracking.client(settings).set_registered_model_alias(settings.model_name, "champion", version)
    return version


def clean_events(days: dict[dt.date, list[tuple[str, str, str, str, int]]]) -> dict[dt.date, pa.Table]:
    """Arrow tables in EVENT_SCHEMA per day from (user, item, category, behavior, hour) tuples."""
    tables = {}
    for day, rows in days.items():
        ts = [dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC) for *_, hour in rows]
        tables[day] = pa.Table.from_pydict({
            "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "category_id": [r[2] for r in rows],
            "behavior": [r[3] for r in rows], "ts": ts, "value": [None] * len(rows)}, schema=EVENT_SCHEMA)
    return tables


def write_clean(settings: Settings, tables: dict[dt.date, pa.Table], part: str = "part-00000.parquet") -> None:
    """Write the tables as clean partitions ``clean/events/dt=D/<part>``."""
    for day, table in tables.items():
        storage.write_parquet(settings, layout.partition_prefix(layout.CLEAN, day) + part, table)


def register_keras_champion(settings: Settings, keras_model_path: str, vocab: Any, config: Any) -> str:
    """Log this product's own pyfunc (:class:`~pipelines.model.pyfunc.InterestMigrationPyfunc`)
    around a saved Keras model with its vocabulary and encoding config, register it and alias it
    ``champion``; returns the version."""
    import json
    import tempfile
    from pathlib import Path

    from pipelines.model.pyfunc import InterestMigrationPyfunc

    with tempfile.TemporaryDirectory() as tmp:
        vocab_path, encoding_path = Path(tmp) / "vocab.json", Path(tmp) / "encoding.json"
        vocab_path.write_text(json.dumps(vocab.to_dict()))
        encoding_path.write_text(json.dumps(config.to_dict()))
        run_id = str(tracking.client(settings).create_run(tracking.ensure_experiment(settings)).info.run_id)
        signature = ModelSignature(inputs=None, outputs=None, params=ParamSchema(
            [ParamSpec("as_of", "string", PARAMS_EXAMPLE["as_of"]), ParamSpec("top_n", "long", 50)]))
        tracking.log_model(settings, run_id, mlflow.pyfunc, name="model", python_model=InterestMigrationPyfunc(),
                           artifacts={"keras_model": str(keras_model_path), "vocab": str(vocab_path),
                                      "encoding": str(encoding_path)}, signature=signature)
        tracking.finish_run(settings, run_id)
    version = str(tracking.register_model(settings, f"runs:/{run_id}/model", {}).version)
    tracking.client(settings).set_registered_model_alias(settings.model_name, "champion", version)
    return version
