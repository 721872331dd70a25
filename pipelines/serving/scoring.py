"""Daily scoring: the champion model turns clean events up to the end of day D into ``predictions/dt=D/``.

The scoring DAG runs four steps, each one function here (``score_date`` runs them in-process):

1. :func:`resolve_champion` pins the exact version behind ``models:/<name>@champion``, so every
   shard of the day uses the same version even if someone moves the alias meanwhile.
2. :func:`plan_shards` checks the input exists, deletes the old partition (``_SUCCESS`` first, so
   readers stop trusting it at once) and returns one small dict per shard.
3. :func:`score_shard` (mapped, one task per shard) reads the clean events of the look-back window
   [D - lookback + 1, D], keeps the users whose stable hash falls into its shard, scores them in
   batches of ``scoring_batch_users`` and writes ``part-<shard>.parquet`` (a deterministic name, so a
   retried shard overwrites its own part and nothing else).
4. :func:`publish_partition` checks every part exists with the counts the shards reported, then
   writes the ``_SUCCESS`` manifest last.

The as-of rule: only events with ``ts`` before the end of day D are read (older partitions only,
and a filter on ``ts``), and the model gets ``as_of`` = end of D, so no event after D can change
the output.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import zlib
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.contracts import EVENT_SCHEMA, MODEL_INPUT_COLUMNS, PREDICTION_SCHEMA
from pipelines.data.events import MissingInputError, iter_clean_events
from pipelines.model.registry import CHAMPION, version_by_alias
from pipelines.platform import layout, storage, tracking
from pipelines.platform.dates import end_of_day, lookback_window, to_date
from pipelines.serving.interests import describe_user, params_from_settings, user_interests

log = logging.getLogger(__name__)


class NoChampionError(RuntimeError):
    """No model version carries the ``champion`` alias: nothing may score."""


class ScoringError(RuntimeError):
    """The model's output or the written partition breaks the contract; the message says how."""


def shard_of(user_id: str, shards: int) -> int:
    """The shard of a user: CRC-32 of its UTF-8 id modulo ``shards`` (stable across processes and runs)."""
    return zlib.crc32(user_id.encode("utf-8")) % shards


def resolve_champion(settings: Settings) -> dict[str, Any]:
    """The version behind ``<model_name>@champion``, pinned: {"model_name", "model_version",
    "model_uri" (``models:/<name>/<version>``), "run_id"}. Raises :class:`NoChampionError`."""
    version = version_by_alias(settings, CHAMPION)
    if version is None:
        raise NoChampionError(
            f"registered model {settings.model_name!r} has no version with alias {CHAMPION!r} on "
            f"{settings.mlflow_tracking_uri}: run the training DAG (interest_migration_training) so a "
            f"version that passes the gate becomes champion, or promote one by hand with "
            f"`python -m pipelines promote --version N`")
    resolved = {
        "model_name": settings.model_name,
        "model_version": str(version.version),
        "model_uri": f"models:/{settings.model_name}/{version.version}",
        "run_id": version.run_id,
    }
    log.info("champion of %s is version %s (%s)", settings.model_name, resolved["model_version"],
             resolved["model_uri"])
    return resolved


def plan_shards(settings: Settings, date: dt.date | str, model: dict[str, Any]) -> list[dict[str, Any]]:
    """Check the input, clear ``predictions/dt=D/`` (``_SUCCESS`` first) and return the shards.

    Raises :class:`MissingInputError` when there is no clean partition for D itself (scoring D
    without D's events would silently repeat the day before). Each shard dict holds shard, shards,
    as_of_date, key and model_version (JSON-able, for Airflow task mapping).
    """
    day = to_date(date)
    start, end = lookback_window(day, settings.lookback_days)
    clean = storage.list_partitions(settings, layout.CLEAN)
    if day not in clean:
        in_window = [d.isoformat() for d in clean if start <= d <= end]
        raise MissingInputError(
            f"no clean events for {day}: s3://{settings.bucket}/{layout.partition_prefix(layout.CLEAN, day)} "
            f"is empty (clean partitions in the look-back window [{start}, {end}]: {in_window or 'none'}); "
            f"land, validate and preprocess {day} first")
    prefix = layout.partition_prefix(layout.PREDICTIONS, day)
    # _SUCCESS goes first: from this moment no reader trusts the old partition.
    storage.delete_key(settings, layout.success_key(day))
    removed = storage.delete_prefix(settings, prefix)
    if removed:
        log.info("cleared %d old objects under s3://%s/%s", removed, settings.bucket, prefix)
    shards = settings.scoring_shards
    return [{"shard": i, "shards": shards, "as_of_date": day.isoformat(),
             "key": layout.prediction_part_key(day, i), "model_version": model["model_version"]}
            for i in range(shards)]


