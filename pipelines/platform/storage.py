"""Object storage at the edge: the only module that talks to S3 (through boto3, and a lean signed
request for small reads and writes: see :class:`_Lean`).

Keys come from :mod:`pipelines.platform.layout`; nothing here knows what they mean. Partitions
are replaced as a whole: callers write the parts and, for predictions, the ``_SUCCESS`` manifest
last, so a reader that checks the manifest never sees a half-written partition.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import Settings

_DELETE_BATCH = 1000  # the S3 API's limit for one DeleteObjects call


class StorageError(RuntimeError):
    """Object storage could not be reached, a key is missing or a write failed; the message names the key."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[5:].partition("/")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key, ETag and size in bytes."""

    key: str
    etag: str
    size: int


def uri(settings: Settings, key: str) -> str:
    return f"s3://{settings.bucket}/{key}"


# Connections one client keeps: a step moves several large files at once (the scoring plan: four
# days read and its buckets uploaded), each in parts on boto3's transfer threads (10 per file).
# With boto3's default of 10, urllib3 dropped the extra connections and warned for each.
MAX_POOL_CONNECTIONS = 64


@lru_cache(maxsize=8)
def _client(endpoint_url: str, region: str, access_key_id: str | None) -> Any:
    import boto3  # boto3 costs ~0.3 s to import: only when storage is really used
    from botocore.config import Config

    # A session of its own: boto3's default session caches the first credentials it resolves,
    # so a process that talks to two stacks (tests, `stack run`) would sign with stale keys.
    # ``access_key_id`` is part of the cache key for the same reason; the secret stays in the env.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"},
                      connect_timeout=5, read_timeout=120, max_pool_connections=MAX_POOL_CONNECTIONS),
    )


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for the configured endpoint (credentials from the environment)."""
    return _client(settings.s3_endpoint_url, settings.s3_region, os.environ.get("AWS_ACCESS_KEY_ID"))


def reset_clients() -> None:
    """Forget cached clients (after the credentials in the environment changed, and in a forked child)."""
    _client.cache_clear()
    _lean_client.cache_clear()


# A forked process (Airflow runs each task in one) must not share its parent's pooled connections:
# two processes reading answers from one socket would mix them up. The child opens its own.
os.register_at_fork(after_in_child=reset_clients)


# Bodies up to this size go through :class:`_Lean`; larger ones are dominated by the transfer, not
# by the request's overhead, and keep boto3's checksums and multipart handling.
LEAN_MAX_BYTES = 8 << 20


class _Lean:
    """GET and PUT of one small object as a plain SigV4-signed request over a urllib3 pool.

    boto3 spends about 1.5 ms of CPU on each request (its event hooks, parameter validation,
    serialisation and response parsing); this spends about 0.5 ms. That is most of the cost of
    a data step on a long history of small partitions, which makes several requests per day.
    Only the happy path is served here: any answer other than 200, and any connection error,
    returns None and the caller makes the same request through boto3, so errors, retries and
    their messages stay boto3's. Plain-HTTP endpoints only (the product's own SeaweedFS); the
    payload's SHA-256 is signed, so the server rejects a body changed in transit.
    """

    def __init__(self, endpoint_url: str, region: str) -> None:
        import boto3
        import urllib3

        self._base = endpoint_url.rstrip("/")
        self._region = region
        self._credentials = boto3.session.Session().get_credentials()  # boto3's resolution chain
        self._pool = urllib3.PoolManager(
            maxsize=MAX_POOL_CONNECTIONS, timeout=urllib3.Timeout(connect=5, read=120),
            retries=urllib3.Retry(total=1, read=0, status=0, redirect=0))  # once more on a stale connection

    @property
    def usable(self) -> bool:
        return self._credentials is not None

    def request(self, method: str, bucket: str, key: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> bytes | None:
        """The body of a 200 answer, or None (the caller then asks boto3)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.utils import percent_encode

        try:
            url = f"{self._base}/{percent_encode(bucket)}/{percent_encode(key, safe='/~')}"
            request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
            S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(request)
            answer = self._pool.request(method, url, body=body, headers=dict(request.headers.items()))
        except Exception:  # noqa: BLE001 - any failure: boto3 makes the request again and reports it
            return None
        return answer.data if answer.status == 200 else None


@lru_cache(maxsize=8)
def _lean_client(endpoint_url: str, region: str, access_key_id: str | None) -> _Lean | None:
    if not endpoint_url.startswith("http://"):
        return None
    lean = _Lean(endpoint_url, region)
    return lean if lean.usable else None


