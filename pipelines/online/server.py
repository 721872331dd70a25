"""The online scoring endpoint: a threaded stdlib HTTP server on 127.0.0.1.

- ``POST /v1/score`` (bearer token) ``{"user_id": U, "events": [{item_id, category_id, behavior,
  ts}, ...]}`` -> the contract row of U from the pinned champion (:mod:`pipelines.online.state`).
- ``GET /healthz`` (no auth) -> ``{"status": "ready"|"no_model", "model_version", "loaded_day", ...}``.

Answers: 401 without the token, 400 naming the bad field, 404 for an unknown user who posts no
events, 413 for a body over ``IM_ONLINE_MAX_BODY_BYTES``, 503 while no champion is loaded.
A :class:`Reloader` thread checks the champion alias and the latest clean day every
``IM_ONLINE_RELOAD_SECONDS`` and swaps in a freshly built state when either moved; requests in
flight finish on the state they started with.

:func:`start` runs it in a background thread (for devstack and tests); ``python -m pipelines
serve-online`` runs it in the foreground.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.online.state import (
    OnlineState,
    RequestError,
    latest_clean_day,
    load_state,
    parse_request,
    score_user,
)

log = logging.getLogger(__name__)
HOST = "127.0.0.1"


class Reloader:
    """Holds the current :class:`OnlineState` and rebuilds it when the champion or the day moves."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: OnlineState | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="online-reloader", daemon=True)

    def check(self) -> bool:
        """Reload when the champion version or the latest clean day changed; True when it did."""
        from pipelines.model.registry import CHAMPION, version_by_alias

        try:
            version = version_by_alias(self.settings, CHAMPION)
            current = self.state
            if version is None:
                self.error = f"no version of {self.settings.model_name!r} carries the champion alias"
                return False
            if current is not None and current.version == str(version.version) \
                    and current.day == latest_clean_day(self.settings):
                return False
            self.state = load_state(self.settings)  # one reference assignment: the swap
            self.error = None
            return True
        except Exception as exc:  # noqa: BLE001 - keep serving the loaded state; /healthz says why
            self.error = f"reload failed: {type(exc).__name__}: {exc}"
            log.warning("online reload failed (still serving %s): %s",
                        self.state.version if self.state else "nothing", exc)
            return False

    def start(self) -> None:
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.online_reload_seconds):
            self.check()


def read_token(settings: Settings) -> str:
    """The bearer token from ``IM_ONLINE_TOKEN_FILE``; ValueError when unset or empty (the
    endpoint never runs without credentials)."""
    path = settings.online_token_file
    if path is None or not Path(path).is_file():
        raise ValueError(f"IM_ONLINE_TOKEN_FILE must name the file holding the endpoint's bearer token "
                         f"(got {path}); the stacks generate secrets/online_token")
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"{path} is empty")
    return token


def make_handler(settings: Settings, reloader: Reloader, token: str) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
        server_version = "interest-migration-online"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="interest-migration"')
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path != "/healthz":
                return self._send(404, {"error": f"no such path {self.path!r}; try GET /healthz or POST /v1/score"})
            state = reloader.state
            self._send(200, {"status": "ready" if state else "no_model", "model_name": settings.model_name,
                             "model_version": state.version if state else None,
                             "loaded_day": state.day.isoformat() if state and state.day else None,
                             "loaded_at": state.loaded_at if state else None,
                             "users": len(state.rows_of) if state else 0, "error": reloader.error,
                             "answers_cached": len(state.answers) if state else 0,
                             "batches": state.batcher.batches if state else 0,
                             "scored": state.batcher.items if state else 0})

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            try:
                self._send(200, self._score())
            except RequestError as exc:
                self._send(exc.status, {"error": str(exc)})

        def _score(self) -> dict[str, Any]:
            if self.path != "/v1/score":
                raise RequestError(404, f"no such path {self.path!r}; POST /v1/score")
            if not hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected):
                self.close_connection = True
                raise RequestError(401, "missing or wrong credentials: send 'Authorization: Bearer <token>' "
                                   "(the token is in the stack's secrets/online_token)")
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError as exc:
                self.close_connection = True
                raise RequestError(411, "a Content-Length header is required") from exc
            if length > settings.online_max_body_bytes:
                self.close_connection = True  # the body is not read
                raise RequestError(413, f"the body is {length} bytes; at most {settings.online_max_body_bytes} "
                                   f"(IM_ONLINE_MAX_BODY_BYTES)")
            try:
                payload = json.loads(self.rfile.read(length) or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError(400, f"the body is not JSON: {exc}") from exc
            user, posted = parse_request(payload, settings.online_max_events)
            state = reloader.state
            if state is None:
                raise RequestError(503, f"no model loaded yet: {reloader.error or 'loading'}")
            return score_user(state, settings, user, posted)

    return Handler


@dataclasses.dataclass
class OnlineServer:
    """A started endpoint: its address and :meth:`stop`."""

    server: ThreadingHTTPServer
    reloader: Reloader
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.reloader.stop()
        self.thread.join(timeout=10)


def start(settings: Settings, *, port: int | None = None) -> OnlineServer:
    """Load the champion and serve it on 127.0.0.1 (``port``, default ``IM_ONLINE_PORT``; 0: a
    free one) in a background thread; returns the running :class:`OnlineServer`."""
    token = read_token(settings)
    reloader = Reloader(settings)
    reloader.start()
    server = ThreadingHTTPServer((HOST, settings.online_port if port is None else port),
                                 make_handler(settings, reloader, token))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="online-http", daemon=True)
    thread.start()
    log.info("online scoring on http://%s:%d (model version %s)", HOST, server.server_address[1],
             reloader.state.version if reloader.state else "none yet")
    return OnlineServer(server, reloader, thread)
