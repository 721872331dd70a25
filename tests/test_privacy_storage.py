"""Privacy on the real services: no raw id after landing, validation and preprocessing with the switch
on; erasure of one user everywhere with every other row intact; retention of old partitions."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.__main__ import main
from pipelines.config import Settings, env_name
from pipelines.contracts import PREDICTION_SCHEMA
from pipelines.data import validation
from pipelines.data.landing import land_events
from pipelines.data.preprocess import preprocess_partition
from pipelines.data.raw import unpack_raw
from pipelines.platform import layout, storage
from pipelines.privacy import erasure, retention
from pipelines.privacy.pseudonym import pseudonym_of, stored_id, write_key
from pipelines.serving.predictions import read_manifest, read_predictions
from pipelines.ui import reads
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.services

D = dt.date(2017, 11, 25)
T0 = 1511568000  # D 00:00 UTC
USERS = [f"4440{n:05d}" for n in range(1, 241)]  # raw ids no timestamp, item id or pseudonym contains
TARGET = USERS[7]


def _source(path: Path, days: int = 1) -> Path:
    lines = []
    for day in range(days):
        for i, user in enumerate(USERS):
            for k in range(3):
                lines.append(f"{user},{5550000 + (i * 3 + k) % 400},{70 + k},pv,{T0 + day * 86400 + i * 60 + k}")
    lines += [f"{TARGET},5550001,70,zap,{T0 + 5}", f"{USERS[3]},5550002,70,zap,{T0 + 6}"]  # validation quarantine
    lines += [f"{TARGET},5550003,70,pv,99", f"{USERS[4]},5550004,70,pv,98"]  # unplaced quarantine
    lines += [f"{TARGET},{5551000 + i},71,pv,{T0 + 7200}" for i in range(25)]  # an impossible burst
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def private(settings: Settings, tmp_path: Path, monkeypatch) -> Settings:
    """The test's settings with pseudonymisation on (the environment too: landing reads it there)."""
    key = write_key(tmp_path / "secrets" / "pseudonym_key")
    environ = {"IM_PSEUDONYMIZE": "true", "IM_PSEUDONYM_KEY_FILE": str(key), "IM_BUCKET": settings.bucket,
               "IM_S3_ENDPOINT_URL": settings.s3_endpoint_url, "IM_WORK_DIR": str(settings.work_dir)}
    for name, value in environ.items():  # the command line reads its settings from there
        monkeypatch.setenv(name, value)
    return dataclasses.replace(settings, pseudonymize=True, pseudonym_key_file=key)


def _object_texts(settings: Settings) -> dict[str, str]:
    """Every object of the bucket as text (Parquet decoded row by row and raw CSV decompressed, so
    compression hides nothing)."""
    texts = {}
    for key in storage.list_keys(settings, ""):
        data = storage.get_bytes(settings, key)
        if key.endswith(".parquet"):
            texts[key] = json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str)
        else:
            texts[key] = unpack_raw(key, data).decode("utf-8", errors="replace")
    return texts


def _holders(texts: dict[str, str], values: list[str]) -> dict[str, list[str]]:
    return {key: found for key, text in texts.items() if (found := [v for v in values if v in text])}


def _land_validate_preprocess(settings: Settings, source: Path, days: list[dt.date]) -> None:
    land_events(settings, source, "taobao", name="events")
    validation.validate_partitions(settings, days, report_id="privacy")
    for day in days:
        preprocess_partition(settings, day)


