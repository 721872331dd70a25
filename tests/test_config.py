from __future__ import annotations

import datetime as dt

import pytest

from pipelines.config import ConfigError, load_settings


def test_defaults_load():
    s = load_settings(environ={})
    assert s.bucket == "interest-migration" and s.eval_ks == (5, 10, 20)


def test_env_values_are_typed():
    s = load_settings(environ={"IM_HORIZON_DAYS": "7", "IM_WINDOW_START": "2017-11-25", "IM_EVAL_KS": "3, 5"})
    assert s.horizon_days == 7 and s.window_start == dt.date(2017, 11, 25) and s.eval_ks == (3, 5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IM_HORIZON_DAYS": "abc"}, "IM_HORIZON_DAYS='abc' is not an integer"),
        ({"IM_HORIZON_DAYS": "0"}, "IM_HORIZON_DAYS='0' is out of range"),
        ({"IM_MAX_BAD_ROW_SHARE": "1.5"}, "IM_MAX_BAD_ROW_SHARE"),
        ({"IM_WINDOW_START": "2017-13-01"}, "IM_WINDOW_START='2017-13-01' is not a date"),
        ({"IM_WINDOW_START": "2018-01-02", "IM_WINDOW_END": "2018-01-01"}, "is after"),
        # accepted before: a nan margin fails every comparison of the gate, inf a learning rate, a zone
        # that does not exist only failed inside validation, a negative near-duplicate gap meant nothing
        ({"IM_LEARNING_RATE": "inf"}, "IM_LEARNING_RATE='inf' is not a finite number"),
        ({"IM_GATE_MARGIN_VS_BASELINES": "nan"}, "IM_GATE_MARGIN_VS_BASELINES='nan' is not a finite number"),
        ({"IM_WINDOW_TIMEZONE": "Mars/Olympus"}, "IM_WINDOW_TIMEZONE='Mars/Olympus' is out of range: must be an IANA"),
        ({"IM_NEAR_DUPLICATE_SECONDS": "-5"}, "IM_NEAR_DUPLICATE_SECONDS='-5' is out of range: must be >= 0"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_settings(environ=env)


def test_config_file_then_env(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("horizon_days: 5\ntop_k: 7\n")
    s = load_settings(environ={"IM_CONFIG_FILE": str(f), "IM_TOP_K": "9"})
    assert (s.horizon_days, s.top_k) == (5, 9)
    f.write_text("no_such_setting: 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'no_such_setting'"):
        load_settings(environ={"IM_CONFIG_FILE": str(f)})


def test_day_arguments_are_read_whole_or_refused(capsys) -> None:
    # Dates were read from their first 10 characters and by Python's fromisoformat: '2024-01-01xyz' and
    # '2024-01-011' were 2024-01-01, '20240102' and '2024-W01-3' were days too; `retention --date`
    # deletes by the day it reads.
    from pipelines.__main__ import main
    from pipelines.platform.dates import to_date

    assert to_date("2024-01-02") == to_date(" 2024-01-02 ") == dt.date(2024, 1, 2)
    assert to_date("2024-01-02T00:00:00+00:00") == to_date("2024-01-02 23:59") == dt.date(2024, 1, 2)  # Airflow's
    for bad in ("2024-01-01xyz", "2024-01-011", "20240102", "2024-W01-3", "2024-02-30", "2024-01-01T", ""):
        with pytest.raises(ValueError, match="is not a date YYYY-MM-DD"):
            to_date(bad, "--date")
    for command in (["validate", "--date", "2024-01-01xyz"], ["retention", "--date", "2024-01-011", "--dry-run"]):
        assert main(command) == 2
        assert "is not a date YYYY-MM-DD" in capsys.readouterr().err


def test_generate_refuses_a_start_past_the_calendar_and_a_share_over_one(tmp_path, capsys) -> None:
    # --start 9999-12-31 raised OverflowError (a traceback); --shift-share 5 was accepted.
    from pipelines.__main__ import main

    base = ["generate", "--out", str(tmp_path / "g"), "--users", "2", "--days", "2"]
    assert main([*base, "--start", "9999-12-31"]) == 2
    assert "runs past 9999-12-31" in capsys.readouterr().err
    assert main([*base, "--shift-share", "5"]) == 2
    assert "--shift-share 5.0 is not a share in [0, 1]" in capsys.readouterr().err
