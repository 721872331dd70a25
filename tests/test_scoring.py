"""Daily scoring on the real services: complete partitions, whole-partition reruns, the as-of rule,
alias following, clear errors, the per-shard staging of the plan, and this product's own models
on the fast core (today's sparse model and a version saved before the sparse path). The other
models are small real pyfuncs (tests/pyfunc_models.py) scored through their public contract;
everything is registered on the session's MLflow server; events are clean partitions in the
test's own bucket."""

from __future__ import annotations

import dataclasses
import datetime as dt
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.contracts import PREDICTION_COLUMNS, PREDICTION_SCHEMA
from pipelines.data.events import MissingInputError
from pipelines.features.examples import EncodingConfig
from pipelines.features.vocab import build_vocab
from pipelines.platform import layout, storage, tracking
from pipelines.serving import predictions, scoring, shards
from tests import pyfunc_models as pm

FIXTURES = Path(__file__).resolve().parent / "fixtures"

D1, D2, D3, D4, D5 = (dt.date(2024, 1, day) for day in range(1, 6))

# (user, item, category, behavior, hour): u1 moves from shoes to bags, u2 is steady, u5 appears late.
EVENTS = {
    D1: [("u1", "i1", "shoes", "view", 8), ("u1", "i2", "shoes", "buy", 9), ("u2", "i3", "books", "view", 10),
         ("u3", "i4", "toys", "view", 11), ("u4", "i5", "games", "cart", 12)],
    D2: [("u1", "i6", "bags", "view", 8), ("u2", "i3", "books", "buy", 10), ("u3", "i7", "shoes", "fav", 13)],
    D3: [("u1", "i6", "bags", "cart", 9), ("u1", "i8", "bags", "view", 10), ("u2", "i9", "music", "view", 11),
         ("u5", "i1", "shoes", "view", 20)],
    D4: [("u5", "i10", "toys", "view", 7), ("u2", "i3", "books", "view", 23)],
}


@pytest.fixture()
def scoring_settings(settings):
    """Own model name, 3-day look-back, 2 shards, batches of 2 users (so batching is exercised)."""
    configured = dataclasses.replace(pm.isolate(settings), lookback_days=3, scoring_shards=2,
                                     scoring_batch_users=2, top_k=3, emerging_k=2, fading_k=2)
    pm.write_clean(configured, pm.clean_events(EVENTS))
    return configured


def _users_active(start: dt.date, end: dt.date) -> set[str]:
    return {row[0] for day, rows in EVENTS.items() if start <= day <= end for row in rows}


def _read_partition(settings, day: dt.date) -> tuple[dict, pa.Table]:
    prefix = layout.partition_prefix(layout.PREDICTIONS, day)
    manifest = storage.get_json(settings, prefix + layout.SUCCESS)
    table = pa.concat_tables([storage.read_parquet(settings, key) for key in manifest["files"]])
    return manifest, table.sort_by("user_id")


def test_shard_of_is_stable_and_in_range():
    # Pinned values: Python's hash() is salted per process, CRC-32 is not; changing the hash would
    # silently move users between shards of a day being rerun.
    assert [scoring.shard_of(u, 4) for u in ["u1", "u2", "u3", "user-42", "1000137"]] == [2, 0, 2, 3, 2]
    assert {scoring.shard_of(f"user{i}", 4) for i in range(200)} == {0, 1, 2, 3}
    assert scoring.shard_of("abc", 1) == 0


def test_the_vectorised_crc32_is_zlibs():
    ids = ["", "u1", "user-42", "1000137", "ünïcødé-用户", "x" * 300] + [f"user{i}" for i in range(500)]
    assert shards.crc32_strings(pa.array(ids)).tolist() == [zlib.crc32(u.encode()) for u in ids]
    sliced = pa.array(ids).slice(3, 50)
    assert shards.crc32_strings(sliced).tolist() == [zlib.crc32(u.encode()) for u in ids[3:53]]
    assert (shards.user_hashes(pa.chunked_array([ids[:7], ids[:7]])) % 4).tolist() == [
        scoring.shard_of(u, 4) for u in ids[:7] * 2]


