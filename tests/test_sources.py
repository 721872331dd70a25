"""Source formats and landing: timestamp parsing, spec building, landing into raw/events/dt=D/ on real S3,
and reading the landed files back."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data import formats, raw, validation
from pipelines.data.canonical import canonicalize, parse_ts
from pipelines.data.formats import SourceError, build_spec
from pipelines.data.landing import land_events
from pipelines.platform import storage

D1 = 1511568000  # 2017-11-25 00:00 UTC


def _raw_text(settings, key: str) -> str:
    """A landed CSV raw file's text (stored zstd-compressed)."""
    return raw.unpack_raw(key, storage.get_bytes(settings, key)).decode()


def test_parse_ts_unix_and_iso_with_mixed_offsets() -> None:
    s = parse_ts(pa.array(["1511568000", " 1511568001 ", "abc", "", "-5"]), "unix_s")
    assert s.to_pylist() == [D1 * 10**6, (D1 + 1) * 10**6, None, None, -5 * 10**6]
    ms = parse_ts(pa.array(["1511568000123"]), "unix_ms")
    assert ms.to_pylist() == [D1 * 10**6 + 123_000]
    iso = parse_ts(pa.array(["2017-11-25T08:00:00+08:00", "2017-11-25T00:00:00Z", "2017-11-25 00:00:00",
                             "not a time"]), "iso")
    assert iso.to_pylist() == [D1 * 10**6, D1 * 10**6, D1 * 10**6, None]
    shanghai = parse_ts(pa.array(["2017-11-25 08:00:00"]), "iso", "Asia/Shanghai")
    assert shanghai.to_pylist() == [D1 * 10**6]


def test_parse_ts_reads_fractional_unix_times() -> None:
    # They were all unparseable_timestamp: a file exported with float seconds landed nothing.
    # Scientific notation stays unparseable (1.511568e+09 has lost 100 s of digits).
    s = parse_ts(pa.array(["1511568000", "1511568000.5", " 1511568001.25 ", "-1.5", "1511568000.", "1.5.0",
                           "1.511568e+09", "9" * 19 + ".5"]), "unix_s")
    assert s.to_pylist() == [D1 * 10**6, D1 * 10**6 + 500_000, (D1 + 1) * 10**6 + 250_000, -1_500_000, D1 * 10**6,
                             None, None, 2**63 - 1]  # the last: far future, quarantined as implausible
    assert parse_ts(pa.array(["1511568000123.5"]), "unix_ms").to_pylist() == [D1 * 10**6 + 123_500]
    assert parse_ts(pa.array(["1511568000123.5", "1511568000.5"]), "unix_auto").to_pylist() == [
        D1 * 10**6 + 123_500, D1 * 10**6 + 500_000]


def test_parse_ts_reads_arrow_dates_as_their_midnight() -> None:
    day = dt.date(2017, 11, 25)
    for kind in (pa.date32(), pa.date64()):  # Arrow could not cast a date to int64: the landing crashed
        assert parse_ts(pa.array([day, None], kind), "unix_s").to_pylist() == [D1 * 10**6, None]
    midnight_berlin = parse_ts(pa.array([day], pa.date32()), "unix_s", "Europe/Berlin")
    assert midnight_berlin.to_pylist() == [(D1 - 3600) * 10**6]


def test_build_spec_explains_bad_maps() -> None:
    with pytest.raises(SourceError, match="needs a column map"):
        build_spec("csv")
    with pytest.raises(SourceError, match=r"no source column for canonical field\(s\) \['ts'\]"):
        build_spec("csv", {"user_id": "u", "item_id": "i", "category_id": "c", "behavior": "b"})
    with pytest.raises(SourceError, match="not canonical behaviours"):
        build_spec("csv", {"user_id": "u", "item_id": "i", "category_id": "c", "behavior": "b", "ts": "t"},
                   {"click": "klick"})
    with pytest.raises(SourceError, match="unknown format"):
        build_spec("xml")
    # A behaviour column and a constant: the constant silently replaced every row's behaviour.
    with pytest.raises(SourceError, match=r"both a behaviour column \(behavior -> 'b'\) and a behaviour constant "
                                          r"\('view'\) are given: keep one of them"):
        build_spec("csv", {"user_id": "u", "category_id": "c", "behavior": "b", "ts": "t"}, behavior_constant="view")
    with pytest.raises(SourceError, match=r"behaviour constant 'click' is not a canonical behaviour"):
        build_spec("csv", {"user_id": "u", "category_id": "c", "ts": "t"}, behavior_constant="click")
    # Each of these was accepted and failed later (an Arrow error, every value quarantined) or crashed.
    cmap = {"user_id": "u", "category_id": "c", "behavior": "b", "ts": "t"}
    for options, message in (({"value_range": "1-5"}, r"value_range '1-5': expected \[low, high\]"),
                             ({"value_range": "15"}, r"value_range '15': expected"),
                             ({"value_range": [5, 1]}, r"low 5 is above high 1"),
                             ({"timezone": "Mars/Base"}, r"timezone 'Mars/Base' is not a known time zone"),
                             ({"delimiter": "::"}, r"delimiter '::': expected one character"),
                             ({"has_header": "no"}, r"has_header 'no': expected true or false")):
        with pytest.raises(SourceError, match=message):
            build_spec("csv", cmap, **options)
    assert build_spec("csv", cmap, value_range=[1, 5], timezone="Europe/Berlin", delimiter="\t").value_range == (1, 5)


