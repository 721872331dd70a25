"""Run many small storage requests at once: a small thread pool for the data steps.

Object-store round trips, not the data, dominate the cost of a partition of a few hundred rows;
boto3 clients are thread-safe, so the steps fetch and write the objects of many partitions at once:
:func:`map_io` (a list of requests), :func:`prefetch` (the next partitions' inputs while one is
computed, within a byte budget) and :class:`Background` (writes that overlap the next computation).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

IO_THREADS = 4  # per pool; a step runs two (fetch ahead, write behind) within boto3's 10 connections


def map_io(fn: Callable[[T], R], items: Iterable[T], *, threads: int = IO_THREADS) -> list[R]:
    """``[fn(x) for x in items]`` with up to ``threads`` calls in flight; results in input order.
    The first exception raised by a call is raised here (after the calls already started finish)."""
    items = list(items)
    if len(items) <= 1 or threads <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


def prefetch(fn: Callable[[T], R], items: Iterable[T], *, weight: Callable[[T], int] = lambda _: 1,
             budget: int = 64, threads: int = IO_THREADS) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` in input order while later items are fetched in the background:
    at most ``budget`` of ``weight`` (e.g. bytes) in flight or waiting, but always the next item."""
    pending: deque[tuple[T, Future[R], int]] = deque()
    queued = 0
    source = iter(items)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        try:
            for item in source:
                w = weight(item)
                while pending and queued + w > budget:
                    done_item, future, done_w = pending.popleft()
                    queued -= done_w
                    yield done_item, future.result()
                pending.append((item, pool.submit(fn, item), w))
                queued += w
            while pending:
                done_item, future, _ = pending.popleft()
                yield done_item, future.result()
        finally:
            for _, future, _ in pending:
                future.cancel()


class Background:
    """Storage writes running in the background while the caller computes the next partition;
    :meth:`wait` waits for all of them and raises the first error. At most ``budget`` bytes of
    submitted data wait at once (:meth:`submit` blocks until older writes finish), so a slow store
    cannot make the data of many partitions pile up in memory."""

    def __init__(self, threads: int = IO_THREADS, budget: int = 192 << 20) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads)
        self._futures: list[Future[Any]] = []
        self._budget = budget
        self._pending = 0
        self._room = threading.Condition()

    def submit(self, fn: Callable[..., Any], *args: Any, weight: int = 0, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` in the background; ``weight``: the bytes it holds until done."""
        with self._room:
            self._room.wait_for(lambda: self._pending == 0 or self._pending + weight <= self._budget)
            self._pending += weight

        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                with self._room:
                    self._pending -= weight
                    self._room.notify_all()

        self._futures.append(self._pool.submit(run))

    def wait(self) -> None:
        try:
            for future in self._futures:
                future.result()
        finally:
            self._futures.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self.close()