@pytest.mark.services
def test_three_consecutive_days_give_complete_contract_partitions(scoring_settings):
    version = pm.register_as_champion(scoring_settings)
    for day in (D2, D3, D4):
        published = scoring.score_date(scoring_settings, day)
        manifest, table = _read_partition(scoring_settings, day)
        keys = storage.list_keys(scoring_settings, layout.partition_prefix(layout.PREDICTIONS, day))
        assert sorted(manifest["files"]) == sorted(k for k in keys if not k.endswith(layout.SUCCESS))
        assert len(manifest["files"]) == scoring_settings.scoring_shards == manifest["shards"]
        assert manifest["model_version"] == version == published["model_version"]
        assert manifest["as_of_date"] == day.isoformat()
        assert table.schema.equals(PREDICTION_SCHEMA) and table.column_names == PREDICTION_COLUMNS
        expected_users = _users_active(day - dt.timedelta(days=2), day)
        assert set(table["user_id"].to_pylist()) == expected_users
        assert manifest["row_count"] == table.num_rows == len(expected_users)
        rows = table.to_pylist()
        for row in rows:
            assert row["as_of_date"] == day and row["horizon_days"] == scoring_settings.horizon_days
            assert row["model_version"] == version and row["model_name"] == scoring_settings.model_name
            assert 0.0 <= row["migration_score"] <= 1.0
            assert 1 <= len(row["predicted_categories"]) <= scoring_settings.top_k
            assert len(row["predicted_scores"]) == len(row["predicted_categories"])
            assert sum(row["current_strengths"]) <= 1.0 + 1e-5
            assert len(row["emerging_categories"]) <= scoring_settings.emerging_k
    # u1 went shoes -> bags: on D3 bags is its top current category and shoes are not emerging for it.
    u1 = next(r for r in _read_partition(scoring_settings, D3)[1].to_pylist() if r["user_id"] == "u1")
    assert u1["current_categories"][0] == "bags"
    assert "shoes" not in u1["emerging_categories"]


@pytest.mark.services
def test_rerun_replaces_the_partition_whole(scoring_settings):
    pm.register_as_champion(scoring_settings)
    first = scoring.score_date(scoring_settings, D3)
    _, before = _read_partition(scoring_settings, D3)
    prefix = layout.partition_prefix(layout.PREDICTIONS, D3)
    # Leftovers of an older run (pre-run layout, more shards) must not survive the rerun.
    storage.write_parquet(scoring_settings, prefix + "part-00009.parquet", before)
    second = scoring.score_date(scoring_settings, D3)
    _, after = _read_partition(scoring_settings, D3)
    assert after.equals(before)
    assert storage.list_keys(scoring_settings, prefix) == sorted(second["files"] + [prefix + layout.SUCCESS])
    assert second["run_id"] != first["run_id"] and all(f"/run={second['run_id']}/" in k for k in second["files"])
    assert second["row_count"] == first["row_count"]
    assert second["created_at"] > first["created_at"]


@pytest.mark.services
def test_a_failing_rerun_leaves_the_published_partition_readable(scoring_settings):
    pm.register_as_champion(scoring_settings)
    first = scoring.score_date(scoring_settings, D3)
    _, before = _read_partition(scoring_settings, D3)
    model = scoring.resolve_champion(scoring_settings)
    shards = scoring.plan_shards(scoring_settings, D3, model)
    # Planned and half scored: readers still get the old partition, whole.
    results = [scoring.score_shard(scoring_settings, D3, model, shards[0])]
    assert predictions.read_manifest(scoring_settings, D3)["files"] == first["files"]
    assert predictions.read_predictions(scoring_settings, D3).sort_by("user_id").equals(before)
    # The rerun's publish fails (a shard never ran): nothing switches, nothing old is removed.
    with pytest.raises(scoring.ScoringError, match="expected 0..1"):
        scoring.publish_partition(scoring_settings, D3, model, results)
    assert predictions.read_predictions(scoring_settings, D3).sort_by("user_id").equals(before)
    results.append(scoring.score_shard(scoring_settings, D3, model, shards[1]))
    storage.s3_client(scoring_settings).delete_object(Bucket=scoring_settings.bucket, Key=results[1]["key"])
    with pytest.raises(scoring.ScoringError, match="missing"):
        scoring.publish_partition(scoring_settings, D3, model, results)
    assert predictions.read_manifest(scoring_settings, D3) == {k: v for k, v in first.items() if k != "uri"}
    # The retried shard completes the run; one PUT switches readers, then the old run is gone.
    results[1] = scoring.score_shard(scoring_settings, D3, model, shards[1])
    second = scoring.publish_partition(scoring_settings, D3, model, results)
    assert predictions.read_manifest(scoring_settings, D3)["files"] == second["files"] != first["files"]
    assert not any(storage.exists(scoring_settings, key) for key in first["files"])
    assert predictions.read_predictions(scoring_settings, D3).sort_by("user_id").equals(before)


