"""docker-compose.yml's one-shot jobs: ``python -m pipelines.devstack.compose_init <job>``.

- ``postgres``: the roles ``airflow`` and ``mlflow`` with their passwords and their databases
  (the same code as the local team stack: :func:`~.backends.ensure_databases`);
- ``airflow``: ``airflow db migrate``, then, as root, the simple auth manager's password file
  written as JSON (``json.dumps``: any character in the password is escaped) with mode 0600 and
  the shared folders handed to ``AIRFLOW_UID`` (the uid the Airflow containers run as);
- ``mlflow-user``: the non-admin MLflow account the tasks use, created by the admin.

Each reads only its own variables (docker-compose.yml gives each job just those) and ends with
one ``error: ...`` line naming what is missing or what failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipelines.devstack import backends, credentials, services

AUTH_DIR = Path("/opt/airflow/auth")
SHARED_DIRS = (Path("/opt/airflow/logs"), Path("/opt/airflow/work"), AUTH_DIR)


class InitError(RuntimeError):
    """A job cannot run: the message names the variable or the step."""


def _need(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise InitError(f"{name} is not set (docker/.env.example lists every variable)")
    return value


def init_postgres() -> None:
    backends.ensure_databases(int(os.environ.get("POSTGRES_PORT", "5432")), _need("POSTGRES_PASSWORD"),
                              {"airflow": _need("POSTGRES_AIRFLOW_PASSWORD"),
                               "mlflow": _need("POSTGRES_MLFLOW_PASSWORD")},
                              host=os.environ.get("POSTGRES_HOST", "postgres"))
    print("postgres: roles airflow, mlflow and their databases ready")


def _chown_tree(root: Path, uid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, 0, follow_symlinks=False)


def init_airflow() -> None:
    uid = int(_need("AIRFLOW_UID"))
    password = _need("AIRFLOW_ADMIN_PASSWORD")
    code = subprocess.run(["airflow", "db", "migrate"], check=False).returncode
    if code != 0:
        raise InitError(f"`airflow db migrate` failed with code {code}")
    credentials.make_private_dir(AUTH_DIR)
    credentials.write_private(AUTH_DIR / "passwords.json", json.dumps({credentials.ADMIN_USER: password}) + "\n")
    for folder in SHARED_DIRS:
        folder.mkdir(parents=True, exist_ok=True)
        _chown_tree(folder, uid)
    print(f"airflow: metadata migrated; admin password file written (0600); shared folders owned by {uid}:0")


def init_mlflow_user() -> None:
    auth = services.MlflowAuth(
        config_path=Path(os.environ.get("MLFLOW_AUTH_CONFIG_PATH", "(the server's)")), flask_secret="",
        admin_user=os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", credentials.MLFLOW_ADMIN_USER),
        admin_password=_need("MLFLOW_AUTH_ADMIN_PASSWORD"),
        client_user=os.environ.get("MLFLOW_TRACKING_USERNAME", credentials.MLFLOW_CLIENT_USER),
        client_password=_need("MLFLOW_TRACKING_PASSWORD"))
    services.ensure_mlflow_user(_need("MLFLOW_TRACKING_URI"), auth)
    print(f"mlflow: account {auth.client_user!r} ready")


JOBS = {"postgres": init_postgres, "airflow": init_airflow, "mlflow-user": init_mlflow_user}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in JOBS:
        print(f"usage: python -m pipelines.devstack.compose_init {{{'|'.join(JOBS)}}}", file=sys.stderr)
        return 2
    try:
        JOBS[args[0]]()
    except (InitError, services.ServiceError, OSError) as exc:
        print(f"error: {args[0]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
