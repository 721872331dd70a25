"""Preprocessing: dedupe, noise control, EVENT_SCHEMA output and counts that reconcile per partition."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines.__main__ import main
from pipelines.config import load_settings
from pipelines.contracts import EVENT_SCHEMA
from pipelines.data import rules, validation
from pipelines.data.events import read_clean_events
from pipelines.data.landing import land_events
from pipelines.data.preprocess import clean_events, preprocess_partition
from pipelines.data.synthetic import generate_taobao
from pipelines.platform import storage

D = dt.date(2017, 11, 25)
T0 = 1511568000
US = 1_000_000


def _valid(rows: list[tuple[str, str, str, str, int, float | None]]) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    return pa.table({"user_id": pa.array(cols[0]), "item_id": pa.array(cols[1]), "category_id": pa.array(cols[2]),
                     "behavior": pa.array(cols[3]), "ts": pa.array(cols[4], pa.int64()),
                     "value": pa.array(cols[5], pa.float64()), "source_file": pa.array(["f"] * len(rows)),
                     "row": pa.array(range(len(rows)), pa.int64())})


def test_clean_events_dedupes_and_sets_noise_aside() -> None:
    settings = load_settings(environ={}, crawler_max_events_per_hour=50, burst_max_events_per_second=5)
    rows = [("1", "10", "c", "view", T0 * US, None)] * 3            # 2 exact duplicates
    rows += [("1", "10", "c", "view", T0 * US + 400_000, None)]      # near duplicate (0.4 s later)
    rows += [("1", "10", "c", "view", (T0 + 60) * US, None)]          # a real repeat view a minute later
    rows += [("2", str(i), "c", "view", (T0 + i) * US, None) for i in range(60)]  # 60 events in an hour
    rows += [("3", str(i), "c", "view", (T0 + 5) * US + i, None) for i in range(8)]  # 8 in one second
    clean, noise, counts = clean_events(_valid(rows), settings)
    assert counts["duplicate_exact"] == 2 and counts["duplicate_near"] == 1
    assert counts["crawler_rate"] == 60 and counts["burst"] == 8 and counts["clean"] == 2
    assert clean.schema == EVENT_SCHEMA and clean.num_rows == 2
    assert set(noise["fate"].to_pylist()) == {"crawler_rate", "burst"}
    assert len(rows) == clean.num_rows + noise.num_rows + counts["duplicate_exact"] + counts["duplicate_near"]


def test_diversity_crawler_rule() -> None:
    settings = load_settings(environ={}, crawler_min_events_for_diversity=100, crawler_max_item_diversity=0.9)
    rows = [("9", str(i), "c", "view", (T0 + 30 * i) * US, None) for i in range(150)]  # every event a new item
    rows += [("8", str(i % 10), "c", "view", (T0 + 30 * i) * US, None) for i in range(150)]
    _, noise, counts = clean_events(_valid(rows), settings)
    assert counts["crawler_diversity"] == 150 and set(noise["user_id"].to_pylist()) == {"9"}


@pytest.mark.services
def test_preprocess_synthetic_partition_reconciles_and_replaces(settings, tmp_path: Path) -> None:
    gen = generate_taobao(tmp_path / "gen", users=150, days=4, categories=30, start=D, seed=2)
    land = land_events(settings, gen.events_path, "taobao", name="synthetic")
    # The same file landed again under another name: every row of the second copy is an exact duplicate.
    land_events(settings, gen.events_path, "taobao", name="synthetic_copy")
    res = preprocess_partition(settings, D)
    day_rows = land.rows_by_date[D.isoformat()]
    assert res.rows_in == 2 * day_rows
    assert res.rows_in == res.clean + res.quarantined + res.duplicates_dropped
    assert res.exact_duplicates >= day_rows and res.clean <= day_rows
    clean = read_clean_events(settings, D, D)
    assert clean.num_rows == res.clean and clean.schema == EVENT_SCHEMA
    assert pc.all(pc.equal(pc.cast(clean["ts"], pa.date32()), pa.scalar(D, pa.date32()))).as_py()
    report = storage.get_json(settings, "reports/preprocess/dt=2017-11-25.json")
    assert report["rows_in"] == res.rows_in and report["clean"] == res.clean

    # Rerun after removing the copy: the partition is replaced whole, not appended to.
    storage.delete_prefix(settings, "raw/events/dt=2017-11-25/") and None
    land_events(settings, gen.events_path, "taobao", name="synthetic")
    again = preprocess_partition(settings, D)
    assert again.rows_in == day_rows
    assert storage.list_keys(settings, "clean/events/dt=2017-11-25/") == ["clean/events/dt=2017-11-25/part-00000.parquet"]
    assert read_clean_events(settings, D, D).num_rows == again.clean


@pytest.mark.services
def test_preprocess_quarantines_validation_failures_and_noise(settings, tmp_path: Path) -> None:
    lines = [f"{u},{u},7,pv,{T0 + u}" for u in range(1, 201)]
    lines += [f"1,2,7,zap,{T0 + 3}"]
    lines += [f"7777,{i},7,pv,{T0 + 100 + i // 5}" for i in range(3000)]  # crawler: 3000 in a few minutes
    src = tmp_path / "noisy.csv"
    src.write_text("\n".join(lines) + "\n")
    land_events(settings, src, "taobao")
    res = preprocess_partition(settings, D)
    assert res.reasons == {"unknown_behavior": 1, "crawler_rate": 3000}
    assert res.clean == 200 and res.rows_in == 3201 == res.clean + res.quarantined + res.duplicates_dropped
    q = storage.read_parquet(settings, res.quarantine_key)
    assert set(q["reason"].to_pylist()) == {"crawler_rate"} and q.num_rows == 3000
    assert storage.read_parquet(settings, "quarantine/events/dt=2017-11-25/validation.parquet").num_rows == 1


@pytest.mark.services
def test_preprocess_reuses_validated_handover_until_raw_files_change(settings, tmp_path: Path, monkeypatch) -> None:
    lines = [f"{u},{u},7,pv,{T0 + u}" for u in range(1, 301)] + [f"1,2,7,zap,{T0 + 3}"] + [f"5,5,7,pv,{T0 + 5}"]
    src = tmp_path / "handover.csv"
    src.write_text("\n".join(lines) + "\n")
    land_events(settings, src, "taobao")
    val = validation.validate_partition(settings, D, report_id="h")
    assert val.handover_key == "staging/validated/dt=2017-11-25/valid.parquet"
    assert storage.read_parquet(settings, val.handover_key).num_rows == val.valid_rows == 301
    reference = preprocess_partition(settings, D)

    # With the hand-over in place preprocessing does not read or flag the raw files again ...
    def no_flagging(*args, **kwargs):
        raise AssertionError("raw partition flagged again despite a fresh hand-over")

    monkeypatch.setattr(rules, "flag_partition", no_flagging)
    reused = preprocess_partition(settings, D)
    assert reused.to_dict() == reference.to_dict()
    assert reused.reasons == {"unknown_behavior": 1} and reused.exact_duplicates == 1 and reused.clean == 300
    monkeypatch.undo()

    # ... and once the raw files change (re-landed with one more row), the stale hand-over is ignored.
    src.write_text("\n".join(lines + [f"9,9,7,buy,{T0 + 9}"]) + "\n")
    land_events(settings, src, "taobao")
    fresh = preprocess_partition(settings, D)
    assert fresh.rows_in == 303 and fresh.clean == 301
    assert fresh.rows_in == fresh.clean + fresh.quarantined + fresh.duplicates_dropped
    # A missing hand-over (e.g. validation ran elsewhere and it was cleaned up) falls back the same way.
    storage.delete_prefix(settings, "staging/validated/")
    assert preprocess_partition(settings, D).to_dict() == fresh.to_dict()


@pytest.mark.services
def test_cli_lands_validates_and_preprocesses_a_window(settings, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("IM_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    monkeypatch.setenv("IM_BUCKET", settings.bucket)
    monkeypatch.setenv("IM_WORK_DIR", str(tmp_path / "work"))
    out_dir = tmp_path / "gen"
    assert main(["generate", "--out", str(out_dir), "--users", "60", "--days", "3", "--categories", "20",
                 "--start", D.isoformat(), "--seed", "4"]) == 0
    assert capsys.readouterr().out.startswith("generated ")
    assert main(["land", "--source", str(out_dir / "events.csv"), "--format", "taobao", "--json"]) == 0
    landed = json.loads(capsys.readouterr().out)
    assert landed["name"] == "events" and landed["dates"][0] == D.isoformat()
    # A window as --start/--end ...
    last = (D + dt.timedelta(days=2)).isoformat()
    assert main(["validate", "--start", D.isoformat(), "--end", last, "--report-id", "cli", "--json"]) == 0
    validated = json.loads(capsys.readouterr().out)
    assert [p["date"] for p in validated["partitions"]] == landed["dates"] and validated["failed"] == {}
    assert validated["totals"]["rows"] == landed["rows"]
    assert validated["reports"] == f"s3://{settings.bucket}/reports/validation/cli/"
    # ... or in the old spelling --date/--to, with the readable lines.
    assert main(["preprocess", "--date", D.isoformat(), "--to", last]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[-1].startswith(f"preprocessed 3/3 partitions: {landed['rows']} in = ")


@pytest.mark.services
def test_handover_fates_are_replanned_under_other_cleaning_settings(settings, tmp_path: Path, monkeypatch) -> None:
    lines = [f"{u},{u},7,pv,{T0 + u}" for u in range(1, 301)]
    lines += [f"7777,{i % 50},7,pv,{T0 + 100 + i // 5}" for i in range(600)]  # 600 events in two minutes
    src = tmp_path / "crawl.csv"
    src.write_text("\n".join(lines) + "\n")
    land_events(settings, src, "taobao")
    validation.validate_partition(settings, D, report_id="c")
    assert preprocess_partition(settings, D).reasons == {}  # 600 an hour is below the default limit
    strict = load_settings(environ={}, s3_endpoint_url=settings.s3_endpoint_url, bucket=settings.bucket,
                           crawler_max_events_per_hour=500)

    def no_flagging(*args, **kwargs):
        raise AssertionError("raw partition flagged again although the hand-over matches the raw files")

    monkeypatch.setattr(rules, "flag_partition", no_flagging)
    replanned = preprocess_partition(strict, D)  # the hand-over's fates were planned under other settings
    monkeypatch.undo()
    assert replanned.reasons == {"crawler_rate": 600} and replanned.clean == 300
    storage.delete_prefix(settings, "staging/validated/")
    assert preprocess_partition(strict, D).to_dict() == replanned.to_dict()  # same as from the raw files


@pytest.mark.services
def test_many_days_in_one_run_equal_one_by_one(settings, tmp_path: Path) -> None:
    from pipelines.data.preprocess import preprocess_partitions

    gen = generate_taobao(tmp_path / "gen", users=80, days=5, categories=20, start=D, seed=8)
    land = land_events(settings, gen.events_path, "taobao", name="synthetic")
    validation.validate_partitions(settings, land.dates, report_id="b")
    run = preprocess_partitions(settings, land.dates)
    assert run.errors == {} and [r.date for r in run.results] == land.dates
    batch = {r.date: (r.to_dict(), read_clean_events(settings, r.date, r.date)) for r in run.results}
    for day in land.dates:
        single = preprocess_partition(settings, day)
        assert single.to_dict() == batch[day][0] and read_clean_events(settings, day, day).equals(batch[day][1])
        assert single.rows_in == land.rows_by_date[day.isoformat()] == single.clean + single.quarantined \
            + single.duplicates_dropped
    # A day without landed files is an error of its own.
    missing = dt.date(2017, 12, 30)
    run = preprocess_partitions(settings, [*land.dates[:2], missing])
    assert list(run.errors) == [missing] and "partition_not_empty" in run.errors[missing] and len(run.results) == 2


@pytest.mark.services
def test_a_truncated_raw_file_fails_and_preprocess_refuses_a_failed_day(settings, tmp_path: Path, monkeypatch,
                                                                       capsys) -> None:
    lines = [f"{u},{u},7,pv,{T0 + u}" for u in range(1, 101)]
    src = tmp_path / "cut.csv"
    src.write_text("\n".join(lines) + "\n")
    land_events(settings, src, "taobao")
    key = "raw/events/dt=2017-11-25/cut.csv"
    # The raw file loses its tail after landing (a partial copy, a bad restore): 60 of 100 rows remain.
    storage.put_bytes(settings, key, ("\n".join(lines[:60]) + "\n").encode())
    # Preprocess on its own (no hand-over) re-reads the raw files and fails on the count.
    with pytest.raises(rules.ValidationError, match=r"rows_as_landed.*cut.csv holds 60 rows but its landing wrote 100"):
        preprocess_partition(settings, D)
    with pytest.raises(rules.ValidationError, match="rows_as_landed"):
        validation.validate_partition(settings, D, report_id="cut")
    assert storage.exists(settings, "staging/validated/dt=2017-11-25/_FAILED.json")
    # The CLI preprocess refuses the failed day, as the DAG does (exit 1, one error line naming it).
    monkeypatch.setenv("IM_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    monkeypatch.setenv("IM_BUCKET", settings.bucket)
    monkeypatch.setenv("IM_WORK_DIR", str(tmp_path / "work"))
    assert main(["preprocess", "--date", D.isoformat()]) == 1
    assert "dt=2017-11-25: FAILED: refused: its last validation failed (report id cut)" in capsys.readouterr().err
    assert storage.list_keys(settings, "clean/events/") == []
    # Landed again whole and validated, the day is cleaned.
    land_events(settings, src, "taobao")
    validation.validate_partition(settings, D, report_id="whole")
    assert not storage.exists(settings, "staging/validated/dt=2017-11-25/_FAILED.json")
    assert preprocess_partition(settings, D).clean == 100


@pytest.mark.services
@pytest.mark.parametrize("with_handover", [True, False], ids=["after validation", "on its own"])
def test_every_row_in_is_in_exactly_one_output_row_for_row(settings, tmp_path: Path, with_handover: bool) -> None:
    lines = [f"{u},{u},7,pv,{T0 + 60 * u}" for u in range(1, 101)]
    lines += [f"{u},{u},7,pv,{T0 + 60 * u}" for u in (3, 3, 8)]  # exact duplicates (3 twice)
    lines += [f"1,2,7,zap,{T0 + 3}"]  # validation quarantine
    lines += [f"7777,{i},7,pv,{T0 + 100 + i // 5}" for i in range(3000)]  # crawler noise
    src = tmp_path / "mix.csv"
    src.write_text("\n".join(lines) + "\n")
    land_events(settings, src, "taobao")
    if with_handover:
        validation.validate_partition(settings, D, report_id="mix")
    res = preprocess_partition(settings, D)
    assert res.exact_duplicates == 3 and res.rows_in == len(lines)
    prefix = "quarantine/events/dt=2017-11-25/"
    dups = storage.read_parquet(settings, res.duplicates_key)
    assert res.duplicates_key == prefix + "duplicates.parquet"
    assert sorted(dups["reason"].to_pylist()) == ["duplicate_exact"] * 3
    assert sorted(dups["user_id"].to_pylist()) == ["3", "3", "8"]
    # Row for row: the (file, line) of every input row is in exactly one of clean / quarantine / duplicates.
    seen = []
    for key in ("validation.parquet", "preprocess.parquet", "duplicates.parquet"):
        seen += storage.read_parquet(settings, prefix + key, columns=["row"])["row"].to_pylist()
    clean = read_clean_events(settings, D, D)
    assert clean.num_rows == res.clean
    assert len(seen) + clean.num_rows == len(lines) == res.clean + res.quarantined + res.duplicates_dropped
    assert len(set(seen)) == len(seen)
    # A rerun with no duplicates left removes the duplicates file.
    src.write_text("\n".join(lines[:100]) + "\n")
    land_events(settings, src, "taobao")
    assert preprocess_partition(settings, D).duplicates_key is None
    assert not storage.exists(settings, prefix + "duplicates.parquet")


def test_noise_rules_that_count_events_in_a_span_are_not_applied_to_dates_without_times() -> None:
    # A daily export stamps every event 00:00: a user's 25 events of a day are not a burst of 25 in
    # one second (20 of them used to be set aside as burst), nor 25 in one clock hour.
    settings = load_settings(environ={}, crawler_max_events_per_hour=10, burst_max_events_per_second=5)
    day = T0 * US
    rows = [("1", str(i), "c", "view", day, None) for i in range(25)]
    rows += [("2", str(i), "c", "view", day + 86_400 * US, None) for i in range(3)]
    rows += [("2", "1", "c", "view", day + 86_400 * US, None)]  # the same event twice on a day: still a duplicate
    clean, noise, counts = clean_events(_valid(rows), settings)
    assert counts == {"clean": 28, "duplicate_exact": 1} and noise.num_rows == 0
    # Whole hours: the hourly rule applies, the per-second one does not.
    hourly = [("1", str(i), "c", "view", day + 3600 * US * (i % 2), None) for i in range(25)]
    _, _, counts = clean_events(_valid(hourly), settings)
    assert counts == {"crawler_rate": 25}
    # Times of day: both rules apply as before.
    timed = [("1", str(i), "c", "view", day + 7 * US, None) for i in range(8)] + [("3", "x", "c", "view", day, None)]
    _, _, counts = clean_events(_valid(timed), settings)
    assert counts == {"clean": 1, "burst": 8}


@pytest.mark.services
def test_a_day_of_dates_without_times_keeps_its_rows_and_the_report_says_why(settings, tmp_path: Path) -> None:
    src = tmp_path / "daily.csv"
    src.write_text("user,item,cat,event,day\n" + "".join(f"u{u},i{i},c{i % 3},view,2017-11-25\n"
                                                          for u in range(3) for i in range(30)))
    land_events(settings, src, "csv", column_map={"user_id": "user", "item_id": "item", "category_id": "cat",
                                                  "behavior": "event", "ts": "day"}, ts_format="iso")
    result = validation.validate_partition(settings, D, report_id="daily")
    assert set(result.time_rules_skipped) == {"crawler_rate", "burst"}
    summary = storage.get_bytes(settings, result.report_prefix + "summary.md").decode()
    assert "cleaning rules not applied" in summary
    pre = preprocess_partition(settings, D)
    assert pre.clean == 90 and pre.quarantined == 0
