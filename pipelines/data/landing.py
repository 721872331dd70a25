"""Land raw behaviour logs under ``raw/events/dt=D/``: the first step of the data layer.

:func:`land_events` reads a local path or an ``s3://`` URI in one of the formats of
:mod:`pipelines.data.formats` and writes the rows *unchanged* (same columns, same text) into one
raw file per UTC event date, ``raw/events/dt=D/<name>.csv.zst`` (the CSV text, zstd-compressed: a
quarter of the bytes to store and move) or ``.parquet`` for a Parquet source, with a sidecar
``<name>.meta.json`` that says how to read it (format, column map, behaviour map, timestamp
format). It streams the source in bounded batches (:mod:`pipelines.data.routing`), so a file of any
size lands in bounded memory.

Rows that cannot be placed in a date partition are not dropped: they go to
``quarantine/events/unplaced/<name>.parquet`` with a reason. With a data window configured
(``IM_WINDOW_START`` / ``IM_WINDOW_END``), rows outside it are set aside there too
(``outside_window``): junk timestamps then never become thousands of one-row partitions. A file that cannot be read at all
raises :class:`~pipelines.data.formats.SourceError` with the file and the rule, and nothing is
written. A landing report goes to ``reports/landing/<name>.json``.

Landing the same name again replaces the earlier landing without a moment where data is lost: the
new files are written complete under ``staging/landing/<landing id>/`` first, then copied over the
raw keys (each an atomic replace of one object), and only then are the earlier landing's keys of
days the new file does not cover deleted (per-key errors of the batch delete fail the landing). A
crash before the copies leaves the earlier landing untouched. When the name comes from the file
name (no explicit ``name``) and that name was landed from a different file (another path or URI,
and other bytes by SHA-256), the landing is refused unless ``replace=True`` (``--replace``): daily
drops that are all called ``export.csv`` must not wipe each other. The same path landed again
counts as a corrected version of that file and replaces it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import re
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.data.canonical import guess_unix_unit, looks_iso, parse_ts
from pipelines.data.fanout import IO_THREADS, map_io
from pipelines.data.formats import SourceError, SourceSpec, build_spec
from pipelines.data.routing import SplitStats, split_csv, split_parquet
from pipelines.data.rules import window_bounds_us
from pipelines.platform import layout, storage
from pipelines.privacy import pseudonym

log = logging.getLogger(__name__)

SMALL_FILE_BYTES = 8 << 20  # day files below this are sent in one request


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
    source_sha256: str = ""
    landing_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dates"] = [d.isoformat() for d in self.dates]
        return out


def default_name(source: str | Path) -> str:
    """A landing name from the source's file name: ``UserBehavior_head.csv.gz`` -> ``UserBehavior_head``."""
    base = str(source).rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".gz", ".zst", ".csv", ".parquet", ".tsv", ".txt"):
        base = base.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", base) or "source"


def _implausible_example(rejects: pa.Table, spec: SourceSpec) -> str:
    """How the first implausible timestamp was read (a Tmall ``mmdd`` like ``1111`` reads as the year
    1111): the hint of a file whose every row was quarantined."""
    details = rejects.filter(pc.equal(rejects["reason"], "implausible_timestamp"))["detail"]
    found = re.match(r"(.*?)='(.*)' ", details[0].as_py() or "") if len(details) else None
    if found is None:
        return ""
    column, text = found.groups()
    micros = parse_ts(pa.array([text]), spec.ts_format, spec.timezone)[0].as_py()
    try:
        when = (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, TypeError):
        return ""
    return (f"; timestamps must lie between 2000-01-01 and tomorrow, and {column}={text!r} reads as {when} "
            f"(with --ts-format {spec.ts_format}): a date without its year, or another --ts-format?")


