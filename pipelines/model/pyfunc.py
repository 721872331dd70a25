"""The scoring contract: the MLflow pyfunc model every consumer loads, and what it is logged with.

The pyfunc's ``predict`` is the public contract, for any consumer and for a champion from
elsewhere. For this product's own models the daily scoring skips the pandas round trip: it asks
the loaded pyfunc for its :class:`ModelCore` (the Keras model as a :class:`Predictor`, the
vocabulary and the encoding config) and runs the batch encoder and the model on Arrow data.

``InterestMigrationPyfunc.predict(events, params={"as_of": ISO, "top_n": 50})`` takes raw events
(columns :data:`~pipelines.contracts.MODEL_INPUT_COLUMNS`, raw ids, UTC-aware ``ts``) and returns
one row per user in the input: ``user_id``, ``categories`` (best first, real ids, at most
``top_n``) and ``scores``. Only events strictly before ``as_of`` (and within the look-back)
count; ids the vocabulary does not know land in the OOV bucket and are never returned.

A logged model carries the Keras model and the vocabularies as artifacts, the source of the
modules of the ``pipelines`` package that this module imports as its code
(:func:`copy_package_source`, so it loads where this checkout is not installed) and only real
packages as requirements (:func:`pip_requirements`).
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

from pipelines.contracts import EVENT_SCHEMA, MODEL_INPUT_COLUMNS
from pipelines.features.batch import encode, index_events
from pipelines.features.examples import EncodingConfig
from pipelines.features.vocab import Vocab
from pipelines.model.activity import ActivityModel
from pipelines.model.core import ModelCore
from pipelines.model.network import Predictor, configure_threads, load_keras_model
from pipelines.platform.tracking import installed_version

DEFAULT_TOP_N = 50
# The folder of the ``pipelines`` package: logged as the model's code (``code_paths``).
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Distributions the model needs at load time besides its own code (pinned to the installed versions).
_RUNTIME_DISTRIBUTIONS = ("mlflow", "tensorflow-cpu", "keras", "pandas", "pyarrow", "numpy")


def events_to_table(events: pd.DataFrame) -> pa.Table:
    """The scoring input (a DataFrame with :data:`MODEL_INPUT_COLUMNS`) as an EVENT_SCHEMA table:
    ids as strings, ``ts`` as UTC microseconds, ``value`` empty. Raises ValueError naming the
    missing columns."""
    missing = [c for c in MODEL_INPUT_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"events input lacks column(s) {missing}; expected {list(MODEL_INPUT_COLUMNS)}")
    frame = pd.DataFrame({c: events[c].astype(str) for c in ("user_id", "item_id", "category_id", "behavior")})
    ts = _utc_times(events["ts"])
    frame["ts"] = ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    frame["value"] = pd.Series(np.nan, index=frame.index, dtype="float64")
    return pa.Table.from_pandas(frame.reset_index(drop=True), schema=EVENT_SCHEMA, preserve_index=False)


def _utc_times(column: pd.Series) -> pd.Series:
    """The ``ts`` input as UTC times: datetimes as they are; text as ISO 8601, whose fractional
    seconds may differ from row to row (a JSON serving example writes ``12:29:30+00:00`` next to
    ``15:28:22.088000+00:00``, and pandas otherwise guesses one format from the first row), else
    read row by row. Raises ValueError naming the column and the first value it cannot read."""
    if pd.api.types.is_datetime64_any_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return pd.to_datetime(column, utc=True)
    try:
        return pd.to_datetime(column, utc=True, format="ISO8601")
    except (ValueError, TypeError):
        try:
            return pd.to_datetime(column, utc=True, format="mixed")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"events input column 'ts': {exc}") from None


def score_events(model: keras.Model | Predictor, vocab: Vocab, config: EncodingConfig, events: pd.DataFrame,
                 as_of: pd.Timestamp | str, top_n: int, batch_size: int = 4096, *,
                 activity: ActivityModel | None = None) -> pd.DataFrame:
    """The scoring contract on an in-memory Keras model: one row per user in ``events`` with
    ``user_id``, ``categories`` (best first, real ids, at most ``top_n``) and ``scores`` (times
    the user's P(active) with an ``activity`` model). Only events strictly before ``as_of`` (and
    within the look-back) are used; unknown ids are OOV."""
    as_of = pd.Timestamp(as_of)
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    index = index_events(events_to_table(events), vocab)
    examples = encode(index, [as_of.to_pydatetime()], vocab, config, with_labels=False)
    parts = []
    for lo in range(0, examples.n, batch_size):
        rows = np.arange(lo, min(lo + batch_size, examples.n))
        parts.append(predictor.top_n(examples.take(rows).model_inputs(config.seq_len, trim=predictor.sparse), top_n))
    ids = vocab.category_id_array()
    width = parts[0][0].shape[1] if parts else 0
    codes = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, width), np.int64)
    scores = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, width), np.float32)
    if activity is not None and len(scores):
        scores = scores * activity.p_active(index, examples.user, as_of.to_pydatetime())[:, None]
    offsets = pa.array(np.arange(len(codes) + 1, dtype=np.int32) * width)
    return pd.DataFrame({
        "user_id": index.users.take(pa.array(examples.user)).to_pylist(),
        "categories": pa.ListArray.from_arrays(offsets, ids.take(pa.array(codes.ravel()))).to_pylist(),
        "scores": pa.ListArray.from_arrays(offsets, pa.array(scores.ravel().astype(np.float64))).to_pylist(),
    })


class InterestMigrationPyfunc(mlflow.pyfunc.PythonModel):
    """The scoring contract: ``predict(events_df, params={"as_of": ISO, "top_n": 50})``.

    Artifacts: ``keras_model`` (model.keras), ``vocab`` (vocab.json), ``encoding`` (encoding.json),
    ``activity`` (activity.json, P(active in the horizon): scores are P(active) x P(c | active)).
    """

    def load_context(self, context: Any) -> None:
        configure_threads()
        self.model = load_keras_model(context.artifacts["keras_model"])
        self.vocab = Vocab.from_dict(json.loads(Path(context.artifacts["vocab"]).read_text()))
        self.config = EncodingConfig(**json.loads(Path(context.artifacts["encoding"]).read_text()))
        self.predictor = Predictor(self.model)
        path = context.artifacts.get("activity")  # models logged before P(active) existed have none
        self.activity = ActivityModel.from_dict(json.loads(Path(path).read_text())) if path else None

    def core(self) -> ModelCore:
        """The fast scoring core (what the daily scoring uses instead of :meth:`predict`)."""
        return ModelCore(self.predictor, self.vocab, self.config, getattr(self, "activity", None))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        params = params or {}
        if not params.get("as_of"):
            raise ValueError("params['as_of'] (ISO-8601 UTC timestamp) is required")
        return score_events(self.predictor, self.vocab, self.config, model_input, pd.Timestamp(params["as_of"]),
                            int(params.get("top_n") or DEFAULT_TOP_N), activity=getattr(self, "activity", None))


def scoring_signature(outputs: Any) -> ModelSignature:
    """The pyfunc signature of the scoring contract. ``ts`` is declared AnyType because MLflow's
    datetime column type rejects timezone-aware values, and the contract's ts is UTC-aware;
    ``as_of`` defaults to empty, which :meth:`InterestMigrationPyfunc.predict` rejects (it must
    be given)."""
    inputs = Schema([ColSpec("string", "user_id"), ColSpec("string", "item_id"), ColSpec("string", "category_id"),
                     ColSpec("string", "behavior"), ColSpec(AnyType(), "ts")])
    params = ParamSchema([ParamSpec("as_of", "string", ""), ParamSpec("top_n", "long", DEFAULT_TOP_N)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def copy_package_source(dest: Path) -> Path:
    """The modules of the ``pipelines`` package that loading and calling this pyfunc can import
    (:func:`model_modules`), copied under ``dest`` (``dest/pipelines``): the ``code_paths`` entry of
    a logged model. Returns the copy's folder. Only these travel with the model: the whole package
    is about 120 files, each a request to fetch through the MLflow server on every machine that
    loads a new version, where the model needs about 20."""
    target = dest / PACKAGE_DIR.name
    for relative in model_modules():
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_DIR / relative, target / relative)
    return target


def model_modules(root: str = __name__) -> list[Path]:
    """The files (relative to :data:`PACKAGE_DIR`) of ``root`` and every ``pipelines`` module it
    imports, directly or through another, at module level or inside a function (read from the
    source, so nothing is imported), with the ``__init__.py`` of each package on the way."""
    package = PACKAGE_DIR.name
    seen: set[Path] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        if parts[0] != package:
            continue
        base = PACKAGE_DIR.joinpath(*parts[1:])
        source = base / "__init__.py" if (base / "__init__.py").is_file() else base.with_suffix(".py")
        relative = source.relative_to(PACKAGE_DIR)
        if not source.is_file() or relative in seen:
            continue  # a name imported from a module (``from pipelines.x import y``), not a module itself
        seen.add(relative)
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                todo.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo.append(node.module)
                todo.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return sorted(seen)


def pip_requirements() -> list[str]:
    """What a logged model installs: MLflow, TensorFlow (as ``tensorflow-cpu``), Keras, pandas,
    pyarrow and numpy at their installed versions. The ``pipelines`` code travels with the model
    (``code_paths``), so no requirement names this project (no index serves it)."""
    return [f"{name}=={installed_version(name)}" for name in _RUNTIME_DISTRIBUTIONS]