@pytest.mark.services
def test_publish_is_retry_safe_after_the_switch(scoring_settings):
    # The worker died after the manifest PUT: the retry finds its own manifest and succeeds (so the
    # asset event is sent), without rewriting it.
    pm.register_as_champion(scoring_settings)
    model = scoring.resolve_champion(scoring_settings)
    results = [scoring.score_shard(scoring_settings, D3, model, shard)
               for shard in scoring.plan_shards(scoring_settings, D3, model)]
    published = scoring.publish_partition(scoring_settings, D3, model, results)
    again = scoring.publish_partition(scoring_settings, D3, model, results)
    assert again == published
    assert predictions.read_manifest(scoring_settings, D3)["created_at"] == published["created_at"]


@pytest.mark.services
def test_events_after_the_day_do_not_change_its_predictions(scoring_settings):
    pm.register_as_champion(scoring_settings)
    scoring.score_date(scoring_settings, D3)
    _, before = _read_partition(scoring_settings, D3)
    late = {D5: [("u1", "i99", "shoes", "buy", 1), ("u9", "i98", "garden", "view", 2)],
            D4: [("u1", "i97", "garden", "buy", 5), ("u2", "i96", "garden", "buy", 6)]}
    pm.write_clean(scoring_settings, pm.clean_events(late), part="part-late.parquet")
    # An event stamped after D inside D's own partition is cut by the ts filter as well.
    stray = pm.clean_events({D3: [("u2", "i95", "garden", "buy", 5)]})[D3]
    stray = stray.set_column(4, "ts", pa.array([dt.datetime(2024, 1, 4, 0, 0, 1, tzinfo=dt.UTC)],
                                                stray.schema.field("ts").type))
    storage.write_parquet(scoring_settings, layout.partition_prefix(layout.CLEAN, D3) + "part-stray.parquet", stray)
    scoring.score_date(scoring_settings, D3)
    _, after = _read_partition(scoring_settings, D3)
    assert after.equals(before)
    # ... while the later day does see them (the data was really there).
    scoring.score_date(scoring_settings, D4)
    _, d4 = _read_partition(scoring_settings, D4)
    assert any("garden" in r["predicted_categories"] for r in d4.to_pylist() if r["user_id"] == "u2")


@pytest.mark.services
def test_moving_the_alias_by_hand_changes_the_next_run(scoring_settings):
    from pipelines.model import registry

    first = pm.register_as_champion(scoring_settings)
    assert scoring.score_date(scoring_settings, D3)["model_version"] == first
    _, good = _read_partition(scoring_settings, D3)
    import mlflow

    _, uri = pm.log_model(scoring_settings, variant="bad")
    second = str(mlflow.register_model(uri, scoring_settings.model_name).version)
    moved = registry.promote_version(scoring_settings, second)
    assert moved["previous"] == first and moved["current"] == second
    assert scoring.resolve_champion(scoring_settings)["model_uri"] == f"models:/{scoring_settings.model_name}/{second}"
    manifest = scoring.score_date(scoring_settings, D3)
    _, bad = _read_partition(scoring_settings, D3)
    assert manifest["model_version"] == second
    assert set(bad["model_version"].to_pylist()) == {second}
    assert bad["predicted_categories"].to_pylist() != good["predicted_categories"].to_pylist()
    registry.promote_version(scoring_settings, first)  # roll back
    assert scoring.score_date(scoring_settings, D3)["model_version"] == first


