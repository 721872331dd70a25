"""The ``make run`` demo (``python -m pipelines stack run``): the whole product once, on the stack.

:func:`run_demo` brings the stack up, generates the default data set (synthetic Taobao-format
logs with planted interest shifts), lands it, triggers the training DAG and waits, backfills the
scoring DAG over the last days of the data and waits, then prints a summary: runs and states,
what landing quarantined and what validation found, the gate's decision, model versions and
aliases, prediction partitions, URLs. The data is :func:`pipelines.data.migrations.generate_migrations`
with its noise (malformed rows, duplicates, a crawler, and a late file landed after the rest under
its own name): migrations a model can see coming, so the model earns its promotion at the gate. It is idempotent: a second call reuses
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
from pipelines.data.landing import land_events
from pipelines.data.migrations import generate_migrations
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
# The demo's data set (generate_migrations sizes; `make run` stays about 5 minutes from a warm venv)
# and the IM_* settings it trains with (a value in the caller's environment wins).
DEMO_DATA: dict[str, int] = {"users": 2000, "days": 21, "categories": 40, "seed": 7}
DEMO_SETTINGS: dict[str, str] = {"IM_GATE_METRIC": "published_ndcg_at_5"}

# What ends a demo with a one-line message instead of a traceback: the stack, a service, storage
# or the registry failed (each message says what and where).
DEMO_FAILURES: tuple[type[Exception], ...] = (StackError, ServiceError, storage.StorageError, MlflowException,
                                              registry.RegistryError)


@dataclasses.dataclass(frozen=True)
class DemoData:
    """The default data set: synthetic Taobao-format logs generated once into ``<root>/data``
    (``late_path``: the part of the last day that arrives after the rest)."""

    events_path: Path
    params: dict[str, Any]
    fingerprint: str
    late_path: Path | None = None


def ensure_demo_data(cfg: StackConfig, *, users: int, days: int, categories: int, seed: int,
                     start: dt.date = DEMO_START) -> DemoData:
    """Generate the synthetic data set unless the same parameters already produced it (same seed,
    same data: a second `make run` reuses the files)."""
    params = {"generator": "migrations", "noise": True, "users": users, "days": days, "categories": categories,
              "seed": seed, "start": start.isoformat()}
    fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    out_dir = cfg.root / "data" / f"synthetic-{fingerprint}"
    done = out_dir / "params.json"
    if done.exists():
        saved = json.loads(done.read_text())
        log.info("reusing synthetic data in %s", out_dir)
        late = saved.get("late_path")
        return DemoData(Path(saved["events_path"]), params, fingerprint, Path(late) if late else None)
    log.info("generating synthetic Taobao-format data with planted migrations (%s) into %s", params, out_dir)
    data = generate_migrations(out_dir, users=users, days=days, categories=categories, start=start, seed=seed,
                               noise=True)
    # The truth file (planted migrations, noise counts) is for a person (and tests/test_demo_migrations.py)
    # who wants to compare; the demo does not read it.
    done.write_text(json.dumps({**params, "events_path": str(data.events_path),
                                "late_path": str(data.late_path) if data.late_path else None,
                                "truth_path": str(data.truth_path)}, indent=2) + "\n")
    return DemoData(Path(data.events_path), params, fingerprint, data.late_path)


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


def _xcom(api: AirflowApi, run_id: str, task_id: str) -> Any:
    """The return value of a training task of ``run_id`` (its XCom), decoded; raises StackError."""
    path = f"{run_path(TRAINING_DAG, run_id)}/taskInstances/{task_id}/xcomEntries/return_value"
    value = api.get(path).get("value")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return value


def _gate_reason(api: AirflowApi, run_id: str) -> str:
    """The registry step's decision for ``run_id`` (its XCom), as text; best effort."""
    try:
        value = _xcom(api, run_id, "register")
    except StackError as exc:
        return f"(decision not readable: {exc})"
    if isinstance(value, dict):
        return f"{value.get('decision', '?')}: {value.get('reason', value)}"
    return str(value)


def _task_value(api: AirflowApi, run_id: str, task_id: str) -> str:
    """What the validate / preprocess task of ``run_id`` reported (row totals, failed partitions,
    the Data Docs link), as one line; best effort."""
    try:
        value = _xcom(api, run_id, task_id)
    except StackError as exc:
        return f"{task_id}: (not readable: {exc})"
    if not isinstance(value, dict):
        return f"{task_id}: {value}"
    totals = ", ".join(f"{k} {int(v)}" for k, v in sorted((value.get("totals") or {}).items()))
    extra = f"; failed {value['failed']}" if value.get("failed") else ""
    docs = f"; Data Docs {value['data_docs']}" if value.get("data_docs") else ""
    return f"{task_id}: {len(value.get('partitions') or [])} partitions: {totals or 'no totals'}{extra}{docs}"


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


def demo_summary(cfg: StackConfig, settings: Settings, runs: Mapping[str, Mapping[str, str]],
                 reports: list[str] | None = None) -> str:
    """DAG runs and states, the data reports (``reports``: quarantine, validation, gate lines),
    model versions and aliases, prediction partitions and their row counts, the URLs and where
    the credentials are."""
    lines = ["", "Summary", "  DAG runs:"]
    for dag_id, states in runs.items():
        for run_id, state in states.items():
            lines.append(f"    {dag_id:<30} {run_id:<60} {state}")
    lines += reports or []
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


