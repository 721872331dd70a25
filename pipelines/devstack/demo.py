"""The ``make run`` demo (``python -m pipelines stack run``): the whole product once, on the stack.

:func:`run_demo` brings the stack up, generates the default data set (synthetic Taobao-format
logs with planted interest shifts), lands it, triggers the training DAG and waits, backfills the
scoring DAG over the last days of the data and waits, then prints a summary: runs and states,
model versions and aliases, prediction partitions, URLs. It is idempotent: a second call reuses
the data and the successful training run and re-scores the same days (partitions replaced).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from pipelines.config import Settings, env_name, load_settings
from pipelines.data import synthetic
from pipelines.data.landing import land_events
from pipelines.devstack.airflow_api import (
    AirflowApi,
    ApiError,
    create_backfill,
    ensure_unpaused,
    report_failures,
    run_path,
    wait_backfill,
    wait_for_runs,
)
from pipelines.devstack.config import Printer, StackConfig, StackError
from pipelines.devstack.credentials import ensure_secrets
from pipelines.devstack.environment import package_environment, stack_environment
from pipelines.devstack.lifecycle import summary_lines, up
from pipelines.devstack.services import ServiceError
from pipelines.model import registry
from pipelines.platform import layout, storage, tracking
from pipelines.serving.predictions import PredictionsNotFound, read_manifest

log = logging.getLogger(__name__)

TRAINING_DAG = "interest_migration_training"
SCORING_DAG = "interest_migration_scoring"
DEMO_START = dt.date(2017, 11, 1)  # the demo data sits where Taobao's does

# What ends a demo with a one-line message instead of a traceback: the stack, a service, storage
# or the registry failed (each message says what and where).
DEMO_FAILURES: tuple[type[Exception], ...] = (StackError, ServiceError, storage.StorageError, MlflowException,
                                              registry.RegistryError)


@dataclasses.dataclass(frozen=True)
class DemoData:
    """The default data set: synthetic Taobao-format logs generated once into ``<root>/data``."""

    events_path: Path
    params: dict[str, Any]
    fingerprint: str


def ensure_demo_data(cfg: StackConfig, *, users: int, days: int, categories: int, seed: int,
                     start: dt.date = DEMO_START) -> DemoData:
    """Generate the synthetic data set unless the same parameters already produced it (same seed,
    same data: a second `make run` reuses the files)."""
    params = {"users": users, "days": days, "categories": categories, "seed": seed, "start": start.isoformat()}
    fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    out_dir = cfg.root / "data" / f"synthetic-{fingerprint}"
    done = out_dir / "params.json"
    if done.exists():
        saved = json.loads(done.read_text())
        log.info("reusing synthetic data in %s", out_dir)
        return DemoData(Path(saved["events_path"]), params, fingerprint)
    log.info("generating synthetic Taobao-format data (%s) into %s", params, out_dir)
    data = synthetic.generate_taobao(out_dir, users=users, days=days, categories=categories, start=start,
                                     seed=seed)
    # The truth file (planted shifts) is recorded for a person who wants to compare; the demo does not read it.
    done.write_text(json.dumps({**params, "events_path": str(data.events_path),
                                "truth_path": str(data.truth_path)}, indent=2) + "\n")
    return DemoData(Path(data.events_path), params, fingerprint)


def run_training(api: AirflowApi, start: dt.date, end: dt.date, fingerprint: str, *,
                 retrain: bool, timeout: float, out: Printer = print) -> tuple[str, str]:
    """Trigger (or reuse) the training run for the window [start, end]; returns (run id, state).

    The run id is fixed per data window and data set, so a second `make run` finds the successful
    run and does not train again (unless ``retrain``); a failed run is cleared and resumed."""
    ensure_unpaused(api, TRAINING_DAG)
    run_id = f"stackrun__{start.isoformat()}_{end.isoformat()}__{fingerprint}"
    try:
        existing = api.get(run_path(TRAINING_DAG, run_id))
    except ApiError as exc:
        if exc.code != 404:
            raise
        existing = None
    conf = {"data_start": start.isoformat(), "data_end": end.isoformat()}
    if existing and existing["state"] == "success" and retrain:
        run_id = f"{run_id}__retrain_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
        existing = None
    if existing is None:
        out(f"training: triggering {TRAINING_DAG} run {run_id} on {start}..{end}")
        api.call("POST", f"/dags/{TRAINING_DAG}/dagRuns",
                 body={"dag_run_id": run_id, "logical_date": None, "conf": conf,
                       "note": "started by `python -m pipelines stack run`"})
    elif existing["state"] == "success":
        out(f"training: run {run_id} already succeeded for this window; reusing it (--retrain trains again)")
        return run_id, "success"
    elif existing["state"] == "failed":
        out(f"training: run {run_id} failed before; clearing its failed tasks to resume it")
        api.call("POST", f"{run_path(TRAINING_DAG, run_id)}/clear", body={"dry_run": False, "only_failed": True})
    else:
        out(f"training: run {run_id} is {existing['state']}; waiting for it")
    state = wait_for_runs(api, TRAINING_DAG, [run_id], timeout=timeout, out=out)[run_id]
    return run_id, state


def run_scoring_backfill(api: AirflowApi, first: dt.date, last: dt.date, *, timeout: float,
                         out: Printer = print, as_of: dict[str, str] | None = None) -> dict[str, str]:
    """Backfill the scoring DAG over [first, last] (re-scoring days that were scored before: their
    runs are cleared and rerun, their partitions replaced). Returns run id -> final state; fills
    ``as_of`` with run id -> the day D it scored (run ids carry the run's trigger time, D + 1)."""
    ensure_unpaused(api, SCORING_DAG)
    for backfill in api.get("/backfills", dag_id=SCORING_DAG, limit=100).get("backfills", []):
        if backfill.get("completed_at") is None:
            out(f"scoring: backfill {backfill['id']} is still running; waiting for it first")
            wait_backfill(api, int(backfill["id"]), timeout)
    body = {"dag_id": SCORING_DAG, "from_date": f"{first.isoformat()}T00:00:00Z",
            "to_date": f"{last.isoformat()}T00:00:00Z", "reprocess_behavior": "completed",
            "max_active_runs": 1, "run_backwards": False, "dag_run_conf": {}}
    out(f"scoring: backfilling {SCORING_DAG} for {first}..{last}")
    backfill = create_backfill(api, body)
    runs = api.get(f"/dags/{SCORING_DAG}/dagRuns", logical_date_gte=body["from_date"],
                   logical_date_lte=body["to_date"], order_by="logical_date", limit=100)
    run_ids = [r["dag_run_id"] for r in runs.get("dag_runs", [])]
    as_of = {} if as_of is None else as_of
    as_of.update({r["dag_run_id"]: (r.get("logical_date") or "")[:10] for r in runs.get("dag_runs", [])})
    out("scoring: runs " + ", ".join(f"{rid} (as of {as_of[rid]})" for rid in run_ids))
    expected = (last - first).days + 1
    if len(run_ids) != expected:
        raise StackError(f"backfill {backfill['id']} made {len(run_ids)} scoring runs for {expected} days "
                         f"({first}..{last}): {run_ids}")
    states = wait_for_runs(api, SCORING_DAG, run_ids, timeout=timeout, out=out)
    wait_backfill(api, int(backfill["id"]), 120)
    return states


def champion_version(settings: Settings) -> str | None:
    """The version the ``champion`` alias points at, or None when there is none (a registry that
    cannot be reached raises)."""
    version = registry.version_by_alias(settings, registry.CHAMPION)
    return None if version is None else str(version.version)


def _gate_reason(api: AirflowApi, run_id: str) -> str:
    """The registry step's decision for ``run_id`` (its XCom), as text; best effort."""
    path = f"{run_path(TRAINING_DAG, run_id)}/taskInstances/register/xcomEntries/return_value"
    try:
        value = api.get(path).get("value")
    except StackError as exc:
        return f"(decision not readable: {exc})"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, dict):
        return f"{value.get('decision', '?')}: {value.get('reason', value)}"
    return str(value)


