"""Shard planning: read the look-back window of day D once and hand every shard only its users.

A user's shard is the CRC-32 of its UTF-8 id modulo the number of shards (stable across
processes and runs); its *bucket* inside the shard is ``(crc // shards) % buckets``.
:func:`stage_inputs` reads the clean partitions of the window one day at a time (the next day is
fetched while the current one is split) and writes one Parquet file per shard,
``staging/scoring/dt=D/shard-NNNNN.parquet``, with one row group per (day, bucket) and a
``_bucket`` column whose row-group statistics name the bucket. :func:`iter_bucket_events` gives a
shard's events one bucket at a time (all days of the bucket's users), so memory is bounded by the
bucket, never by the window. The staging files are removed after publishing, and by the next plan
of the same day.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import logging
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.config import Settings
from pipelines.contracts import EVENT_SCHEMA, MODEL_INPUT_COLUMNS
from pipelines.data.events import clean_dates
from pipelines.platform import layout, storage
from pipelines.platform.dates import end_of_day, lookback_window

log = logging.getLogger(__name__)

BUCKET_EVENTS = 1_000_000  # events of one bucket (what a shard holds in memory at a time), estimated
_BUCKET = "_bucket"
_INPUT_SCHEMA = pa.schema([EVENT_SCHEMA.field(c) for c in MODEL_INPUT_COLUMNS])
_STAGED_SCHEMA = _INPUT_SCHEMA.append(pa.field(_BUCKET, pa.int32(), nullable=False))


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
class _Day:
    date: dt.date
    keys: list[str]
    size: int


def stage_inputs(settings: Settings, day: dt.date, shards: int) -> dict[str, Any]:
    """Split the clean events of D's look-back window into one staging file per shard (see the
    module doc). Returns {"keys": [key per shard], "buckets", "rows": [rows per shard], "days"}."""
    start, end = lookback_window(day, settings.lookback_days)
    cutoff = pa.scalar(end_of_day(end), type=EVENT_SCHEMA.field("ts").type)
    days = []
    for date in clean_dates(settings, start, end):
        objects = [o for o in storage.list_objects(settings, layout.partition_prefix(layout.CLEAN, date))
                   if o.key.endswith(".parquet")]
        days.append(_Day(date, [o.key for o in objects], sum(o.size for o in objects)))
    prefix = layout.scoring_staging_prefix(day)
    removed = storage.delete_prefix(settings, prefix)
    if removed:
        log.info("removed %d staging files of an earlier plan of %s", removed, day)
    keys = [layout.scoring_input_key(day, shard) for shard in range(shards)]
    rows = [0] * shards
    buckets = 0
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp, \
            concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        paths = [Path(tmp) / f"shard-{shard:05d}.parquet" for shard in range(shards)]
        writers = [pq.ParquetWriter(path, _STAGED_SCHEMA, compression="lz4") for path in paths]
        try:
            pending = [pool.submit(_read_day, settings, d, cutoff) for d in days[:2]]
            for i, info in enumerate(days):
                table = pending[i].result()
                if i + 2 < len(days):
                    pending.append(pool.submit(_read_day, settings, days[i + 2], cutoff))
                if not buckets:
                    buckets = _bucket_count(table.num_rows, info.size, sum(d.size for d in days), shards)
                _split(table, shards, buckets, writers, rows)
        finally:
            for writer in writers:
                writer.close()
        for path, key in zip(paths, keys, strict=True):
            storage.upload_file(settings, path, key)
    buckets = max(buckets, 1)
    log.info("staged %d events of %s..%s for %s in %d shards x %d buckets", sum(rows), start, end, day, shards,
             buckets)
    return {"keys": keys, "buckets": buckets, "rows": rows, "days": len(days)}


def _read_day(settings: Settings, info: _Day, cutoff: pa.Scalar) -> pa.Table:
    tables = []
    for key in info.keys:
        table = storage.read_parquet(settings, key, MODEL_INPUT_COLUMNS).select(MODEL_INPUT_COLUMNS)
        tables.append(table.filter(pc.less(table["ts"], cutoff)).cast(_INPUT_SCHEMA))
    return pa.concat_tables(tables) if tables else _INPUT_SCHEMA.empty_table()


def _bucket_count(first_rows: int, first_bytes: int, total_bytes: int, shards: int) -> int:
    """Buckets per shard so that one bucket holds about :data:`BUCKET_EVENTS` events, estimating
    the window's events from the first day's bytes per event."""
    if first_rows == 0 or first_bytes == 0:
        return 1
    events = total_bytes * first_rows / first_bytes
    return max(1, math.ceil(events / shards / BUCKET_EVENTS))


def _split(table: pa.Table, shards: int, buckets: int, writers: list[pq.ParquetWriter], rows: list[int]) -> None:
    """Append one day's rows to the shard files, one row group per non-empty (shard, bucket)."""
    if table.num_rows == 0:
        return
    crc = user_hashes(table["user_id"]).astype(np.int64)
    shard, bucket = crc % shards, (crc // shards) % buckets
    key = shard * buckets + bucket
    order = np.argsort(key, kind="stable")
    key = key[order]
    table = table.take(pa.array(order))
    bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        part = table.slice(lo, hi - lo)
        number, which = divmod(int(key[lo]), buckets)
        part = part.append_column(_STAGED_SCHEMA.field(_BUCKET), pa.array(np.full(hi - lo, which, np.int32)))
        writers[number].write_table(part, row_group_size=hi - lo)
        rows[number] += hi - lo


def iter_bucket_events(path: Path) -> Iterator[pa.Table]:
    """The events of a local staging file one bucket at a time (MODEL_INPUT_COLUMNS), buckets in order."""
    parquet = pq.ParquetFile(path)
    column = parquet.schema_arrow.get_field_index(_BUCKET)
    groups: dict[int, list[int]] = {}
    for i in range(parquet.metadata.num_row_groups):
        stats = parquet.metadata.row_group(i).column(column).statistics
        groups.setdefault(int(stats.min), []).append(i)
    for bucket in sorted(groups):
        yield parquet.read_row_groups(groups[bucket], columns=MODEL_INPUT_COLUMNS)


def clear_staging(settings: Settings, day: dt.date) -> int:
    """Remove the staging files of D (after publishing); returns how many were removed."""
    return storage.delete_prefix(settings, layout.scoring_staging_prefix(day))
