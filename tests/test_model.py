"""Model: shapes, save/load round trip, and behaviour on a tiny planted pattern; the pyfunc class
is where old and new model versions look for it."""

from __future__ import annotations

import datetime as dt
import pickle

import keras
import numpy as np
import pandas as pd
import pytest

from pipelines.config import load_settings
from pipelines.features.examples import N_HIST, EncodingConfig, encode_examples, to_model_inputs
from pipelines.features.vocab import build_vocab
from pipelines.model.network import DEFAULT_ENCODER, build_model, load_keras_model
from pipelines.model.pyfunc import InterestMigrationPyfunc, events_to_table, score_events
from pipelines.model.train import ranking_loss

L = 8


def tiny_inputs(batch: int, n_categories: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cat = rng.integers(2, n_categories, size=(batch, L)).astype(np.int32)
    cat[0, :5] = 0  # padding on the left
    cat[1] = 0  # a user without history
    hist = np.zeros((batch, n_categories, N_HIST), np.float32)
    hist[:, 2:, 0] = rng.random((batch, n_categories - 2)) > 0.5
    return {"seq_cat": cat, "seq_beh": rng.integers(2, 5, size=(batch, L)).astype(np.int32),
            "seq_age": rng.random((batch, L)).astype(np.float32), "seq_dow": rng.integers(0, 7, (batch, L)).astype(np.int32),
            "seq_hour": rng.integers(0, 24, (batch, L)).astype(np.int32), "hist": hist}


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
    x["hist"][:, 2:, 0] = 1.0
    x["hist"][:, 2:, 3] = np.arange(5, dtype=np.float32)  # decay_long 0..4 over categories 2..6
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
