"""Model registry gate: register every trained model, promote it only when it earns it.

:func:`register_step` registers the run's pyfunc model as a new version of ``settings.model_name``,
gives it the alias ``challenger``, and moves ``champion`` to it only when, on the gate metric
(``settings.gate_metric``, e.g. ``ndcg_at_5``):

- it beats every baseline of the same run by ``gate_margin_vs_baselines`` (absolute), and
- it beats the current champion (if any) by ``gate_margin_vs_champion``, the champion being
  evaluated on the challenger's own test set by ``evaluate.evaluate_model_uri`` (falling back to
  the champion's recorded run metric, said so in the tags, when that is not possible).

The decision and every number behind it are written on the version (tags ``gate.*`` and the
description) and on the run, so a reviewer sees in the MLflow UI why a version was or was not
promoted. People promote or roll back by moving the alias (:func:`promote_version`, or
``python -m pipelines promote --version N``, :mod:`pipelines.model.cli`); the scoring DAG follows the alias.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.platform import tracking

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTED = "promoted"
REJECTED = "rejected"
MODEL_PREFIX = "model/"
BASELINE_PREFIX = "baseline/"

ChampionEvaluator = Callable[[Settings, str, str], dict[str, float]]
TAG_SHA256 = "model.sha256"  # on the version: SHA-256 of its model files (recorded at registration)


class ModelIntegrityError(RuntimeError):
    """A model version's files do not match the SHA-256 recorded when it was registered."""


class ModelDownloadError(RuntimeError):
    """A registered version's files could not be downloaded; the message says where and why."""


class RegistryError(RuntimeError):
    """The registry step cannot decide (missing metric, unknown version); the message says what."""


def _is_denied(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "") or ""
    return "PERMISSION_DENIED" in code or "403" in str(exc)


def _model_visible(mlflow_client: Any, name: str) -> bool:
    """Whether the registry lists a model called ``name`` to this account."""
    escaped = name.replace("'", "\\'")
    return any(m.name == name for m in mlflow_client.search_registered_models(filter_string=f"name = '{escaped}'"))


def _is_not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "") or ""
    return "RESOURCE_DOES_NOT_EXIST" in code or "NOT_FOUND" in code or "not found" in str(exc).lower()


def version_by_alias(settings: Settings, alias: str) -> Any | None:
    """The model version carrying ``alias``, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    mlflow_client = tracking.client(settings)
    try:
        return mlflow_client.get_model_version_by_alias(settings.model_name, alias)
    except MlflowException as exc:
        if _is_not_found(exc):
            return None
        if _is_denied(exc) and not _model_visible(mlflow_client, settings.model_name):
            # MLflow's basic-auth app answers 403, not 404, for a model that does not exist
            # (it cannot find the model's workspace). A model the account can see is a real denial.
            return None
        raise


def gate_metrics(run_metrics: dict[str, float], metric: str) -> tuple[float, dict[str, float]]:
    """(challenger value, {baseline name: value}) of ``metric`` from a run's metrics
    ``model/<metric>`` and ``baseline/<name>/<metric>``. Raises :class:`RegistryError` when the
    model's metric is missing."""
    key = MODEL_PREFIX + metric
    if key not in run_metrics:
        found = sorted(k for k in run_metrics if k.startswith(MODEL_PREFIX))
        raise RegistryError(f"run has no metric {key!r} (gate_metric={metric!r}); model metrics logged: {found}")
    baselines = {}
    for name, value in run_metrics.items():
        if name.startswith(BASELINE_PREFIX) and name.endswith("/" + metric):
            baselines[name[len(BASELINE_PREFIX):-len(metric) - 1]] = float(value)
    return float(run_metrics[key]), baselines


