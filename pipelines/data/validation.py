"""Validate one raw partition: row-level rules quarantine rows, batch-level rules fail the task.

For ``raw/events/dt=D/`` :func:`validate_partition` reads every landed file (with its sidecar),
maps it to canonical candidates (:func:`pipelines.sources.canonicalize`) and

- flags rows with vectorised rules (Arrow compute; first failing rule is the row's ``reason``,
  all failing rules in ``rules``) and writes them to ``quarantine/events/dt=D/validation.parquet``
  — the run continues;
- runs Great Expectations 1.x twice (suites built once per process): a *partition profile*
  suite (one row of aggregate numbers: rows, bad-row share, duplicate share, volume against
  recent partitions) that is the batch gate, and a *row sample* suite on ``ge_row_sample_rows``
  rows (schema, non-null keys, id formats, known behaviours, timestamps in the window, value
  range; ``mostly`` = 1 - max bad-row share) recorded for people (0 rows = off);
- hands the valid rows to preprocessing: ``staging/validated/dt=D/valid.parquet`` with a
  fingerprint of the raw files (keys, ETags, sizes) and window (:func:`write_handover`);
- writes ``reports/validation/<report_id>/dt=D/{result.json,ge_result.json,summary.md}``;
- raises :class:`ValidationError` (file, rule, numbers) when the batch gate fails.

Preprocessing reuses the hand-over while its fingerprint matches (:func:`read_handover`) and
otherwise recomputes the same row flags (:func:`flag_partition`), so the clean and quarantined
rows of a partition always reconcile with its raw rows. Rules and reasons are documented in
docs/data.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.config import Settings
from pipelines.contracts import BEHAVIORS
from pipelines.data import sources
from pipelines.platform import layout, storage

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# Row rules in priority order: a row's reason is the first that fails.
ROW_RULES = ("null_user_id", "null_item_id", "null_category_id", "bad_id_format", "unknown_behavior",
             "unparseable_timestamp", "implausible_timestamp", "outside_window", "wrong_partition",
             "bad_value", "value_out_of_range")
# Validated rows handed to preprocessing (same process or another worker): staging/validated/dt=D/valid.parquet.
VALIDATED = "staging/validated"
HANDOVER_META = b"im_handover"
HANDOVER_COLUMNS = ["user_id", "item_id", "category_id", "behavior", "ts", "value", "source_file", "row"]


class ValidationError(RuntimeError):
    """A batch-level rule failed; the message names the partition, file(s), rule and numbers."""


@dataclass
class FlaggedPartition:
    """The canonical candidates of one raw partition with each row's failed rule (``reason``)."""

    date: dt.date
    canon: pa.Table  # canonicalize() columns + source_file, reason, rules
    files: list[sources.RawFile]
    in_window: bool

    @property
    def rows(self) -> int:
        return self.canon.num_rows


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


# --- reading and flagging -----------------------------------------------------------------------


