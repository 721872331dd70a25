"""The inbox: files dropped into ``inbox/events/`` of the bucket are landed by the ingest DAG.

A producer uploads the data file first, then a *manifest* ``<anything>.manifest.json`` that names
it and says how to read it; the manifest is the "ready" signal, so a half-uploaded data file is
never picked up. The manifest is a column-map file (docs/data.md) plus three keys::

    {"file": "export-2017-12-04.csv.gz",     # the data file in inbox/events/ (required)
     "format": "taobao",                      # taobao | ciao | csv | parquet (required)
     "name": "shop-eu-2017-12-04",            # landing name (optional, default <stem>-<etag>)
     "columns": {...}, "behavior_map": {...}, "ts_format": "unix_ms", ...}   # csv / parquet

Each announced file is landed through :func:`pipelines.data.landing.land_events` (the same
adapters as ``python -m pipelines land``), then moved with its manifest to
``inbox/processed/<batch>/`` (with ``landing.json``, what landing wrote) or, when it cannot be
landed, to ``inbox/failed/<batch>/`` (with ``error.json`` naming the file and the rule). Nothing is
deleted from the inbox before its copy exists.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.config import Settings
from pipelines.data.formats import FORMATS, MAP_FILE_KEYS, SourceError, read_column_map_file
from pipelines.platform import layout, storage

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


class InboxError(ValueError):
    """A manifest cannot be used; the message names the manifest and the field."""


@dataclass(frozen=True)
class Announcement:
    """One manifest of the inbox, parsed: which data file, which format, landing name and options."""

    manifest_key: str
    data_key: str
    fmt: str
    name: str | None
    options: dict[str, Any]


def batch_id(run_id: str) -> str:
    """A folder-safe id of an ingest run (an Airflow run id holds ':' and '+'); a name of only dots
    (``--batch ..``) would leave ``inbox/processed/``, so its dots become '_'."""
    safe = _UNSAFE.sub("_", run_id)[:120] or "batch"
    return safe if safe.strip(".") else safe.replace(".", "_")


def pending_manifests(settings: Settings) -> list[str]:
    """Keys of the manifests waiting in ``inbox/events/``, oldest name first."""
    return [k for k in storage.list_keys(settings, layout.area_prefix(layout.INBOX))
            if k.endswith(layout.INBOX_MANIFEST_SUFFIX) and "/" not in k[len(layout.INBOX) + 1:]]


def parse_manifest(manifest_key: str, data: Any, scratch: Path) -> Announcement:
    """Check a manifest's content; raises :class:`InboxError` naming ``manifest_key`` and the field."""
    where = f"s3 key {manifest_key}"
    if not isinstance(data, dict):
        raise InboxError(f"{where}: expected a JSON object")
    data = dict(data)
    known = ["file", "format", "name", *MAP_FILE_KEYS]
    unknown = [k for k in data if k not in known]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InboxError(f"{where}: unknown field(s) {unknown}{hint}; known fields: {', '.join(known)}")
    file_name = data.pop("file", None)
    if not isinstance(file_name, str) or not file_name or "/" in file_name:
        raise InboxError(f"{where}: field 'file' must name a data file in {layout.INBOX}/ (no folders)")
    if file_name.endswith(layout.INBOX_MANIFEST_SUFFIX):
        raise InboxError(f"{where}: field 'file' {file_name!r} names a manifest, not a data file")
    fmt = data.pop("format", None)
    if fmt not in FORMATS:
        raise InboxError(f"{where}: field 'format' is {fmt!r}; expected one of {', '.join(FORMATS)}")
    name = data.pop("name", None)
    if name is not None and (not isinstance(name, str) or not layout.is_name(name)):
        raise InboxError(f"{where}: field 'name' {name!r}: use 1-120 letters, digits, '_', '.', '-' (not only dots)")
    options: dict[str, Any] = data
    if "columns" in data:  # a column map: parsed exactly as a --column-map file is
        map_file = scratch / "column_map.json"
        map_file.write_text(json.dumps(data))
        try:
            options = read_column_map_file(map_file)
        except SourceError as exc:
            raise InboxError(f"{where}: {str(exc).replace(str(map_file), 'column map')}") from None
    return Announcement(manifest_key, layout.inbox_key(file_name), fmt, name, options)


def _move(settings: Settings, keys: list[str], outcome: str, batch: str, scratch: Path,
          note: tuple[str, Any]) -> list[str]:
    """Copy ``keys`` (and a JSON note) to ``inbox/<outcome>/<batch>/``, then delete them from the inbox.

    A file of the same name dropped again and handled in the same batch (``ingest-inbox --batch X``
    twice, a task retried) goes to ``<batch>-2/`` (``-3/``, ...) instead: the earlier copy and its
    note are kept, not overwritten."""
    moved = []
    note_name, payload = note
    stem = keys[-1].rsplit("/", 1)[-1].removesuffix(layout.INBOX_MANIFEST_SUFFIX)
    names = [key.rsplit("/", 1)[-1] for key in keys] + [f"{stem}.{note_name}"]
    batch = _free_batch(settings, outcome, batch, names)
    for key in keys:
        local = scratch / "move" / key.rsplit("/", 1)[-1]
        local.parent.mkdir(parents=True, exist_ok=True)
        storage.download_file(settings, key, local)
        moved.append(storage.upload_file(settings, local, layout.inbox_outcome_key(outcome, batch, local.name)))
        local.unlink()
    storage.put_json(settings, layout.inbox_outcome_key(outcome, batch, f"{stem}.{note_name}"), payload)
    storage.delete_keys(settings, keys)
    return moved


