"""The evaluation of what is published: test as-of times -> contract rows -> :func:`outcomes.score_rows`.

At each held-out as-of time T of a dataset, every user with an event in the look-back
``[T - IM_LOOKBACK_DAYS, T)`` (the users the scoring DAG would score) is scored by the SAME code the
scoring DAG runs (:func:`pipelines.serving.scoring.load_scorer`: the model's fast core, or any
pyfunc through its public contract, then :func:`pipelines.serving.contract.contract_columns`), and
the baselines are turned into the same columns by the monitoring code
(:func:`pipelines.ops.monitor_baselines.baseline_rows`, refitted on the same look-back). Rows,
truth (:func:`outcomes.truth_sets` in ``[T, T + H)``) and known sets (:func:`outcomes.known_sets`
in the look-back) of every as-of time are pooled (a row's key is ``user@T``) and judged once by
:func:`pipelines.model.outcomes.score_rows`: monitoring and the training evaluation share one
definition of every metric. Users without an event in the horizon count (as all-negative for the
probabilities, and as "did not adopt" for the migration AUC).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.model import outcomes
from pipelines.ops.monitor_baselines import baseline_rows
from pipelines.serving.engine import RowSpec
from pipelines.serving.interests import params_from_settings

PREFIX = "published_"  # metric names: model/published_ndcg_at_5, baseline/<name>/published_ndcg_at_5
K = 5
EXPLORE_K = 3


def _between(events: pa.Table, start: dt.datetime, end: dt.datetime) -> pa.Table:
    ts = events["ts"]
    return events.filter(pc.and_(pc.greater_equal(ts, pa.scalar(start, ts.type)), pc.less(ts, pa.scalar(end, ts.type))))


def _keyed(rows: pa.Table, as_of: dt.datetime) -> pa.Table:
    """``rows`` with ``user_id`` made ``user@T`` so several as-of times pool into one table."""
    keys = pc.binary_join_element_wise(rows["user_id"], pa.scalar(as_of.isoformat()), "@")
    return rows.set_column(rows.schema.get_field_index("user_id"), "user_id", keys)


def _keyed_sets(sets: dict[str, set[str]], as_of: dt.datetime) -> dict[str, set[str]]:
    return {f"{user}@{as_of.isoformat()}": cats for user, cats in sets.items()}


def published_summaries(settings: Settings, scorer: Any, events: pa.Table, asof_times: Sequence[dt.datetime], *,
                        model_name: str = "candidate", model_version: str = "0",
                        per_user: dict[str, pa.Table] | None = None) -> dict[str, dict[str, Any]]:
    """``{"model": summary, <baseline>: summary}`` (:func:`outcomes.score_rows` summaries) of the
    contract rows ``scorer`` (a :mod:`pipelines.serving.engine` scorer) and every monitored
    baseline publish at each of ``asof_times``, judged on ``events`` (EVENT_SCHEMA, covering every
    look-back and horizon). ``per_user``, when given, receives the per-user tables by name (rows
    ``user@T`` in the same order for every name: for bootstrap intervals)."""
    rows: dict[str, list[pa.Table]] = {}
    truth: dict[str, set[str]] = {}
    known: dict[str, set[str]] = {}
    params = params_from_settings(settings)
    for as_of in asof_times:
        lookback = _between(events, as_of - dt.timedelta(days=settings.lookback_days), as_of)
        if lookback.num_rows == 0:
            continue
        spec = RowSpec(as_of=as_of, as_of_date=(as_of - dt.timedelta(microseconds=1)).date(),
                       horizon_days=settings.horizon_days, model_name=model_name, model_version=model_version,
                       params=params, top_k=settings.top_k, top_n=settings.scoring_top_n,
                       batch_users=settings.scoring_batch_users)
        model_rows = pa.concat_tables(list(scorer.score(lookback, spec)))
        rows.setdefault("model", []).append(_keyed(model_rows, as_of))
        for name, table in baseline_rows(lookback, model_rows["user_id"].to_pylist(), as_of,
                                         horizon_days=settings.horizon_days, lookback_days=settings.lookback_days,
                                         params=params, top_k=settings.top_k,
                                         top_n=settings.scoring_top_n).items():
            rows.setdefault(name, []).append(_keyed(table, as_of))
        horizon_end = as_of + dt.timedelta(days=settings.horizon_days)
        truth.update(_keyed_sets(outcomes.truth_sets(events, as_of, horizon_end), as_of))
        known.update(_keyed_sets(outcomes.known_sets(lookback, as_of - dt.timedelta(days=settings.lookback_days),
                                                     as_of), as_of))
    out = {}
    for name, tables in rows.items():
        out[name], table = outcomes.score_rows(pa.concat_tables(tables), truth, known, k=K, explore_k=EXPLORE_K)
        if per_user is not None:
            per_user[name] = table
    return out


def flat_metrics(summaries: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``model/published_<metric>`` and ``baseline/<name>/published_<metric>`` (finite numbers
    only; the calibration bins are not metrics)."""
    out: dict[str, float] = {}
    for name, summary in summaries.items():
        prefix = "model/" if name == "model" else f"baseline/{name}/"
        for metric, value in summary.items():
            if isinstance(value, int | float) and value == value and abs(value) != float("inf"):
                out[f"{prefix}{PREFIX}{metric}"] = float(value)
    return out