def test_no_raw_user_id_in_data_reports_or_logs(private: Settings, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    _land_validate_preprocess(private, _source(tmp_path / "events.csv"), [D])
    texts = _object_texts(private)
    assert any(k.startswith("reports/validation/") for k in texts) and "reports/landing/events.json" in texts
    assert any(k.startswith("quarantine/events/unplaced/") for k in texts)
    assert _holders(texts, USERS) == {}
    assert not [r.getMessage() for r in caplog.records if any(u in r.getMessage() for u in USERS)]
    # The ids are there, as pseudonyms: the search above looks where they are.
    pseudonyms = [pseudonym_of(private, u) for u in USERS]
    assert set(_holders(texts, pseudonyms)) >= {layout.clean_key(D), layout.quarantine_key(D, "validation")}


def test_the_search_finds_raw_ids_with_the_switch_off(settings: Settings, tmp_path: Path) -> None:
    land_events(settings, _source(tmp_path / "events.csv"), "taobao", name="events")
    assert _holders(_object_texts(settings), [TARGET])


def _predictions(settings: Settings, day: dt.date, users: list[str], hour: int | None = None) -> None:
    """A published partition (daily, or intraday with ``hour``) of two parts for ``users`` (stored ids),
    manifest last."""
    folder = layout.partition_prefix(layout.PREDICTIONS, day) if hour is None else layout.intraday_prefix(day, hour)
    files = []
    for shard, group in enumerate((users[::2], users[1::2])):
        rows = [{"user_id": u, "as_of_date": day, "horizon_days": 3, "predicted_categories": ["70"],
                 "predicted_scores": [0.5], "current_categories": ["70"], "current_strengths": [1.0],
                 "migration_score": 0.1, "emerging_categories": [], "fading_categories": [],
                 "model_name": "interest_migration", "model_version": "1"} for u in group]
        key = folder + layout.PREDICTION_PART.format(shard=shard)
        storage.write_parquet(settings, key, pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA))
        files.append(key)
    storage.put_json(settings, folder + layout.SUCCESS, {"files": files, "row_count": len(users), "shards": 2,
                                                         "as_of_date": day.isoformat(), "model_version": "1"})


def _rows(settings: Settings) -> dict[str, list[dict]]:
    """Rows of every data object (raw files parsed as CSV text lines, Parquet as dicts)."""
    out = {}
    for key in storage.list_keys(settings, ""):
        if key.startswith((layout.RAW, layout.QUARANTINE, layout.CLEAN, layout.PREDICTIONS, layout.FEATURES,
                           layout.PREDICTIONS_INTRADAY)):
            data = storage.get_bytes(settings, key)
            if key.endswith((".csv", layout.RAW_CSV)):
                out[key] = [{"line": line} for line in unpack_raw(key, data).decode().splitlines()]
            elif key.endswith(".parquet"):
                out[key] = pq.read_table(io.BytesIO(data)).to_pylist()
    return out


