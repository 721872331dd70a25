"""Airflow UI extension: a "Predictions" page and an "MLflow" link in the Airflow navigation.

Airflow finds it through the ``airflow.plugins`` entry point of this package (pyproject.toml),
so any environment with the package installed has it; no plugins folder is needed.

The page (served by the Airflow API server under ``/interest-migration/``) lists every published
prediction partition from its ``_SUCCESS`` manifest (rows, model version, created_at) and the
registered model's aliases, so an operator sees what downstream systems are reading without
leaving Airflow. ``/interest-migration/api/partitions`` returns the same as JSON.
Heavy imports happen per request, never when Airflow loads plugins.
"""

from __future__ import annotations

import html

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from pipelines.config import load_settings
from pipelines.platform import layout
from pipelines.platform.dates import to_date

URL_PREFIX = "/interest-migration"

app = FastAPI(title="interest-migration predictions", docs_url=None, redoc_url=None)


def partition_overview(limit: int = 60) -> dict:
    """Published partitions (newest first) and the model aliases, read from S3 and MLflow."""
    from pipelines.platform import storage, tracking

    settings = load_settings()
    rows = []
    for date in reversed(storage.list_partitions(settings, layout.PREDICTIONS)[-limit:]):
        try:
            manifest = storage.get_json(settings, layout.success_key(date))
        except storage.StorageError:
            rows.append({"as_of_date": date.isoformat(), "status": "incomplete (no _SUCCESS)"})
            continue
        rows.append({"as_of_date": date.isoformat(), "status": "published",
                     "row_count": manifest.get("row_count"), "model_version": manifest.get("model_version"),
                     "created_at": manifest.get("created_at")})
    aliases: dict[str, str] = {}
    try:
        model = tracking.client(settings).get_registered_model(settings.model_name)
        aliases = {alias: str(version) for alias, version in (model.aliases or {}).items()}
    except Exception as exc:  # noqa: BLE001 - the page still shows partitions when MLflow is down
        aliases = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    return {"bucket": settings.bucket, "model_name": settings.model_name, "aliases": aliases,
            "partitions": rows}


@app.get("/api/partitions")
def api_partitions() -> dict:
    return partition_overview()


@app.get("/", response_class=HTMLResponse)
def page() -> str:
    try:
        data = partition_overview()
    except Exception as exc:  # noqa: BLE001 - shown to the operator instead of a bare 500
        return f"<p>Cannot read predictions: {html.escape(str(exc))}</p>"
    aliases = ", ".join(f"<b>{html.escape(k)}</b> = v{html.escape(v)}" for k, v in data["aliases"].items()) or "none"
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>"
                         for c in ("as_of_date", "status", "row_count", "model_version", "created_at")) + "</tr>"
        for r in data["partitions"])
    return (
        "<html><head><title>Predictions</title><style>body{font-family:sans-serif;margin:1.5em}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
        f"<h2>Interest-migration predictions</h2><p>Bucket <code>{html.escape(data['bucket'])}</code>, "
        f"model <code>{html.escape(data['model_name'])}</code>: {aliases}</p>"
        "<table><tr><th>as_of_date</th><th>status</th><th>rows</th><th>model version</th><th>created</th></tr>"
        f"{rows}</table></body></html>"
    )


def _mlflow_ui_url() -> str:
    settings = load_settings()
    return settings.mlflow_ui_url or settings.mlflow_tracking_uri


def im_predictions_prefix(ds: str) -> str:
    """Macro: ``s3://<bucket>/predictions/dt=<ds>/`` for templated fields of downstream DAGs."""
    return f"s3://{load_settings().bucket}/{layout.partition_prefix(layout.PREDICTIONS, to_date(ds, 'ds'))}"


class InterestMigrationPlugin(AirflowPlugin):
    name = "interest_migration"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "interest-migration predictions"}]
    external_views = [
        {"name": "Predictions", "href": f"{URL_PREFIX}/", "destination": "nav", "url_route": "im-predictions",
         "category": "interest-migration"},
        {"name": "MLflow", "href": _mlflow_ui_url(), "destination": "nav", "category": "interest-migration"},
    ]
    macros = [im_predictions_prefix]