def test_a_ui_trigger_scores_the_last_complete_day_not_today():
    from airflow.timetables.interval import CronDataIntervalTimetable
    from pendulum import DateTime

    from pipelines.flows.scoring import scoring_day

    now = DateTime(2024, 1, 5, 14, 30, tzinfo=dt.UTC)
    # What Airflow 3 gives a UI "Trigger": logical_date = now, the data interval inferred by the timetable.
    interval = CronDataIntervalTimetable("0 0 * * *", timezone="UTC").infer_manual_data_interval(run_after=now)
    assert scoring_day(interval.start, now, now) == D4
    # A scheduled or backfilled run for D: interval start = logical date = D.
    start = dt.datetime(2024, 1, 3, tzinfo=dt.UTC)
    assert scoring_day(start, start, now) == D3
    assert scoring_day(None, None, now) == D4
    # `airflow dags test <dag> D` (a manual run whose logical date is D's midnight): D, although the
    # timetable infers the interval of the day before for it.
    midnight = DateTime(2024, 1, 3, tzinfo=dt.UTC)
    manual = CronDataIntervalTimetable("0 0 * * *", timezone="UTC").infer_manual_data_interval(run_after=midnight)
    assert manual.start.date() == D3 - dt.timedelta(days=1)
    assert scoring_day(manual.start, midnight, midnight) == D3


@pytest.mark.services
def test_a_model_whose_files_changed_after_registration_is_not_loaded(scoring_settings, tmp_path):
    from pipelines.model import registry

    version = pm.register_as_champion(scoring_settings)
    digest = registry.record_digest(scoring_settings, version, tmp_path / "a")
    assert len(digest) == 64
    scoring.load_scorer.cache_clear()
    assert scoring.score_date(scoring_settings, D3)["model_version"] == version
    # Recorded digest and files disagree (as after someone overwrote a file in the artifact store).
    tracking.client(scoring_settings).set_model_version_tag(scoring_settings.model_name, version,
                                                            registry.TAG_SHA256, "0" * 64)
    scoring.load_scorer.cache_clear()
    with pytest.raises(registry.ModelIntegrityError, match=f"version {version}: its files have SHA-256 {digest}"):
        scoring.score_date(scoring_settings, D3)
    scoring.load_scorer.cache_clear()


@pytest.mark.services
def test_a_version_is_downloaded_once_and_its_local_copy_checked_at_every_load(scoring_settings, caplog):
    from pipelines.model import registry

    version = pm.register_as_champion(scoring_settings)
    digest = registry.record_digest(scoring_settings, version, scoring_settings.work_dir / "digest")
    models = scoring_settings.work_dir / "models"
    copy = registry.verified_local_copy(scoring_settings, version, models)
    assert copy == models / f"{scoring_settings.model_name}-{version}" and registry.files_digest(copy) == digest
    assert [p.name for p in models.iterdir()] == [copy.name]  # no download folder of this process left behind
    (copy / "code" / "__pycache__").mkdir(parents=True)  # what Python writes beside the code while loading it
    (copy / "code" / "__pycache__" / "x.pyc").write_bytes(b"bytecode")
    before = copy.stat().st_ino
    assert registry.verified_local_copy(scoring_settings, version, models) == copy
    assert copy.stat().st_ino == before and not (copy / "code" / "__pycache__").exists()  # reused, not downloaded
    # A changed local copy is not loaded: it is replaced by a fresh, checked download.
    mlmodel = copy / "MLmodel"
    original = mlmodel.read_bytes()
    mlmodel.write_bytes(original + b"# changed\n")
    with caplog.at_level("WARNING", logger="pipelines.model.registry"):
        assert registry.verified_local_copy(scoring_settings, version, models) == copy
    assert mlmodel.read_bytes() == original and "no longer matches the recorded SHA-256" in caplog.text
    scoring.load_scorer.cache_clear()
    assert scoring.score_date(scoring_settings, D3)["model_version"] == version
    scoring.load_scorer.cache_clear()