@lru_cache(maxsize=2)
def _load_model(settings: Settings, model_uri: str) -> Any:
    # Keyed on the settings and the pinned version: every shard and batch of a day reuses one load.
    log.info("loading %s from %s", model_uri, settings.mlflow_tracking_uri)
    return tracking.load_pyfunc(settings, model_uri)


def _read_shard_events(settings: Settings, day: dt.date, shard: int, shards: int) -> Any:
    """Clean events of the look-back window for the users of one shard, as one Arrow table."""
    schema = pa.schema([EVENT_SCHEMA.field(c) for c in MODEL_INPUT_COLUMNS])
    start, end = lookback_window(day, settings.lookback_days)
    known: dict[str, bool] = {}
    tables = []
    for table in iter_clean_events(settings, start, end, MODEL_INPUT_COLUMNS):
        table = table.select(MODEL_INPUT_COLUMNS).cast(schema)
        for user in pc.unique(table["user_id"]).to_pylist():
            if user not in known:
                known[user] = shard_of(user, shards) == shard
        mine = pa.array([u for u, keep in known.items() if keep], pa.string())
        tables.append(table.filter(pc.is_in(table["user_id"], value_set=mine)))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _naive_ts_wanted(predictor: Any) -> bool:
    """True when the model's input schema declares ``ts`` as an MLflow datetime column: MLflow's schema
    enforcement rejects timezone-aware values there, so such a model gets naive UTC timestamps."""
    schema = predictor.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return False
    return any(spec.name == "ts" and "datetime" in str(spec.type) for spec in schema.inputs)


def _check_model_output(frame: Any, users: list[str], model_uri: str) -> dict[str, tuple[list[str], list[float]]]:
    missing_cols = {"user_id", "categories", "scores"} - set(frame.columns)
    if missing_cols:
        raise ScoringError(f"{model_uri} returned columns {list(frame.columns)}; missing {sorted(missing_cols)}")
    out: dict[str, tuple[list[str], list[float]]] = {}
    for user, categories, scores in zip(frame["user_id"].astype(str), frame["categories"], frame["scores"],
                                        strict=True):
        categories = [str(c) for c in categories]
        scores = [float(s) for s in scores]
        if len(categories) != len(scores):
            raise ScoringError(f"{model_uri}: user {user!r} got {len(categories)} categories but "
                               f"{len(scores)} scores")
        out[user] = (categories, scores)
    absent = [u for u in users if u not in out]
    if absent:
        raise ScoringError(f"{model_uri} returned no row for {len(absent)} of {len(users)} users "
                           f"(e.g. {absent[:3]}); the scoring contract wants one row per input user")
    return out


