"""Shared fixtures: the real embedded services, started once per test session on free ports.

Tests that need S3 or MLflow take the ``settings`` fixture (a fresh bucket per test, services
started on first use) or ``services`` (the session-wide endpoints). Nothing here is mocked:
SeaweedFS serves the S3 API (filer and volumes behind JWT keys, as in the stacks), an MLflow
server with a SQLite store and its basic-auth app proxies artifacts to it; clients authenticate
as the non-admin ``pipelines`` account through MLFLOW_TRACKING_USERNAME/PASSWORD, as tasks do.
"""

from __future__ import annotations

import itertools
import os
import secrets
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.config import Settings, load_settings
from pipelines.devstack import credentials
from pipelines.devstack import services as svc

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BASE_BUCKET = "im-test"
_bucket_numbers = itertools.count()

# Airflow reads its configuration when first imported: give the test session a throw-away home
# so no test touches ~/airflow or a running `make up` stack.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="im-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))


@dataclass(frozen=True)
class Services:
    s3_endpoint_url: str
    tracking_uri: str
    env: dict[str, str]
    filer_url: str = ""


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """SeaweedFS + MLflow server on free ports, for the whole test session; stopped at the end."""
    root = tmp_path_factory.mktemp("stack")
    secrets_dir = credentials.make_private_dir(root / "secrets")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "AWS_"))}
    env["AWS_ACCESS_KEY_ID"] = "test-" + secrets.token_hex(4)
    env["AWS_SECRET_ACCESS_KEY"] = secrets.token_hex(16)
    security = credentials.write_seaweed_security(
        secrets_dir / "seaweedfs", "\n".join(secrets.token_hex(24) for _ in credentials.SEAWEED_JWT_SECTIONS))
    seaweed = svc.start_seaweedfs(root / "seaweedfs", svc.seaweed_ports(svc.free_port()), env, BASE_BUCKET,
                                  root / "logs" / "seaweedfs.log", security_dir=security.parent)
    started = [seaweed]
    try:
        endpoint = seaweed.extra["s3_endpoint_url"]
        env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
        admin_password = secrets.token_urlsafe(18)
        auth = svc.MlflowAuth(
            config_path=credentials.write_mlflow_auth(secrets_dir / "mlflow_auth.ini", admin_password,
                                                      f"sqlite:///{root / 'mlflow' / 'auth.db'}"),
            flask_secret=secrets.token_urlsafe(24), admin_user=credentials.MLFLOW_ADMIN_USER,
            admin_password=admin_password, client_user=credentials.MLFLOW_CLIENT_USER,
            client_password=secrets.token_urlsafe(18))
        mlflow = svc.start_mlflow(svc.free_port(), root / "mlflow" / "mlflow.db",
                                  f"s3://{BASE_BUCKET}/mlflow-artifacts", env, root / "logs" / "mlflow.log",
                                  auth=auth)
        started.append(mlflow)
        published = {
            "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": endpoint,
            "MLFLOW_TRACKING_URI": mlflow.extra["tracking_uri"],
            **auth.client_env(),
            "IM_S3_ENDPOINT_URL": endpoint,
            "IM_MLFLOW_TRACKING_URI": mlflow.extra["tracking_uri"],
        }
        saved = {k: os.environ.get(k) for k in published}
        os.environ.update(published)
        yield Services(endpoint, mlflow.extra["tracking_uri"], published, seaweed.extra["filer_url"])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture()
def settings(services: Services, tmp_path: Path) -> Iterator[Settings]:
    """Settings pointing at the live services, with a bucket of its own (no test sees another's data).

    The bucket is emptied and deleted afterwards: SeaweedFS gives every bucket a volume of its
    own, and the number of volumes is bounded by the free disk (free space / 128 MB), so a long
    session that kept its buckets would run out of volumes ("InternalError" on PutObject)."""
    from pipelines.platform import storage

    bucket = f"{BASE_BUCKET}-{os.getpid()}-{next(_bucket_numbers)}"
    result = load_settings(environ={}, s3_endpoint_url=services.s3_endpoint_url,
                           mlflow_tracking_uri=services.tracking_uri, bucket=bucket,
                           work_dir=tmp_path / "work")
    storage.ensure_bucket(result)
    yield result
    _drop_bucket(result)


def _drop_bucket(settings: Settings) -> None:
    from pipelines.platform import storage

    try:
        storage.delete_keys(settings, storage.list_keys(settings, ""))
        storage.s3_client(settings).delete_bucket(Bucket=settings.bucket)
    except Exception as exc:  # a test that stopped SeaweedFS, or left it unwritable, keeps its bucket
        warnings.warn(f"could not delete test bucket {settings.bucket}: {exc}", stacklevel=1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real Taobao and Ciao files); tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it lives beside the repo for developers and CI)")
    return SHARED_DATA
