"""Operations end to end on a real embedded stack (SeaweedFS, MLflow, Airflow on free ports), with
the real DAGs and a webhook receiver on 127.0.0.1 as the alert channel:

- the ingest DAG lands an inbox drop, announces the raw-events asset, defers while the inbox is
  empty and fails (with an alert) on a bad manifest;
- a training run the gate refuses sends a gate alert; a failing training run leaves its MLflow run
  FAILED and sends a failure alert;
- scoring writes the migration reports; a run still unfinished at its deadline sends a late alert,
  backfills of old days do not;
- the plugin page answers only behind Airflow's login, is used in a real browser (Chromium driven
  by Playwright, logged in through Airflow's login page), and stays fast while MLflow and S3 hang.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import Settings, load_settings
from pipelines.data import synthetic
from pipelines.devstack import airflow_api, credentials, demo, environment, lifecycle
from pipelines.devstack.config import StackConfig, isolated_config
from pipelines.ops import callbacks, migration_report
from pipelines.platform import layout, storage, tracking
from pipelines.serving import predictions
from tests.test_ops_notify import webhook_server

pytestmark = [pytest.mark.services, pytest.mark.airflow, pytest.mark.slow]

BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DATA_START, DATA_DAYS = dt.date(2017, 11, 1), 12
DATA_END = DATA_START + dt.timedelta(days=DATA_DAYS - 1)
CLIENT_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                    "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")


@dataclasses.dataclass
class Stack:
    cfg: StackConfig
    api: airflow_api.AirflowApi
    settings: Settings
    received: list[Any]
    late_day: dt.date
    deadline: dt.datetime

    def alerts(self) -> list[str]:
        return [body["text"] for _, _, body in self.received]

    def wait_for_alert(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [text for text in self.alerts() if needle in text]
            if found:
                return found[0]
            time.sleep(3)
        raise AssertionError(f"no alert with {needle!r} within {timeout:.0f}s; got: {self.alerts()}")

    def run(self, dag_id: str, run_id: str, *, conf: dict | None = None, logical_date: str | None = None,
            timeout: float = 600) -> str:
        airflow_api.ensure_unpaused(self.api, dag_id)
        self.api.call("POST", f"/dags/{dag_id}/dagRuns", body={"dag_run_id": run_id, "logical_date": logical_date,
                                                               "conf": conf or {}})
        return airflow_api.wait_for_runs(self.api, dag_id, [run_id], timeout=timeout, out=lambda _: None)[run_id]

    def pids(self, name: str) -> list[int]:
        """Stack process ``name`` and every process under it (MLflow serves from worker children)."""
        family = [int(json.loads(self.cfg.state_file.read_text())["processes"][name]["pid"])]
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        for pid in family:
            family.extend(child for child, parent in parents.items() if parent == pid)
        return family


@contextlib.contextmanager
def _client_environment(env: dict[str, str]) -> Iterator[None]:
    """This process talks to the stack as its users do: credentials from stack.env."""
    saved = {k: os.environ.get(k) for k in CLIENT_VARIABLES}
    os.environ.update({k: env[k] for k in CLIENT_VARIABLES if k in env})
    storage.reset_clients()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        storage.reset_clients()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("ops-stack")
    cfg = isolated_config(root / "stack")
    # The deadline of a manual scoring run for "yesterday" falls a few minutes after the start, so
    # the late-partition alert fires while the other tests run.
    target = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).replace(second=0, microsecond=0)
    late_day = target.date() - dt.timedelta(days=1)
    with webhook_server() as server, contextlib.ExitStack() as cleanup:
        url_file = root / "webhook_url"
        url_file.write_text(f"http://127.0.0.1:{server.server_port}/hooks/ops-test")
        env = {**os.environ, "IM_NOTIFY_CHANNEL": "webhook", "IM_NOTIFY_WEBHOOK_URL_FILE": str(url_file),
               "IM_EPOCHS": "1", "IM_HORIZON_DAYS": "1", "IM_GATE_MARGIN_VS_BASELINES": "1",
               "IM_UI_CACHE_SECONDS": "2", "IM_UI_TIMEOUT_SECONDS": "2", "IM_INBOX_POLL_SECONDS": "5",
               "IM_SCORING_DEADLINE": f"{target:%H:%M}"}
        cleanup.callback(lifecycle.down, cfg, out=lambda _: None)
        lifecycle.up(cfg, out=lambda _: None, environ=env)
        client_env = environment.read_env_file(cfg.env_file)
        cleanup.enter_context(_client_environment(client_env))
        api = airflow_api.AirflowApi(cfg)
        airflow_api.ensure_unpaused(api, "interest_migration_scoring")
        api.call("POST", "/dags/interest_migration_scoring/dagRuns",
                 body={"dag_run_id": "late-check", "logical_date": f"{late_day}T00:00:00Z", "conf": {}})
        yield Stack(cfg, api, load_settings(environ=client_env), server.received, late_day, target)


def test_ingest_lands_a_drop_defers_when_empty_and_fails_on_a_bad_manifest(stack, tmp_path):
    data = synthetic.generate_taobao(tmp_path / "data", users=150, days=DATA_DAYS, categories=16, start=DATA_START,
                                     seed=5)
    storage.upload_file(stack.settings, data.events_path, layout.inbox_key("drop.csv"))
    storage.put_json(stack.settings, layout.inbox_key("drop.manifest.json"), {"file": "drop.csv", "format": "taobao"})
    assert stack.run("interest_migration_ingest", "ingest-1") == "success"
    landed = storage.list_partitions(stack.settings, layout.RAW)
    assert landed[0] <= DATA_START and DATA_END in landed
    assert storage.list_keys(stack.settings, layout.area_prefix(layout.INBOX)) == []
    assert storage.exists(stack.settings, layout.inbox_outcome_key("processed", "ingest-1", "drop.landing.json"))
    (asset,) = stack.api.get("/assets", uri_pattern="raw/events")["assets"]
    (event,) = stack.api.get("/assets/events", asset_id=asset["id"])["asset_events"]
    assert event["extra"]["batch"] == "ingest-1" and DATA_END.isoformat() in event["extra"]["dates"]

    # An empty inbox: the sensor defers (no worker slot) and lists again every 5 s.
    airflow_api.ensure_unpaused(stack.api, "interest_migration_ingest")
    stack.api.call("POST", "/dags/interest_migration_ingest/dagRuns",
                   body={"dag_run_id": "ingest-2", "logical_date": None, "conf": {}})
    deadline = time.monotonic() + 240
    while airflow_api.task_states(stack.api, "interest_migration_ingest", "ingest-2").get("wait_for_files") != "deferred":
        assert time.monotonic() < deadline, airflow_api.task_states(stack.api, "interest_migration_ingest", "ingest-2")
        time.sleep(2)
    storage.put_text(stack.settings, layout.inbox_key("sheet.xlsx"), "PK")
    storage.put_json(stack.settings, layout.inbox_key("sheet.manifest.json"), {"file": "sheet.xlsx", "format": "excel"})
    states = airflow_api.wait_for_runs(stack.api, "interest_migration_ingest", ["ingest-2"], timeout=300,
                                       out=lambda _: None)
    assert states == {"ingest-2": "failed"}
    assert airflow_api.task_states(stack.api, "interest_migration_ingest", "ingest-2") == {
        "wait_for_files": "success", "land_files": "success", "announce_landed": "skipped", "check_failures": "failed"}
    alert = stack.wait_for_alert("interest_migration_ingest run ingest-2 failed in task check_failures", 120)
    assert "field 'format' is 'excel'" in alert and "inbox/failed/ingest-2/sheet.xlsx" in alert


def test_training_alerts_on_a_gate_refusal_and_marks_a_failed_run_failed(stack):
    conf = {"data_start": DATA_START.isoformat(), "data_end": DATA_END.isoformat()}
    assert stack.run("interest_migration_training", "train-ok", conf=conf, timeout=1500) == "success"
    refused = stack.wait_for_alert("was not promoted to champion", 120)
    assert "version 1 of interest_migration" in refused and "run: train-ok" in refused
    finished = tracking.find_run(stack.settings, dag_id="interest_migration_training", dag_run_id="train-ok")
    assert tracking.client(stack.settings).get_run(finished).info.status == "FINISHED"

    one_day = {"data_start": DATA_END.isoformat(), "data_end": DATA_END.isoformat()}
    assert stack.run("interest_migration_training", "train-bad", conf=one_day, timeout=900) == "failed"
    failed = tracking.find_run(stack.settings, dag_id="interest_migration_training", dag_run_id="train-bad")
    run = tracking.client(stack.settings).get_run(failed)
    assert run.info.status == "FAILED", "a failed DAG run left its MLflow run " + run.info.status
    alert = stack.wait_for_alert("interest_migration_training run train-bad failed in task", 120)
    assert f"mlflow run: {failed}" in alert and run.data.tags[callbacks.TAG_FAILURE].startswith("[interest-migration]")


def test_scoring_writes_migration_reports_and_late_days_alert(stack):
    client = tracking.client(stack.settings)
    client.set_registered_model_alias(stack.settings.model_name, "champion", "1")  # promoted by hand
    first = DATA_END - dt.timedelta(days=1)
    states = demo.run_scoring_backfill(stack.api, first, DATA_END, timeout=900, out=lambda _: None)
    failures: list[str] = []
    for run_id in (r for r, state in states.items() if state != "success"):
        airflow_api.report_failures(stack.cfg, stack.api, "interest_migration_scoring", run_id, out=failures.append)
    assert set(states.values()) == {"success"}, "\n".join(failures)
    assert migration_report.report_dates(stack.settings) == [first, DATA_END]
    summary = migration_report.read_summary(stack.settings, DATA_END)
    manifest = predictions.read_manifest(stack.settings, DATA_END)
    assert summary["users"] == manifest["row_count"] > 0 and summary["model_version"] == "1"
    # The manual run for "yesterday" (no data: it fails) missed its deadline: a late alert, and only for it.
    wait = max(60.0, (stack.deadline - dt.datetime.now(dt.UTC)).total_seconds() + 240)
    late = stack.wait_for_alert("not published by", wait)
    assert f"predictions for {stack.late_day} not published by {stack.deadline.isoformat()}" in late
    assert not [a for a in stack.alerts() if "not published by" in a and "2017-" in a]


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None and os.environ.get("CI"):
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True, check=True,
                       capture_output=True, timeout=900)
        path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium); CI installs it")
    return path


def _get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=60) as answer:
            return answer.status, answer.read().decode(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace"), dict(exc.headers)


def test_plugin_answers_only_behind_the_login_and_works_in_a_browser(stack):
    playwright = pytest.importorskip("playwright.sync_api")
    base = f"{stack.cfg.airflow_url}/interest-migration"
    for path in ("/api/partitions", "/api/migration", "/api/monitoring", "/api/user?user=1&date=2017-11-12"):
        status, body, _ = _get(base + path)
        assert status == 401 and "Not authenticated" in body, (path, status)
    status, _, headers = _get(base + "/")
    login = urllib.parse.urljoin(base + "/", headers["location"])
    assert status == 303 and login.startswith(f"{stack.cfg.airflow_url}/auth/login?next=")
    assert _get(base + "/api/partitions", token="not-a-jwt")[0] == 403
    token = airflow_api.airflow_token(stack.cfg)
    status, body, _ = _get(base + "/api/partitions", token)
    assert status == 200 and json.loads(body)["aliases"].get("champion") == "1"

    user = predictions.read_predictions(stack.settings, DATA_END, columns=["user_id"])["user_id"][0].as_py()
    row = predictions.user_view(stack.settings, DATA_END, user)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=BROWSER_FLAGS)
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for_url("**/auth/login**")
            page.fill("input[name=username]", credentials.ADMIN_USER)
            page.fill("input[name=password]", credentials.admin_password(stack.cfg))
            page.click("button[type=submit]")
            page.wait_for_url(base + "/")
            assert page.inner_text("h1") == "Interest migration"
            assert page.locator("svg.heatmap rect").count() > 0
            assert "No monitoring yet" in page.inner_text("body")
            assert page.locator("svg.bars rect").count() > 0  # interest strength per category
            png = page.request.get(base + f"/api/migration/{DATA_END}/chart.png")  # the page's PNG link
            assert png.status == 200 and png.body()[:4] == b"\x89PNG"

            for day, model, baseline in ((DATA_END - dt.timedelta(days=1), 0.31, 0.28), (DATA_END, 0.27, 0.29)):
                storage.put_json(stack.settings, layout.monitoring_report_key(day, "metrics"), {
                    "as_of_date": day.isoformat(), "model_version": "1",
                    "metrics": {"model": {"ndcg_at_5": model}, "decayed_frequency": {"ndcg_at_5": baseline}}})
            time.sleep(3)  # past IM_UI_CACHE_SECONDS
            page.reload()
            assert page.locator("svg.lines polyline").count() == 2

            page.fill("input[name=user]", user)
            page.select_option("select[name=date]", DATA_END.isoformat())
            page.click("form button[type=submit]")
            page.wait_for_selector("#migration-score")
            assert page.inner_text("#migration-score") == f"{row['migration_score']:.3f}"
            assert page.locator("svg.bars rect").count() > 0
        finally:
            browser.close()


def test_page_stays_fast_while_mlflow_and_s3_hang(stack):
    token = airflow_api.airflow_token(stack.cfg)
    url = f"{stack.cfg.airflow_url}/interest-migration/"
    assert _get(url, token)[0] == 200  # warm the cache
    time.sleep(3)  # past IM_UI_CACHE_SECONDS: the next page must read again
    stopped = [*stack.pids("mlflow"), *stack.pids("seaweedfs")]
    try:
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        began = time.monotonic()
        status, body, _ = _get(url, token)
        elapsed = time.monotonic() - began
        fresh_url = f"{stack.cfg.airflow_url}/interest-migration/api/migration?date={DATA_START}"
        began = time.monotonic()
        api_status, api_body, _ = _get(fresh_url, token)
        api_elapsed = time.monotonic() - began
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    print(f"page with MLflow and S3 stopped: {elapsed:.1f}s; uncached API read: {api_elapsed:.1f}s")
    assert status == 200 and elapsed < 10, elapsed  # IM_UI_TIMEOUT_SECONDS=2, the reads run side by side
    assert "shown from cache: the source is slow right now" in body
    assert api_status == 504 and "did not answer within 2s" in api_body and api_elapsed < 10
    assert _get(url, token)[0] == 200  # and it recovers


def test_no_credential_or_webhook_url_in_the_logs(stack):
    secret, _ = credentials.ensure_secrets(stack.cfg)
    for log_file in [*stack.cfg.logs_dir.rglob("*.log"), *(stack.cfg.airflow_home / "logs").rglob("*.log")]:
        text = Path(log_file).read_text(errors="replace")
        assert "hooks/ops-test" not in text, f"{log_file} shows the webhook URL"
        assert not [name for name, value in secret.items() if value in text], log_file
