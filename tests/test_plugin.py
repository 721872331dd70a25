"""The Airflow UI plugin: loads, and its page lists published partitions from their manifests."""

from __future__ import annotations

import importlib.metadata

import pytest

from pipelines.ui import plugin as plugin_module


def _load_plugin_module():
    return plugin_module


def test_plugin_is_registered_through_the_airflow_entry_point():
    points = importlib.metadata.entry_points(group="airflow.plugins")
    assert any(p.value == "pipelines.ui.plugin:InterestMigrationPlugin" for p in points), list(points)


def test_plugin_declares_views_app_and_macro():
    module = _load_plugin_module()
    plugin = module.InterestMigrationPlugin
    assert {v["name"] for v in plugin.external_views} == {"Predictions", "MLflow"}
    assert plugin.fastapi_apps[0]["url_prefix"] == "/interest-migration"
    assert module.im_predictions_prefix("2024-01-02").endswith("/predictions/dt=2024-01-02/")


@pytest.mark.services
def test_page_lists_published_and_incomplete_partitions(settings, monkeypatch):
    from fastapi.testclient import TestClient

    from pipelines.platform import storage

    for name, value in (("IM_BUCKET", settings.bucket), ("IM_S3_ENDPOINT_URL", settings.s3_endpoint_url),
                        ("IM_MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)):
        monkeypatch.setenv(name, value)
    storage.put_json(settings, "predictions/dt=2024-01-02/_SUCCESS",
                     {"row_count": 7, "model_version": "3", "created_at": "2024-01-03T00:00:00Z"})
    storage.put_text(settings, "predictions/dt=2024-01-03/part-0.parquet", "half written")
    client = TestClient(_load_plugin_module().app)
    data = client.get("/api/partitions").json()
    by_date = {p["as_of_date"]: p for p in data["partitions"]}
    assert by_date["2024-01-02"]["row_count"] == 7 and by_date["2024-01-02"]["model_version"] == "3"
    assert by_date["2024-01-03"]["status"].startswith("incomplete")
    assert "2024-01-02" in client.get("/").text
