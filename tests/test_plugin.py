"""The Airflow UI plugin: registered and light to load, bounded and cached reads, and the page's
sections from real S3 data. Login, the browser and slow services are in tests/test_ops_stack.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import subprocess
import sys
import threading
import time

import pytest

from pipelines.platform import layout, storage
from pipelines.ui import page, reads
from pipelines.ui import plugin as plugin_module
from pipelines.ui.cache import BoundedCache, SlowSource
from tests.conftest import REPO_ROOT
from tests.published import publish

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)


def test_plugin_is_registered_through_the_airflow_entry_point():
    points = importlib.metadata.entry_points(group="airflow.plugins")
    assert any(p.value == "pipelines.ui.plugin:InterestMigrationPlugin" for p in points), list(points)


def test_plugin_declares_views_app_and_macro():
    plugin = plugin_module.InterestMigrationPlugin()
    assert {v["name"] for v in plugin.external_views} == {"Interest migration", "MLflow"}
    (app,) = plugin.fastapi_apps
    assert app["url_prefix"] == "/interest-migration" and app["app"].title == "interest-migration"
    assert plugin_module.im_predictions_prefix("2024-01-02").endswith("/predictions/dt=2024-01-02/")


def test_loading_the_plugin_does_not_load_the_web_app():
    # Every Airflow process loads plugins (workers for the macro): only the API server needs the app.
    code = ("import sys; import pipelines.ui.plugin as p; "
            "print(','.join(m for m in ('pipelines.ui.app', 'airflow.api_fastapi.core_api.security', 'mlflow', "
            "'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip().splitlines()[-1:] in ([], [""]), out.stdout


def test_cache_bounds_a_slow_read_and_serves_the_last_good_value():
    cache = BoundedCache(workers=2)
    calls: list[float] = []
    release = threading.Event()

    def slow() -> str:
        calls.append(time.monotonic())
        release.wait(30)
        return "fresh"

    began = time.monotonic()
    with pytest.raises(SlowSource, match=r"S3 \(test\) did not answer within 0.2s"):
        cache.get("k", slow, ttl=60, timeout=0.2, what="S3 (test)")
    assert time.monotonic() - began < 5  # the caller is released long before the read ends
    # Many waiting callers share the one read in flight (a dead source costs one thread per key).
    for _ in range(5):
        with pytest.raises(SlowSource):
            cache.get("k", slow, ttl=60, timeout=0.05, what="S3 (test)")
    assert len(calls) == 1
    release.set()
    assert cache.get("k", slow, ttl=60, timeout=5, what="S3 (test)").value == "fresh"
    assert len(calls) == 1  # the late answer filled the cache
    # Past its ttl the value is read again; when that read is slow, the old value is served, stale.
    release.clear()
    stale = cache.get("k", slow, ttl=0, timeout=0.1, what="S3 (test)")
    assert (stale.value, stale.stale) == ("fresh", True) and len(calls) == 2
    release.set()

    def broken() -> str:
        raise OSError("connection refused")

    with pytest.raises(OSError, match="connection refused"):
        cache.get("other", broken, ttl=60, timeout=1, what="S3 (test)")


def _published(settings):
    from pipelines.ops import migration_report

    configured = publish(settings, {
        D1: [("alice", "i1", "shoes", "buy", 8), ("bob", "i2", "books", "view", 9), ("carol", "i3", "toys", "view", 9)],
        D2: [("alice", "i4", "bags", "view", 8), ("alice", "i5", "bags", "cart", 9), ("bob", "i2", "books", "buy", 10)]},
        [D2], lookback_days=2, scoring_shards=2)
    migration_report.write_report(configured, D2)
    return configured


@pytest.mark.services
def test_reads_and_page_sections_show_real_data(settings):
    configured = _published(settings)
    storage.put_text(configured, "predictions/dt=2024-03-03/part-00000.parquet", "half written")
    parts = reads.partitions(configured)
    assert parts["ok"] and not parts["stale"]
    by_date = {p["as_of_date"]: p for p in parts["value"]}
    assert by_date["2024-03-02"]["row_count"] == 3 and by_date["2024-03-03"]["status"].startswith("incomplete")
    assert reads.aliases(configured)["value"] == {"champion": "1"}

    flows = reads.migration(configured)
    assert flows["ok"] and flows["value"]["date"] == "2024-03-02" and flows["value"]["dates"] == ["2024-03-02"]
    html = page.migration_section(flows, "/interest-migration")
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="heatmap"' in html
    assert 'href="/interest-migration/api/migration/2024-03-02/chart.png"' in html
    # The interest-strength bars are SVG drawn by the browser (any script's fonts), one group per category.
    strength = flows["value"]["strength"]
    assert strength["category"][0] in html and '<svg xmlns="http://www.w3.org/2000/svg" class="bars"' in html
    expected = flows["value"]["summary"]["expected_new_category_users"]
    assert f"{expected:.1f} expected to touch a category new to them" in html
    assert reads.chart_png(configured, "2024-03-02")["value"][:4] == b"\x89PNG"

    empty = reads.monitoring(configured)
    assert empty == {"ok": True, "value": [], "stale": False}
    assert "No monitoring yet" in page.monitoring_section(empty, "ndcg_at_5")
    for day, model, baseline in ((D1, 0.31, 0.28), (D2, 0.27, 0.29)):
        storage.put_json(configured, layout.monitoring_report_key(day, "metrics"), {
            "as_of_date": day.isoformat(), "model_version": "1",
            "metrics": {"model": {"ndcg_at_5": model}, "decayed_frequency": {"ndcg_at_5": baseline}}})
    reads.CACHE.clear()
    series = reads.monitoring(configured)
    assert [p["as_of_date"] for p in series["value"]] == ["2024-03-01", "2024-03-02"]
    section = page.monitoring_section(series, "ndcg_at_5")
    assert 'class="lines"' in section and "model 2024-03-02: 0.2700" in section and "0.2900" in section

    found = reads.user(configured, "2024-03-02", "alice")
    assert found["ok"] and found["value"]["current_categories"][0] == "bags"
    shown = page.user_section("/interest-migration", ["2024-03-02"], "alice", "2024-03-02", found)
    assert f'id="migration-score">{found["value"]["migration_score"]:.3f}<' in shown and 'class="bars"' in shown
    missing = reads.user(configured, "2024-03-02", "zed")
    assert not missing["ok"] and "user 'zed' has no prediction for 2024-03-02" in missing["error"]
    nowhere = reads.migration(dataclasses.replace(configured, bucket=configured.bucket + "-none"))
    assert not nowhere["ok"]
