"""The online scoring endpoint: an asyncio HTTP/1.1 server (standard library) on 127.0.0.1.

- ``POST /v1/score`` (bearer token) ``{"user_id": U, "events": [{item_id, category_id, behavior,
  ts}, ...]}`` -> the contract row of U from the pinned champion (:mod:`pipelines.online.state`).
- ``GET /healthz`` (no auth) -> ``{"status": "ready"|"no_model", "model_version", "loaded_day", ...}``.

Answers: 401 without the token, 400 naming the bad field, 404 for an unknown user who posts no
events, 413 for a body over ``IM_ONLINE_MAX_BODY_BYTES``, 503 while no champion is loaded.
A :class:`Reloader` thread checks the champion alias and the latest clean day every
``IM_ONLINE_RELOAD_SECONDS`` and swaps in a freshly built state when either moved; requests in
flight finish on the state they started with.

One event loop parses every request (keep-alive connections, no thread per connection: handler
threads fighting over the GIL cost more than the scoring) and hands the ones to score to
:class:`BatchScorer`, whose one thread scores all that wait in one vectorised pass.

:func:`start` runs it in a background thread (for devstack and tests); ``python -m pipelines
serve-online`` runs it in the foreground.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.online.state import (
    OnlineState,
    Pending,
    RequestError,
    latest_clean_day,
    load_state,
    parse_request,
    prepare,
    score_batch,
)
from pipelines.platform.secrets import read_secret

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
    return read_secret(path, "online endpoint token (IM_ONLINE_TOKEN_FILE)")  # SecretError is a ValueError


_MAX_LINE = 8192  # bytes of the request line or one header line
_MAX_HEADERS = 100


class BatchScorer:
    """One thread scores; the event loop hands it every request waiting, as one batch per loaded
    state (:func:`~pipelines.online.state.score_batch`: one vectorised pass, each request at its
    own as-of time). Nothing waits for a batch to fill: at low load a request is a batch of one, under
    load the requests that arrived while a batch was scored go together. If a batch of several
    fails, each of its requests is scored alone, so one bad request cannot fail the others."""

    def __init__(self, settings: Settings, score: Callable[..., list[dict[str, Any]]] = score_batch) -> None:
        self.settings, self.score = settings, score
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-score")
        self.waiting: list[tuple[OnlineState, Pending, asyncio.Future]] = []
        self.draining = False
        self.batches = 0
        self.scored = 0

    def submit(self, state: OnlineState, pending: Pending) -> asyncio.Future:
        """A future of ``pending``'s answer (call in the event loop)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((state, pending, future))
        if not self.draining:
            self.draining = True
            loop.create_task(self._drain(loop))
        return future

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while self.waiting:
                batch = self.waiting[:self.settings.online_batch_requests]
                del self.waiting[:len(batch)]
                by_state: dict[int, list[tuple[OnlineState, Pending, asyncio.Future]]] = {}
                for item in batch:
                    by_state.setdefault(id(item[0]), []).append(item)
                for items in by_state.values():
                    results = await loop.run_in_executor(self.executor, self._score_isolated, items[0][0],
                                                         [pending for _, pending, _ in items])
                    self.batches += 1
                    self.scored += len(items)
                    for (_, _, future), result in zip(items, results, strict=True):
                        if future.done():
                            continue
                        if isinstance(result, BaseException):
                            future.set_exception(result)
                        else:
                            future.set_result(result)
        finally:
            self.draining = False

    def _score_isolated(self, state: OnlineState, pendings: list[Pending]) -> list[dict[str, Any] | BaseException]:
        try:
            return list(self.score(state, self.settings, pendings))
        except Exception as exc:  # noqa: BLE001 - alone, each request gets its own answer or error
            if len(pendings) == 1:
                return [exc]
            return [self._score_isolated(state, [one])[0] for one in pendings]

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class _Endpoint:
    """The HTTP/1.1 side: a keep-alive connection per client, requests parsed in the event loop."""

    def __init__(self, settings: Settings, reloader: Reloader, token: str) -> None:
        self.settings, self.reloader = settings, reloader
        self.expected = f"Bearer {token}".encode()
        self.scorer = BatchScorer(settings)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass  # a client that went away or sent a line over the limit: nothing left to answer
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection should close."""
        line = await reader.readline()
        if not line:
            return False
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await self._send(writer, 400, {"error": "malformed request line"}, close=True)
            return False
        method, path, version = parts
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            await self._send(writer, 431, {"error": f"more than {_MAX_HEADERS} headers"}, close=True)
            return False
        wants_close = headers.get("connection", "").lower() == "close" or (
            version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive")
        try:
            status, body, close = await self._route(method, path, headers, reader)
        except RequestError as exc:
            status, body, close = exc.status, {"error": str(exc)}, exc.status in (401, 411, 413)
        except Exception as exc:  # noqa: BLE001 - a bug must not take the endpoint down; the log says what
            log.exception("online request failed")
            status, body, close = 500, {"error": f"internal error: {type(exc).__name__}"}, True
        await self._send(writer, status, body, close=close or wants_close)
        return not (close or wants_close)

    async def _route(self, method: str, path: str, headers: dict[str, str],
                     reader: asyncio.StreamReader) -> tuple[int, dict[str, Any], bool]:
        if method == "GET" and path == "/healthz":
            return 200, self._health(), False
        if path != "/v1/score" or method != "POST":
            raise RequestError(404, f"no such path {method} {path!r}; try GET /healthz or POST /v1/score")
        if not hmac.compare_digest(headers.get("authorization", "").encode(), self.expected):
            raise RequestError(401, "missing or wrong credentials: send 'Authorization: Bearer <token>' "
                               "(the token is in the stack's secrets/online_token)")
        try:
            length = int(headers.get("content-length", ""))
        except ValueError as exc:
            raise RequestError(411, "a Content-Length header is required") from exc
        if length < 0 or length > self.settings.online_max_body_bytes:
            raise RequestError(413, f"the body is {length} bytes; at most {self.settings.online_max_body_bytes} "
                               f"(IM_ONLINE_MAX_BODY_BYTES)")  # the body is not read: the connection closes
        data = await reader.readexactly(length)
        try:
            payload = json.loads(data or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the body is not JSON: {exc}") from exc
        user, posted = parse_request(payload, self.settings.online_max_events)
        state = self.reloader.state
        if state is None:
            raise RequestError(503, f"no model loaded yet: {self.reloader.error or 'loading'}")
        prepared = prepare(state, user, posted)
        if isinstance(prepared, dict):
            return 200, prepared, False
        answer = await self.scorer.submit(state, prepared)
        if posted.num_rows == 0:
            state.answers.put(user, answer)
        return 200, answer, False

    def _health(self) -> dict[str, Any]:
        state = self.reloader.state
        return {"status": "ready" if state else "no_model", "model_name": self.settings.model_name,
                "model_version": state.version if state else None,
                "loaded_day": state.day.isoformat() if state and state.day else None,
                "loaded_at": state.loaded_at if state else None,
                "users": len(state.rows_of) if state else 0, "error": self.reloader.error,
                "answers_cached": len(state.answers) if state else 0,
                "batches": self.scorer.batches, "scored": self.scorer.scored}

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, body: dict[str, Any], *, close: bool) -> None:
        data = json.dumps(body, default=str).encode()
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
                f"Content-Length: {len(data)}", "Server: interest-migration-online"]
        if status == 401:
            head.append('WWW-Authenticate: Bearer realm="interest-migration"')
        if close:
            head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        await writer.drain()


@dataclasses.dataclass
class OnlineServer:
    """A started endpoint: its address and :meth:`stop`."""

    loop: asyncio.AbstractEventLoop
    server: asyncio.Server
    endpoint: _Endpoint
    reloader: Reloader
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass  # connections still open: the loop stops below anyway
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.endpoint.scorer.close()
        self.reloader.stop()


def start(settings: Settings, *, port: int | None = None) -> OnlineServer:
    """Load the champion and serve it on 127.0.0.1 (``port``, default ``IM_ONLINE_PORT``; 0: a
    free one) from an event loop in a background thread; returns the running :class:`OnlineServer`."""
    token = read_token(settings)
    reloader = Reloader(settings)
    reloader.start()
    endpoint = _Endpoint(settings, reloader, token)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="online-http", daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
        endpoint.handle, HOST, settings.online_port if port is None else port, limit=_MAX_LINE), loop).result()
    started = OnlineServer(loop, server, endpoint, reloader, thread)
    log.info("online scoring on %s (model version %s)", started.url,
             reloader.state.version if reloader.state else "none yet")
    return started