def _window_bounds_us(settings: Settings) -> tuple[int | None, int | None]:
    """The window [start 00:00, end+1 00:00) in ``window_timezone``, as UTC microseconds (None = open)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(settings.window_timezone)

    def at(d: dt.date) -> int:
        return int(dt.datetime.combine(d, dt.time(), tzinfo=zone).timestamp()) * 1_000_000

    lo = at(settings.window_start) if settings.window_start else None
    hi = at(settings.window_end + dt.timedelta(days=1)) if settings.window_end else None
    return lo, hi


def in_window(settings: Settings, date: dt.date) -> bool:
    """Whether the UTC day ``date`` overlaps the configured window (None bounds = unbounded)."""
    lo, hi = _window_bounds_us(settings)
    d_lo = int(dt.datetime.combine(date, dt.time(), tzinfo=dt.UTC).timestamp()) * 1_000_000
    d_hi = d_lo + 86_400_000_000
    return (lo is None or d_hi > lo) and (hi is None or d_lo < hi)


def flag_rows(canon: pa.Table, spec: sources.SourceSpec, date: dt.date, settings: Settings,
              now: dt.datetime | None = None) -> tuple[pa.Array, pa.Array]:
    """Row rules over canonical candidates: (``reason`` = first failed rule or null, ``rules`` = all,
    comma separated). Pure function of the table, the source spec, the partition date and settings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = canon.num_rows
    false = pa.scalar(False)
    ts = canon["ts"]
    lo, hi = sources.plausible_bounds_us(now)
    w_lo, w_hi = _window_bounds_us(settings)
    d_lo = int(dt.datetime.combine(date, dt.time(), tzinfo=dt.UTC).timestamp()) * 1_000_000
    d_hi = d_lo + 86_400_000_000

    def ids_bad() -> pa.Array:
        out = pa.array([False] * n)
        for f in ("user_id", "item_id", "category_id"):
            ok = pc.match_substring_regex(canon[f], spec.id_pattern)
            out = pc.or_(out, pc.fill_null(pc.invert(ok), False))
        return out

    known = pc.is_in(canon["behavior"], value_set=pa.array(BEHAVIORS))
    parsed = pc.is_valid(ts)
    plausible = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
    window = pa.array([True] * n)
    if w_lo is not None:
        window = pc.and_(window, pc.greater_equal(ts, w_lo))
    if w_hi is not None:
        window = pc.and_(window, pc.less(ts, w_hi))
    in_part = pc.and_(pc.greater_equal(ts, d_lo), pc.less(ts, d_hi))
    value_given = pc.is_valid(canon["value_raw"])
    value_bad = pc.and_(value_given, pc.is_null(canon["value"]))
    if spec.value_range:
        vlo, vhi = spec.value_range
        out_of_range = pc.fill_null(pc.or_(pc.less(canon["value"], vlo), pc.greater(canon["value"], vhi)), False)
    else:
        out_of_range = pa.array([False] * n)
    checks = {
        "null_user_id": pc.is_null(canon["user_id"]),
        "null_item_id": pc.is_null(canon["item_id"]),
        "null_category_id": pc.is_null(canon["category_id"]),
        "bad_id_format": ids_bad(),
        "unknown_behavior": pc.invert(pc.fill_null(known, false)),
        "unparseable_timestamp": pc.invert(parsed),
        "implausible_timestamp": pc.and_(parsed, pc.invert(pc.fill_null(plausible, false))),
        "outside_window": pc.and_(pc.fill_null(plausible, false), pc.invert(pc.fill_null(window, false))),
        "wrong_partition": pc.and_(pc.fill_null(plausible, false), pc.invert(pc.fill_null(in_part, false))),
        "bad_value": value_bad,
        "value_out_of_range": out_of_range,
    }
    reason = pa.nulls(n, pa.string())
    rules = pa.nulls(n, pa.string())
    for name in reversed(ROW_RULES):
        reason = pc.if_else(checks[name], pa.scalar(name), reason)
    for name in ROW_RULES:
        mask = checks[name]
        if not pc.any(mask).as_py():
            continue
        joined = pc.binary_join_element_wise(rules, pa.scalar(name), ",", null_handling="skip")
        rules = pc.if_else(mask, joined, rules)
    return reason, rules


def flag_partition(settings: Settings, date: dt.date, now: dt.datetime | None = None) -> FlaggedPartition:
    """Read every landed file of ``raw/events/dt=date/`` and flag its rows (see :func:`flag_rows`).

    Raises :class:`ValidationError` for an empty partition, a data file without sidecar, or an
    unreadable file / changed columns (batch-level: the message names the file and the rule).
    """
    import numpy as np
    import pyarrow as pa

    files, orphans = sources.list_raw_files(settings, date)
    prefix = layout.partition_prefix(layout.RAW, date)
    if orphans:
        raise ValidationError(f"dt={date}: rule files_have_sidecar failed: {len(orphans)} raw file(s) without "
                              f"a .meta.json sidecar ({', '.join(orphans[:3])}); land files with "
                              "`python -m pipelines land`")
    if not files:
        raise ValidationError(f"dt={date}: rule partition_not_empty failed: no landed files under "
                              f"s3://{settings.bucket}/{prefix}")
    parts: list[pa.Table] = []
    for raw in files:
        try:
            table = sources.read_raw_file(settings, raw)
        except sources.SourceError as exc:
            raise ValidationError(f"dt={date}: rule readable_file failed: {exc}") from exc
        canon = sources.canonicalize(table, raw.spec)
        reason, rules = flag_rows(canon, raw.spec, date, settings, now)
        # One dictionary entry per file instead of the key repeated on every row.
        source = pa.DictionaryArray.from_arrays(pa.array(np.zeros(canon.num_rows, np.int32)), pa.array([raw.key]))
        canon = canon.append_column("source_file", source)
        canon = canon.append_column("reason", reason).append_column("rules", rules)
        parts.append(canon)
    canon_all = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    return FlaggedPartition(date=date, canon=canon_all, files=files, in_window=in_window(settings, date))


