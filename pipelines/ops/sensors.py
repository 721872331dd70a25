"""A deferrable sensor for the inbox: waits in the triggerer (no worker slot) until a manifest
appears in ``inbox/events/`` (see :mod:`pipelines.ops.inbox`).

:class:`InboxSensor` checks once in the worker; when nothing is announced it defers to
:class:`InboxTrigger`, which lists the inbox every ``poll_seconds`` from the triggerer and fires
with the manifest keys it found. A listing error (S3 briefly away) is logged and retried at the
next poll instead of failing the wait. Both read the bucket through :mod:`pipelines.platform.storage`
with the settings of the process they run in.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

log = logging.getLogger(__name__)


def _pending() -> list[str]:
    from pipelines.config import load_settings
    from pipelines.ops import inbox

    return inbox.pending_manifests(load_settings())


class InboxTrigger(BaseTrigger):
    """Fires once with ``{"manifests": [...]}`` when the inbox holds at least one manifest."""

    def __init__(self, poll_seconds: float = 60.0) -> None:
        super().__init__()
        self.poll_seconds = float(poll_seconds)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {"poll_seconds": self.poll_seconds}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                found = await asyncio.to_thread(_pending)
            except Exception as exc:  # noqa: BLE001 - keep waiting through a storage hiccup; logged
                log.warning("inbox listing failed, retrying in %.0fs: %s", self.poll_seconds, exc)
                found = []
            if found:
                yield TriggerEvent({"manifests": found})
                return
            await asyncio.sleep(self.poll_seconds)


class InboxSensor(BaseSensorOperator):
    """Succeeds with the list of announced manifest keys; defers while the inbox is empty."""

    def __init__(self, *, poll_seconds: float = 60.0, **kwargs: Any) -> None:
        super().__init__(poke_interval=poll_seconds, **kwargs)
        self.poll_seconds = poll_seconds

    def poke(self, context: Any) -> bool:
        return bool(_pending())

    def execute(self, context: Any) -> list[str]:
        found = _pending()
        if found:
            return found
        self.defer(trigger=InboxTrigger(self.poll_seconds), method_name="execute_complete",
                   timeout=dt.timedelta(seconds=self.timeout))
        raise AssertionError("unreachable: defer raises")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> list[str]:
        return list(event["manifests"])
