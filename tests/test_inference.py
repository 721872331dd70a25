"""The numpy runtime: the same weights give the Keras model's probabilities and ranking, every
architecture numpy does not run is refused (so the Keras model scores it), and loading a model
version's files this way imports no TensorFlow."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.model.core import PYFUNC_CLASS, load_numpy_core, pickled_class
from pipelines.model.inference import UnsupportedModel, erf, gelu, load_numpy_network
from pipelines.model.network import Predictor, build_model

FIXTURES = Path(__file__).resolve().parent / "fixtures"
L = 12


def random_weights(model, seed: int) -> None:
    """Move every weight off its initial value (biases start at 0, which would hide a wrong bias)."""
    rng = np.random.default_rng(seed)
    model.set_weights([w + rng.normal(0, 0.2, w.shape).astype(np.float32) for w in model.get_weights()])


def inputs(batch: int, n_categories: int, *, seed: int = 0, slots: int = 5, holes: bool = False) -> dict:
    """Right-aligned sequences of every length from 0 to L (rows unsorted), up to ``slots`` history
    categories; with ``holes`` some rows also have padding in the middle."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, L + 1, batch)
    lengths[:3] = (0, L, 1)
    real = np.arange(L)[None, :] >= (L - lengths)[:, None]
    if holes:
        real[3::4, L - 3] = False
    x = {"seq_cat": rng.integers(1, n_categories, (batch, L)), "seq_beh": rng.integers(1, 7, (batch, L)),
         "seq_dow": rng.integers(0, 7, (batch, L)), "seq_hour": rng.integers(0, 24, (batch, L)),
         "seq_age": rng.exponential(3.0, (batch, L))}
    x = {k: np.where(real, v, 0).astype(np.float32 if k == "seq_age" else np.int32) for k, v in x.items()}
    hist_cat = np.zeros((batch, slots), np.int32)
    hist_feat = np.zeros((batch, slots, 8), np.float32)
    for row in range(batch):
        k = int(rng.integers(0, slots + 1))
        hist_cat[row, :k] = rng.choice(np.arange(2, n_categories), k, replace=False)
        hist_feat[row, :k] = rng.exponential(1.0, (k, 8)).astype(np.float32)
        hist_feat[row, :k, 0] = rng.integers(1, 9, k)
    return {**x, "hist_cat": hist_cat, "hist_feat": hist_feat}


def saved(tmp_path: Path, seed: int = 0, **kwargs) -> tuple[object, Path]:
    model = build_model(kwargs.pop("n_categories", 40), 7, L, embed_dim=8, **kwargs)
    random_weights(model, seed)
    path = tmp_path / "model.keras"
    model.save(path)
    return model, path


def test_erf_and_gelu_match_the_exact_functions() -> None:
    x = np.linspace(-6, 6, 20001, dtype=np.float32)
    exact = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert np.abs(erf(x) - exact).max() < 5e-7
    exact_gelu = 0.5 * x.astype(np.float64) * (1 + exact_gelu_erf(x))
    np.testing.assert_allclose(gelu(x), exact_gelu, atol=3e-6)


def exact_gelu_erf(x: np.ndarray) -> np.ndarray:
    return np.array([math.erf(v / math.sqrt(2.0)) for v in x.astype(np.float64)])


@pytest.mark.parametrize("options", [{}, {"residual_base": True}, {"use_repeat": False}, {"age_scale": 4.0}],
                         ids=["default", "residual_base", "no_repeat", "age_scale"])
def test_the_same_weights_give_the_keras_probabilities(tmp_path: Path, options: dict) -> None:
    model, path = saved(tmp_path, **options)
    network = load_numpy_network(path)
    x = inputs(64, 40, seed=3)
    np.testing.assert_allclose(network(x), Predictor(model)(x), rtol=1e-5, atol=1e-6)
    # sequences trimmed to the longest row (as the engine feeds them) and sliced predict agree too
    np.testing.assert_allclose(network.predict(x, batch_size=10), Predictor(model)(x), rtol=1e-5, atol=1e-6)


def test_padding_in_the_middle_of_a_sequence_is_masked_as_keras_masks_it(tmp_path: Path) -> None:
    model, path = saved(tmp_path, seed=5)
    x = inputs(48, 40, seed=6, holes=True)
    np.testing.assert_allclose(load_numpy_network(path)(x), Predictor(model)(x), rtol=1e-5, atol=1e-6)


