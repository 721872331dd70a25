"""Privacy without services: the pseudonym function, the landing hook in routing, settings and the CLI."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipelines.__main__ import main
from pipelines.config import ConfigError, load_settings
from pipelines.data.formats import build_spec
from pipelines.data.raw import unpack_raw
from pipelines.data.routing import split_csv, split_parquet
from pipelines.privacy.pseudonym import (
    INVALID_MARK,
    PSEUDONYM_DIGITS,
    Pseudonymizer,
    PseudonymKeyError,
    is_pseudonym,
    pseudonym_of,
    read_key,
    stored_id,
    write_key,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T0 = 1511568000  # 2017-11-25 00:00 UTC
KEY = b"0123456789abcdef0123456789abcdef"
RAW_IDS = ["444000001", "444000002", "444000003"]


@pytest.fixture()
def key_file(tmp_path: Path) -> Path:
    return write_key(tmp_path / "secrets" / "pseudonym_key")


def test_pseudonyms_are_keyed_fixed_width_digits() -> None:
    mapper = Pseudonymizer(KEY)
    first = mapper.one("444000001")
    assert is_pseudonym(first) and len(first) == 20 and first.isdigit()
    assert mapper.one(" 444000001 ") == first == Pseudonymizer(KEY).one("444000001")  # trimmed, deterministic
    assert Pseudonymizer(b"another key, at least 32 chars long").one("444000001") != first
    assert mapper.one("444000002") != first and mapper.one("") == ""
    assert "0123" not in repr(mapper)
    column = mapper.array(pa.array(["444000001", "x!y", "", None, " 444000001"]), r"^[0-9]{1,20}$")
    assert column.to_pylist() == [first, INVALID_MARK + mapper.one("x!y"), "", None, first]


def test_key_file_is_private_never_replaced_and_checked(tmp_path: Path, key_file: Path) -> None:
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    with pytest.raises(FileExistsError):
        write_key(key_file)
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(PseudonymKeyError, match="IM_PSEUDONYM_KEY_FILE.*too short") as err:
        read_key(short)
    assert "abc" not in str(err.value)
    with pytest.raises(PseudonymKeyError, match="not set"):
        read_key(None)


def test_settings_need_a_key_file_when_switched_on(key_file: Path) -> None:
    with pytest.raises(ConfigError, match="IM_PSEUDONYMIZE=true needs IM_PSEUDONYM_KEY_FILE"):
        load_settings(environ={"IM_PSEUDONYMIZE": "true"})
    with pytest.raises(ConfigError, match="IM_RETENTION_RAW_DAYS"):
        load_settings(environ={"IM_RETENTION_RAW_DAYS": "-1"})
    on = load_settings(environ={"IM_PSEUDONYMIZE": "true", "IM_PSEUDONYM_KEY_FILE": str(key_file)})
    assert stored_id(on, "444000001") == pseudonym_of(on, "444000001") != "444000001"
    off = load_settings(environ={"IM_PSEUDONYM_KEY_FILE": str(key_file)})
    assert stored_id(off, " 444000001 ") == "444000001"
    assert key_file.read_text().strip() not in repr(on) + str(on.describe())


def _taobao_source(path: Path) -> Path:
    lines = [f"{u},{500000 + i},7,pv,{T0 + i}" for i, u in enumerate(RAW_IDS * 3)]
    lines += [f"{RAW_IDS[0]},500100,7,pv,99"]                 # implausible timestamp: unplaced
    lines += [f"{RAW_IDS[1]},500101,7,pv,{T0},extra"]          # wrong column count: unplaced
    lines += [f'{RAW_IDS[2]},"500,102",7,pv,{T0}']            # a field holding a delimiter: malformed
    lines += [f"abc!,500103,7,pv,{T0 + 1}"]                    # bad id: kept, marked invalid
    path.write_text("\n".join(lines) + "\n")
    return path


def _texts(stats) -> str:
    parts = [unpack_raw(p.name, p.read_bytes()).decode() if p.name.endswith(".csv.zst")
             else str(pq.read_table(p).to_pylist()) for p in stats.files.values()]
    return "\n".join(parts + [str(stats.rejects().to_pylist())])


def test_routing_replaces_user_ids_in_day_files_and_set_aside_rows(tmp_path: Path) -> None:
    source = _taobao_source(tmp_path / "src.csv")
    spec = build_spec("taobao")
    (tmp_path / "plain").mkdir()
    (tmp_path / "hashed").mkdir()
    plain = split_csv(source, spec, tmp_path / "plain", NOW, pseudonymize=None)
    mapper = Pseudonymizer(KEY)
    hashed = split_csv(source, spec, tmp_path / "hashed", NOW, pseudonymize=mapper)
    assert all(u in _texts(plain) for u in RAW_IDS)  # the check below can fail
    assert not any(u in _texts(hashed) for u in RAW_IDS)
    # Same routing, same reasons: only the ids changed.
    assert hashed.rows_by_date == plain.rows_by_date and hashed.reasons == plain.reasons
    assert plain.reasons == {"implausible_timestamp": 1, "wrong_column_count": 1, "malformed_row": 1}
    day = pacsv.read_csv(pa.input_stream(hashed.files[dt.date(2017, 11, 25)], compression="zstd"), read_options=pacsv.ReadOptions(
        column_names=spec.columns), convert_options=pacsv.ConvertOptions(column_types={"user_id": pa.string()}))
    users = day["user_id"].to_pylist()
    assert users[:3] == [mapper.one(u) for u in RAW_IDS] and users[-1] == INVALID_MARK + mapper.one("abc!")
    rejects = {r["reason"]: r["raw"] for r in hashed.rejects().to_pylist()}
    assert rejects["implausible_timestamp"].startswith(mapper.one(RAW_IDS[0]) + ",")
    assert rejects["wrong_column_count"].startswith("[withheld under pseudonymisation: 6 fields")


def test_routing_default_follows_the_environment(tmp_path: Path, key_file: Path, monkeypatch) -> None:
    source = _taobao_source(tmp_path / "src.csv")
    monkeypatch.setenv("IM_PSEUDONYMIZE", "true")
    monkeypatch.setenv("IM_PSEUDONYM_KEY_FILE", str(key_file))
    stats = split_csv(source, build_spec("taobao"), tmp_path, NOW)
    assert not any(u in _texts(stats) for u in RAW_IDS)
    assert Pseudonymizer(read_key(key_file)).one(RAW_IDS[0]) in _texts(stats)


def test_parquet_source_with_integer_ids_gets_string_pseudonyms(tmp_path: Path) -> None:
    source = tmp_path / "src.parquet"
    pq.write_table(pa.table({"uid": pa.array([444000001, 444000002], pa.int64()), "item": ["1", "2"],
                             "cat": ["7", "7"], "kind": ["view", "buy"], "when": [T0, T0 + 5]}), source)
    spec = build_spec("parquet", column_map={"user_id": "uid", "item_id": "item", "category_id": "cat",
                                             "behavior": "kind", "ts": "when"}, ts_format="unix_s")
    stats = split_parquet(source, spec, tmp_path, NOW, pseudonymize=Pseudonymizer(KEY))
    table = pq.read_table(stats.files[dt.date(2017, 11, 25)])
    assert table.schema.field("uid").type == pa.string()
    assert table["uid"].to_pylist() == [Pseudonymizer(KEY).one(u) for u in ("444000001", "444000002")]


def test_float_and_decimal_ids_get_the_pseudonym_of_the_whole_number(tmp_path: Path) -> None:
    # A double 444000001.0 was pseudonymised as the text '444000001.0': a second user, and not what
    # `pseudonym 444000001` or `forget 444000001` look for.
    import decimal

    for ids in (pa.array([444000001.0, 444000002.0], pa.float64()),
                pa.array([decimal.Decimal("444000001.00"), decimal.Decimal("444000002.00")], pa.decimal128(12, 2))):
        source = tmp_path / f"src-{ids.type}.parquet"
        pq.write_table(pa.table({"uid": ids, "item": ["1", "2"], "cat": ["7", "7"], "kind": ["view", "buy"],
                                 "when": [T0, T0 + 5]}), source)
        spec = build_spec("parquet", column_map={"user_id": "uid", "item_id": "item", "category_id": "cat",
                                                 "behavior": "kind", "ts": "when"}, ts_format="unix_s")
        scratch = tmp_path / str(ids.type).replace(",", "_")
        scratch.mkdir()
        stats = split_parquet(source, spec, scratch, NOW, pseudonymize=Pseudonymizer(KEY))
        table = pq.read_table(stats.files[dt.date(2017, 11, 25)])
        assert table["uid"].to_pylist() == [Pseudonymizer(KEY).one(u) for u in ("444000001", "444000002")]


def test_cli_pseudonym_needs_the_key_and_writes_private_tables(tmp_path: Path, monkeypatch, capsys) -> None:
    key = tmp_path / "k"
    assert main(["pseudonym", "--new-key", str(key)]) == 0
    assert main(["pseudonym", "--new-key", str(key)]) == 1
    assert "never replaced" in capsys.readouterr().err
    assert main(["pseudonym", "--user", "444000001"]) == 1
    assert "IM_PSEUDONYM_KEY_FILE is not set" in capsys.readouterr().err
    monkeypatch.setenv("IM_PSEUDONYM_KEY_FILE", str(key))
    assert main(["pseudonym", "--user", "444000001", "--user", "444000002"]) == 0
    expected = Pseudonymizer(read_key(key))
    assert capsys.readouterr().out.split() == ["444000001", expected.one("444000001"),
                                               "444000002", expected.one("444000002")]
    ids = tmp_path / "ids.txt"
    ids.write_text("444000001\n\n444000003\n")
    out = tmp_path / "map.csv"
    assert main(["pseudonym", "--ids-file", str(ids), "--out", str(out)]) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert out.read_text().splitlines()[2] == f"444000003,{expected.one('444000003')}"


def test_cli_pseudonym_reads_ids_files_as_utf8(tmp_path: Path, key_file: Path, monkeypatch, capsys) -> None:
    # A Latin-1 file raised UnicodeDecodeError (a traceback); a byte-order mark became part of the first id.
    monkeypatch.setenv("IM_PSEUDONYM_KEY_FILE", str(key_file))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Jos\xe9\n".encode("latin-1"))
    assert main(["pseudonym", "--ids-file", str(latin)]) == 1
    err = capsys.readouterr().err
    assert f"{latin}: not UTF-8" in err and len(err.strip().splitlines()) == 1
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffabc\n".encode())
    assert main(["pseudonym", "--ids-file", str(bom)]) == 0
    assert capsys.readouterr().out.split() == ["abc", Pseudonymizer(read_key(key_file)).one("abc")]


def test_cli_pseudonym_refuses_empty_ids_and_unsafe_restricted_names(key_file: Path, monkeypatch, capsys) -> None:
    # An empty --user printed an empty pseudonym; --restricted "" printed instead of writing; a
    # --restricted name with '/' or '..' became a key segment outside restricted/pseudonyms/.
    monkeypatch.setenv("IM_PSEUDONYM_KEY_FILE", str(key_file))
    for argv in (["--user", ""], ["--user", "  "], ["--user", "1", "--restricted", ""],
                 ["--user", "1", "--restricted", "../x"], ["--user", "1", "--restricted", "a/b"],
                 ["--user", "1", "--restricted", ".."], ["--user", "1", "--out", ""]):
        assert main(["pseudonym", *argv]) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, argv


def test_pseudonyms_are_ascii_digits_only() -> None:
    # str.isdigit() took 20 Arabic-Indic digits for a pseudonym: `forget --pseudonym` searched for it.
    from pipelines.privacy.erasure import user_forms

    arabic = "\u0661" * PSEUDONYM_DIGITS
    assert not is_pseudonym(arabic) and not is_pseudonym(INVALID_MARK + arabic) and is_pseudonym("1" * 20)
    with pytest.raises(ValueError, match="not a pseudonym"):
        user_forms(load_settings(environ={}), pseudonym=arabic)
