"""The fast scoring core of this product's models, and how a scoring process loads one without
TensorFlow.

:class:`ModelCore` is what the daily scoring, the intraday refresh, the online endpoint and the
evaluation of published columns run (:class:`pipelines.serving.engine.CoreScorer`): a network
(:class:`pipelines.model.inference.NumpyNetwork`, or the Keras model as a
:class:`pipelines.model.network.Predictor`), the vocabulary, the encoding config and the activity
model. :func:`load_numpy_core` builds one from a model version's files (the MLflow pyfunc folder)
in numpy: it imports neither TensorFlow nor Keras nor MLflow's pyfunc loader, which saves a scoring
process several seconds of start-up (docs/model.md has the figures).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.features.batch import EventIndex
from pipelines.features.examples import EncodingConfig
from pipelines.features.vocab import Vocab
from pipelines.model.activity import ActivityModel
from pipelines.model.inference import NumpyNetwork, UnsupportedModel, load_numpy_network

# The class a product model's python_model.pkl instantiates (module, name).
PYFUNC_CLASS = ("pipelines.model.pyfunc", "InterestMigrationPyfunc")


@dataclasses.dataclass
class ModelCore:
    """The fast scoring core of one of this product's models: the network (anything with
    ``sparse``, ``n_categories`` and ``top_n(inputs, n)``, see the module doc), its vocabulary and
    its encoding config."""

    predictor: Any
    vocab: Vocab
    config: EncodingConfig
    activity: ActivityModel | None = None  # P(active in the horizon); None: scores stay P(c | active)

    @property
    def runtime(self) -> str:
        """What runs the network: ``numpy`` (:class:`NumpyNetwork`) or ``keras``."""
        return "numpy" if isinstance(self.predictor, NumpyNetwork) else "keras"

    def scale(self, index: EventIndex, users: np.ndarray, as_of: dt.datetime | np.ndarray) -> np.ndarray:
        """The factor each user's scores are multiplied by: P(active), or 1 without an activity model
        (``as_of``: one time, or int64 microseconds per user of ``users``)."""
        if self.activity is None:
            return np.ones(len(users))
        return self.activity.p_active(index, users, as_of)


def pickled_class(path: Path) -> tuple[str, str] | None:
    """(module, name) of the class a pickled python model instantiates, read from the pickle's
    opcodes without running it; None when the pickle does not start with a class reference."""
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(path.read_bytes()):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif opcode.name == "STACK_GLOBAL":
                return (strings[-2], strings[-1]) if len(strings) >= 2 else None
            elif opcode.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                return module, name
    except (ValueError, OSError):
        return None
    return None


def load_numpy_core(folder: Path) -> ModelCore:
    """The numpy scoring core of a product model version's files (``folder`` holds ``MLmodel``,
    ``python_model.pkl`` and ``artifacts/``). Raises :class:`UnsupportedModel` when the folder is
    not one of this product's models or its network is not one numpy runs; the caller then loads
    the version through MLflow."""
    folder = Path(folder)
    if pickled_class(folder / "python_model.pkl") != PYFUNC_CLASS:
        raise UnsupportedModel(f"{folder}: not an {PYFUNC_CLASS[1]} model")
    artifacts = folder / "artifacts"
    missing = [name for name in ("model.keras", "vocab.json", "encoding.json") if not (artifacts / name).is_file()]
    if missing:
        raise UnsupportedModel(f"{folder}: artifacts {missing} missing")
    network = load_numpy_network(artifacts / "model.keras")
    vocab = Vocab.from_dict(json.loads((artifacts / "vocab.json").read_text()))
    config = EncodingConfig(**json.loads((artifacts / "encoding.json").read_text()))
    if network.n_categories != vocab.n_categories:
        raise UnsupportedModel(f"{folder}: the network scores {network.n_categories} categories, the vocabulary "
                               f"has {vocab.n_categories}")
    activity_file = artifacts / "activity.json"  # models logged before P(active) existed have none
    activity = ActivityModel.from_dict(json.loads(activity_file.read_text())) if activity_file.is_file() else None
    return ModelCore(network, vocab, config, activity)
