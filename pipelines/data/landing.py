"""Land raw behaviour logs under ``raw/events/dt=D/``: the first step of the data layer.

:func:`land_events` reads a local path or an ``s3://`` URI in one of the formats of
:mod:`pipelines.data.formats` and writes the rows *unchanged* (same columns, same text) into one
raw file per UTC event date, ``raw/events/dt=D/<name>.csv`` (or ``.parquet`` for a Parquet
source), with a sidecar ``<name>.meta.json`` that says how to read it (format, column map,
behaviour map, timestamp format). It streams the source in bounded batches
(:mod:`pipelines.data.routing`), so a file of any size lands in bounded memory.

Rows that cannot be placed in a date partition are not dropped: they go to
``quarantine/events/unplaced/<name>.parquet`` with a reason. With a data window configured
(``IM_WINDOW_START`` / ``IM_WINDOW_END``), rows outside it are set aside there too
(``outside_window``): junk timestamps then never become thousands of one-row partitions. A file that cannot be read at all
raises :class:`~pipelines.data.formats.SourceError` with the file and the rule, and nothing is
written. A landing report goes to ``reports/landing/<name>.json``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.config import Settings
from pipelines.data.fanout import IO_THREADS, map_io
from pipelines.data.formats import SourceError, SourceSpec, build_spec
from pipelines.data.routing import SplitStats, split_csv, split_parquet
from pipelines.data.rules import window_bounds_us
from pipelines.platform import layout, storage

log = logging.getLogger(__name__)

RAW_SUFFIXES = (".csv", ".parquet")  # a landed raw file keeps its source's format
SMALL_FILE_BYTES = 8 << 20  # day files below this are sent in one request
_NAME = r"[A-Za-z0-9_.\-]{1,120}"


@dataclass
class LandResult:
    """What one landing wrote: dates and raw keys, rows landed, rows quarantined (by reason)."""

    name: str
    fmt: str
    source: str
    rows_read: int
    rows: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    dates: list[dt.date]
    keys: list[str]
    quarantine_key: str | None
    rows_by_date: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dates"] = [d.isoformat() for d in self.dates]
        return out


def default_name(source: str | Path) -> str:
    """A landing name from the source's file name: ``UserBehavior_head.csv.gz`` -> ``UserBehavior_head``."""
    base = str(source).rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".gz", ".csv", ".parquet", ".tsv", ".txt"):
        base = base.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", base) or "source"


def land_events(settings: Settings, source: str | Path, fmt: str, *, column_map: dict[str, str] | None = None,
                behavior_map: dict[str, str] | None = None, name: str | None = None,
                **spec_options: Any) -> LandResult:
    """Land ``source`` (local path or s3:// URI) of format ``fmt`` under ``raw/events/dt=D/<name>.*``.

    One raw file per UTC event date with the source rows unchanged, plus ``<name>.meta.json``
    (format, maps, row count). Rows that cannot be placed are quarantined under
    ``quarantine/events/unplaced/<name>.parquet`` with a reason (with a configured window, rows
    outside it as ``outside_window``); a landing report goes to
    ``reports/landing/<name>.json``. Landing the same ``name`` again replaces its earlier files in
    every partition. Raises :class:`SourceError` when the file cannot be read at all.
    """
    spec = build_spec(fmt, column_map, behavior_map, **spec_options)
    name = name or default_name(source)
    if not re.fullmatch(_NAME, name):
        raise SourceError(f"landing name {name!r}: use letters, digits, '_', '.', '-'")
    scratch = Path(settings.work_dir) / "landing" / name
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    try:
        path = _resolve_source(settings, source, scratch)
        now = dt.datetime.now(dt.UTC)
        split = split_parquet if fmt == "parquet" else split_csv
        stats = split(path, spec, scratch, now, window=window_bounds_us(settings))
        result = _publish(settings, name, str(source), spec, stats, now)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("landed %s (%s): %d rows into %d partitions, %d quarantined %s", source, fmt, result.rows,
             len(result.dates), result.quarantined, result.quarantine_reasons or "")
    return result


def _resolve_source(settings: Settings, source: str | Path, scratch: Path) -> Path:
    """A local path to read: the path itself, or an ``s3://`` source downloaded into ``scratch``."""
    text = str(source)
    if text.startswith("s3://"):
        target = scratch / Path(storage.S3Uri.parse(text).key).name
        try:
            storage.download_uri(settings, text, target)
        except storage.StorageError as exc:
            raise SourceError(str(exc)) from exc
        return target
    path = Path(text)
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    return path


def _delete_previous(settings: Settings, name: str) -> int:
    """Remove earlier landings of ``name`` from every raw partition (landing replaces, never appends)."""
    file_names = {f"{name}{suffix}" for suffix in (*RAW_SUFFIXES, layout.META_SUFFIX)}
    keys = [k for k in storage.list_keys(settings, layout.area_prefix(layout.RAW))
            if k.rsplit("/", 1)[-1] in file_names]
    return storage.delete_keys(settings, keys)


def _publish(settings: Settings, name: str, source: str, spec: SourceSpec, stats: SplitStats,
             now: dt.datetime) -> LandResult:
    """Upload the routed scratch files with their sidecars, the unplaced rows and the landing report."""
    _delete_previous(settings, name)

    def upload(day: dt.date) -> str:
        key = layout.raw_key(day, name, stats.suffix)
        path = stats.files[day]
        if path.stat().st_size < SMALL_FILE_BYTES:  # one request, without the transfer manager's threads
            storage.put_bytes(settings, key, path.read_bytes())
        else:
            storage.upload_file(settings, path, key)
        meta = {"name": name, "source": source, "format": spec.fmt, "spec": spec.to_dict(),
                "columns": stats.columns, "file": key, "rows": stats.rows_by_date[day],
                "landed_at": now.isoformat()}
        storage.put_json(settings, layout.raw_meta_key(day, name), meta)
        return key

    big = sum(1 for p in stats.files.values() if p.stat().st_size >= SMALL_FILE_BYTES)
    keys = map_io(upload, sorted(stats.files), threads=1 if big else IO_THREADS)  # a big upload runs its parts in parallel
    q_key = layout.unplaced_key(name)
    rejects = stats.rejects()
    if rejects.num_rows:
        table = pa.table({"source": pa.array([source] * rejects.num_rows, pa.string()), "raw": rejects["raw"],
                          "reason": rejects["reason"], "detail": rejects["detail"], "line": rejects["line"]})
        storage.write_parquet(settings, q_key, table)
    else:
        storage.delete_key(settings, q_key)
    rows = sum(stats.rows_by_date.values())
    quarantined = rejects.num_rows
    if rows + quarantined != stats.rows_read:
        raise AssertionError(f"landing {source}: rows read {stats.rows_read} != landed {rows} + "
                             f"quarantined {quarantined}")
    result = LandResult(name=name, fmt=spec.fmt, source=source, rows_read=stats.rows_read, rows=rows,
                        quarantined=quarantined, quarantine_reasons=dict(stats.reasons),
                        dates=sorted(stats.rows_by_date), keys=keys,
                        quarantine_key=q_key if quarantined else None,
                        rows_by_date={d.isoformat(): n for d, n in sorted(stats.rows_by_date.items())})
    storage.put_json(settings, layout.landing_report_key(name), result.to_dict())
    return result