def count_exact_duplicates(valid: pa.Table) -> int:
    """Rows that repeat an earlier row on every canonical field (user, item, category, behaviour, ts, value)."""
    if valid.num_rows == 0:
        return 0
    keys = ["user_id", "item_id", "category_id", "behavior", "ts", "value"]
    groups = valid.select(keys).group_by(keys, use_threads=True).aggregate([]).num_rows
    return valid.num_rows - groups


def _recent_volume(settings: Settings, date: dt.date) -> float | None:
    """Median rows of the last ``volume_lookback_partitions`` raw partitions before ``date`` (from the
    sidecars' row counts) that lie in the window; None with fewer than 3 of them."""
    earlier = [d for d in storage.list_partitions(settings, layout.RAW) if d < date and in_window(settings, d)]
    earlier = earlier[-settings.volume_lookback_partitions:]
    if len(earlier) < 3:
        return None
    volumes = []
    for d in earlier:
        files, _ = sources.list_raw_files(settings, d)
        volumes.append(sum(f.rows for f in files))
    return float(statistics.median(volumes))


# --- Great Expectations -------------------------------------------------------------------------


_GE_STATE: dict[str, Any] = {}


def _ge_context() -> Any:
    """One ephemeral GE context per process (each creation leaves a temporary docs folder)."""
    import itertools

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if "context" not in _GE_STATE:
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        _GE_STATE["context"] = context
        _GE_STATE["counter"] = itertools.count()
    return _GE_STATE["context"]


def _run_suite(context: Any, key: tuple[Any, ...], frame: Any, make_expectations: Any) -> Any:
    """Run the suite identified by ``key`` on ``frame``; the suite and its validation definition are
    built once per process and key (building them costs GE far more than running them)."""
    import great_expectations as gx

    definitions = _GE_STATE.setdefault("definitions", {})
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


def run_profile_gate(profile: dict[str, Any], settings: Settings, context: Any | None = None) -> Any:
    """The batch gate: GE expectations over a one-row frame of partition aggregates.

    ``profile`` keys: rows, bad_row_share, duplicate_share, volume_ratio. A None value (a share
    of a tiny partition, the volume check without enough history) is left out of the frame and
    its expectation is not run. Column min/max expectations are used (on one row they equal the
    value): GE builds far fewer metrics for them than for per-row expectations.
    """
    import great_expectations as gx
    import pandas as pd

    context = _ge_context()
    present = tuple(k for k in ("rows", "bad_row_share", "duplicate_share", "volume_ratio")
                    if profile.get(k) is not None)
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
    return _run_suite(context, key, frame, lambda: [rules[k]() for k in present])


def run_row_sample(sample: Any, spec: sources.SourceSpec, settings: Settings, context: Any | None = None) -> Any:
    """Row expectations on a sample of canonical rows (recorded; quarantine is decided by flag_rows).

    Schema, behaviour set, timestamp range, share of non-null keys, id regex and value range, each
    with ``mostly = 1 - max_bad_row_share``.
    """
    import great_expectations as gx

    context = _ge_context()
    mostly = max(0.0, 1.0 - settings.max_bad_row_share)
    E = gx.expectations
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    lo, hi = sources.plausible_bounds_us(today)
    w_lo, w_hi = _window_bounds_us(settings)
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
    return _run_suite(context, key, sample, make)


# --- the step -----------------------------------------------------------------------------------