def test_forget_removes_the_user_everywhere_and_keeps_every_other_row(private: Settings, tmp_path: Path,
                                                                      capsys) -> None:
    _land_validate_preprocess(private, _source(tmp_path / "events.csv"), [D])
    target = stored_id(private, TARGET)
    _predictions(private, D, [stored_id(private, u) for u in USERS])
    _predictions(private, D, [stored_id(private, u) for u in USERS[:10]], hour=5)
    features = layout.dataset_prefix("ds1") + layout.DATASET_TEST_EVENTS  # an encoded dataset's test events
    storage.write_parquet(private, features, storage.read_parquet(private, layout.clean_key(D)))
    before = _rows(private)
    assert _holders(_object_texts(private), [target]).keys() >= {
        layout.raw_key(D, "events", layout.RAW_CSV), layout.clean_key(D), layout.quarantine_key(D, "validation"),
        layout.quarantine_key(D, "preprocess"), layout.unplaced_key("events"), layout.handover_key(D),
        layout.prediction_part_key(D, 1), layout.intraday_prefix(D, 5) + "part-00001.parquet", features}

    assert main(["forget", "--user", TARGET, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert TARGET not in json.dumps(report) and report["user_ref"] == target

    texts = _object_texts(private)
    data_areas = (layout.RAW, layout.QUARANTINE, layout.VALIDATED, layout.CLEAN, layout.PREDICTIONS, layout.FEATURES,
                  layout.PREDICTIONS_INTRADAY)
    leftovers = {k: v for k, v in _holders(texts, [target]).items() if k.startswith(data_areas)}
    assert leftovers == {}
    after = _rows(private)
    manifest = read_manifest(private, D)
    intraday = storage.get_json(private, layout.intraday_success_key(D, 5))
    # Row for row: each object keeps exactly its rows without the user's, in order.
    for key, rows in before.items():
        kept = [r for r in rows if target not in json.dumps(r, default=str)]
        if key.startswith(layout.PREDICTIONS) and key not in manifest["files"] + intraday["files"]:  # rewritten
            new_key = layout.rewritten_part_key(key, report["erasure_id"].rsplit("-", 1)[-1])
            assert new_key in manifest["files"] + intraday["files"]
            assert after[new_key] == kept and key not in after
        else:
            assert after.get(key, []) == kept, key
    changed = {c["key"]: (c["rows_before"], c["rows_after"]) for c in report["changes"]}
    assert changed[layout.clean_key(D)] == (len(before[layout.clean_key(D)]), len(after[layout.clean_key(D)]))
    removed = sum(c["rows_before"] - c["rows_after"] for c in report["changes"] if c["area"] != "staging")
    assert removed == sum(len(r) for r in before.values()) - sum(len(r) for r in after.values()) > 25
    # Readers see a consistent partition: the manifest's count is the rows of the parts it lists.
    assert manifest["row_count"] == read_predictions(private, D).num_rows == len(USERS) - 1
    assert manifest["erasures"] == intraday["erasures"] == [report["erasure_id"]]
    assert intraday["row_count"] == len(after[intraday["files"][0]]) + len(after[intraday["files"][1]]) == 9
    meta = storage.get_json(private, layout.raw_meta_key(D, "events"))
    assert meta["rows"] == len(after[layout.raw_key(D, "events", layout.RAW_CSV)])
    # The pipeline still runs on the rewritten partition, and a second erasure finds nothing.
    again = preprocess_partition(private, D)
    assert again.rows_in == again.clean + again.quarantined + again.duplicates_dropped
    assert erasure.forget_user(private, TARGET)["changes"] == []


def test_forget_without_pseudonymisation_or_key_names_the_user_by_digest(settings: Settings, tmp_path: Path) -> None:
    land_events(settings, _source(tmp_path / "events.csv"), "taobao", name="events")
    report = erasure.forget_user(settings, TARGET)
    assert report["user_ref"].startswith("sha256:") and report["rows_removed"] == 3 + 1 + 1 + 25
    assert _holders(_object_texts(settings), [TARGET]) == {}
    with pytest.raises(ValueError, match="not a pseudonym"):
        erasure.forget_user(settings, pseudonym="123")


def _days_with_objects(settings: Settings, area: str) -> list[dt.date]:
    return [d for d in storage.list_partitions(settings, area)
            if storage.list_keys(settings, layout.partition_prefix(area, d))]


def test_retention_deletes_old_partitions_and_records_them(settings: Settings, tmp_path: Path) -> None:
    days = [D + dt.timedelta(days=i) for i in range(4)]
    _land_validate_preprocess(settings, _source(tmp_path / "events.csv", days=4), days)
    for day in days:
        _predictions(settings, day, USERS[:4])
    _predictions(settings, days[1], USERS[:4], hour=23)
    rules = dataclasses.replace(settings, retention_raw_days=2, retention_clean_days=3, retention_predictions_days=1)
    as_of = days[-1]  # raw kept from D+1, clean from D, predictions from D+2
    assert _days_with_objects(settings, layout.QUARANTINE) == [days[0]]
    dry = retention.apply_retention(rules, as_of, dry_run=True)
    assert dry["objects_deleted"] == 0 and _days_with_objects(settings, layout.RAW) == days
    record = retention.apply_retention(rules, as_of)
    assert _days_with_objects(settings, layout.RAW) == days[1:]
    assert _days_with_objects(settings, layout.QUARANTINE) == []  # only D had quarantined rows
    assert _days_with_objects(settings, layout.CLEAN) == days
    assert _days_with_objects(settings, layout.PREDICTIONS) == days[2:]
    assert _days_with_objects(settings, layout.PREDICTIONS_INTRADAY) == []
    assert record["by_area"]["raw"] == 1 and record["by_area"]["predictions"] == 2
    assert record["by_area"]["predictions_intraday"] == 1
    stored = storage.get_json(settings, record["report"].split(f"{settings.bucket}/", 1)[1])
    assert stored["first_day_kept"]["raw"] == days[1].isoformat()
    assert {p["prefix"] for p in stored["partitions"]} >= {layout.partition_prefix(layout.RAW, days[0]),
                                                          layout.partition_prefix(layout.PREDICTIONS, days[1])}
    assert sum(p["objects"] for p in stored["partitions"]) == stored["objects_deleted"]


def test_plugin_user_lookup_hashes_the_typed_id(private: Settings) -> None:
    _predictions(private, D, [stored_id(private, u) for u in USERS[:4]])
    found = reads.user(private, D.isoformat(), USERS[1])
    assert found["ok"] and found["value"]["user_id"] == pseudonym_of(private, USERS[1])
    missing = reads.user(dataclasses.replace(private, pseudonym_key_file=None), D.isoformat(), USERS[1])
    assert not missing["ok"] and "IM_PSEUDONYM_KEY_FILE" in missing["error"]


DAG_RUNNER = """
import datetime as dt, json, sys
from airflow.dag_processing.dagbag import DagBag

out = {}
for path, dag_id, conf in json.loads(sys.argv[1]):
    dag = DagBag(dag_folder=path).dags[dag_id]
    run = dag.test(logical_date=dt.datetime(2017, 11, 30, tzinfo=dt.UTC), run_conf=conf)
    out[dag_id] = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.airflow
@pytest.mark.slow
def test_forget_and_retention_dags_run_through_airflow(private: Settings, tmp_path: Path) -> None:
    _land_validate_preprocess(private, _source(tmp_path / "events.csv"), [D])
    target = stored_id(private, TARGET)
    home = tmp_path / "airflow"
    home.mkdir()
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
           env_name("retention_raw_days"): "3"}
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    runs = [(str(REPO_ROOT / "dags" / f"{dag_id}.py"), dag_id, conf) for dag_id, conf in (
        ("interest_migration_forget", {"pseudonym": target}), ("interest_migration_retention", {}))]
    done = subprocess.run([sys.executable, "-c", DAG_RUNNER, json.dumps(runs)], env=env, capture_output=True,
                          text=True, timeout=600, cwd=REPO_ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(lines[-1][len("RESULT "):]) == {"interest_migration_forget": {"forget_user": "success"},
                                                     "interest_migration_retention": {"apply_retention": "success"}}
    assert TARGET not in done.stdout + done.stderr
    assert [k for k in storage.list_keys(private, layout.ERASURE_REPORTS + "/")]
    # The run's day is 2017-11-30: raw older than 3 days (D = 11-25) is gone, with its record.
    assert storage.list_keys(private, layout.partition_prefix(layout.RAW, D)) == []
    assert storage.list_keys(private, layout.RETENTION_REPORTS + "/")


CSV_MAP = {"user_id": "uid", "item_id": "item", "category_id": "cat", "behavior": "ev", "ts": "ts"}
CSV_DAY = dt.date(2024, 1, 1)


def _land_csv(settings: Settings, tmp_path: Path, text: str) -> None:
    source = tmp_path / "events.csv"
    source.write_text(text)
    land_events(settings, source, "csv", column_map=CSV_MAP, ts_format="iso", name="events")


def _unplaced_rows(settings: Settings) -> list[str]:
    return storage.read_parquet(settings, layout.unplaced_key("events"))["raw"].to_pylist()


def test_forget_finds_a_user_id_holding_a_quote_in_raw_csv(settings: Settings, tmp_path: Path) -> None:
    # Raw CSV stores a"b as "a""b": the cheap byte search for a"b skipped the file, and the user came
    # back in clean with the next validation and preprocessing.
    _land_csv(settings, tmp_path, 'uid,item,cat,ev,ts\n"a""b",i1,7,buy,2024-01-01T10:00:00Z\n'
                                  "u2,i2,7,buy,2024-01-01T11:00:00Z\n")
    validation.validate_partitions(settings, [CSV_DAY], report_id="q")
    preprocess_partition(settings, CSV_DAY)
    report = erasure.forget_user(settings, 'a"b')
    assert layout.raw_key(CSV_DAY, "events", layout.RAW_CSV) in {c["key"] for c in report["changes"]}
    validation.validate_partitions(settings, [CSV_DAY], report_id="q2")
    preprocess_partition(settings, CSV_DAY)
    assert storage.read_parquet(settings, layout.clean_key(CSV_DAY))["user_id"].to_pylist() == ["u2"]


def test_forget_reads_unplaced_rows_as_csv(settings: Settings, tmp_path: Path) -> None:
    # A quoted id holding the delimiter ("a,b") was split in two, so the user's row stayed.
    _land_csv(settings, tmp_path, 'uid,item,cat,ev,ts\n"a,b",i8,7,buy\nu2,i2,7,buy,2024-01-01T11:00:00Z\n')
    assert _unplaced_rows(settings) == ['"a,b",i8,7,buy']
    report = erasure.forget_user(settings, "a,b")
    assert report["rows_removed"] == 1 and storage.list_keys(settings, layout.UNPLACED + "/") == []


def test_forget_compares_only_the_user_column_of_unplaced_rows(settings: Settings, tmp_path: Path) -> None:
    # A row of another field count was matched on any field: `forget --user 7` removed u9's row (7
    # is its category), and a row too short to hold the user column is never matched on another field.
    _land_csv(settings, tmp_path, "item,uid,cat,ev,ts\ni9,u9,7,buy\n7\n7,u2,7,buy,2024-01-01T11:00:00Z\n"
                                  "i3,7,7,buy,2024-01-01T11:00:00Z\ni4,7,7\n")
    before = _unplaced_rows(settings)
    assert before == ["i9,u9,7,buy", "7", "i4,7,7"]
    report = erasure.forget_user(settings, "7")
    assert _unplaced_rows(settings) == ["i9,u9,7,buy", "7"]
    assert report["rows_removed_by_area"] == {"quarantine": 1, "raw": 1}


def test_forget_counts_only_the_users_rows_of_a_deleted_hand_over(settings: Settings, tmp_path: Path,
                                                                   monkeypatch, capsys) -> None:
    # The report counted every row of the deleted hand-over as removed (3, not the user's 1).
    _land_csv(settings, tmp_path, "uid,item,cat,ev,ts\nu1,i1,7,buy,2024-01-01T10:00:00Z\n"
                                  "u2,i2,7,buy,2024-01-01T11:00:00Z\nu3,i3,7,buy,2024-01-01T12:00:00Z\n")
    validation.validate_partitions(settings, [CSV_DAY], report_id="q")
    monkeypatch.setenv("IM_BUCKET", settings.bucket)
    monkeypatch.setenv("IM_WORK_DIR", str(tmp_path / "work"))
    assert main(["forget", "--user", "u1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_removed"] == 2 and report["rows_removed_by_area"] == {"raw": 1, "staging": 1}
    assert report["rows_dropped_with_caches"] == 2
    (staging,) = [c for c in report["changes"] if c["area"] == "staging"]
    assert (staging["rows_before"], staging["rows_after"], staging["user_rows"]) == (3, 0, 1)
    assert staging["action"].startswith("deleted whole")
    assert sum(c["rows_before"] - c["rows_after"] for c in report["changes"]) == (
        report["rows_removed"] + report["rows_dropped_with_caches"])
