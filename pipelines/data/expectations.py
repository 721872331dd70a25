"""Great Expectations 1.x for validation: the partition-profile gate and the recorded row sample.

Two suites, built once per process and settings (building a suite costs GE far more than running
it) in one ephemeral context per process:

- :func:`run_profile_gate`: the *batch gate*, over a one-row frame of partition aggregates (rows,
  bad-row share, duplicate share, volume ratio); :func:`gate_failures` turns its failed
  expectations into one line each (rule, numbers, limit);
- :func:`run_row_sample`: row expectations on an evenly spaced sample (:func:`sample_rows`) of
  canonical rows, recorded for people; which rows are quarantined is decided by the row rules.

Great Expectations is imported inside the functions: it costs seconds, and
:mod:`pipelines.data.validation` (which the MLflow logging task imports) must stay light.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.config import Settings
from pipelines.contracts import BEHAVIORS
from pipelines.data.canonical import plausible_bounds_us
from pipelines.data.formats import SourceSpec
from pipelines.data.rules import CANONICAL_KEY_COLUMNS, window_bounds_us

PROFILE_KEYS = ("rows", "bad_row_share", "duplicate_share", "volume_ratio")
SAMPLE_COLUMNS = ["user_id", "item_id", "category_id", "behavior", "ts_us", "value"]

_GE_STATE: dict[str, Any] = {}


def _ge_context() -> Any:
    """One ephemeral GE context per process (each creation leaves a temporary docs folder)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if "context" not in _GE_STATE:
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        _GE_STATE["context"] = context
        _GE_STATE["counter"] = itertools.count()
        _GE_STATE["definitions"] = {}
    return _GE_STATE["context"]


def _run_suite(key: tuple[Any, ...], frame: pd.DataFrame, make_expectations: Callable[[], list[Any]]) -> Any:
    """Run the suite identified by ``key`` on ``frame``; the suite and its validation definition are
    built once per process and key."""
    import great_expectations as gx

    context = _ge_context()
    definitions = _GE_STATE["definitions"]
    definition = definitions.get(key)
    if definition is None:
        name = f"{key[0]}_{next(_GE_STATE['counter'])}"
        source = context.data_sources.add_pandas(f"{name}_source")
        batch_def = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(f"{name}_batch")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
        for expectation in make_expectations():
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}_validation", data=batch_def, suite=suite))
        definitions[key] = definition
    return definition.run(batch_parameters={"dataframe": frame})


def run_profile_gate(profile: dict[str, Any], settings: Settings) -> Any:
    """The batch gate: GE expectations over a one-row frame of partition aggregates.

    ``profile`` keys: rows, bad_row_share, duplicate_share, volume_ratio. A None value (a share
    of a tiny partition, the volume check without enough history) is left out of the frame and
    its expectation is not run. Column min/max expectations are used (on one row they equal the
    value): GE builds far fewer metrics for them than for per-row expectations. Returns GE's
    validation result.
    """
    import great_expectations as gx

    present = tuple(k for k in PROFILE_KEYS if profile.get(k) is not None)
    frame = pd.DataFrame([{k: profile[k] for k in present}])
    E = gx.expectations
    rules = {
        "rows": lambda: E.ExpectColumnMinToBeBetween(column="rows", min_value=1,
                                                     meta={"rule": "partition_not_empty"}),
        "bad_row_share": lambda: E.ExpectColumnMaxToBeBetween(
            column="bad_row_share", max_value=settings.max_bad_row_share, meta={"rule": "bad_row_share"}),
        "duplicate_share": lambda: E.ExpectColumnMaxToBeBetween(
            column="duplicate_share", max_value=settings.max_duplicate_share, meta={"rule": "duplicate_share"}),
        "volume_ratio": lambda: E.ExpectColumnMinToBeBetween(
            column="volume_ratio", min_value=settings.min_volume_ratio, meta={"rule": "volume"}),
    }
    key = ("partition_profile", present, settings.max_bad_row_share, settings.max_duplicate_share,
           settings.min_volume_ratio)
    return _run_suite(key, frame, lambda: [rules[k]() for k in present])


