"""Validate raw partitions: row-level rules quarantine rows, batch-level rules fail the partition.

:func:`validate_partitions` validates many days in one run (:func:`validate_partition` one): for
each ``raw/events/dt=D/`` it flags every landed row (:func:`pipelines.data.rules.flag_partition`),
then

- writes the rows that fail a row rule to ``quarantine/events/dt=D/validation.parquet`` (the run
  continues);
- plans what preprocessing will do with the valid rows (:mod:`pipelines.data.cleaning`: exact
  duplicates are counted here) and hands them over (:mod:`pipelines.data.handover`);
- runs the Great Expectations suites once for all its days, through Checkpoints
  (:mod:`pipelines.data.expectations`): the partition-profile gate (rows, bad-row share, duplicate
  share, volume against recent partitions) and the recorded row sample;
- writes ``reports/validation/<report_id>/dt=D/{result.json,ge_result.json,summary.md,data_docs.html}``
  and the run's Data Docs index ``reports/validation/<report_id>/data_docs.html``.

The raw files of the next days are fetched while one day is flagged, and the writes of one day
overlap the next, so a long history of small days costs little more than its rows. A day that
fails a batch rule (or cannot be read) is recorded in :attr:`ValidationRun.errors` with the file,
rule and numbers, after its report and quarantine are written; :func:`validate_partition` raises
:class:`ValidationError` for it. Rules and reasons are documented in docs/data.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.config import Settings
from pipelines.data import expectations, handover
from pipelines.data.cleaning import EXACT, CleaningPlan, cleaning_settings, plan_cleaning
from pipelines.data.fanout import Background, prefetch
from pipelines.data.quarantine import validation_quarantine_table
from pipelines.data.raw import RawPartition, list_partition_objects, list_raw_partitions
from pipelines.data.reports import (
    ValidationResult,
    log_to_mlflow,
    publish_day,
    publish_index,
    render_summary,
)
from pipelines.data.rules import ValidationError, broken_reasons, flag_partition, in_window, split_flagged
from pipelines.platform import layout, storage

log = logging.getLogger(__name__)

__all__ = ["ValidationError", "ValidationResult", "ValidationRun", "log_to_mlflow", "recent_volume",
           "render_summary", "validate_partition", "validate_partitions"]

MIN_VOLUME_HISTORY = 3  # the volume rule needs this many earlier in-window partitions
PREFETCH_BYTES = 128 << 20  # raw bytes fetched ahead of the partitions being flagged
COMPUTE_THREADS = 2  # partitions flagged and planned at once
PROGRESS_EVERY_S = 10.0  # a long run logs how many days it has checked this often


class _Progress:
    """A log line every :data:`PROGRESS_EVERY_S` seconds while a run checks its days (a 4,000-day
    history takes about a minute before the first day's result is logged)."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.started = self.last = time.monotonic()

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.done < self.total and now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            log.info("validation: checked %d of %d days (%.0f%%) in %.0fs", self.done, self.total,
                     100.0 * self.done / self.total, now - self.started)

    @property
    def reported(self) -> bool:
        """Whether a progress line was logged (the run was long)."""
        return self.last != self.started


@dataclass
class ValidationRun:
    """What :func:`validate_partitions` did: a result per partition validated (passed or failed the
    gate), an error message per partition that failed or could not be read, the Data Docs index."""

    report_id: str
    results: list[ValidationResult] = field(default_factory=list)
    errors: dict[dt.date, str] = field(default_factory=dict)
    data_docs_key: str | None = None

    def raise_for_errors(self) -> None:
        """Raise :class:`ValidationError` naming every failed partition (the first three in full)."""
        if self.errors:
            shown = "; ".join(self.errors[d] for d in sorted(self.errors)[:3])
            more = f" (and {len(self.errors) - 3} more partitions)" if len(self.errors) > 3 else ""
            raise ValidationError(f"{len(self.errors)} partition(s) failed validation: {shown}{more}")


@dataclass
class _Checked:
    """One partition after the row rules, before the GE suites."""

    date: dt.date
    files: list[str]
    rows: int
    valid_rows: int
    quarantined: int
    reasons: dict[str, int]
    duplicates: int
    several: int
    skipped: dict[str, str]
    in_window: bool
    volume_ref: float | None
    profile: dict[str, Any]
    sample: pa.Table
    spec: Any
    quarantine_key: str | None
    handover_key: str


def validate_partition(settings: Settings, date: dt.date, *, report_id: str) -> ValidationResult:
    """Validate ``raw/events/dt=date/``: quarantine failing rows, gate the batch, write the report.

    Returns :class:`ValidationResult`; raises :class:`ValidationError` (after writing the report and
    quarantine, so people can look) when a batch-level rule fails or the partition cannot be read.
    """
    run = validate_partitions(settings, [date], report_id=report_id)
    if date in run.errors:
        raise ValidationError(run.errors[date])
    return run.results[0]


def validate_partitions(settings: Settings, dates: Iterable[dt.date], *, report_id: str,
                        now: dt.datetime | None = None) -> ValidationRun:
    """Validate every raw partition of ``dates`` in one run (see the module docstring); the Great
    Expectations suites run once over all of them. Returns :class:`ValidationRun`."""
    days = sorted(set(dates))
    run = ValidationRun(report_id=report_id)
    if not days:
        return run
    gx_ready = expectations.prepare_in_background()
    raw = list_raw_partitions(settings, days)
    history = _volume_history(settings, days, raw)
    quarantined_before = {o.key for o in list_partition_objects(settings, layout.QUARANTINE, days)}
    checked: list[_Checked] = []

    def fetch(day: dt.date) -> dict[str, bytes] | Exception:
        part = raw.get(day)
        try:
            return {f.key: storage.get_bytes(settings, f.key) for f in part.files} if part else {}
        except storage.StorageError as exc:
            return exc

    def weight(day: dt.date) -> int:
        part = raw.get(day)
        return sum(o.size for o in part.objects) if part else 0

    def check(day: dt.date, contents: dict[str, bytes] | Exception) -> _Checked | ValidationError:
        part = raw.get(day) or RawPartition(day, (), (), ())
        try:
            if isinstance(contents, Exception):
                raise ValidationError(f"dt={day}: rule readable_file failed: {contents}")
            return _check(settings, part, contents, history, quarantined_before, writes, now)
        except ValidationError as exc:
            return exc

    progress = _Progress(len(days))
    with Background() as writes, ThreadPoolExecutor(max_workers=COMPUTE_THREADS) as compute:
        # Arrow and NumPy release the GIL: two partitions are flagged and planned at once.
        in_flight: deque[tuple[dt.date, Future[_Checked | ValidationError]]] = deque()
        for day, contents in prefetch(fetch, days, weight=weight, budget=PREFETCH_BYTES):
            in_flight.append((day, compute.submit(check, day, contents)))
            while len(in_flight) >= COMPUTE_THREADS:
                _collect(settings, report_id, *in_flight.popleft(), run, checked, writes)
                progress.step()
        while in_flight:
            _collect(settings, report_id, *in_flight.popleft(), run, checked, writes)
            progress.step()
        if progress.reported:  # a long run: say what the rest of the time goes to
            log.info("validation: checked all %d days in %.0fs; running the Great Expectations suites and writing "
                     "the reports", len(days), time.monotonic() - progress.started)
        gx_ready.join()
        gates = expectations.check_profiles([c.profile for c in checked], settings) if checked else {}
        samples = [(c.date.isoformat(), c.spec, c.sample) for c in checked if c.sample.num_rows]
        row_suites = expectations.check_samples(samples, settings, now) if samples else {}
        for c in checked:
            day = c.date.isoformat()
            result = _result(settings, report_id, c, gates[day], row_suites.get(day))
            publish_day(settings, result, gates[day], row_suites.get(day), c.sample.num_rows, writes)
            run.results.append(result)
            if result.failures:
                run.errors[c.date] = (f"dt={c.date} ({', '.join(result.files)}): " + "; ".join(result.failures)
                                      + f" (report {storage.uri(settings, result.report_prefix)}summary.md)")
            log.info("validated dt=%s: %d rows, %d quarantined %s, %d exact duplicates, volume ratio %s%s", day,
                     result.rows, result.quarantined, result.reasons or "", result.duplicate_rows,
                     result.volume_ratio, "" if not result.failures else " - FAILED: " + "; ".join(result.failures))
        if run.results:
            run.data_docs_key = publish_index(settings, report_id, run.results, writes)
        _mark_failures(settings, run, days, writes)
    return run


def _mark_failures(settings: Settings, run: ValidationRun, days: list[dt.date], writes: Background) -> None:
    """Write ``staging/validated/dt=D/_FAILED.json`` for each failed day (preprocessing refuses the day
    while it exists) and remove it for each day that passed."""
    marked = {o.key for o in list_partition_objects(settings, layout.VALIDATED, days)}
    for day in days:
        key = layout.validation_failed_key(day)
        if day in run.errors:
            writes.submit(storage.put_json, settings, key, {"date": day.isoformat(), "report_id": run.report_id,
                                                            "error": run.errors[day]})
        elif key in marked:
            writes.submit(storage.delete_key, settings, key)


def _collect(settings: Settings, report_id: str, day: dt.date, future: Future[_Checked | ValidationError],
             run: ValidationRun, checked: list[_Checked], writes: Background) -> None:
    outcome = future.result()
    if isinstance(outcome, ValidationError):
        run.errors[day] = str(outcome)
        prefix = layout.validation_report_prefix(report_id, day)
        writes.submit(storage.put_text, settings, prefix + "summary.md",
                      f"# Validation of dt={day}: FAILED\n\n{outcome}\n")
    else:
        checked.append(outcome)


def _check(settings: Settings, part: RawPartition, contents: dict[str, bytes], history: VolumeHistory,
           quarantined_before: set[str], writes: Background, now: dt.datetime | None) -> _Checked:
    """Flag one partition's rows, plan their cleaning, start writing its quarantine and hand-over."""
    day = part.date
    flagged = flag_partition(settings, day, now, partition=part, contents=contents)
    handover.check_rows_as_landed(flagged)
    rows = flagged.rows
    valid, bad, reasons = split_flagged(flagged)
    plan = plan_cleaning(valid, settings)
    duplicates = int(np.count_nonzero(plan.fate == EXACT))
    several = plan.stats["items_with_several_categories"]
    if plan.skipped:
        log.info("dt=%s: cleaning rules %s not applied: %s", day, ", ".join(plan.skipped),
                 next(iter(plan.skipped.values())))
    # Rows outside the window or of an ignored behaviour are out of scope, not broken: they do not
    # count toward the bad-row share.
    broken = sum(broken_reasons(reasons).values())
    volume_ref = recent_volume(settings, day, history) if flagged.in_window and settings.min_volume_ratio > 0 else None
    volume_ratio = None if volume_ref in (None, 0) else rows / volume_ref
    big = rows >= settings.share_checks_min_rows and flagged.in_window
    bad_share = broken / rows if rows else 0.0
    dup_share = duplicates / rows if rows else 0.0
    # A small day is judged on its share too when every one of its rows is broken (a behaviour map
    # that matches nothing, a timestamp column misread): nothing of it would reach the model.
    all_broken = flagged.in_window and rows > 0 and broken == rows
    profile = {expectations.DAY: day.isoformat(), "rows": rows, "valid_rows": valid.num_rows,
               "quarantined": bad.num_rows, "bad_row_share": bad_share if big or all_broken else None,
               "duplicate_rows": duplicates,
               "duplicate_share": dup_share if big else None, "volume_ratio": volume_ratio,
               "items_with_several_categories": several, "users": plan.stats["users"], "items": plan.stats["items"],
               "categories": plan.stats["categories"], "in_window": flagged.in_window}
    q_table = validation_quarantine_table(bad)
    q_key = layout.quarantine_key(day, "validation")
    if q_table is not None:
        q_data = handover.encode_parquet(q_table)
        writes.submit(storage.put_bytes, settings, q_key, q_data, weight=len(q_data))
    elif q_key in quarantined_before:
        writes.submit(storage.delete_key, settings, q_key)
    _write_handover(settings, part, valid, plan, rows, reasons, writes)
    return _Checked(date=day, files=[f.key for f in flagged.files], rows=rows, valid_rows=valid.num_rows,
                    quarantined=bad.num_rows, reasons=reasons, duplicates=duplicates, several=several,
                    skipped=plan.skipped, in_window=flagged.in_window, volume_ref=volume_ref, profile=profile,
                    sample=expectations.sample_rows(flagged.canon, settings.ge_row_sample_rows),
                    spec=flagged.files[0].spec, quarantine_key=q_key if q_table is not None else None,
                    handover_key=layout.handover_key(day))


def _write_handover(settings: Settings, part: RawPartition, valid: pa.Table, plan: CleaningPlan, rows: int,
                    reasons: dict[str, int], writes: Background) -> None:
    table = handover.handover_table(part.date, valid, plan, rows=rows, reasons=reasons,
                                    fingerprint=handover.raw_fingerprint(settings, part.date, part.objects),
                                    cleaning=cleaning_settings(settings))
    data = handover.encode_handover(table)
    writes.submit(storage.put_bytes, settings, layout.handover_key(part.date), data, weight=len(data))


def _result(settings: Settings, report_id: str, c: _Checked, gate: expectations.DayResult,
            row_suite: expectations.DayResult | None) -> ValidationResult:
    broken = broken_reasons(c.reasons)
    failures = expectations.gate_failures(gate.result, c.profile, settings, c.volume_ref, broken)
    profile = c.profile
    return ValidationResult(
        date=c.date, report_id=report_id, files=c.files, rows=c.rows, valid_rows=c.valid_rows,
        quarantined=c.quarantined, reasons=c.reasons,
        bad_row_share=round(sum(broken.values()) / c.rows, 6) if c.rows else 0.0,
        duplicate_rows=c.duplicates, duplicate_share=round(c.duplicates / c.rows, 6) if c.rows else 0.0,
        volume_ratio=None if profile["volume_ratio"] is None else round(profile["volume_ratio"], 4),
        in_window=c.in_window, items_with_several_categories=c.several, ge_success=bool(gate.success),
        ge_row_sample_success=bool(row_suite.success) if row_suite is not None else None, failures=failures,
        quarantine_key=c.quarantine_key, report_prefix=layout.validation_report_prefix(report_id, c.date),
        handover_key=c.handover_key, data_docs_key=layout.validation_data_docs_key(report_id, c.date),
        time_rules_skipped=c.skipped)


# --- numbers ---------------------------------------------------------------------------------------


@dataclass
class VolumeHistory:
    """The in-window raw partitions landed (sorted) and rows per partition (from the sidecars), as far
    as the volume rule needs them."""

    landed: list[dt.date] = field(default_factory=list)
    rows: dict[dt.date, int] = field(default_factory=dict)


def _volume_history(settings: Settings, days: list[dt.date], raw: dict[dt.date, RawPartition]) -> VolumeHistory:
    """The history the volume rule compares ``days`` with: one listing of the partition dates, and
    the sidecars of the in-window partitions just before each day that ``raw`` does not hold yet."""
    history = VolumeHistory(rows={d: p.rows for d, p in raw.items()})
    if settings.min_volume_ratio <= 0:
        return history
    history.landed = [d for d in storage.list_partitions(settings, layout.RAW) if in_window(settings, d)]
    needed: set[dt.date] = set()
    for day in days:
        needed.update([d for d in history.landed if d < day][-settings.volume_lookback_partitions:])
    missing = needed - set(raw)
    if missing:
        history.rows.update({d: p.rows for d, p in list_raw_partitions(settings, missing).items()})
    return history


def recent_volume(settings: Settings, date: dt.date, history: VolumeHistory | None = None) -> float | None:
    """Median rows of the last ``volume_lookback_partitions`` raw partitions before ``date`` (from the
    sidecars' row counts) that lie in the window; None with fewer than 3 of them. ``history``: what
    :func:`_volume_history` gathered, when the caller has it."""
    history = history or _volume_history(settings, [date], {})
    earlier = [d for d in history.landed if d < date][-settings.volume_lookback_partitions:]
    if len(earlier) < MIN_VOLUME_HISTORY:
        return None
    return float(statistics.median(history.rows.get(d, 0) for d in earlier))