def _lean(settings: Settings) -> _Lean | None:
    return _lean_client(settings.s3_endpoint_url, settings.s3_region, os.environ.get("AWS_ACCESS_KEY_ID"))


def ensure_bucket(settings: Settings, bucket: str | None = None) -> None:
    """Create the bucket if it does not exist yet (idempotent)."""
    client = s3_client(settings)
    name = bucket or settings.bucket
    try:
        client.head_bucket(Bucket=name)
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=name)


def wait_writable(endpoint_url: str, bucket: str, key: str, credentials: Mapping[str, str], *,
                  region: str = "us-east-1", timeout: float = 60.0) -> None:
    """Wait until a freshly started S3 server at ``endpoint_url`` has ``bucket`` (created when
    missing) and accepts a write of ``key``. Signs with ``credentials`` (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``), not this process's environment: the server was just given them.
    Raises :class:`StorageError` with the last error when ``timeout`` passes."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region,
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client.head_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key=key, Body=b"ok")
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"; reported below
            last = exc
            with contextlib.suppress(Exception):
                client.create_bucket(Bucket=bucket)
            time.sleep(1)
    raise StorageError(f"S3 at {endpoint_url} did not accept writes to bucket {bucket!r}: {last}")


def list_objects(settings: Settings, prefix: str) -> list[ObjectInfo]:
    """Every object under ``prefix`` in the bucket with its ETag and size, sorted by key."""
    client = s3_client(settings)
    found: list[ObjectInfo] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix):
            found.extend(ObjectInfo(o["Key"], o.get("ETag", ""), int(o.get("Size", 0)))
                         for o in page.get("Contents", []))
    except client.exceptions.ClientError as exc:  # e.g. NoSuchBucket, AccessDenied: name what was listed
        raise StorageError(f"cannot list s3://{settings.bucket}/{prefix}: {exc}") from exc
    return sorted(found, key=lambda o: o.key)


def list_keys(settings: Settings, prefix: str) -> list[str]:
    """All keys under ``prefix`` in the bucket, sorted."""
    return [o.key for o in list_objects(settings, prefix)]


def list_partitions(settings: Settings, area: str) -> list[dt.date]:
    """Dates that have at least one object under ``area/dt=.../``, sorted."""
    client = s3_client(settings)
    dates: list[dt.date] = []
    paginator = client.get_paginator("list_objects_v2")
    try:
        pages = list(paginator.paginate(Bucket=settings.bucket, Prefix=f"{area}/dt=", Delimiter="/"))
    except client.exceptions.ClientError as exc:
        raise StorageError(f"cannot list s3://{settings.bucket}/{area}/dt=...: {exc}") from exc
    for page in pages:
        for common in page.get("CommonPrefixes", []):
            text = common["Prefix"].rstrip("/").rsplit("dt=", 1)[-1]
            try:
                dates.append(dt.date.fromisoformat(text))
            except ValueError:
                continue
    return sorted(dates)


def exists(settings: Settings, key: str) -> bool:
    client = s3_client(settings)
    try:
        client.head_object(Bucket=settings.bucket, Key=key)
    except client.exceptions.ClientError:
        return False
    return True


def delete_keys(settings: Settings, keys: Iterable[str]) -> int:
    """Delete ``keys`` in batches; returns how many were deleted.

    Raises :class:`StorageError` naming the keys S3 reports as not deleted (DeleteObjects answers
    200 even when single keys fail)."""
    client = s3_client(settings)
    keys = list(keys)
    for start in range(0, len(keys), _DELETE_BATCH):
        chunk = keys[start:start + _DELETE_BATCH]
        answer = client.delete_objects(Bucket=settings.bucket, Delete={"Objects": [{"Key": k} for k in chunk]})
        errors = answer.get("Errors") or []
        if errors:
            listed = ", ".join(f"{e.get('Key')} ({e.get('Code')}: {e.get('Message')})" for e in errors[:5])
            raise StorageError(f"s3://{settings.bucket}: {len(errors)} of {len(chunk)} keys not deleted: {listed}")
    return len(keys)


def delete_key(settings: Settings, key: str) -> None:
    """Delete one object; a missing key is not an error."""
    s3_client(settings).delete_object(Bucket=settings.bucket, Key=key)


def delete_prefix(settings: Settings, prefix: str) -> int:
    """Delete every object under ``prefix``; returns how many were deleted."""
    if not prefix or not prefix.endswith("/"):
        raise ValueError(f"refusing to delete a prefix that is not a folder: {prefix!r}")
    return delete_keys(settings, list_keys(settings, prefix))


def put_bytes(settings: Settings, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
    lean = _lean(settings) if len(data) <= LEAN_MAX_BYTES else None
    if lean is None or lean.request("PUT", settings.bucket, key, data, {"Content-Type": content_type}) is None:
        client = s3_client(settings)
        try:
            client.put_object(Bucket=settings.bucket, Key=key, Body=data, ContentType=content_type)
        except client.exceptions.ClientError as exc:  # a missing bucket, no space left on the server, ...
            raise StorageError(f"cannot write s3://{settings.bucket}/{key}: {exc}") from exc
    return uri(settings, key)


def get_bytes(settings: Settings, key: str) -> bytes:
    lean = _lean(settings)
    if lean is not None and (data := lean.request("GET", settings.bucket, key)) is not None:
        return data
    client = s3_client(settings)
    try:
        return client.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey as exc:
        raise StorageError(f"missing object s3://{settings.bucket}/{key}") from exc
    except client.exceptions.NoSuchBucket as exc:
        raise StorageError(f"missing object s3://{settings.bucket}/{key}: there is no bucket {settings.bucket!r} "
                           "(IM_BUCKET)") from exc


def upload_file(settings: Settings, path: str | Path, key: str) -> str:
    from boto3.exceptions import S3UploadFailedError

    client = s3_client(settings)
    try:
        client.upload_file(str(path), settings.bucket, key)
    except (client.exceptions.ClientError, S3UploadFailedError) as exc:
        raise StorageError(f"cannot write s3://{settings.bucket}/{key} (from {path}): {exc}") from exc
    return uri(settings, key)


def download_file(settings: Settings, key: str, path: str | Path) -> str:
    client = s3_client(settings)
    try:
        client.download_file(settings.bucket, key, str(path))
    except client.exceptions.ClientError as exc:
        raise StorageError(f"cannot download s3://{settings.bucket}/{key}: {exc}") from exc
    return str(path)


def download_uri(settings: Settings, source: str, path: str | Path) -> str:
    """Download ``s3://bucket/key`` (any bucket on the configured endpoint) to ``path``."""
    loc = S3Uri.parse(source)
    try:
        s3_client(settings).download_file(loc.bucket, loc.key, str(path))
    except Exception as exc:  # botocore raises several error types for a missing key or bucket
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise StorageError(f"{source}: cannot download: there is no such object (no key {loc.key!r} in bucket "
                               f"{loc.bucket!r}, or no such bucket) on {settings.s3_endpoint_url}") from exc
        raise StorageError(f"{source}: cannot download ({exc})") from exc
    return str(path)


