"""Shard planning: read the look-back window of day D once and hand every shard only its users.

A user's shard is the CRC-32 of its UTF-8 id modulo the number of shards (stable across
processes and runs); its *bucket* inside the shard is ``(crc // shards) % buckets``, with as many
buckets as it takes to hold about :data:`BUCKET_EVENTS` events each. :func:`stage_inputs` reads the
clean partitions of the window one day at a time (the next days are fetched while the current one
is split) and appends each day's rows of a bucket to that bucket's Arrow IPC file (zstd),
``staging/scoring/dt=D/shard-NNNNN/bucket-MMMMM.arrow``: a shard then reads one bucket (all days of
its users) at a time, so memory is bounded by the bucket, never by the window. The staging files
are removed after publishing, and by the next plan of the same day.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.config import Settings
from pipelines.contracts import EVENT_SCHEMA, MODEL_INPUT_COLUMNS
from pipelines.data.events import clean_dates
from pipelines.data.fanout import map_io
from pipelines.platform import layout, storage
from pipelines.platform.dates import end_of_day, lookback_window

log = logging.getLogger(__name__)

BUCKET_EVENTS = 1_000_000  # events of one bucket (what a shard holds in memory at a time), estimated
_INPUT_SCHEMA = pa.schema([EVENT_SCHEMA.field(c) for c in MODEL_INPUT_COLUMNS])
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")  # transient: as fast as lz4 here, a third fewer bytes
_DAYS_IN_FLIGHT = 4  # days downloaded and read at once while the main thread splits the current one


def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _crc_table()


def crc32_strings(strings: pa.Array) -> np.ndarray:
    """``zlib.crc32`` of the UTF-8 bytes of every string (uint32), vectorised over the array."""
    strings = strings.cast(pa.string()) if not pa.types.is_string(strings.type) else strings
    if strings.null_count:
        raise ValueError(f"{strings.null_count} null id(s) cannot be hashed")
    offsets = np.frombuffer(strings.buffers()[1], np.int32)[strings.offset:strings.offset + len(strings) + 1]
    data = np.frombuffer(strings.buffers()[2], np.uint8) if strings.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    by_length = np.argsort(-lengths, kind="stable")  # the strings still going are always a prefix
    starts, lengths = offsets[:-1][by_length].astype(np.int64), lengths[by_length]
    crc = np.full(len(lengths), 0xFFFFFFFF, np.uint32)
    for j in range(int(lengths.max(initial=0))):
        live = int(np.count_nonzero(lengths > j))
        part = crc[:live]
        crc[:live] = _CRC_TABLE[(part ^ data[starts[:live] + j]) & 0xFF] ^ (part >> 8)
    out = np.empty(len(crc), np.uint32)
    out[by_length] = crc ^ np.uint32(0xFFFFFFFF)
    return out


def user_hashes(user_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """CRC-32 of every row's user id, hashing each distinct id once."""
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks()
    encoded = pc.dictionary_encode(user_ids)
    return crc32_strings(encoded.dictionary)[encoded.indices.to_numpy(zero_copy_only=False)]


@dataclasses.dataclass(frozen=True)
class CleanDay:
    """One clean partition as listed: its Parquet keys and their bytes (no keys: the folder is empty)."""

    date: dt.date
    keys: list[str]
    size: int


def list_clean_days(settings: Settings, dates: list[dt.date]) -> list[CleanDay]:
    """The Parquet objects of each clean partition of ``dates``: a listing per day, a few at once."""

    def listed(date: dt.date) -> CleanDay:
        objects = [o for o in storage.list_objects(settings, layout.partition_prefix(layout.CLEAN, date))
                   if o.key.endswith(".parquet")]
        return CleanDay(date, [o.key for o in objects], sum(o.size for o in objects))

    return map_io(listed, dates)


