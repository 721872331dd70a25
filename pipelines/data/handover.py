"""What validation hands to preprocessing: the rows of a partition that passed the row rules.

:func:`write_handover` stores them in ``staging/validated/dt=D/valid.parquet`` with a
fingerprint of the raw files and window they were flagged from (:func:`raw_fingerprint`), their
row count and quarantine reasons. :func:`read_handover` gives them back while the fingerprint
matches, on the same worker or another; otherwise preprocessing flags the raw partition again
(with the same rules, so both ways give the same rows).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import Settings
from pipelines.platform import layout, storage

log = logging.getLogger(__name__)

HANDOVER_META = b"im_handover"
HANDOVER_COLUMNS = ["user_id", "item_id", "category_id", "behavior", "ts", "value", "source_file", "row"]


def raw_fingerprint(settings: Settings, date: dt.date) -> str:
    """A digest of ``raw/events/dt=date/`` (every key with its ETag and size) and of the settings the
    row rules depend on (window bounds and zone): equal digests mean equal row flags."""
    objects = storage.list_objects(settings, layout.partition_prefix(layout.RAW, date))
    entries = sorted(f"{o.key}|{o.etag}|{o.size}" for o in objects)
    text = "\n".join([*entries, f"window={settings.window_start}..{settings.window_end}",
                      f"zone={settings.window_timezone}"])
    return hashlib.sha256(text.encode()).hexdigest()


def write_handover(settings: Settings, date: dt.date, valid: pa.Table, *, rows: int, reasons: dict[str, int],
                   fingerprint: str) -> str:
    """Write the rows that passed the row rules (``HANDOVER_COLUMNS``, ``ts`` int64 microseconds) to
    ``staging/validated/dt=date/valid.parquet`` with the raw partition's fingerprint, its row count
    and its quarantine reasons in the file metadata, so preprocessing need not read and flag the
    raw files again. Returns the key."""
    meta = {"date": date.isoformat(), "fingerprint": fingerprint, "rows": rows, "reasons": reasons}
    table = valid.select(HANDOVER_COLUMNS)
    table = table.replace_schema_metadata({HANDOVER_META: json.dumps(meta).encode()})
    key = layout.handover_key(date)
    storage.write_parquet(settings, key, table)
    return key


def read_handover(settings: Settings, date: dt.date) -> tuple[pa.Table, dict[str, Any]] | None:
    """The validated rows of ``date`` and their metadata (rows, reasons) when the hand-over exists and
    was written for the raw files and window now in place; None otherwise (the caller re-flags)."""
    key = layout.handover_key(date)
    try:
        data = storage.get_bytes(settings, key)
    except storage.StorageError:
        log.info("dt=%s: no validated hand-over at %s: flagging the raw files again", date, key)
        return None
    table = pq.read_table(io.BytesIO(data))
    meta = json.loads((table.schema.metadata or {}).get(HANDOVER_META, b"{}"))
    if meta.get("fingerprint") != raw_fingerprint(settings, date):
        log.info("dt=%s: hand-over %s is stale (raw files or window changed): flagging the raw files again",
                 date, key)
        return None
    return table.replace_schema_metadata(None), meta
