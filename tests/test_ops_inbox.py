"""The inbox on real S3: announced files are landed through the landing adapters and moved with
their manifests; bad manifests and unreadable files go to failed/ with a reason; the deferrable
sensor lists the inbox and defers to a timer until a manifest appears."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.ops import inbox
from pipelines.ops.sensors import InboxSensor
from pipelines.platform import layout, storage

TAOBAO = "\n".join([
    "1,101,7,pv,1511830800",    # 2017-11-28 01:00 UTC
    "1,102,7,buy,1511834400",
    "2,103,9,cart,1511920800",  # 2017-11-29 02:00 UTC
]) + "\n"
GENERIC = "uid,sku,cat,action,at\nu1,s1,shoes,view,2017-11-28T10:00:00Z\nu2,s2,bags,buy,2017-11-28T11:00:00Z\n"


def _drop(settings, file_name: str, body: str, manifest: dict | None, manifest_name: str | None = None) -> None:
    storage.put_text(settings, layout.inbox_key(file_name), body)
    if manifest is not None:
        storage.put_json(settings, layout.inbox_key(manifest_name or layout.inbox_manifest_name(file_name)), manifest)


@pytest.mark.services
def test_announced_files_land_and_move_bad_ones_fail_with_a_reason(settings):
    _drop(settings, "shop-2017-11-28.csv", TAOBAO, {"file": "shop-2017-11-28.csv", "format": "taobao"})
    _drop(settings, "crm.csv", GENERIC, {"file": "crm.csv", "format": "csv", "name": "crm-export",
                                         "columns": {"user_id": "uid", "item_id": "sku", "category_id": "cat",
                                                     "behavior": "action", "ts": "at"}, "ts_format": "iso"})
    _drop(settings, "half-uploaded.csv", TAOBAO, None)                      # no manifest yet: left alone
    _drop(settings, "weird.xlsx", "PK...", {"file": "weird.xlsx", "format": "excel"})
    storage.put_json(settings, layout.inbox_key("ghost.manifest.json"), {"file": "ghost.csv", "format": "taobao"})
    _drop(settings, "nomap.csv", GENERIC, {"file": "nomap.csv", "format": "csv"})
    assert len(inbox.pending_manifests(settings)) == 5

    summary = inbox.ingest_pending(settings, inbox.batch_id("manual__2017-11-30T00:00:00+00:00"))
    assert summary["batch"] == "manual__2017-11-30T00_00_00_00_00"
    assert summary["dates"] == ["2017-11-28", "2017-11-29"] and summary["rows_landed"] == 5
    failed = summary["failed"]
    assert set(failed) == {layout.inbox_key(n) for n in ("weird.manifest.json", "ghost.manifest.json",
                                                         "nomap.manifest.json")}
    assert "field 'format' is 'excel'" in failed[layout.inbox_key("weird.manifest.json")]
    assert "its data file inbox/events/ghost.csv is not in the inbox" in failed[layout.inbox_key("ghost.manifest.json")]
    assert "needs a column map" in failed[layout.inbox_key("nomap.manifest.json")]

    # Landed through the adapters, under the manifest's name or <stem>-<etag>.
    raw = storage.list_keys(settings, layout.area_prefix(layout.RAW))
    assert layout.raw_key(dt.date(2017, 11, 28), "crm-export", layout.RAW_CSV) in raw
    assert any(k.rsplit("/", 1)[-1].startswith("shop-") and k.endswith(layout.RAW_CSV) for k in raw)
    # The inbox keeps only the unannounced file; everything else moved, with what happened to it.
    assert storage.list_keys(settings, layout.area_prefix(layout.INBOX)) == [layout.inbox_key("half-uploaded.csv")]
    batch = summary["batch"]
    processed = storage.list_keys(settings, f"{layout.INBOX_PROCESSED}/{batch}/")
    assert sorted(k.rsplit("/", 1)[-1] for k in processed) == [
        "crm.csv", "crm.landing.json", "crm.manifest.json", "shop-2017-11-28.csv", "shop-2017-11-28.landing.json",
        "shop-2017-11-28.manifest.json"]
    moved = storage.get_bytes(settings, layout.inbox_outcome_key("processed", batch, "shop-2017-11-28.csv"))
    assert moved.decode() == TAOBAO
    error = storage.get_json(settings, layout.inbox_outcome_key("failed", batch, "weird.error.json"))
    assert error["manifest"] == layout.inbox_key("weird.manifest.json") and "excel" in error["error"]
    assert storage.exists(settings, layout.inbox_outcome_key("failed", batch, "weird.xlsx"))

    with pytest.raises(inbox.IngestError, match=r"3 of 5 inbox file\(s\) not landed") as info:
        inbox.raise_for_failures(summary)
    assert "ghost.manifest.json" in str(info.value) and "inbox/failed/" in str(info.value)
    assert inbox.landed_event(summary) == {"dates": ["2017-11-28", "2017-11-29"], "rows": 5, "batch": batch}


@pytest.mark.services
def test_a_manifest_naming_itself_or_unreadable_is_named_in_its_error(settings):
    # A manifest whose 'file' was itself went to the lander, whose error named a local scratch path;
    # a manifest that is not UTF-8 failed with only the codec's words, naming neither manifest nor field.
    storage.put_json(settings, layout.inbox_key("self.manifest.json"), {"file": "self.manifest.json", "format": "csv"})
    storage.put_bytes(settings, layout.inbox_key("latin.manifest.json"), '{"file": "caf\xe9.csv"}'.encode("latin-1"))
    failed = inbox.ingest_pending(settings, "names")["failed"]
    assert failed[layout.inbox_key("self.manifest.json")] == (
        "s3 key inbox/events/self.manifest.json: field 'file' 'self.manifest.json' names a manifest, not a data file")
    latin = failed[layout.inbox_key("latin.manifest.json")]
    assert latin.startswith("s3 key inbox/events/latin.manifest.json: ") and "utf-8" in latin


def test_an_unknown_manifest_field_is_named_with_the_known_ones(tmp_path):
    # A misspelt option ('timezon') of a manifest without a column map reached the lander, whose
    # error spoke of a "column map" the manifest did not have.
    with pytest.raises(inbox.InboxError) as info:
        inbox.parse_manifest("inbox/events/a.manifest.json", {"file": "a.csv", "format": "taobao", "timezon": "UTC"},
                             tmp_path)
    assert str(info.value).startswith("s3 key inbox/events/a.manifest.json: unknown field(s) ['timezon'] "
                                      "(did you mean 'timezone'?); known fields: file, format, name, columns")
    ok = inbox.parse_manifest("inbox/events/a.manifest.json", {"file": "a.csv", "format": "taobao", "timezone": "UTC"},
                              tmp_path)
    assert ok.options == {"timezone": "UTC"}


@pytest.mark.services
def test_same_file_again_replaces_its_landing_and_an_empty_run_announces_nothing(settings):
    from airflow.sdk.exceptions import AirflowSkipException

    for attempt in ("a", "b"):
        _drop(settings, "shop.csv", TAOBAO, {"file": "shop.csv", "format": "taobao"})
        summary = inbox.ingest_pending(settings, f"run-{attempt}")
        assert summary["rows_landed"] == 3 and summary["failed"] == {}
    # Same bytes, same default name (<stem>-<etag>): the second landing replaced the first.
    landed = [k for k in storage.list_keys(settings, layout.area_prefix(layout.RAW)) if k.endswith(layout.RAW_CSV)]
    assert len(landed) == 2  # one file per UTC day, not four
    # The same file handled twice in one batch (a retried task, `ingest-inbox --batch X` twice): the
    # second copy and its note go to <batch>-2/, the first ones are kept.
    for _ in range(2):
        _drop(settings, "shop.csv", TAOBAO, {"file": "shop.csv", "format": "taobao"})
        assert inbox.ingest_pending(settings, "run-same")["rows_landed"] == 3
    for folder in ("run-same", "run-same-2"):
        kept = storage.list_keys(settings, layout.inbox_outcome_key("processed", folder, ""))
        assert sorted(k.rsplit("/", 1)[-1] for k in kept) == ["shop.csv", "shop.landing.json",
                                                              "shop.manifest.json"], kept
    empty = inbox.ingest_pending(settings, "run-c")
    assert empty["files"] == 0 and empty["dates"] == []
    with pytest.raises(AirflowSkipException, match="nothing landed in batch run-c"):
        inbox.landed_event(empty)
    inbox.raise_for_failures(empty)


@pytest.mark.services
def test_sensor_defers_to_a_timer_until_a_manifest_appears(settings, monkeypatch):
    from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException, TaskDeferred

    for name, value in (("IM_BUCKET", settings.bucket), ("IM_S3_ENDPOINT_URL", settings.s3_endpoint_url)):
        monkeypatch.setenv(name, value)
    sensor = InboxSensor(task_id="wait_for_files", poll_seconds=30, timeout=600, soft_fail=True)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert type(trigger).__name__ == "DateTimeTrigger" and deferred.value.method_name == "check"
    started = deferred.value.kwargs["started"]
    assert 25 <= (trigger.moment - dt.datetime.fromisoformat(started)).total_seconds() <= 31
    # Resumed after the timer: still nothing, so it defers again, keeping its start time.
    with pytest.raises(TaskDeferred) as again:
        sensor.check({}, started=started, event=trigger.moment)
    assert again.value.kwargs == {"started": started}
    _drop(settings, "late.csv", TAOBAO, {"file": "late.csv", "format": "taobao"})
    assert sensor.check({}, started=started) == [layout.inbox_key("late.manifest.json")]
    storage.delete_key(settings, layout.inbox_key("late.manifest.json"))
    long_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=601)).isoformat()
    with pytest.raises(AirflowSkipException, match="no manifest in the inbox after 60[0-9]s"):
        sensor.check({}, started=long_ago)
    strict = InboxSensor(task_id="strict", poll_seconds=30, timeout=600)
    with pytest.raises(AirflowSensorTimeout):
        strict.check({}, started=long_ago)