def run_row_sample(sample: pd.DataFrame, spec: SourceSpec, settings: Settings) -> Any:
    """Row expectations on a sample of canonical rows (recorded; quarantine is decided by the row rules).

    Schema, behaviour set, timestamp range, share of non-null keys, id regex and value range, each
    with ``mostly = 1 - max_bad_row_share``. Returns GE's validation result.
    """
    import great_expectations as gx

    mostly = max(0.0, 1.0 - settings.max_bad_row_share)
    E = gx.expectations
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    lo, hi = plausible_bounds_us(today)
    w_lo, w_hi = window_bounds_us(settings)
    ts_lo, ts_hi = max(lo, w_lo or lo), min(hi + 86_400_000_000, w_hi or hi)

    def make() -> list[Any]:
        exps: list[Any] = [
            E.ExpectTableColumnsToMatchSet(column_set=list(sample.columns), exact_match=True),
            E.ExpectColumnValuesToBeInSet(column="behavior", value_set=list(BEHAVIORS), mostly=mostly),
            E.ExpectColumnValuesToBeBetween(column="ts_us", min_value=ts_lo, max_value=ts_hi, mostly=mostly),
        ]
        # Share of non-null values (a column aggregate: much cheaper in GE than a per-row not-null check).
        for f in ("user_id", "item_id", "category_id", "ts_us"):
            exps.append(E.ExpectColumnProportionOfNonNullValuesToBeBetween(column=f, min_value=mostly))
        for f in ("user_id", "item_id", "category_id"):
            exps.append(E.ExpectColumnValuesToMatchRegex(column=f, regex=spec.id_pattern, mostly=mostly))
        if spec.value_range:
            exps.append(E.ExpectColumnValuesToBeBetween(column="value", min_value=spec.value_range[0],
                                                        max_value=spec.value_range[1], mostly=mostly))
        return exps

    key = ("row_sample", mostly, ts_lo, ts_hi, spec.id_pattern, spec.value_range)
    return _run_suite(key, sample, make)


def sample_rows(canon: pa.Table, rows: int) -> pd.DataFrame:
    """Up to ``rows`` evenly spaced rows of canonical candidates as a pandas frame with
    :data:`SAMPLE_COLUMNS` (``ts`` as ``ts_us``); empty when ``rows`` is 0."""
    n = canon.num_rows
    idx = np.unique(np.linspace(0, n - 1, num=min(n, rows)).astype(np.int64)) if n and rows else []
    part = canon.take(pa.array(idx, pa.int64())).select(CANONICAL_KEY_COLUMNS).rename_columns(SAMPLE_COLUMNS)
    return part.to_pandas()


def gate_failures(gate: Any, profile: dict[str, Any], settings: Settings, volume_ref: float | None) -> list[str]:
    """One line per failed expectation of the profile gate: rule, observed numbers and the limit."""
    out: list[str] = []
    for res in gate.results:
        if res.success:
            continue
        rule = (res.expectation_config.meta or {}).get("rule", res.expectation_config.type)
        if rule == "partition_not_empty":
            out.append("rule partition_not_empty failed: 0 rows")
        elif rule == "bad_row_share":
            out.append(f"rule bad_row_share failed: {profile['bad_row_share']:.2%} of {profile['rows']} rows "
                       f"quarantined > limit {settings.max_bad_row_share:.2%}")
        elif rule == "duplicate_share":
            out.append(f"rule duplicate_share failed: {profile['duplicate_share']:.2%} of {profile['rows']} rows "
                       f"are exact duplicates > limit {settings.max_duplicate_share:.2%}")
        elif rule == "volume":
            out.append(f"rule volume failed: {profile['rows']} rows = {profile['volume_ratio']:.2f} x the median "
                       f"{volume_ref:.0f} of recent partitions < limit {settings.min_volume_ratio}")
        else:
            out.append(f"rule {rule} failed")
    return out