def test_a_column_map_file_with_an_unknown_key_names_it(tmp_path: Path) -> None:
    # A misspelt key ('column_map' for 'columns') replaced the columns and gave "needs a column map".
    path = tmp_path / "map.yaml"
    path.write_text("columns: {user_id: u, category_id: c, behavior: b, ts: t}\ncolumn_map: {}\ntimezone: UTC\n")
    with pytest.raises(SourceError, match=r"map.yaml: unknown key\(s\) \['column_map'\]; known: \['columns'"):
        formats.read_column_map_file(path)


def test_iso_offsets_of_whole_hours_are_honoured_next_to_other_rows() -> None:
    # "+08" / "-03" missed the offset pattern: mixed with other rows, pandas raised "Mixed timezones detected".
    out = parse_ts(pa.array(["2017-11-25T10:00:00+08", "2017-11-25T23:00:00-03", "2017-11-25T08:00:00",
                             "2017-11-25", "2017-11-25 10:00:00.5+0800"]), "iso", "Asia/Shanghai")
    h = 3600 * 10**6
    assert out.to_pylist() == [D1 * 10**6 + 2 * h, D1 * 10**6 + 26 * h, D1 * 10**6, D1 * 10**6 - 8 * h,
                               D1 * 10**6 + 2 * h + 500_000]


def test_local_times_at_a_clock_change_read_the_same_in_csv_and_parquet() -> None:
    # A time skipped when summer time starts, and one that occurs twice when it ends. The text was
    # quarantined as unparseable; a naive Parquet timestamp landed the gap at 00:59:59.999999 UTC.
    texts = ["2017-03-26 02:30:00", "2017-10-29 02:30:00", "2017-06-01 12:00:00"]
    naive = pa.array([dt.datetime.fromisoformat(t) for t in texts], pa.timestamp("us"))
    want = [dt.datetime(2017, 3, 26, 1, 0, tzinfo=dt.UTC), dt.datetime(2017, 10, 29, 0, 30, tzinfo=dt.UTC),
            dt.datetime(2017, 6, 1, 10, 0, tzinfo=dt.UTC)]
    for values in (pa.array(texts), naive):
        got = parse_ts(values, "iso", "Europe/Berlin").to_pylist()
        assert [dt.datetime.fromtimestamp(v / 1e6, dt.UTC) for v in got] == want


def test_a_number_too_large_for_a_float_is_no_value() -> None:
    spec = build_spec("csv", {"user_id": "u", "category_id": "c", "behavior": "b", "ts": "t", "value": "v"})
    source = pa.table({"u": ["1", "2", "3"], "c": ["5"] * 3, "b": ["view"] * 3, "t": [str(D1)] * 3,
                       "v": ["4.5", "1e400", "-1e999"]})
    canon = canonicalize(source, spec)
    assert canon["value"].to_pylist() == [4.5, None, None]  # inf before: it reached clean
    assert canon["value_raw"].to_pylist() == ["4.5", "1e400", "-1e999"]


def test_decimal_ids_read_as_the_number_not_its_fixed_point_text() -> None:
    # A Parquet decimal(10,2) id column read '10.00' for user 10: a second user next to the CSV's '10'.
    import decimal

    spec = build_spec("parquet", {"user_id": "u", "item_id": "i", "category_id": "c", "behavior": "b", "ts": "t"},
                      ts_format="unix_s")
    dec = [decimal.Decimal(v) for v in ("10.00", "10.50", "-3.10", "7.00")]
    source = pa.table({"u": pa.array(dec, pa.decimal128(10, 2)), "i": pa.array(dec, pa.decimal128(10, 2)),
                       "c": pa.array([decimal.Decimal(7)] * 4, pa.decimal128(5, 0)), "b": ["view"] * 4,
                       "t": [D1] * 4})
    canon = canonicalize(source, spec)
    assert canon["user_id"].to_pylist() == ["10", "10.5", "-3.1", "7"]
    assert canon["item_id"].to_pylist() == ["10", "10.5", "-3.1", "7"]
    assert canon["category_id"].to_pylist() == ["7"] * 4


