"""Daily scoring: the champion model turns clean events up to the end of day D into ``predictions/dt=D/``.

The scoring DAG runs four steps, each one function here (``score_date`` runs them in-process):

1. :func:`resolve_champion` pins the exact version behind ``models:/<name>@champion``, so every
   shard of the day uses the same version even if someone moves the alias meanwhile.
2. :func:`plan_shards` checks the input exists, picks a new run id, reads the look-back window
   [D - lookback + 1, D] once and stages each shard's users' events (:mod:`pipelines.serving.shards`),
   and returns one small dict per shard. It deletes nothing: the published partition stays readable.
3. :func:`score_shard` (mapped, one task per shard) scores its staged users one bucket at a time
   (:mod:`pipelines.serving.engine`: this product's models on their fast core, any other pyfunc
   through its ``predict`` contract) and writes ``run=<run id>/part-<shard>.parquet`` (a name fixed
   by the plan, so a retried shard overwrites its own part and nothing else).
4. :func:`publish_partition` checks every part exists with the counts the shards reported, then
   switches readers to the run with ONE PUT of the ``_SUCCESS`` manifest, and only then removes
   older runs' parts and the day's staging files. A retry that finds its own manifest already in
   place succeeds (the asset event is still sent); a failing rerun leaves the old partition as it was.

The as-of rule: only events with ``ts`` before the end of day D are read (older partitions only,
and a filter on ``ts``), and the model gets ``as_of`` = end of D, so no event after D can change
the output.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import Settings
from pipelines.contracts import (
    EVENT_SCHEMA,
    MODEL_INPUT_COLUMNS,
    PREDICTION_CONTRACT_VERSION,
    PREDICTION_SCHEMA,
)
from pipelines.data.events import MissingInputError, iter_clean_events
from pipelines.data.fanout import map_io
from pipelines.model.core import load_numpy_core
from pipelines.model.inference import UnsupportedModel
from pipelines.model.registry import CHAMPION, verified_local_copy, version_by_alias, warm_local_copy
from pipelines.platform import layout, storage, tracking
from pipelines.platform.dates import end_of_day, lookback_window, to_date
from pipelines.serving import shards as staging
from pipelines.serving.engine import CoreScorer, PyfuncScorer, RowSpec, ScoringError
from pipelines.serving.interests import params_from_settings

__all__ = ["NoChampionError", "ScoringError", "load_scorer", "plan_shards", "publish_partition",
           "resolve_champion", "score_date", "score_shard", "shard_of"]

log = logging.getLogger(__name__)


class NoChampionError(RuntimeError):
    """No model version carries the ``champion`` alias: nothing may score."""


def shard_of(user_id: str, shards: int) -> int:
    """The shard of a user: CRC-32 of its UTF-8 id modulo ``shards`` (stable across processes and runs)."""
    return zlib.crc32(user_id.encode("utf-8")) % shards


def resolve_champion(settings: Settings) -> dict[str, Any]:
    """The version behind ``<model_name>@champion``, pinned: {"model_name", "model_version",
    "model_uri" (``models:/<name>/<version>``), "run_id"}. Raises :class:`NoChampionError`, or
    :class:`~pipelines.platform.tracking.TrackingUnavailable` when MLflow does not answer in time."""
    with tracking.reachable(settings, f"looking up {settings.model_name}@{CHAMPION}"):
        return _resolve_champion(settings)


def _resolve_champion(settings: Settings) -> dict[str, Any]:
    version = version_by_alias(settings, CHAMPION)
    if version is None:
        raise NoChampionError(
            f"registered model {settings.model_name!r} has no version with alias {CHAMPION!r} on "
            f"{settings.mlflow_tracking_uri}: run the training DAG (interest_migration_training) so a "
            f"version that passes the gate becomes champion, or promote one by hand with "
            f"`python -m pipelines promote --version N`")
    tags = tracking.client(settings).get_run(version.run_id).data.tags if version.run_id else {}
    resolved = {
        "model_name": settings.model_name,
        "model_version": str(version.version),
        "model_uri": f"models:/{settings.model_name}/{version.version}",
        "run_id": version.run_id,
        # The event days the version was trained on (tags of its training run), for the manifest.
        "training_window": {"start": tags.get(tracking.TAG_DATA_START) or None,
                            "end": tags.get(tracking.TAG_DATA_END) or None},
    }
    log.info("champion of %s is version %s (%s)", settings.model_name, resolved["model_version"],
             resolved["model_uri"])
    return resolved


def plan_shards(settings: Settings, date: dt.date | str, model: dict[str, Any]) -> list[dict[str, Any]]:
    """Check the input, pick a new run id and return the shards (the published partition is untouched).

    Raises :class:`MissingInputError` when there is no clean partition for D itself (scoring D
    without D's events would silently repeat the day before). Each shard dict holds shard, shards,
    as_of_date, run_id, key (``predictions/dt=D/run=<run id>/part-NNNNN.parquet``) and model_version
    (JSON-able, for Airflow task mapping).
    """
    day = to_date(date)
    start, end = lookback_window(day, settings.lookback_days)
    warming = _warm_model_copy(settings, model)  # the download overlaps the checks and the staging
    try:
        clean = storage.list_partitions(settings, layout.CLEAN)
        if day not in clean:
            _refuse_a_day_without_events(settings, day, start, end, clean)
        days = staging.list_clean_days(settings, [d for d in clean if start <= d <= end])
        _check_window_is_clean(settings, day, start, end, days)
        leak = training_window_warning(day, model)
        if leak:
            log.warning(leak)
        run_id = new_run_id()
        shards = settings.scoring_shards
        staged = staging.stage_inputs(settings, day, shards, days=days)
    finally:
        if warming is not None:
            warming.join()
    log.info("scoring run %s of %s: parts go to s3://%s/%s", run_id, day, settings.bucket,
             layout.prediction_run_prefix(day, run_id))
    return [{"shard": i, "shards": shards, "as_of_date": day.isoformat(), "run_id": run_id,
             "key": layout.prediction_run_part_key(day, run_id, i), "model_version": model["model_version"],
             "input_keys": staged["keys"][i], "buckets": staged["buckets"], "input_rows": staged["rows"][i]}
            for i in range(shards)]


def _own_version(settings: Settings, model_uri: str) -> str | None:
    """The version number of ``models:/<model_name>/<N>`` (this product's registered model), else None."""
    name, _, version = model_uri.removeprefix("models:/").partition("/")
    return version if name == settings.model_name and version.isdigit() else None


def _warm_model_copy(settings: Settings, model: dict[str, Any]) -> threading.Thread | None:
    """Fetch the pinned version's checked local copy in a thread while the plan checks and reads the window
    (the download and the staging overlap; the shards on this machine then load in 0.1 s). A failure
    here is only logged: each shard fetches the copy itself and reports any error."""
    version = _own_version(settings, str(model.get("model_uri", "")))
    if version is None:
        return None

    def warm() -> None:
        started = time.monotonic()
        try:
            if warm_local_copy(settings, version, settings.work_dir / "models") is not None:
                log.info("%s: checked local copy ready in %.1fs", model["model_uri"], time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - the shards fetch it again and fail with the cause
            log.warning("could not fetch %s ahead of the shards (%s); each shard fetches it itself",
                        model["model_uri"], exc)

    thread = threading.Thread(target=warm, name="model-copy", daemon=True)
    thread.start()
    return thread


def _refuse_a_day_without_events(settings: Settings, day: dt.date, start: dt.date, end: dt.date,
                                 clean: list[dt.date]) -> None:
    """Raise :class:`MissingInputError` for a day D with no clean partition, unless
    ``IM_SCORE_QUIET_DAYS`` says such days are real (nothing landed for D, and the look-back window
    holds clean events): then log that D is scored from its look-back alone."""
    in_window = [d.isoformat() for d in clean if start <= d <= end]
    landed = day in storage.list_partitions(settings, layout.RAW)
    if settings.score_quiet_days and in_window and not landed:
        log.warning("no events for %s (IM_SCORE_QUIET_DAYS): scoring it from the look-back window [%s, %s] alone",
                    day, start, end)
        return
    quiet = "" if landed or not in_window else (
        f"; if the log truly has no events on {day} (a quiet day of a sparse log), IM_SCORE_QUIET_DAYS=1 scores it "
        "from the look-back window alone")
    raise MissingInputError(
        f"no clean events for {day}: s3://{settings.bucket}/{layout.partition_prefix(layout.CLEAN, day)} "
        f"is empty (clean partitions in the look-back window [{start}, {end}]: {in_window or 'none'}); "
        f"{'validate and preprocess' if landed else 'land, validate and preprocess'} {day} first{quiet}")


def _check_window_is_clean(settings: Settings, day: dt.date, start: dt.date, end: dt.date,
                           clean: list[staging.CleanDay]) -> None:
    """Raise :class:`MissingInputError` when a look-back day has raw events but no clean partition
    (unless its preprocess report says it cleaned to zero rows): scoring would silently drop that day.
    ``clean``: the window's clean partitions as listed (:func:`pipelines.serving.shards.list_clean_days`)."""
    raw_days = [d for d in storage.list_partitions(settings, layout.RAW) if start <= d <= end]
    # (a listed folder can be empty: an object store may keep the folder of deleted keys)
    cleaned = {c.date for c in clean if c.keys}

    def is_missing(d: dt.date) -> bool:
        if d in cleaned:
            return False
        report = layout.preprocess_report_key(d)
        return not (storage.exists(settings, report) and int(storage.get_json(settings, report).get("clean", -1)) == 0)

    missing = [d.isoformat() for d, gone in zip(raw_days, map_io(is_missing, raw_days), strict=True) if gone]
    if missing:
        raise MissingInputError(
            f"look-back day(s) {', '.join(missing)} of {day} have raw events under s3://{settings.bucket}/"
            f"{layout.area_prefix(layout.RAW)} but no clean partition: scoring would silently leave them out; "
            f"validate and preprocess them first (`python -m pipelines preprocess --date {missing[0]}`)")


def training_window_warning(day: dt.date, model: dict[str, Any]) -> str | None:
    """A warning when ``day`` lies inside the model's training window (a backfill of a past day): the
    model was fitted on events after ``day``, so its predictions there look better than they can be.
    The manifest records the window (``training_window``) either way."""
    end = (model.get("training_window") or {}).get("end")
    if not end or day >= dt.date.fromisoformat(str(end)[:10]):
        return None
    return (f"scoring {day} with {model.get('model_name')} version {model.get('model_version')}, which was trained "
            f"on events up to {str(end)[:10]}: it has seen what users did after {day}; do not judge the model "
            f"on this day (the manifest's training_window says so too)")


def new_run_id() -> str:
    """A scoring run's id: UTC time to the microsecond (sortable: a run started later sorts later,
    even within one second) and 6 random hex digits, e.g. ``20240103T101500123456Z-3fa2c1``."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"


@lru_cache(maxsize=2)
def load_scorer(settings: Settings, model_uri: str) -> CoreScorer | PyfuncScorer:
    """The scorer of a pinned version, loaded once per process (every shard and bucket of a day
    reuses it): this product's models on their fast core (in numpy without TensorFlow when
    ``scoring_runtime`` is numpy and the architecture allows, else the Keras model), any other
    pyfunc through ``predict``."""
    log.info("loading %s from %s", model_uri, settings.mlflow_tracking_uri)
    version = _own_version(settings, model_uri)
    if version is not None:
        # What is checked against the SHA-256 recorded at registration is what is loaded. MLflow's own
        # environment check scans every installed package (a second per load): the model's pins are
        # compared here instead.
        folder = verified_local_copy(settings, version, settings.work_dir / "models")
        for mismatch in tracking.requirement_mismatches(folder):
            log.warning("%s: %s; scoring goes on, but results may differ from the training environment's",
                        model_uri, mismatch)
        if settings.scoring_runtime == "numpy":
            try:
                core = load_numpy_core(folder)
            except UnsupportedModel as exc:
                log.info("%s: scoring with the Keras model (%s)", model_uri, exc)
            else:
                log.info("%s: scoring with the numpy runtime (%d categories)", model_uri, core.vocab.n_categories)
                return CoreScorer(core)
        predictor = tracking.load_pyfunc(settings, str(folder), environment_warnings=False)
    else:
        predictor = tracking.load_pyfunc(settings, model_uri)
    try:
        python_model = predictor.unwrap_python_model()
    except Exception:  # noqa: BLE001 - not a python_model pyfunc (another flavour): the public contract
        python_model = None
    if callable(getattr(python_model, "core", None)):
        return CoreScorer(python_model.core())
    return PyfuncScorer(predictor, model_uri, naive_ts=_naive_ts_wanted(predictor))


def _naive_ts_wanted(predictor: Any) -> bool:
    """True when the model's input schema declares ``ts`` as an MLflow datetime column: MLflow's schema
    enforcement rejects timezone-aware values there, so such a model gets naive UTC timestamps."""
    schema = predictor.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return False
    return any(spec.name == "ts" and "datetime" in str(spec.type) for spec in schema.inputs)


def _shard_events(settings: Settings, day: dt.date, shard: dict[str, Any], workdir: Path) -> Iterator[pa.Table]:
    """The shard's users' look-back events, one bucket at a time: from the staging file that
    :func:`plan_shards` wrote, or (a shard spec without one) by hashing the window's users."""
    if "input_keys" in shard:
        for key in shard["input_keys"]:
            local = workdir / "bucket.arrow"
            storage.download_file(settings, key, local)
            events = staging.read_bucket(local)
            local.unlink()
            yield events
        return
    schema = pa.schema([EVENT_SCHEMA.field(c) for c in MODEL_INPUT_COLUMNS])
    start, end = lookback_window(day, settings.lookback_days)
    number, shards = int(shard["shard"]), int(shard["shards"])
    tables = []
    for table in iter_clean_events(settings, start, end, MODEL_INPUT_COLUMNS):
        table = table.select(MODEL_INPUT_COLUMNS).cast(schema)
        mine = (staging.user_hashes(table["user_id"]) % shards) == number
        tables.append(table.filter(pa.array(mine)))
    if tables:
        yield pa.concat_tables(tables)


def score_shard(settings: Settings, date: dt.date | str, model: dict[str, Any], shard: dict[str, Any]) -> dict[str, Any]:
    """Score the users of one shard for day D and write ``predictions/dt=D/part-<shard>.parquet``.

    ``model`` comes from :func:`resolve_champion`, ``shard`` from :func:`plan_shards`. Returns
    {"shard", "shards", "key", "rows", "model_version", "seconds", "read_seconds", "score_seconds",
    "write_seconds"}. An empty shard writes an empty part (so :func:`publish_partition` can check
    that every shard ran).
    """
    started = time.monotonic()
    day = to_date(date)
    number, shards = int(shard["shard"]), int(shard["shards"])
    key = shard.get("key") or layout.prediction_part_key(day, number)
    spec = RowSpec(as_of=end_of_day(day), as_of_date=day, horizon_days=settings.horizon_days,
                   model_name=model["model_name"], model_version=model["model_version"],
                   params=params_from_settings(settings), top_k=settings.top_k, top_n=settings.scoring_top_n,
                   batch_users=settings.scoring_batch_users)
    seconds = {"read": 0.0, "score": 0.0, "write": 0.0}
    rows = 0
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
        part = Path(tmp) / "part.parquet"
        with pq.ParquetWriter(part, PREDICTION_SCHEMA, compression="zstd") as writer:
            buckets = _shard_events(settings, day, shard, Path(tmp))
            while True:
                t0 = time.monotonic()
                events = next(buckets, None)
                seconds["read"] += time.monotonic() - t0
                if events is None:
                    break
                if events.num_rows == 0:
                    continue
                t0, writing = time.monotonic(), 0.0
                for table in load_scorer(settings, model["model_uri"]).score(events, spec):
                    t1 = time.monotonic()
                    writer.write_table(table)
                    rows += table.num_rows
                    writing += time.monotonic() - t1
                seconds["score"] += time.monotonic() - t0 - writing
                seconds["write"] += writing
                log.info("shard %d/%d of %s: %d users scored so far", number, shards, day, rows)
        t0 = time.monotonic()
        storage.upload_file(settings, part, key)
        seconds["write"] += time.monotonic() - t0
    done = time.monotonic()
    log.info("shard %d/%d of %s: wrote %d rows to s3://%s/%s in %.1fs", number, shards, day, rows,
             settings.bucket, key, done - started)
    return {"shard": number, "shards": shards, "key": key, "run_id": shard.get("run_id"), "rows": rows,
            "model_version": model["model_version"],
            "seconds": round(done - started, 3), "read_seconds": round(seconds["read"], 3),
            "score_seconds": round(seconds["score"], 3), "write_seconds": round(seconds["write"], 3)}


def _part_rows_and_versions(settings: Settings, key: str) -> tuple[int, set[str], set[dt.date]]:
    table = storage.read_parquet(settings, key, columns=["model_version", "as_of_date"])
    return table.num_rows, set(table["model_version"].to_pylist()), set(table["as_of_date"].to_pylist())


def publish_partition(settings: Settings, date: dt.date | str, model: dict[str, Any],
                      shard_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Check the parts of one scoring run of D, switch ``predictions/dt=D/_SUCCESS`` to them with one
    PUT, then remove older runs' parts.

    Checks: one result per planned shard, each part present with the row count its shard
    reported, only ``model["model_version"]`` and D inside, and nothing else in the run's folder.
    Raises :class:`ScoringError` naming what is wrong (the published manifest is left as it was).
    A manifest already listing exactly these parts (a retry after the PUT) counts as success.
    Returns the manifest (model_name, model_version, model_uri, as_of_date, horizon_days, row_count,
    files, shards, run_id, created_at, schema_version, training_window) plus "uri".
    """
    day = to_date(date)
    prefix = layout.partition_prefix(layout.PREDICTIONS, day)
    if not shard_results:
        raise ScoringError(f"no shard results for {day}: nothing to publish at s3://{settings.bucket}/{prefix}")
    shards = int(shard_results[0]["shards"])
    numbers = sorted(int(r["shard"]) for r in shard_results)
    if numbers != list(range(shards)):
        raise ScoringError(f"shard results for {day} cover shards {numbers}, expected 0..{shards - 1}")
    expected_keys = sorted(r["key"] for r in shard_results)
    run_ids = {r.get("run_id") for r in shard_results}
    run_id = run_ids.pop() if len(run_ids) == 1 else None
    if run_ids:
        raise ScoringError(f"shard results for {day} come from different scoring runs: {sorted(map(str, run_ids))}")
    current = _current_manifest(settings, day)
    if current is not None and sorted(current.get("files") or []) == expected_keys \
            and str(current.get("model_version")) == str(model["model_version"]):
        log.info("%s already lists these %d parts (a retry after the switch): published", layout.success_key(day),
                 len(expected_keys))
        _remove_superseded(settings, day, current)
        return {**current, "uri": storage.uri(settings, prefix)}
    present = set(storage.list_keys(settings, prefix))
    missing = sorted(set(expected_keys) - present)
    run_folder = layout.prediction_run_prefix(day, run_id) if run_id else None
    extra = sorted(k for k in present - set(expected_keys) if run_folder and k.startswith(run_folder))
    if missing or extra:
        raise ScoringError(f"s3://{settings.bucket}/{run_folder or prefix} does not match the shard results: missing "
                           f"{missing or 'none'}, unexpected {extra or 'none'}")
    total = 0
    for result in shard_results:
        rows, versions, dates = _part_rows_and_versions(settings, result["key"])
        if rows != int(result["rows"]):
            raise ScoringError(f"{result['key']} holds {rows} rows but shard {result['shard']} reported {result['rows']}")
        if rows and (versions != {model["model_version"]} or dates != {day}):
            raise ScoringError(f"{result['key']} holds model versions {sorted(versions)} and dates "
                               f"{sorted(map(str, dates))}; expected only version {model['model_version']} on {day}")
        total += rows
    manifest = {
        "model_name": model["model_name"],
        "model_version": model["model_version"],
        "model_uri": model["model_uri"],
        "as_of_date": day.isoformat(),
        "horizon_days": settings.horizon_days,
        "row_count": total,
        "files": expected_keys,
        "shards": shards,
        "run_id": run_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "schema_version": PREDICTION_CONTRACT_VERSION,
        "training_window": model.get("training_window") or {"start": None, "end": None},
    }
    uri = storage.put_json(settings, layout.success_key(day), manifest)  # the switch: one PUT
    _remove_superseded(settings, day, manifest)
    log.info("published %s: %d rows in %d parts of run %s from %s version %s", uri, total, len(expected_keys),
             run_id, model["model_name"], model["model_version"])
    return {**manifest, "uri": storage.uri(settings, prefix)}


def _current_manifest(settings: Settings, day: dt.date) -> dict[str, Any] | None:
    key = layout.success_key(day)
    return dict(storage.get_json(settings, key)) if storage.exists(settings, key) else None


def _remove_superseded(settings: Settings, day: dt.date, manifest: dict[str, Any]) -> None:
    """After the switch: remove the parts of older runs (and of the pre-run layout) and D's staging
    files. Parts of a run started after this one (its run id sorts later) are left alone, and
    nothing is removed when the manifest no longer is this one (another run switched meanwhile).
    A failure here only leaves garbage (logged): the partition is published."""
    try:
        if _current_manifest(settings, day) != {k: v for k, v in manifest.items() if k != "uri"}:
            log.warning("the manifest of %s changed after this run switched it: old runs left in place", day)
            return
        keep = set(manifest["files"]) | {layout.success_key(day)}
        mine = str(manifest.get("run_id") or "")
        marker = "/" + layout.PREDICTION_RUN.split("{", 1)[0]
        stale = [k for k in storage.list_keys(settings, layout.partition_prefix(layout.PREDICTIONS, day))
                 if k not in keep and (marker not in k or k.split(marker, 1)[1].split("/", 1)[0] < mine)]
        if stale:
            storage.delete_keys(settings, stale)
            log.info("removed %d parts of superseded runs of %s", len(stale), day)
        staging.clear_staging(settings, day)
    except storage.StorageError as exc:  # published; the next publish of D removes them
        log.warning("could not remove superseded parts or staging files of %s: %s", day, exc)


def score_date(settings: Settings, date: dt.date | str) -> dict[str, Any]:
    """Resolve the champion, plan, score every shard and publish D, in this process; returns the manifest."""
    model = resolve_champion(settings)
    shards = plan_shards(settings, date, model)
    results = [score_shard(settings, date, model, shard) for shard in shards]
    return publish_partition(settings, date, model, results)
