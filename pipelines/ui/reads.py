"""What the plugin page shows, read from S3 and MLflow through a :class:`~pipelines.ui.cache.BoundedCache`.

Every public function returns ``{"ok": True, "value": ..., "stale": bool}`` or ``{"ok": False,
"error": "..."}``: a source that is down or slow (over ``IM_UI_TIMEOUT_SECONDS``) becomes a line
on the page, never a hung request. Values are cached ``IM_UI_CACHE_SECONDS``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from pipelines.config import Settings
from pipelines.ops.options import ops_options
from pipelines.platform import layout
from pipelines.platform.dates import to_date
from pipelines.ui.cache import BoundedCache, SlowSource

CACHE = BoundedCache()
HEATMAP_SIZE = 10
MONITORING_DAYS = 90


def _bounded(settings: Settings, what: str, read: Callable[[], Any], *key: Any) -> dict[str, Any]:
    options = ops_options(settings)
    cache_key = (settings.s3_endpoint_url, settings.bucket, settings.mlflow_tracking_uri, what, *key)
    try:
        cached = CACHE.get(cache_key, read, ttl=options.ui_cache_seconds, timeout=options.ui_timeout_seconds,
                           what=what)
    except SlowSource as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - shown on the page instead of a bare 500
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]}
    return {"ok": True, "value": cached.value, "stale": cached.stale}


def _partitions(settings: Settings, limit: int) -> list[dict[str, Any]]:
    from pipelines.platform import storage

    rows = []
    for date in reversed(storage.list_partitions(settings, layout.PREDICTIONS)[-limit:]):
        try:
            manifest = storage.get_json(settings, layout.success_key(date))
        except storage.StorageError:
            rows.append({"as_of_date": date.isoformat(), "status": "incomplete (no _SUCCESS)"})
            continue
        rows.append({"as_of_date": date.isoformat(), "status": "published", "row_count": manifest.get("row_count"),
                     "model_version": manifest.get("model_version"), "created_at": manifest.get("created_at")})
    return rows


def partitions(settings: Settings, limit: int = 60) -> dict[str, Any]:
    """Prediction partitions, newest first, from their manifests (S3 "predictions")."""
    return _bounded(settings, "S3 (predictions)", lambda: _partitions(settings, limit), limit)


def _aliases(settings: Settings) -> dict[str, str]:
    from pipelines.platform import tracking

    model = tracking.client(settings).get_registered_model(settings.model_name)
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def aliases(settings: Settings) -> dict[str, Any]:
    """The registered model's aliases (MLflow)."""
    return _bounded(settings, "MLflow (model registry)", lambda: _aliases(settings))


def heatmap(flows: Any, size: int = HEATMAP_SIZE) -> dict[str, Any]:
    """The ``size`` heaviest source and target categories of a flow table and the weight matrix
    between them (rows: from, columns: to)."""
    rows = flows.select(["from_category", "to_category", "weight"]).to_pylist()
    out_weight: dict[str, float] = {}
    in_weight: dict[str, float] = {}
    for row in rows:
        out_weight[row["from_category"]] = out_weight.get(row["from_category"], 0.0) + row["weight"]
        in_weight[row["to_category"]] = in_weight.get(row["to_category"], 0.0) + row["weight"]
    sources = sorted(out_weight, key=lambda c: (-out_weight[c], c))[:size]
    targets = sorted(in_weight, key=lambda c: (-in_weight[c], c))[:size]
    cell = {(r["from_category"], r["to_category"]): r["weight"] for r in rows}
    return {"from": sources, "to": targets,
            "weights": [[cell.get((s, t), 0.0) for t in targets] for s in sources]}


def _migration(settings: Settings, date: str | None) -> dict[str, Any]:
    from pipelines.ops import migration_report
    from pipelines.platform import storage

    dates = [d.isoformat() for d in migration_report.report_dates(settings)]
    if not dates:
        return {"dates": [], "date": None}
    day = to_date(date) if date else to_date(dates[-1])
    summary = migration_report.read_summary(settings, day)
    flows = storage.read_parquet(settings, layout.migration_report_key(day, "flows"),
                                 columns=["from_category", "to_category", "weight"])
    # The strongest categories first (the report's order), as many as its PNG chart shows.
    strength = storage.read_parquet(settings, layout.migration_report_key(day, "categories"),
                                    columns=["category", "current_strength", "predicted_strength"])
    strength = strength.slice(0, migration_report.CHART_CATEGORIES).to_pydict()
    return {"dates": dates, "date": day.isoformat(), "summary": summary, "heatmap": heatmap(flows),
            "strength": strength}


def migration(settings: Settings, date: str | None = None) -> dict[str, Any]:
    """Day ``date``'s (default: the latest) migration report: summary and heatmap (S3 "reports/migration")."""
    return _bounded(settings, "S3 (migration reports)", lambda: _migration(settings, date), date)


def _monitoring(settings: Settings) -> list[dict[str, Any]]:
    from pipelines.platform import storage

    points = []
    for day in storage.list_partitions(settings, layout.MONITORING_REPORTS)[-MONITORING_DAYS:]:
        try:
            points.append(dict(storage.get_json(settings, layout.monitoring_report_key(day, "metrics"))))
        except storage.StorageError:
            continue  # being written: the next read shows it
    return points


def monitoring(settings: Settings) -> dict[str, Any]:
    """The monitoring reports of the last MONITORING_DAYS days, oldest first (S3 "reports/monitoring")."""
    return _bounded(settings, "S3 (monitoring reports)", lambda: _monitoring(settings))


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in row.items()}


def user(settings: Settings, date: str, user_id: str) -> dict[str, Any]:
    """One user's prediction row of day ``date`` (S3 "predictions"). With ``IM_PSEUDONYMIZE`` on, the
    typed id is a raw id: it is looked up by its pseudonym (the cache keys on the pseudonym too)."""
    from pipelines.privacy.pseudonym import stored_id
    from pipelines.serving import predictions

    try:
        lookup = stored_id(settings, user_id)
    except ValueError as exc:  # the key file is missing or unreadable: say so on the page
        return {"ok": False, "error": str(exc)}
    return _bounded(settings, "S3 (user lookup)",
                    lambda: _json_row(predictions.user_view(settings, date, lookup)), date, lookup)


def chart_png(settings: Settings, date: str) -> dict[str, Any]:
    """The PNG bar chart of day ``date``'s migration report."""
    from pipelines.platform import storage

    return _bounded(settings, "S3 (migration chart)",
                    lambda: storage.get_bytes(settings, layout.migration_report_key(to_date(date), "chart")), date)