def put_json(settings: Settings, key: str, payload: Any) -> str:
    data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
    return put_bytes(settings, key, data, "application/json")


def get_json(settings: Settings, key: str) -> Any:
    return json.loads(get_bytes(settings, key))


def put_text(settings: Settings, key: str, text: str) -> str:
    return put_bytes(settings, key, text.encode(), "text/plain; charset=utf-8")


def write_parquet(settings: Settings, key: str, table: pa.Table) -> str:
    """Write one Arrow table as a Parquet object; returns its s3:// URI."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return put_bytes(settings, key, buffer.getvalue())


def read_parquet(settings: Settings, key: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(get_bytes(settings, key)), columns=columns)


def iter_parquet_prefix(settings: Settings, prefix: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Yield the tables of every ``*.parquet`` object under ``prefix``, one at a time (bounded memory)."""
    for key in list_keys(settings, prefix):
        if key.endswith(".parquet"):
            yield read_parquet(settings, key, columns)


def copy_key(settings: Settings, source_key: str, key: str, *, size: int | None = None) -> str:
    """Server-side copy of one object of the bucket to ``key`` (replaces ``key`` whole; multipart for big
    objects); raises :class:`StorageError` when the source is missing. ``size``: the source's size
    when the caller knows it; a small object is then copied by one lean request."""
    lean = _lean(settings) if size is not None and size <= LEAN_MAX_BYTES else None
    if lean is not None:
        from botocore.utils import percent_encode

        source = percent_encode(f"{settings.bucket}/{source_key}", safe="/~")
        answer = lean.request("PUT", settings.bucket, key, b"", {"x-amz-copy-source": source})
        # A copy can fail after its 200 status line: the body then holds an <Error> instead.
        if answer is not None and b"<CopyObjectResult" in answer and b"<Error>" not in answer:
            return uri(settings, key)
    client = s3_client(settings)
    try:
        client.copy({"Bucket": settings.bucket, "Key": source_key}, settings.bucket, key)
    except client.exceptions.ClientError as exc:
        raise StorageError(f"cannot copy s3://{settings.bucket}/{source_key} to {key}: {exc}") from exc
    return uri(settings, key)