def score_shard(settings: Settings, date: dt.date | str, model: dict[str, Any], shard: dict[str, Any]) -> dict[str, Any]:
    """Score the users of one shard for day D and write ``predictions/dt=D/part-<shard>.parquet``.

    ``model`` comes from :func:`resolve_champion`, ``shard`` from :func:`plan_shards`. Returns
    {"shard", "shards", "key", "rows", "model_version", "seconds", "read_seconds", "score_seconds",
    "write_seconds"}. An empty shard writes an empty
    part (so :func:`publish_partition` can check that every shard ran).
    """
    started = time.monotonic()
    day = to_date(date)
    number, shards = int(shard["shard"]), int(shard["shards"])
    key = shard.get("key") or layout.prediction_part_key(day, number)
    as_of = end_of_day(day)
    params = params_from_settings(settings)

    events = _read_shard_events(settings, day, number, shards)
    frame = events.to_pandas().sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    del events
    read_done = time.monotonic()
    user_column = frame["user_id"].to_numpy()
    users = sorted(set(user_column.tolist()))
    log.info("shard %d/%d of %s: %d users, %d events", number, shards, day, len(users), len(frame))
    predictor = _load_model(settings, model["model_uri"]) if users else None
    naive_ts = predictor is not None and _naive_ts_wanted(predictor)

    columns: dict[str, list[Any]] = {name: [] for name in PREDICTION_SCHEMA.names}
    batch_size = settings.scoring_batch_users
    for batch_no, lo in enumerate(range(0, len(users), batch_size), 1):
        batch_users = users[lo:lo + batch_size]
        first = int(np.searchsorted(user_column, batch_users[0], side="left"))
        last = int(np.searchsorted(user_column, batch_users[-1], side="right"))
        batch = frame.iloc[first:last]
        model_input = batch.assign(ts=batch["ts"].dt.tz_convert(None)) if naive_ts else batch
        output = predictor.predict(model_input, params={"as_of": as_of.isoformat(), "top_n": settings.scoring_top_n})
        predicted = _check_model_output(output, batch_users, model["model_uri"])
        interests = user_interests(batch, as_of, params.half_life_days)
        for user in batch_users:
            categories, scores = predicted[user]
            described = describe_user(interests.get(user), categories, scores, params)
            columns["user_id"].append(user)
            columns["predicted_categories"].append(categories[:settings.top_k])
            columns["predicted_scores"].append(scores[:settings.top_k])
            for name, value in described.items():
                columns[name].append(value)
        log.info("shard %d: batch %d scored %d users (%d/%d)", number, batch_no, len(batch_users),
                 lo + len(batch_users), len(users))
    rows = len(columns["user_id"])
    columns["as_of_date"] = [day] * rows
    columns["horizon_days"] = [settings.horizon_days] * rows
    columns["model_name"] = [model["model_name"]] * rows
    columns["model_version"] = [model["model_version"]] * rows
    table = pa.Table.from_pydict(columns, schema=PREDICTION_SCHEMA)
    score_done = time.monotonic()
    storage.write_parquet(settings, key, table)
    done = time.monotonic()
    log.info("shard %d/%d of %s: wrote %d rows to s3://%s/%s in %.1fs", number, shards, day, rows,
             settings.bucket, key, done - started)
    return {"shard": number, "shards": shards, "key": key, "rows": rows, "model_version": model["model_version"],
            "seconds": round(done - started, 3), "read_seconds": round(read_done - started, 3),
            "score_seconds": round(score_done - read_done, 3), "write_seconds": round(done - score_done, 3)}


def _part_rows_and_versions(settings: Settings, key: str) -> tuple[int, set[str], set[dt.date]]:
    table = storage.read_parquet(settings, key, columns=["model_version", "as_of_date"])
    return table.num_rows, set(table["model_version"].to_pylist()), set(table["as_of_date"].to_pylist())


def publish_partition(settings: Settings, date: dt.date | str, model: dict[str, Any],
                      shard_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Check the parts of ``predictions/dt=D/`` and write the ``_SUCCESS`` manifest last.

    Checks: one result per planned shard, each part present with the row count its shard
    reported, only ``model["model_version"]`` and D inside, and no other object under the prefix.
    Raises :class:`ScoringError` naming what is wrong (nothing is published then). Returns the
    manifest (model_name, model_version, model_uri, as_of_date, horizon_days, row_count, files,
    created_at, shards) plus "uri".
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
    present = storage.list_keys(settings, prefix)
    if layout.SUCCESS in {k.rsplit("/", 1)[-1] for k in present}:
        raise ScoringError(f"s3://{settings.bucket}/{prefix}{layout.SUCCESS} already exists: another run "
                           f"published {day} meanwhile; rerun the whole day")
    missing = sorted(set(expected_keys) - set(present))
    extra = sorted(set(present) - set(expected_keys))
    if missing or extra:
        raise ScoringError(f"s3://{settings.bucket}/{prefix} does not match the shard results: missing "
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
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
    }
    uri = storage.put_json(settings, layout.success_key(day), manifest)
    log.info("published %s: %d rows in %d parts from %s version %s", uri, total, len(expected_keys),
             model["model_name"], model["model_version"])
    return {**manifest, "uri": storage.uri(settings, prefix)}


def score_date(settings: Settings, date: dt.date | str) -> dict[str, Any]:
    """Resolve the champion, plan, score every shard and publish D, in this process; returns the manifest."""
    model = resolve_champion(settings)
    shards = plan_shards(settings, date, model)
    results = [score_shard(settings, date, model, shard) for shard in shards]
    return publish_partition(settings, date, model, results)
