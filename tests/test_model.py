"""Model: shapes, save/load round trip, and behaviour on a tiny planted pattern; the sparse repeat
path gives the dense path's scores with the same weights; a model saved by the code before the
sparse path (tests/fixtures/legacy_dense_model.keras, dense ``hist`` input) still loads and scores;
the pyfunc class is where old and new model versions look for it."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from pipelines.config import load_settings
from pipelines.features.batch import encode_examples, to_model_inputs
from pipelines.features.examples import N_HIST, EncodingConfig
from pipelines.features.vocab import build_vocab
from pipelines.model.network import (
    DEFAULT_ENCODER,
    Predictor,
    build_model,
    dense_history,
    is_sparse,
    load_keras_model,
)
from pipelines.model.pyfunc import InterestMigrationPyfunc, events_to_table, score_events
from pipelines.model.train import ranking_loss

L = 8
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def tiny_inputs(batch: int, n_categories: int, seed: int = 0, slots: int = 4) -> dict[str, np.ndarray]:
    """Sparse inputs: left-padded sequences (row 1 without history) and up to ``slots`` history
    categories per row (0 = padding slot)."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(2, n_categories, size=(batch, L)).astype(np.int32)
    cat[0, :5] = 0  # padding on the left
    cat[1] = 0  # a user without history
    x = {"seq_cat": cat, "seq_beh": rng.integers(2, 5, size=(batch, L)).astype(np.int32),
         "seq_age": rng.random((batch, L)).astype(np.float32), "seq_dow": rng.integers(0, 7, (batch, L)).astype(np.int32),
         "seq_hour": rng.integers(0, 24, (batch, L)).astype(np.int32)}
    for name in x:
        x[name][cat == 0] = 0
    hist_cat = np.zeros((batch, slots), np.int32)
    hist_feat = np.zeros((batch, slots, N_HIST), np.float32)
    for row in range(batch):
        k = 0 if row == 1 else int(rng.integers(1, min(slots, n_categories - 2) + 1))
        hist_cat[row, :k] = rng.choice(np.arange(2, n_categories), k, replace=False)
        hist_feat[row, :k] = rng.random((k, N_HIST)) + 0.05
    return {**x, "hist_cat": hist_cat, "hist_feat": hist_feat}


@pytest.mark.parametrize("encoder", ["attention", "gru"])
def test_output_is_one_probability_per_category_and_survives_save_load(encoder: str, tmp_path) -> None:
    model = build_model(7, 7, L, embed_dim=8, encoder=encoder)
    x = tiny_inputs(4, 7)
    probs = np.asarray(model.predict(x, verbose=0))
    assert probs.shape == (4, 7) and np.all((probs >= 0) & (probs <= 1)) and np.isfinite(probs).all()
    model.save(tmp_path / "m.keras")
    again = load_keras_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(again.predict(x, verbose=0)), probs, rtol=1e-5, atol=1e-6)
    assert again.get_layer("sequence_encoder").get_config()["encoder"] == encoder


def test_bad_encoder_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="encoder"):
        build_model(5, 5, L, encoder="lstm-ish")


def shoe_events() -> pd.DataFrame:
    """Half the users only ever buy shoes; the others only ever view books."""
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rows = []
    for u in range(40):
        cat = "shoes" if u % 2 == 0 else "books"
        for day in range(0, 12, 2):
            rows.append((f"u{u}", f"i{day}", cat, "buy" if cat == "shoes" else "view", start + dt.timedelta(days=day)))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "category_id", "behavior", "ts"])
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    return frame


def test_a_user_who_only_buys_shoes_ranks_shoes_first_and_unknown_ids_do_not_crash() -> None:
    keras.utils.set_random_seed(0)
    frame = shoe_events()
    vocab = build_vocab(list(frame["category_id"]) + ["hats", "socks"], 1)
    config = EncodingConfig(horizon_days=4, lookback_days=30, seq_len=L)
    asofs = [dt.datetime(2024, 1, d, tzinfo=dt.UTC) for d in (5, 7, 9)]
    examples = encode_examples(events_to_table(frame), asofs, vocab, config)
    x, y, _ = to_model_inputs(examples, vocab.n_categories, L)
    model = build_model(vocab.n_categories, vocab.n_behaviors, L, embed_dim=8, age_scale=4.0)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy")
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)

    probe = pd.concat([frame[frame["user_id"].isin(["u0", "u1"])], pd.DataFrame({
        "user_id": ["stranger"], "item_id": ["?"], "category_id": ["never-seen"], "behavior": ["teleport"],
        "ts": pd.to_datetime(["2024-01-03"], utc=True).astype("datetime64[us, UTC]")})])
    out = score_events(model, vocab, config, probe, pd.Timestamp("2024-01-13", tz="UTC"), top_n=3).set_index("user_id")
    assert out.loc["u0", "categories"][0] == "shoes"
    assert out.loc["u1", "categories"][0] == "books"
    assert len(out.loc["stranger", "categories"]) == 3  # unknown ids land in OOV, never returned
    assert all(c in vocab.categories for cats in out["categories"] for c in cats)


