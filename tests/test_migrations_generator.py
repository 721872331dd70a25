"""The migrations generator (make run's data): planted migrations are in the truth and visible in the
data the way the truth says, the noise is really in the file, and the same seed gives the same bytes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.data.migrations import LATE_FILE, generate_migrations
from pipelines.data.synthetic import read_truth

START = dt.date(2017, 11, 1)


def _read(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, header=None, names=["user_id", "item_id", "category_id", "behavior", "ts"],
                        on_bad_lines="skip", dtype=str)
    frame = frame[frame.ts.str.fullmatch(r"\d{10}", na=False) & frame.user_id.notna()].copy()
    frame["date"] = pd.to_datetime(frame.ts.astype(int), unit="s", utc=True).dt.date
    return frame


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("migrations")
    return generate_migrations(out, users=1500, days=28, categories=40, start=START, seed=5, noise=True)


def test_every_kind_is_planted_and_reported(generated):
    truth = read_truth(generated.truth_path)
    kinds = {m["kind"] for m in truth["migrations"]}
    assert kinds == {"chain", "browse_then_buy", "family_shift", "weekend"}
    assert truth["shifts"] == [m for m in truth["migrations"] if m["kind"] == "family_shift"]
    assert generated.shifted_users == len({m["user_id"] for m in truth["migrations"] if m["kind"] != "weekend"})
    for m in truth["migrations"]:
        assert not set(m["from_categories"]) & set(m["to_categories"]), m


def test_migrations_are_rare_before_their_date_and_dominant_after(generated):
    truth = read_truth(generated.truth_path)
    events = _read(generated.events_path)
    by_user = dict(tuple(events.groupby("user_id")))
    for kind in ("chain", "family_shift", "browse_then_buy"):
        before, after = [], []
        for m in (m for m in truth["migrations"] if m["kind"] == kind):
            user = by_user.get(m["user_id"])
            if user is None:
                continue
            date = dt.date.fromisoformat(m["date"])
            new = user.category_id.isin(m["to_categories"])
            # a chain stage before its date: at most the exploration rate; browse: the few views
            early = user.date < date - dt.timedelta(days=3 if kind == "browse_then_buy" else 0)
            late = user.date >= date
            if early.any() and late.any():
                before.append(new[early].mean())
                after.append(new[late].mean())
        assert len(after) > 20, kind
        assert sum(before) / len(before) < 0.06, kind
        assert sum(after) / len(after) > 0.4, kind


def test_browsing_before_buying_is_views_only(generated):
    truth = read_truth(generated.truth_path)
    events = _read(generated.events_path)
    views, checked = 0, 0
    for m in (m for m in truth["migrations"] if m["kind"] == "browse_then_buy"):
        date = dt.date.fromisoformat(m["date"])
        user = events[(events.user_id == m["user_id"]) & events.category_id.isin(m["to_categories"])]
        browse = user[(user.date < date) & (user.date >= date - dt.timedelta(days=3))]
        views += int((browse.behavior == "pv").sum())
        checked += len(browse)
        buy_phase = user[user.date >= date]
        if len(buy_phase) > 20:
            assert (buy_phase.behavior != "pv").mean() > 0.2
    assert checked > 0 and views >= 0.95 * checked


def test_noise_is_in_the_files(generated):
    truth = read_truth(generated.truth_path)
    noise = truth["noise"]
    lines = generated.events_path.read_text().splitlines()
    assert len(lines) == generated.rows
    assert sum(1 for line in lines if line.count(",") != 4) == 2  # the short and the long line
    events = _read(generated.events_path)
    crawler = events[events.user_id == str(noise["crawler_user_id"])]
    assert len(crawler) == noise["crawler_rows"] >= 2000
    hours = pd.to_datetime(crawler.ts.astype(int), unit="s").dt.floor("h").nunique()
    assert hours <= 2  # thousands of views within one clock hour (two when it straddles one)
    exact = events.duplicated(subset=["user_id", "item_id", "category_id", "behavior", "ts"]).sum()
    assert exact >= noise["duplicate_rows"]
    late = _read(generated.late_path)
    assert generated.late_path.name == LATE_FILE and len(late) == noise["late_rows"] > 0
    assert set(late.date) == {START + dt.timedelta(days=27)}


def test_same_seed_same_bytes(tmp_path):
    a = generate_migrations(tmp_path / "a", users=200, days=10, categories=20, seed=9, noise=True)
    b = generate_migrations(tmp_path / "b", users=200, days=10, categories=20, seed=9, noise=True)
    assert a.events_path.read_bytes() == b.events_path.read_bytes()
    assert json.loads(a.truth_path.read_text()) == json.loads(b.truth_path.read_text())
    with pytest.raises(ValueError, match="categories >= 12"):
        generate_migrations(tmp_path / "c", users=10, days=10, categories=5)
