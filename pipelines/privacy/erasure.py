"""Erase one user: remove the user's rows from raw, quarantine, clean, encoded datasets and predictions.

:func:`forget_user` looks for the user under every form the data can hold it: the raw id (data
landed with pseudonymisation off) and, when a key is configured, its pseudonym (data landed with it
on; also with the invalid-id mark). Every object holding a matching row is rewritten without it:

- ``raw/events/dt=D/<name>.{csv,parquet}``: rewritten in its own format at the same key (one PUT
  replaces an object atomically), then its sidecar's row count; a file left with no row is deleted
  with its sidecar;
- ``quarantine/events/dt=D/{validation,preprocess}.parquet`` and ``quarantine/events/unplaced/*``:
  rewritten at the same key (deleted when empty); an unplaced row's text is read as CSV with its
  landing's delimiter and matches when the field at the user column of its landing (from the
  landing's raw sidecars) is the user; a row too short to have that field never matches (no other
  field is compared: an item or category id equal to the user id is another user's row); when no
  raw file of the landing is left, its columns are unknown and any field is compared;
- ``staging/validated/dt=D/valid.parquet``: deleted whole (a hand-over is a cache; rewriting the raw
  files makes it stale, and the next validation rebuilds it); the report counts only the user's
  rows in it as removed, and the other rows that went with it apart (``rows_dropped_with_caches``);
- ``clean/events/dt=D/part-00000.parquet`` and the Parquet files of encoded datasets ``features/<id>/``
  that have a ``user_id`` column: rewritten at the same key;
- ``predictions/dt=D/`` and ``predictions_intraday/dt=D/hour=HH/``: each part holding the user is
  written under a new key (``part-NNNNN-e<tag>.parquet``), then one PUT of the ``_SUCCESS`` manifest switches readers to
  the new parts with the new ``row_count``, then the old parts are deleted. A reader that trusts the
  manifest never sees a mix.

The report ``reports/erasure/<erasure id>.json`` counts the rows before and after in every object
it changed and the user's rows among them (``user_rows``; ``rows_removed`` is their sum), and names
the user only by pseudonym (``user_ref``), never by the raw id.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.config import Settings
from pipelines.data.raw import RawFile, list_raw_partitions, pack_raw, parse_unpacked, unpack_raw
from pipelines.platform import layout, storage
from pipelines.privacy.pseudonym import (
    INVALID_MARK,
    PSEUDONYM_DIGITS,
    PseudonymKeyError,
    is_pseudonym,
    pseudonym_of,
)

log = logging.getLogger(__name__)


@dataclass
class Change:
    """One object the erasure changed: its key, area, rows before and after, what was done, and how
    many of the rows gone were the user's (``user_rows``; fewer than ``rows_before - rows_after``
    only for a cache deleted whole, whose other rows are rebuilt, not erased)."""

    area: str
    key: str
    rows_before: int
    rows_after: int
    action: str  # rewritten | deleted | deleted whole ...
    user_rows: int = -1  # -1: rows_before - rows_after

    def __post_init__(self) -> None:
        if self.user_rows < 0:
            self.user_rows = self.rows_before - self.rows_after


@dataclass
class Erasure:
    """What :func:`forget_user` did (the report)."""

    erasure_id: str
    user_ref: str
    started_at: str
    finished_at: str = ""
    changes: list[Change] = field(default_factory=list)
    scanned: dict[str, int] = field(default_factory=dict)  # objects looked at, per area

    @property
    def rows_removed(self) -> int:
        """The user's rows removed (a deleted hand-over counts only the user's rows in it)."""
        return sum(c.user_rows for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows_removed"] = self.rows_removed
        out["rows_removed_by_area"] = {a: sum(c.user_rows for c in self.changes if c.area == a)
                                       for a in sorted({c.area for c in self.changes})}
        # Other users' rows that went with caches deleted whole: rebuilt by the next validation, not
        # erased. rows_removed + this = the sum of rows_before - rows_after over the changes.
        out["rows_dropped_with_caches"] = sum(c.rows_before - c.rows_after - c.user_rows for c in self.changes)
        return out


def user_forms(settings: Settings, user_id: str | None = None, pseudonym: str | None = None) -> tuple[set[str], str]:
    """The values under which the user (``user_id``: the raw id, or only its ``pseudonym``) can be
    stored, and the reference the report names it by (the pseudonym; without a key, ``sha256:`` and
    20 hex characters of the plain digest of the raw id)."""
    if pseudonym is not None:
        digits = pseudonym.strip().removeprefix(INVALID_MARK)
        if not is_pseudonym(digits):
            raise ValueError(f"{pseudonym!r} is not a pseudonym ({PSEUDONYM_DIGITS} digits)")
        return {digits, INVALID_MARK + digits}, digits
    raw = (user_id or "").strip()
    if not raw:
        raise ValueError("the user id is empty")
    try:
        pseudonym = pseudonym_of(settings, raw)
    except PseudonymKeyError:
        if settings.pseudonymize:
            raise
        return {raw}, "sha256:" + hashlib.sha256(raw.encode()).hexdigest()[:20]
    return {raw, pseudonym, INVALID_MARK + pseudonym}, pseudonym


def _matches(values: Any, forms: set[str]) -> pa.Array:
    text = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    return pc.fill_null(pc.is_in(text, value_set=pa.array(sorted(forms), pa.string())), False)


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _mentions(data: bytes, forms: set[str]) -> bool:
    """Whether any form occurs in the bytes at all (a cheap test before parsing a text file), as
    plain text or as a quoted CSV field holds it: a raw CSV file writes a field holding a quote
    quoted with the quote doubled (``a"b`` as ``"a""b"``), and a search for the plain id skipped it."""
    return any(text.encode() in data for f in forms for text in {f, f.replace('"', '""')})


# --- raw ------------------------------------------------------------------------------------------

def _raw_bytes(raw: RawFile, table: pa.Table) -> bytes:
    """``table`` in the landed file's own format (CSV: the delimiter, header rule and quoting of landing)."""
    if raw.key.endswith(".parquet"):
        return _parquet_bytes(table)
    spec = raw.spec
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, write_options=pacsv.WriteOptions(
        include_header=spec.has_header, delimiter=spec.delimiter,
        quoting_style="none" if spec.needs_plain_fields else "needed"))
    return pack_raw(raw.key, sink.getvalue())