def _free_batch(settings: Settings, outcome: str, batch: str, names: list[str]) -> str:
    """``batch``, or the first of ``batch-2``, ``batch-3``, ... where none of ``names`` exists yet."""
    for n in range(1, 10_000):
        candidate = batch if n == 1 else f"{batch}-{n}"
        taken = {k.rsplit("/", 1)[-1] for k in
                 storage.list_keys(settings, layout.inbox_outcome_key(outcome, candidate, ""))}
        if not taken.intersection(names):
            return candidate
    raise InboxError(f"inbox/{outcome}/{batch}: 10,000 earlier copies of {names[0]}; clear the folder")


def _announced_data(settings: Settings, content: Any) -> list[str]:
    """The data key a manifest names, when it names one that is in the inbox (even if the rest is bad)."""
    name = content.get("file") if isinstance(content, dict) else None
    if not isinstance(name, str) or not name or "/" in name or name.endswith(layout.INBOX_MANIFEST_SUFFIX):
        return []
    key = layout.inbox_key(name)
    return [key] if storage.exists(settings, key) else []


def _default_name(data_key: str, etag: str) -> str:
    stem = data_key.rsplit("/", 1)[-1].split(".", 1)[0]
    return f"{_UNSAFE.sub('_', stem)[:100]}-{re.sub(r'[^0-9a-f]', '', etag.lower())[:8]}"


def ingest_one(settings: Settings, manifest_key: str, batch: str) -> dict[str, Any]:
    """Land the file announced by ``manifest_key`` and move both to processed/ (or failed/).
    Returns {"manifest", "outcome", "landing" or "error", "moved_to"}; never raises for bad input."""
    from pipelines.data.landing import land_events

    scratch = Path(tempfile.mkdtemp(prefix="inbox-", dir=_work_dir(settings)))
    try:
        keys = [manifest_key]
        try:
            try:
                content = json.loads(storage.get_bytes(settings, manifest_key))
            except json.JSONDecodeError as exc:
                raise InboxError(f"s3 key {manifest_key}: not valid JSON ({exc})") from None
            keys = [*_announced_data(settings, content), manifest_key]  # moved together, whatever happens
            announcement = parse_manifest(manifest_key, content, scratch)
            objects = {o.key: o for o in storage.list_objects(settings, announcement.data_key)}
            if announcement.data_key not in objects:
                raise InboxError(f"s3 key {manifest_key}: its data file {announcement.data_key} is not in the inbox")
            name = announcement.name or _default_name(announcement.data_key, objects[announcement.data_key].etag)
            result = land_events(settings, storage.uri(settings, announcement.data_key), announcement.fmt,
                                 name=name, **announcement.options).to_dict()
        except (InboxError, SourceError, pa.ArrowException, UnicodeError) as exc:  # bad input, not an outage
            text = str(exc)
            if layout.INBOX not in text:  # an Arrow or codec message names neither the manifest nor its file
                text = f"s3 key {manifest_key}: {text}"
            exc = InboxError(text)
            error = {"manifest": manifest_key, "error": str(exc), "failed_at": _now()}
            log.error("inbox file not landed: %s", exc)
            moved = _move(settings, keys, "failed", batch, scratch, ("error.json", error))
            return {"manifest": manifest_key, "outcome": "failed", "error": str(exc), "moved_to": moved}
        moved = _move(settings, keys, "processed", batch, scratch, ("landing.json", result))
        return {"manifest": manifest_key, "outcome": "processed", "landing": result, "moved_to": moved}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ingest_pending(settings: Settings, batch: str) -> dict[str, Any]:
    """Land every file announced in the inbox now; returns the per-file outcomes, the dates that got
    data (``dates``) and the failures (``failed``: manifest -> error)."""
    outcomes = [ingest_one(settings, key, batch) for key in pending_manifests(settings)]
    dates = sorted({d for o in outcomes if o["outcome"] == "processed" for d in o["landing"]["dates"]})
    rows = sum(o["landing"]["rows"] for o in outcomes if o["outcome"] == "processed")
    failed = {o["manifest"]: o["error"] for o in outcomes if o["outcome"] == "failed"}
    return {"batch": batch, "files": len(outcomes), "rows_landed": rows, "dates": dates, "failed": failed,
            "outcomes": outcomes}


def _work_dir(settings: Settings) -> str:
    path = Path(settings.work_dir)
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class IngestError(RuntimeError):
    """Some inbox files could not be landed; the message names each, its error and where it went."""


def landed_event(summary: dict[str, Any]) -> dict[str, Any]:
    """The extra of the raw-events asset event of an ingest run; raises Airflow's skip exception
    when nothing landed, so no event announces an unchanged bucket."""
    if not summary["dates"]:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"nothing landed in batch {summary['batch']} ({summary['files']} file(s) seen)")
    return {"dates": summary["dates"], "rows": summary["rows_landed"], "batch": summary["batch"]}


def raise_for_failures(summary: dict[str, Any]) -> None:
    """Raise :class:`IngestError` when any file of the run went to ``inbox/failed/``."""
    failed = [o for o in summary["outcomes"] if o["outcome"] == "failed"]
    if failed:
        lines = [f"{o['manifest']}: {o['error']} (moved to {', '.join(o['moved_to'])})" for o in failed]
        raise IngestError(f"{len(failed)} of {summary['files']} inbox file(s) not landed:\n" + "\n".join(lines))