def land_events(settings: Settings, source: str | Path, fmt: str, *, column_map: dict[str, str] | None = None,
                behavior_map: dict[str, str] | None = None, name: str | None = None, replace: bool = False,
                **spec_options: Any) -> LandResult:
    """Land ``source`` (local path or s3:// URI) of format ``fmt`` under ``raw/events/dt=D/<name>.*``.

    One raw file per UTC event date with the source rows unchanged, plus ``<name>.meta.json``
    (format, maps, row count). Rows that cannot be placed are quarantined under
    ``quarantine/events/unplaced/<name>.parquet`` with a reason (with a configured window, rows
    outside it as ``outside_window``); a landing report goes to
    ``reports/landing/<name>.json``. Landing the same ``name`` again replaces its earlier files in
    every partition, once the new ones are complete (see the module doc); a name taken from the file
    name that was landed from a different file is refused unless ``replace``. Raises
    :class:`SourceError` when the file cannot be read at all or the replace is refused.
    """
    spec = build_spec(fmt, column_map, behavior_map, **spec_options)
    implicit = name is None
    name = name or default_name(source)
    if not layout.is_name(name):  # also a folder of the work dir: '.' or '..' would be the work dir itself
        raise SourceError(f"landing name {name!r}: use letters, digits, '_', '.', '-' (not only dots)")
    scratch = Path(settings.work_dir) / "landing" / name
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    try:
        path = _resolve_source(settings, source, scratch)
        digest = _sha256(path)
        if implicit and not replace:
            _refuse_other_file(settings, name, str(source), digest)
        now = dt.datetime.now(dt.UTC)
        split = split_parquet if fmt == "parquet" else split_csv
        stats = split(path, spec, scratch, now, window=window_bounds_us(settings),
                      pseudonymize=pseudonym.active(settings))
        if stats.rows_read == 0:  # a header without rows: an export that went wrong
            after = " after the header" if spec.has_header else ""
            raise SourceError(f"{source}: no data rows{after}: nothing to land")
        result = _publish(settings, name, str(source), spec, stats, now, digest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("landed %s (%s): %d rows into %d partitions, %d quarantined %s", source, fmt, result.rows,
             len(result.dates), result.quarantined, result.quarantine_reasons or "")
    return result


def _resolve_source(settings: Settings, source: str | Path, scratch: Path) -> Path:
    """A local path to read: the path itself, or an ``s3://`` source downloaded into ``scratch``."""
    text = str(source)
    if text.startswith("s3://"):
        loc = storage.S3Uri.parse(text)
        if not loc.bucket or not loc.key or loc.key.endswith("/"):
            raise SourceError(f"{text}: an s3:// source names a bucket and a file: s3://bucket/path/file.csv")
        target = scratch / Path(loc.key).name
        try:
            storage.download_uri(settings, text, target)
        except storage.StorageError as exc:
            raise SourceError(str(exc)) from exc
        return target
    path = Path(text)
    if path.is_dir():
        raise SourceError(f"{path}: is a folder; land one file at a time (a command per file, each with its own "
                          "--name)")
    if path.exists() and not path.is_file():
        raise SourceError(f"{path}: not a regular file (a pipe, socket or device): write it to a file and land that")
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _refuse_other_file(settings: Settings, name: str, source: str, digest: str) -> None:
    """Raise :class:`SourceError` when ``name`` was landed before from another file (another path or
    URI) with other bytes. The same path again counts as a corrected version of the same file."""
    key = layout.landing_report_key(name)
    if not storage.exists(settings, key):
        return
    earlier = storage.get_json(settings, key)
    if earlier.get("source") == source or earlier.get("source_sha256") == digest:
        return
    raise SourceError(f"{source}: landing name {name!r} (from the file name) already holds rows landed from "
                      f"{earlier.get('source')} at {earlier.get('landing_id') or 'an earlier landing'}, a different "
                      f"file; landing it would replace those rows in every partition. Give this file its own "
                      f"--name, or pass --replace to replace them")


def _previous_keys(settings: Settings, name: str) -> list[str]:
    """The raw keys (data and sidecars) of earlier landings of ``name``, in every partition."""
    file_names = {f"{name}{suffix}" for suffix in (*layout.RAW_SUFFIXES, layout.META_SUFFIX)}
    return [k for k in storage.list_keys(settings, layout.area_prefix(layout.RAW))
            if k.rsplit("/", 1)[-1] in file_names]


ABANDONED_AFTER = dt.timedelta(days=1)


def _remove_abandoned_staging(settings: Settings, now: dt.datetime) -> None:
    """Delete what landings that died before cleaning up left in staging (their ids start with
    their UTC start time; one older than :data:`ABANDONED_AFTER` is no longer running)."""
    prefix = layout.LANDING_STAGING + "/"
    stale = []
    for key in storage.list_keys(settings, prefix):
        started = key[len(prefix):].split("/", 1)[0].split("Z-", 1)[0]
        try:
            when = dt.datetime.strptime(started, "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
        except ValueError:
            continue
        if now - when > ABANDONED_AFTER:
            stale.append(key)
    if stale:
        storage.delete_keys(settings, stale)
        log.info("removed %d staged keys of landings that died more than %s ago", len(stale), ABANDONED_AFTER)


def _publish(settings: Settings, name: str, source: str, spec: SourceSpec, stats: SplitStats,
             now: dt.datetime, digest: str) -> LandResult:
    """Stage the routed scratch files complete, copy them over the raw keys with their sidecars, then
    delete what is left of the earlier landing; the unplaced rows and the landing report last."""
    rows = sum(stats.rows_by_date.values())
    rejects = stats.rejects()
    quarantined = rejects.num_rows
    if rows + quarantined != stats.rows_read:
        raise AssertionError(f"landing {source}: rows read {stats.rows_read} != landed {rows} + "
                             f"quarantined {quarantined}")
    landing_id = f"{now:%Y%m%dT%H%M%S}Z-{secrets.token_hex(3)}"
    previous = _previous_keys(settings, name)

    def stage(day: dt.date) -> str:
        key = layout.raw_key(day, name, stats.suffix)
        path, staged = stats.files[day], layout.landing_staging_key(landing_id, key)
        if path.stat().st_size < SMALL_FILE_BYTES:  # one request, without the transfer manager's threads
            storage.put_bytes(settings, staged, path.read_bytes())
        else:
            storage.upload_file(settings, path, staged)
        return key

    def place(day: dt.date) -> str:
        key = layout.raw_key(day, name, stats.suffix)
        storage.copy_key(settings, layout.landing_staging_key(landing_id, key), key,
                         size=stats.files[day].stat().st_size)
        meta = {"name": name, "source": source, "format": spec.fmt, "source_encoding": spec.encoding,
                "spec": dataclasses.replace(spec, encoding="utf-8").to_dict(),  # raw files are written as UTF-8
                "columns": stats.columns, "file": key, "rows": stats.rows_by_date[day],
                "landed_at": now.isoformat(), "landing_id": landing_id, "source_sha256": digest}
        storage.put_json(settings, layout.raw_meta_key(day, name), meta)
        return key

    days = sorted(stats.files)
    big = sum(1 for p in stats.files.values() if p.stat().st_size >= SMALL_FILE_BYTES)
    keys = map_io(stage, days, threads=1 if big else IO_THREADS)  # a big upload runs its parts in parallel
    map_io(place, days, threads=IO_THREADS)  # the new set is complete in staging: now replace
    new = set(keys) | {layout.raw_meta_key(day, name) for day in days}
    stale = [k for k in previous if k not in new]
    if stale:
        storage.delete_keys(settings, stale)  # raises naming any key S3 did not delete
        log.info("removed %d raw keys of the earlier landing of %s", len(stale), name)
    storage.delete_prefix(settings, layout.landing_staging_prefix(landing_id))
    _remove_abandoned_staging(settings, now)
    q_key = layout.unplaced_key(name)
    if rejects.num_rows:
        table = pa.table({"source": pa.array([source] * rejects.num_rows, pa.string()), "raw": rejects["raw"],
                          "reason": rejects["reason"], "detail": rejects["detail"], "line": rejects["line"]})
        storage.write_parquet(settings, q_key, table)
    else:
        storage.delete_key(settings, q_key)
    result = LandResult(name=name, fmt=spec.fmt, source=source, rows_read=stats.rows_read, rows=rows,
                        quarantined=quarantined, quarantine_reasons=dict(stats.reasons),
                        dates=sorted(stats.rows_by_date), keys=keys,
                        quarantine_key=q_key if quarantined else None,
                        rows_by_date={d.isoformat(): n for d, n in sorted(stats.rows_by_date.items())},
                        source_sha256=digest, landing_id=landing_id)
    storage.put_json(settings, layout.landing_report_key(name), result.to_dict())
    if rows == 0 and quarantined:
        top = ", ".join(f"{r} ({n})" for r, n in sorted(stats.reasons.items(), key=lambda kv: -kv[1])[:3])
        unit = guess_unix_unit(rejects.filter(pc.equal(rejects["reason"], "implausible_timestamp"))["detail"])
        hint = (f"; the timestamps look like {unit} since 1970: land it with --ts-format {unit} (or unix_auto)"
                if unit and unit != spec.ts_format else "")
        unparseable = rejects.filter(pc.equal(rejects["reason"], "unparseable_timestamp"))["detail"]
        if not hint and spec.ts_format != "iso" and looks_iso(unparseable):
            hint = "; the timestamps look like ISO 8601 dates: land it with --ts-format iso"
        if not hint and spec.ts_format == "iso" and (unix := guess_unix_unit(unparseable)):
            hint = f"; the timestamps look like Unix times ({unix}), not ISO 8601 dates: land it with --ts-format {unix}"
        if not hint and stats.reasons.get("implausible_timestamp"):
            hint = _implausible_example(rejects, spec)
        if not hint and stats.reasons.get("wrong_column_count") == quarantined:
            if pc.all(pc.equal(pc.utf8_trim_whitespace(pc.cast(rejects["raw"], pa.string())), "")).as_py():
                hint = ("; they are lines of blanks only (spaces or tabs): the file holds no data rows"
                        + (" after its header" if spec.has_header else ""))
            else:
                counts = rejects["detail"].value_counts().to_pylist()
                common = max(counts, key=lambda c: c["counts"])["values"]  # e.g. "5 columns, expected 4"
                hint = (f"; most rows have {common} (a delimiter at the end of every row, or another --delimiter?)"
                        if common else "")
        raise SourceError(f"{source}: every one of its {quarantined} rows was quarantined ({top}){hint}; nothing "
                          f"landed. The rows and their reasons are in s3://{settings.bucket}/{q_key}; check the "
                          f"format options (--ts-format, --map, --no-header, --encoding) and land it again")
    return result
