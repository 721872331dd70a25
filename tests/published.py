"""Published prediction partitions for the operations tests: clean events, a real pyfunc champion
registered on the test MLflow server, and real scoring (tests/pyfunc_models.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from pipelines.config import Settings
from pipelines.serving import scoring
from tests import pyfunc_models as pm


def publish(settings: Settings, events: dict[dt.date, list[tuple[str, str, str, str, int]]], days: list[dt.date],
            **overrides: Any) -> Settings:
    """Write ``events`` as clean partitions, register a champion and score every day of ``days``;
    returns the settings used (own model name and experiment, ``overrides`` applied)."""
    configured = dataclasses.replace(pm.isolate(settings), **overrides)
    pm.write_clean(configured, pm.clean_events(events))
    pm.register_as_champion(configured)
    for day in days:
        scoring.score_date(configured, day)
    return configured
