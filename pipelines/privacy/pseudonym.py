"""User-id pseudonyms: HMAC-SHA256 of the id under a secret key, as a fixed-width 20-digit string.

With ``IM_PSEUDONYMIZE=true`` landing (:mod:`pipelines.data.routing`) replaces every user id by its
pseudonym before a row is written anywhere: raw files, the unplaced quarantine, and therefore
validation, preprocessing, clean partitions, reports and predictions only ever see pseudonyms.

The pseudonym is the first 64 bits of ``HMAC-SHA256(key, id)`` written as 20 decimal digits (zero
padded): digits pass every id rule of the shipped formats (Taobao and Ciao ids must be digits), and
the width tells a pseudonym from a raw id. An id that fails its format's id rule becomes ``~`` +
the digits, so validation still quarantines it as ``bad_id_format`` without the raw value. An empty
id stays empty (``null_user_id``). Ids are trimmed first, as the canonical adapters trim them.

The key lives in a file (``IM_PSEUDONYM_KEY_FILE``; the stacks generate ``secrets/pseudonym_key``,
0600): it is read when needed and never logged. Without the key a pseudonym cannot be computed
from an id, nor an id recovered from a pseudonym; with it, :func:`pseudonym_of` maps an id forward
(``python -m pipelines pseudonym --user ID``). Changing the key changes every pseudonym.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import ConfigError, Settings, env_name
from pipelines.data.canonical import id_text
from pipelines.platform.secrets import SecretError, read_secret

PSEUDONYM_DIGITS = 20
INVALID_MARK = "~"  # prefix of the pseudonym of an id that fails its format's id rule
MIN_KEY_BYTES = 16
_CACHE_LIMIT = 2_000_000  # ids remembered per process (a day of Taobao has about a million users)


class PseudonymKeyError(ConfigError):
    """The pseudonymisation key is missing, unreadable or too short (the message names the setting)."""


def new_key() -> str:
    """A fresh key: 32 random bytes as 64 hex characters."""
    return secrets.token_hex(32)


def write_key(path: Path) -> Path:
    """Write a fresh key to ``path`` (0600, folder created 0700); refuses to replace an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(new_key() + "\n")
    return path


def read_key(path: Path | None) -> bytes:
    """The key bytes of the key file ``path``; raises :class:`PseudonymKeyError` naming the setting (never the key)."""
    var = env_name("pseudonym_key_file")
    if path is None:
        raise PseudonymKeyError(f"{var} is not set: the pseudonymisation key file is needed")
    try:
        return read_secret(path, f"pseudonymisation key ({var})", min_chars=2 * MIN_KEY_BYTES).encode()
    except SecretError as exc:
        raise PseudonymKeyError(str(exc)) from None


class Pseudonymizer:
    """Maps user ids to pseudonyms under one key (remembers the ids it has seen, bounded)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._seen: dict[str, str] = {}

    def __repr__(self) -> str:  # never shows the key
        return "Pseudonymizer(<key withheld>)"

    def digits(self, user_id: str) -> str:
        """The 20-digit pseudonym of a (trimmed, non-empty) id."""
        found = self._seen.get(user_id)
        if found is None:
            mac = hmac.new(self._key, user_id.encode("utf-8"), hashlib.sha256).digest()
            found = f"{int.from_bytes(mac[:8], 'big'):0{PSEUDONYM_DIGITS}d}"
            if len(self._seen) >= _CACHE_LIMIT:
                self._seen.clear()
            self._seen[user_id] = found
        return found

    def one(self, user_id: str) -> str:
        """The pseudonym of one id as landing writes it (for an id that passes its id rule)."""
        text = user_id.strip()
        return self.digits(text) if text else ""

    def array(self, values: Any, id_pattern: str | None = None) -> pa.Array:
        """Pseudonyms of a column of ids (any Arrow type; nulls stay null, empty stays empty); with
        ``id_pattern``, ids that do not match it get :data:`INVALID_MARK` in front."""
        text = pc.utf8_trim_whitespace(id_text(values))
        encoded = text.dictionary_encode()
        uniques = encoded.dictionary.to_pylist()
        mapped = [self.digits(u) if u else "" for u in uniques]
        if id_pattern is not None and uniques:
            ok = pc.match_substring_regex(encoded.dictionary, id_pattern).to_pylist()
            mapped = [m if good or not m else INVALID_MARK + m for m, good in zip(mapped, ok, strict=True)]
        return pc.take(pa.array(mapped, pa.string()), encoded.indices)

    def table(self, table: pa.Table, column: str, id_pattern: str | None = None) -> pa.Table:
        """``table`` with ``column`` replaced by its pseudonyms (a string column)."""
        index = table.column_names.index(column)
        return table.set_column(index, pa.field(column, pa.string()), self.array(table[column], id_pattern))


def active(settings: Settings) -> Pseudonymizer | None:
    """The pseudonymizer of ``settings`` when ``IM_PSEUDONYMIZE`` is on, else None (reads the key file)."""
    return Pseudonymizer(read_key(settings.pseudonym_key_file)) if settings.pseudonymize else None


def pseudonym_of(settings: Settings, user_id: str) -> str:
    """The pseudonym of ``user_id`` under the configured key, whether or not the switch is on
    (``python -m pipelines pseudonym``, erasure reports). Raises :class:`PseudonymKeyError` without a key."""
    return Pseudonymizer(read_key(settings.pseudonym_key_file)).one(user_id)


def stored_id(settings: Settings, user_id: str) -> str:
    """The id under which ``user_id`` is stored downstream: its pseudonym when the switch is on,
    the id itself (trimmed) when it is off. Every per-user lookup (plugin page, online scoring,
    erasure) goes through this."""
    return pseudonym_of(settings, user_id) if settings.pseudonymize else user_id.strip()


def is_pseudonym(value: str) -> bool:
    """Whether ``value`` has the form of a pseudonym (20 ASCII digits, optionally behind the invalid
    mark). ASCII only: ``str.isdigit`` also accepts other scripts' digits (Arabic-Indic, superscripts),
    which no pseudonym holds, so ``forget --pseudonym`` would search for a value that cannot exist."""
    digits = value.removeprefix(INVALID_MARK)
    return len(digits) == PSEUDONYM_DIGITS and digits.isascii() and digits.isdigit()