def test_a_behaviour_map_adds_to_the_codes_the_format_and_canonical_names_give() -> None:
    # --behavior-map clk=view on a Taobao file replaced pv/cart/fav/buy: every pv row became unknown_behavior.
    spec = build_spec("taobao", behavior_map={"clk": "view"})
    source = pa.table({c: pa.array(v) for c, v in zip(formats.TAOBAO_COLUMNS, [
        ["1", "2", "3"], ["10", "11", "12"], ["5", "5", "5"], ["pv", "clk", "like"],
        [str(D1)] * 3], strict=True)})
    assert canonicalize(source, spec)["behavior"].to_pylist() == ["view", "view", None]
    # A generic file mapping only its own codes keeps the canonical ones; the map may still override one.
    cmap = {"user_id": "u", "category_id": "c", "behavior": "b", "ts": "t"}
    source = pa.table({"u": ["1", "2", "3", "4"], "c": ["5"] * 4, "b": ["click", "buy", "cart", "like"],
                       "t": [str(D1)] * 4})
    spec = build_spec("csv", cmap, {"click": "view", "cart": "fav"})
    assert canonicalize(source, spec)["behavior"].to_pylist() == ["view", "buy", "fav", None]


@pytest.mark.parametrize(("text", "message"), [
    (b"columns: {user_id: u, category_id: c, behavior: b, ts: t}\nbehavior_map: {yes: buy, on: cart}\n",
     r"behavior_map code\(s\) \[True\] are not text .*quote them"),
    (b"columns: {user_id: u, category_id: c, behavior: b, ts: t}\nbehavior_map: {010: fav}\n",
     r"behavior_map code\(s\) \[8\] are not text"),
    (b"columns: {user_id: u, category_id: c, behavior: b, ts: t}\nsource_columns: abcd\n",
     r"source_columns must be a list of column names, got 'abcd'"),
    (b"\xff\xfecolumns: {}\n", r"map.yaml: not UTF-8 text \(byte 0\); save it as UTF-8"),
])
def test_odd_column_map_files_are_named_errors(tmp_path: Path, text: bytes, message: str) -> None:
    path = tmp_path / "map.yaml"
    path.write_bytes(text)
    with pytest.raises(SourceError, match=message):
        formats.read_column_map_file(path)


def test_a_column_map_file_with_a_utf8_byte_order_mark_reads(tmp_path: Path) -> None:
    # Windows Notepad saves UTF-8 with a byte-order mark: json refused it ("Unexpected UTF-8 BOM").
    for name, text in (("map.json", '{"columns": {"user_id": "u", "category_id": "c", "behavior": "b", "ts": "t"}}'),
                       ("map.yaml", "columns: {user_id: u, category_id: c, behavior: b, ts: t}\n")):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert formats.read_column_map_file(path)["column_map"]["user_id"] == "u"


def test_the_documented_column_map_file_with_its_empty_keys_reads(tmp_path: Path) -> None:
    # docs/data.md shows `source_columns:` with no value: it raised TypeError ('NoneType' is not iterable).
    path = tmp_path / "map.yaml"
    path.write_text("columns: {user_id: u, category_id: c, behavior: b, ts: t}\nbehavior_map:\nsource_columns:\n")
    spec = build_spec("csv", **{k: v for k, v in formats.read_column_map_file(path).items() if k != "column_map"},
                      column_map=formats.read_column_map_file(path)["column_map"])
    assert spec.columns is None and spec.behavior_map == {}
    for pattern in (123, None):
        with pytest.raises(SourceError, match=r"id_pattern .*: expected a regular expression as text"):
            build_spec("csv", {"user_id": "u", "category_id": "c", "behavior": "b", "ts": "t"}, id_pattern=pattern)


def test_canonicalize_taobao_maps_behaviours() -> None:
    source = pa.table({c: pa.array(v) for c, v in zip(formats.TAOBAO_COLUMNS, [
        ["1", "2"], ["10", "11"], ["5", "5"], ["pv", "like"], [str(D1), str(D1 + 60)]], strict=True)})
    canon = canonicalize(source, formats.TAOBAO_SPEC)
    assert canon["behavior"].to_pylist() == ["view", None]
    assert canon["behavior_raw"].to_pylist() == ["pv", "like"]
    assert canon["value"].null_count == 2


