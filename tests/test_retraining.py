"""Retraining cadence: the sliding training window of a run and where a config window wins."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.ops.options import OpsOptions
from pipelines.ops.retraining import run_window, sliding_window, training_schedule

LANDED = [dt.date(2017, 11, 25) + dt.timedelta(days=i) for i in range(9)]  # 11-25 .. 12-03


def at(day: str, hour: int = 3) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(hour), tzinfo=dt.UTC)


def test_sliding_window_ends_the_day_before_the_interval_end():
    # A weekly run at 2017-12-02 03:00 trains on the 7 complete days before it.
    assert sliding_window(7, at("2017-12-02"), LANDED) == (dt.date(2017, 11, 25), dt.date(2017, 12, 1))
    # Clamped to the last landed day when the data stops earlier (a run long after the demo data).
    assert sliding_window(3, at("2024-01-01"), LANDED) == (dt.date(2017, 12, 1), dt.date(2017, 12, 3))
    # No interval (an asset-triggered run without one): up to the last landed day.
    assert sliding_window(2, None, LANDED) == (dt.date(2017, 12, 2), dt.date(2017, 12, 3))
    assert sliding_window(0, at("2017-12-02"), LANDED) is None
    assert sliding_window(5, None, []) is None
    # Nothing landed before the end: the window stays where the schedule says (training names it empty).
    assert sliding_window(2, at("2017-11-20"), LANDED) == (dt.date(2017, 11, 18), dt.date(2017, 11, 19))


def test_config_window_wins_and_window_days_zero_means_every_landed_day():
    calls = []

    def landed() -> list[dt.date]:
        calls.append(1)
        return LANDED

    options = OpsOptions(training_window_days=7)
    assert run_window(options, {"data_start": "2017-11-26", "data_end": ""}, at("2017-12-02"), landed) == {
        "data_start": "2017-11-26", "data_end": ""}
    assert calls == []  # a config window never lists the bucket
    assert run_window(options, {"data_start": "", "data_end": ""}, at("2017-12-02"), landed) == {
        "data_start": "2017-11-25", "data_end": "2017-12-01"}
    assert run_window(OpsOptions(), {}, at("2017-12-02"), landed) == {"data_start": "", "data_end": ""}
    assert calls == [1]


def test_training_schedule_is_requests_only_unless_a_cron_is_set():
    (request,) = training_schedule(OpsOptions(), "b")
    assert request.uri == "s3://b/requests/retraining"
    combined = training_schedule(OpsOptions(training_schedule="@weekly"), "b")
    assert type(combined).__name__ == "AssetOrTimeSchedule"
    from pipelines.ops.options import OptionsError

    with pytest.raises(OptionsError, match=r"IM_TRAINING_SCHEDULE='61 \* \* \* \*' is not a cron"):
        training_schedule(OpsOptions(training_schedule="61 * * * *"), "b")
