"""Read landed raw files back: the files of one ``raw/events/dt=D/`` partition with their sidecars.

Validation and preprocessing read raw partitions only through :func:`list_raw_partitions` (many
days at once: one listing, sidecars fetched in parallel) or :func:`list_raw_files` (one day), and
:func:`read_raw_file` / :func:`parse_raw_file`; the sidecar (written by
:mod:`pipelines.data.landing`) says how to parse each file (its
:class:`~pipelines.data.formats.SourceSpec` and columns).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.config import Settings
from pipelines.data.fanout import map_io
from pipelines.data.formats import BATCH_BYTES, SourceError, SourceSpec
from pipelines.platform import layout, storage

_SIDECAR_CACHE_LIMIT = 20_000
FEW_DAYS = 3  # up to this many days are listed one prefix each; more, by one listing of the raw area


@dataclass(frozen=True)
class RawFile:
    """One landed raw file of a partition and its sidecar."""

    key: str
    name: str
    spec: SourceSpec
    columns: list[str]
    rows: int


# Sidecars by (endpoint, bucket, key, ETag): a changed sidecar has a new ETag, so it is never stale.
_SIDECARS: dict[tuple[str, str, str, str], dict[str, Any]] = {}


@dataclass(frozen=True)
class RawPartition:
    """One ``raw/events/dt=D/`` partition: every object under it, its data files with their sidecars,
    and the data keys that lack one."""

    date: dt.date
    objects: tuple[storage.ObjectInfo, ...]
    files: tuple[RawFile, ...]
    orphans: tuple[str, ...]

    @property
    def rows(self) -> int:
        """Rows landed in the partition, from the sidecars."""
        return sum(f.rows for f in self.files)


def _date_of(key: str) -> dt.date | None:
    folder = key[len(layout.area_prefix(layout.RAW)):].split("/", 1)[0]
    try:
        return dt.date.fromisoformat(folder.removeprefix("dt="))
    except ValueError:
        return None


def list_raw_partitions(settings: Settings, dates: Iterable[dt.date] | None = None) -> dict[dt.date, RawPartition]:
    """Raw partitions by date (only ``dates`` when given, those with no object left out), their
    sidecars read in parallel and cached per process by key and ETag. A few days are listed one
    prefix each, many with one listing of the whole raw area."""
    wanted = None if dates is None else set(dates)
    if wanted is None:
        objects = storage.list_objects(settings, layout.area_prefix(layout.RAW))
    else:
        objects = list_partition_objects(settings, layout.RAW, wanted)
    by_date: dict[dt.date, list[storage.ObjectInfo]] = {}
    for obj in objects:
        day = _date_of(obj.key)
        if day is not None and (wanted is None or day in wanted):
            by_date.setdefault(day, []).append(obj)
    metas = [o for objs in by_date.values() for o in objs if o.key.endswith(layout.META_SUFFIX)]
    map_io(lambda o: _read_sidecar(settings, o.key, o.etag), [o for o in metas if not _cached(settings, o)])
    return {day: _partition(settings, day, objs) for day, objs in sorted(by_date.items())}


def list_partition_objects(settings: Settings, area: str, dates: Iterable[dt.date]) -> list[storage.ObjectInfo]:
    """Every object under ``<area>/dt=D/`` for the ``dates``: one listing per day for a few days,
    one listing of the area for many."""
    days = sorted(set(dates))
    if len(days) <= FEW_DAYS:
        return [o for d in days for o in storage.list_objects(settings, layout.partition_prefix(area, d))]
    prefixes = tuple(layout.partition_prefix(area, d) for d in days)
    return [o for o in storage.list_objects(settings, layout.area_prefix(area)) if o.key.startswith(prefixes)]


def _partition(settings: Settings, date: dt.date, objects: list[storage.ObjectInfo]) -> RawPartition:
    etags = {o.key: o.etag for o in objects}
    files: list[RawFile] = []
    orphans: list[str] = []
    for key in sorted(etags):
        if key.endswith(layout.META_SUFFIX):
            continue
        meta_key = layout.meta_key_of(key)
        if meta_key not in etags:
            orphans.append(key)
            continue
        meta = _read_sidecar(settings, meta_key, etags[meta_key])
        files.append(RawFile(key=key, name=meta["name"], spec=SourceSpec.from_dict(meta["spec"]),
                             columns=list(meta["columns"]), rows=int(meta["rows"])))
    return RawPartition(date=date, objects=tuple(sorted(objects, key=lambda o: o.key)), files=tuple(files),
                        orphans=tuple(orphans))


def list_raw_files(settings: Settings, date: dt.date) -> tuple[list[RawFile], list[str]]:
    """Landed files of ``raw/events/dt=date/`` with their sidecars, and data keys that lack one.

    Sidecars are cached per process by key and ETag (the volume check reads the sidecars of the
    last partitions for every partition it validates).
    """
    part = _partition(settings, date, storage.list_objects(settings, layout.partition_prefix(layout.RAW, date)))
    return list(part.files), list(part.orphans)


def _cached(settings: Settings, obj: storage.ObjectInfo) -> bool:
    return bool(obj.etag) and (settings.s3_endpoint_url, settings.bucket, obj.key, obj.etag) in _SIDECARS


def _read_sidecar(settings: Settings, meta_key: str, etag: str) -> dict[str, Any]:
    cache_key = (settings.s3_endpoint_url, settings.bucket, meta_key, etag)
    meta = _SIDECARS.get(cache_key) if etag else None
    if meta is None:
        meta = storage.get_json(settings, meta_key)
        if len(_SIDECARS) > _SIDECAR_CACHE_LIMIT:
            _SIDECARS.clear()
        _SIDECARS[cache_key] = meta
    return meta


def unpack_raw(key: str, data: bytes, where: str | None = None) -> bytes:
    """The bytes of the landed raw file ``key`` as its format has them: CSV text for ``.csv.zst``
    (decompressed), the stored bytes for any other suffix. Raises :class:`SourceError` naming the file
    (``where``, else the key) for broken zstd data."""
    if not key.endswith(".zst"):
        return data
    try:
        return pa.CompressedInputStream(pa.BufferReader(data), "zstd").read()
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{where or key}: unreadable raw file: broken zstd data ({exc}); "
                          "land the source file again") from exc


def pack_raw(key: str, data: bytes) -> bytes:
    """``data`` (CSV text or Parquet bytes) as the landed raw file ``key`` stores it: zstd for ``.csv.zst``."""
    if not key.endswith(".zst"):
        return data
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as packed:
        packed.write(data)
    return sink.getvalue().to_pybytes()


def read_raw_file(settings: Settings, raw: RawFile) -> pa.Table:
    """A landed raw file as an Arrow table with its source columns (CSV: all strings).

    Raises :class:`SourceError` when it cannot be parsed or its columns differ from the sidecar.
    """
    return parse_raw_file(settings, raw, storage.get_bytes(settings, raw.key))


def parse_raw_file(settings: Settings, raw: RawFile, data: bytes) -> pa.Table:
    """The bytes ``data`` of the landed raw file ``raw`` (as stored) parsed as :func:`read_raw_file` does."""
    return parse_unpacked(settings, raw, unpack_raw(raw.key, data, storage.uri(settings, raw.key)))


def parse_unpacked(settings: Settings, raw: RawFile, data: bytes) -> pa.Table:
    """:func:`parse_raw_file` of bytes :func:`unpack_raw` already gave (CSV text or Parquet bytes)."""
    try:
        if raw.key.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(data))
        else:
            if not data or data.isspace():
                return pa.table({c: pa.array([], pa.string()) for c in raw.columns})
            spec = raw.spec
            table = pacsv.read_csv(
                io.BytesIO(data),
                # the landed names (a header's unnamed or repeated columns were named at landing)
                read_options=pacsv.ReadOptions(column_names=raw.columns, skip_rows=1 if spec.has_header else 0,
                                               block_size=BATCH_BYTES),
                parse_options=pacsv.ParseOptions(delimiter=spec.delimiter),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in raw.columns},
                    strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise SourceError(f"{storage.uri(settings, raw.key)}: unreadable raw file: {exc}") from exc
    if table.column_names != raw.columns:
        missing = [c for c in raw.columns if c not in table.column_names]
        extra = [c for c in table.column_names if c not in raw.columns]
        raise SourceError(f"{storage.uri(settings, raw.key)}: columns {table.column_names} differ from the "
                          f"landed columns {raw.columns} (missing {missing}, extra {extra}; rule: columns)")
    return table