def test_behaviour_codes_match_regardless_of_case_and_blanks() -> None:
    # An export with upper-case codes ("PV") had every row quarantined as unknown_behavior.
    source = pa.table({c: pa.array(v) for c, v in zip(formats.TAOBAO_COLUMNS, [
        ["1", "2", "3"], ["10", "11", "12"], ["5", "5", "5"], ["PV", " Buy ", "LIKE"],
        [str(D1), str(D1 + 60), str(D1 + 90)]], strict=True)})
    canon = canonicalize(source, formats.TAOBAO_SPEC)
    assert canon["behavior"].to_pylist() == ["view", "buy", None]
    assert canon["behavior_raw"].to_pylist() == ["PV", "Buy", "LIKE"]  # fields are trimmed on reading


@pytest.mark.services
def test_land_taobao_splits_by_utc_date_and_replaces(settings, tmp_path: Path) -> None:
    lines = [f"1,100,7,pv,{D1 + 3600}", f"1,101,7,buy,{D1 + 86400 + 5}", f"2,100,7,cart,{D1 - 10}",
             "3,100,7,pv,0", "3,100,7,pv,notatime", "4,100,7"]
    src = tmp_path / "UserBehavior_small.csv.gz"
    src.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    result = land_events(settings, src, "taobao")
    assert result.name == "UserBehavior_small"
    assert result.rows_read == 6 and result.rows == 3 and result.quarantined == 3
    assert result.quarantine_reasons == {"implausible_timestamp": 1, "unparseable_timestamp": 1,
                                         "wrong_column_count": 1}
    assert result.dates == [dt.date(2017, 11, 24), dt.date(2017, 11, 25), dt.date(2017, 11, 26)]
    # Raw rows unchanged, in their UTC date partition, with a sidecar saying how to read them.
    body = _raw_text(settings, "raw/events/dt=2017-11-25/UserBehavior_small.csv.zst")
    assert body.splitlines() == [f"1,100,7,pv,{D1 + 3600}"]
    meta = storage.get_json(settings, "raw/events/dt=2017-11-25/UserBehavior_small.meta.json")
    assert meta["format"] == "taobao" and meta["rows"] == 1
    unplaced = storage.read_parquet(settings, result.quarantine_key).to_pydict()
    assert sorted(unplaced["reason"]) == ["implausible_timestamp", "unparseable_timestamp", "wrong_column_count"]
    assert sorted(unplaced) == ["detail", "line", "raw", "reason", "source"]
    assert "4,100,7" in unplaced["raw"]
    assert storage.get_json(settings, "reports/landing/UserBehavior_small.json")["rows"] == 3

    # Landing again under the same name replaces every partition it touched (no duplicates).
    src2 = tmp_path / "UserBehavior_small.csv"
    src2.write_text(f"9,100,7,pv,{D1 + 7200}\n")
    again = land_events(settings, src2, "taobao", name="UserBehavior_small")
    assert again.rows == 1 and again.quarantine_key is None
    assert storage.list_keys(settings, "raw/events/dt=2017-11-26/") == []
    assert not storage.exists(settings, result.quarantine_key)
    body = _raw_text(settings, "raw/events/dt=2017-11-25/UserBehavior_small.csv.zst")
    assert body.splitlines() == [f"9,100,7,pv,{D1 + 7200}"]


@pytest.mark.services
def test_landing_again_replaces_a_plain_csv_landed_before_zstd(settings, tmp_path: Path) -> None:
    # Raw CSV was stored plain before it was stored zstd-compressed: landing the name again must not
    # leave the old plain file beside the new one (its rows would count twice).
    day = dt.date(2017, 11, 25)
    storage.put_bytes(settings, f"raw/events/dt={day}/shop.csv", f"1,100,7,pv,{D1 + 10}\n".encode())
    storage.put_json(settings, f"raw/events/dt={day}/shop.meta.json", {"name": "shop", "rows": 1})
    src = tmp_path / "shop.csv"
    src.write_text(f"2,100,7,pv,{D1 + 20}\n")
    land_events(settings, src, "taobao", name="shop")
    assert storage.list_keys(settings, f"raw/events/dt={day}/") == [f"raw/events/dt={day}/shop.csv.zst",
                                                                    f"raw/events/dt={day}/shop.meta.json"]
    assert _raw_text(settings, f"raw/events/dt={day}/shop.csv.zst") == f"2,100,7,pv,{D1 + 20}\n"