def test_residual_base_starts_from_decayed_frequency_and_survives_save_load(tmp_path) -> None:
    model = build_model(7, 7, L, embed_dim=8, encoder="gru", residual_base=True)
    scorer = model.get_layer("migration_scorer")
    assert scorer.get_config()["residual_base"] is True
    np.testing.assert_allclose(np.asarray(scorer.base_weights), [0.0, 0.0, 1.0])
    x = tiny_inputs(3, 7)
    x["hist_cat"] = np.tile(np.arange(2, 7, dtype=np.int32), (3, 1))  # every category in every history
    x["hist_feat"] = np.zeros((3, 5, N_HIST), np.float32)
    x["hist_feat"][:, :, 0] = 1.0
    x["hist_feat"][:, :, 3] = np.arange(5, dtype=np.float32)  # decay_long 0..4 over categories 2..6
    def logits() -> np.ndarray:
        p = np.asarray(model.predict(x, verbose=0), np.float64)
        return np.log(p) - np.log1p(-p)

    with_base = logits()
    scorer.base_weights.assign(np.zeros(3, np.float32))
    without = logits()
    # the base logit is exactly log1p(decayed count) of each known category
    np.testing.assert_allclose((with_base - without)[:, 2:], np.tile(np.log1p(np.arange(5.0)), (3, 1)), atol=2e-3)
    scorer.base_weights.assign(np.array([0.0, 0.0, 1.0], np.float32))
    model.save(tmp_path / "r.keras")
    again = load_keras_model(tmp_path / "r.keras")
    np.testing.assert_allclose(np.asarray(again.predict(x, verbose=0)), np.asarray(model.predict(x, verbose=0)),
                               rtol=1e-5, atol=1e-6)


def test_listwise_loss_prefers_the_labelled_category_on_top_and_keeps_bce() -> None:
    y = np.array([[0, 0, 1, 0, 0]], np.float32)
    good = np.array([[0.0, 0.0, 0.6, 0.3, 0.3]], np.float32)
    bad = np.array([[0.0, 0.0, 0.3, 0.6, 0.3]], np.float32)
    loss = ranking_loss(1.0)
    assert float(loss(y, good)) < float(loss(y, bad))
    bce = float(keras.losses.BinaryCrossentropy()(y, good))
    assert float(loss(y, good)) > bce  # the listwise term adds to the BCE
    assert float(ranking_loss(0.0)(y, good)) == pytest.approx(bce)


def test_the_default_encoder_is_the_settings_default() -> None:
    assert DEFAULT_ENCODER == load_settings(environ={}).sequence_encoder == "gru"
    model = build_model(5, 5, L, embed_dim=8)
    assert model.get_layer("sequence_encoder").get_config()["encoder"] == DEFAULT_ENCODER


def test_model_versions_pickled_before_the_split_still_find_the_pyfunc_class() -> None:
    # Versions logged when the model lived in pipelines/model.py pickled the class by reference
    # as pipelines.model.InterestMigrationPyfunc; new ones name pipelines.model.pyfunc.
    old_reference = b"cpipelines.model\nInterestMigrationPyfunc\n."
    assert pickle.loads(old_reference) is InterestMigrationPyfunc
    assert InterestMigrationPyfunc.__module__ == "pipelines.model.pyfunc"
    assert pickle.loads(pickle.dumps(InterestMigrationPyfunc)) is InterestMigrationPyfunc


