"""The real Taobao and Ciao files through land -> validate -> preprocess, with their real defects.

Reads ../shared/data (skipped when absent). Defects expected (see ../shared/data/README.md):
Taobao rows outside the official window (2017-09-11, 2017-11-24 China time) and a 1970 timestamp;
Ciao exact duplicate rows and ratings of 0 on a 1-5 scale.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import Settings, load_settings
from pipelines.data.landing import land_events
from pipelines.data.preprocess import preprocess_partition
from pipelines.data.validation import validate_partition, validate_partitions
from pipelines.platform import storage

pytestmark = [pytest.mark.realdata, pytest.mark.services, pytest.mark.slow]


def _with(settings: Settings, **overrides) -> Settings:
    return load_settings(environ={}, s3_endpoint_url=settings.s3_endpoint_url, bucket=settings.bucket,
                         mlflow_tracking_uri=settings.mlflow_tracking_uri, work_dir=settings.work_dir, **overrides)


def test_taobao_head_tail_and_slice(settings, shared_data: Path) -> None:
    taobao = shared_data / "taobao"
    # The official window: 2017-11-25 .. 2017-12-03 China time (partitions stay UTC dates).
    s = _with(settings, window_start=dt.date(2017, 11, 25), window_end=dt.date(2017, 12, 3),
              window_timezone="Asia/Shanghai")
    # Landed before the window was configured (with a window, landing itself sets rows outside it
    # aside: test_taobao_landing_with_the_window); validation then sets them aside as outside_window.
    unbounded = _with(settings)
    head = land_events(unbounded, taobao / "UserBehavior_head.csv", "taobao")
    tail = land_events(unbounded, taobao / "UserBehavior_tail.csv", "taobao")
    sliced = land_events(unbounded, taobao / "UserBehavior_2017-11-26_slice.csv.gz", "taobao")
    assert head.rows_read == 4321 and tail.rows_read == 10_000 and sliced.rows_read == 96_169
    # The 1970 timestamp of the slice cannot be placed: quarantined at landing with its reason.
    assert sliced.quarantine_reasons == {"implausible_timestamp": 1} and sliced.rows == 96_168

    dates = sorted(set(head.dates) | set(tail.dates) | set(sliced.dates))
    truth = pd.concat([pd.read_csv(taobao / f, header=None, names=["u", "i", "c", "b", "t"])
                       for f in ("UserBehavior_head.csv", "UserBehavior_tail.csv")])
    lo, hi = 1511539200, 1512316799  # official window in Unix seconds
    expected_outside = int(((truth.t < lo) | (truth.t > hi)).sum())
    results, pre = {}, {}
    for d in dates:
        results[d] = validate_partition(s, d, report_id="real-taobao")
        pre[d] = preprocess_partition(s, d)
        assert pre[d].rows_in == pre[d].clean + pre[d].quarantined + pre[d].duplicates_dropped
    outside = sum(r.reasons.get("outside_window", 0) for r in results.values())
    assert outside == expected_outside > 0
    # 2017-09-11 is a partition of its own, wholly outside the window, reported as such.
    old = results[dt.date(2017, 9, 11)]
    assert not old.in_window and old.reasons == {"outside_window": 1}
    summary = storage.get_bytes(s, "reports/validation/real-taobao/dt=2017-11-24/summary.md").decode()
    assert "outside_window" in summary
    total_in = sum(p.rows_in for p in pre.values())
    assert total_in == head.rows + tail.rows + sliced.rows
    assert sum(p.clean for p in pre.values()) == total_in - sum(p.quarantined + p.duplicates_dropped
                                                                for p in pre.values())
    assert all(r.failures == [] for r in results.values())


def test_taobao_landing_with_the_window(settings, shared_data: Path) -> None:
    taobao = shared_data / "taobao"
    s = _with(settings, window_start=dt.date(2017, 11, 25), window_end=dt.date(2017, 12, 3),
              window_timezone="Asia/Shanghai")
    truth = pd.concat([pd.read_csv(taobao / f, header=None, names=["u", "i", "c", "b", "t"])
                       for f in ("UserBehavior_head.csv", "UserBehavior_tail.csv")])
    lo, hi = 1511539200, 1512316799
    landed = [land_events(s, taobao / f, "taobao") for f in ("UserBehavior_head.csv", "UserBehavior_tail.csv")]
    outside = sum(r.quarantine_reasons.get("outside_window", 0) for r in landed)
    assert outside == int(((truth.t < lo) | (truth.t > hi)).sum()) > 0
    assert all(r.rows_read == r.rows + r.quarantined for r in landed)
    # The junk day 2017-09-11 is no partition; the window's days validate with nothing outside it.
    dates = sorted({d for r in landed for d in r.dates})
    assert dt.date(2017, 9, 11) not in dates and dates[0] >= dt.date(2017, 11, 24)
    results = validate_partitions(s, dates, report_id="windowed")
    assert not results.errors and all(r.reasons.get("outside_window", 0) == 0 for r in results.results)
    assert sum(r.rows for r in results.results) == sum(r.rows for r in landed)


def test_ciao_duplicates_and_zero_ratings(settings, shared_data: Path) -> None:
    path = shared_data / "ciao" / "ciao_ratings.csv.gz"
    # Daily review logs are sparse (tens of rows a day): the volume rule is off for them.
    s = _with(settings, min_volume_ratio=0.0)
    land = land_events(s, path, "ciao")
    assert land.rows_read == 284_086 and land.rows == 284_086 and land.quarantined == 0
    df = pd.read_csv(path)
    df["date"] = pd.to_datetime(df.timestamp, unit="s", utc=True).dt.date
    assert len(land.dates) == df.date.nunique()
    # Validate and preprocess the partitions that hold the real defects (all 3,965 days take minutes).
    dup_dates = sorted(set(df.date[df.duplicated(["user_id", "item_id", "category_id", "rating", "helpfulness",
                                                  "timestamp"], keep=False)]))[:15]
    zero_dates = sorted(set(df.date[df.rating == 0]))[:10]
    dates = sorted(set(dup_dates) | set(zero_dates))
    sub = df[df.date.isin(dates)]
    zeros = int((sub.rating == 0).sum())
    exact = int(sub.duplicated(["user_id", "item_id", "category_id", "rating", "timestamp"]).sum())
    results = [validate_partition(s, d, report_id="real-ciao") for d in dates]
    pre = [preprocess_partition(s, d) for d in dates]
    assert sum(r.reasons.get("value_out_of_range", 0) for r in results) == zeros > 0
    assert sum(r.duplicate_rows for r in results) == exact - int(
        sub[sub.rating == 0].duplicated(["user_id", "item_id", "category_id", "rating", "timestamp"]).sum())
    assert sum(p.exact_duplicates for p in pre) == sum(r.duplicate_rows for r in results) > 0
    for p in pre:
        assert p.rows_in == p.clean + p.quarantined + p.duplicates_dropped
    assert sum(p.rows_in for p in pre) == len(sub)
    zero_day = zero_dates[0]
    summary = storage.get_bytes(s, f"reports/validation/real-ciao/dt={zero_day}/summary.md").decode()
    assert "value_out_of_range" in summary
    q = storage.read_parquet(s, f"quarantine/events/dt={zero_day}/validation.parquet").to_pandas()
    assert set(q.value_raw) == {"0"} and set(q.reason) == {"value_out_of_range"}
