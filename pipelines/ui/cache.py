"""Bounded reads for the UI plugin: cached for a while, never waited on for long.

The plugin runs inside Airflow's API server, so a slow or dead S3 or MLflow must not hold its
request threads. :class:`BoundedCache` runs each read in a small pool of its own, waits at most
``timeout`` seconds for it and then answers with the last good value (marked stale) or raises
:class:`SlowSource`; the read itself goes on in the pool and fills the cache when it ends. One read
per key is in flight at a time, so a down service costs at most ``workers`` threads, however many
pages are opened. Values are kept ``ttl`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any


class SlowSource(TimeoutError):
    """A read did not answer in time and no earlier value is cached; the message says which."""


@dataclass(frozen=True)
class Cached:
    """A value, when it was read, and whether it is older than the cache's ttl (a slow source)."""

    value: Any
    read_at: float
    stale: bool = False


class BoundedCache:
    """A time-bounded, single-flight, TTL cache of read functions (see the module docstring)."""

    def __init__(self, workers: int = 4, max_entries: int = 256) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="im-ui-read")
        self._lock = threading.RLock()  # a read that ends at once stores from inside get()
        self._values: dict[Hashable, Cached] = {}
        self._inflight: dict[Hashable, Future[Any]] = {}
        self._max_entries = max_entries

    def _store(self, key: Hashable, future: Future[Any]) -> None:
        with self._lock:
            self._inflight.pop(key, None)
            if future.exception() is None:
                if len(self._values) >= self._max_entries:
                    oldest = min(self._values, key=lambda k: self._values[k].read_at)
                    self._values.pop(oldest)
                self._values[key] = Cached(future.result(), time.monotonic())

    def get(self, key: Hashable, read: Callable[[], Any], *, ttl: float, timeout: float, what: str) -> Cached:
        """The value of ``read()`` for ``key``: cached when younger than ``ttl``, else read now within
        ``timeout`` seconds. Raises what ``read`` raised, or :class:`SlowSource` naming ``what``."""
        now = time.monotonic()
        with self._lock:
            cached = self._values.get(key)
            if cached is not None and now - cached.read_at < ttl:
                return cached
            future = self._inflight.get(key)
            if future is None:
                future = self._pool.submit(read)
                self._inflight[key] = future
                future.add_done_callback(lambda done: self._store(key, done))
        try:
            return Cached(future.result(timeout=timeout), time.monotonic())
        except FutureTimeout:
            if cached is not None:
                return Cached(cached.value, cached.read_at, stale=True)
            raise SlowSource(f"{what} did not answer within {timeout:g}s") from None

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