@pytest.mark.parametrize("encoder", ["attention", "gru"])
@pytest.mark.parametrize("residual_base", [False, True])
def test_sparse_and_dense_repeat_paths_give_the_same_scores_with_the_same_weights(encoder: str,
                                                                                residual_base: bool) -> None:
    sparse = build_model(11, 7, L, embed_dim=8, encoder=encoder, residual_base=residual_base)
    dense = build_model(11, 7, L, embed_dim=8, encoder=encoder, residual_base=residual_base, sparse=False)
    assert is_sparse(sparse) and not is_sparse(dense)
    dense.set_weights(sparse.get_weights())
    x = tiny_inputs(16, 11, seed=4)
    expected = np.asarray(dense.predict({**{k: v for k, v in x.items() if k.startswith("seq")},
                                         "hist": dense_history(x["hist_cat"], x["hist_feat"], 11)}, verbose=0))
    expected[:, :2] = 0.0
    np.testing.assert_allclose(Predictor(sparse)(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Predictor(dense)(x), expected, rtol=1e-5, atol=1e-6)
    # dropping the all-padding leading columns (the engine trims batches) changes nothing
    width = int((x["seq_cat"] > 0).sum(axis=1).max())
    trimmed = {k: (v[:, L - width:] if k.startswith("seq") else v) for k, v in x.items()}
    np.testing.assert_allclose(Predictor(sparse)(trimmed), expected, rtol=1e-5, atol=1e-6)


def test_the_top_n_inside_the_graph_is_the_stable_ranking_of_the_probabilities() -> None:
    model = build_model(30, 7, L, embed_dim=8)
    x = tiny_inputs(12, 30, seed=2)
    probs = Predictor(model)(x)
    codes, scores = Predictor(model).top_n(x, 10)
    expected = np.argsort(-probs[:, 2:], axis=1, kind="stable")[:, :10] + 2
    np.testing.assert_array_equal(codes, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(probs, expected, axis=1), rtol=1e-6)
    assert Predictor(model).top_n(x, 100)[0].shape == (12, 28)  # never padding or OOV


def test_a_model_saved_before_the_sparse_path_still_loads_and_scores_the_same() -> None:
    # Saved by pipelines/model/network.py of commit 081d5e5 (dense ``hist`` [B, V, 8] input), with
    # its inputs and the probabilities that code's model.predict gave.
    legacy = load_keras_model(FIXTURES / "legacy_dense_model.keras")
    saved = np.load(FIXTURES / "legacy_dense_io.npz")
    assert not is_sparse(legacy) and legacy.get_layer("migration_scorer").get_config()["sparse"] is False
    x = {name: saved[name] for name in saved.files if name != "probs"}  # sparse history inputs
    expected = saved["probs"].copy()
    expected[:, :2] = 0.0
    np.testing.assert_allclose(Predictor(legacy)(x), expected, rtol=1e-5, atol=1e-6)
    # the engine trims sequences for sparse models only; a legacy model is padded back to its width
    short = {k: (v[1:, 2:] if k.startswith("seq") else v[1:]) for k, v in x.items()}  # rows of <= 6 events
    np.testing.assert_allclose(Predictor(legacy)(short), expected[1:], rtol=1e-5, atol=1e-6)
    # its weights in today's sparse model give the same scores
    sparse = build_model(9, 7, L, embed_dim=8, age_scale=4.0)
    sparse.set_weights(legacy.get_weights())
    np.testing.assert_allclose(Predictor(sparse)(x), expected, rtol=1e-5, atol=1e-6)


def test_scoring_input_reads_iso_times_whose_fractional_seconds_differ_by_row() -> None:
    # A serving example written as JSON has "12:29:30+00:00" next to "15:28:22.088000+00:00"
    # (millisecond data where some events fall on a whole second); pandas used to guess one format
    # from the first row and refuse the other.
    frame = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["i1", "i2", "i3"], "category_id": ["c", "c", "d"],
                          "behavior": ["view"] * 3,
                          "ts": ["2015-06-01T15:28:22.088000+00:00", "2015-06-01T12:29:30+00:00", "2015-06-01 08:00:00Z"]})
    table = events_to_table(frame)
    assert table["ts"].to_pylist() == [dt.datetime(2015, 6, 1, 15, 28, 22, 88000, tzinfo=dt.UTC),
                                       dt.datetime(2015, 6, 1, 12, 29, 30, tzinfo=dt.UTC),
                                       dt.datetime(2015, 6, 1, 8, 0, tzinfo=dt.UTC)]
    with pytest.raises(ValueError, match="column 'ts'"):
        events_to_table(frame.assign(ts=["2015-06-01T15:28:22+00:00", "not a time", "2015-06-01"]))