def test_the_top_n_is_the_keras_ranking(tmp_path: Path) -> None:
    model, path = saved(tmp_path, seed=1, n_categories=300)
    network = load_numpy_network(path)
    x = inputs(200, 300, seed=7)
    codes, scores = network.top_n(x, 50)
    keras_codes, keras_scores = Predictor(model).top_n(x, 50)
    assert codes.shape == keras_codes.shape == (200, 50) and codes.min() >= 2
    np.testing.assert_allclose(scores, keras_scores, rtol=1e-5, atol=1e-6)
    # the same categories in the same order, except where two probabilities are within float noise
    gaps = np.abs(np.diff(keras_scores, axis=1))
    near_tie = np.zeros_like(codes, bool)
    near_tie[:, 1:] |= gaps < 1e-5
    near_tie[:, :-1] |= gaps < 1e-5
    assert (codes == keras_codes)[~near_tie].all()
    probs = network(x)
    np.testing.assert_allclose(np.take_along_axis(probs, codes, 1), scores, rtol=1e-6)
    assert network.top_n(x, 1000)[0].shape == (200, 298)  # never padding or OOV


def test_ties_keep_the_lower_index_first_also_at_the_cut_as_keras_does(tmp_path: Path) -> None:
    model = build_model(40, 7, L, embed_dim=8, use_repeat=False)
    explore = model.get_layer("migration_scorer").explore
    bias = np.zeros(40, np.float32)
    bias[[5, 9, 20]] = 1.0  # three equal leaders, then 35 equal others
    explore.set_weights([np.zeros_like(explore.get_weights()[0]), bias])
    model.save(tmp_path / "model.keras")
    x = inputs(4, 40)
    codes, scores = load_numpy_network(tmp_path / "model.keras").top_n(x, 5)
    np.testing.assert_array_equal(codes, np.tile([5, 9, 20, 2, 3], (4, 1)))
    np.testing.assert_array_equal(codes, Predictor(model).top_n(x, 5)[0])
    assert scores[:, :3].min() > scores[:, 3:].max()


def test_an_empty_batch_scores_nothing(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    network = load_numpy_network(path)
    x = {k: v[:0] for k, v in inputs(4, 40).items()}
    assert network(x).shape == (0, 40)
    codes, scores = network.top_n(x, 5)
    assert codes.shape == scores.shape == (0, 5)


@pytest.mark.parametrize("build, reason", [
    ({"encoder": "attention"}, "encoder 'attention'"),
    ({"sparse": False}, "before the sparse repeat path"),
], ids=["attention", "dense"])
def test_architectures_numpy_does_not_run_are_refused_by_name(tmp_path: Path, build: dict, reason: str) -> None:
    _, path = saved(tmp_path, **build)
    with pytest.raises(UnsupportedModel, match=reason):
        load_numpy_network(path)


def test_the_legacy_fixture_is_refused_and_a_broken_archive_named(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel):
        load_numpy_network(FIXTURES / "legacy_dense_model.keras")
    broken = tmp_path / "model.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a Keras 3 model archive"):
        load_numpy_network(broken)


def _version_folder(tmp_path: Path, model_path: Path, pickle_class: tuple[str, str] = PYFUNC_CLASS) -> Path:
    """A model version's files as MLflow lays them out (only what the numpy core reads)."""
    folder = tmp_path / "version"
    (folder / "artifacts").mkdir(parents=True)
    shutil.copy(model_path, folder / "artifacts" / "model.keras")
    (folder / "artifacts" / "vocab.json").write_text(json.dumps(
        {"categories": [f"c{i}" for i in range(38)], "behaviors": ["view", "cart", "fav", "buy", "review"]}))
    (folder / "artifacts" / "encoding.json").write_text(json.dumps({"horizon_days": 1.0, "lookback_days": 3.0,
                                                                     "seq_len": L}))
    module, name = pickle_class
    # protocol 5: SHORT_BINUNICODE module, SHORT_BINUNICODE name, STACK_GLOBAL, EMPTY_TUPLE, NEWOBJ, STOP
    (folder / "python_model.pkl").write_bytes(b"\x80\x05" + _short(module) + _short(name) + b"\x93)\x81.")
    return folder


def _short(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def test_a_version_folder_loads_as_a_numpy_core_without_importing_tensorflow(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    folder = _version_folder(tmp_path, path)
    assert pickled_class(folder / "python_model.pkl") == PYFUNC_CLASS
    probe = ("import sys; from pipelines.model.core import load_numpy_core; "
             f"core = load_numpy_core({str(folder)!r}); "
             "print(core.runtime, core.vocab.n_categories, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["numpy", "40", "False", "False"]


def test_a_foreign_pyfunc_or_a_vocabulary_mismatch_is_not_run_in_numpy(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    foreign = _version_folder(tmp_path / "a", path, ("somebody.else", "Model"))
    with pytest.raises(UnsupportedModel, match="not an InterestMigrationPyfunc"):
        load_numpy_core(foreign)
    mismatch = _version_folder(tmp_path / "b", path)
    (mismatch / "artifacts" / "vocab.json").write_text(json.dumps({"categories": ["a"], "behaviors": []}))
    with pytest.raises(UnsupportedModel, match="the network scores 40 categories, the vocabulary has 3"):
        load_numpy_core(mismatch)
