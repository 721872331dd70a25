"""The synthetic generator: Taobao format, realistic mix, planted shifts visible in the data, determinism."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.data.synthetic import generate_taobao, read_truth


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, header=None, names=["user_id", "item_id", "category_id", "behavior", "ts"])


def test_writes_official_taobao_format_with_realistic_shape(tmp_path: Path) -> None:
    gen = generate_taobao(tmp_path, users=300, days=10, categories=60, start=dt.date(2017, 11, 25), seed=1)
    df = _read(gen.events_path)
    assert len(df) == gen.rows > 300 * 10  # ~5 events per user-day on average
    # Headerless, five integer/behaviour columns, behaviours from the official set only.
    assert gen.events_path.read_text().splitlines()[0].count(",") == 4
    assert set(df.behavior) <= {"pv", "cart", "fav", "buy"}
    assert 0.85 < (df.behavior == "pv").mean() < 0.93
    days = pd.to_datetime(df.ts, unit="s", utc=True).dt.date
    assert days.min() == dt.date(2017, 11, 25) and days.max() == dt.date(2017, 12, 4)
    # Heavy-tailed activity: the busiest users do several times the median.
    per_user = df.groupby("user_id").size()
    assert per_user.quantile(0.99) > 4 * per_user.median()
    # Zipf-like popularity: the top 10% of categories hold well over 10% of events.
    per_cat = df.category_id.value_counts()
    assert per_cat.head(max(1, len(per_cat) // 10)).sum() / len(df) > 0.3


def test_planted_shifts_are_in_the_truth_and_in_the_data(tmp_path: Path) -> None:
    gen = generate_taobao(tmp_path, users=400, days=20, categories=80, seed=3, shift_share=0.3)
    truth = read_truth(gen.truth_path)
    assert len(truth["shifts"]) == gen.shifted_users > 0.2 * 400
    df = _read(gen.events_path)
    df["date"] = pd.to_datetime(df.ts, unit="s", utc=True).dt.date
    before, after = [], []
    for shift in truth["shifts"]:
        user = df[df.user_id == int(shift["user_id"])]
        new = user.category_id.astype(str).isin(shift["to_categories"])
        cut = user.date >= dt.date.fromisoformat(shift["shift_date"])
        assert not set(shift["to_categories"]) & set(shift["from_categories"])
        if cut.any() and (~cut).any():
            before.append(new[~cut].mean())
            after.append(new[cut].mean())
    # Before the shift the new categories are rare (exploration only); after it they dominate.
    assert sum(before) / len(before) < 0.05
    assert sum(after) / len(after) > 0.5


def test_same_seed_same_bytes_and_gzip(tmp_path: Path) -> None:
    a = generate_taobao(tmp_path / "a", users=50, days=3, categories=20, seed=7)
    b = generate_taobao(tmp_path / "b", users=50, days=3, categories=20, seed=7)
    c = generate_taobao(tmp_path / "c", users=50, days=3, categories=20, seed=7, compress=True)
    assert a.events_path.read_bytes() == b.events_path.read_bytes()
    assert c.events_path.name == "events.csv.gz" and len(_read(c.events_path)) == a.rows
    assert json.loads(a.truth_path.read_text())["shifts"] == json.loads(b.truth_path.read_text())["shifts"]


def test_rejects_impossible_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="users > 0"):
        generate_taobao(tmp_path, users=0, days=3, categories=20)


def test_streams_in_bounded_chunks(tmp_path: Path) -> None:
    """Chunked users give the same row count as one chunk: memory does not grow with users."""
    small = generate_taobao(tmp_path / "s", users=500, days=2, categories=30, seed=5, chunk_users=64)
    assert small.rows > 0
    assert _read(small.events_path).user_id.nunique() <= 500