def _model_lines(settings: Settings) -> list[str]:
    """The registered model's versions with their aliases and runs."""
    client = tracking.client(settings)
    try:
        model = client.get_registered_model(settings.model_name)
        versions = sorted(client.search_model_versions(f"name='{settings.model_name}'"),
                          key=lambda v: int(v.version))
    except MlflowException as exc:  # the summary reports what it cannot read
        return [f"  registered model {settings.model_name}: not readable ({exc})"]
    by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    lines = [f"  registered model {settings.model_name}:"]
    for v in versions:
        aliases = ", ".join(sorted(by_version.get(str(v.version), []))) or "-"
        lines.append(f"    version {v.version:<4} aliases: {aliases:<22} run {v.run_id}")
    return lines


def _partition_lines(settings: Settings) -> list[str]:
    """Every prediction partition with its row count and model version (from its manifest)."""
    lines = ["  prediction partitions (with _SUCCESS):"]
    for date in storage.list_partitions(settings, layout.PREDICTIONS):
        prefix = layout.partition_prefix(layout.PREDICTIONS, date)
        try:
            manifest = read_manifest(settings, date)
        except PredictionsNotFound:
            lines.append(f"    {prefix}  (no _SUCCESS: incomplete)")
            continue
        lines.append(f"    {storage.uri(settings, prefix)}  {manifest.get('row_count')} rows  "
                     f"model version {manifest.get('model_version')}")
    return lines


