"""A corpus of broken inputs (generated here, small), each with its expected outcome.

Every case ends in a clear error (SourceError / ValidationError / non-zero CLI exit with a one-line
message) or in quarantine with the right reason — and every row read is accounted for.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import pytest

from pipelines.__main__ import main
from pipelines.data.events import read_clean_events
from pipelines.data.formats import SourceError
from pipelines.data.landing import land_events
from pipelines.data.preprocess import PreprocessError, preprocess_partition
from pipelines.data.rules import ValidationError
from pipelines.data.validation import validate_partition
from pipelines.platform import storage

pytestmark = pytest.mark.services

D = dt.date(2017, 11, 25)
T0 = 1511568000
GOOD = [f"{u},{1000 + u},7,pv,{T0 + 60 * u}" for u in range(1, 21)]


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _zstd(data: bytes) -> bytes:
    import pyarrow as pa

    return pa.compress(data, "zstd", asbytes=True)


@pytest.fixture()
def cli_env(settings, tmp_path: Path, monkeypatch) -> None:
    """The command line pointed at the test's bucket and work folder."""
    monkeypatch.setenv("IM_BUCKET", settings.bucket)
    monkeypatch.setenv("IM_WORK_DIR", str(tmp_path / "work"))


def _accounted(result) -> None:
    assert result.rows_read == result.rows + result.quarantined


# --- files that cannot be landed at all: a clear error naming the file and the rule --------------

@pytest.mark.parametrize(("name", "content", "message"), [
    ("four_columns.csv", "1,2,3,pv\n4,5,6,buy\n", r"first row has 4 columns, expected 5 .*rule: column_count"),
    ("six_columns.csv", "1,2,3,pv,1511568000,x\n", r"first row has 6 columns, expected 5"),
    ("empty.csv", "", r"empty file"),
    ("blank_lines.csv", "\n\n\n", r"empty file"),
    ("corrupt.csv.gz", gzip.compress(("\n".join(GOOD) + "\n").encode())[:60], r"unreadable file \(corrupt"),
    ("not_gzip_at_all.csv.gz", b"\x1f\x8b\x08\x00garbage" * 10, r"unreadable file \(corrupt"),
    ("cr_line_ends.csv", "\r".join(GOOD) + "\r", r"lines end with a lone carriage return .*convert the line ends"),
    ("corrupt.csv.zst", _zstd(("\n".join(GOOD) + "\n").encode())[:30], r"unreadable file \(corrupt or truncated zstd"),
    ("utf16.csv", ("\n".join(GOOD) + "\n").encode("utf-16"), r"UTF-16 byte-order mark.*land it with --encoding utf-16"),
    ("utf16.csv.gz", gzip.compress(("\n".join(GOOD) + "\n").encode("utf-16")), r"UTF-16 byte-order mark"),
])
def test_unlandable_files_fail_clearly(settings, tmp_path: Path, name: str, content, message: str) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(SourceError, match=message) as err:
        land_events(settings, path, "taobao")
    assert str(path) in str(err.value)
    assert storage.list_keys(settings, "raw/") == []  # nothing half-landed


@pytest.mark.parametrize(("name", "content"), [
    ("plain_named_gz.csv.gz", ("\n".join(GOOD) + "\n").encode()),  # compression by magic number, not by name
    ("compressed.csv.zst", _zstd(("\n".join(GOOD) + "\n").encode())),
    ("zstd_named_csv.csv", _zstd(("\n".join(GOOD) + "\n").encode())),
])
def test_plain_gzip_and_zstd_sources_land_by_their_bytes_not_their_name(settings, tmp_path: Path, name: str,
                                                                        content: bytes) -> None:
    res = _land_ok(settings, _write(tmp_path, name, content), "taobao")
    assert (res.rows, res.quarantined, res.name) == (len(GOOD), 0, name.split(".")[0])
    assert validate_partition(settings, D, report_id="by-bytes").rows == len(GOOD)


def test_a_header_without_rows_fails_clearly(settings, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _write(tmp_path, "ciao.csv", "user_id,item_id,category_id,rating,helpfulness,timestamp\n")
    with pytest.raises(SourceError, match=r"ciao.csv: no data rows after the header: nothing to land"):
        land_events(settings, path, "ciao")
    unended = _write(tmp_path, "unended.csv", "user_id,item_id,category_id,rating,helpfulness,timestamp")
    with pytest.raises(SourceError, match=r"unended.csv: no data rows after the header: nothing to land"):
        land_events(settings, unended, "ciao")  # was: "Could not skip initial 1 rows from CSV file"
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"u": pa.array([], pa.string()), "c": pa.array([], pa.string()),
                             "t": pa.array([], pa.int64())}), empty)
    with pytest.raises(SourceError, match=r"empty.parquet: empty file \(0 rows\): nothing to land"):
        land_events(settings, empty, "parquet", column_map={"user_id": "u", "category_id": "c", "ts": "t"},
                    behavior_constant="view")
    assert storage.list_keys(settings, "raw/") == []


def test_a_header_differing_only_in_case_names_the_columns(settings, tmp_path: Path) -> None:
    path = _write(tmp_path, "upper.csv", "UID,CAT,EV,AT\nu1,c1,view,1511568000\n")
    with pytest.raises(SourceError, match=r"case-sensitive: the header has 'AT' for 'at', 'CAT' for 'cat'"):
        land_events(settings, path, "csv", column_map={"user_id": "uid", "category_id": "cat", "behavior": "ev",
                                                       "ts": "at"})


def test_ciao_with_missing_column_fails_clearly(settings, tmp_path: Path) -> None:
    path = _write(tmp_path, "ciao.csv", "user_id,item_id,category_id,helpfulness,timestamp\n1,2,3,4,959670000\n")
    with pytest.raises(SourceError, match=r"missing column\(s\) \['rating'\]"):
        land_events(settings, path, "ciao")


