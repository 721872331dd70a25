"""Read published predictions: one user's view and a per-day summary.

A reader trusts ``predictions/dt=D/`` only when its ``_SUCCESS`` manifest exists, and reads only the
files the manifest lists (a part left over by a crashed run, or a part being rewritten by a rerun,
is never read). ``python -m pipelines predictions --date D [--user U] [--summary]`` prints them.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.contracts import PREDICTION_SCHEMA
from pipelines.platform import layout, storage
from pipelines.platform.dates import to_date


class PredictionsNotFound(LookupError):
    """No published partition (no ``_SUCCESS``) for the date, or no row for the user."""


def published_dates(settings: Settings) -> list[dt.date]:
    """Dates whose prediction partition has a ``_SUCCESS`` manifest, sorted."""
    return [d for d in storage.list_partitions(settings, layout.PREDICTIONS)
            if storage.exists(settings, layout.success_key(d))]


def read_manifest(settings: Settings, date: dt.date | str) -> dict[str, Any]:
    """The ``_SUCCESS`` manifest of day D; raises :class:`PredictionsNotFound` when D is not published."""
    day = to_date(date, "date")
    key = layout.success_key(day)
    try:
        return dict(storage.get_json(settings, key))
    except storage.StorageError:
        available = published_dates(settings)
        raise PredictionsNotFound(
            f"no published predictions for {day}: s3://{settings.bucket}/{key} does not exist "
            f"(published days: {', '.join(d.isoformat() for d in available[-5:]) or 'none'}); "
            f"run `python -m pipelines score --date {day}` or the scoring DAG for that day") from None


def read_predictions(settings: Settings, date: dt.date | str, *, user_ids: list[str] | None = None,
                     columns: list[str] | None = None) -> Any:
    """The prediction rows of day D as one Arrow table (only the manifest's files; optionally only
    ``user_ids`` and ``columns``). Raises :class:`PredictionsNotFound` when D is not published."""
    manifest = read_manifest(settings, date)
    schema = PREDICTION_SCHEMA if columns is None else pa.schema([PREDICTION_SCHEMA.field(c) for c in columns])
    tables = []
    for key in manifest["files"]:
        table = storage.read_parquet(settings, key, columns=schema.names)
        if user_ids is not None:
            table = table.filter(pc.is_in(table["user_id"], value_set=pa.array(user_ids, pa.string())))
        tables.append(table.select(schema.names).cast(schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def user_view(settings: Settings, date: dt.date | str, user_id: str) -> dict[str, Any]:
    """One user's prediction row of day D as a dict; raises :class:`PredictionsNotFound`."""
    table = read_predictions(settings, date, user_ids=[user_id])
    if table.num_rows == 0:
        raise PredictionsNotFound(f"user {user_id!r} has no prediction for {to_date(date, 'date')} (not active in the "
                                  f"look-back window, or unknown id)")
    return dict(table.to_pylist()[0])


def summarize(rows: Any, top: int = 10) -> dict[str, Any]:
    """Pure summary of a prediction table: users, migration mean/median/p90, top emerging and
    fading categories (how many users have each in their list)."""
    users = rows.num_rows
    migration = np.asarray(rows["migration_score"].to_numpy(zero_copy_only=False), dtype=float)
    emerging = Counter(c for cats in rows["emerging_categories"].to_pylist() for c in cats)
    fading = Counter(c for cats in rows["fading_categories"].to_pylist() for c in cats)
    return {
        "users_scored": users,
        "migration_mean": float(migration.mean()) if users else None,
        "migration_median": float(np.median(migration)) if users else None,
        "migration_p90": float(np.quantile(migration, 0.9)) if users else None,
        "top_emerging": emerging.most_common(top),
        "top_fading": fading.most_common(top),
    }


def summarize_day(settings: Settings, date: dt.date | str, top: int = 10) -> dict[str, Any]:
    """:func:`summarize` of day D plus the manifest's model name/version and created_at."""
    manifest = read_manifest(settings, date)
    rows = read_predictions(settings, date, columns=["user_id", "migration_score", "emerging_categories",
                                                     "fading_categories"])
    summary = summarize(rows, top)
    summary.update({"as_of_date": manifest["as_of_date"], "model_name": manifest["model_name"],
                    "model_version": manifest["model_version"], "created_at": manifest["created_at"],
                    "manifest_row_count": manifest["row_count"]})
    return summary


def _pairs(categories: list[str], values: list[float]) -> str:
    return ", ".join(f"{c} ({v:.2f})" for c, v in zip(categories, values, strict=True)) or "-"


def format_user(row: dict[str, Any]) -> str:
    """A few readable lines for one prediction row."""
    return "\n".join([
        f"user {row['user_id']} as of {row['as_of_date']} (next {row['horizon_days']} days), "
        f"model {row['model_name']} v{row['model_version']}",
        f"  current:   {_pairs(row['current_categories'], row['current_strengths'])}",
        f"  predicted: {_pairs(row['predicted_categories'], row['predicted_scores'])}",
        f"  migration score: {row['migration_score']:.3f}",
        f"  emerging:  {', '.join(row['emerging_categories']) or '-'}",
        f"  fading:    {', '.join(row['fading_categories']) or '-'}",
    ])


def format_summary(summary: dict[str, Any]) -> str:
    """Readable lines for :func:`summarize_day`."""
    def ranked(items: list[tuple[str, int]]) -> str:
        return ", ".join(f"{c} ({n})" for c, n in items) or "-"

    mean = summary["migration_mean"]
    return "\n".join([
        f"predictions {summary['as_of_date']}: model {summary['model_name']} v{summary['model_version']}, "
        f"published {summary['created_at']}",
        f"  users scored: {summary['users_scored']}",
        f"  migration score: mean {mean:.3f}, median {summary['migration_median']:.3f}, "
        f"p90 {summary['migration_p90']:.3f}" if mean is not None else "  migration score: -",
        f"  top emerging (users): {ranked(summary['top_emerging'])}",
        f"  top fading (users):   {ranked(summary['top_fading'])}",
    ])
