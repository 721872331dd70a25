"""Object storage: small reads and writes through the lean signed request, everything else and
every failure through boto3, against the real SeaweedFS."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.config import Settings
from pipelines.platform import storage

ODD_KEYS = [
    "reports/validation/manual__2026-11-28T10:00:00+00:00/dt=2026-11-27/summary.md",
    "a b/c%d/e&f=g;h,i/ü/日本/~tilde/(x)!*'.json",
]


def _no_boto3(settings: Settings) -> Any:
    raise AssertionError("boto3 was asked for a request the lean path serves")


@pytest.mark.parametrize("key", ODD_KEYS)
def test_small_objects_round_trip_between_the_lean_path_and_boto3(settings: Settings, key: str) -> None:
    client = storage.s3_client(settings)
    storage.put_bytes(settings, key, b"written lean", "text/plain")
    answer = client.get_object(Bucket=settings.bucket, Key=key)
    assert answer["Body"].read() == b"written lean"
    assert answer["ContentType"] == "text/plain"
    assert storage.list_keys(settings, "") == [key]

    client.put_object(Bucket=settings.bucket, Key=key, Body=b"written by boto3")
    assert storage.get_bytes(settings, key) == b"written by boto3"


def test_small_reads_and_writes_do_not_go_through_boto3(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "s3_client", _no_boto3)
    storage.put_json(settings, "x/one.json", {"a": 1})
    assert storage.get_json(settings, "x/one.json") == {"a": 1}


def test_failures_and_big_bodies_still_go_through_boto3(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(storage.StorageError, match=f"missing object s3://{settings.bucket}/nope/none.json"):
        storage.get_bytes(settings, "nope/none.json")

    monkeypatch.setattr(storage, "LEAN_MAX_BYTES", 10)
    storage.put_bytes(settings, "x/big.bin", b"y" * 11)
    assert storage.get_bytes(settings, "x/big.bin") == b"y" * 11
    monkeypatch.setattr(storage, "s3_client", _no_boto3)
    with pytest.raises(AssertionError, match="boto3 was asked"):
        storage.put_bytes(settings, "x/big2.bin", b"y" * 11)


def test_a_request_the_server_refuses_is_made_again_through_boto3(settings: Settings,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong keys in the lean path: the server answers 403, boto3 then makes the request (with the
    right keys here, so it succeeds; with wrong ones its error is the one reported)."""
    from botocore.credentials import Credentials

    lean = storage._lean(settings)
    assert lean is not None
    monkeypatch.setattr(lean, "_credentials", Credentials("nobody", "wrong-secret"))
    assert lean.request("PUT", settings.bucket, "x/refused.json", b"{}") is None
    storage.put_bytes(settings, "x/refused.json", b"{}")
    assert storage.get_bytes(settings, "x/refused.json") == b"{}"


def test_https_endpoints_and_missing_credentials_use_boto3_only(settings: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert storage._lean_client("https://s3.example.com", "us-east-1", "k") is None
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage.reset_clients()
    try:
        assert storage._lean(settings) is None
    finally:
        storage.reset_clients()


@pytest.mark.parametrize("key", ODD_KEYS)
def test_a_small_object_of_known_size_is_copied_by_one_lean_request(settings: Settings, key: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    storage.put_bytes(settings, key, b"copied")
    monkeypatch.setattr(storage, "s3_client", _no_boto3)
    storage.copy_key(settings, key, key + ".copy", size=6)
    assert storage.get_bytes(settings, key + ".copy") == b"copied"


def test_a_copy_of_a_missing_source_still_fails_naming_it(settings: Settings) -> None:
    with pytest.raises(storage.StorageError, match="cannot copy s3://.*/nope/none.csv to x/y.csv"):
        storage.copy_key(settings, "nope/none.csv", "x/y.csv", size=10)


def test_a_forked_process_opens_its_own_connections(settings: Settings) -> None:
    import os

    storage.put_bytes(settings, "x/parent.json", b"{}")
    assert storage._lean(settings) is not None and storage._lean_client.cache_info().currsize
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no client of the parent's, and its own requests work
        fresh = storage._lean_client.cache_info().currsize == 0 and storage._client.cache_info().currsize == 0
        try:
            storage.put_bytes(settings, "x/child.json", b"[]")
            worked = storage.get_bytes(settings, "x/parent.json") == b"{}"
        except Exception:  # noqa: BLE001 - reported through the pipe
            worked = False
        os.write(write, b"1" if fresh and worked else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert storage.get_bytes(settings, "x/child.json") == b"[]"


def test_writes_the_server_refuses_are_named_storage_errors(settings: Settings, tmp_path) -> None:
    # A write refused by the server (here: a key longer than S3's 1,024 bytes; in the field, a store
    # out of volumes) raised botocore's ClientError, which the command line printed as a traceback.
    key = "x/" + "k" * 1100
    with pytest.raises(storage.StorageError, match=r"cannot write s3://.*/x/kkk+: An error occurred \(\w+\)"):
        storage.put_bytes(settings, key, b"{}")
    with pytest.raises(storage.StorageError, match=r"cannot write s3://.*/x/kkk+: An error occurred"):
        storage.put_bytes(settings, key, b"y" * (storage.LEAN_MAX_BYTES + 1))
    local = tmp_path / "a.bin"
    local.write_bytes(b"abc")
    with pytest.raises(storage.StorageError, match=r"cannot write s3://.*/x/kkk+ \(from .*a.bin\): "):
        storage.upload_file(settings, local, key)