@pytest.mark.services
def test_a_different_file_under_the_same_default_name_is_refused_unless_replace(settings, tmp_path: Path) -> None:
    # Daily drops all called export.csv: the second must not silently wipe the first one's rows.
    (tmp_path / "monday").mkdir()
    (tmp_path / "tuesday").mkdir()
    monday, tuesday = tmp_path / "monday" / "export.csv", tmp_path / "tuesday" / "export.csv"
    monday.write_text(f"1,100,7,pv,{D1 + 10}\n")
    tuesday.write_text(f"2,100,7,pv,{D1 + 86400 + 10}\n")
    first = land_events(settings, monday, "taobao")
    with pytest.raises(SourceError, match="--replace"):
        land_events(settings, tuesday, "taobao")
    assert _raw_text(settings, "raw/events/dt=2017-11-25/export.csv.zst") == f"1,100,7,pv,{D1 + 10}\n"
    assert storage.list_keys(settings, "raw/events/dt=2017-11-26/") == []
    # The same bytes again (a retried landing) are not a replace; --replace replaces.
    assert land_events(settings, monday, "taobao").rows == first.rows == 1
    replaced = land_events(settings, tuesday, "taobao", replace=True)
    assert replaced.dates == [dt.date(2017, 11, 26)]
    assert storage.list_keys(settings, "raw/events/dt=2017-11-25/") == []
    assert storage.list_keys(settings, "staging/landing/") == []


