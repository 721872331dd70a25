"""Requests that arrive together are scored together.

:class:`Batcher` has no thread of its own. A request thread that finds no batch running leads:
it takes every request waiting (up to ``max_items``), runs the scoring function once for all of
them and hands each its answer; the others wait. When the leader is done, one of the requests
that queued meanwhile leads the next batch. Nothing waits for a batch to fill: at low load a
request is a batch of one (no added latency), under load the per-call costs (indexing, encoding,
the model call, the contract columns) are paid once per batch. If a batch of several fails, each
of its requests is retried alone, so one bad request cannot fail the others.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
_WAIT_S = 120.0  # a follower gives up after this long without a leader finishing (it never should)


class _Entry(Generic[Item]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class Batcher(Generic[Item]):
    """Runs ``score(items) -> results`` (same length, same order) over the requests waiting together."""

    def __init__(self, max_items: int = 64) -> None:
        self.max_items = max(1, max_items)
        self._pending: collections.deque[_Entry[Item]] = collections.deque()
        self._cond = threading.Condition()
        self._leading = False
        self.batches = 0  # batches run (for tests and /healthz)
        self.items = 0

    def run(self, item: Item, score: Callable[[Sequence[Item]], list[Any]]) -> Any:
        """The result of ``item``, scored in a batch with the items waiting at the same time."""
        entry = _Entry(item)
        with self._cond:
            self._pending.append(entry)
            while not entry.done and self._leading:
                if not self._cond.wait(_WAIT_S):
                    raise TimeoutError(f"no scoring batch finished within {_WAIT_S:.0f} s")
            if not entry.done:
                self._leading = True
                batch = [entry]
                self._pending.remove(entry)
                while self._pending and len(batch) < self.max_items:
                    batch.append(self._pending.popleft())
        if not entry.done:
            try:
                self._score(batch, score)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if entry.error is not None:
            raise entry.error
        return entry.result

    def _score(self, batch: list[_Entry[Item]], score: Callable[[Sequence[Item]], list[Any]]) -> None:
        try:
            results = score([entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"scored {len(results)} results for {len(batch)} requests")
            pairs = list(zip(batch, results, strict=True))
        except Exception as exc:  # noqa: BLE001 - alone, each request gets its own answer or error
            if len(batch) > 1:
                for entry in batch:
                    self._score([entry], score)
                return
            batch[0].error, batch[0].done = exc, True
            return
        self.batches += 1
        self.items += len(batch)
        for entry, result in pairs:
            entry.result, entry.done = result, True
