"""Notifications reach real servers on 127.0.0.1 (an HTTP webhook receiver, an SMTP sink started
here), fail with a clear reason that never shows the secret URL, and the settings that choose the
channel are checked."""

from __future__ import annotations

import http.server
import json
import logging
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes

import pytest

from pipelines.config import ConfigError, load_settings
from pipelines.ops.notify import Alert, NotifyError, notify, send
from pipelines.ops.options import OpsOptions, OptionsError, ops_options

ALERT = Alert("failure", "interest_migration_scoring run scheduled__2024-01-02 failed",
              {"dag": "interest_migration_scoring", "failed task": "publish", "empty": ""})


class _Webhook(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, self.headers["Content-Type"], json.loads(body)))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _serve(server: socketserver.BaseServer) -> Iterator[socketserver.BaseServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def webhook_server(status: int = 200) -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Webhook)
    server.received = []  # type: ignore[attr-defined]
    server.status = status  # type: ignore[attr-defined]
    with _serve(server):
        yield server


class _SmtpSink(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) to accept one message: EHLO, MAIL, RCPT, DATA, QUIT."""

    def _say(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self._say("220 sink ready")
        envelope: dict = {"to": []}
        while line := self.rfile.readline():
            verb = line.decode().strip().split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self._say("250 sink")
            elif verb == "MAIL":
                envelope["from"] = line.decode().strip()
                self._say("250 ok")
            elif verb == "RCPT":
                envelope["to"].append(line.decode().split("<", 1)[1].split(">", 1)[0])
                self._say("250 ok")
            elif verb == "DATA":
                self._say("354 go on")
                data = b""
                while (chunk := self.rfile.readline()) != b".\r\n":
                    data += chunk
                envelope["message"] = message_from_bytes(data)
                self.server.messages.append(envelope)  # type: ignore[attr-defined]
                self._say("250 queued")
            elif verb == "QUIT":
                self._say("221 bye")
                return
            else:
                self._say("502 not implemented")


def test_webhook_posts_slack_style_text_to_a_real_server(tmp_path):
    with webhook_server() as server:
        url_file = tmp_path / "webhook_url"
        url_file.write_text(f"http://127.0.0.1:{server.server_port}/services/T000/B000/secret-token\n")
        options = OpsOptions(notify_channel="webhook", notify_webhook_url_file=url_file)
        assert send(options, ALERT) == "webhook"
    (path, content_type, body), = server.received
    assert path == "/services/T000/B000/secret-token" and content_type == "application/json"
    assert body["text"].splitlines() == ["[interest-migration] interest_migration_scoring run scheduled__2024-01-02 "
                                         "failed", "dag: interest_migration_scoring", "failed task: publish"]


def test_webhook_failures_are_named_without_the_secret_url(tmp_path, caplog):
    url_file = tmp_path / "webhook_url"
    with webhook_server(status=500) as server:
        url_file.write_text(f"http://127.0.0.1:{server.server_port}/hooks/secret-token")
        options = OpsOptions(notify_channel="webhook", notify_webhook_url_file=url_file, notify_timeout_seconds=2)
        with pytest.raises(NotifyError, match="webhook answered HTTP 500"):
            send(options, ALERT)
        port = server.server_port
    # The server is gone: a connection error is bounded by the timeout and named.
    with pytest.raises(NotifyError, match="webhook not reachable within 2s"):
        send(options, ALERT)
    # notify() never raises: it logs why, and nowhere the secret.
    with caplog.at_level(logging.WARNING):
        assert notify(options, ALERT) is False
    assert "could not deliver the failure alert through webhook" in caplog.text
    assert "secret-token" not in caplog.text and str(port) not in caplog.text
    with pytest.raises(NotifyError, match="no file configured"):
        send(OpsOptions(notify_channel="webhook"), ALERT)
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(NotifyError, match="is empty"):
        send(OpsOptions(notify_channel="webhook", notify_webhook_url_file=tmp_path / "empty"), ALERT)


def test_smtp_sends_the_alert_to_every_recipient():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpSink)
    server.messages = []  # type: ignore[attr-defined]
    with _serve(server):
        options = OpsOptions(notify_channel="smtp", notify_smtp_host="127.0.0.1", notify_smtp_port=server.server_address[1],
                             notify_email_from="airflow@example.org", notify_email_to="ops@example.org, ml@example.org")
        assert send(options, ALERT) == "smtp"
    (envelope,) = server.messages
    assert envelope["to"] == ["ops@example.org", "ml@example.org"]
    message = envelope["message"]
    assert " ".join(message["Subject"].split()) == f"[interest-migration] {ALERT.subject}"  # unfolded
    assert "failed task: publish" in message.get_payload()
    with pytest.raises(NotifyError, match="needs IM_NOTIFY_SMTP_HOST"):
        send(OpsOptions(notify_channel="smtp"), ALERT)


def test_log_channel_logs_and_bad_alerts_are_refused(caplog):
    with caplog.at_level(logging.WARNING):
        assert send(OpsOptions(), ALERT) == "log"
    assert "ALERT failure" in caplog.text and "failed task: publish" in caplog.text
    with pytest.raises(ValueError, match="alert kind 'oops'"):
        Alert("oops", "x")


def test_settings_choose_the_channel_and_bad_values_are_named(tmp_path):
    settings = load_settings(environ={"IM_NOTIFY_CHANNEL": "webhook", "IM_NOTIFY_WEBHOOK_URL_FILE": str(tmp_path / "u"),
                                      "IM_SCORING_DEADLINE": "06:30", "IM_TRAINING_WINDOW_DAYS": "14"})
    options = ops_options(settings)
    assert options.notify_channel == "webhook" and options.notify_webhook_url_file == tmp_path / "u"
    assert options.deadline_after_day_end == (6, 30) and options.training_window_days == 14
    for variable, value in (("IM_NOTIFY_CHANNEL", "pager"), ("IM_SCORING_DEADLINE", "6:30"),
                            ("IM_TRAINING_WINDOW_DAYS", "-1"), ("IM_UI_TIMEOUT_SECONDS", "0")):
        with pytest.raises(ConfigError, match=variable):
            load_settings(environ={variable: value})
    with pytest.raises(OptionsError, match="IM_SCORING_DEADLINE='25:00'"):
        OpsOptions(scoring_deadline="25:00")
