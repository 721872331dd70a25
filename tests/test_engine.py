"""The scoring engine without services: the fast core gives the public contract's ranking, batches
keep their budgets, a pyfunc's output is checked and ranked as it comes, and the shard staging files
hand every event to exactly one bucket."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.contracts import MODEL_INPUT_COLUMNS, PREDICTION_SCHEMA
from pipelines.features.examples import EncodingConfig
from pipelines.features.vocab import build_vocab
from pipelines.model.core import ModelCore
from pipelines.model.network import Predictor, build_model
from pipelines.model.pyfunc import score_events
from pipelines.serving import contract, engine, shards
from pipelines.serving.interests import InterestParams

DAY = dt.date(2024, 1, 3)
AS_OF = dt.datetime(2024, 1, 4, tzinfo=dt.UTC)
SPEC = engine.RowSpec(as_of=AS_OF, as_of_date=DAY, horizon_days=1, model_name="m", model_version="7",
                      params=InterestParams(current_k=3, emerging_k=2, fading_k=2), top_k=4, top_n=6, batch_users=16)


def events(n_users: int = 50, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = n_users * 6
    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 3 * 86400, n), unit="s")
    return pa.table({
        "user_id": [f"u{i}" for i in rng.integers(0, n_users, n)],
        "item_id": [f"i{i}" for i in rng.integers(0, 99, n)],
        "category_id": [f"c{i}" for i in rng.zipf(1.5, n) % 12],  # c10, c11: not in the vocabulary below
        "behavior": np.array(["view", "buy", "cart"])[rng.integers(0, 3, n)],
        "ts": pa.array(ts.as_unit("us")),
    })


def test_the_fast_core_ranks_as_the_public_contract_and_fills_every_column() -> None:
    table = events()
    vocab = build_vocab([f"c{i}" for i in range(10)], 1, ["view", "buy", "cart"])
    config = EncodingConfig(horizon_days=1, lookback_days=3, seq_len=5)
    model = build_model(vocab.n_categories, vocab.n_behaviors, 5, embed_dim=8)
    out = pa.concat_tables(engine.CoreScorer(ModelCore(Predictor(model), vocab, config)).score(table, SPEC))
    assert out.schema.equals(PREDICTION_SCHEMA)
    assert sorted(out["user_id"].to_pylist()) == sorted(set(table["user_id"].to_pylist()))
    public = score_events(model, vocab, config, table.to_pandas(), AS_OF, SPEC.top_n).set_index("user_id")
    for row in out.to_pylist():
        assert row["predicted_categories"] == public.loc[row["user_id"], "categories"][:SPEC.top_k]
        np.testing.assert_allclose(row["predicted_scores"], public.loc[row["user_id"], "scores"][:SPEC.top_k],
                                   rtol=1e-6)
        assert row["as_of_date"] == DAY and row["model_version"] == "7" and 0 <= row["migration_score"] <= 1
        assert 1 <= len(row["current_categories"]) <= 3  # raw ids, also those outside the vocabulary


def test_batches_keep_the_row_cell_and_slot_budgets(monkeypatch) -> None:
    monkeypatch.setattr(engine, "_CELL_BUDGET", 1000)
    monkeypatch.setattr(engine, "_SLOT_BUDGET", 60)
    counts = np.sort(np.random.default_rng(1).integers(0, 25, 300))
    batches = list(engine._batches(counts, n_categories=40, batch_users=50))
    assert np.array_equal(np.concatenate(batches), np.arange(300))
    for rows in batches:
        assert len(rows) <= 25  # 1000 cells / 40 categories
        assert len(rows) == 1 or len(rows) * max(counts[rows].max(), 1) <= 60


class ListModel:
    """A pyfunc-like object obeying the scoring contract, with a defect to switch on."""

    def __init__(self, defect: str | None = None) -> None:
        self.defect = defect

    def predict(self, frame: pd.DataFrame, params: dict) -> pd.DataFrame:
        users = sorted(set(frame["user_id"]))
        if self.defect == "missing user":
            users = users[1:]
        cats = [[7, 3, 7] if self.defect is None else ["c1", "c2"] for _ in users]  # ints and duplicates
        scores = [[0.5, 0.4, 0.1] if self.defect is None else [0.9] if self.defect == "lengths" else [0.9, 0.1]
                  for _ in users]
        if self.defect in ("nan", "negative"):
            scores[-1] = [0.9, float("nan") if self.defect == "nan" else -0.2]
        return pd.DataFrame({"user_id": users, "categories": cats, "scores": scores})


def test_a_pyfunc_output_is_ranked_as_it_comes_and_its_defects_are_named() -> None:
    table = events(n_users=20).select(MODEL_INPUT_COLUMNS)
    out = pa.concat_tables(engine.PyfuncScorer(ListModel(), "models:/x/1", naive_ts=False).score(table, SPEC))
    assert out.num_rows == 20 and out.schema.equals(PREDICTION_SCHEMA)
    assert set(map(tuple, out["predicted_categories"].to_pylist())) == {("7", "3", "7")}  # as returned, ids as text
    with pytest.raises(engine.ScoringError, match="no row for 1 of"):
        list(engine.PyfuncScorer(ListModel("missing user"), "models:/x/1", naive_ts=False).score(table, SPEC))
    with pytest.raises(engine.ScoringError, match="got 2 categories but 1 scores"):
        list(engine.PyfuncScorer(ListModel("lengths"), "models:/x/1", naive_ts=False).score(table, SPEC))
    # NaN would publish as a migration score of 0, a negative score as a probability below zero.
    for defect, shown in (("nan", "nan"), ("negative", "-0.2")):
        with pytest.raises(engine.ScoringError, match=rf"1 scores are not finite numbers >= 0 \(user '.*' got {shown}\)"):
            list(engine.PyfuncScorer(ListModel(defect), "models:/x/1", naive_ts=False).score(table, SPEC))


def test_the_contract_refuses_scores_that_are_not_finite_or_negative() -> None:
    scores = np.array([[0.5, 0.2], [np.nan, 0.1], [0.3, -1.0]])
    valid = np.array([[True, True], [True, True], [True, False]])  # a padded slot may hold anything
    with pytest.raises(contract.ScoringError, match=r"1 scores .* in 1 of 3 rows \(first: row 1, rank 1: nan\)"):
        contract.check_scores(scores, valid)
    contract.check_scores(scores[[0, 2]], valid[[0, 2]])


def test_staging_hands_every_event_to_the_one_bucket_file_of_its_users_shard(tmp_path: Path) -> None:
    day_tables = [events(n_users=200, seed=s).cast(shards._INPUT_SCHEMA) for s in range(3)]
    staged = shards._Staging(tmp_path, 3)
    staged.buckets = 4
    for table in day_tables:
        staged.add(table)
    staged.close()
    assert sum(staged.rows) == sum(t.num_rows for t in day_tables)
    owners: dict[str, tuple[int, int]] = {}
    read = []
    for (number, bucket), path in staged.paths.items():
        table = shards.read_bucket(path)
        assert table.column_names == MODEL_INPUT_COLUMNS and table.num_rows > 0
        for user in table["user_id"].to_pylist():
            assert shards.crc32_strings(pa.array([user]))[0] % 3 == number
            assert owners.setdefault(user, (number, bucket)) == (number, bucket)  # all of a user's days together
        read.append(table)
    everything = pa.concat_tables(read)
    assert everything.num_rows == sum(staged.rows)
    assert sorted(everything["item_id"].to_pylist()) == sorted(sum((t["item_id"].to_pylist() for t in day_tables), []))
    assert shards._bucket_count(first_rows=1000, first_bytes=10_000, total_bytes=10_000 * 30, shards=2) == 1
    assert shards._bucket_count(1_000_000, 10_000_000, 10_000_000 * 30, 2) == 15


def test_the_numpy_network_publishes_the_rows_the_keras_model_publishes(tmp_path: Path) -> None:
    from pipelines.model.inference import load_numpy_network

    table = events(n_users=80, seed=3)
    vocab = build_vocab([f"c{i}" for i in range(10)], 1, ["view", "buy", "cart"])
    config = EncodingConfig(horizon_days=1, lookback_days=3, seq_len=5)
    model = build_model(vocab.n_categories, vocab.n_behaviors, 5, embed_dim=8)
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
    model.save(tmp_path / "model.keras")
    network = load_numpy_network(tmp_path / "model.keras")
    assert network.thread_safe  # 80 users in batches of 16: two model threads at work
    by_keras = pa.concat_tables(engine.CoreScorer(ModelCore(Predictor(model), vocab, config)).score(table, SPEC))
    by_numpy = pa.concat_tables(engine.CoreScorer(ModelCore(network, vocab, config)).score(table, SPEC))
    keras_rows = {row["user_id"]: row for row in by_keras.to_pylist()}
    assert by_numpy.num_rows == by_keras.num_rows == len(keras_rows)
    for row in by_numpy.to_pylist():
        expected = keras_rows[row["user_id"]]
        for column in ("predicted_categories", "emerging_categories", "fading_categories", "current_categories"):
            assert row[column] == expected[column], column
        np.testing.assert_allclose(row["predicted_scores"], expected["predicted_scores"], rtol=1e-5)
        assert row["migration_score"] == pytest.approx(expected["migration_score"], abs=1e-5)
