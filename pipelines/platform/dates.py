"""Dates and day boundaries, all in UTC: the one place that parses a date or walks a window."""

from __future__ import annotations

import datetime as dt
import re

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_US = dt.timedelta(microseconds=1)


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def is_time_zone(name: object) -> bool:
    """Whether ``name`` is an IANA time zone this machine knows (``UTC``, ``Europe/Berlin``)."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(str(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def to_date(value: str | dt.date | dt.datetime, name: str = "date") -> dt.date:
    """``YYYY-MM-DD`` (or a date/datetime, or an ISO date-time such as Airflow's logical date, whose
    day it is) to a date; anything else raises ValueError naming ``name``. Nothing is cut off or
    guessed: ``2024-01-011``, ``2024-01-01xyz``, ``20240101`` and ``2024-W01-3`` are refused
    (``retention`` deletes by the day it reads)."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    try:
        if _DAY.fullmatch(text):
            return dt.date.fromisoformat(text)
        if _DAY.match(text) and text[10] in "T ":
            return dt.datetime.fromisoformat(text).date()
    except ValueError:
        pass
    raise ValueError(f"{name}={value!r} is not a date YYYY-MM-DD")


def parse_date(value: str | dt.date | dt.datetime | None, name: str) -> dt.date | None:
    """Like :func:`to_date`, but empty/None stays None (an open window bound)."""
    if value is None or value == "":
        return None
    return to_date(value, name)


def date_range(start: dt.date, end: dt.date | None = None) -> list[dt.date]:
    """Every date from ``start`` to ``end`` inclusive (just ``start`` when ``end`` is None).

    Raises ValueError when ``end`` is before ``start``."""
    end = start if end is None else end
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def start_of_day(date: dt.date) -> dt.datetime:
    """Midnight UTC at the start of ``date``."""
    return dt.datetime.combine(date, dt.time(), tzinfo=dt.UTC)


def end_of_day(date: dt.date) -> dt.datetime:
    """The first instant after ``date`` (UTC): events strictly before it belong to ``date`` or earlier."""
    return start_of_day(date + dt.timedelta(days=1))


def floor_day(ts: dt.datetime) -> dt.datetime:
    """Midnight UTC of the day ``ts`` falls in."""
    return start_of_day(ts.astimezone(dt.UTC).date())


def lookback_window(date: dt.date, lookback_days: int) -> tuple[dt.date, dt.date]:
    """The look-back window ``[D - lookback_days + 1, D]`` of day D (scoring and its input)."""
    return date - dt.timedelta(days=lookback_days - 1), date


def epoch_us(when: dt.datetime) -> int:
    """Microseconds since the epoch of a timezone-aware ``when`` (exact: no float on the way)."""
    return (when - _EPOCH) // _ONE_US


def utc_day_us(date: dt.date) -> tuple[int, int]:
    """``[start, end)`` of the UTC day ``date`` in microseconds since the epoch."""
    lo = int(start_of_day(date).timestamp()) * 1_000_000
    return lo, lo + 86_400_000_000
