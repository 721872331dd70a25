"""Preprocess raw partitions into ``clean/events/dt=D/part-00000.parquet`` (canonical events).

For partition D, :func:`preprocess_partition` (one day) and :func:`preprocess_partitions` (many
days: hand-overs fetched ahead, writes in the background, one listing per area) take the rows
that passed validation from its hand-over (``staging/validated/dt=D/valid.parquet``, used while
the raw files and window are unchanged) or else recompute the validation row flags
(:func:`pipelines.data.rules.flag_partition`, the same pure rules, so both steps agree), and clean
them with :func:`pipelines.data.cleaning.plan_cleaning`:

1. exact and near-exact duplicates are counted and dropped (they carry no information); the
   dropped rows are kept in ``quarantine/events/dt=D/duplicates.parquet`` (reason
   ``duplicate_exact`` / ``duplicate_near``), so the reconciliation holds row for row;
2. noise is set aside with a reason (``quarantine/events/dt=D/preprocess.parquet``):
   ``crawler_rate``, ``crawler_diversity``, ``burst``;
3. the rest is written in :data:`pipelines.contracts.EVENT_SCHEMA`, sorted by user then time.

The hand-over already holds each row's fate, planned by validation under the cleaning settings
recorded with it: then preprocessing only splits and writes (it re-plans when the settings
differ). Counts reconcile for every partition — rows in = clean + quarantined (validation +
noise) + duplicates dropped — asserted here and recorded in ``reports/preprocess/dt=D.json``. The
partition is replaced whole (stale parts are deleted).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.data import handover, rules
from pipelines.data.cleaning import (
    CLEAN,
    DUPLICATE_FATES,
    FATES,
    NOISE_REASONS,
    cleaning_settings,
    fate_names,
    split_events,
    to_event_schema,
)
from pipelines.data.cleaning import clean_events as clean_events  # re-exported
from pipelines.data.fanout import Background, prefetch
from pipelines.data.quarantine import DUPLICATES, PREPROCESS, quarantine_table, validation_quarantine_table
from pipelines.data.raw import RawPartition, list_partition_objects, list_raw_partitions
from pipelines.data.rules import CANONICAL_KEY_COLUMNS
from pipelines.platform import layout, storage

log = logging.getLogger(__name__)

__all__ = ["DUPLICATE_FATES", "FATES", "NOISE_REASONS", "PreprocessError", "PreprocessResult", "PreprocessRun",
           "clean_events", "preprocess_partition", "preprocess_partitions"]

NOISE_COLUMNS = ["source_file", "row", "user_id", "item_id", "category_id", "behavior", "ts", "value"]
PREFETCH_BYTES = 256 << 20  # hand-over bytes fetched ahead of the partition being cleaned


class PreprocessError(RuntimeError):
    """Counts did not reconcile or a partition cannot be preprocessed; the message names the partition."""


@dataclass
class PreprocessResult:
    """Counts of one preprocessed partition: rows_in = clean + quarantined + duplicates_dropped."""

    date: dt.date
    rows_in: int
    clean: int
    quarantined: int
    quarantined_validation: int
    quarantined_noise: int
    duplicates_dropped: int
    exact_duplicates: int
    near_duplicates: int
    reasons: dict[str, int]
    clean_keys: list[str]
    quarantine_key: str | None
    users: int
    duplicates_key: str | None = None  # the dropped duplicates, row for row (reason duplicate_exact/near)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["date"] = self.date.isoformat()
        return out


@dataclass
class PreprocessRun:
    """What :func:`preprocess_partitions` did: a result per partition cleaned, an error per partition
    that could not be (its raw files unreadable, or counts that did not reconcile)."""

    results: list[PreprocessResult] = field(default_factory=list)
    errors: dict[dt.date, str] = field(default_factory=dict)


@dataclass
class _Cleaned:
    date: dt.date
    rows_in: int
    reasons: dict[str, int]
    q_validation: int
    clean: pa.Table
    noise: pa.Table  # set-aside rows with a ``fate``: noise and the dropped duplicates
    counts: dict[str, int]
    bad: pa.Table | None  # validation quarantine to rewrite (when the raw partition was flagged here)
    users: int  # distinct users among the clean rows


def preprocess_partition(settings: Settings, date: dt.date) -> PreprocessResult:
    """Preprocess ``raw/events/dt=date/`` into ``clean/events/dt=date/part-00000.parquet``.

    Replaces the clean partition whole and writes noise rows to
    ``quarantine/events/dt=date/preprocess.parquet``. Uses validation's hand-over when it matches
    the raw files; otherwise flags the raw partition itself and rewrites validation's quarantine
    file from the same rules. Raises :class:`PreprocessError` if counts do not reconcile and
    :class:`pipelines.data.rules.ValidationError` if the raw partition cannot be read.
    """
    run = preprocess_partitions(settings, [date], raise_errors=True)
    return run.results[0]


def preprocess_partitions(settings: Settings, dates: Iterable[dt.date], *, raise_errors: bool = False) -> PreprocessRun:
    """Preprocess many raw partitions (see :func:`preprocess_partition`), oldest first, fetching the
    next hand-overs while one is cleaned and writing in the background. A partition that cannot be
    preprocessed is recorded in :attr:`PreprocessRun.errors` (with ``raise_errors``, its error is
    raised after the writes started so far finish)."""
    days = sorted(set(dates))
    run = PreprocessRun()
    if not days:
        return run
    raw = list_raw_partitions(settings, days)
    existing = _existing_keys(settings, days)
    sizes = {o.key: o.size for o in existing.get(layout.VALIDATED, [])}
    failed = {d for d in days if layout.validation_failed_key(d) in sizes}
    for day in failed:  # as the DAG does: a day whose validation failed is not cleaned
        note = storage.get_json(settings, layout.validation_failed_key(day))
        message = (f"dt={day}: refused: its last validation failed (report id {note.get('report_id')}): "
                   f"{note.get('error')}; fix the data and validate dt={day} again")
        if raise_errors:
            raise PreprocessError(message)
        run.errors[day] = message
        log.error("preprocess dt=%s refused: %s", day, message)
    days = [d for d in days if d not in failed]

    def fetch(day: dt.date) -> handover.Handover | None:
        part = raw.get(day)
        return handover.read_handover(settings, day, objects=part.objects if part else ())

    with Background() as writes:
        for day, validated in prefetch(fetch, days, weight=lambda d: sizes.get(layout.handover_key(d), 0),
                                       budget=PREFETCH_BYTES):
            try:
                cleaned = _clean(settings, day, validated, raw.get(day))
                result = _publish(settings, cleaned, existing, writes)
            except (rules.ValidationError, PreprocessError) as exc:
                if raise_errors:
                    raise
                run.errors[day] = str(exc)
                log.error("preprocess dt=%s failed: %s", day, exc)
                continue
            run.results.append(result)
            log.info("preprocessed dt=%s: %d in = %d clean + %d quarantined + %d duplicates %s", day,
                     result.rows_in, result.clean, result.quarantined, result.duplicates_dropped,
                     result.reasons or "")
    return run


def _existing_keys(settings: Settings, days: list[dt.date]) -> dict[str, list[storage.ObjectInfo]]:
    """Objects now under the clean, quarantine and staging partitions of ``days``."""
    return {area: list_partition_objects(settings, area, days)
            for area in (layout.CLEAN, layout.QUARANTINE, layout.VALIDATED)}


def _clean(settings: Settings, date: dt.date, validated: handover.Handover | None,
           part: RawPartition | None) -> _Cleaned:
    if validated is None:
        flagged = rules.flag_partition(settings, date, partition=part)
        handover.check_rows_as_landed(flagged)
        valid, bad, reasons = rules.split_flagged(flagged)
        clean, noise, counts = split_events(valid, settings)
        users = len(pc.unique(clean["user_id"])) if clean.num_rows else 0
        return _Cleaned(date, flagged.rows, reasons, bad.num_rows, clean, noise, counts, bad, users)
    meta = validated.meta
    reasons = {k: int(v) for k, v in meta["reasons"].items()}
    rows_in = int(meta["rows"])
    if meta.get("cleaning") == cleaning_settings(settings) and meta.get("fates") == list(FATES):
        # Validation planned the fates under these settings: split, nothing to compute.
        table = validated.read([*CANONICAL_KEY_COLUMNS, handover.FATE])
        fate = handover.fates_of(table)
        clean = to_event_schema(table.filter(pa.array(fate == CLEAN)))
        noisy = fate != CLEAN  # noise and duplicates: every row not kept is kept aside
        noise = table.slice(0, 0).drop_columns([handover.FATE])
        if noisy.any():
            both = pa.Table.from_arrays([*table.columns, *validated.read(["source_file", "row"]).columns],
                                        names=[*table.column_names, "source_file", "row"]).filter(pa.array(noisy))
            both = handover.input_order(both)
            noise = both.drop_columns([handover.FATE]).append_column("fate", fate_names(handover.fates_of(both)))
        counts = {FATES[k]: int(v) for k, v in enumerate(np.bincount(fate, minlength=len(FATES))) if v}
        users = int(meta.get("clean_users", len(pc.unique(clean["user_id"])) if clean.num_rows else 0))
    else:
        table = handover.input_order(validated.read()).drop_columns([handover.FATE])
        clean, noise, counts = split_events(table, settings)
        users = len(pc.unique(clean["user_id"])) if clean.num_rows else 0
    return _Cleaned(date, rows_in, reasons, sum(reasons.values()), clean, noise, counts, None, users)


def _publish(settings: Settings, c: _Cleaned, existing: dict[str, list[storage.ObjectInfo]],
             writes: Background) -> PreprocessResult:
    """Check the counts, then write the clean part, the quarantine files and the report (in the
    background) and delete what the last run left that this one does not rewrite."""
    dups, noise = c.noise.slice(0, 0), c.noise
    if c.noise.num_rows:
        is_dup = pc.is_in(c.noise["fate"], pa.array(DUPLICATE_FATES))
        dups, noise = c.noise.filter(is_dup), c.noise.filter(pc.invert(is_dup))
    q_noise = noise.num_rows
    exact = c.counts.get("duplicate_exact", 0)
    near = c.counts.get("duplicate_near", 0)
    if dups.num_rows != exact + near:
        raise PreprocessError(f"dt={c.date}: {dups.num_rows} duplicate rows set aside but {exact + near} counted")
    if c.rows_in != c.clean.num_rows + c.q_validation + q_noise + exact + near:
        raise PreprocessError(f"dt={c.date}: counts do not reconcile: rows in {c.rows_in} != clean "
                              f"{c.clean.num_rows} + quarantined {c.q_validation} + noise {q_noise} + "
                              f"duplicates {exact + near}")
    writing: dict[str, pa.Table] = {}
    if c.clean.num_rows:
        writing[layout.clean_key(c.date)] = c.clean
    if c.bad is not None:
        q_val = validation_quarantine_table(c.bad)
        if q_val is not None:
            writing[layout.quarantine_key(c.date, "validation")] = q_val
    q_noise_table = quarantine_table(_noise_rows(noise), PREPROCESS) if noise.num_rows else None
    q_key = layout.quarantine_key(c.date, PREPROCESS) if q_noise_table is not None else None
    if q_noise_table is not None:
        writing[q_key] = q_noise_table
    d_key = layout.quarantine_key(c.date, DUPLICATES) if dups.num_rows else None
    if d_key is not None:
        writing[d_key] = quarantine_table(_noise_rows(dups), DUPLICATES)
    stale = [o.key for o in existing[layout.CLEAN] if o.key.startswith(layout.partition_prefix(layout.CLEAN, c.date))]
    stale += [o.key for o in existing[layout.QUARANTINE]
              if o.key in (layout.quarantine_key(c.date, PREPROCESS), layout.quarantine_key(c.date, DUPLICATES))
              or (c.bad is not None and o.key == layout.quarantine_key(c.date, "validation"))]
    stale = [k for k in stale if k not in writing]
    if stale:
        storage.delete_keys(settings, stale)
    reasons = dict(c.reasons)
    for r in NOISE_REASONS:
        if c.counts.get(r):
            reasons[r] = c.counts[r]
    result = PreprocessResult(
        date=c.date, rows_in=c.rows_in, clean=c.clean.num_rows, quarantined=c.q_validation + q_noise,
        quarantined_validation=c.q_validation, quarantined_noise=q_noise, duplicates_dropped=exact + near,
        exact_duplicates=exact, near_duplicates=near, reasons=reasons,
        clean_keys=[layout.clean_key(c.date)] if c.clean.num_rows else [], quarantine_key=q_key, users=c.users,
        duplicates_key=d_key)
    for key, table in writing.items():
        writes.submit(storage.write_parquet, settings, key, table)
    writes.submit(storage.put_json, settings, layout.preprocess_report_key(c.date), result.to_dict())
    return result


def _noise_rows(noise: pa.Table) -> pa.Table:
    """The quarantine view of noise rows: :data:`NOISE_COLUMNS` (``ts`` as a timestamp), ``reason`` = fate."""
    rows = noise.select(NOISE_COLUMNS)
    rows = rows.set_column(rows.column_names.index("ts"), "ts", pc.cast(rows["ts"], pa.timestamp("us", tz="UTC")))
    return rows.append_column("reason", noise["fate"])
