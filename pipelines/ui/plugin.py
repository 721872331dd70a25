"""Airflow UI extension: an "Interest migration" page and an "MLflow" link in the Airflow navigation.

Airflow finds it through the ``airflow.plugins`` entry point of this package (pyproject.toml),
so any environment with the package installed has it; no plugins folder is needed.

The page (served by the Airflow API server under ``/interest-migration/``, behind Airflow's
login; :mod:`pipelines.ui.app`) shows the latest population migration flows, the monitoring time
series, a per-user lookup and the published partitions. Every Airflow process loads plugins
(workers for the macro below), so this module stays light: the web app and Airflow's API-server
security are imported only when the API server asks for :attr:`InterestMigrationPlugin.fastapi_apps`.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from pipelines.config import load_settings
from pipelines.platform import layout
from pipelines.platform.dates import to_date

URL_PREFIX = "/interest-migration"


def _mlflow_ui_url() -> str:
    settings = load_settings()
    return settings.mlflow_ui_url or settings.mlflow_tracking_uri


def im_predictions_prefix(ds: str) -> str:
    """Macro: ``s3://<bucket>/predictions/dt=<ds>/`` for templated fields of downstream DAGs."""
    return f"s3://{load_settings().bucket}/{layout.partition_prefix(layout.PREDICTIONS, to_date(ds, 'ds'))}"


class InterestMigrationPlugin(AirflowPlugin):
    name = "interest_migration"
    external_views = [
        {"name": "Interest migration", "href": f"{URL_PREFIX}/", "destination": "nav",
         "url_route": "im-predictions", "category": "interest-migration"},
        {"name": "MLflow", "href": _mlflow_ui_url(), "destination": "nav", "category": "interest-migration"},
    ]
    macros = [im_predictions_prefix]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The web app, imported only when asked for (by the API server)."""
        from pipelines.ui.app import app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "interest-migration"}]