Landing = tuple[str, list[str], str]  # delimiter, columns, user column of one landing's files


def _erase_raw(settings: Settings, forms: set[str], report: Erasure) -> dict[str, Landing]:
    """Rewrite the raw files holding the user; returns landing name -> :data:`Landing` (for the
    unplaced quarantine)."""
    landings: dict[str, Landing] = {}
    for partition in list_raw_partitions(settings).values():
        for raw in partition.files:
            user_column = raw.spec.column_map["user_id"]
            landings[raw.name] = (raw.spec.delimiter, raw.columns, user_column)
            report.scanned["raw"] = report.scanned.get("raw", 0) + 1
            data = unpack_raw(raw.key, storage.get_bytes(settings, raw.key), storage.uri(settings, raw.key))
            if not raw.key.endswith(".parquet") and not _mentions(data, forms):
                continue
            table = parse_unpacked(settings, raw, data)
            hit = _matches(table[user_column], forms)
            found = pc.sum(hit).as_py() or 0
            if not found:
                continue
            kept = table.filter(pc.invert(hit))
            meta_key = layout.meta_key_of(raw.key)
            if kept.num_rows == 0:
                storage.delete_keys(settings, [raw.key, meta_key])
                report.changes.append(Change("raw", raw.key, table.num_rows, 0, "deleted"))
                continue
            storage.put_bytes(settings, raw.key, _raw_bytes(raw, kept))
            meta = dict(storage.get_json(settings, meta_key))
            meta["rows"] = kept.num_rows
            storage.put_json(settings, meta_key, meta)
            report.changes.append(Change("raw", raw.key, table.num_rows, kept.num_rows, "rewritten"))
    return landings


# --- parquet objects with a user column (quarantine, clean), and the unplaced quarantine -------------