@pytest.mark.services
def test_a_landing_that_dies_midway_leaves_the_earlier_landing_whole(settings, tmp_path: Path, monkeypatch) -> None:
    # The storage stays real; only a crash (the process dying after its first upload) is injected.
    from pipelines.data import landing

    old = tmp_path / "old.csv"
    old.write_text(f"1,100,7,pv,{D1 + 10}\n2,100,7,pv,{D1 + 86400 + 10}\n")
    land_events(settings, old, "taobao", name="daily")
    before = {k: storage.get_bytes(settings, k) for k in storage.list_keys(settings, "raw/events/")}
    assert len(before) == 4
    new = tmp_path / "new.csv"
    new.write_text("".join(f"{u},100,7,pv,{D1 + 86400 * d + 10}\n" for u in (3, 4) for d in (1, 2, 3)))
    real_put, calls = storage.put_bytes, []

    def dies_after_one(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 1:
            raise SystemExit("killed")
        return real_put(*args, **kwargs)

    monkeypatch.setattr(landing.storage, "put_bytes", dies_after_one)
    with pytest.raises(SystemExit):
        land_events(settings, new, "taobao", name="daily")
    monkeypatch.undo()
    assert {k: storage.get_bytes(settings, k) for k in storage.list_keys(settings, "raw/events/")} == before
    assert len(storage.list_keys(settings, "staging/landing/")) == 1  # what the dead landing staged
    # The retry completes and removes the earlier day the new file does not cover, and the dead
    # landing's staged files once they are old enough (here: any age).
    monkeypatch.setattr(landing, "ABANDONED_AFTER", dt.timedelta(0))
    result = land_events(settings, new, "taobao", name="daily")
    assert storage.list_keys(settings, "staging/landing/") == []
    assert result.rows == 6 and [d.isoformat() for d in result.dates] == ["2017-11-26", "2017-11-27", "2017-11-28"]
    assert storage.list_keys(settings, "raw/events/dt=2017-11-25/") == []
    assert raw.list_raw_files(settings, dt.date(2017, 11, 26))[0][0].rows == 2


@pytest.mark.services
def test_land_from_s3_uri(settings, tmp_path: Path) -> None:
    storage.put_bytes(settings, "incoming/logs.csv", f"1,100,7,pv,{D1 + 1}\n".encode())
    result = land_events(settings, f"s3://{settings.bucket}/incoming/logs.csv", "taobao")
    assert result.name == "logs" and result.rows == 1 and result.keys == ["raw/events/dt=2017-11-25/logs.csv.zst"]
    with pytest.raises(SourceError, match=r"cannot download: there is no such object \(no key 'incoming/missing.csv'"):
        land_events(settings, f"s3://{settings.bucket}/incoming/missing.csv", "taobao")
    with pytest.raises(SourceError, match=r"no such object .*or no such bucket"):
        land_events(settings, "s3://no-such-bucket-here/logs.csv", "taobao")
    # Before: botocore's parameter check, quoting its bucket-name regex.
    for uri in ("s3://", f"s3://{settings.bucket}", f"s3://{settings.bucket}/incoming/"):
        with pytest.raises(SourceError, match=r"an s3:// source names a bucket and a file"):
            land_events(settings, uri, "taobao", name="s3")


@pytest.mark.services
def test_a_named_pipe_as_the_source_is_named_not_missing(settings, tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "events.pipe"
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match=r"events.pipe: not a regular file \(a pipe, socket or device\)"):
        land_events(settings, fifo, "taobao")


@pytest.mark.services
def test_land_ciao_keeps_header_and_columns(settings, tmp_path: Path) -> None:
    src = tmp_path / "ciao.csv"
    src.write_text("user_id,item_id,category_id,rating,helpfulness,timestamp\n"
                   f"1,2,3,5,4,{D1}\n1,3,3,0,4,{D1}\n")
    result = land_events(settings, src, "ciao")
    assert result.rows == 2
    landed = raw.list_raw_files(settings, dt.date(2017, 11, 25))[0][0]
    table = raw.read_raw_file(settings, landed)
    assert table.column_names == formats.CIAO_COLUMNS and table["rating"].to_pylist() == ["5", "0"]
    canon = canonicalize(table, landed.spec)
    assert canon["behavior"].to_pylist() == ["review", "review"] and canon["value"].to_pylist() == [5.0, 0.0]


@pytest.mark.services
def test_a_ciao_file_with_its_columns_in_another_order_lands_by_name(settings, tmp_path: Path) -> None:
    # It was refused ("header ... does not match the ciao columns") though every column is there.
    src = tmp_path / "ciao_reordered.csv"
    src.write_text("timestamp,user_id,category_id,item_id,helpfulness,rating\n"
                   f"{D1},1,3,2,4,5\n{D1 + 60},1,7,3,4,2\n")
    assert land_events(settings, src, "ciao").rows == 2
    result = validation.validate_partition(settings, dt.date(2017, 11, 25), report_id="reordered")
    assert (result.rows, result.quarantined) == (2, 0)
    landed = raw.list_raw_files(settings, dt.date(2017, 11, 25))[0][0]
    canon = canonicalize(raw.read_raw_file(settings, landed), landed.spec)
    assert canon["item_id"].to_pylist() == ["2", "3"] and canon["category_id"].to_pylist() == ["3", "7"]
    assert canon["value"].to_pylist() == [5.0, 2.0]
    src.write_text("timestamp,user_id,category_id,item_id,rating,extra\n" f"{D1},1,3,2,5,x\n")
    with pytest.raises(SourceError, match=r"does not match the ciao columns .*extra: \['extra'\]"):
        land_events(settings, src, "ciao", name="other")


@pytest.mark.services
def test_land_generic_csv_with_column_map_file_and_parquet(settings, tmp_path: Path) -> None:
    src = tmp_path / "shop.csv"
    src.write_text("uid;sku;cat;event;when;price\n"
                   "u1;s1;c1;click;2017-11-25T09:00:00+08:00;1.5\n"
                   "u1;s2;c1;purchase;2017-11-25T01:00:00Z;\n")
    map_file = tmp_path / "map.yaml"
    map_file.write_text("columns: {user_id: uid, item_id: sku, category_id: cat, behavior: event, ts: when, "
                        "value: price}\nbehavior_map: {click: view, purchase: buy}\nts_format: iso\n"
                        "delimiter: ';'\n")
    result = land_events(settings, src, "csv", **formats.read_column_map_file(map_file))
    assert result.rows == 2 and result.dates == [dt.date(2017, 11, 25)]
    landed = raw.list_raw_files(settings, dt.date(2017, 11, 25))[0][0]
    canon = canonicalize(raw.read_raw_file(settings, landed), landed.spec)
    assert canon["behavior"].to_pylist() == ["view", "buy"]
    assert canon["ts"].to_pylist() == [(D1 + 3600) * 10**6, (D1 + 3600) * 10**6]

    table = pa.table({"uid": ["a", "b"], "sku": ["x", "y"], "cat": ["k", "k"], "kind": ["view", "buy"],
                      "at": pa.array([dt.datetime(2017, 11, 26, 1, tzinfo=dt.UTC)] * 2, pa.timestamp("ms", "UTC"))})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    pq_path = tmp_path / "events.parquet"
    pq_path.write_bytes(buf.getvalue())
    res = land_events(settings, pq_path, "parquet",
                      column_map={"user_id": "uid", "item_id": "sku", "category_id": "cat", "behavior": "kind",
                                  "ts": "at"})
    assert res.rows == 2 and res.keys == ["raw/events/dt=2017-11-26/events.parquet"]
    meta = storage.get_json(settings, "raw/events/dt=2017-11-26/events.meta.json")
    assert json.dumps(meta["spec"]["column_map"])


@pytest.mark.services
def test_rows_outside_the_window_are_set_aside_at_landing(settings, tmp_path: Path) -> None:
    from pipelines.config import load_settings

    windowed = load_settings(environ={}, s3_endpoint_url=settings.s3_endpoint_url, bucket=settings.bucket,
                             work_dir=settings.work_dir, window_start=dt.date(2017, 11, 25),
                             window_end=dt.date(2017, 11, 26), window_timezone="Asia/Shanghai")
    inside = [f"1,{100 + k},7,pv,{D1 + 3600 * k}" for k in range(10)]       # 2017-11-25 00:00.. UTC
    junk = [f"2,100,7,pv,{t}" for t in (1262304000, 1300000000, 1400000000, 1500000000)]  # 2010 .. 2017-07
    early = [f"3,100,7,pv,{D1 - 9 * 3600}"]   # 2017-11-24 15:00 UTC: before the window's 16:00 UTC start
    late = [f"4,100,7,pv,{D1 + 2 * 86400}"]   # 2017-11-27 00:00 UTC: after 2017-11-26 China time
    src = tmp_path / "junk.csv"
    src.write_text("\n".join(inside + junk + early + late + ["5,100,7,pv,0"]) + "\n")
    res = land_events(windowed, src, "taobao")
    assert res.rows_read == 17 == res.rows + res.quarantined
    assert res.quarantine_reasons == {"outside_window": 6, "implausible_timestamp": 1}
    # No partition for the junk days: only the window's days were landed.
    assert storage.list_partitions(settings, "raw/events") == [dt.date(2017, 11, 25)] == res.dates
    unplaced = storage.read_parquet(settings, res.quarantine_key).to_pydict()
    outside = [raw for raw, reason in zip(unplaced["raw"], unplaced["reason"], strict=True) if reason == "outside_window"]
    assert sorted(outside) == sorted(junk + early + late)
    assert all("outside the configured window" in d for d, r in zip(unplaced["detail"], unplaced["reason"], strict=True)
               if r == "outside_window")

    # Without a window every plausible row lands in its UTC day, as before.
    res = land_events(settings, src, "taobao")
    assert res.quarantine_reasons == {"implausible_timestamp": 1} and len(res.dates) == 7


@pytest.mark.services
def test_many_days_land_with_few_open_files(settings, tmp_path: Path, monkeypatch) -> None:
    from pipelines.data import routing

    monkeypatch.setattr(routing, "MAX_OPEN_WRITERS", 2)  # 6 days, interleaved: files are closed and reopened
    lines = [f"{u},{u},7,view,2017-11-{20 + u % 6}T0{u % 10}:00:00Z" for u in range(60)]
    src = tmp_path / "days.csv"
    src.write_text("user,item,cat,event,at\n" + "\n".join(lines) + "\n")
    res = land_events(settings, src, "csv", column_map={"user_id": "user", "item_id": "item", "category_id": "cat",
                                                        "behavior": "event", "ts": "at"}, ts_format="iso")
    assert len(res.dates) == 6 and res.rows == 60
    for day in res.dates:
        body = _raw_text(settings, f"raw/events/dt={day}/days.csv.zst").splitlines()
        assert body[0] == '"user","item","cat","event","at"' or body[0] == "user,item,cat,event,at"
        expected = [line for line in lines if f"2017-11-{day.day:02d}T" in line]
        assert [b.replace('"', "") for b in body[1:]] == expected  # one header, every row once, in file order


@pytest.mark.services
def test_quoted_fields_in_taobao_rows_are_malformed(settings, tmp_path: Path) -> None:
    src = tmp_path / "quoted.csv"
    src.write_text(f'1,"2,3",7,pv,{D1 + 5}\n1,4,7,pv,{D1 + 6}\n')
    res = land_events(settings, src, "taobao")
    assert res.quarantine_reasons == {"malformed_row": 1} and res.rows == 1
    assert storage.read_parquet(settings, res.quarantine_key)["raw"].to_pylist() == [f"1,2,3,7,pv,{D1 + 5}"]


def test_day_files_reopened_for_appending_read_back_whole(tmp_path: Path, monkeypatch) -> None:
    # A day file closed to free a writer and reopened later gets a second zstd frame: every row must read back.
    from pipelines.data import routing

    monkeypatch.setattr(routing, "MAX_OPEN_WRITERS", 1)
    monkeypatch.setattr(routing, "BATCH_BYTES", 256)  # many read blocks, days alternating between them
    lines = [f"{u},{u},7,pv,{D1 + (u % 3) * 86400 + u}" for u in range(300)]
    src = tmp_path / "alternating.csv"
    src.write_text("\n".join(lines) + "\n")
    (tmp_path / "scratch").mkdir()
    stats = routing.split_csv(src, build_spec("taobao"), tmp_path / "scratch", dt.datetime(2018, 1, 1, tzinfo=dt.UTC),
                              pseudonymize=None)
    assert sum(stats.rows_by_date.values()) == 300
    for day, path in stats.files.items():
        text = raw.unpack_raw(path.name, path.read_bytes()).decode().splitlines()
        offset = (day - dt.date(2017, 11, 25)).days
        assert text == [line for u, line in enumerate(lines) if u % 3 == offset]
        assert path.read_bytes().count(b"\x28\xb5\x2f\xfd") > 1  # it was reopened: several frames


def test_iso_times_with_the_zone_name_utc_after_them_land(settings, tmp_path: Path) -> None:
    # REES46's export writes "2019-10-01 00:00:04 UTC": every row was quarantined as unparseable_timestamp.
    out = parse_ts(pa.array(["2019-10-01 00:00:04 UTC", "2019-10-01 23:30:00gmt", "2019-10-01 08:00:00"]), "iso",
                   "Asia/Shanghai")
    base = int(dt.datetime(2019, 10, 1, tzinfo=dt.UTC).timestamp()) * 10**6
    assert out.to_pylist() == [base + 4 * 10**6, base + 23 * 3600 * 10**6 + 1800 * 10**6, base]
    src = tmp_path / "2019-Oct.csv"
    src.write_text("event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
                   "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde\n"
                   "2019-10-02 00:00:01 UTC,cart,3900821,2053013552326770905,appliances.water_heater,aqua,33.20,"
                   "554748717,9333dfbd\n")
    result = land_events(settings, src, "csv", name="rees46", column_map={
        "user_id": "user_id", "item_id": "product_id", "category_id": "category_id", "behavior": "event_type",
        "ts": "event_time"}, ts_format="iso")
    assert result.rows == 2 and result.quarantined == 0
    assert sorted(result.dates) == [dt.date(2019, 10, 1), dt.date(2019, 10, 2)]


@pytest.mark.services
def test_iso_times_with_a_space_before_their_offset_across_a_clock_change_land(settings, tmp_path: Path) -> None:
    # "10:00:00 +0200" next to "10:00:00 +0100" (summer time ended between them): the offset after a
    # space went unseen, pandas then refused the mix and `land` stopped with a traceback.
    out = parse_ts(pa.array(["2017-10-28 10:00:00 +0200", "2017-10-30 10:00:00 +0100", "2017-10-30 10:00:00",
                             "2017-10-30t10:00:00z"]), "iso", "UTC")
    hour = 3600 * 10**6
    day = int(dt.datetime(2017, 10, 28, tzinfo=dt.UTC).timestamp()) * 10**6
    assert out.to_pylist() == [day + 8 * hour, day + 2 * 24 * hour + 9 * hour, day + 2 * 24 * hour + 10 * hour,
                               day + 2 * 24 * hour + 10 * hour]
    src = tmp_path / "clock.csv"
    src.write_text("user_id,item_id,category_id,behavior,ts\n1,10,5,view,2017-10-28 10:00:00 +0200\n"
                   "2,11,5,view,2017-10-30 10:00:00 +0100\n3,12,5,buy,2017-10-30 23:30:00 -0100\n")
    result = land_events(settings, src, "csv", name="clock", column_map={
        "user_id": "user_id", "item_id": "item_id", "category_id": "category_id", "behavior": "behavior",
        "ts": "ts"}, ts_format="iso")
    assert result.rows == 3 and result.quarantined == 0
    assert sorted(result.dates) == [dt.date(2017, 10, 28), dt.date(2017, 10, 30), dt.date(2017, 10, 31)]


def test_iso_times_pandas_refuses_to_read_together_are_read_one_by_one() -> None:
    from pipelines.data.canonical import _parse_iso_one_by_one

    out = _parse_iso_one_by_one(pd.Series(["2017-10-28T10:00:00+02:00", "2017-11-25 10:00:00", "not a time", None]),
                                "Europe/Berlin")
    assert [None if pd.isna(v) else v.isoformat() for v in out] == [
        "2017-10-28T08:00:00+00:00", "2017-11-25T09:00:00+00:00", None, None]
