"""Validation: pure row rules, the GE batch gate, quarantine + reports on the real embedded S3 and MLflow."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.config import load_settings
from pipelines.data import expectations, formats, validation
from pipelines.data.canonical import canonicalize
from pipelines.data.formats import SourceError
from pipelines.data.landing import land_events
from pipelines.data.preprocess import preprocess_partition
from pipelines.data.raw import unpack_raw
from pipelines.data.rules import FlaggedPartition, ValidationError, flag_rows, split_flagged
from pipelines.data.synthetic import generate_taobao
from pipelines.data.validation import validate_partition
from pipelines.platform import layout, storage, tracking

D = dt.date(2017, 11, 25)
T0 = 1511568000  # D 00:00 UTC


def _canon(rows: list[tuple[str, str, str, str, str]]) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    raw = pa.table({c: pa.array(v) for c, v in zip(formats.TAOBAO_COLUMNS, cols, strict=True)})
    return canonicalize(raw, formats.TAOBAO_SPEC)


def test_row_rules_name_the_first_failure() -> None:
    settings = load_settings(environ={}, window_start=D, window_end=dt.date(2017, 12, 3))
    canon = _canon([
        ("1", "2", "3", "pv", str(T0 + 10)),          # ok
        ("", "2", "3", "pv", str(T0)),                # null user
        ("u1", "2", "3", "pv", str(T0)),              # non-numeric id
        ("1", "2", "3", "like", str(T0)),             # unknown behaviour
        ("1", "2", "3", "pv", "x"),                   # unparseable ts
        ("1", "2", "3", "pv", "0"),                   # 1970: implausible
        ("1", "2", "3", "pv", "-5"),                  # negative: implausible
        ("1", "2", "3", "pv", "99999999999"),         # far future: implausible
        ("1", "2", "3", "pv", str(T0 - 86400)),       # before the window
        ("1", "2", "3", "pv", str(T0 + 86400)),       # in window, wrong partition
        ("u1", "2", "3", "like", "x"),                # several failures: first in priority order wins
    ])
    reason, rules = flag_rows(canon, formats.TAOBAO_SPEC, D, settings)
    assert reason.to_pylist() == [None, "null_user_id", "bad_id_format", "unknown_behavior",
                                  "unparseable_timestamp", "implausible_timestamp", "implausible_timestamp",
                                  "implausible_timestamp", "outside_window", "wrong_partition", "bad_id_format"]
    assert rules.to_pylist()[-1] == "bad_id_format,unknown_behavior,unparseable_timestamp"


def test_split_flagged_sets_a_partition_outside_the_window_aside() -> None:
    settings = load_settings(environ={}, window_start=D, window_end=D)
    canon = _canon([("1", "2", "3", "pv", str(T0 + 10)), ("1", "2", "3", "like", str(T0 + 20))])
    reason, rules = flag_rows(canon, formats.TAOBAO_SPEC, D, settings)
    canon = canon.append_column("reason", reason).append_column("rules", rules)
    valid, bad, reasons = split_flagged(FlaggedPartition(D, canon, [], in_window=True))
    assert valid.num_rows == 1 and bad.num_rows == 1 and reasons == {"unknown_behavior": 1}
    # Wholly outside the window: rows that passed are set aside, a row's first failure stays its reason.
    valid, bad, reasons = split_flagged(FlaggedPartition(D, canon, [], in_window=False))
    assert valid.num_rows == 0 and reasons == {"outside_window": 1, "unknown_behavior": 1}
    assert bad["rules"].to_pylist() == [None, "unknown_behavior"]


def test_profile_gate_fails_on_each_batch_rule() -> None:
    settings = load_settings(environ={})
    ok = expectations.run_profile_gate({"rows": 1000, "bad_row_share": 0.01, "duplicate_share": 0.0,
                                        "volume_ratio": None}, settings)
    assert ok.success
    bad = expectations.run_profile_gate({"rows": 1000, "bad_row_share": 0.2, "duplicate_share": 0.9,
                                         "volume_ratio": 0.05}, settings)
    failed = {r.expectation_config.meta["rule"] for r in bad.results if not r.success}
    assert failed == {"bad_row_share", "duplicate_share", "volume"}


@pytest.fixture()
def landed(settings, tmp_path: Path):
    gen = generate_taobao(tmp_path / "gen", users=120, days=6, categories=30, start=D, seed=11)
    land = land_events(settings, gen.events_path, "taobao", name="synthetic")
    return gen, land


@pytest.mark.services
def test_validate_synthetic_partition_writes_reports(settings, landed) -> None:
    gen, land = landed
    result = validate_partition(settings, D, report_id="run-1")
    assert result.rows == land.rows_by_date[D.isoformat()] and result.quarantined == 0
    assert result.ge_success and result.ge_row_sample_success and result.in_window
    summary = storage.get_text(settings, "reports/validation/run-1/dt=2017-11-25/summary.md") \
        if hasattr(storage, "get_text") else storage.get_bytes(
            settings, "reports/validation/run-1/dt=2017-11-25/summary.md").decode()
    assert "passed" in summary and f"rows: {result.rows}" in summary
    ge = storage.get_json(settings, "reports/validation/run-1/dt=2017-11-25/ge_result.json")
    assert ge["partition_profile"]["success"] is True and ge["row_sample"]["results"]


@pytest.mark.services
def test_bad_rows_are_quarantined_and_a_bad_batch_fails(settings, tmp_path: Path) -> None:
    good = [f"{u},{100 + u},7,pv,{T0 + u}" for u in range(1, 301)]
    src = tmp_path / "mixed.csv"
    src.write_text("\n".join(good + [f"5,6,7,like,{T0 + 5}", f"x9,6,7,pv,{T0 + 6}"]) + "\n")
    land_events(settings, src, "taobao")
    res = validate_partition(settings, D, report_id="r")
    assert res.quarantined == 2 and res.reasons == {"unknown_behavior": 1, "bad_id_format": 1}
    q = storage.read_parquet(settings, res.quarantine_key).to_pydict()
    assert sorted(q["reason"]) == ["bad_id_format", "unknown_behavior"] and "x9" in q["user_id"]

    src.write_text("\n".join(good[:100] + [f"{u},6,7,like,{T0 + u}" for u in range(200)]) + "\n")
    land_events(settings, src, "taobao")
    # The line names the commonest reason and the setting (only summary.md named the reason).
    with pytest.raises(ValidationError, match=r"bad_row_share failed: 66\.67% of 300 rows quarantined \(most: "
                       r"unknown_behavior 200\) > limit 5\.00% \(IM_MAX_BAD_ROW_SHARE\)") as err:
        validate_partition(settings, D, report_id="r")
    assert "raw/events/dt=2017-11-25/mixed.csv" in str(err.value)
    summary = storage.get_bytes(settings, "reports/validation/r/dt=2017-11-25/summary.md").decode()
    assert "FAILED" in summary and "unknown_behavior | 200" in summary

    # A day under IM_SHARE_CHECKS_MIN_ROWS whose every row is broken (a behaviour column that is all
    # empty) passed: nothing of it reached the model and nothing said why. Some bad rows still pass.
    src.write_text("\n".join(f"{u},6,7,,{T0 + u}" for u in range(137)) + "\n")
    land_events(settings, src, "taobao")
    with pytest.raises(ValidationError, match=r"bad_row_share failed: 100\.00% of 137 rows quarantined \(most: "
                       r"unknown_behavior 137\)"):
        validate_partition(settings, D, report_id="r")
    src.write_text("\n".join(good[:100] + [f"{u},6,7,,{T0 + u}" for u in range(37)]) + "\n")
    land_events(settings, src, "taobao")
    assert validate_partition(settings, D, report_id="r").quarantined == 37


@pytest.mark.services
def test_volume_collapse_fails_against_recent_partitions(settings, tmp_path: Path) -> None:
    lines = []
    for day in range(4):
        n = 400 if day < 3 else 20
        lines += [f"{u},{u},7,pv,{T0 + day * 86400 + u}" for u in range(1, n + 1)]
    src = tmp_path / "vol.csv"
    src.write_text("\n".join(lines) + "\n")
    land_events(settings, src, "taobao")
    with pytest.raises(ValidationError, match=r"rule volume failed: 20 rows = 0\.05 x the median 400 .*"
                       r"\(IM_MIN_VOLUME_RATIO; 0 turns the rule off"):
        validate_partition(settings, D + dt.timedelta(days=3), report_id="v")
    # Two earlier partitions are not enough history to judge volume.
    assert validate_partition(settings, D + dt.timedelta(days=2), report_id="v").volume_ratio is None


@pytest.mark.services
def test_empty_partition_and_outside_window(settings, landed) -> None:
    with pytest.raises(ValidationError, match=r"dt=2018-01-01: rule partition_not_empty failed"):
        validate_partition(settings, dt.date(2018, 1, 1), report_id="e")
    windowed = load_settings(environ={}, s3_endpoint_url=settings.s3_endpoint_url, bucket=settings.bucket,
                             mlflow_tracking_uri=settings.mlflow_tracking_uri, window_start=D + dt.timedelta(days=1))
    res = validate_partition(windowed, D, report_id="w")
    assert not res.in_window and res.quarantined == res.rows and res.reasons == {"outside_window": res.rows}


@pytest.mark.services
def test_raw_file_without_sidecar_fails_the_batch(settings, landed) -> None:
    storage.put_bytes(settings, "raw/events/dt=2017-11-25/dropped_by_hand.csv", f"1,2,3,pv,{T0}\n".encode())
    with pytest.raises(ValidationError, match=r"rule files_have_sidecar failed: 1 raw file\(s\) without a "
                                              r"\.meta\.json sidecar \(raw/events/dt=2017-11-25/dropped_by_hand\.csv\)"):
        validate_partition(settings, D, report_id="orphan")


@pytest.mark.services
def test_raw_csv_is_stored_zstd_and_plain_csv_landed_before_still_validates(settings, landed) -> None:
    _gen, land = landed
    key = layout.raw_key(D, "synthetic", layout.RAW_CSV)
    stored = storage.get_bytes(settings, key)
    text = unpack_raw(key, stored)
    assert stored[:4] == b"\x28\xb5\x2f\xfd" and len(stored) < len(text) / 2  # zstd frames, well compressed
    first = validate_partition(settings, D, report_id="zst")
    # The same rows as a plain .csv with its sidecar (how landings before zstd stored them) give the same result.
    plain = layout.raw_key(D, "synthetic", ".csv")
    storage.put_bytes(settings, plain, text)
    storage.delete_key(settings, key)
    assert layout.meta_key_of(plain) == layout.meta_key_of(key) == layout.raw_meta_key(D, "synthetic")
    again = validate_partition(settings, D, report_id="plain")
    assert (again.rows, again.valid_rows, again.quarantined, again.duplicate_rows) == \
        (first.rows, first.valid_rows, first.quarantined, first.duplicate_rows) == \
        (land.rows_by_date[D.isoformat()], first.rows, 0, first.duplicate_rows)


@pytest.mark.services
def test_a_broken_zstd_raw_file_fails_its_day_naming_the_file(settings, landed) -> None:
    key = layout.raw_key(D, "synthetic", layout.RAW_CSV)
    stored = storage.get_bytes(settings, key)
    storage.put_bytes(settings, key, stored[: len(stored) // 2])  # cut off in transfer
    with pytest.raises(ValidationError, match=rf"dt=2017-11-25: rule readable_file failed: s3://{settings.bucket}/"
                                              rf"{key}: unreadable raw file: broken zstd data"):
        validate_partition(settings, D, report_id="cut")


@pytest.mark.services
def test_log_to_mlflow_records_key_numbers(settings, landed) -> None:
    res = validate_partition(settings, D, report_id="m")
    client = tracking.client(settings)
    exp = client.get_experiment_by_name("validation-test") or client.get_experiment(
        client.create_experiment("validation-test"))
    run = client.create_run(exp.experiment_id)
    metrics = validation.log_to_mlflow([res.to_dict()], run.info.run_id, settings)
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["validation/rows"] == res.rows == metrics["validation/rows"]
    assert logged["validation/partitions"] == 1.0


@pytest.mark.services
def test_row_sample_suite_can_be_switched_off(settings, landed) -> None:
    off = load_settings(environ={}, s3_endpoint_url=settings.s3_endpoint_url, bucket=settings.bucket,
                        mlflow_tracking_uri=settings.mlflow_tracking_uri, ge_row_sample_rows=0)
    res = validate_partition(off, D, report_id="off")
    assert res.ge_success and res.ge_row_sample_success is None
    ge = storage.get_json(off, "reports/validation/off/dt=2017-11-25/ge_result.json")
    assert ge["row_sample"] is None and ge["partition_profile"]["success"] is True
    assert "row sample not run" in storage.get_bytes(off, "reports/validation/off/dt=2017-11-25/summary.md").decode()


# --- many days in one run, suites users own, Data Docs ----------------------------------------


def test_row_expectations_are_judged_per_day() -> None:
    settings = load_settings(environ={})
    good = pa.table({"user_id": ["1", "2"], "item_id": ["3", "4"], "category_id": ["5", "5"], "behavior": ["view"] * 2,
                     "ts_us": pa.array([T0 * 10**6] * 2, pa.int64()), "value": pa.nulls(2, pa.float64())})
    bad = good.set_column(0, "user_id", pa.array(["x1", "x2"]))
    days = expectations.check_samples([("2017-11-25", formats.TAOBAO_SPEC, good),
                                       ("2017-11-26", formats.TAOBAO_SPEC, bad)], settings)
    regex = {d: next(r for r in days[d].result.results if r.expectation_config.type
                     == "expect_column_values_to_match_regex" and r.expectation_config.kwargs["column"] == "user_id")
             for d in days}
    assert regex["2017-11-25"].success and not regex["2017-11-26"].success
    assert regex["2017-11-26"].result["partial_unexpected_list"] == ["x1", "x2"]
    assert regex["2017-11-26"].result["unexpected_count"] == 2 and regex["2017-11-25"].result["unexpected_count"] == 0
    assert days["2017-11-25"].success and not days["2017-11-26"].success
    # The JSON of a day is GX's layout: the same expectations, outcomes and numbers.
    assert [r["success"] for r in days["2017-11-26"].json["results"]] == [r.success for r in days["2017-11-26"].result.results]


def test_suite_files_users_own(tmp_path: Path) -> None:
    shipped = expectations.read_suite(expectations.PROFILE_SUITE)
    assert {e["meta"]["rule"] for e in shipped["expectations"]} == {"partition_not_empty", "bad_row_share",
                                                                    "duplicate_share", "volume"}
    # A file of the same name in the user's folder replaces the shipped one; the other stays shipped.
    mine = dict(shipped, expectations=shipped["expectations"] + [{
        "type": "expect_column_values_to_be_between", "kwargs": {"column": "users", "min_value": 5},
        "meta": {"rule": "enough_users"}}])
    mine.pop("_path")
    (tmp_path / "partition_profile.json").write_text(json.dumps(mine))
    assert len(expectations.read_suite(expectations.PROFILE_SUITE, tmp_path)["expectations"]) == 5
    assert expectations.suite_path(expectations.SAMPLE_SUITE, tmp_path) == expectations.suite_path(
        expectations.SAMPLE_SUITE, None)
    # Parameters are filled from the settings; an expectation whose parameter has no value is left out.
    resolved = expectations.resolve_expectations(expectations.read_suite(expectations.SAMPLE_SUITE),
                                                 expectations.sample_parameters(load_settings(environ={}),
                                                                                formats.TAOBAO_SPEC))
    assert not any(e["kwargs"].get("column") == "value" for e in resolved)
    assert all("$PARAMETER" not in json.dumps(e) for e in resolved)
    # A broken user suite is named, with the expectation at fault.
    (tmp_path / "row_sample.json").write_text(json.dumps({"expectations": [{"type": "expect_no_such_thing",
                                                                            "kwargs": {}}]}))
    with pytest.raises(expectations.SuiteError, match=r"row_sample\.json: expectation 0 \('expect_no_such_thing'\)"):
        expectations.resolve_expectations(expectations.read_suite(expectations.SAMPLE_SUITE, tmp_path), {})
    (tmp_path / "row_sample.json").write_text("{not json")
    with pytest.raises(expectations.SuiteError, match=r"row_sample\.json: cannot read it as JSON"):
        expectations.read_suite(expectations.SAMPLE_SUITE, tmp_path)


@pytest.mark.services
def test_validate_many_days_in_one_run_with_data_docs(settings, tmp_path: Path) -> None:
    gen = generate_taobao(tmp_path / "gen", users=80, days=5, categories=20, start=D, seed=5)
    land = land_events(settings, gen.events_path, "taobao", name="synthetic")
    # One day gets a broken row and a second day's raw file is replaced by a file without sidecar.
    run = validation.validate_partitions(settings, land.dates, report_id="many")
    assert sorted(r.date for r in run.results) == land.dates and run.errors == {}
    for res in run.results:
        assert res.rows == land.rows_by_date[res.date.isoformat()]
        assert res.data_docs_key == f"reports/validation/many/dt={res.date}/data_docs.html"
        page = storage.get_bytes(settings, res.data_docs_key).decode()
        assert "<html" in page and "expect_column_values_to_match_regex" not in page  # rendered, not raw JSON
        assert "Data Docs" in page or "Great Expectations" in page
        summary = storage.get_bytes(settings, res.report_prefix + "summary.md").decode()
        assert f"s3://{settings.bucket}/{res.data_docs_key}" in summary
        assert storage.get_json(settings, res.report_prefix + "result.json")["data_docs_key"] == res.data_docs_key
    assert run.data_docs_key == "reports/validation/many/data_docs.html"
    index = storage.get_bytes(settings, run.data_docs_key).decode()
    assert all(f'href="dt={d}/data_docs.html"' in index for d in land.dates)

    # The same days one by one give the same numbers.
    single = validate_partition(settings, land.dates[2], report_id="one")
    together = next(r for r in run.results if r.date == land.dates[2])
    assert {k: v for k, v in single.to_dict().items() if k not in ("report_id", "report_prefix", "data_docs_key")} \
        == {k: v for k, v in together.to_dict().items() if k not in ("report_id", "report_prefix", "data_docs_key")}

    # A day that cannot be read is an error of its own; the others are still validated and reported.
    storage.put_bytes(settings, f"raw/events/dt={land.dates[1]}/by_hand.csv", f"1,2,3,pv,{T0}\n".encode())
    run = validation.validate_partitions(settings, land.dates, report_id="many2")
    assert list(run.errors) == [land.dates[1]] and "files_have_sidecar" in run.errors[land.dates[1]]
    assert len(run.results) == len(land.dates) - 1
    with pytest.raises(ValidationError, match=r"1 partition\(s\) failed validation: dt=2017-11-26: rule files_have_sidecar"):
        run.raise_for_errors()


@pytest.mark.services
def test_a_users_expectation_fails_the_day(settings, tmp_path: Path) -> None:
    import dataclasses

    if "expectation_suites_dir" not in {f.name for f in dataclasses.fields(settings)}:
        pytest.skip("needs the Settings field expectation_suites_dir (IM_EXPECTATION_SUITES_DIR)")
    suite = expectations.read_suite(expectations.PROFILE_SUITE)
    suite.pop("_path")
    suite["expectations"].append({"type": "expect_column_values_to_be_between",
                                  "kwargs": {"column": "users", "min_value": 1000}, "meta": {"rule": "enough_users"}})
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "partition_profile.json").write_text(json.dumps(suite))
    gen = generate_taobao(tmp_path / "gen", users=60, days=2, categories=20, start=D, seed=6)
    land_events(settings, gen.events_path, "taobao", name="synthetic")
    mine = load_settings(environ={}, s3_endpoint_url=settings.s3_endpoint_url, bucket=settings.bucket,
                         expectation_suites_dir=tmp_path / "suites")
    with pytest.raises(ValidationError, match=r"rule enough_users failed \(expect_column_values_to_be_between: users = "):
        validate_partition(mine, D, report_id="mine")


@pytest.mark.services
def test_mlflow_run_links_the_data_docs(settings, landed) -> None:
    run = validation.validate_partitions(settings, [D], report_id="docs")
    client = tracking.client(settings)
    exp = client.get_experiment_by_name("validation-docs") or client.get_experiment(
        client.create_experiment("validation-docs"))
    mlflow_run = client.create_run(exp.experiment_id)
    validation.log_to_mlflow([r.to_dict() for r in run.results], mlflow_run.info.run_id, settings,
                             data_docs_key=run.data_docs_key)
    tags = client.get_run(mlflow_run.info.run_id).data.tags
    assert tags["validation.data_docs"] == f"s3://{settings.bucket}/reports/validation/docs/data_docs.html"


def test_a_long_run_logs_its_progress_while_it_checks_the_days(settings, tmp_path: Path, monkeypatch,
                                                               caplog) -> None:
    # A 4,000-day history logged nothing for about a minute, until the first day's result.
    gen = generate_taobao(tmp_path / "gen", users=30, days=4, categories=10, start=D, seed=3)
    land = land_events(settings, gen.events_path, "taobao", name="synthetic")
    monkeypatch.setattr(validation, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level("INFO", logger="pipelines.data.validation"):
        validation.validate_partitions(settings, land.dates, report_id="progress")
    lines = [r.getMessage() for r in caplog.records]
    days = len(land.dates)
    assert any(m.startswith(f"validation: checked 1 of {days} days ({100 / days:.0f}%) in ") for m in lines)
    assert any(m.startswith(f"validation: checked all {days} days in") for m in lines)


@pytest.mark.services
def test_the_command_line_leaves_out_the_libraries_start_up_notices(settings, tmp_path: Path) -> None:
    # `validate` printed ~214 lines of Great Expectations' "Skipping registering function ..." and a
    # bare "[]" (its datasources) around the few lines that matter.
    src = tmp_path / "day.csv"
    src.write_text("\n".join(f"{u},{100 + u},7,pv,{T0 + u}" for u in range(1, 30)) + "\n")
    land_events(settings, src, "taobao")
    env = {**os.environ, "IM_BUCKET": settings.bucket, "IM_WORK_DIR": str(tmp_path / "work")}
    run = subprocess.run([sys.executable, "-m", "pipelines", "validate", "--date", D.isoformat()], env=env,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr
    assert "Skipping registering" not in run.stderr and "[]" not in run.stderr.splitlines()
    assert "botocore.credentials" not in run.stderr and "validated dt=2017-11-25" in run.stderr
    verbose = subprocess.run([sys.executable, "-m", "pipelines", "--verbose", "validate", "--date", D.isoformat()],
                             env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert "Skipping registering" in verbose.stderr  # --verbose keeps them


def test_great_expectations_context_leaves_scipy_stats_until_used() -> None:
    # GX's import pulled in scipy.stats (about half a second of every validation process) for an
    # expectation the suites never run; it is now loaded at its first use, and then works as before.
    code = ("import sys\nfrom pipelines.data import expectations\nexpectations._context()\n"
            "print(type(sys.modules['scipy.stats']).__name__)\n"
            "from scipy import stats\nprint(round(float(stats.norm.cdf(0)), 3), type(sys.modules['scipy.stats']).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["_LazyModule", "0.5", "module"]


@pytest.mark.services
def test_a_behaviour_mapped_to_ignore_is_set_aside_out_of_scope(settings, tmp_path: Path) -> None:
    # REES46 logs remove_from_cart, which has no canonical behaviour: left unmapped, a realistic 20%
    # of such rows failed every day on the bad-row share, and `remove_from_cart=none` was refused.
    rows = [f"{u},{100 + u},7,{'remove_from_cart' if u % 4 == 0 else 'view'},{T0 + u}" for u in range(1, 301)]
    src = tmp_path / "rees.csv"
    src.write_text("u,i,c,event,t\n" + "\n".join(rows) + "\n")
    cmap = {"user_id": "u", "item_id": "i", "category_id": "c", "behavior": "event", "ts": "t"}
    with pytest.raises(SourceError, match=r"\['none'\] not canonical behaviours .*'ignore'"):
        land_events(settings, src, "csv", column_map=cmap, behavior_map={"remove_from_cart": "none"})
    land_events(settings, src, "csv", column_map=cmap, behavior_map={"remove_from_cart": "ignore"})
    res = validate_partition(settings, D, report_id="ignore")
    assert res.reasons == {"ignored_behavior": 75} and res.bad_row_share == 0.0 and not res.failures
    pre = preprocess_partition(settings, D)
    assert pre.clean == 225 and pre.rows_in == pre.clean + pre.quarantined + pre.duplicates_dropped
