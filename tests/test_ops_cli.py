"""The operations commands (``migration-report``, ``ingest-inbox``, ``notify-test``) on real services."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json

import pytest

from pipelines.ops import cli
from pipelines.platform import layout, storage
from tests.published import publish
from tests.test_ops_notify import webhook_server

D = dt.date(2024, 4, 2)


def run(settings, capsys, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    cli.register_cli(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    code = args.func(args, settings)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.services
def test_migration_report_and_ingest_commands(settings, capsys):
    configured = publish(settings, {
        D - dt.timedelta(days=1): [("a", "i1", "shoes", "buy", 8), ("b", "i2", "books", "view", 9)],
        D: [("a", "i3", "bags", "view", 8), ("b", "i2", "books", "buy", 10), ("c", "i4", "toys", "view", 11)]},
        [D], lookback_days=2)
    capsys.readouterr()  # MLflow's own lines while the champion was logged
    code, out, _ = run(configured, capsys, "migration-report", "--date", D.isoformat())
    assert code == 0 and out.startswith(f"s3://{configured.bucket}/reports/migration/dt={D}/summary.json: 3 users")
    assert "expected to touch a new category" in out
    code, out, _ = run(configured, capsys, "migration-report", "--date", D.isoformat(), "--json")
    summary = json.loads(out)
    assert summary["users"] == 3 and 0 <= summary["expected_new_category_users"] <= 3
    code, _, err = run(configured, capsys, "migration-report", "--date", "2024-04-05")
    assert code == 1 and err.startswith("error: no published predictions for 2024-04-05")
    code, _, err = run(configured, capsys, "migration-report", "--date", "2024-13-01")
    assert code == 2 and "--date='2024-13-01' is not a date" in err

    storage.put_text(configured, layout.inbox_key("d.csv"), "1,101,7,pv,1511830800\n")
    storage.put_json(configured, layout.inbox_key("d.manifest.json"), {"file": "d.csv", "format": "taobao"})
    storage.put_json(configured, layout.inbox_key("e.manifest.json"), {"file": "e.csv", "format": "taobao"})
    code, out, _ = run(configured, capsys, "ingest-inbox", "--batch", "by-hand")
    assert code == 1  # one announced file is missing
    assert out.splitlines()[0] == "batch by-hand: 2 file(s), 1 rows landed on 2017-11-28"
    assert "inbox/events/e.manifest.json: failed (s3 key inbox/events/e.manifest.json: its data file" in out


def test_notify_test_command_reports_delivery_and_failure(capsys, tmp_path):
    from pipelines.config import load_settings

    base = load_settings(environ={})
    if not hasattr(base, "notify_channel"):
        pytest.fail("pipelines/config.py lacks the IM_NOTIFY_* settings (docs/operations.md, section 2)")
    with webhook_server() as server:
        url_file = tmp_path / "hook"
        url_file.write_text(f"http://127.0.0.1:{server.server_port}/hook")
        settings = dataclasses.replace(base, notify_channel="webhook", notify_webhook_url_file=url_file)
        code, out, _ = run(settings, capsys, "notify-test")
    assert code == 0 and out.strip() == "test alert delivered through webhook"
    assert server.received[0][2]["text"].startswith("[interest-migration] test alert")
    code, _, err = run(dataclasses.replace(settings, notify_webhook_url_file=tmp_path / "absent"), capsys,
                       "notify-test")
    assert code == 1 and err.startswith("error: webhook: webhook URL (IM_NOTIFY_WEBHOOK_URL_FILE): cannot read")