def _rewrite_parquet(settings: Settings, key: str, area: str, mask_of: Any, report: Erasure) -> None:
    """Rewrite the Parquet object ``key`` without the rows ``mask_of(table)`` marks (deleted when none is left)."""
    report.scanned[area] = report.scanned.get(area, 0) + 1
    table = pq.read_table(io.BytesIO(storage.get_bytes(settings, key)))
    hit = mask_of(table)
    found = pc.sum(hit).as_py() or 0
    if not found:
        return
    kept = table.filter(pc.invert(hit))
    if kept.num_rows == 0:
        storage.delete_key(settings, key)
        report.changes.append(Change(area, key, table.num_rows, 0, "deleted"))
        return
    storage.put_bytes(settings, key, _parquet_bytes(kept))
    report.changes.append(Change(area, key, table.num_rows, kept.num_rows, "rewritten"))


def _csv_fields(text: str, delimiter: str) -> list[str]:
    """The fields of one row's text read as CSV (a quoted field may hold the delimiter or a doubled
    quote, as the source wrote it); split plainly when the csv module refuses the text."""
    try:
        return next(csv.reader([text], delimiter=delimiter), [])
    except csv.Error:
        return text.split(delimiter)


def _unplaced_mask(table: pa.Table, forms: set[str], landing: Landing | None) -> pa.Array:
    """Unplaced rows hold their source text: read it as CSV, compare the field at the landing's user
    column, and only that one: another position holds item or category ids, and an id equal to the
    user's there is another user's row. A row with too few fields to have that position never
    matches. With more fields than columns, the text may be fields joined unquoted (rows set aside
    after parsing: an id holding the delimiter spans several fields), so the user column joined with
    the surplus fields after it is compared too. When the landing's columns are unknown (no raw
    file of it is left), any field is compared: erasure then errs on the side of removing the user."""
    delimiter, columns, user_column = landing if landing else (",", [], "")
    index = columns.index(user_column) if user_column in columns else None
    hits = []
    for text in table["raw"].to_pylist():
        read = _csv_fields(text or "", delimiter)
        fields = [f.strip() for f in read]
        if index is None:
            hits.append(any(f in forms for f in fields))
        elif len(fields) <= index:
            hits.append(False)
        else:
            surplus = max(len(fields) - len(columns), 0)
            joined = delimiter.join(read[index:index + surplus + 1]).strip()
            hits.append(fields[index] in forms or joined in forms)
    return pa.array(hits, pa.bool_())


def _erase_quarantine(settings: Settings, forms: set[str], landings: dict[str, Landing],
                      report: Erasure) -> None:
    for key in storage.list_keys(settings, layout.area_prefix(layout.QUARANTINE)):
        if not key.endswith(".parquet"):
            continue
        if key.startswith(layout.UNPLACED + "/"):
            name = key.rsplit("/", 1)[-1].removesuffix(".parquet")
            _rewrite_parquet(settings, key, "quarantine",
                             lambda t, n=name: _unplaced_mask(t, forms, landings.get(n)), report)
        else:
            _rewrite_parquet(settings, key, "quarantine", lambda t: _matches(t["user_id"], forms), report)


def _erase_handovers(settings: Settings, forms: set[str], report: Erasure) -> None:
    for key in storage.list_keys(settings, layout.area_prefix(layout.VALIDATED)):
        report.scanned["staging"] = report.scanned.get("staging", 0) + 1
        rows = pq.read_table(io.BytesIO(storage.get_bytes(settings, key)), columns=["user_id"])
        found = pc.sum(_matches(rows["user_id"], forms)).as_py() or 0
        if found:  # deleted whole: only the user's rows count as removed (the rest is rebuilt)
            storage.delete_key(settings, key)
            report.changes.append(Change("staging", key, rows.num_rows, 0,
                                         "deleted whole: a cache, the next validation rebuilds it", found))


def _erase_clean(settings: Settings, forms: set[str], report: Erasure) -> None:
    for key in storage.list_keys(settings, layout.area_prefix(layout.CLEAN)):
        if key.endswith(".parquet"):
            _rewrite_parquet(settings, key, "clean", lambda t: _matches(t["user_id"], forms), report)