def decide(challenger: float, baselines: dict[str, float], champion: float | None, *,
           margin_vs_baselines: float, margin_vs_champion: float) -> tuple[bool, str]:
    """Pure gate: (promote?, human-readable reason). Beating means strictly more than value+margin."""
    reasons = []
    ok = True
    if baselines:
        best_name, best = max(baselines.items(), key=lambda kv: kv[1])
        if challenger > best + margin_vs_baselines:
            reasons.append(f"beats best baseline {best_name} ({best:.4f}) by {challenger - best:+.4f} "
                           f"(margin {margin_vs_baselines})")
        else:
            ok = False
            reasons.append(f"does not beat best baseline {best_name} ({best:.4f}) by the margin "
                           f"{margin_vs_baselines}: difference {challenger - best:+.4f}")
            if abs(challenger - best) < 1e-9:
                reasons.append("a tie: no ranking scores better on this test set (a log with one category, or "
                               "users who only return to what they know); promote by hand to publish predictions "
                               "anyway")
    else:
        reasons.append("no baseline metrics logged (nothing to beat)")
    if champion is None:
        reasons.append("no current champion")
    elif challenger > champion + margin_vs_champion:
        reasons.append(f"beats champion ({champion:.4f}) by {challenger - champion:+.4f} (margin {margin_vs_champion})")
    else:
        ok = False
        reasons.append(f"does not beat champion ({champion:.4f}) by the margin {margin_vs_champion}: "
                       f"difference {challenger - champion:+.4f}")
    return ok, "; ".join(reasons)


def _default_evaluator() -> ChampionEvaluator:
    # Imported here, not at the top: evaluation pulls in scikit-learn, SciPy and matplotlib, and
    # serving imports this module only to look up the champion.
    from pipelines.model.evaluate import evaluate_model_uri

    return evaluate_model_uri


def _champion_metric(settings: Settings, champion: Any, dataset_uri: str,
                     evaluator: ChampionEvaluator) -> tuple[float | None, str]:
    """The champion's gate metric and where it came from (evaluated / recorded ...)."""
    uri = f"models:/{settings.model_name}/{champion.version}"
    try:
        metrics = evaluator(settings, dataset_uri, uri)
        if settings.gate_metric in metrics:
            return float(metrics[settings.gate_metric]), f"evaluated on the challenger's test set {dataset_uri}"
        why = f"evaluation returned no {settings.gate_metric!r} (keys: {sorted(metrics)})"
    except Exception as exc:  # recorded in the decision, then the fallback is used
        why = f"evaluating {uri} failed: {type(exc).__name__}: {exc}"[:500]
        log.warning("champion evaluation failed, falling back to its recorded metric: %s", why)
    recorded = None
    if champion.run_id:
        recorded = tracking.client(settings).get_run(champion.run_id).data.metrics.get(MODEL_PREFIX + settings.gate_metric)
    if recorded is None:
        return None, f"recorded metric missing on run {champion.run_id} ({why})"
    return float(recorded), f"recorded on its own training run {champion.run_id} ({why}); not the same test set"