def run_demo(cfg: StackConfig, *, retrain: bool = False, score_days: int = 3, users: int = DEMO_DATA["users"],
             days: int = DEMO_DATA["days"], categories: int = DEMO_DATA["categories"], seed: int = DEMO_DATA["seed"],
             timeout: float = 3600, strict_gate: bool = False,
             out: Printer = print) -> bool:
    """The `make run` job: bring the stack up, generate and land the default data, train, backfill
    scoring over the last ``score_days`` days, print the summary. Idempotent: a second call reuses
    the data and the successful training run and re-scores the same days (partitions replaced).
    When there is no champion and the gate refused the new version, the demo promotes it by hand
    (labelled as such) unless ``strict_gate``. Returns False (after printing the failed task and
    its log tail) when a run failed."""
    if score_days < 1 or score_days > days:
        raise StackError(f"--score-days {score_days} must be between 1 and --days {days}")
    # The stack's processes get the demo's settings (a caller's value wins; a stack that is already
    # up keeps the settings it was started with); this process's environment is left as it was.
    added = {name: value for name, value in DEMO_SETTINGS.items() if name not in os.environ}
    os.environ.update(added)
    try:
        up(cfg, out=out)
    finally:
        for name in added:
            os.environ.pop(name, None)
    secret, _ = ensure_secrets(cfg)
    env = stack_environment(cfg, secret)
    settings = load_settings(environ=env)
    # boto3 and MLflow in this process take their credentials and S3 endpoint from the environment;
    # the settings above already point at the stack.
    os.environ.update({k: v for k, v in package_environment(cfg, secret).items() if not k.startswith("IM_")})

    data = ensure_demo_data(cfg, users=users, days=days, categories=categories, seed=seed)
    landings = [("migrations", data.events_path)] + ([("migrations_late", data.late_path)] if data.late_path else [])
    landed_dates: set[dt.date] = set()
    quarantine: list[str] = []
    for name, path in landings:  # the late file lands after the rest, under its own name
        out(f"data: landing {path} (Taobao format) as {name!r} into "
            f"{storage.uri(settings, layout.area_prefix(layout.RAW))}")
        landed = land_events(settings, path, "taobao", name=name)
        landed_dates.update(landed.dates)
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(landed.quarantine_reasons.items()))
        quarantine.append(f"    {name}: {landed.rows_read} rows read, {landed.rows} landed in {len(landed.dates)} "
                          f"partitions, {landed.quarantined} quarantined ({reasons or 'none'})"
                          + (f" -> {storage.uri(settings, landed.quarantine_key)}" if landed.quarantine_key else ""))
        out(quarantine[-1].strip())
    if not landed_dates:
        raise StackError(f"landing {data.events_path} produced no partitions")
    start, end = min(landed_dates), max(landed_dates)
    out(f"data: {len(landed_dates)} daily partitions {start}..{end}")

    api = AirflowApi(cfg)
    runs: dict[str, dict[str, str]] = {}
    run_id, state = run_training(api, start, end, data.fingerprint, retrain=retrain, timeout=timeout, out=out)
    runs[TRAINING_DAG] = {run_id: state}
    reports = ["  landing (quarantined rows, by reason):", *quarantine]
    if state != "success":
        report_failures(cfg, api, TRAINING_DAG, run_id, out)
        out(demo_summary(cfg, settings, runs, reports))
        return False
    reports += ["  validation and cleaning (training run):", f"    {_task_value(api, run_id, 'validate')}",
                f"    {_task_value(api, run_id, 'preprocess')}", "  registry gate:",
                f"    {_gate_reason(api, run_id)}"]
    champion = champion_version(settings)
    if champion is None:
        out(f"training: the gate did not promote the new version; it said: {_gate_reason(api, run_id)}")
        if strict_gate:
            out(f"training: no version of {settings.model_name} has the champion alias, so there is nothing "
                f"to score with (--strict-gate)")
            out(demo_summary(cfg, settings, runs, reports))
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
    out(demo_summary(cfg, settings, runs, reports))
    if not failed:
        out(_insight_lines(cfg, settings, end))
    return not failed


def _insight_lines(cfg: StackConfig, settings: Settings, day: dt.date) -> str:
    """Where the population migration report and the Airflow page are, and the outcome monitoring
    table (or why there is none yet: a day is judged once its horizon has clean events)."""
    from pipelines.ops import monitoring

    lines = ["insight:",
             f"  migration report of {day}: {storage.uri(settings, layout.partition_prefix(layout.MIGRATION_REPORTS, day))}",
             f"  Airflow page (flows, monitoring, user lookup): {cfg.airflow_url}/interest-migration/"]
    try:
        from pipelines.ops import migration_report

        summary = migration_report.read_summary(settings, day)
        if summary.get("users") and summary.get("expected_new_category_users") is not None:
            lines.insert(2, f"    {summary['users']} users; {summary['expected_new_category_users']:.1f} "
                            f"({summary['expected_new_category_share']:.1%}) expected to touch a category new to "
                            f"them in the horizon; {summary['migrating_users']} whose most likely category is new")
    except Exception as exc:  # noqa: BLE001 - the summary is printed; a missing report is said, not fatal
        lines.insert(2, f"    (no report summary: {type(exc).__name__}: {exc})")
    try:
        lines.append("  " + monitoring.monitor_pending_table(settings).replace("\n", "\n  "))
    except Exception as exc:  # the demo's summary is printed; monitoring is reported, not fatal here
        lines.append(f"  monitoring: could not run ({type(exc).__name__}: {exc}); try `python -m pipelines monitor`")
    return "\n".join(lines)