def _erase_features(settings: Settings, forms: set[str], report: Erasure) -> None:
    """Encoded datasets (examples and test events of the user) are rewritten too; a model already
    trained on them is not (docs/privacy.md)."""
    def mask(table: pa.Table) -> pa.Array:
        if "user_id" not in table.column_names:
            return pa.array([False] * table.num_rows, pa.bool_())
        return _matches(table["user_id"], forms)

    for key in storage.list_keys(settings, layout.area_prefix(layout.FEATURES)):
        if key.endswith(".parquet"):
            _rewrite_parquet(settings, key, "features", mask, report)


# --- predictions ----------------------------------------------------------------------------------

def _manifests(settings: Settings) -> list[str]:
    """The ``_SUCCESS`` keys of every published prediction partition, daily and intraday."""
    return [key for area in (layout.PREDICTIONS, layout.PREDICTIONS_INTRADAY)
            for key in storage.list_keys(settings, layout.area_prefix(area))
            if key.rsplit("/", 1)[-1] == layout.SUCCESS]


def _erase_predictions(settings: Settings, forms: set[str], report: Erasure) -> None:
    """Rewrite each published partition holding the user: new parts, then one manifest PUT, then old parts removed."""
    tag = report.erasure_id.rsplit("-", 1)[-1]
    for manifest_key in _manifests(settings):
        try:
            manifest = dict(storage.get_json(settings, manifest_key))
        except storage.StorageError:
            continue  # withdrawn meanwhile (a rerun): the run replaces the partition
        area = "predictions" if manifest_key.startswith(layout.PREDICTIONS + "/") else "predictions_intraday"
        report.scanned[area] = report.scanned.get(area, 0) + 1
        files, old, changes = [], [], []
        for key in manifest["files"]:
            table = storage.read_parquet(settings, key)
            hit = _matches(table["user_id"], forms)
            if not (pc.sum(hit).as_py() or 0):
                files.append(key)
                continue
            kept = table.filter(pc.invert(hit))
            new_key = layout.rewritten_part_key(key, tag)
            storage.put_bytes(settings, new_key, _parquet_bytes(kept))
            files.append(new_key)
            old.append(key)
            changes.append(Change(area, key, table.num_rows, kept.num_rows, f"rewritten as {new_key}"))
        if not changes:
            continue
        removed = sum(c.rows_before - c.rows_after for c in changes)
        manifest.update(files=files, row_count=int(manifest["row_count"]) - removed,
                        erasures=[*manifest.get("erasures", []), report.erasure_id])
        storage.put_json(settings, manifest_key, manifest)  # readers switch here, all at once
        storage.delete_keys(settings, old)
        report.changes.extend(changes)


def new_erasure_id(now: dt.datetime | None = None) -> str:
    """``<UTC timestamp>-<8 random hex>``: sortable and unique."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(4)}"


def forget_user(settings: Settings, user_id: str | None = None, *, pseudonym: str | None = None,
                erasure_id: str | None = None) -> dict[str, Any]:
    """Remove every row of ``user_id`` (the raw id; or give only its ``pseudonym``, so the raw id
    never has to be typed into a system that keeps it) from raw, quarantine, staging, clean and
    predictions.

    Returns the report (also written to ``reports/erasure/<erasure id>.json``). Idempotent: a second
    run finds nothing and reports no change. Raises ValueError for an empty id and
    :class:`~pipelines.privacy.pseudonym.PseudonymKeyError` when pseudonymisation is on without a key.
    """
    forms, ref = user_forms(settings, user_id, pseudonym)
    report = Erasure(erasure_id=erasure_id or new_erasure_id(), user_ref=ref,
                     started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    landings = _erase_raw(settings, forms, report)
    _erase_quarantine(settings, forms, landings, report)
    _erase_handovers(settings, forms, report)
    _erase_clean(settings, forms, report)
    _erase_features(settings, forms, report)
    _erase_predictions(settings, forms, report)
    report.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    out = report.to_dict()
    out["report"] = storage.put_json(settings, layout.erasure_report_key(report.erasure_id), out)
    log.info("erasure %s of user %s: %d rows removed from %d objects (%d other rows went with deleted caches)",
             report.erasure_id, ref, report.rows_removed, len(report.changes), out["rows_dropped_with_caches"])
    return out
