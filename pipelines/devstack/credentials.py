"""The stack's generated credentials: one file each in ``<root>/secrets`` (folder 0700, files 0600).

They are generated on the first start, read on every later one, and never logged; the Airflow
admin password lives in the simple auth manager's password file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
from pathlib import Path

from pipelines.devstack.config import PASSWORDS_FILE, StackConfig, StackError

ADMIN_USER = "admin"

SECRET_FILES = {
    "s3_access_key": "S3 access key (AWS_ACCESS_KEY_ID)",
    "s3_secret_key": "S3 secret key (AWS_SECRET_ACCESS_KEY)",
    PASSWORDS_FILE: "Airflow UI/API users and passwords (user 'admin')",
    "airflow_jwt_secret": "Airflow JWT signing key",
    "airflow_api_secret_key": "Airflow API session secret",
    "airflow_fernet_key": "Airflow Fernet key (encrypts connections)",
}

_PASSWORD_ALPHABET = "abcdefghkmnpqrstuvwxyzABCDEFGHKMNPQRSTUVWXYZ23456789"  # no look-alikes (l, 1, O, 0)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (0600), replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _generate_secret(name: str) -> str:
    if name == "s3_access_key":
        return "IM" + secrets.token_hex(9).upper()
    if name == PASSWORDS_FILE:
        password = "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(20))
        return json.dumps({ADMIN_USER: password}) + "\n"
    if name == "airflow_fernet_key":
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    if name == "airflow_jwt_secret":
        return secrets.token_urlsafe(64)  # HS512 wants at least 64 bytes
    return secrets.token_urlsafe(32)


def ensure_secrets(cfg: StackConfig) -> tuple[dict[str, str], list[str]]:
    """Read the stack's credentials from ``<root>/secrets``, generating the missing ones.

    Returns (name -> value, names generated now). The folder is 0700 and every file 0600; an
    existing file with looser permissions is tightened.
    """
    cfg.secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.secrets_dir, 0o700)
    values: dict[str, str] = {}
    created: list[str] = []
    for name in SECRET_FILES:
        path = cfg.secrets_dir / name
        if not path.exists():
            write_private(path, _generate_secret(name))
            created.append(name)
        os.chmod(path, 0o600)
        values[name] = path.read_text().strip()
    return values, created


def admin_password(cfg: StackConfig) -> str:
    """The Airflow admin password from ``<root>/secrets/airflow_passwords.json``."""
    path = cfg.passwords_file
    try:
        return str(json.loads(path.read_text())[ADMIN_USER])
    except (OSError, ValueError, KeyError) as exc:
        raise StackError(f"cannot read the Airflow admin password from {path}: {exc}") from exc