def test_cli_exits_non_zero_with_one_line_message(settings, tmp_path: Path, cli_env, capsys) -> None:
    path = _write(tmp_path, "empty.csv", "")
    assert main(["land", "--source", str(path), "--format", "taobao"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: land failed:") and "empty file" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["validate", "--date", "2017-11-25"]) == 1
    assert "partition_not_empty failed" in capsys.readouterr().err
    # Bad day arguments are usage errors (exit 2), also one line on stderr.
    assert main(["preprocess"]) == 2
    assert capsys.readouterr().err.startswith("error: preprocess: give the day with --date")
    assert main(["validate", "--date", "2017-11-25", "--end", "2017-11-26"]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_failing_command_with_json_prints_its_error_as_the_json_document(settings, tmp_path: Path, cli_env,
                                                                            capsys) -> None:
    # `land --json` printed nothing on stdout when it failed: a program parsing its output got no document.
    import json

    path = _write(tmp_path, "empty.csv", "")
    assert main(["land", "--source", str(path), "--format", "taobao", "--json"]) == 1
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert document["exit_code"] == 1 and "empty file" in document["error"] and str(path) in document["error"]
    assert err.startswith("error: land failed:") and len(err.strip().splitlines()) == 1
    assert main(["validate", "--date", "2017-11-25", "--end", "2017-11-20", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["exit_code"] == 2
    assert main(["land", "--source", str(path), "--format", "taobao"]) == 1
    assert capsys.readouterr().out == ""  # without --json, stdout stays empty
    # A command whose document lists its failed days prints that one document, not one per error.
    assert main(["validate", "--date", "2017-11-25", "--json"]) == 1
    out, err = capsys.readouterr()
    assert "2017-11-25" in json.loads(out)["failed"] and "FAILED" in err
    # A window with nothing landed was one error line per day (3,653 for ten years), each naming its day
    # twice: consecutive days failing for the same reason share one line.
    assert main(["validate", "--start", "2017-01-01", "--end", "2017-01-31", "--json"]) == 1
    out, err = capsys.readouterr()
    assert len(json.loads(out)["failed"]) == 31
    assert err.splitlines() == [f"error: dt=2017-01-01..2017-01-31 (31 days): FAILED: rule partition_not_empty failed: "
                                f"no landed files under s3://{settings.bucket}/raw/events/dt=<day>/"]


@pytest.mark.parametrize("command", [
    ["validate", "--date", "2017-11-25"], ["preprocess", "--date", "2017-11-25"], ["predictions", "--date", "2017-11-25"],
    ["ingest-inbox"], ["monitor"], ["evaluate", "--dataset-uri", "s3://no-such-bucket-x/features/1/", "--model-uri",
                                    "models:/interest_migration/1"]], ids=lambda c: c[0])
def test_a_bucket_that_does_not_exist_is_one_line_naming_it(settings, tmp_path: Path, monkeypatch, capsys,
                                                            command: list[str]) -> None:
    # Listing or reading a missing bucket raised botocore's NoSuchBucket through the command line (a traceback).
    monkeypatch.setenv("IM_BUCKET", "no-such-bucket-x")
    monkeypatch.setenv("IM_WORK_DIR", str(tmp_path / "work"))
    assert main(command) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "s3://no-such-bucket-x/" in err and "NoSuchBucket" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --- rows that are quarantined with the right reason ------------------------------------------

def test_header_where_none_expected_is_quarantined(settings, tmp_path: Path) -> None:
    path = _write(tmp_path, "with_header.csv", "user_id,item_id,category_id,behavior_type,timestamp\n"
                  + "\n".join(GOOD) + "\n")
    res = land_events(settings, path, "taobao")
    _accounted(res)
    assert res.quarantine_reasons == {"unexpected_header": 1} and res.rows == 20


def test_wrong_column_count_rows_and_truncated_last_line(settings, tmp_path: Path) -> None:
    path = _write(tmp_path, "ragged.csv", "\n".join(GOOD + ["1,2,3", "1,2,3,pv,5,6", "9,9,7,p"]))  # no final newline
    res = land_events(settings, path, "taobao")
    _accounted(res)
    assert res.quarantine_reasons == {"wrong_column_count": 3} and res.rows == 20
    cut = _write(tmp_path, "cut_ts.csv", "\n".join(GOOD + ["9,9,7,pv,15115"]))  # timestamp cut mid-number
    res = land_events(settings, cut, "taobao")
    _accounted(res)
    assert res.quarantine_reasons == {"implausible_timestamp": 1}


def test_a_delimiter_ending_every_row_is_named_when_no_row_lands(settings, tmp_path: Path) -> None:
    text = "uid,cat,ev,at\n" + "".join(f"u{i},c1,view,{T0 + i},\n" for i in range(30))
    with pytest.raises(SourceError, match=r"wrong_column_count \(30\).*most rows have 5 columns, expected 4 "
                                          r"\(a delimiter at the end of every row"):
        land_events(settings, _write(tmp_path, "trailing.csv", text), "csv",
                    column_map={"user_id": "uid", "category_id": "cat", "behavior": "ev", "ts": "at"})


def test_bad_timestamps_are_quarantined_at_landing(settings, tmp_path: Path) -> None:
    far_future = int(dt.datetime(2200, 1, 1, tzinfo=dt.UTC).timestamp())
    rows = GOOD + ["1,2,7,pv,-1511568000", "1,2,7,pv,0", "1,2,7,pv,86400", f"1,2,7,pv,{far_future}",
                   "1,2,7,pv,", "1,2,7,pv,1.5e9"]
    res = land_events(settings, _write(tmp_path, "times.csv", "\n".join(rows) + "\n"), "taobao")
    _accounted(res)
    assert res.quarantine_reasons == {"implausible_timestamp": 4, "unparseable_timestamp": 2}
    q = storage.read_parquet(settings, res.quarantine_key).to_pydict()
    assert any("timestamp='0'" in d for d in q["detail"])


def test_bom_is_not_part_of_the_first_id(settings, tmp_path: Path) -> None:
    res = land_events(settings, _write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + ("\n".join(GOOD) + "\n").encode()),
                      "taobao")
    assert res.rows == 20 and res.quarantined == 0
    val = validate_partition(settings, D, report_id="bom")
    assert val.quarantined == 0  # "\ufeff1" would fail the id format rule


def test_non_numeric_ids_and_unknown_behaviour_are_quarantined_by_validation(settings, tmp_path: Path) -> None:
    rows = GOOD + [f"abc,2,7,pv,{T0 + 1}", f"1,2,7,clicked,{T0 + 2}", f"1,,7,pv,{T0 + 3}", f"1,2.5,7,pv,{T0 + 4}"]
    land_events(settings, _write(tmp_path, "ids.csv", "\n".join(rows) + "\n"), "taobao")
    res = validate_partition(settings, D, report_id="ids")
    assert res.reasons == {"bad_id_format": 2, "unknown_behavior": 1, "null_item_id": 1}
    pre = preprocess_partition(settings, D)
    assert pre.rows_in == 24 == pre.clean + pre.quarantined + pre.duplicates_dropped and pre.clean == 20


def test_a_whole_partition_of_duplicates_fails_the_batch(settings, tmp_path: Path) -> None:
    rows = [f"1,2,7,pv,{T0 + 5}"] * 300
    land_events(settings, _write(tmp_path, "dups.csv", "\n".join(rows) + "\n"), "taobao")
    with pytest.raises(ValidationError, match=r"duplicate_share failed: 99\.67% of 300 rows"):
        validate_partition(settings, D, report_id="dups")
    # Preprocessing by hand refuses the failed day (as the DAG does), naming the rule.
    with pytest.raises(PreprocessError, match=r"dt=2017-11-25: refused: .*rule duplicate_share failed"):
        preprocess_partition(settings, D)
    assert storage.list_keys(settings, "clean/events/") == []


def test_crawler_with_100k_events_in_an_hour_is_set_aside(settings, tmp_path: Path) -> None:
    rows = GOOD + [f"424242,{i},7,pv,{T0 + 7200 + i * 36 // 1000}" for i in range(100_000)]
    land_events(settings, _write(tmp_path, "crawler.csv", "\n".join(rows) + "\n"), "taobao")
    # The crawler's rows are valid one by one; the noise rule in preprocessing sets them aside.
    validate_partition(settings, D, report_id="crawler")
    pre = preprocess_partition(settings, D)
    assert pre.reasons == {"crawler_rate": 100_000} and pre.clean == 20
    assert pre.rows_in == pre.clean + pre.quarantined + pre.duplicates_dropped
    q = storage.read_parquet(settings, pre.quarantine_key, columns=["user_id", "reason"])
    assert set(q["user_id"].to_pylist()) == {"424242"}


def test_mixed_time_zones_are_normalised_to_utc(settings, tmp_path: Path) -> None:
    text = ("user,item,cat,event,at\n"
            "1,10,7,view,2017-11-25T07:30:00+08:00\n"     # 2017-11-24 23:30 UTC
            "1,11,7,view,2017-11-25T00:30:00Z\n"
            "1,12,7,view,2017-11-24T20:00:00-05:00\n"     # 2017-11-25 01:00 UTC
            "1,13,7,view,2017-11-25 02:00:00\n"           # no offset: the map's timezone (UTC)
            "1,14,7,view,25/11/2017 03:00\n")             # not ISO-8601: quarantined
    res = land_events(settings, _write(tmp_path, "zones.csv", text), "csv",
                      column_map={"user_id": "user", "item_id": "item", "category_id": "cat", "behavior": "event",
                                  "ts": "at"}, ts_format="iso")
    _accounted(res)
    assert res.rows_by_date == {"2017-11-24": 1, "2017-11-25": 3}
    assert res.quarantine_reasons == {"unparseable_timestamp": 1}
    pre = preprocess_partition(settings, D)
    ts = sorted(t.isoformat() for t in read_clean_events(settings, D, D)["ts"].to_pylist())
    assert pre.clean == 3 and ts == ["2017-11-25T00:30:00+00:00", "2017-11-25T01:00:00+00:00",
                                     "2017-11-25T02:00:00+00:00"]


@pytest.mark.services
def test_a_file_whose_every_row_is_quarantined_fails_and_keeps_its_rows(settings, tmp_path: Path) -> None:
    # Timestamps in milliseconds read as seconds: every row is implausible. Not "landed 0 of 200" and exit 0.
    src = tmp_path / "millis.csv"
    src.write_text("".join(f"{u},1,7,pv,{1511568000000 + u}\n" for u in range(200)))
    with pytest.raises(SourceError, match=r"every one of its 200 rows was quarantined \(implausible_timestamp \(200\)\)"):
        land_events(settings, src, "taobao")
    unplaced = storage.read_parquet(settings, "quarantine/events/unplaced/millis.parquet")
    assert unplaced.num_rows == 200 and set(unplaced["reason"].to_pylist()) == {"implausible_timestamp"}
    assert storage.list_keys(settings, "raw/events/") == []
    # Tmall writes a day as mmdd ("1111"): read as the year 1111, with no word of how it was read.
    tmall = tmp_path / "tmall.csv"
    tmall.write_text("user_id,item_id,cat_id,time_stamp,action_type\n" + "".join(f"{u},1,7,1111,0\n" for u in range(5)))
    with pytest.raises(SourceError, match=r"time_stamp='1111' reads as 1111-01-01 00:00 UTC \(with --ts-format iso\): "
                                          r"a date without its year"):
        land_events(settings, tmall, "csv", column_map={"user_id": "user_id", "item_id": "item_id",
                                                        "category_id": "cat_id", "behavior": "action_type",
                                                        "ts": "time_stamp"}, behavior_map={"0": "view"}, ts_format="iso")


# --- more classes, as a new user's exports come -------------------------------------------------

def _land_ok(settings, path: Path, fmt: str = "taobao", **options):
    res = land_events(settings, path, fmt, **options)
    _accounted(res)
    return res


def test_a_headerless_file_holding_only_a_header_line_fails_clearly(settings, tmp_path: Path) -> None:
    path = _write(tmp_path, "only_header.csv", "user_id,item_id,category_id,behavior_type,timestamp\n")
    with pytest.raises(SourceError, match=r"every one of its 1 rows was quarantined \(unexpected_header \(1\)\)"):
        land_events(settings, path, "taobao")


def test_comment_lines_on_top_are_set_aside_and_the_rows_land(settings, tmp_path: Path) -> None:
    text = "# exported 2017-11-26 by ops\n\n#  columns: user,item,cat,behaviour,ts\n" + "\n".join(GOOD) + "\n"
    res = _land_ok(settings, _write(tmp_path, "commented.csv", text))
    assert res.rows == 20 and res.quarantine_reasons == {"comment_line": 2}
    q = storage.read_parquet(settings, res.quarantine_key).to_pydict()
    assert q["line"] == [1, 3] and q["raw"][0] == "# exported 2017-11-26 by ops"
    # A file with a header: comments and blank lines above it are skipped too (the header is not a row).
    text = "\n# by ops\n\nuid,cat,ev,at\n" + "".join(f"u{u},7,view,{T0 + u}\n" for u in range(5))
    res = _land_ok(settings, _write(tmp_path, "commented_header.csv", text), "csv", name="hdr",
                   column_map={"user_id": "uid", "category_id": "cat", "behavior": "ev", "ts": "at"})
    assert res.rows == 5 and res.quarantine_reasons == {"comment_line": 1}
    only = _write(tmp_path, "only_comments.csv", "# nothing today\n# really\n")
    with pytest.raises(SourceError, match=r"only comment lines \(2\), no rows"):
        land_events(settings, only, "taobao")


def test_a_utf16_file_lands_with_the_encoding_its_error_names(settings, tmp_path: Path) -> None:
    text = "uid,cat,ev,at\n" + "".join(f"u{i},c1,view,{T0 + i}\n" for i in range(30))
    path = _write(tmp_path, "utf16.csv", text.encode("utf-16"))
    cmap = {"user_id": "uid", "category_id": "cat", "behavior": "ev", "ts": "at"}
    with pytest.raises(SourceError, match="--encoding utf-16"):
        land_events(settings, path, "csv", column_map=cmap)
    assert _land_ok(settings, path, "csv", column_map=cmap, encoding="utf-16").rows == 30
    assert validate_partition(settings, D, report_id="utf16").quarantined == 0
    preprocess_partition(settings, D)
    assert sorted(read_clean_events(settings, D, D)["user_id"].to_pylist())[:2] == ["u0", "u1"]


def test_bytes_that_are_not_utf8_quarantine_their_rows_not_the_file(settings, tmp_path: Path) -> None:
    latin = b"user,cat,event,at\n" + b"".join(f"u{u},7,view,{T0 + u}\n".encode() for u in range(10))
    latin += f"caf\xe9,7,view,{T0}\n".encode("latin-1") + f"u1,Cr\xe8me,view,{T0}\n".encode("latin-1")
    cmap = {"user_id": "user", "category_id": "cat", "behavior": "event", "ts": "at"}
    path = _write(tmp_path, "latin.csv", latin)
    res = _land_ok(settings, path, "csv", column_map=cmap)
    assert res.rows == 10 and res.quarantine_reasons == {"invalid_encoding": 2}
    q = storage.read_parquet(settings, res.quarantine_key).to_pydict()
    assert q["raw"][0] == f"caf\ufffd,7,view,{T0}" and "--encoding" in q["detail"][0]
    # Told the encoding, every row lands, and the text is right (raw files are UTF-8).
    res = _land_ok(settings, path, "csv", column_map=cmap, encoding="latin-1", id_pattern=r"^[^,\s]{1,64}$")
    assert res.rows == 12 and res.quarantined == 0
    assert validate_partition(settings, D, report_id="latin").quarantined == 0
    assert preprocess_partition(settings, D).clean == 12
    clean = read_clean_events(settings, D, D)
    assert "café" in clean["user_id"].to_pylist() and "Crème" in clean["category_id"].to_pylist()
    with pytest.raises(SourceError, match=r"encoding 'latin-42' is not known"):
        land_events(settings, path, "csv", column_map=cmap, encoding="latin-42")


def test_placeholder_ids_are_not_users(settings, tmp_path: Path) -> None:
    rows = [f"u{u},i{u},7,view,{T0 + u}" for u in range(20)]
    rows += [f"{p},i1,7,view,{T0}" for p in ("NaN", "null", "None", "-", "N/A")] + [f"u1,i1,nan,view,{T0}"]
    cmap = {"user_id": "user", "item_id": "item", "category_id": "cat", "behavior": "event", "ts": "at"}
    _land_ok(settings, _write(tmp_path, "placeholders.csv", "user,item,cat,event,at\n" + "\n".join(rows) + "\n"),
             "csv", column_map=cmap)
    res = validate_partition(settings, D, report_id="placeholders")
    assert res.reasons == {"placeholder_id": 6}
    pre = preprocess_partition(settings, D)
    assert pre.clean == 20 and pre.rows_in == pre.clean + pre.quarantined + pre.duplicates_dropped


def test_float_parquet_ids_are_the_same_users_as_integers(settings, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "float_ids.parquet"
    pq.write_table(pa.table({"uid": pa.array([123.0, 123.0, 124.0, float("nan"), 2.5], pa.float64()),
                             "cat": pa.array([7.0, 8.0, 7.0, 7.0, 7.0]), "ev": ["view"] * 5,
                             "at": pa.array([T0 + i for i in range(5)], pa.int64())}), path)
    res = _land_ok(settings, path, "parquet",
                   column_map={"user_id": "uid", "category_id": "cat", "behavior": "ev", "ts": "at"})
    assert res.rows == 5
    val = validate_partition(settings, D, report_id="floats")
    assert val.reasons == {"placeholder_id": 1}  # NaN; 2.5 is an id of the generic pattern
    preprocess_partition(settings, D)
    clean = read_clean_events(settings, D, D)
    assert sorted(set(clean["user_id"].to_pylist())) == ["123", "124", "2.5"]
    assert set(clean["category_id"].to_pylist()) == {"7", "8"}


def test_list_columns_fail_clearly_when_mapped_and_travel_as_json_when_not(settings, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "lists.parquet"
    pq.write_table(pa.table({"uid": ["1", "2"], "cats": [[7, 8], [9]], "tags": [["a"], None], "ev": ["view"] * 2,
                             "at": [T0, 0]}), path)
    with pytest.raises(SourceError, match=r"column\(s\) \['cats \(list<element: int64>\)'\] hold lists"):
        land_events(settings, path, "parquet", column_map={"user_id": "uid", "category_id": "cats", "behavior": "ev",
                                                           "ts": "at"})
    path2 = tmp_path / "tags.parquet"
    pq.write_table(pa.table({"uid": ["1", "2"], "cat": ["7", "8"], "tags": [["a", "b"], None], "ev": ["view"] * 2,
                             "at": [T0, 0]}), path2)
    res = _land_ok(settings, path2, "parquet",
                   column_map={"user_id": "uid", "category_id": "cat", "behavior": "ev", "ts": "at"})
    assert res.rows == 1 and res.quarantine_reasons == {"implausible_timestamp": 1}
    assert storage.read_parquet(settings, res.quarantine_key)["raw"].to_pylist() == ["2,8,,view,0"]


@pytest.mark.parametrize(("unit", "scale"), [("unix_ms", 10**3), ("unix_us", 10**6), ("unix_ns", 10**9)])
def test_integer_timestamps_in_ms_us_ns_are_read_by_their_unit_and_named_when_not(
        settings, tmp_path: Path, unit: str, scale: int) -> None:
    path = _write(tmp_path, f"{unit}.csv", "".join(f"{u},1,7,pv,{(T0 + u) * scale + 7}\n" for u in range(50)))
    with pytest.raises(SourceError, match=rf"look like {unit} since 1970: land it with --ts-format {unit}"):
        land_events(settings, path, "taobao")  # read as seconds: far future, every row
    for fmt in (unit, "unix_auto"):
        res = _land_ok(settings, path, "taobao", ts_format=fmt, replace=True)
        assert res.rows == 50 and res.rows_by_date == {"2017-11-25": 50}
    val = validate_partition(settings, D, report_id=unit)
    assert val.quarantined == 0
    pre = preprocess_partition(settings, D)
    assert pre.clean == 50
    first = dt.datetime.fromtimestamp(T0, dt.UTC) + dt.timedelta(microseconds=7 * 10**6 // scale)  # ns: truncated
    assert min(read_clean_events(settings, D, D)["ts"].to_pylist()) == first


def test_an_unclosed_quote_sets_aside_its_line_not_the_rows_after_it(settings, tmp_path: Path, monkeypatch) -> None:
    # Arrow's parser reads on from an unclosed quote over the line ends to the end of the file: the 15
    # rows after it became one quarantined row and were missing from clean.
    rows = GOOD[:5] + ['21,"1021,7,pv,1511568000'] + GOOD[5:12] + ['22,1022,"7,pv,1511568000'] + GOOD[12:]
    res = _land_ok(settings, _write(tmp_path, "stray_quote.csv", "\n".join(rows) + "\n"))
    assert res.rows == 20 and res.quarantine_reasons == {"unclosed_quote": 2}
    q = storage.read_parquet(settings, res.quarantine_key).to_pydict()
    assert q["raw"] == ['21,"1021,7,pv,1511568000', '22,1022,"7,pv,1511568000']
    assert "no quote closes it" in q["detail"][0]
    # In a file of several read blocks Arrow's reader stops "out of sync with chunker": the error says why.
    from pipelines.data import routing

    monkeypatch.setattr(routing, "BATCH_BYTES", 1 << 14)
    big = _write(tmp_path, "big_quote.csv", "\n".join(GOOD * 200 + ['21,"1021,7,pv,1511568000'] + GOOD * 200) + "\n")
    with pytest.raises(SourceError, match=r'big_quote.csv: a quote \(\"\) opens a field that no quote closes, '
                                          r"somewhere after the first \d+ rows"):
        land_events(settings, big, "taobao", name="big")
    # A quote left open on the last line swallows nothing.
    res = _land_ok(settings, _write(tmp_path, "last_quote.csv", "\n".join([*GOOD, '23,"1023,7,pv,1']) + "\n"),
                   name="last")
    assert res.rows == 20 and res.quarantine_reasons == {"unclosed_quote": 1}


def test_a_quote_left_open_in_the_last_column_sets_aside_its_line_not_the_rows_after_it(settings,
                                                                                        tmp_path: Path) -> None:
    # In the last column the open quote swallowed the rest of the file into one field: the row kept its
    # column count, so it read as one row (quarantined, its timestamp unreadable) and the 15 rows after it
    # were missing from clean. (A second open quote further down would close the first: Arrow's reader
    # joins the lines between them into one field and drops both quotes, so that row lands.)
    rows = GOOD[:5] + ['21,1021,7,pv,"1511568000'] + GOOD[5:]
    res = _land_ok(settings, _write(tmp_path, "last_column.csv", "\n".join(rows) + "\n"))
    assert res.rows == 20 and res.quarantine_reasons == {"unclosed_quote": 1}
    q = storage.read_parquet(settings, res.quarantine_key).to_pydict()
    assert q["raw"] == ["21,1021,7,pv,1511568000"]  # (the quote itself is not kept)
    # A generic file: the same when the last column is the timestamp, which then does not read.
    header = "user,cat,event,at\n"
    generic = [f"u{u},7,view,{T0 + u}" for u in range(10)]
    text = header + "\n".join(generic[:3] + ['u99,7,view,"' + str(T0)] + generic[3:]) + "\n"
    res = _land_ok(settings, _write(tmp_path, "generic_last.csv", text), "csv", name="generic",
                   column_map={"user_id": "user", "category_id": "cat", "behavior": "event", "ts": "at"})
    assert res.rows == 10 and res.quarantine_reasons == {"unclosed_quote": 1}
    # A value quoted over two lines in a last column that reads is a value, not an open quote.
    text = "user,cat,event,at,note\n" + f'u1,7,view,{T0},"two\nlines"\n' + f"u2,7,view,{T0},plain\n"
    res = _land_ok(settings, _write(tmp_path, "note.csv", text), "csv", name="note",
                   column_map={"user_id": "user", "category_id": "cat", "behavior": "event", "ts": "at"})
    assert res.rows == 2 and not res.quarantine_reasons
    # A timestamp quoted and closed on the next line ("15116\n67930") is one row whose timestamp does
    # not read: it was cut at the line break and counted as two (an unclosed quote and a row of one
    # column), though its quote is closed.
    text = header + "\n".join(generic[:3] + ['u98,7,view,"15115\n68000"'] + generic[3:]) + "\n"
    res = _land_ok(settings, _write(tmp_path, "closed.csv", text), "csv", name="closed",
                   column_map={"user_id": "user", "category_id": "cat", "behavior": "event", "ts": "at"})
    assert res.rows == 10 and res.rows_read == 11 and res.quarantine_reasons == {"unparseable_timestamp": 1}
    assert storage.read_parquet(settings, res.quarantine_key)["raw"].to_pylist() == ["u98,7,view,15115\n68000"]


def test_landing_names_of_only_dots_are_refused_and_the_work_folder_stays(settings, tmp_path: Path) -> None:
    # '..' made the landing's scratch folder the work folder itself, and landing deleted it whole.
    import dataclasses

    work = tmp_path / "work"
    (work / "landing").mkdir(parents=True)
    (work / "keep.txt").write_text("mine")
    here = dataclasses.replace(settings, work_dir=work)
    path = _write(tmp_path, "n.csv", "\n".join(GOOD) + "\n")
    for name in ("..", ".", "..."):
        with pytest.raises(SourceError, match=r"landing name '\.+': .*not only dots"):
            land_events(here, path, "taobao", name=name)
    assert (work / "keep.txt").read_text() == "mine"
    assert _land_ok(here, path, name="a..b").rows == 20  # dots among other characters stay a name


def test_parquet_columns_sharing_a_name_are_a_named_error(settings, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_arrays([pa.array(["1"]), pa.array(["7"]), pa.array(["view"]), pa.array([T0]),
                                  pa.array(["x"])], names=["uid", "cat", "ev", "when", "uid"])
    path = tmp_path / "twice.parquet"
    pq.write_table(table, path)
    with pytest.raises(SourceError, match=r"twice.parquet: more than one column is named \['uid'\]"):
        land_events(settings, path, "parquet", column_map={"user_id": "uid", "category_id": "cat", "behavior": "ev",
                                                           "ts": "when"})


def test_parquet_bytes_that_are_not_utf8_are_set_aside_at_landing(settings, tmp_path: Path) -> None:
    # A mapped binary column landed whole; every validation of its day then failed on an Arrow cast.
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"uid": pa.array([b"1", b"2", b"\xff\xfe", b"4"], pa.binary()), "cat": ["7"] * 4,
                      "ev": ["view"] * 4, "when": [T0 + 60 * i for i in range(4)]})
    path = tmp_path / "bytes.parquet"
    pq.write_table(table, path)
    res = _land_ok(settings, path, "parquet", column_map={"user_id": "uid", "category_id": "cat", "behavior": "ev",
                                                          "ts": "when"})
    assert res.rows == 3 and res.quarantine_reasons == {"invalid_encoding": 1}
    q = storage.read_parquet(settings, res.quarantine_key).to_pydict()
    assert q["raw"][0].startswith("\ufffd\ufffd,7,view,") and "not UTF-8" in q["detail"][0]
    assert validate_partition(settings, D, report_id="bytes").valid_rows == 3
    preprocess_partition(settings, D)
    assert sorted(read_clean_events(settings, D, D)["user_id"].to_pylist()) == ["1", "2", "4"]


def test_a_line_longer_than_a_read_block_is_set_aside_not_the_file(settings, tmp_path: Path) -> None:
    from pipelines.data.sourcefile import LONG_LINE_BYTES

    blob = "9,9,7,pv," + "1" * (17 << 20)  # 17 MiB: longer than Arrow's 16 MiB read block
    path = _write(tmp_path, "long.csv", "\n".join(GOOD[:10] + [blob] + GOOD[10:]) + "\n")
    res = _land_ok(settings, path)
    assert res.rows == 20 and res.quarantine_reasons == {"line_too_long": 1}
    q = storage.read_parquet(settings, res.quarantine_key).to_pydict()
    assert q["line"] == [11] and q["raw"][0].startswith("9,9,7,pv,111") and len(q["raw"][0]) == 200
    assert f"> {LONG_LINE_BYTES}" in q["detail"][0]


def test_a_quoted_field_closed_and_continued_is_set_aside_not_changed(settings, tmp_path: Path) -> None:
    # '"ab"cd"' landed, validated and cleaned as the category 'abcd"' (Arrow's reader is lenient there),
    # though landing promises rows unchanged. Legal quoting ('"a""b"', a quoted delimiter, a value over
    # two lines, a bare quote inside a field) still lands as it was.
    columns = {"user_id": "user", "category_id": "cat", "behavior": "event", "ts": "at"}
    lines = ["user,cat,event,at", f'u1,"ab"cd",view,{T0}', f'u2,"a""b",view,{T0 + 1}', f'u3,"x,y",view,{T0 + 2}',
             f'u4,ab"cd,view,{T0 + 3}', f'u5,"two\nlines",view,{T0 + 4}', f'u6,c1,"view"x,{T0 + 5}',
             f"u7,c1,view,{T0 + 6}"]
    res = _land_ok(settings, _write(tmp_path, "quotes.csv", "\n".join(lines) + "\n"), "csv", name="quotes",
                   column_map=columns)
    assert res.rows_read == 7 and res.rows == 5 and res.quarantine_reasons == {"malformed_quote": 2}
    q = storage.read_parquet(settings, res.quarantine_key).to_pydict()
    assert q["line"] == [2, 8] and q["raw"] == [f'u1,"ab"cd",view,{T0}', f'u6,c1,"view"x,{T0 + 5}']
    assert q["detail"][0].startswith("a field opens with a quote, closes it and goes on")
    validate_partition(settings, D, report_id="quotes")
    preprocess_partition(settings, D)
    clean = read_clean_events(settings, D, D).to_pydict()
    # (an id holding a line break is then quarantined by validation as bad_id_format)
    assert sorted(clean["category_id"]) == sorted(["a\"b", "x,y", 'ab"cd', "c1"])


def test_a_category_level_log_without_item_ids_lands_and_cleans(settings, tmp_path: Path) -> None:
    text = "user,cat,event,at\n" + "".join(f"u{u % 7},{'' if u == 29 else f'c{u % 3}'},view,{T0 + u}\n"
                                           for u in range(30))
    res = _land_ok(settings, _write(tmp_path, "no_items.csv", text), "csv",
                   column_map={"user_id": "user", "category_id": "cat", "behavior": "event", "ts": "at"})
    assert res.rows == 30
    # the row without a category is missing its category, not an item the file never had
    assert validate_partition(settings, D, report_id="noitems").reasons == {"null_category_id": 1}
    pre = preprocess_partition(settings, D)
    clean = read_clean_events(settings, D, D)
    assert pre.clean == 29 and clean["item_id"].to_pylist() == clean["category_id"].to_pylist()


def test_category_names_and_email_user_ids_are_ids_in_a_generic_file(settings, tmp_path: Path) -> None:
    # The generic id pattern was ASCII letters, digits and _.:- only: every row of a file naming its
    # categories ("Home & Kitchen") was quarantined as bad_id_format.
    names = ["Home & Kitchen", "Électronique", "手机", "Cell Phones > Cases"]
    text = "user,cat,event,at\n" + "".join(f"user{u}@example.com,{names[u % 4]},view,{T0 + u}\n" for u in range(40))
    text += f"bad\x01id,Books,view,{T0 + 50}\n"  # a control character is still not an id
    res = _land_ok(settings, _write(tmp_path, "named.csv", text), "csv",
                   column_map={"user_id": "user", "category_id": "cat", "behavior": "event", "ts": "at"})
    assert res.rows == 41
    assert validate_partition(settings, D, report_id="names").reasons == {"bad_id_format": 1}
    preprocess_partition(settings, D)
    clean = read_clean_events(settings, D, D)
    assert sorted(set(clean["category_id"].to_pylist())) == sorted(names) and clean.num_rows == 40


def test_a_header_naming_a_column_twice_fails_clearly(settings, tmp_path: Path) -> None:
    path = _write(tmp_path, "twice.csv", "user,cat,cat,event,at\nu1,7,8,view,1511568000\n")
    with pytest.raises(SourceError, match=r"header names column\(s\) \['cat'\] more than once"):
        land_events(settings, path, "csv",
                    column_map={"user_id": "user", "category_id": "cat", "behavior": "event", "ts": "at"})


def test_unnamed_and_repeated_columns_no_map_reads_land(settings, tmp_path: Path) -> None:
    # A spreadsheet export's two empty trailing columns (and two 'notes') were refused as a name given
    # twice, although no map reads them.
    rows = "".join(f"u{u},7,view,{T0 + u},a,b,,\n" for u in range(20)) + f"u99,7,jump,{T0 + 99},a,b,,\n"
    path = _write(tmp_path, "export.csv", "user,cat,event,at,notes,notes,,\n" + rows)
    res = _land_ok(settings, path, "csv",
                   column_map={"user_id": "user", "category_id": "cat", "behavior": "event", "ts": "at"})
    assert res.rows == 21
    result = validate_partition(settings, D, report_id="unnamed")
    assert result.reasons == {"unknown_behavior": 1}
    preprocess_partition(settings, D)
    assert read_clean_events(settings, D, D).num_rows == 20


def test_cli_lands_another_encoding_and_timestamp_unit(settings, tmp_path: Path, cli_env, capsys) -> None:
    path = _write(tmp_path, "cp1252.csv", ("user,cat,event,at\n" + "".join(
        f"Jos\xe9{u},7,view,{(T0 + u) * 1000}\n" for u in range(5))).encode("cp1252"))
    assert main(["land", "--source", str(path), "--format", "csv", "--map", "user_id=user", "--map", "category_id=cat",
                 "--map", "behavior=event", "--map", "ts=at", "--ts-format", "unix_ms", "--encoding", "cp1252",
                 "--json"]) == 0
    assert '"rows": 5' in capsys.readouterr().out


def test_the_scan_finds_the_longest_line_across_chunks(tmp_path: Path, monkeypatch) -> None:
    from pipelines.data import sourcefile

    monkeypatch.setattr(sourcefile, "_SCAN_BYTES", 7)
    lines = [b"ab", b"x" * 23, b"", b"c" * 5, b"d" * 9]
    for name, data in (("plain.csv", b"\n".join(lines)), ("packed.csv.gz", gzip.compress(b"\n".join(lines) + b"\n"))):
        path = _write(tmp_path, name, data)
        assert sourcefile.scan_file(path) == sourcefile.Scan(has_quote=False, longest_line=23)


def test_another_delimiter_and_boolean_id_columns_fail_naming_the_fix(settings, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cmap = {"user_id": "uid", "category_id": "cat", "behavior": "ev", "ts": "at"}
    semi = _write(tmp_path, "semi.csv", "uid;cat;ev;at\n" + "".join(f"u{u};7;view;{T0 + u}\n" for u in range(5)))
    with pytest.raises(SourceError, match=r"looks semicolon-delimited: land it with --delimiter ';'"):
        land_events(settings, semi, "csv", column_map=cmap)
    assert _land_ok(settings, semi, "csv", column_map=cmap, delimiter=";").rows == 5
    flags = tmp_path / "flags.parquet"
    pq.write_table(pa.table({"uid": [True, False], "cat": ["x", "y"], "ev": ["view"] * 2, "at": [T0, T0 + 1]}), flags)
    with pytest.raises(SourceError, match=r"id column\(s\) \['user_id -> uid'\] hold true/false values"):
        land_events(settings, flags, "parquet", column_map=cmap)


def test_a_field_mapped_twice_on_the_command_line_fails_naming_both(settings, tmp_path: Path, cli_env,
                                                                   capsys) -> None:
    # `--map user_id=uid --map user_id=cat`: the second silently won, and every category became a user.
    path = _write(tmp_path, "twice.csv", "uid,cat,at\n" + "".join(f"u{u},c{u % 3},{T0 + u}\n" for u in range(5)))
    assert main(["land", "--source", str(path), "--format", "csv", "--map", "user_id=uid", "--map", "user_id=cat",
                 "--map", "category_id=cat", "--map", "ts=at", "--behavior-constant", "view"]) == 1
    assert "--map gives 'user_id' twice ('uid' and 'cat'): give each once" in capsys.readouterr().err
    assert storage.list_keys(settings, "raw/") == []


def test_a_headerless_file_with_another_delimiter_names_it(settings, tmp_path: Path, cli_env, capsys) -> None:
    # A tab-separated Taobao export was refused as "first row has 1 columns", with no word on why.
    path = _write(tmp_path, "tabbed.csv", "\n".join(g.replace(",", "\t") for g in GOOD) + "\n")
    with pytest.raises(SourceError, match=r"first row has 1 columns, expected 5 .*the rows look tab-delimited: "
                                          r"land it with --delimiter '\\t'"):
        land_events(settings, path, "taobao")
    assert main(["land", "--source", str(path), "--format", "taobao", "--delimiter", "tab"]) == 0
    assert "landed 20 of 20 rows" in capsys.readouterr().out


@pytest.mark.parametrize("written", ["\\t", "tab", "TAB"])
def test_a_tab_delimiter_can_be_typed_as_backslash_t_or_tab(settings, tmp_path: Path, cli_env, capsys,
                                                           written: str) -> None:
    # `--delimiter '\t'` reached the product as two characters and was refused as not one character.
    path = _write(tmp_path, "events.tsv", "user\tcat\tevent\tat\n" + "".join(f"u{u}\tc1\tview\t{T0 + u}\n"
                                                                          for u in range(5)))
    assert main(["land", "--source", str(path), "--format", "csv", "--map", "user_id=user", "--map", "category_id=cat",
                 "--map", "behavior=event", "--map", "ts=at", "--delimiter", written, "--json"]) == 0
    assert '"rows": 5' in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_iso_dates_read_as_unix_seconds_name_the_ts_format(settings, tmp_path: Path, fmt: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cmap = {"user_id": "user", "category_id": "cat", "behavior": "event", "ts": "at"}
    stamps = [f"2017-11-25T10:00:{u:02d}" for u in range(20)]
    if fmt == "csv":
        path = _write(tmp_path, "iso.csv", "user,cat,event,at\n" + "".join(f"u{u},c1,view,{s}\n"
                                                                         for u, s in enumerate(stamps)))
    else:
        path = tmp_path / "iso.parquet"
        pq.write_table(pa.table({"user": [f"u{u}" for u in range(20)], "cat": ["c1"] * 20, "event": ["view"] * 20,
                                 "at": stamps}), path)
    with pytest.raises(SourceError, match=r"unparseable_timestamp \(20\)\); the timestamps look like ISO 8601 dates: "
                                          r"land it with --ts-format iso"):
        land_events(settings, path, fmt, column_map=cmap)
    assert _land_ok(settings, path, fmt, column_map=cmap, ts_format="iso").rows == 20


def test_unix_times_read_as_iso_name_the_unit(settings, tmp_path: Path) -> None:
    # The other way round: `--ts-format iso` on Unix milliseconds quarantined every row without a word on why.
    cmap = {"user_id": "user", "category_id": "cat", "behavior": "event", "ts": "at"}
    path = _write(tmp_path, "ms.csv", "user,cat,event,at\n" + "".join(f"u{u},c1,view,{(T0 + u) * 1000}\n"
                                                                     for u in range(20)))
    with pytest.raises(SourceError, match=r"unparseable_timestamp \(20\)\); the timestamps look like Unix times "
                                          r"\(unix_ms\), not ISO 8601 dates: land it with --ts-format unix_ms"):
        land_events(settings, path, "csv", column_map=cmap, ts_format="iso")
    assert _land_ok(settings, path, "csv", column_map=cmap, ts_format="unix_ms").rows == 20


def test_a_folder_given_as_the_source_is_named_as_a_folder(settings, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"is a folder; land one file at a time"):
        land_events(settings, tmp_path, "taobao")


@pytest.mark.parametrize(("name", "head", "message"), [
    ("book.csv", b"PK\x03\x04\x14\x00\x06\x00", r"starts like a ZIP archive \(an Excel .xlsx workbook.*export or unpack"),
    ("old.csv", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", r"starts like an old Excel .xls workbook"),
    ("events.csv", b"PAR1\x15\x04\x15", r"starts like a Parquet file; land it with --format parquet"),
    ("events.csv.gz", b"PK\x03\x04", r"starts like a ZIP archive"),  # compressed: read after decompression
])
def test_binary_files_given_as_csv_name_what_they_are(settings, tmp_path: Path, name: str, head: bytes,
                                                      message: str) -> None:
    # They were read as text: "missing column(s) [...] in header ['PK\x03\x04...']".
    content = head + bytes(range(256)) * 4
    path = _write(tmp_path, name, gzip.compress(content) if name.endswith(".gz") else content)
    with pytest.raises(SourceError, match=message):
        land_events(settings, path, "csv", column_map={"user_id": "u", "category_id": "c", "behavior": "b", "ts": "t"})


def test_a_csv_file_given_as_parquet_is_named_as_text(settings, tmp_path: Path) -> None:
    path = _write(tmp_path, "events.csv", "user,cat,event,at\n" + "".join(GOOD) + "\n")
    with pytest.raises(SourceError, match=r"unreadable Parquet file.*starts with lines of text: is it a CSV file\? "
                                          r"\(--format csv\)"):
        land_events(settings, path, "parquet", column_map={"user_id": "user", "category_id": "cat",
                                                           "behavior": "event", "ts": "at"})


def test_the_cli_summary_lines_name_the_reasons_without_stray_blanks(settings, tmp_path: Path, cli_env,
                                                                     capsys) -> None:
    # They read "quarantined 0 " and "0 quarantined , 0 duplicates" when nothing was quarantined.
    path = _write(tmp_path, "events.csv", "\n".join([*GOOD, f"1,2,7,pv,{T0 * 1000}"]) + "\n")
    assert main(["land", "--source", str(path), "--format", "taobao"]) == 0
    assert capsys.readouterr().out.rstrip("\n").endswith("quarantined 1 (implausible_timestamp: 1)")
    assert main(["validate", "--date", "2017-11-25"]) == 0
    assert "dt=2017-11-25: 20 rows, 0 quarantined, 0 duplicates" in capsys.readouterr().out
    assert main(["preprocess", "--date", "2017-11-25"]) == 0
    assert "dt=2017-11-25: 20 in = 20 clean + 0 quarantined + 0 duplicates\n" in capsys.readouterr().out


def test_names_that_become_key_segments_and_unknown_runs_are_one_line_errors(settings, tmp_path: Path, cli_env,
                                                                             capsys) -> None:
    # '../../raw' as a run id and a report id went into S3 keys (botocore's InvalidRequest traceback after the
    # work was done); an unknown run id gave MLflow's 403 traceback, encode after uploading the dataset.
    from pipelines.ops.inbox import batch_id

    window = ["--start", "2017-11-25", "--end", "2017-11-26"]
    for run_id, message in (("../../raw", "is not an MLflow run id"), ("0123456789abcdef", "cannot be read")):
        assert main(["encode", *window, "--mlflow-run-id", run_id]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert storage.list_keys(settings, "features/") == []
    assert main(["register", "--mlflow-run-id", "0123456789abcdef", "--model-uri", "runs:/0123456789abcdef/model",
                 "--dataset-uri", f"s3://{settings.bucket}/features/x/"]) == 1
    err = capsys.readouterr().err
    assert "0123456789abcdef" in err and len(err.strip().splitlines()) == 1
    # train and evaluate check the run before the work (train ran every epoch, then failed on MLflow's 403).
    for step in (["train"], ["evaluate", "--model-uri", "models:/interest_migration/1"]):
        assert main([*step, "--mlflow-run-id", "0123456789abcdef", "--dataset-uri",
                     f"s3://{settings.bucket}/features/x/"]) == 1
        err = capsys.readouterr().err
        assert "MLflow run '0123456789abcdef' cannot be read" in err and len(err.strip().splitlines()) == 1
    assert main(["validate", "--date", "2017-11-25", "--report-id", "../../clean/events"]) == 2
    assert "--report-id '../../clean/events'" in capsys.readouterr().err
    assert [batch_id(b) for b in ("..", ".", "a.b", "run:1+2")] == ["__", "_", "a.b", "run_1_2"]


def test_with_json_stdout_holds_the_document_alone(monkeypatch, capsys) -> None:
    # MLflow writes "View run ... at: URL" to stdout when a run ends: `training --json` printed two
    # such lines before its document, and json.load of stdout failed.
    import json
    import sys

    from pipelines.flows import training as flows

    def run_training(settings, **kwargs):
        sys.stdout.write("🏃 View run cli-x at: http://127.0.0.1:5000/#/experiments/1/runs/abc\n")
        return {"register": {"model_name": "m", "model_version": "1", "decision": "promoted", "reason": "beat all"}}

    monkeypatch.setattr(flows, "run_training", run_training)
    assert main(["training", "--start", "2017-11-25", "--end", "2017-11-27", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["register"]["decision"] == "promoted"
    assert "View run cli-x" in err
    assert main(["training", "--start", "2017-11-25", "--end", "2017-11-27"]) == 0  # without --json: as before
    assert "View run cli-x" in capsys.readouterr().out


def test_validate_says_how_many_rows_its_failed_days_held(settings, tmp_path: Path, cli_env, capsys) -> None:
    # Every day failed the bad-row share, and the summary read "validated 0/1 partitions: 0 rows".
    rows = [f"{u},{100 + u},7,pv,{T0 + u}" for u in range(1, 101)] + [f"{u},6,7,like,{T0 + u}" for u in range(200)]
    land_events(settings, _write(tmp_path, "likes.csv", "\n".join(rows) + "\n"), "taobao")
    assert main(["validate", "--date", D.isoformat()]) == 1
    out, err = capsys.readouterr()
    assert "validated 0/1 partitions: 0 rows, 0 quarantined; 1 failed (300 rows there, not handed over)" in out
    assert "(most: unknown_behavior 200)" in err
    # With --json the failed day's counts are there too (they were left out: rows could not be reconciled).
    assert main(["validate", "--date", D.isoformat(), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["partitions"] == [] and doc["totals"]["failed_rows"] == 300
    (day,) = doc["failed_partitions"]
    assert (day["rows"], day["valid_rows"], day["quarantined"]) == (300, 100, 200)
    assert doc["totals"]["failed_quarantined"] == 200


def test_damaged_packed_and_utf16_files_are_named_with_what_to_do(settings, tmp_path: Path) -> None:
    import gzip

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"user_id": "user", "category_id": "cat", "behavior": "event", "ts": "at"}
    table = pa.table({"user": [str(i % 50) for i in range(20000)], "cat": ["7"] * 20000, "event": ["view"] * 20000,
                      "at": [str(T0 + i) for i in range(20000)]})
    good = tmp_path / "good.parquet"
    pq.write_table(table, good, compression="snappy")
    # Bytes inside a column chunk overwritten: the footer reads, a page does not. The error was
    # "land failed: Corrupt snappy compressed data." without the file.
    damaged = bytearray(good.read_bytes())
    damaged[60:400] = np.random.default_rng(1).integers(0, 256, 340, dtype=np.uint8).tobytes()
    path = _write(tmp_path, "damaged.parquet", bytes(damaged))
    with pytest.raises(SourceError, match=r"damaged.parquet: unreadable Parquet file: the data after its first 0 "
                                          r"rows does not decode \(.*\): the file is damaged; export it again"):
        land_events(settings, path, "parquet", column_map=columns, ts_format="unix_s")
    # A gzip-compressed Parquet file: the csv adapter said "land it with --format parquet", which then
    # said "magic bytes not found".
    packed = _write(tmp_path, "events.parquet.gz", gzip.compress(good.read_bytes()))
    for fmt in ("csv", "parquet"):
        with pytest.raises(SourceError, match=r"gzip-compressed.*decompress it \(Parquet compresses inside the file\)"):
            land_events(settings, packed, fmt, column_map=columns, ts_format="unix_s")
    # UTF-16 without a byte-order mark: the error listed the header as 'u\x00s\x00e\x00r...'.
    text = "user,cat,event,at\n" + "".join(f"{line}\n" for line in ["1,7,view,1511568000", "2,7,buy,1511568060"])
    path = _write(tmp_path, "utf16.csv", text.encode("utf-16-le"))
    with pytest.raises(SourceError, match=r"the file is UTF-16 without a byte-order mark, not utf-8; land it with "
                                          r"--encoding utf-16-le"):
        land_events(settings, path, "csv", column_map=columns)
    result = land_events(settings, path, "csv", column_map=columns, encoding="utf-16-le")
    assert result.rows == 2 and result.quarantined == 0


def test_a_header_followed_by_lines_of_blanks_says_it_holds_no_data_rows(settings, tmp_path: Path) -> None:
    # It read "most rows have 1 columns, expected 4 (a delimiter at the end of every row, or another
    # --delimiter?)", pointing at the delimiter.
    path = _write(tmp_path, "blanks.csv", "user,cat,event,at\n   \n\t\n")
    with pytest.raises(SourceError, match=r"every one of its 2 rows was quarantined \(wrong_column_count \(2\)\); "
                                          r"they are lines of blanks only \(spaces or tabs\): the file holds no data "
                                          r"rows after its header; nothing landed"):
        land_events(settings, path, "csv", column_map={"user_id": "user", "category_id": "cat", "behavior": "event",
                                                       "ts": "at"})