def demo_summary(cfg: StackConfig, settings: Settings, runs: Mapping[str, Mapping[str, str]]) -> str:
    """DAG runs and states, model versions and aliases, prediction partitions and their row counts,
    the URLs and where the credentials are."""
    lines = ["", "Summary", "  DAG runs:"]
    for dag_id, states in runs.items():
        for run_id, state in states.items():
            lines.append(f"    {dag_id:<30} {run_id:<60} {state}")
    lines += _model_lines(settings)
    lines += _partition_lines(settings)
    lines.append(summary_lines(cfg, None).replace("Stack:", "Explore (the stack stays up; `make down` stops it):"))
    return "\n".join(lines)


def _promote_for_demo(settings: Settings, out: Printer) -> str:
    """No champion exists and the gate refused the only candidate: for the demo, do what a reviewer
    can do in the MLflow UI or with `python -m pipelines promote`, and say so on the version."""
    challenger = registry.version_by_alias(settings, registry.CHALLENGER)
    if challenger is None:
        raise StackError(f"{settings.model_name} has neither a champion nor a challenger version")
    version = str(challenger.version)
    registry.promote_version(settings, version, reason="make run demo: no champion yet and the gate refused "
                             "the first version; promoted by hand so the scoring backfill can be shown")
    out(f"training: demo only: promoted version {version} to champion BY HAND (the manual path a reviewer "
        f"has: python -m pipelines promote --version {version}); the gate's refusal stays on the version. "
        f"`make run` with {env_name('stack_strict_gate')}=1 stops here instead.")
    return version


def run_demo(cfg: StackConfig, *, retrain: bool = False, score_days: int = 3, users: int = 800, days: int = 21,
             categories: int = 40, seed: int = 7, timeout: float = 3600, strict_gate: bool = False,
             out: Printer = print) -> bool:
    """The `make run` job: bring the stack up, generate and land the default data, train, backfill
    scoring over the last ``score_days`` days, print the summary. Idempotent: a second call reuses
    the data and the successful training run and re-scores the same days (partitions replaced).
    When there is no champion and the gate refused the new version, the demo promotes it by hand
    (labelled as such) unless ``strict_gate``. Returns False (after printing the failed task and
    its log tail) when a run failed."""
    if score_days < 1 or score_days > days:
        raise StackError(f"--score-days {score_days} must be between 1 and --days {days}")
    up(cfg, out=out)
    secret, _ = ensure_secrets(cfg)
    env = stack_environment(cfg, secret)
    settings = load_settings(environ=env)
    # boto3 and MLflow in this process take their credentials and S3 endpoint from the environment;
    # the settings above already point at the stack.
    os.environ.update({k: v for k, v in package_environment(cfg, secret).items() if not k.startswith("IM_")})

    data = ensure_demo_data(cfg, users=users, days=days, categories=categories, seed=seed)
    out(f"data: landing {data.events_path} (Taobao format) into {storage.uri(settings, layout.area_prefix(layout.RAW))}")
    landed = land_events(settings, data.events_path, "taobao", name="synthetic")
    if not landed.dates:
        raise StackError(f"landing {data.events_path} produced no partitions")
    start, end = min(landed.dates), max(landed.dates)
    out(f"data: {landed.rows} rows in {len(landed.dates)} daily partitions {start}..{end} "
        f"({landed.quarantined} quarantined)")

    api = AirflowApi(cfg)
    runs: dict[str, dict[str, str]] = {}
    run_id, state = run_training(api, start, end, data.fingerprint, retrain=retrain, timeout=timeout, out=out)
    runs[TRAINING_DAG] = {run_id: state}
    if state != "success":
        report_failures(cfg, api, TRAINING_DAG, run_id, out)
        out(demo_summary(cfg, settings, runs))
        return False
    champion = champion_version(settings)
    if champion is None:
        out(f"training: the gate did not promote the new version; it said: {_gate_reason(api, run_id)}")
        if strict_gate:
            out(f"training: no version of {settings.model_name} has the champion alias, so there is nothing "
                f"to score with (--strict-gate)")
            out(demo_summary(cfg, settings, runs))
            return False
        champion = _promote_for_demo(settings, out)
    out(f"training: champion is {settings.model_name} version {champion}")
    first = end - dt.timedelta(days=score_days - 1)
    as_of: dict[str, str] = {}
    states = run_scoring_backfill(api, first, end, timeout=timeout, out=out, as_of=as_of)
    runs[SCORING_DAG] = {f"{r} (as of {as_of.get(r, '?')})": state for r, state in states.items()}
    failed = [r for r, s in states.items() if s != "success"]
    for run in failed:
        report_failures(cfg, api, SCORING_DAG, run, out)
    out(demo_summary(cfg, settings, runs))
    return not failed
