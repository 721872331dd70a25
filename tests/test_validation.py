"""Validation: pure row rules, the GE batch gate, quarantine + reports on the real embedded S3 and MLflow."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.config import load_settings
from pipelines.data import expectations, formats, validation
from pipelines.data.canonical import canonicalize
from pipelines.data.landing import land_events
from pipelines.data.rules import FlaggedPartition, ValidationError, flag_rows, split_flagged
from pipelines.data.synthetic import generate_taobao
from pipelines.data.validation import validate_partition
from pipelines.platform import storage, tracking

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
    with pytest.raises(ValidationError, match=r"bad_row_share failed: 66\.67% of 300 rows.*limit 5\.00%") as err:
        validate_partition(settings, D, report_id="r")
    assert "raw/events/dt=2017-11-25/mixed.csv" in str(err.value)
    summary = storage.get_bytes(settings, "reports/validation/r/dt=2017-11-25/summary.md").decode()
    assert "FAILED" in summary and "unknown_behavior | 200" in summary


@pytest.mark.services
def test_volume_collapse_fails_against_recent_partitions(settings, tmp_path: Path) -> None:
    lines = []
    for day in range(4):
        n = 400 if day < 3 else 20
        lines += [f"{u},{u},7,pv,{T0 + day * 86400 + u}" for u in range(1, n + 1)]
    src = tmp_path / "vol.csv"
    src.write_text("\n".join(lines) + "\n")
    land_events(settings, src, "taobao")
    with pytest.raises(ValidationError, match=r"rule volume failed: 20 rows = 0\.05 x the median 400"):
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
