"""Figures of an evaluation: sample users' interests, ROC curves, recall@k curves, reliability.

Figures are built with matplotlib's object API (:class:`matplotlib.figure.Figure`): no pyplot
state and no backend to select, so nothing has to be closed and nothing is drawn on a screen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from pipelines.features.examples import HIST_FEATURES
from pipelines.features.vocab import RESERVED, Vocab
from pipelines.model.baselines import history_matrix
from pipelines.model.metrics import example_metrics


def evaluation_figures(result: dict[str, Any], vocab: Vocab, ks: tuple[int, ...], n_users: int = 4
                       ) -> dict[str, Figure]:
    """Figures for the run, by name: per-category current vs predicted interest of sample users,
    ROC curves, recall@k curves (model vs baselines) and the model's reliability diagram.
    ``result`` is what :func:`pipelines.model.evaluate.evaluate_dataset` returns."""
    figures: dict[str, Figure] = {}
    if "model" in result["scores"] and len(result["labels"]):
        figures["sample_users_interest"] = _sample_users_figure(result, vocab, n_users)
    figures["roc"] = _roc_figure(result)
    figures["recall_at_k"] = _recall_figure(result, ks)
    if "model" in result["scores"]:
        figures["reliability"] = _reliability_figure(result)
    return figures


def _sample_users_figure(result: dict[str, Any], vocab: Vocab, n_users: int) -> Figure:
    """Per-category interest of sample users (preferably users who moved): current (share of
    decayed history) vs predicted."""
    scores, labels, known = result["scores"], result["labels"], result["known"]
    ids = vocab.category_ids()
    rng = np.random.default_rng(0)
    moved = np.flatnonzero((labels > 0) & (known == 0)).tolist()
    candidates = np.unique(np.asarray(moved) // labels.shape[1]) if moved else np.arange(len(labels))
    picks = rng.choice(candidates, size=min(n_users, len(candidates)), replace=False)
    fig = Figure(figsize=(10, 2.6 * len(picks)))
    axes = fig.subplots(len(picks), 1, squeeze=False)
    hist = history_matrix(result["inputs"], HIST_FEATURES.index("decay_mid"), labels.shape[1])  # half-life: 1 horizon
    users = result["examples"]["user_id"].to_pylist()
    for ax, row in zip(axes[:, 0], picks, strict=True):
        current = hist[row] / max(hist[row].sum(), 1e-12)
        predicted = scores["model"][row]
        show = np.argsort(-(current + predicted))[:15]
        show = show[show >= RESERVED]
        x = np.arange(len(show))
        ax.bar(x - 0.2, current[show], 0.4, label="current (decayed share)")
        ax.bar(x + 0.2, predicted[show], 0.4, label="predicted P(engage)")
        ax.scatter(x[labels[row, show] > 0], np.zeros(int((labels[row, show] > 0).sum())), marker="^",
                   color="black", label="touched in horizon", zorder=3)
        ax.set_xticks(x, [str(ids[c]) for c in show], rotation=45, fontsize=7)
        ax.set_title(f"user {users[row]}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _roc_figure(result: dict[str, Any]) -> Figure:
    labels = result["labels"]
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for name, s in result["scores"].items():
        y = (labels[:, RESERVED:] > 0).ravel()
        if y.any() and not y.all():
            fpr, tpr, _ = roc_curve(y, s[:, RESERVED:].ravel())
            ax.plot(fpr, tpr, label=f"{name} (AUC {result['summaries'][name].get('auc', float('nan')):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC over (user, category) pairs")
    ax.legend(fontsize=7)
    return fig


def _recall_figure(result: dict[str, Any], ks: tuple[int, ...]) -> Figure:
    labels, known = result["labels"], result["known"]
    k_max = min(max(max(ks), 20), labels.shape[1] - RESERVED)
    curve_ks = tuple(range(1, k_max + 1))
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for name, s in result["scores"].items():
        per = example_metrics(s, labels, known, curve_ks, emerging_ks=curve_ks)
        axes[0].plot(curve_ks, [np.nanmean(per[f"recall_at_{k}"]) for k in curve_ks], label=name)
        axes[1].plot(curve_ks, [np.nanmean(per[f"explore_recall_at_{k}"]) for k in curve_ks], label=name)
    axes[0].set_title("Recall@k, whole list")
    axes[1].set_title("explore-Recall@k, emerging list (known removed)")
    for ax in axes:
        ax.set_xlabel("k")
        ax.legend(fontsize=7)
    return fig


def _reliability_figure(result: dict[str, Any]) -> Figure:
    p = result["scores"]["model"][:, RESERVED:].ravel()
    y = (result["labels"][:, RESERVED:] > 0).ravel()
    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p, bins) - 1, 0, 9)
    mean_p = np.array([p[which == b].mean() if (which == b).any() else np.nan for b in range(10)])
    rate = np.array([y[which == b].mean() if (which == b).any() else np.nan for b in range(10)])
    counts = np.bincount(which, minlength=10)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.plot(mean_p, rate, "o-", label="model")
    for x, yv, n in zip(mean_p, rate, counts, strict=True):
        if np.isfinite(x):
            ax.annotate(str(n), (x, yv), fontsize=6)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"Reliability (Brier {result['summaries']['model'].get('brier', float('nan')):.4f})")
    return fig
