"""Notifications: one :class:`Alert` sent through the channel the settings choose.

Channels (``IM_NOTIFY_CHANNEL``):

- ``log`` (default): a WARNING line in the log of the process that raised the alert (task log,
  DAG processor log or triggerer log).
- ``webhook``: an HTTP POST of ``{"text": ...}`` (what a Slack, Mattermost or Teams incoming
  webhook takes) to the URL held in the file ``IM_NOTIFY_WEBHOOK_URL_FILE`` (the URL is a secret:
  it is read when sending and never logged).
- ``smtp``: an e-mail from ``IM_NOTIFY_EMAIL_FROM`` to ``IM_NOTIFY_EMAIL_TO`` (comma separated)
  through ``IM_NOTIFY_SMTP_HOST:IM_NOTIFY_SMTP_PORT``, optionally STARTTLS and a login with
  ``IM_NOTIFY_SMTP_USER`` and the password in ``IM_NOTIFY_SMTP_PASSWORD_FILE``.

Every alert is logged whatever the channel. :func:`notify` never raises: a notifier that cannot
deliver logs why, so it never hides the failure it was reporting. :func:`send` raises
:class:`NotifyError` (tests and ``python -m pipelines notify-test`` use it).
"""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from pipelines.ops.options import OpsOptions
from pipelines.platform.secrets import SecretError, read_secret

log = logging.getLogger(__name__)

KINDS = ("failure", "gate_refused", "late_partition", "model_degraded", "test")


class NotifyError(RuntimeError):
    """An alert could not be delivered; the message says through what and why (never a secret)."""


@dataclass(frozen=True)
class Alert:
    """What happened (``kind``, one of KINDS), a one-line ``subject`` and ordered ``details``."""

    kind: str
    subject: str
    details: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"alert kind {self.kind!r}: expected one of {', '.join(KINDS)}")

    def text(self) -> str:
        """The subject, then one ``key: value`` line per detail."""
        lines = [f"[interest-migration] {self.subject}"]
        lines += [f"{key}: {value}" for key, value in self.details.items() if value not in (None, "")]
        return "\n".join(lines)


def _secret(path: Path | None, what: str) -> str:
    try:
        return read_secret(path, what)
    except SecretError as exc:
        raise NotifyError(str(exc)) from None


def _post_webhook(options: OpsOptions, alert: Alert) -> None:
    url = _secret(options.notify_webhook_url_file, "webhook URL (IM_NOTIFY_WEBHOOK_URL_FILE)")
    if not url.startswith(("https://", "http://")):
        raise NotifyError(f"webhook URL in {options.notify_webhook_url_file} is not an http(s) URL")
    body = json.dumps({"text": alert.text()}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=options.notify_timeout_seconds) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:
        raise NotifyError(f"webhook answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotifyError(f"webhook not reachable within {options.notify_timeout_seconds:g}s: {reason}") from None


def _send_mail(options: OpsOptions, alert: Alert) -> None:
    recipients = [r.strip() for r in options.notify_email_to.split(",") if r.strip()]
    if not options.notify_smtp_host or not recipients or not options.notify_email_from:
        raise NotifyError("smtp channel needs IM_NOTIFY_SMTP_HOST, IM_NOTIFY_EMAIL_FROM and IM_NOTIFY_EMAIL_TO")
    message = EmailMessage()
    message["Subject"] = f"[interest-migration] {alert.subject}"
    message["From"] = options.notify_email_from
    message["To"] = ", ".join(recipients)
    message.set_content(alert.text())
    where = f"{options.notify_smtp_host}:{options.notify_smtp_port}"
    try:
        with smtplib.SMTP(options.notify_smtp_host, options.notify_smtp_port,
                          timeout=options.notify_timeout_seconds) as server:
            if options.notify_smtp_starttls:
                server.starttls()
            if options.notify_smtp_user:
                password = _secret(options.notify_smtp_password_file, "SMTP password (IM_NOTIFY_SMTP_PASSWORD_FILE)")
                server.login(options.notify_smtp_user, password)
            server.send_message(message)
    except smtplib.SMTPException as exc:
        raise NotifyError(f"SMTP server {where} refused the message: {exc}") from None
    except OSError as exc:
        raise NotifyError(f"SMTP server {where} not reachable within {options.notify_timeout_seconds:g}s: "
                          f"{exc}") from None


def send(options: OpsOptions, alert: Alert) -> str:
    """Log ``alert`` and deliver it through ``options.notify_channel``; returns the channel.
    Raises :class:`NotifyError` when the channel cannot deliver it."""
    log.warning("ALERT %s: %s", alert.kind, alert.text())
    if options.notify_channel == "webhook":
        _post_webhook(options, alert)
    elif options.notify_channel == "smtp":
        _send_mail(options, alert)
    return options.notify_channel


def notify(options: OpsOptions, alert: Alert) -> bool:
    """:func:`send` that never raises: False (and an ERROR log line saying why) when delivery failed."""
    try:
        send(options, alert)
    except NotifyError as exc:
        log.error("could not deliver the %s alert through %s: %s", alert.kind, options.notify_channel, exc)
        return False
    return True
