"""Features: vocabularies, as-of planning, examples and sparse model inputs (pure functions, tiny
data), the dataset folder written and read back locally, and the batch encoder's parity with the
per-user reference encoder (tests/reference_encoder.py) on random and on real data."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.config import load_settings
from pipelines.contracts import EVENT_SCHEMA
from pipelines.features import batch
from pipelines.features.asof import plan_asof_times
from pipelines.features.batch import Examples, encode_examples, to_model_inputs
from pipelines.features.dataset import Dataset
from pipelines.features.encoding import encode_events
from pipelines.features.examples import HIST_FEATURES, N_HIST, EncodingConfig
from pipelines.features.vocab import OOV, build_vocab
from pipelines.platform import layout
from tests import reference_encoder

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


def events(rows: list[tuple[str, str, str, float]]) -> pa.Table:
    """(user, category, behaviour, days after T0) -> canonical events."""
    frame = pd.DataFrame({"user_id": [r[0] for r in rows], "item_id": [f"i{n}" for n in range(len(rows))],
                          "category_id": [r[1] for r in rows], "behavior": [r[2] for r in rows],
                          "ts": [T0 + dt.timedelta(days=r[3]) for r in rows], "value": [None] * len(rows)})
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    return pa.Table.from_pandas(frame, schema=EVENT_SCHEMA, preserve_index=False)


def test_vocab_keeps_frequent_categories_and_maps_unknown_ids_to_oov() -> None:
    vocab = build_vocab(["a", "a", "b", "c", "c", "c"], min_count=2, behaviors=["view", "teleport"])
    assert vocab.categories == ("c", "a")  # most frequent first, "b" below the minimum count
    assert list(vocab.category_index(["c", "a", "b", "zzz"])) == [2, 3, OOV, OOV]
    assert vocab.behavior_index(["view", "nope"])[1] == OOV
    assert "teleport" in vocab.behaviors
    assert type(vocab).from_dict(vocab.to_dict()) == vocab


def test_asof_plan_orders_splits_without_label_overlap() -> None:
    plan = plan_asof_times(T0, T0 + dt.timedelta(days=40), horizon_days=3, train_step_days=2, eval_step_days=3,
                           validation_count=2, test_count=3)
    horizon = dt.timedelta(days=3)
    assert plan["test"][-1] + horizon <= T0 + dt.timedelta(days=40)
    assert plan["validation"][-1] + horizon <= plan["test"][0]
    assert plan["train"][-1] + horizon <= plan["validation"][0]
    assert plan["train"][0] >= T0 + dt.timedelta(days=1)
    assert len(plan["test"]) == 3 and len(plan["validation"]) == 2


def test_asof_plan_rejects_a_window_too_short() -> None:
    with pytest.raises(ValueError, match="too short"):
        plan_asof_times(T0, T0 + dt.timedelta(days=5), horizon_days=3, train_step_days=1, eval_step_days=1,
                        validation_count=1, test_count=1)
    # The error says how many days it needs (it gave only the dates), and that many are enough.
    for horizon, step, counts in ((3, 1, (2, 2)), (1, 1, (1, 1)), (7, 3, (2, 3)), (90, 30, (2, 24))):
        with pytest.raises(ValueError, match=r"it needs about (\d+) days of events") as caught:
            plan_asof_times(T0, T0 + dt.timedelta(days=1), horizon_days=horizon, train_step_days=1,
                            eval_step_days=step, validation_count=counts[0], test_count=counts[1])
        assert "IM_HORIZON_DAYS" in str(caught.value)
        needed = int(re.search(r"needs about (\d+) days", str(caught.value)).group(1))
        plan = plan_asof_times(T0, T0 + dt.timedelta(days=needed), horizon_days=horizon, train_step_days=1,
                               eval_step_days=step, validation_count=counts[0], test_count=counts[1])
        assert len(plan["train"]) >= 1
        with pytest.raises(ValueError, match="too short"):
            plan_asof_times(T0, T0 + dt.timedelta(days=needed - 1), horizon_days=horizon, train_step_days=1,
                            eval_step_days=step, validation_count=counts[0], test_count=counts[1])


def test_examples_use_only_history_before_asof_and_label_the_horizon() -> None:
    table = events([("u", "a", "view", 0.5), ("u", "a", "buy", 1.5), ("u", "b", "view", 2.5),
                    ("u", "c", "view", 3.5), ("u", "d", "view", 9.0),  # c inside [T, T+3), d after it
                    ("quiet", "a", "view", 0.5)])  # no event in the horizon: not an example
    vocab = build_vocab(["a", "b", "c", "d"], 1)
    config = EncodingConfig(horizon_days=3, lookback_days=30, seq_len=2)
    out = encode_examples(table, [T0 + dt.timedelta(days=3)], vocab, config)
    assert out["user_id"].to_pylist() == ["u"]
    row = out.to_pylist()[0]
    idx = {c: int(vocab.category_index([c])[0]) for c in "abcd"}
    assert row["label"] == [idx["c"]]
    assert row["seq_cat"] == [idx["a"], idx["b"]]  # the last seq_len=2 events before T, oldest first
    assert row["seq_age"] == pytest.approx([1.5, 0.5])
    hist = dict(zip(row["hist_cat"], np.reshape(row["hist_feat"], (-1, N_HIST)).tolist(), strict=True))
    assert set(hist) == {idx["a"], idx["b"]}  # full look-back history, not only the sequence
    assert hist[idx["a"]][HIST_FEATURES.index("log_count")] == pytest.approx(np.log1p(2))
    assert hist[idx["b"]][HIST_FEATURES.index("is_last")] == 1.0
    assert hist[idx["a"]][HIST_FEATURES.index("share")] == pytest.approx(2 / 3)


def test_no_events_and_no_asof_times_give_empty_example_tables() -> None:
    vocab = build_vocab(["a"], 1)
    config = EncodingConfig(3, 30, 4)
    assert encode_examples(events([]), [T0], vocab, config).num_rows == 0
    assert encode_examples(events([("u", "a", "view", 0.5)]), [], vocab, config).num_rows == 0


def test_scoring_mode_keeps_every_user_even_without_history() -> None:
    table = events([("u", "a", "view", 0.5), ("later", "a", "view", 5.0)])
    out = encode_examples(table, [T0 + dt.timedelta(days=3)], build_vocab(["a"], 1),
                          EncodingConfig(3, 30, 4), with_labels=False)
    assert sorted(out["user_id"].to_pylist()) == ["later", "u"]
    assert out.filter(pa.compute.equal(out["user_id"], "later"))["seq_cat"].to_pylist() == [[]]


def test_sparse_inputs_are_right_aligned_with_known_mask_and_multi_hot_labels() -> None:
    table = events([("u", "a", "view", 0.5), ("u", "b", "cart", 1.5), ("u", "c", "view", 3.5),
                    ("v", "zzz", "view", 2.0), ("v", "a", "view", 4.0)])
    vocab = build_vocab(["a", "b", "c"], 1)
    out = encode_examples(table, [T0 + dt.timedelta(days=3)], vocab, EncodingConfig(3, 30, 4))
    inputs, labels, known = to_model_inputs(out, vocab.n_categories, 4)
    # K = 2: each example carries only its own history categories, never a [B, V, 8] tensor
    assert inputs["seq_cat"].shape == (2, 4) and inputs["hist_cat"].shape == (2, 2)
    assert inputs["hist_feat"].shape == (2, 2, N_HIST)
    u = out["user_id"].to_pylist().index("u")
    assert list(inputs["seq_cat"][u]) == [0, 0, *vocab.category_index(["a", "b"])]
    assert sorted(inputs["hist_cat"][u]) == sorted(vocab.category_index(["a", "b"]))
    assert known[u].sum() == 2 and labels[u, vocab.category_index(["c"])[0]] == 1.0
    v = out["user_id"].to_pylist().index("v")
    assert list(inputs["hist_cat"][v]) == [OOV, 0]  # an unknown category is history too; 0 pads
    assert known[v, OOV] == 1.0
    trimmed = Examples.from_table(out).model_inputs(4, trim=True)
    assert trimmed["seq_cat"].shape == (2, 2)  # only the columns the longest sequence needs
    assert list(trimmed["seq_cat"][u]) == list(inputs["seq_cat"][u][2:])


def test_a_user_without_history_gets_an_empty_history_and_dense_history_matches_sparse() -> None:
    table = events([("u", "a", "view", 0.5), ("u", "b", "view", 0.7), ("later", "a", "view", 5.0)])
    vocab = build_vocab(["a", "b"], 1)
    examples = batch.encode(batch.index_events(table, vocab), [T0 + dt.timedelta(days=3)], vocab,
                            EncodingConfig(3, 30, 4), with_labels=False)
    assert examples.hist_counts().tolist() == [0, 2]  # users in id order: "later", "u"
    inputs = examples.model_inputs(4)
    dense = examples.dense_history(vocab.n_categories)
    assert dense.shape == (2, vocab.n_categories, N_HIST) and not dense[0].any()
    for slot, cat in enumerate(inputs["hist_cat"][1]):
        np.testing.assert_array_equal(dense[1, cat], inputs["hist_feat"][1, slot])


def random_events(seed: int, n_users: int = 60, n_events: int = 2500, days: float = 40.0) -> pa.Table:
    """Random events with repeated timestamps (ties), unknown categories and unknown behaviours."""
    rng = np.random.default_rng(seed)
    ts = np.round(rng.random(n_events) * days, 2)  # 0.01-day grid: many events share a timestamp
    return events([(f"u{rng.integers(n_users)}", f"c{rng.integers(12)}",
                    ["view", "buy", "cart", "teleport"][rng.integers(4)], float(t)) for t in ts])


def assert_same_examples(new: pa.Table, old: pa.Table) -> None:
    assert new.schema.equals(old.schema) and new.num_rows == old.num_rows
    for name in new.column_names:
        if name == "hist_feat":
            a = np.concatenate([np.asarray(x, np.float32) for x in new[name].to_pylist()] or [np.zeros(0)])
            b = np.concatenate([np.asarray(x, np.float32) for x in old[name].to_pylist()] or [np.zeros(0)])
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)
        else:
            assert new[name].to_pylist() == old[name].to_pylist(), name


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_labels", [True, False])
def test_batch_encoder_matches_the_per_user_reference_on_random_events(seed: int, with_labels: bool) -> None:
    table = random_events(seed)
    vocab = build_vocab([f"c{i}" for i in range(9)] * 2, 2, ["view", "buy"])  # c9..c11 and teleport are OOV
    config = EncodingConfig(horizon_days=3, lookback_days=10, seq_len=6)
    asofs = [T0 + dt.timedelta(days=d) for d in (5, 12.5, 20, 39)]
    assert_same_examples(encode_examples(table, asofs, vocab, config, with_labels=with_labels),
                         reference_encoder.encode_examples(table, asofs, vocab, config, with_labels=with_labels))


def daily_events(n_users: int = 6, days: int = 20) -> pa.Table:
    """Every user touches two categories a day, alternating with the day (enough for every split)."""
    return events([(f"u{u}", "abc"[(u + day + k) % 3], "view", day + 0.1 + 0.3 * k)
                   for u in range(n_users) for day in range(days) for k in range(2)])


def test_dataset_folder_round_trip_uses_the_layout_file_names(tmp_path) -> None:
    settings = load_settings(environ={}, horizon_days=2, lookback_days=10, seq_len=4, asof_step_days=1,
                             eval_asof_step_days=2, validation_asof_count=1, test_asof_count=2, min_category_count=1)
    encoded = encode_events(daily_events(), settings)
    written = Dataset.write(encoded, tmp_path / "ds", window=(T0.date(), (T0 + dt.timedelta(days=19)).date()))
    assert written.files("train") == [tmp_path / "ds" / "train" / "part-00000.parquet"]
    for name in (layout.DATASET_VOCAB, layout.DATASET_METADATA, layout.DATASET_BASELINE_STATS,
                 layout.DATASET_TEST_EVENTS, layout.DATASET_SPLIT_PART.format(split="train", index=0)):
        assert (tmp_path / "ds" / name).is_file(), name
    again = Dataset.open(tmp_path / "ds")
    assert again.vocab == encoded.vocab and again.config == encoded.config
    assert again.metadata["data_start"] == "2024-03-01" and again.metadata["data_end"] == "2024-03-20"
    for split in ("train", "validation", "test"):
        assert again.n_examples(split) == encoded.examples[split].num_rows > 0
        assert again.read_split(split).equals(encoded.examples[split])
    assert again.asof_times("test") == [t.isoformat() for t in encoded.asof["test"]]
    test_events = again.read_test_events()
    assert str(test_events["ts"].dt.tz) == "UTC" and len(test_events) == encoded.test_events.num_rows
    # every user of the test look-backs and horizons (with or without a horizon event), nothing after
    # the last test horizon: what the evaluation of the published columns judges on
    first_test, last_test = encoded.asof["test"][0], encoded.asof["test"][-1]
    assert set(test_events["user_id"]) >= set(encoded.examples["test"]["user_id"].to_pylist())
    assert test_events["ts"].min() >= first_test - dt.timedelta(days=settings.lookback_days)
    assert test_events["ts"].max() < last_test + dt.timedelta(days=settings.horizon_days)
    assert test_events["ts"].max() >= last_test  # the last horizon's events are there
    assert again.stats == encoded.stats


def test_an_incomplete_dataset_folder_names_the_missing_file(tmp_path) -> None:
    (tmp_path / layout.DATASET_VOCAB).write_text('{"categories": [], "behaviors": []}')
    with pytest.raises(FileNotFoundError, match=layout.DATASET_METADATA):
        Dataset.open(tmp_path)


def _taobao(paths: list) -> pa.Table:
    names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    frame = pd.concat([pd.read_csv(p, header=None, names=names) for p in paths])
    frame = frame[(frame["timestamp"] >= 1511539200) & (frame["timestamp"] <= 1512316799)]
    return pa.table({"user_id": frame["user_id"].astype(str).to_numpy(), "item_id": frame["item_id"].astype(str).to_numpy(),
                     "category_id": frame["category_id"].astype(str).to_numpy(),
                     "behavior": frame["behavior_type"].map({"pv": "view", "cart": "cart", "fav": "fav", "buy": "buy"}),
                     "ts": pa.array(pd.to_datetime(frame["timestamp"], unit="s", utc=True).astype("datetime64[us, UTC]")),
                     "value": pa.nulls(len(frame), pa.float64())}).cast(EVENT_SCHEMA)


def test_batch_encoder_matches_the_reference_on_real_taobao_histories(shared_data) -> None:
    table = _taobao([shared_data / "taobao" / "UserBehavior_head.csv", shared_data / "taobao" / "UserBehavior_tail.csv"])
    vocab = build_vocab(table["category_id"].to_pylist(), 2, table["behavior"].unique().to_pylist())
    config = EncodingConfig(horizon_days=1, lookback_days=30, seq_len=50)
    asofs = [dt.datetime(2017, 11, day, tzinfo=dt.UTC) for day in (28, 30)] + [dt.datetime(2017, 12, 2, tzinfo=dt.UTC)]
    for with_labels in (True, False):
        new = encode_examples(table, asofs, vocab, config, with_labels=with_labels)
        assert new.num_rows > 100
        assert_same_examples(new, reference_encoder.encode_examples(table, asofs, vocab, config,
                                                                    with_labels=with_labels))


def test_batch_encoder_matches_the_reference_on_real_ciao_reviews(shared_data) -> None:
    frame = pd.read_csv(shared_data / "ciao" / "ciao_ratings.csv.gz").drop_duplicates()
    frame = frame[frame["user_id"] % 4 == 0]  # a quarter of the users, every review of theirs
    table = pa.table({"user_id": frame["user_id"].astype(str).to_numpy(), "item_id": frame["item_id"].astype(str).to_numpy(),
                      "category_id": frame["category_id"].astype(str).to_numpy(), "behavior": ["review"] * len(frame),
                      "ts": pa.array(pd.to_datetime(frame["timestamp"], unit="s", utc=True).astype("datetime64[us, UTC]")),
                      "value": frame["rating"].astype(float).to_numpy()}).cast(EVENT_SCHEMA)
    vocab = build_vocab(table["category_id"].to_pylist(), 1, ["review"])
    config = EncodingConfig(horizon_days=90, lookback_days=20000, seq_len=50)
    asofs = [dt.datetime(year, month, 1, tzinfo=dt.UTC) for year in (2006, 2009, 2010) for month in (1, 7)]
    new = encode_examples(table, asofs, vocab, config)
    assert new.num_rows > 500
    assert_same_examples(new, reference_encoder.encode_examples(table, asofs, vocab, config))


def test_encode_each_gives_every_user_the_features_of_its_own_as_of_time() -> None:
    import datetime as _dt

    import numpy as _np

    from pipelines.features.batch import encode, encode_each, index_events
    from pipelines.features.examples import EncodingConfig
    from pipelines.features.vocab import build_vocab
    from tests.test_engine import events

    table = events(n_users=25, seed=3)
    vocab = build_vocab([f"c{i}" for i in range(10)], 1, ["view", "buy", "cart"])
    config = EncodingConfig(horizon_days=1, lookback_days=2, seq_len=4)
    index = index_events(table, vocab)
    rng = _np.random.default_rng(0)
    base = _dt.datetime(2024, 1, 2, tzinfo=_dt.UTC)
    asofs = [base + _dt.timedelta(seconds=int(s)) for s in rng.integers(0, 2 * 86400, index.n_users)]
    asof_us = _np.array([(a - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)) // _dt.timedelta(microseconds=1)
                         for a in asofs])
    each = encode_each(index, asof_us, vocab, config)
    assert each.n == index.n_users and list(each.asof) == list(asof_us)
    for u in range(index.n_users):
        alone = encode(index, [asofs[u]], vocab, config, with_labels=False).take(_np.array([u]))
        mine = each.take(_np.array([u]))
        a, b = alone.model_inputs(4), mine.model_inputs(4)
        for name in a:
            _np.testing.assert_allclose(a[name], b[name], rtol=1e-6, err_msg=f"user {u} {name}")
    same = encode_each(index, _np.full(index.n_users, asof_us[0]), vocab, config)
    together = encode(index, [asofs[0]], vocab, config, with_labels=False)
    for name, value in together.model_inputs(4).items():
        _np.testing.assert_allclose(value, same.model_inputs(4)[name], rtol=1e-6)