@pytest.mark.services
def test_the_plan_fetches_the_models_checked_copy_for_the_shards(scoring_settings):
    from pipelines.model import registry

    version = pm.register_as_champion(scoring_settings)
    model = scoring.resolve_champion(scoring_settings)
    copy = scoring_settings.work_dir / "models" / f"{scoring_settings.model_name}-{version}"
    scoring.plan_shards(scoring_settings, D3, model)
    assert not copy.exists()  # no recorded digest: a copy would not be kept, so nothing is fetched ahead
    digest = registry.record_digest(scoring_settings, version, scoring_settings.work_dir / "digest")
    scoring.plan_shards(scoring_settings, D3, model)
    assert registry.files_digest(copy) == digest  # there before any shard asks for it


@pytest.mark.services
def test_no_champion_is_a_clear_error(scoring_settings):
    with pytest.raises(scoring.NoChampionError, match="promote --version"):
        scoring.resolve_champion(scoring_settings)


@pytest.mark.services
def test_missing_clean_input_is_a_clear_error(scoring_settings):
    model = {"model_name": scoring_settings.model_name, "model_version": "1", "model_uri": "models:/x/1"}
    with pytest.raises(MissingInputError, match="no clean events for 2024-01-09"):
        scoring.plan_shards(scoring_settings, dt.date(2024, 1, 9), model)


@pytest.mark.services
def test_a_look_back_day_with_raw_but_no_clean_data_fails(scoring_settings):
    model = {"model_name": scoring_settings.model_name, "model_version": "1", "model_uri": "models:/x/1"}
    # D2 was landed but its clean partition is gone (being rewritten, or never cleaned).
    storage.put_bytes(scoring_settings, layout.partition_prefix(layout.RAW, D2) + "late.csv", b"u1,i1,7,pv,0\n")
    storage.delete_prefix(scoring_settings, layout.partition_prefix(layout.CLEAN, D2))
    with pytest.raises(MissingInputError, match="2024-01-02 of 2024-01-03 have raw events .* but no clean partition"):
        scoring.plan_shards(scoring_settings, D3, model)
    # A day whose preprocessing set every row aside (clean = 0) is not missing.
    storage.put_json(scoring_settings, layout.preprocess_report_key(D2), {"clean": 0})
    assert len(scoring.plan_shards(scoring_settings, D3, model)) == scoring_settings.scoring_shards


@pytest.mark.services
def test_publish_refuses_an_incomplete_partition(scoring_settings):
    pm.register_as_champion(scoring_settings)
    model = scoring.resolve_champion(scoring_settings)
    shards = scoring.plan_shards(scoring_settings, D3, model)
    results = [scoring.score_shard(scoring_settings, D3, model, shard) for shard in shards]
    success = layout.partition_prefix(layout.PREDICTIONS, D3) + layout.SUCCESS
    with pytest.raises(scoring.ScoringError, match="expected 0..1"):
        scoring.publish_partition(scoring_settings, D3, model, results[:1])
    storage.s3_client(scoring_settings).delete_object(Bucket=scoring_settings.bucket, Key=results[1]["key"])
    with pytest.raises(scoring.ScoringError, match="missing"):
        scoring.publish_partition(scoring_settings, D3, model, results)
    assert not storage.exists(scoring_settings, success)
    # Rerunning the lost shard (same deterministic key) makes the partition publishable.
    results[1] = scoring.score_shard(scoring_settings, D3, model, shards[1])
    assert scoring.publish_partition(scoring_settings, D3, model, results)["row_count"] == sum(
        r["rows"] for r in results)
    assert storage.exists(scoring_settings, success)


@pytest.mark.services
def test_the_plan_stages_each_shard_its_users_and_publish_removes_the_staging(scoring_settings):
    pm.register_as_champion(scoring_settings)
    model = scoring.resolve_champion(scoring_settings)
    staging = layout.scoring_staging_prefix(D3)
    storage.put_bytes(scoring_settings, staging + "leftover.parquet", b"an earlier plan's file")
    planned = scoring.plan_shards(scoring_settings, D3, model)
    assert storage.list_keys(scoring_settings, staging) == sorted(k for s in planned for k in s["input_keys"])
    window = {day: rows for day, rows in EVENTS.items() if D1 <= day <= D3}
    assert sum(s["input_rows"] for s in planned) == sum(len(rows) for rows in window.values())
    for spec in planned:
        users = set()
        for key in spec["input_keys"]:
            local = scoring_settings.work_dir / "staged.arrow"
            storage.download_file(scoring_settings, key, local)
            users |= set(shards.read_bucket(local)["user_id"].to_pylist())
        assert users and all(scoring.shard_of(u, spec["shards"]) == spec["shard"] for u in users)
    results = [scoring.score_shard(scoring_settings, D3, model, spec) for spec in planned]
    scoring.publish_partition(scoring_settings, D3, model, results)
    assert storage.list_keys(scoring_settings, staging) == []


