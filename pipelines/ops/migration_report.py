"""Write and read ``reports/migration/dt=D/``: the population migration report of a scored day.

:func:`write_report` reads day D's published partition (through
:mod:`pipelines.serving.predictions`, so only a partition with a ``_SUCCESS`` manifest and only its
listed files), computes the flows of :mod:`pipelines.ops.migration`, compares the top flows with
the report of D-7 (when there is one) and writes, replacing an earlier report of D whole:

    summary.json                  headline numbers, the top flows, the files, the model version
    flows.parquet                 every non-zero flow from_category -> to_category (users, weight, share)
    top_flows.parquet             the heaviest flows with their share a week before and the change
    categories.parquet            per category: users, migrating share, current and predicted strength
    interest_by_category.png      the bar chart of current vs predicted interest strength

``summary.json`` is written last, so a reader that finds it finds the other files.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from typing import Any

import pyarrow as pa

from pipelines.config import Settings
from pipelines.ops import migration
from pipelines.platform import layout, storage
from pipelines.platform.dates import to_date

log = logging.getLogger(__name__)

COMPARE_DAYS = 7
TOP_FLOWS = 20
CHART_CATEGORIES = 15


class ReportNotFound(LookupError):
    """No migration report for the date."""


def _previous_flows(settings: Settings, date: dt.date) -> tuple[dt.date, pa.Table] | None:
    earlier = date - dt.timedelta(days=COMPARE_DAYS)
    key = layout.migration_report_key(earlier, "flows")
    if not storage.exists(settings, key):
        return None
    return earlier, storage.read_parquet(settings, key)


def interest_chart_png(categories: pa.Table, date: dt.date, n: int = CHART_CATEGORIES) -> bytes:
    """The bar chart (PNG) of current vs predicted interest strength of the ``n`` strongest categories."""
    import numpy as np
    from matplotlib.figure import Figure

    head = categories.slice(0, n)
    names = head["category"].to_pylist()
    x = np.arange(len(names))
    figure = Figure(figsize=(max(6.0, 0.55 * len(names) + 2), 4.0), dpi=100)
    axes = figure.add_subplot()
    axes.bar(x - 0.2, head["current_strength"].to_pylist(), width=0.4, label="current", color="#4c72b0")
    axes.bar(x + 0.2, head["predicted_strength"].to_pylist(), width=0.4, label="predicted", color="#dd8452")
    axes.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("mean share of a user's interest")
    axes.set_title(f"Interest strength per category, {date}: current vs predicted")
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def build_report(rows: pa.Table, date: dt.date, previous: tuple[dt.date, pa.Table] | None,
                 manifest: dict[str, Any]) -> dict[str, Any]:
    """The tables and summary of day D's report from its prediction ``rows`` (no storage)."""
    flows = migration.flow_matrix(rows)
    categories = migration.category_table(rows)
    top = migration.top_flows(flows, previous[1] if previous else None, TOP_FLOWS)
    summary = {"as_of_date": date.isoformat(), "model_name": manifest.get("model_name"),
               "model_version": manifest.get("model_version"), "predictions_created_at": manifest.get("created_at"),
               "compared_with": previous[0].isoformat() if previous else None,
               **migration.day_summary(rows, flows, categories),
               "top_flows": top.to_pylist()}
    return {"summary": summary, "flows": flows, "top_flows": top, "categories": categories}


def write_report(settings: Settings, date: dt.date | str) -> dict[str, Any]:
    """Compute and write day D's migration report; returns its summary plus ``uri``.
    Raises :class:`~pipelines.serving.predictions.PredictionsNotFound` when D is not published."""
    from pipelines.serving import predictions

    day = to_date(date)
    manifest = predictions.read_manifest(settings, day)
    rows = predictions.read_predictions(settings, day, columns=migration.ROW_COLUMNS)
    report = build_report(rows, day, _previous_flows(settings, day), manifest)
    for name in ("flows", "top_flows", "categories"):
        storage.write_parquet(settings, layout.migration_report_key(day, name), report[name])
    storage.put_bytes(settings, layout.migration_report_key(day, "chart"),
                      interest_chart_png(report["categories"], day), "image/png")
    summary = {**report["summary"], "files": {name: storage.uri(settings, layout.migration_report_key(day, name))
                                              for name in layout.MIGRATION_FILES}}
    uri = storage.put_json(settings, layout.migration_report_key(day, "summary"), summary)
    log.info("migration report %s: %d users, %d migrating, %d flows", uri, summary["users"],
             summary["migrating_users"], summary["flows"])
    return {**summary, "uri": uri}


def report_dates(settings: Settings) -> list[dt.date]:
    """Dates with a migration report (a ``summary.json``), sorted."""
    return [d for d in storage.list_partitions(settings, layout.MIGRATION_REPORTS)
            if storage.exists(settings, layout.migration_report_key(d, "summary"))]


def read_summary(settings: Settings, date: dt.date | str) -> dict[str, Any]:
    """``summary.json`` of day D; raises :class:`ReportNotFound`."""
    day = to_date(date)
    try:
        return dict(storage.get_json(settings, layout.migration_report_key(day, "summary")))
    except storage.StorageError:
        raise ReportNotFound(f"no migration report for {day} (s3://{settings.bucket}/"
                             f"{layout.migration_report_key(day, 'summary')})") from None