def stage_inputs(settings: Settings, day: dt.date, shards: int, *,
                 days: list[CleanDay] | None = None) -> dict[str, Any]:
    """Split the clean events of D's look-back window into one staging file per (shard, bucket)
    (see the module doc). ``days``: the window's clean partitions when the caller listed them already
    (:func:`list_clean_days`). Returns {"keys": [[keys of shard 0's non-empty buckets], ...], "buckets",
    "rows": [rows per shard], "days"}."""
    start, end = lookback_window(day, settings.lookback_days)
    cutoff = pa.scalar(end_of_day(end), type=EVENT_SCHEMA.field("ts").type)
    if days is None:
        days = list_clean_days(settings, clean_dates(settings, start, end))
    removed = storage.delete_prefix(settings, layout.scoring_staging_prefix(day))
    if removed:
        log.info("removed %d staging files of an earlier plan of %s", removed, day)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp, \
            concurrent.futures.ThreadPoolExecutor(max_workers=_DAYS_IN_FLIGHT) as pool:
        staged = _Staging(Path(tmp), shards)
        try:
            # a few days in flight (downloads wait on the store); a consumed day's future is dropped, so
            # its table is freed
            ahead = _DAYS_IN_FLIGHT
            pending = {i: pool.submit(_read_day, settings, d, cutoff, Path(tmp)) for i, d in enumerate(days[:ahead])}
            for i, info in enumerate(days):
                table = pending.pop(i).result()
                if i + ahead < len(days):
                    pending[i + ahead] = pool.submit(_read_day, settings, days[i + ahead], cutoff, Path(tmp))
                if not staged.buckets:
                    staged.buckets = _bucket_count(table.num_rows, info.size, sum(d.size for d in days), shards)
                staged.add(table)
        finally:
            staged.close()
        keys: list[list[str]] = [[] for _ in range(shards)]
        uploads = []
        for (shard, bucket), path in sorted(staged.paths.items()):
            keys[shard].append(layout.scoring_input_key(day, shard, bucket))
            uploads.append(pool.submit(storage.upload_file, settings, path, keys[shard][-1]))
        for upload in uploads:
            upload.result()
    log.info("staged %d events of %s..%s for %s in %d shards x %d buckets", sum(staged.rows), start, end, day,
             shards, max(staged.buckets, 1))
    return {"keys": keys, "buckets": max(staged.buckets, 1), "rows": staged.rows, "days": len(days)}


def _read_day(settings: Settings, info: CleanDay, cutoff: pa.Scalar, folder: Path) -> pa.Table:
    """One day's clean events (through a local file: no Python bytes of the object in memory,
    which the allocator of a reading thread would keep)."""
    tables = []
    for number, key in enumerate(info.keys):
        local = folder / f"{info.date.isoformat()}-{number}.parquet"
        storage.download_file(settings, key, local)
        table = pq.read_table(local, columns=MODEL_INPUT_COLUMNS).select(MODEL_INPUT_COLUMNS)
        local.unlink()
        tables.append(table.filter(pc.less(table["ts"], cutoff)).cast(_INPUT_SCHEMA))
    return pa.concat_tables(tables) if tables else _INPUT_SCHEMA.empty_table()


def _bucket_count(first_rows: int, first_bytes: int, total_bytes: int, shards: int) -> int:
    """Buckets per shard so that one bucket holds about :data:`BUCKET_EVENTS` events, estimating
    the window's events from the first day's bytes per event."""
    if first_rows == 0 or first_bytes == 0:
        return 1
    events = total_bytes * first_rows / first_bytes
    return max(1, math.ceil(events / shards / BUCKET_EVENTS))


class _Staging:
    """The local staging files of one plan: an Arrow IPC writer per non-empty (shard, bucket)."""

    def __init__(self, folder: Path, shards: int) -> None:
        self.folder, self.shards, self.buckets = folder, shards, 0
        self.rows = [0] * shards
        self.paths: dict[tuple[int, int], Path] = {}
        self._writers: dict[tuple[int, int], Any] = {}

    def add(self, table: pa.Table) -> None:
        """Append one day's rows to the files of their (shard, bucket)."""
        if table.num_rows == 0:
            return
        crc = user_hashes(table["user_id"]).astype(np.int64)
        key = (crc % self.shards) * self.buckets + (crc // self.shards) % self.buckets
        # a stable sort of a 16-bit key is a radix sort (linear) in numpy
        order = np.argsort(key.astype(np.uint16) if self.shards * self.buckets <= 1 << 16 else key, kind="stable")
        key = key[order]
        table = table.take(pa.array(order))
        bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            where = divmod(int(key[lo]), self.buckets)
            if where not in self._writers:
                self.paths[where] = self.folder / f"shard-{where[0]:05d}-bucket-{where[1]:05d}.arrow"
                self._writers[where] = pa.ipc.new_file(str(self.paths[where]), _INPUT_SCHEMA, options=_IPC_OPTIONS)
            self._writers[where].write_table(table.slice(lo, hi - lo))
            self.rows[where[0]] += hi - lo

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def read_bucket(path: Path) -> pa.Table:
    """The events of one local staging file (MODEL_INPUT_COLUMNS)."""
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def clear_staging(settings: Settings, day: dt.date) -> int:
    """Remove the staging files of D (after publishing); returns how many were removed."""
    return storage.delete_prefix(settings, layout.scoring_staging_prefix(day))