def _encoded_day_events(day: dt.date) -> pd.DataFrame:
    rows = [(u, i, c, b, dt.datetime.combine(d, dt.time(h), tzinfo=dt.UTC))
            for d, day_rows in EVENTS.items() if d <= day for u, i, c, b, h in day_rows]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "category_id", "behavior", "ts"])
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    return frame


@pytest.mark.services
@pytest.mark.parametrize("saved_by", ["today", "before the sparse path"])
def test_own_models_score_on_the_fast_core_as_their_public_contract_does(scoring_settings, tmp_path, saved_by):
    from pipelines.model.network import build_model, load_keras_model

    # 7 categories + padding + OOV = 9 columns and 5 behaviours + 2 = 7: the legacy fixture's shapes
    vocab = build_vocab(["shoes", "books", "toys", "games", "bags", "music", "garden"], 1)
    config = EncodingConfig(horizon_days=1.0, lookback_days=3.0, seq_len=8)
    if saved_by == "today":
        path = tmp_path / "model.keras"
        build_model(vocab.n_categories, vocab.n_behaviors, 8, embed_dim=8, age_scale=1.0).save(path)
    else:  # saved by the network code of commit 081d5e5 (dense hist input)
        path = FIXTURES / "legacy_dense_model.keras"
    pm.register_keras_champion(scoring_settings, str(path), vocab, config)
    manifest = scoring.score_date(scoring_settings, D3)
    _, table = _read_partition(scoring_settings, D3)
    assert manifest["row_count"] == table.num_rows == len(_users_active(D1, D3))
    # the public contract (pyfunc predict) on the same events ranks the same categories
    pyfunc = tracking.load_pyfunc(scoring_settings, manifest["model_uri"])
    public = pyfunc.predict(_encoded_day_events(D3), params={"as_of": "2024-01-04T00:00:00+00:00", "top_n": 50})
    public = public.set_index("user_id")
    for row in table.to_pylist():
        assert row["predicted_categories"] == list(public.loc[row["user_id"], "categories"])[:scoring_settings.top_k]
        np.testing.assert_allclose(row["predicted_scores"], public.loc[row["user_id"], "scores"][:scoring_settings.top_k],
                                   rtol=1e-5)
    # today's architecture scores in numpy (no TensorFlow in the scoring process), the legacy one on Keras
    scorer = scoring.load_scorer(scoring_settings, manifest["model_uri"])
    assert scorer.core.runtime == ("numpy" if saved_by == "today" else "keras")
    keras_only = dataclasses.replace(scoring_settings, scoring_runtime="keras")
    assert scoring.load_scorer(keras_only, manifest["model_uri"]).core.runtime == "keras"
    if saved_by != "today":
        assert load_keras_model(path).get_layer("migration_scorer").get_config()["sparse"] is False


def test_run_ids_sort_in_the_order_runs_started_even_within_one_second():
    # Cleanup after a publish keeps runs whose id sorts later (started later); ids made in the same
    # second must still sort by start, or a rerun keeps the run it replaced.
    ids = [scoring.new_run_id() for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_a_backfill_inside_the_training_window_is_flagged():
    model = {"model_name": "m", "model_version": "3", "training_window": {"start": "2024-01-01", "end": "2024-01-20"}}
    warning = scoring.training_window_warning(dt.date(2024, 1, 10), model)
    assert warning and "trained on events up to 2024-01-20" in warning and "after 2024-01-10" in warning
    assert scoring.training_window_warning(dt.date(2024, 1, 20), model) is None
    assert scoring.training_window_warning(dt.date(2024, 1, 21), model) is None
    assert scoring.training_window_warning(dt.date(2024, 1, 10), {"training_window": {"end": None}}) is None
