"""Reading a secret from its file: the one place that does it, so every secret gets the same care.

Secrets (tokens, keys, webhook URLs, passwords) are never in settings or on command lines; a
setting names the file that holds one (``IM_*_FILE``), and the code reads it when it needs it.
:func:`read_secret` returns the file's text without surrounding blanks, and its errors name the
file and what it is for, never the secret.
"""

from __future__ import annotations

from pathlib import Path


class SecretError(ValueError):
    """A secret file is not configured, cannot be read, or holds too little."""


def read_secret(path: Path | str | None, what: str, *, min_chars: int = 1) -> str:
    """The secret in ``path`` (stripped). Raises :class:`SecretError` naming ``what`` and the file
    when ``path`` is None, unreadable, or holds fewer than ``min_chars`` characters."""
    if path is None:
        raise SecretError(f"{what}: no file configured")
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise SecretError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
    if not value:
        raise SecretError(f"{what}: {path} is empty")
    if len(value) < min_chars:
        raise SecretError(f"{what}: {path} is too short ({len(value)} characters; at least {min_chars})")
    return value