def validate_partition(settings: Settings, date: dt.date, *, report_id: str) -> ValidationResult:
    """Validate ``raw/events/dt=date/``: quarantine failing rows, gate the batch, write the report.

    Returns :class:`ValidationResult`; raises :class:`ValidationError` (after writing the report and
    quarantine, so people can look) when a batch-level rule fails.
    """
    import pyarrow.compute as pc

    report_prefix = f"{layout.VALIDATION_REPORTS}/{report_id}/dt={date.isoformat()}/"
    fingerprint = raw_fingerprint(settings, date)  # before reading: a file landed meanwhile makes it stale
    try:
        flagged = flag_partition(settings, date)
    except ValidationError as exc:
        storage.put_text(settings, report_prefix + "summary.md", f"# Validation of dt={date}: FAILED\n\n{exc}\n")
        raise
    canon = flagged.canon
    rows = canon.num_rows
    if not flagged.in_window:
        # Out of the configured window: every row is set aside, the batch itself is not an error.
        canon = canon.set_column(canon.column_names.index("reason"), "reason",
                                 pc.if_else(pc.is_null(canon["reason"]), "outside_window", canon["reason"]))
    bad_mask = pc.is_valid(canon["reason"])
    quarantined = int(pc.sum(bad_mask).as_py() or 0)
    valid = canon.filter(pc.invert(bad_mask))
    reasons = _count(canon["reason"])
    # Rows outside the window are out of scope, not broken: they do not count toward the bad-row share.
    out_of_scope = reasons.get("outside_window", 0)
    duplicates = count_exact_duplicates(valid)
    several = _items_with_several_categories(valid)
    volume_ref = _recent_volume(settings, date) if flagged.in_window and settings.min_volume_ratio > 0 else None
    volume_ratio = None if volume_ref in (None, 0) else rows / volume_ref
    big = rows >= settings.share_checks_min_rows and flagged.in_window
    bad_share = (quarantined - out_of_scope) / rows if rows else 0.0
    dup_share = duplicates / rows if rows else 0.0
    profile = {"rows": rows, "bad_row_share": bad_share if big else None,
               "duplicate_share": dup_share if big else None, "volume_ratio": volume_ratio}

    context = _ge_context()
    gate = run_profile_gate(profile, settings, context)
    sample = _ge_sample(canon, settings.ge_row_sample_rows)
    row_suite = run_row_sample(sample, flagged.files[0].spec, settings, context) if len(sample) else None
    failures = _gate_failures(gate, profile, settings, volume_ref)

    q_key = _write_quarantine(settings, date, canon.filter(bad_mask))
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
                              + f" (report s3://{settings.bucket}/{report_prefix}summary.md)")
    return result


def _count(reason: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    import pyarrow.compute as pc

    counts = pc.value_counts(reason.drop_null() if hasattr(reason, "drop_null") else reason)
    return {str(c["values"]): int(c["counts"]) for c in counts.to_pylist() if c["values"] is not None}


def _items_with_several_categories(valid: pa.Table) -> int:
    import pyarrow.compute as pc

    if valid.num_rows == 0:
        return 0
    pairs = valid.select(["item_id", "category_id"]).group_by(["item_id", "category_id"]).aggregate([])
    per_item = pairs.group_by("item_id").aggregate([("category_id", "count")])
    return int(pc.sum(pc.greater(per_item["category_id_count"], 1)).as_py() or 0)


def _ge_sample(canon: pa.Table, rows: int) -> Any:
    """Up to ``rows`` evenly spaced rows as a pandas frame (empty when ``rows`` is 0)."""
    import numpy as np
    import pyarrow as pa

    n = canon.num_rows
    idx = np.unique(np.linspace(0, n - 1, num=min(n, rows)).astype(np.int64)) if n and rows else []
    part = canon.take(pa.array(idx, pa.int64())).select(
        ["user_id", "item_id", "category_id", "behavior", "ts", "value"]).rename_columns(
        ["user_id", "item_id", "category_id", "behavior", "ts_us", "value"])
    return part.to_pandas()


def _gate_failures(gate: Any, profile: dict[str, Any], settings: Settings, volume_ref: float | None) -> list[str]:
    """One line per failed GE gate expectation: rule, observed numbers and the limit."""
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


def _write_quarantine(settings: Settings, date: dt.date, bad: pa.Table) -> str | None:
    import pyarrow as pa

    key = f"{layout.partition_prefix(layout.QUARANTINE, date)}validation.parquet"
    if bad.num_rows == 0:
        storage.s3_client(settings).delete_object(Bucket=settings.bucket, Key=key)
        return None
    cols = ["source_file", "row", "user_id", "item_id", "category_id", "behavior_raw", "ts_raw", "value_raw",
            "reason", "rules"]
    table = bad.select(cols)
    table = table.set_column(0, "source_file", table["source_file"].cast(pa.string()))
    table = table.append_column("stage", pa.array(["validation"] * bad.num_rows, pa.string()))
    storage.write_parquet(settings, key, table)
    return key


# --- hand-over to preprocessing ------------------------------------------------------------------


def raw_fingerprint(settings: Settings, date: dt.date) -> str:
    """A digest of ``raw/events/dt=date/`` (every key with its ETag and size) and of the settings the
    row rules depend on (window bounds and zone): equal digests mean equal row flags."""
    import hashlib

    client = storage.s3_client(settings)
    prefix = layout.partition_prefix(layout.RAW, date)
    entries = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix):
        entries += [f"{o['Key']}|{o.get('ETag', '')}|{o.get('Size', 0)}" for o in page.get("Contents", [])]
    text = "\n".join([*sorted(entries), f"window={settings.window_start}..{settings.window_end}",
                      f"zone={settings.window_timezone}"])
    return hashlib.sha256(text.encode()).hexdigest()