def _existing_version(settings: Settings, run_id: str) -> Any | None:
    versions = tracking.client(settings).search_model_versions(f"name='{settings.model_name}' and run_id='{run_id}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None


def _ensure_registered_model(settings: Settings) -> None:
    from mlflow.exceptions import MlflowException

    mlflow_client = tracking.client(settings)
    try:
        mlflow_client.get_registered_model(settings.model_name)
    except MlflowException as exc:
        if not _is_not_found(exc):
            raise
        try:
            mlflow_client.create_registered_model(
                settings.model_name,
                description="Per-user interest migration: predicted categories for the next horizon days. "
                            "Alias 'champion' is what the daily scoring DAG uses; 'challenger' is the latest "
                            "registered version. Move an alias to promote or roll back.")
        except MlflowException:
            mlflow_client.get_registered_model(settings.model_name)  # created concurrently


def register_step(settings: Settings, *, mlflow_run_id: str, model_uri: str, dataset_uri: str,
                  evaluate_champion: ChampionEvaluator | None = None) -> dict[str, Any]:
    """Register ``model_uri`` (``runs:/<run>/model``) and apply the promotion gate.

    Returns the decision as a JSON-able dict: model_name, model_version, decision
    (``promoted``/``rejected``), promoted, reason, metric, challenger, champion,
    champion_version, champion_source, best_baseline, best_baseline_value, baselines, margins.
    A retry for the same run reuses the version it already registered (and records its files'
    SHA-256 if the first try died before that). Raises
    :class:`~pipelines.platform.tracking.TrackingUnavailable` when MLflow does not answer in time.
    ``evaluate_champion``
    (settings, dataset_uri, model_uri) -> metrics defaults to ``evaluate.evaluate_model_uri``.
    """
    with tracking.reachable(settings, f"registering run {mlflow_run_id} as {settings.model_name}"):
        return _register_step(settings, mlflow_run_id=mlflow_run_id, model_uri=model_uri, dataset_uri=dataset_uri,
                              evaluate_champion=evaluate_champion)


def _register_step(settings: Settings, *, mlflow_run_id: str, model_uri: str, dataset_uri: str,
                   evaluate_champion: ChampionEvaluator | None) -> dict[str, Any]:
    mlflow_client = tracking.client(settings)
    run = mlflow_client.get_run(mlflow_run_id)
    challenger_value, baselines = gate_metrics(dict(run.data.metrics), settings.gate_metric)

    _ensure_registered_model(settings)
    version = _existing_version(settings, mlflow_run_id)
    if version is None:
        version = tracking.register_model(settings, model_uri,
                                          {"source_run_id": mlflow_run_id, "dataset_uri": dataset_uri})
        log.info("registered %s version %s from %s", settings.model_name, version.version, model_uri)
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
            record_digest(settings, str(version.version), Path(tmp))
    else:
        log.info("run %s already registered as %s version %s; reusing it", mlflow_run_id, settings.model_name,
                 version.version)
        if not dict(version.tags or {}).get(TAG_SHA256):  # the first try died between registering and the digest
            settings.work_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
                record_digest(settings, str(version.version), Path(tmp))
    new_version = str(version.version)
    mlflow_client.set_registered_model_alias(settings.model_name, CHALLENGER, new_version)

    champion = version_by_alias(settings, CHAMPION)
    if champion is not None and str(champion.version) == new_version:
        champion = None  # a retry after promotion: judge against the baselines only, keep the alias
    champion_value, champion_source = (None, "no champion yet")
    if champion is not None:
        evaluator = evaluate_champion if evaluate_champion is not None else _default_evaluator()
        champion_value, champion_source = _champion_metric(settings, champion, dataset_uri, evaluator)
        if champion_value is None:
            log.warning("champion version %s has no usable %s: %s", champion.version, settings.gate_metric,
                        champion_source)
    promote, reason = decide(challenger_value, baselines,
                             champion_value if champion is not None else None,
                             margin_vs_baselines=settings.gate_margin_vs_baselines,
                             margin_vs_champion=settings.gate_margin_vs_champion)
    if champion is not None and champion_value is None:
        promote, reason = False, reason + "; champion metric unavailable, not promoting (promote by hand if intended)"
    best_name, best_value = (max(baselines.items(), key=lambda kv: kv[1]) if baselines else ("none", None))

    result: dict[str, Any] = {
        "model_name": settings.model_name,
        "model_version": new_version,
        "model_uri": f"models:/{settings.model_name}/{new_version}",
        "decision": PROMOTED if promote else REJECTED,
        "promoted": promote,
        "reason": reason,
        "metric": settings.gate_metric,
        "challenger": challenger_value,
        "champion": champion_value,
        "champion_version": str(champion.version) if champion is not None else None,
        "champion_source": champion_source,
        "best_baseline": best_name,
        "best_baseline_value": best_value,
        "baselines": baselines,
        "margin_vs_champion": settings.gate_margin_vs_champion,
        "margin_vs_baselines": settings.gate_margin_vs_baselines,
        "dataset_uri": dataset_uri,
        "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if promote:
        mlflow_client.set_registered_model_alias(settings.model_name, CHAMPION, new_version)
        log.info("promoted %s version %s to %s: %s", settings.model_name, new_version, CHAMPION, reason)
    else:
        log.info("kept %s version %s as %s only: %s", settings.model_name, new_version, CHALLENGER, reason)
    _record_decision(settings, mlflow_run_id, result)
    return result


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.6f}"


def decision_tags(result: dict[str, Any]) -> dict[str, str]:
    """The ``gate.*`` tags written on the version and on the run."""
    tags = {
        "gate.decision": result["decision"],
        "gate.metric": result["metric"],
        "gate.challenger": _fmt(result["challenger"]),
        "gate.champion": _fmt(result["champion"]),
        "gate.champion_version": result["champion_version"] or "none",
        "gate.champion_source": result["champion_source"][:4000],
        "gate.best_baseline": result["best_baseline"],
        "gate.best_baseline_value": _fmt(result["best_baseline_value"]),
        "gate.margin_vs_champion": str(result["margin_vs_champion"]),
        "gate.margin_vs_baselines": str(result["margin_vs_baselines"]),
        "gate.reason": result["reason"][:4000],
        "gate.dataset_uri": result["dataset_uri"],
        "gate.decided_at": result["decided_at"],
    }
    for name, value in result["baselines"].items():
        tags[f"gate.baseline.{name}"] = _fmt(value)
    return tags


def decision_description(result: dict[str, Any]) -> str:
    """A few lines a reviewer reads on the version page."""
    verdict = ("PROMOTED to champion" if result["promoted"]
               else "NOT promoted (stays challenger)")
    lines = [
        f"Gate on {result['metric']}: {verdict}.",
        f"Challenger (this version): {_fmt(result['challenger'])}",
        f"Champion before: version {result['champion_version'] or 'none'} = {_fmt(result['champion'])} "
        f"({result['champion_source']})",
        f"Best baseline: {result['best_baseline']} = {_fmt(result['best_baseline_value'])}; all baselines: "
        + ", ".join(f"{k}={v:.4f}" for k, v in sorted(result["baselines"].items())),
        f"Margins: vs champion {result['margin_vs_champion']}, vs baselines {result['margin_vs_baselines']}.",
        f"Reason: {result['reason']}.",
        f"Test set: {result['dataset_uri']}. Decided {result['decided_at']}.",
    ]
    return "\n".join(lines)


def _record_decision(settings: Settings, run_id: str, result: dict[str, Any]) -> None:
    mlflow_client = tracking.client(settings)
    tags = decision_tags(result)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(settings.model_name, result["model_version"], key, value)
        mlflow_client.set_tag(run_id, key, value)
    mlflow_client.update_model_version(settings.model_name, result["model_version"],
                                       description=decision_description(result))


def promote_version(settings: Settings, version: str | int, *, alias: str = CHAMPION, reason: str = "manual") -> dict[str, Any]:
    """Move ``alias`` (default champion) to ``version`` by hand; returns {"previous", "current"}.

    Raises :class:`RegistryError` when the version does not exist. Tags the version with who/why.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = tracking.client(settings)
    try:
        mlflow_client.get_model_version(settings.model_name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{settings.model_name} has no version {version} "
                            f"(registry {settings.mlflow_tracking_uri})") from exc
    before = version_by_alias(settings, alias)
    previous = str(before.version) if before is not None else None
    mlflow_client.set_registered_model_alias(settings.model_name, alias, str(version))
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    mlflow_client.set_model_version_tag(settings.model_name, str(version), f"{alias}.set_by",
                                        f"{reason} at {now} (previous: {previous or 'none'})")
    log.info("moved %s@%s from version %s to %s", settings.model_name, alias, previous, version)
    return {"model_name": settings.model_name, "alias": alias, "previous": previous, "current": str(version)}


# --- integrity: the SHA-256 of a version's files, recorded at registration, checked before loading ---


def files_digest(folder: Path) -> str:
    """SHA-256 over every file under ``folder``: relative path and bytes, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(8 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


FULL_DISK_BYTES = 1 << 20  # below this much free space a failed download is reported as a full work disk


def _download_version(settings: Settings, version: str, dest: Path) -> Path:
    """Download a version's files into ``dest``; :class:`ModelDownloadError` names the version,
    the folder and its free space when it fails (MLflow's own error lists files, not causes)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    tracking.configure(settings)
    uri = f"models:/{settings.model_name}/{version}"
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except (MlflowException, OSError) as exc:
        free = shutil.disk_usage(dest).free
        cause = (f"No space left on device: the work folder {settings.work_dir} (IM_WORK_DIR) has {free // 1024} KiB "
                 "free; free space there and run it again" if free < FULL_DISK_BYTES
                 else f"{str(exc).splitlines()[0][:300]} ({free >> 20} MiB free in {dest})")
        raise ModelDownloadError(f"downloading {uri} into {dest} failed: {cause}") from exc


def record_digest(settings: Settings, version: str, workdir: Path) -> str:
    """Download version ``version``'s files, tag the version with their SHA-256 (``model.sha256``) and return it."""
    digest = files_digest(_download_version(settings, str(version), workdir))
    tracking.client(settings).set_model_version_tag(settings.model_name, str(version), TAG_SHA256, digest)
    log.info("%s version %s: files SHA-256 %s recorded", settings.model_name, version, digest)
    return digest


def verified_local_copy(settings: Settings, version: str, models_dir: Path) -> Path:
    """Version ``version``'s files in ``models_dir/<model>-<version>/``, checked against the SHA-256
    recorded at registration at every call: downloaded once per machine, then reused by later
    processes (the shards of a day, the hourly intraday runs, a restarted endpoint). A copy whose
    files no longer match is replaced by a fresh download (and that one is checked); bytecode Python
    wrote beside the model's code while loading it is removed first (it is not part of the recorded
    files). A version without a recorded digest is downloaded into a folder of this process each
    time and loaded with a warning, never kept. Raises :class:`ModelIntegrityError` when a fresh
    download does not match the recorded SHA-256."""
    return _local_copy(settings, version, models_dir, _recorded_digest(settings, version))


def warm_local_copy(settings: Settings, version: str, models_dir: Path) -> Path | None:
    """:func:`verified_local_copy` ahead of need (the scoring plan calls it while it reads the
    window, so the shards of the first day after a promotion find the copy on this machine); None,
    without downloading, for a version without a recorded digest (its copy would not be kept)."""
    recorded = _recorded_digest(settings, version)
    return _local_copy(settings, version, models_dir, recorded) if recorded else None


def _recorded_digest(settings: Settings, version: str) -> str | None:
    """The SHA-256 tag recorded on version ``version`` at registration (None before digests existed)."""
    return dict(tracking.client(settings).get_model_version(settings.model_name, str(version)).tags).get(TAG_SHA256)


def _local_copy(settings: Settings, version: str, models_dir: Path, recorded: str | None) -> Path:
    """:func:`verified_local_copy` with the recorded digest already looked up."""
    cached = models_dir / f"{settings.model_name}-{version}"
    if recorded and cached.is_dir():
        for bytecode in list(cached.rglob("__pycache__")):
            shutil.rmtree(bytecode, ignore_errors=True)
        if files_digest(cached) == recorded:
            log.info("%s version %s: using the local copy %s (SHA-256 checked)", settings.model_name, version, cached)
            return cached
        log.warning("%s version %s: the local copy %s no longer matches the recorded SHA-256; downloading it again",
                    settings.model_name, version, cached)
        shutil.rmtree(cached, ignore_errors=True)
    scratch = models_dir / f".{settings.model_name}-{version}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    local = _verified_download(settings, version, scratch, recorded)
    if not recorded:
        return local
    try:
        local.rename(cached)
    except OSError:  # another process put its copy there first: use ours (its own check passed)
        return local
    shutil.rmtree(scratch, ignore_errors=True)
    return cached


def _verified_download(settings: Settings, version: str, workdir: Path, recorded: str | None) -> Path:
    """The files of version ``version`` downloaded into ``workdir`` and checked against ``recorded``
    (its SHA-256 tag; None: registered before digests were recorded, loaded with a warning)."""
    local = _download_version(settings, str(version), workdir)
    if not recorded:
        log.warning("%s version %s has no recorded %s (registered before integrity checks): loaded unverified",
                    settings.model_name, version, TAG_SHA256)
        return local
    actual = files_digest(local)
    if actual != recorded:
        raise ModelIntegrityError(
            f"{settings.model_name} version {version}: its files have SHA-256 {actual} but {recorded} was recorded "
            f"at registration: the model files were changed after registration; refusing to load them "
            f"(re-register a trusted model, or move @champion to another version)")
    return local
