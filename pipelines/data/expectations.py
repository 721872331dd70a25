"""Great Expectations 1.x for validation: suites users own, run through Checkpoints, judged per day.

Two expectation suites are JSON files in Great Expectations' own suite format, shipped in
``pipelines/data/suites/`` (:data:`SUITE_FILES`); a file of the same name in the folder of the
``expectation_suites_dir`` setting replaces the shipped one. Values written ``{"$PARAMETER": name}``
are filled from the settings and the source format (:func:`profile_parameters`,
:func:`sample_parameters`); an expectation whose parameter has no value is not run.

- ``partition_profile``: the *batch gate*, over a frame with one row per validated partition
  (:data:`PROFILE_COLUMNS`); a failed expectation fails that partition;
- ``row_sample``: row expectations over an evenly spaced sample of each partition's canonical rows
  (:func:`sample_rows`), recorded for people (the row rules decide the quarantine).

Each suite runs through a ``gx.Checkpoint`` *once per validation run*, over the rows of every
partition of the run (column ``dt``), with complete results indexed by ``dt``;
:func:`split_by_day` turns that run into one validation result per day (row expectations judged
on the day's rows, any other kind reported as judged over the run), which the reports, the
failure messages and the Data Docs pages (:mod:`pipelines.data.datadocs`) are made of. Suites,
validation definitions and checkpoints are built once per process and parameter values.

Great Expectations is imported inside the functions (it costs seconds);
:func:`prepare_in_background` starts that import while the rows are being read and flagged.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import itertools
import json
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.config import Settings
from pipelines.data.canonical import plausible_bounds_us
from pipelines.data.formats import SourceSpec
from pipelines.data.rules import CANONICAL_KEY_COLUMNS, window_bounds_us

PROFILE_SUITE = "partition_profile"
SAMPLE_SUITE = "row_sample"
SUITE_FILES = {PROFILE_SUITE: "partition_profile.json", SAMPLE_SUITE: "row_sample.json"}
SHIPPED_SUITES_DIR = Path(__file__).parent / "suites"
DAY = "dt"
PROFILE_COLUMNS = (DAY, "rows", "valid_rows", "quarantined", "bad_row_share", "duplicate_rows", "duplicate_share",
                   "volume_ratio", "items_with_several_categories", "users", "items", "categories", "in_window")
SAMPLE_COLUMNS = ["user_id", "item_id", "category_id", "behavior", "ts_us", "value"]
PARTIAL_VALUES = 20  # unexpected values kept per expectation and day (as GE's partial lists)
_RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": [DAY],
                  "partial_unexpected_count": PARTIAL_VALUES}

_STATE: dict[str, Any] = {}
_LOCK = threading.Lock()


class SuiteError(ValueError):
    """An expectation suite file cannot be used; the message names the file and the expectation."""


# --- suites: files and parameters --------------------------------------------------------------


def suites_dir(settings: Settings) -> Path | None:
    """The user's suites folder (setting ``expectation_suites_dir``), or None for the shipped suites."""
    folder = getattr(settings, "expectation_suites_dir", None)
    return Path(folder) if folder else None


def suite_path(name: str, folder: Path | None) -> Path:
    """The file of suite ``name``: the user's copy in ``folder`` when there is one, else the shipped one."""
    if folder is not None and (folder / SUITE_FILES[name]).is_file():
        return folder / SUITE_FILES[name]
    return SHIPPED_SUITES_DIR / SUITE_FILES[name]