def handover_key(date: dt.date) -> str:
    return f"{layout.partition_prefix(VALIDATED, date)}valid.parquet"


def write_handover(settings: Settings, date: dt.date, valid: pa.Table, *, rows: int, reasons: dict[str, int],
                   fingerprint: str) -> str:
    """Write the rows that passed the row rules (``HANDOVER_COLUMNS``, ``ts`` int64 microseconds) to
    ``staging/validated/dt=date/valid.parquet`` with the raw partition's fingerprint, its row count
    and its quarantine reasons in the file metadata, so preprocessing need not read and flag the
    raw files again. Returns the key."""
    import json

    meta = {"date": date.isoformat(), "fingerprint": fingerprint, "rows": rows, "reasons": reasons}
    table = valid.select(HANDOVER_COLUMNS)
    table = table.replace_schema_metadata({HANDOVER_META: json.dumps(meta).encode()})
    key = handover_key(date)
    storage.write_parquet(settings, key, table)
    return key


def read_handover(settings: Settings, date: dt.date) -> tuple[pa.Table, dict[str, Any]] | None:
    """The validated rows of ``date`` and their metadata (rows, reasons) when the hand-over exists and
    was written for the raw files and window now in place; None otherwise (the caller re-flags)."""
    import io
    import json

    import pyarrow.parquet as pq

    key = handover_key(date)
    try:
        data = storage.get_bytes(settings, key)
    except storage.StorageError:
        log.info("dt=%s: no validated hand-over at %s: flagging the raw files again", date, key)
        return None
    table = pq.read_table(io.BytesIO(data))
    meta = json.loads((table.schema.metadata or {}).get(HANDOVER_META, b"{}"))
    if meta.get("fingerprint") != raw_fingerprint(settings, date):
        log.info("dt=%s: hand-over %s is stale (raw files or window changed): flagging the raw files again",
                 date, key)
        return None
    return table.replace_schema_metadata(None), meta


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
    import time

    import mlflow
    from mlflow.entities import Metric

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
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(mlflow_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    client.log_dict(mlflow_run_id, {"partitions": result_dicts}, "validation/results.json")
    return metrics


# --- command line -------------------------------------------------------------------------------


def date_range(start: dt.date, end: dt.date | None) -> list[dt.date]:
    """Every date from ``start`` to ``end`` inclusive (just ``start`` when ``end`` is None)."""
    end = end or start
    if end < start:
        raise ValueError(f"--to {end} is before --date {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def _cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    try:
        dates = date_range(dt.date.fromisoformat(args.date), dt.date.fromisoformat(args.to) if args.to else None)
    except ValueError as exc:
        print(f"validate: bad date: {exc}")
        return 2
    report_id = args.report_id or dt.datetime.now(dt.UTC).strftime("manual-%Y%m%dT%H%M%SZ")
    failed = 0
    totals = {"rows": 0, "quarantined": 0}
    for date in dates:
        try:
            res = validate_partition(settings, date, report_id=report_id)
        except ValidationError as exc:
            failed += 1
            print(f"dt={date}: FAILED: {exc}")
            continue
        totals["rows"] += res.rows
        totals["quarantined"] += res.quarantined
        print(f"dt={date}: {res.rows} rows, {res.quarantined} quarantined {res.reasons or ''}, "
              f"{res.duplicate_rows} duplicates")
    print(f"validated {len(dates) - failed}/{len(dates)} partitions: {totals['rows']} rows, "
          f"{totals['quarantined']} quarantined; reports under s3://{settings.bucket}/{layout.VALIDATION_REPORTS}/{report_id}/")
    return 1 if failed else 0


def register_cli(subparsers: Any) -> None:
    """``python -m pipelines validate --date D [--to D2] [--report-id ID]``."""
    p = subparsers.add_parser("validate", help="validate raw partitions (quarantine bad rows, gate batches)")
    p.add_argument("--date", required=True, help="first partition date YYYY-MM-DD")
    p.add_argument("--to", default=None, help="last partition date (inclusive)")
    p.add_argument("--report-id", default=None, help="folder under reports/validation/ (default: manual-<time>)")
    p.set_defaults(func=_cmd_validate)
