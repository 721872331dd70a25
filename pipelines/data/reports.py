"""What validation reports: the numbers of a partition, its files under ``reports/validation/``, and MLflow.

:class:`ValidationResult` holds the key numbers of one validated partition (XCom, MLflow, the
report). :func:`publish_day` writes a day's ``result.json``, ``ge_result.json``, ``summary.md`` and
its Data Docs page (:mod:`pipelines.data.datadocs`); :func:`publish_index` the run's Data Docs
index; :func:`log_to_mlflow` records the numbers of validated partitions on a training run, with
a link to the Data Docs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.config import Settings
from pipelines.data import datadocs
from pipelines.data.expectations import DayResult
from pipelines.data.fanout import Background
from pipelines.platform import layout, storage, tracking

DATA_DOCS_TAG = "validation.data_docs"  # MLflow run tag: the s3:// URI of the Data Docs index


@dataclass
class ValidationResult:
    """Key numbers of one validated partition (``to_dict`` goes to XCom, MLflow and the report)."""

    date: dt.date
    report_id: str
    files: list[str]
    rows: int
    valid_rows: int
    quarantined: int
    reasons: dict[str, int]
    bad_row_share: float
    duplicate_rows: int
    duplicate_share: float
    volume_ratio: float | None
    in_window: bool
    items_with_several_categories: int
    ge_success: bool
    ge_row_sample_success: bool | None  # None: the row-sample suite was not run (ge_row_sample_rows = 0)
    failures: list[str] = field(default_factory=list)
    quarantine_key: str | None = None
    report_prefix: str = ""
    handover_key: str | None = None
    data_docs_key: str | None = None  # the day's Great Expectations Data Docs page
    time_rules_skipped: dict[str, str] = field(default_factory=dict)  # cleaning rule -> why not applied

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["date"] = self.date.isoformat()
        return out


def render_summary(result: ValidationResult, data_docs_uri: str | None = None) -> str:
    """A short human summary (Markdown) of one partition's validation."""
    status = "FAILED" if result.failures else "passed"
    lines = [f"# Validation of dt={result.date}: {status}", "",
             f"- report id: {result.report_id}",
             f"- files: {', '.join(result.files)}",
             f"- rows: {result.rows}; valid: {result.valid_rows}; quarantined: {result.quarantined}; "
             f"bad-row share (outside_window and ignored_behavior not counted): {result.bad_row_share:.2%}",
             f"- exact duplicates among valid rows: {result.duplicate_rows} ({result.duplicate_share:.2%}; "
             "removed by preprocessing)",
             f"- volume vs median of recent partitions: {result.volume_ratio if result.volume_ratio is not None else 'n/a'}",
             f"- in configured window: {'yes' if result.in_window else 'no (all rows set aside)'}",
             f"- items listed under several categories: {result.items_with_several_categories}",
             f"- Great Expectations: partition gate {'passed' if result.ge_success else 'failed'}, row sample "
             f"{_sample_outcome(result.ge_row_sample_success)}"]
    if result.time_rules_skipped:
        lines.append("- cleaning rules not applied, the timestamps are too coarse for them: "
                     + "; ".join(f"{rule} ({why})" for rule, why in result.time_rules_skipped.items()))
    if data_docs_uri:
        lines.append(f"- Data Docs (Great Expectations, HTML): {data_docs_uri}")
    if result.reasons:
        lines += ["", "| quarantine reason | rows |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(result.reasons.items(), key=lambda kv: -kv[1])]
    if result.quarantine_key:
        lines += ["", f"Quarantined rows: `{result.quarantine_key}`"]
    if result.failures:
        lines += ["", "## Batch failures", *[f"- {f}" for f in result.failures]]
    return "\n".join(lines) + "\n"


def _sample_outcome(success: bool | None) -> str:
    return "not run" if success is None else "passed" if success else "failed"


def publish_day(settings: Settings, result: ValidationResult, gate: DayResult, row_sample: DayResult | None,
                sample_rows: int, writes: Background) -> None:
    """Write (in the background) a day's ``result.json``, ``ge_result.json``, ``summary.md`` and Data
    Docs page; the page is rendered here (it needs Great Expectations' renderers, not storage)."""
    prefix = result.report_prefix
    page = datadocs.render_day(result.date.isoformat(), [gate.result, row_sample.result if row_sample else None],
                               meta={"report_id": result.report_id, "files": result.files})
    ge = {"partition_profile": gate.json, "row_sample": row_sample.json if row_sample is not None else None,
          "row_sample_rows": sample_rows}
    docs_uri = storage.uri(settings, result.data_docs_key) if result.data_docs_key else None
    writes.submit(storage.put_json, settings, prefix + "result.json", result.to_dict())
    writes.submit(storage.put_json, settings, prefix + "ge_result.json", ge)
    writes.submit(storage.put_text, settings, prefix + "summary.md", render_summary(result, docs_uri))
    if result.data_docs_key:
        writes.submit(storage.put_bytes, settings, result.data_docs_key, page.encode(), "text/html; charset=utf-8")


def publish_index(settings: Settings, report_id: str, results: list[ValidationResult], writes: Background) -> str:
    """Write the run's Data Docs index (a link per day); returns its key."""
    run_prefix = layout.validation_run_prefix(report_id)
    days = [(r.date.isoformat(), not r.failures, r.data_docs_key.removeprefix(run_prefix))
            for r in sorted(results, key=lambda r: r.date) if r.data_docs_key]
    key = layout.validation_data_docs_index_key(report_id)
    writes.submit(storage.put_bytes, settings, key, datadocs.render_index(report_id, days).encode(),
                  "text/html; charset=utf-8")
    return key


def log_to_mlflow(result_dicts: list[dict[str, Any]], mlflow_run_id: str, settings: Settings,
                  data_docs_key: str | None = None) -> dict[str, float]:
    """Log the key numbers of validated partitions to an MLflow run; returns the metrics logged.

    Metrics: ``validation/rows``, ``validation/quarantined``, ``validation/bad_row_share`` (overall),
    ``validation/max_bad_row_share`` (worst partition), ``validation/duplicate_rows``,
    ``validation/partitions`` and ``validation/quarantined/<reason>``; the result dicts are logged
    as the artifact ``validation/results.json`` (each with its ``data_docs_key``). With
    ``data_docs_key`` (the run's Data Docs index) the run gets the tag :data:`DATA_DOCS_TAG` = its
    ``s3://`` URI.
    """
    rows = sum(int(r["rows"]) for r in result_dicts)
    quarantined = sum(int(r["quarantined"]) for r in result_dicts)
    metrics: dict[str, float] = {
        "validation/partitions": float(len(result_dicts)),
        "validation/rows": float(rows),
        "validation/quarantined": float(quarantined),
        "validation/bad_row_share": quarantined / rows if rows else 0.0,
        "validation/max_bad_row_share": max((float(r["bad_row_share"]) for r in result_dicts), default=0.0),
        "validation/duplicate_rows": float(sum(int(r["duplicate_rows"]) for r in result_dicts)),
    }
    for r in result_dicts:
        for reason, count in r.get("reasons", {}).items():
            key = f"validation/quarantined/{reason}"
            metrics[key] = metrics.get(key, 0.0) + float(count)
    tracking.log_metrics(settings, mlflow_run_id, metrics)
    client = tracking.client(settings)
    client.log_dict(mlflow_run_id, {"partitions": result_dicts}, "validation/results.json")
    if data_docs_key:
        client.set_tag(mlflow_run_id, DATA_DOCS_TAG, storage.uri(settings, data_docs_key))
    return metrics
