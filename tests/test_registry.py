"""Registry gate on the real MLflow server: register, alias challenger, promote only when earned,
record the decision on the version, manual promotion/rollback by moving the alias."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math

import pandas as pd
import pytest

from pipelines.__main__ import main
from pipelines.model import registry
from pipelines.platform import storage, tracking
from pipelines.platform.tracking import client
from tests import pyfunc_models as pm

AS_OF = "2024-01-04T00:00:00+00:00"
DATASET_PREFIX = "datasets/gate/"


# --- the pure gate -------------------------------------------------------------------------------

def test_gate_metrics_reads_model_and_baselines():
    metrics = {"model/ndcg_at_5": 0.5, "model/recall_at_5": 0.9, "baseline/popularity/ndcg_at_5": 0.3,
               "baseline/markov/ndcg_at_5": 0.4, "baseline/markov/ndcg_at_50": 0.99}
    assert registry.gate_metrics(metrics, "ndcg_at_5") == (0.5, {"popularity": 0.3, "markov": 0.4})
    with pytest.raises(registry.RegistryError, match="model/ndcg_at_10"):
        registry.gate_metrics(metrics, "ndcg_at_10")


@pytest.mark.parametrize(("challenger", "champion", "margin", "promote"), [
    (0.50, None, 0.0, True),      # first model, beats the baselines
    (0.35, None, 0.0, False),     # first model, loses to the best baseline (0.4)
    (0.50, 0.45, 0.0, True),
    (0.50, 0.49, 0.02, False),    # better, but not by the margin
    (0.44, 0.45, 0.0, False),     # worse than the champion
])
def test_decide(challenger, champion, margin, promote):
    ok, reason = registry.decide(challenger, {"popularity": 0.3, "markov": 0.4}, champion,
                                 margin_vs_baselines=0.0, margin_vs_champion=margin)
    assert ok is promote
    assert "markov" in reason and ("no current champion" in reason) is (champion is None)
    assert "a tie" not in reason


def test_decide_names_a_tie_with_the_best_baseline():
    # A log with one category: every ranking scores 1.0 and the gate refused with only "+0.0000".
    ok, reason = registry.decide(1.0, {"decayed_frequency": 1.0, "markov": 1.0}, None,
                                 margin_vs_baselines=0.0, margin_vs_champion=0.0)
    assert not ok and "difference +0.0000; a tie: no ranking scores better on this test set" in reason


# --- on the real server ------------------------------------------------------------------------------

def _write_dataset(settings) -> str:
    """A tiny test set: history events before AS_OF and the categories each user touches after it."""
    rows = []
    favourite = {"u1": "shoes", "u2": "books", "u3": "toys", "u4": "games", "u5": "music"}
    for n, (user, category) in enumerate(favourite.items()):
        for hour in range(3 + n):
            rows.append((user, f"i{n}{hour}", category, "view", hour))
        rows.append((user, f"x{n}", "pop", "view", 20))  # everybody also looks at one popular category
    events = pm.clean_events({dt.date(2024, 1, 3): rows})[dt.date(2024, 1, 3)]
    storage.write_parquet(settings, DATASET_PREFIX + "events.parquet", events)
    storage.put_json(settings, DATASET_PREFIX + "truth.json", {u: [c] for u, c in favourite.items()})
    return storage.uri(settings, DATASET_PREFIX)


def _ndcg_at_5(ranked: list[str], truth: set[str]) -> float:
    gains = sum(1.0 / math.log2(i + 2) for i, c in enumerate(ranked[:5]) if c in truth)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(5, len(truth))))
    return gains / ideal


def evaluate_uri(settings, dataset_uri: str, model_uri: str) -> dict[str, float]:
    """A real (small) evaluation: load the pyfunc, score the test users, mean NDCG@5 against truth."""
    assert dataset_uri == storage.uri(settings, DATASET_PREFIX)
    events = storage.read_parquet(settings, DATASET_PREFIX + "events.parquet").to_pandas()
    truth = storage.get_json(settings, DATASET_PREFIX + "truth.json")
    output = tracking.load_pyfunc(settings, model_uri).predict(events.drop(columns="value"),
                                                                params={"as_of": AS_OF, "top_n": 10})
    ranked = dict(zip(output["user_id"], output["categories"], strict=True))
    return {"ndcg_at_5": sum(_ndcg_at_5(list(ranked[u]), set(c)) for u, c in truth.items()) / len(truth)}


def _popularity_baseline(settings) -> float:
    events = storage.read_parquet(settings, DATASET_PREFIX + "events.parquet").to_pandas()
    truth = storage.get_json(settings, DATASET_PREFIX + "truth.json")
    ranked = pd.Series(events["category_id"]).value_counts().index.tolist()
    return sum(_ndcg_at_5(ranked, set(c)) for c in truth.values()) / len(truth)


def _trained_run(settings, dataset_uri: str, variant: str) -> tuple[str, str]:
    """Log a model and its evaluation metrics as the training DAG would; returns (run_id, model_uri)."""
    run_id, uri = pm.log_model(settings, variant=variant)
    model_metric = evaluate_uri(settings, dataset_uri, uri)["ndcg_at_5"]
    tracking.log_metrics(settings, run_id, {"model/ndcg_at_5": model_metric,
                                            "baseline/popularity/ndcg_at_5": _popularity_baseline(settings)})
    return run_id, uri


def _trained_and_gated(settings, dataset_uri: str, variant: str, evaluator=evaluate_uri) -> tuple[str, str, dict]:
    """A trained run (see :func:`_trained_run`) through the registry gate; returns (run_id, model_uri, decision)."""
    run_id, uri = _trained_run(settings, dataset_uri, variant)
    result = registry.register_step(settings, mlflow_run_id=run_id, model_uri=uri, dataset_uri=dataset_uri,
                                    evaluate_champion=evaluator)
    return run_id, uri, result


@pytest.fixture()
def gate_settings(settings):
    gated = pm.isolate(settings)
    return gated, _write_dataset(gated)


@pytest.mark.services
def test_first_good_model_becomes_champion_with_the_decision_on_the_version(gate_settings, capsys):
    settings, dataset_uri = gate_settings
    run_id, uri, result = _trained_and_gated(settings, dataset_uri, "good")
    # the version's files are downloaded (SHA-256) without MLflow's progress bar in the task log
    assert "Downloading artifacts" not in capsys.readouterr().err
    assert result["decision"] == "promoted" and result["model_version"] == "1"
    assert result["champion"] is None and result["best_baseline"] == "popularity"
    mlflow_client = client(settings)
    version = mlflow_client.get_model_version(settings.model_name, "1")
    assert set(version.aliases) == {"challenger", "champion"}
    assert version.tags["gate.decision"] == "promoted" and version.tags["gate.metric"] == "ndcg_at_5"
    assert float(version.tags["gate.challenger"]) > float(version.tags["gate.best_baseline_value"])
    assert "PROMOTED" in version.description and "popularity" in version.description
    assert mlflow_client.get_run(run_id).data.tags["gate.decision"] == "promoted"
    # A retried register task reuses the version instead of registering a duplicate.
    again = registry.register_step(settings, mlflow_run_id=run_id, model_uri=uri, dataset_uri=dataset_uri,
                                   evaluate_champion=evaluate_uri)
    assert again["model_version"] == "1" and again["decision"] == "promoted"
    assert len(mlflow_client.search_model_versions(f"name='{settings.model_name}'")) == 1


@pytest.mark.services
def test_worse_challenger_is_registered_but_not_promoted(gate_settings):
    settings, dataset_uri = gate_settings
    _trained_and_gated(settings, dataset_uri, "good")
    # Judge against the champion alone: with no baseline margin to pass, only the champion can stop it.
    lenient = dataclasses.replace(settings, gate_margin_vs_baselines=-1.0)
    _, _, result = _trained_and_gated(lenient, dataset_uri, "bad")
    assert result["decision"] == "rejected" and result["model_version"] == "2"
    assert result["champion_version"] == "1" and result["champion"] > result["challenger"]
    assert "evaluated on the challenger's test set" in result["champion_source"]
    assert "does not beat champion" in result["reason"]
    mlflow_client = client(settings)
    assert mlflow_client.get_model_version_by_alias(settings.model_name, "champion").version == "1"
    assert mlflow_client.get_model_version_by_alias(settings.model_name, "challenger").version == "2"
    tags = mlflow_client.get_model_version(settings.model_name, "2").tags
    assert tags["gate.decision"] == "rejected" and tags["gate.champion_version"] == "1"
    # A reviewer overrides the gate by moving the alias by hand, and can roll back the same way.
    assert registry.promote_version(settings, "2") == {"model_name": settings.model_name, "alias": "champion",
                                                       "previous": "1", "current": "2"}
    assert registry.promote_version(settings, "1")["previous"] == "2"


@pytest.mark.services
def test_model_losing_to_baselines_is_not_champion_even_without_one(gate_settings):
    settings, dataset_uri = gate_settings
    _, _, result = _trained_and_gated(settings, dataset_uri, "bad")
    assert result["decision"] == "rejected" and "does not beat best baseline" in result["reason"]
    assert registry.version_by_alias(settings, "champion") is None
    assert registry.version_by_alias(settings, "challenger").version == "1"


@pytest.mark.services
def test_champion_falls_back_to_its_recorded_metric_and_says_so(gate_settings):
    settings, dataset_uri = gate_settings
    _trained_and_gated(settings, dataset_uri, "good")

    def broken(settings, dataset_uri, model_uri):
        raise RuntimeError("test set unreadable")

    _, _, result = _trained_and_gated(settings, dataset_uri, "good", evaluator=broken)
    assert "recorded on its own training run" in result["champion_source"]
    assert "test set unreadable" in result["champion_source"]
    # Equal score is not "beating" the champion (strictly more than champion + margin).
    assert result["challenger"] == result["champion"] and result["decision"] == "rejected"
    tags = client(settings).get_model_version(settings.model_name, result["model_version"]).tags
    assert "recorded" in tags["gate.champion_source"]


@pytest.mark.services
def test_missing_gate_metric_names_it(gate_settings):
    settings, dataset_uri = gate_settings
    run_id, uri = pm.log_model(settings, metrics={"model/recall_at_5": 0.5})
    with pytest.raises(registry.RegistryError, match="model/ndcg_at_5"):
        registry.register_step(settings, mlflow_run_id=run_id, model_uri=uri, dataset_uri=dataset_uri)


@pytest.mark.services
def test_promote_command_moves_the_alias_and_prints_the_previous(gate_settings, monkeypatch, capsys):
    settings, _ = gate_settings
    first = pm.register_as_champion(settings)
    pm.register_as_champion(settings)  # version 2 is champion now
    monkeypatch.setenv("IM_MODEL_NAME", settings.model_name)
    monkeypatch.setenv("IM_MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    assert main(["promote", "--version", first]) == 0
    assert "version 2 -> 1" in capsys.readouterr().out
    assert registry.version_by_alias(settings, "champion").version == first
    assert main(["promote", "--version", "99"]) == 1
    captured = capsys.readouterr()
    assert "has no version 99" in captured.err and captured.out == ""  # errors go to stderr
    assert main(["promote", "--version", "2", "--reason", "roll forward", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"model_name": settings.model_name, "alias": "champion",
                                                   "previous": first, "current": "2"}
