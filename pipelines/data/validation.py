"""Validate one raw partition: row-level rules quarantine rows, batch-level rules fail the task.

For ``raw/events/dt=D/`` :func:`validate_partition` flags every landed row
(:func:`pipelines.data.rules.flag_partition`) and

- writes the rows that fail a row rule to ``quarantine/events/dt=D/validation.parquet`` (the run
  continues);
- runs the Great Expectations partition-profile gate (rows, bad-row share, duplicate share,
  volume against recent partitions) and the recorded row-sample suite
  (:mod:`pipelines.data.expectations`);
- hands the valid rows to preprocessing (:func:`pipelines.data.handover.write_handover`);
- writes ``reports/validation/<report_id>/dt=D/{result.json,ge_result.json,summary.md}``;
- raises :class:`ValidationError` (file, rule, numbers) when the batch gate fails.

:func:`log_to_mlflow` records the key numbers of validated partitions on the training run.
Rules and reasons are documented in docs/data.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.config import Settings
from pipelines.data import expectations
from pipelines.data.handover import raw_fingerprint, write_handover
from pipelines.data.quarantine import write_validation_quarantine
from pipelines.data.raw import list_raw_files
from pipelines.data.rules import (
    OUTSIDE_WINDOW,
    ValidationError,
    count_exact_duplicates,
    count_items_with_several_categories,
    flag_partition,
    in_window,
    split_flagged,
)
from pipelines.platform import layout, storage, tracking

log = logging.getLogger(__name__)

MIN_VOLUME_HISTORY = 3  # the volume rule needs this many earlier in-window partitions


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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["date"] = self.date.isoformat()
        return out


def recent_volume(settings: Settings, date: dt.date) -> float | None:
    """Median rows of the last ``volume_lookback_partitions`` raw partitions before ``date`` (from the
    sidecars' row counts) that lie in the window; None with fewer than 3 of them."""
    earlier = [d for d in storage.list_partitions(settings, layout.RAW) if d < date and in_window(settings, d)]
    earlier = earlier[-settings.volume_lookback_partitions:]
    if len(earlier) < MIN_VOLUME_HISTORY:
        return None
    volumes = []
    for d in earlier:
        files, _ = list_raw_files(settings, d)
        volumes.append(sum(f.rows for f in files))
    return float(statistics.median(volumes))


def validate_partition(settings: Settings, date: dt.date, *, report_id: str) -> ValidationResult:
    """Validate ``raw/events/dt=date/``: quarantine failing rows, gate the batch, write the report.

    Returns :class:`ValidationResult`; raises :class:`ValidationError` (after writing the report and
    quarantine, so people can look) when a batch-level rule fails.
    """
    report_prefix = layout.validation_report_prefix(report_id, date)
    fingerprint = raw_fingerprint(settings, date)  # before reading: a file landed meanwhile makes it stale
    try:
        flagged = flag_partition(settings, date)
    except ValidationError as exc:
        storage.put_text(settings, report_prefix + "summary.md", f"# Validation of dt={date}: FAILED\n\n{exc}\n")
        raise
    rows = flagged.rows
    valid, bad, reasons = split_flagged(flagged)
    quarantined = bad.num_rows
    # Rows outside the window are out of scope, not broken: they do not count toward the bad-row share.
    out_of_scope = reasons.get(OUTSIDE_WINDOW, 0)
    duplicates = count_exact_duplicates(valid)
    several = count_items_with_several_categories(valid)
    volume_ref = recent_volume(settings, date) if flagged.in_window and settings.min_volume_ratio > 0 else None
    volume_ratio = None if volume_ref in (None, 0) else rows / volume_ref
    big = rows >= settings.share_checks_min_rows and flagged.in_window
    bad_share = (quarantined - out_of_scope) / rows if rows else 0.0
    dup_share = duplicates / rows if rows else 0.0
    profile = {"rows": rows, "bad_row_share": bad_share if big else None,
               "duplicate_share": dup_share if big else None, "volume_ratio": volume_ratio}

    gate = expectations.run_profile_gate(profile, settings)
    sample = expectations.sample_rows(flagged.canon, settings.ge_row_sample_rows)
    row_suite = expectations.run_row_sample(sample, flagged.files[0].spec, settings) if len(sample) else None
    failures = expectations.gate_failures(gate, profile, settings, volume_ref)

    q_key = write_validation_quarantine(settings, date, bad)
    h_key = write_handover(settings, date, valid, rows=rows, reasons=reasons, fingerprint=fingerprint)
    result = ValidationResult(
        date=date, report_id=report_id, files=[f.key for f in flagged.files], rows=rows, valid_rows=valid.num_rows,
        quarantined=quarantined, reasons=reasons, bad_row_share=round(bad_share, 6), duplicate_rows=duplicates,
        duplicate_share=round(dup_share, 6), volume_ratio=None if volume_ratio is None else round(volume_ratio, 4),
        in_window=flagged.in_window, items_with_several_categories=several, ge_success=bool(gate.success),
        ge_row_sample_success=bool(row_suite.success) if row_suite is not None else None, failures=failures,
        quarantine_key=q_key, report_prefix=report_prefix, handover_key=h_key)
    storage.put_json(settings, report_prefix + "result.json", result.to_dict())
    storage.put_json(settings, report_prefix + "ge_result.json", {
        "partition_profile": gate.to_json_dict(),
        "row_sample": row_suite.to_json_dict() if row_suite is not None else None,
        "row_sample_rows": len(sample)})
    storage.put_text(settings, report_prefix + "summary.md", render_summary(result))
    log.info("validated dt=%s: %d rows, %d quarantined %s, %d exact duplicates, volume ratio %s%s", date, rows,
             quarantined, reasons or "", duplicates, result.volume_ratio,
             "" if not failures else " - FAILED: " + "; ".join(failures))
    if failures:
        raise ValidationError(f"dt={date} ({', '.join(result.files)}): " + "; ".join(failures)
                              + f" (report {storage.uri(settings, report_prefix)}summary.md)")
    return result


def render_summary(result: ValidationResult) -> str:
    """A short human summary (Markdown) of one partition's validation."""
    status = "FAILED" if result.failures else "passed"
    lines = [f"# Validation of dt={result.date}: {status}", "",
             f"- report id: {result.report_id}",
             f"- files: {', '.join(result.files)}",
             f"- rows: {result.rows}; valid: {result.valid_rows}; quarantined: {result.quarantined}; "
             f"bad-row share (outside_window not counted): {result.bad_row_share:.2%}",
             f"- exact duplicates among valid rows: {result.duplicate_rows} ({result.duplicate_share:.2%}; "
             "removed by preprocessing)",
             f"- volume vs median of recent partitions: {result.volume_ratio if result.volume_ratio is not None else 'n/a'}",
             f"- in configured window: {'yes' if result.in_window else 'no (all rows set aside)'}",
             f"- items listed under several categories: {result.items_with_several_categories}",
             f"- Great Expectations: partition gate {'passed' if result.ge_success else 'failed'}, row sample "
             f"{_sample_outcome(result.ge_row_sample_success)}"]
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


def log_to_mlflow(result_dicts: list[dict[str, Any]], mlflow_run_id: str, settings: Settings) -> dict[str, float]:
    """Log the key numbers of validated partitions to an MLflow run; returns the metrics logged.

    Metrics: ``validation/rows``, ``validation/quarantined``, ``validation/bad_row_share`` (overall),
    ``validation/max_bad_row_share`` (worst partition), ``validation/duplicate_rows``,
    ``validation/partitions`` and ``validation/quarantined/<reason>``; the result dicts are logged
    as the artifact ``validation/results.json``.
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
    tracking.client(settings).log_dict(mlflow_run_id, {"partitions": result_dicts}, "validation/results.json")
    return metrics
