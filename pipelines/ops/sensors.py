"""A deferrable sensor for the inbox: waits for a manifest in ``inbox/events/`` without holding a
worker slot (see :mod:`pipelines.ops.inbox`).

:class:`InboxSensor` lists the inbox in the worker; when nothing is announced it defers to a timer
trigger (Airflow's ``DateTimeTrigger``) and lists again ``poll_seconds`` later. The listing runs
where the task credentials are (the worker), so the triggerer needs no S3 access: it only keeps
time. After ``timeout`` without a manifest the sensor is skipped (``soft_fail``) or fails.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import BaseSensorOperator


def _pending() -> list[str]:
    from pipelines.config import load_settings
    from pipelines.ops import inbox

    return inbox.pending_manifests(load_settings())


class InboxSensor(BaseSensorOperator):
    """Succeeds with the announced manifest keys; defers ``poll_seconds`` at a time while none is there."""

    def __init__(self, *, poll_seconds: float = 60.0, **kwargs: Any) -> None:
        super().__init__(poke_interval=poll_seconds, **kwargs)
        self.poll_seconds = poll_seconds

    def poke(self, context: Any) -> bool:
        return bool(_pending())

    def execute(self, context: Any) -> list[str]:
        return self.check(context, started=dt.datetime.now(dt.UTC).isoformat())

    def check(self, context: Any, started: str, event: Any = None) -> list[str]:
        """List the inbox; return what is announced, or defer until the next poll (or give up)."""
        found = _pending()
        if found:
            return found
        waited = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(started)).total_seconds()
        if waited >= self.timeout:
            from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

            message = f"no manifest in the inbox after {waited:.0f}s"
            raise AirflowSkipException(message) if self.soft_fail else AirflowSensorTimeout(message)
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        wake = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=min(self.poll_seconds, self.timeout - waited))
        self.defer(trigger=DateTimeTrigger(moment=wake), method_name="check", kwargs={"started": started})
