"""The stack's generated credentials: one file each in ``<root>/secrets`` (folder 0700, files 0600).

They are generated on the first start, read on every later one, and never logged or printed
(``up`` says where they are, not what they are). Besides the secrets themselves the folder holds
files derived from them that a server reads instead of a command-line flag or a variable:

- ``mlflow_auth.ini``: MLflow's basic-auth app (admin user and password, its user database);
- ``seaweedfs/security.toml``: SeaweedFS's JWT signing keys (weed reads it from its working folder);
- team stack: ``redis.conf`` (``requirepass``) and one libpq password file per PostgreSQL role
  (``pgpass_airflow``, ``pgpass_mlflow``), so no connection URL carries a password.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from pipelines.devstack.config import PASSWORDS_FILE, StackConfig, StackError

ADMIN_USER = "admin"
MLFLOW_ADMIN_USER = "admin"
MLFLOW_CLIENT_USER = "pipelines"  # the account tasks, the CLI and the UI plugin use (not an admin)
POSTGRES_SUPERUSER = "postgres"
POSTGRES_ROLES = ("airflow", "mlflow")
PSEUDONYM_KEY_FILE = "pseudonym_key"  # read by tasks, the CLI and the UI plugin through IM_PSEUDONYM_KEY_FILE  # one role and one database each (plus mlflow_auth for MLflow's users)
ONLINE_TOKEN_FILE = "online_token"  # the online endpoint's bearer token (pipelines/online)

SECRET_FILES = {
    "s3_access_key": "S3 access key (AWS_ACCESS_KEY_ID)",
    "s3_secret_key": "S3 secret key (AWS_SECRET_ACCESS_KEY)",
    PASSWORDS_FILE: "Airflow UI/API users and passwords (user 'admin')",
    "airflow_jwt_secret": "Airflow JWT signing key",
    "airflow_api_secret_key": "Airflow API secret (signs log-server requests)",
    "airflow_fernet_key": "Airflow Fernet key (encrypts connections)",
    "mlflow_admin_password": f"MLflow UI/API password of user '{MLFLOW_ADMIN_USER}' (admin)",
    "mlflow_client_password": f"MLflow password of user '{MLFLOW_CLIENT_USER}' (tasks, CLI, UI plugin)",
    "mlflow_flask_secret": "MLflow auth app session/CSRF secret",
    "seaweedfs_jwt_keys": "SeaweedFS JWT signing keys (volume and filer, write and read)",
    PSEUDONYM_KEY_FILE: "user-id pseudonymisation key (HMAC-SHA256; IM_PSEUDONYM_KEY_FILE names this file)",
    ONLINE_TOKEN_FILE: "online scoring endpoint bearer token (IM_ONLINE_TOKEN_FILE names this file)",
}
TEAM_SECRET_FILES = {
    "postgres_superuser_password": f"PostgreSQL superuser '{POSTGRES_SUPERUSER}' (used only to create roles)",
    "postgres_airflow_password": "PostgreSQL role 'airflow' (Airflow metadata)",
    "postgres_mlflow_password": "PostgreSQL role 'mlflow' (MLflow metadata and users)",
    "redis_password": "Redis password (Celery broker and results)",
}
# The four SeaweedFS keys, in the order of the lines of ``seaweedfs_jwt_keys``.
SEAWEED_JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")

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


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and set it to 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _password(length: int = 24) -> str:
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


def _generate_secret(name: str) -> str:
    if name == "s3_access_key":
        return "IM" + secrets.token_hex(9).upper()
    if name == PASSWORDS_FILE:
        return json.dumps({ADMIN_USER: _password(20)}) + "\n"
    if name == "airflow_fernet_key":
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    if name == "airflow_jwt_secret":
        return secrets.token_urlsafe(64)  # HS512 wants at least 64 bytes
    if name == PSEUDONYM_KEY_FILE:
        return secrets.token_hex(32)
    if name == "seaweedfs_jwt_keys":
        return "\n".join(secrets.token_hex(24) for _ in SEAWEED_JWT_SECTIONS)
    if name.endswith("_password"):
        return _password()
    return secrets.token_urlsafe(32)


def secret_files(cfg: StackConfig) -> dict[str, str]:
    """File name -> what it holds, for the kind of stack ``cfg`` is."""
    return {**SECRET_FILES, **(TEAM_SECRET_FILES if cfg.team else {})}


def ensure_secrets(cfg: StackConfig) -> tuple[dict[str, str], list[str]]:
    """Read the stack's credentials from ``<root>/secrets``, generating the missing ones.

    Returns (name -> value, names generated now). The stack folder and the secrets folder are
    0700 and every file 0600; an existing file with looser permissions is tightened.
    """
    make_private_dir(cfg.root)
    make_private_dir(cfg.secrets_dir)
    values: dict[str, str] = {}
    created: list[str] = []
    for name in secret_files(cfg):
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


def secret_values(secret: Mapping[str, str]) -> list[str]:
    """Every secret string in ``secret`` (the Airflow password inside its JSON file, each
    SeaweedFS key on its own), to check that none appears in output or logs."""
    values = []
    for name, value in secret.items():
        if name == PASSWORDS_FILE:
            values += [str(v) for v in json.loads(value).values()]
        elif name == "seaweedfs_jwt_keys":
            values += value.split()
        else:
            values.append(value)
    return [v for v in values if v]


# --- files derived from the secrets -------------------------------------------------------------

def mlflow_auth_file(cfg: StackConfig) -> Path:
    return cfg.secrets_dir / "mlflow_auth.ini"


def seaweed_conf_dir(cfg: StackConfig) -> Path:
    return cfg.secrets_dir / "seaweedfs"


def redis_conf_file(cfg: StackConfig) -> Path:
    return cfg.secrets_dir / "redis.conf"


def pgpass_file(cfg: StackConfig, role: str) -> Path:
    return cfg.secrets_dir / f"pgpass_{role}"


def write_seaweed_security(conf_dir: Path, keys: str) -> Path:
    """``<conf_dir>/security.toml`` (0600) with the four JWT keys of ``keys`` (one per line): the
    volume servers and the filer then refuse HTTP reads and writes that the S3 gateway or the
    master did not sign, and the filer hides directory listings."""
    make_private_dir(conf_dir)
    lines = []
    for section, key in zip(SEAWEED_JWT_SECTIONS, keys.split(), strict=True):
        lines += [f"[{section}]", f'key = "{key}"', "expires_after_seconds = 10", ""]
    lines += ["[access]", "ui = false", "", "[filer.expose_directory_metadata]", "enabled = false", ""]
    path = conf_dir / "security.toml"
    write_private(path, "\n".join(lines))
    return path


def write_mlflow_auth(path: Path, admin_password_value: str, database_uri: str) -> Path:
    """MLflow's basic-auth configuration (0600): the admin account created on the first start, the
    user database, and EDIT for authenticated users on resources without an explicit permission
    (the pipelines account must update experiments and models that a person created). Anonymous
    requests get 401; only an admin manages users and permissions."""
    text = "\n".join([
        "[mlflow]",
        "default_permission = EDIT",
        f"database_uri = {database_uri}",
        f"admin_username = {MLFLOW_ADMIN_USER}",
        f"admin_password = {admin_password_value}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false",
        # Every request checks its password with PBKDF2 (tens of ms of CPU): remember a good check
        # for a minute, or a busy training run keeps a core busy with hashing.
        "auth_cache_ttl_seconds = 60",
        ""])
    write_private(path, text)
    return path


def write_derived_files(cfg: StackConfig, secret: Mapping[str, str]) -> None:
    """Write every file the servers read their secrets from (see the module docstring)."""
    write_seaweed_security(seaweed_conf_dir(cfg), secret["seaweedfs_jwt_keys"])
    if cfg.team:
        auth_db = f"postgresql+psycopg2://mlflow@127.0.0.1:{cfg.postgres_port}/mlflow_auth"
    else:
        auth_db = f"sqlite:///{cfg.root / 'mlflow' / 'auth.db'}"
    write_mlflow_auth(mlflow_auth_file(cfg), secret["mlflow_admin_password"], auth_db)
    if cfg.team:
        for role in POSTGRES_ROLES:
            databases = ("mlflow", "mlflow_auth") if role == "mlflow" else (role,)
            write_private(pgpass_file(cfg, role), "".join(
                f"127.0.0.1:{cfg.postgres_port}:{db}:{role}:{secret[f'postgres_{role}_password']}\n"
                for db in databases))
        write_private(redis_conf_file(cfg), "\n".join([
            "bind 127.0.0.1", f"port {cfg.redis_port}", "protected-mode yes",
            f"requirepass {secret['redis_password']}", f"dir {cfg.root / 'redis'}",
            "appendonly yes", 'save ""', "daemonize no", ""]))
