"""Read landed raw files back: the files of one ``raw/events/dt=D/`` partition with their sidecars.

Validation and preprocessing read raw partitions only through :func:`list_raw_files` and
:func:`read_raw_file`; the sidecar (written by :mod:`pipelines.data.landing`) says how to parse
each file (its :class:`~pipelines.data.formats.SourceSpec` and columns).
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.config import Settings
from pipelines.data.formats import BATCH_BYTES, SourceError, SourceSpec
from pipelines.platform import layout, storage

_SIDECAR_CACHE_LIMIT = 10_000


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


def list_raw_files(settings: Settings, date: dt.date) -> tuple[list[RawFile], list[str]]:
    """Landed files of ``raw/events/dt=date/`` with their sidecars, and data keys that lack one.

    Sidecars are cached per process by key and ETag (the volume check reads the sidecars of the
    last partitions for every partition it validates).
    """
    etags = {o.key: o.etag for o in storage.list_objects(settings, layout.partition_prefix(layout.RAW, date))}
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
    return files, orphans


def _read_sidecar(settings: Settings, meta_key: str, etag: str) -> dict[str, Any]:
    cache_key = (settings.s3_endpoint_url, settings.bucket, meta_key, etag)
    meta = _SIDECARS.get(cache_key) if etag else None
    if meta is None:
        meta = storage.get_json(settings, meta_key)
        if len(_SIDECARS) > _SIDECAR_CACHE_LIMIT:
            _SIDECARS.clear()
        _SIDECARS[cache_key] = meta
    return meta


def read_raw_file(settings: Settings, raw: RawFile) -> pa.Table:
    """A landed raw file as an Arrow table with its source columns (CSV: all strings).

    Raises :class:`SourceError` when it cannot be parsed or its columns differ from the sidecar.
    """
    data = storage.get_bytes(settings, raw.key)
    try:
        if raw.key.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(data))
        else:
            if not data.strip():
                return pa.table({c: pa.array([], pa.string()) for c in raw.columns})
            spec = raw.spec
            table = pacsv.read_csv(
                io.BytesIO(data),
                read_options=pacsv.ReadOptions(column_names=None if spec.has_header else raw.columns,
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
