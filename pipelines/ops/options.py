"""The operations part of the settings, as one typed object: notifications, deadlines, retraining,
the inbox and the UI plugin's limits.

Each field is a :class:`~pipelines.config.Settings` field of the same name (``IM_NOTIFY_CHANNEL``,
``IM_TRAINING_SCHEDULE``, ...; ``python -m pipelines config`` lists them with their meaning).
:func:`ops_options` copies them out of a ``Settings``; a ``Settings`` built before those fields
existed yields the defaults below, so the operations code never reads a variable itself.
Secrets are never values here: the webhook URL and the SMTP password are read from the files
the settings name, at the moment a message is sent.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

CHANNELS = ("log", "webhook", "smtp")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class OptionsError(ValueError):
    """An operations setting has a value that cannot be used; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class OpsOptions:
    """What the operations code needs from the settings (see the module docstring)."""

    notify_channel: str = "log"
    notify_webhook_url_file: Path | None = None
    notify_smtp_host: str = ""
    notify_smtp_port: int = 25
    notify_smtp_starttls: bool = False
    notify_smtp_user: str = ""
    notify_smtp_password_file: Path | None = None
    notify_email_from: str = ""
    notify_email_to: str = ""
    notify_timeout_seconds: float = 10.0
    scoring_deadline: str = ""
    training_schedule: str = ""
    training_window_days: int = 0
    inbox_poll_seconds: int = 60
    ui_cache_seconds: float = 30.0
    ui_timeout_seconds: float = 3.0

    def __post_init__(self) -> None:
        if self.notify_channel not in CHANNELS:
            raise OptionsError(f"IM_NOTIFY_CHANNEL={self.notify_channel!r}: expected one of {', '.join(CHANNELS)}")
        if self.scoring_deadline and not _HHMM.match(self.scoring_deadline):
            raise OptionsError(f"IM_SCORING_DEADLINE={self.scoring_deadline!r}: expected HH:MM (UTC), e.g. 06:00")
        for name in ("training_window_days",):
            if getattr(self, name) < 0:
                raise OptionsError(f"IM_{name.upper()}={getattr(self, name)!r} is out of range: must be >= 0")
        for name in ("inbox_poll_seconds", "notify_timeout_seconds", "ui_cache_seconds", "ui_timeout_seconds",
                     "notify_smtp_port"):
            if getattr(self, name) <= 0:
                raise OptionsError(f"IM_{name.upper()}={getattr(self, name)!r} is out of range: must be > 0")

    @property
    def deadline_after_day_end(self) -> tuple[int, int] | None:
        """(hours, minutes) after the end of day D by which D's predictions must be published."""
        if not self.scoring_deadline:
            return None
        hours, minutes = self.scoring_deadline.split(":")
        return int(hours), int(minutes)


def ops_options(settings: Any) -> OpsOptions:
    """The :class:`OpsOptions` of ``settings`` (fields it does not have keep their defaults)."""
    names = [f.name for f in dataclasses.fields(OpsOptions)]
    return OpsOptions(**{name: getattr(settings, name) for name in names if hasattr(settings, name)})