def read_suite(name: str, folder: Path | None = None) -> dict[str, Any]:
    """The suite ``name`` as a dict (GX suite JSON: ``name``, ``expectations``, ``meta``)."""
    path = suite_path(name, folder)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SuiteError(f"expectation suite {path}: cannot read it as JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise SuiteError(f"expectation suite {path}: expected an object with an 'expectations' list")
    data["_path"] = str(path)
    return data


def _fill(value: Any, params: Mapping[str, Any], missing: set[str]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            name = value["$PARAMETER"]
            if params.get(name) is None:
                missing.add(name)
            return params.get(name)
        return {k: _fill(v, params, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, params, missing) for v in value]
    return value


def resolve_expectations(suite: dict[str, Any], params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The suite's expectations with ``{"$PARAMETER": name}`` filled from ``params``; expectations
    whose parameter has no value are left out. Raises :class:`SuiteError` for an unknown
    expectation type or bad arguments, naming the file and the expectation."""
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    out = []
    for index, raw in enumerate(suite["expectations"]):
        missing: set[str] = set()
        exp = _fill(raw, params, missing)
        if missing:
            continue
        try:
            ExpectationConfiguration(type=exp["type"], kwargs=exp.get("kwargs", {}),
                                     meta=exp.get("meta")).to_domain_obj()
        except Exception as exc:  # GX raises several error types for a bad configuration
            raise SuiteError(f"expectation suite {suite['_path']}: expectation {index} "
                             f"({raw.get('type')!r}) is not valid: {exc}") from exc
        out.append(exp)
    return out


def profile_parameters(settings: Settings) -> dict[str, Any]:
    """The parameters of the partition-profile suite: the batch limits of the settings."""
    return {"max_bad_row_share": settings.max_bad_row_share, "max_duplicate_share": settings.max_duplicate_share,
            "min_volume_ratio": settings.min_volume_ratio}


def sample_parameters(settings: Settings, spec: SourceSpec, now: dt.datetime | None = None) -> dict[str, Any]:
    """The parameters of the row-sample suite: ``mostly`` (1 - max bad-row share), the timestamp
    range (plausible bounds within the window, microseconds), the source's id pattern and value range."""
    today = (now or dt.datetime.now(dt.UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
    lo, hi = plausible_bounds_us(today)
    w_lo, w_hi = window_bounds_us(settings)
    vmin, vmax = spec.value_range if spec.value_range else (None, None)
    return {"mostly": max(0.0, 1.0 - settings.max_bad_row_share), "ts_min_us": max(lo, w_lo or lo),
            "ts_max_us": min(hi + 86_400_000_000, w_hi or hi), "id_pattern": spec.id_pattern,
            "value_min": vmin, "value_max": vmax}


# --- running through a Checkpoint ----------------------------------------------------------------


def _defer_scipy_stats() -> None:
    """Load ``scipy.stats`` on its first use instead of at Great Expectations' import.

    One GX module (the KL-divergence expectation, which these suites never run) imports it at
    module level: about half a second of every validation process's start, most of it holding the
    GIL while the partitions are flagged. :class:`importlib.util.LazyLoader` puts a module in
    ``sys.modules`` that runs the real one at its first attribute access, so code that does use
    it gets it unchanged. Nothing happens when it is loaded already."""
    if "scipy.stats" in sys.modules:
        return
    spec = importlib.util.find_spec("scipy.stats")
    if spec is None or spec.loader is None:
        return
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scipy.stats"] = module
    spec.loader.exec_module(module)
    sys.modules["scipy"].stats = module  # type: ignore[attr-defined]  # `from scipy import stats` finds it


def _context() -> Any:
    """One ephemeral GX context per process (each creation leaves a temporary docs folder)."""
    with _LOCK:
        if "context" not in _STATE:
            _defer_scipy_stats()
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            _STATE.update(context=context, counter=itertools.count(), checkpoints={})
        return _STATE["context"]


def prepare_in_background() -> threading.Thread:
    """Import Great Expectations and make its context in a thread (seconds of imports that can run
    while the partitions are read and flagged); :func:`run_suite` waits for it when it gets there."""
    thread = threading.Thread(target=_context, name="gx-import", daemon=True)
    thread.start()
    return thread


def _checkpoint(name: str, expectations: list[dict[str, Any]]) -> Any:
    """The checkpoint running suite ``name`` with ``expectations`` on a dataframe: built once per
    process and expectations (building costs GX far more than running)."""
    import great_expectations as gx

    context = _context()
    key = (name, json.dumps(expectations, sort_keys=True, default=str))
    with _LOCK:
        checkpoint = _STATE["checkpoints"].get(key)
        if checkpoint is None:
            unique = f"{name}_{next(_STATE['counter'])}"
            source = context.data_sources.add_pandas(f"{unique}_source")
            batch = source.add_dataframe_asset(name=unique).add_batch_definition_whole_dataframe(f"{unique}_batch")
            suite = context.suites.add(gx.ExpectationSuite(name=unique, expectations=expectations,
                                                           meta={"suite": name}))
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=f"{unique}_validation", data=batch, suite=suite))
            checkpoint = context.checkpoints.add(gx.Checkpoint(
                name=f"interest_migration_{unique}", validation_definitions=[definition], result_format=_RESULT_FORMAT))
            _STATE["checkpoints"][key] = checkpoint
    return checkpoint


def run_suite(name: str, frame: pd.DataFrame, params: Mapping[str, Any], folder: Path | None = None) -> Any:
    """Run suite ``name`` over ``frame`` (with a ``dt`` column) through its Checkpoint; returns the
    run's ``ExpectationSuiteValidationResult`` (complete results, unexpected rows indexed by ``dt``)."""
    expectations = resolve_expectations(read_suite(name, folder), params)
    checkpoint = _checkpoint(name, expectations)
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    (suite_result,) = result.run_results.values()
    return suite_result


# --- one result per day --------------------------------------------------------------------------


@dataclass
class DayResult:
    """One day's validation result of a suite: ``result`` (GX's ``ExpectationSuiteValidationResult``,
    for the failure messages and the Data Docs page) and ``json`` (the same as a JSON-able dict in
    GX's own layout, assembled from parts serialized once per run)."""

    result: Any
    json: dict[str, Any]

    @property
    def success(self) -> bool:
        return bool(self.result.success)


def _day_counts(frame: pd.DataFrame, days: list[str], column: str | None) -> tuple[dict[str, int], dict[str, int]]:
    rows = frame.groupby(DAY, sort=False).size().to_dict()
    nulls = (frame[column].isna().groupby(frame[DAY], sort=False).sum().to_dict()
             if column and column in frame else {})
    return ({d: int(rows.get(d, 0)) for d in days}, {d: int(nulls.get(d, 0)) for d in days})


def _day_result(res: Any, element: int, missing: int, unexpected: list[Any]) -> tuple[bool, dict[str, Any]]:
    """(success, GX-style ``result`` dict) of a row expectation on one day's rows."""
    config = res.expectation_config
    not_null = config.type == "expect_column_values_to_not_be_null"
    considered = element if not_null else element - missing
    mostly = 1.0 if config.kwargs.get("mostly") is None else float(config.kwargs["mostly"])
    count = len(unexpected)
    success = True if considered == 0 else (considered - count) / considered >= mostly
    partial = unexpected[:PARTIAL_VALUES]
    counts: dict[Any, int] = {}
    for value in partial:
        key = json.dumps(value, sort_keys=True, default=str) if isinstance(value, dict | list) else value
        counts[key] = counts.get(key, 0) + 1
    result: dict[str, Any] = {
        "element_count": element, "unexpected_count": count,
        "unexpected_percent": 100.0 * count / considered if considered else None,
        "partial_unexpected_list": partial,
        "partial_unexpected_counts": [{"value": v, "count": c}
                                      for v, c in sorted(counts.items(), key=lambda kv: -kv[1])],
    }
    if not not_null:
        result.update(missing_count=missing, missing_percent=100.0 * missing / element if element else None,
                      unexpected_percent_total=100.0 * count / element if element else None,
                      unexpected_percent_nonmissing=result["unexpected_percent"])
    return success, result


def split_by_day(run: Any, frame: pd.DataFrame, days: list[str]) -> dict[str, DayResult]:
    """One :class:`DayResult` per day from a run over ``frame``: a row (column map) expectation is
    judged on the day's rows with its ``mostly``; any other expectation keeps the run's result,
    marked ``meta.scope = "run"`` (judged over every day of the run)."""
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.util import convert_to_json_serializable

    run_json = run.to_json_dict()  # serialized once per run; days reuse its parts
    per_day: dict[str, list[tuple[Any, dict[str, Any]]]] = {d: [] for d in days}
    for res, res_json in zip(run.results, run_json["results"], strict=True):
        index_list = (res.result or {}).get("unexpected_index_list")
        column = res.expectation_config.kwargs.get("column")
        config_json = res_json["expectation_config"]
        if index_list is None or (res.exception_info or {}).get("raised_exception"):
            meta = {**(res.meta or {}), "scope": "run"}
            whole = ExpectationValidationResult(success=res.success, expectation_config=res.expectation_config,
                                                result=res.result, meta=meta, exception_info=res.exception_info)
            whole_json = {**res_json, "meta": convert_to_json_serializable(meta)}
            for d in days:
                per_day[d].append((whole, whole_json))
            continue
        values: dict[str, list[Any]] = {d: [] for d in days}
        for entry in index_list:
            if entry.get(DAY) in values:
                values[entry[DAY]].append(_plain(entry.get(column)) if column else
                                          {k: _plain(v) for k, v in entry.items() if k != DAY})
        rows, nulls = _day_counts(frame, days, column)
        for d in days:
            success, result = _day_result(res, rows[d], nulls[d], values[d])
            meta = {**(res.meta or {}), DAY: d}
            per_day[d].append((ExpectationValidationResult(success=success, expectation_config=res.expectation_config,
                                                           result=result, meta=meta,
                                                           exception_info=res.exception_info),
                               {"success": success, "expectation_config": config_json, "result": result,
                                "meta": meta, "exception_info": res_json.get("exception_info")}))
    out = {}
    for d, pairs in per_day.items():
        ok = sum(bool(r.success) for r, _ in pairs)
        statistics = {"evaluated_expectations": len(pairs), "successful_expectations": ok,
                      "unsuccessful_expectations": len(pairs) - ok,
                      "success_percent": 100.0 * ok / len(pairs) if pairs else None}
        result = ExpectationSuiteValidationResult(
            success=ok == len(pairs), results=[r for r, _ in pairs], suite_name=run.suite_name,
            statistics=statistics, meta={**(run.meta or {}), DAY: d})
        out[d] = DayResult(result=result, json={
            "success": ok == len(pairs), "results": [j for _, j in pairs], "suite_name": run.suite_name,
            "statistics": statistics, "meta": {**run_json.get("meta", {}), DAY: d},
            "suite_parameters": run_json.get("suite_parameters", {})})
    return out


def _plain(value: Any) -> Any:
    """NumPy scalars as Python values and NaN as None (JSON-able)."""
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and value != value else value


# --- the two suites over a validation run --------------------------------------------------------


def check_profiles(profiles: list[dict[str, Any]], settings: Settings) -> dict[str, DayResult]:
    """The partition-profile suite over one row per partition (:data:`PROFILE_COLUMNS`; None =
    not applicable); returns the day's result per ``dt``."""
    frame = pd.DataFrame([{c: p.get(c) for c in PROFILE_COLUMNS} for p in profiles], columns=list(PROFILE_COLUMNS))
    for c in PROFILE_COLUMNS[1:-1]:
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    days = [str(d) for d in frame[DAY]]
    run = run_suite(PROFILE_SUITE, frame, profile_parameters(settings), suites_dir(settings))
    return split_by_day(run, frame, days)


def check_samples(samples: list[tuple[str, SourceSpec, pa.Table]], settings: Settings,
                  now: dt.datetime | None = None) -> dict[str, DayResult]:
    """The row-sample suite over the sample rows of every partition (``(dt, spec, rows)``, rows from
    :func:`sample_rows`): one Checkpoint run per distinct source spec; returns the day's result per ``dt``."""
    groups: dict[str, list[tuple[str, pa.Table]]] = {}
    specs: dict[str, SourceSpec] = {}
    for day, spec, rows in samples:
        key = json.dumps([spec.id_pattern, spec.value_range])
        groups.setdefault(key, []).append((day, rows))
        specs[key] = spec
    out: dict[str, DayResult] = {}
    for key, parts in groups.items():
        table = pa.concat_tables([rows.append_column(DAY, pa.array([day] * rows.num_rows, pa.string()))
                                  for day, rows in parts])
        frame = table.select([DAY, *SAMPLE_COLUMNS]).to_pandas()
        run = run_suite(SAMPLE_SUITE, frame, sample_parameters(settings, specs[key], now), suites_dir(settings))
        out.update(split_by_day(run, frame, [day for day, _ in parts]))
    return out


def sample_rows(canon: pa.Table, rows: int) -> pa.Table:
    """Up to ``rows`` evenly spaced rows of canonical candidates with :data:`SAMPLE_COLUMNS` (``ts``
    as ``ts_us``); empty when ``rows`` is 0."""
    n = canon.num_rows
    idx = np.unique(np.linspace(0, n - 1, num=min(n, rows)).astype(np.int64)) if n and rows else []
    return canon.take(pa.array(idx, pa.int64())).select(CANONICAL_KEY_COLUMNS).rename_columns(SAMPLE_COLUMNS)


def run_profile_gate(profile: dict[str, Any], settings: Settings) -> Any:
    """The batch gate of one partition profile (keys of :data:`PROFILE_COLUMNS`, None = not
    applicable): that day's validation result."""
    (day,) = check_profiles([{DAY: "profile", **profile}], settings).values()
    return day.result


def run_row_sample(sample: pa.Table, spec: SourceSpec, settings: Settings) -> Any:
    """The row-sample suite over one partition's sample (:func:`sample_rows`): its validation result."""
    (day,) = check_samples([("sample", spec, sample)], settings).values()
    return day.result


def gate_failures(gate: Any, profile: dict[str, Any], settings: Settings, volume_ref: float | None,
                  reasons: dict[str, int] | None = None) -> list[str]:
    """One line per failed expectation of a day's profile gate: rule, observed numbers, the limit and
    the setting that holds it; for the bad-row share also the commonest quarantine ``reasons``."""
    out: list[str] = []
    for res in gate.results:
        if res.success:
            continue
        config = res.expectation_config
        rule = (config.meta or {}).get("rule", config.type)
        if rule == "partition_not_empty":
            out.append("rule partition_not_empty failed: 0 rows")
        elif rule == "bad_row_share":
            top = sorted((reasons or {}).items(), key=lambda kv: -kv[1])[:3]
            why = f" (most: {', '.join(f'{k} {v}' for k, v in top)})" if top else ""
            out.append(f"rule bad_row_share failed: {profile['bad_row_share']:.2%} of {profile['rows']} rows "
                       f"quarantined{why} > limit {settings.max_bad_row_share:.2%} (IM_MAX_BAD_ROW_SHARE)")
        elif rule == "duplicate_share":
            out.append(f"rule duplicate_share failed: {profile['duplicate_share']:.2%} of {profile['rows']} rows "
                       f"are exact duplicates > limit {settings.max_duplicate_share:.2%} (IM_MAX_DUPLICATE_SHARE)")
        elif rule == "volume":
            out.append(f"rule volume failed: {profile['rows']} rows = {profile['volume_ratio']:.2f} x the median "
                       f"{volume_ref:.0f} of recent partitions < limit {settings.min_volume_ratio} (IM_MIN_VOLUME_RATIO; 0 turns "
                       "the rule off, e.g. for a sparse log whose quiet days are real)")
        else:
            column = config.kwargs.get("column")
            observed = f": {column} = {profile.get(column)!r}" if column in profile else ""
            out.append(f"rule {rule} failed ({config.type}{observed}; suite {PROFILE_SUITE})")
    return out
