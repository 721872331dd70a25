"""Benchmark: train and evaluate the interest-migration model and the baselines on real data.

    python bench/model_bench.py --data ciao      # 90-day horizon, 24 monthly test as-of times
    python bench/model_bench.py --data taobao    # 1-day horizon on the head+tail user histories

Reads ../shared/data (read-only), encodes in memory with the project's own functions, trains with
the project's settings, and prints the comparison table with 95% bootstrap intervals (resampling
users), the model-minus-best-baseline differences, the training time and examples/second.
Nothing is written to the repository; scratch files go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from pipelines.config import Settings, _parse, load_settings  # noqa: E402
from pipelines.contracts import EVENT_SCHEMA  # noqa: E402
from pipelines.features.batch import to_model_inputs  # noqa: E402
from pipelines.features.dataset import Dataset  # noqa: E402
from pipelines.features.encoding import encode_events  # noqa: E402
from pipelines.model.activity import ActivityModel  # noqa: E402
from pipelines.model.evaluate import evaluate_dataset  # noqa: E402
from pipelines.model.metrics import EMERGING_KS, bootstrap_ci, comparison_table  # noqa: E402
from pipelines.model.network import Predictor, predict_proba  # noqa: E402
from pipelines.model.published import published_summaries  # noqa: E402
from pipelines.model.pyfunc import ModelCore  # noqa: E402
from pipelines.model.train import fit_model  # noqa: E402
from pipelines.serving.engine import CoreScorer  # noqa: E402

CIAO_SETTINGS = dict(horizon_days=90, lookback_days=20000, seq_len=50, asof_step_days=30, eval_asof_step_days=30,
                     validation_asof_count=4, test_asof_count=24, min_category_count=1, batch_size=512, epochs=12,
                     patience=3, embed_dim=32, eval_ks=(5, 10, 20), sequence_encoder="gru")
TAOBAO_SETTINGS = dict(horizon_days=1, lookback_days=30, seq_len=50, asof_step_days=1, eval_asof_step_days=1,
                       validation_asof_count=1, test_asof_count=2, min_category_count=2, batch_size=64, epochs=30,
                       patience=4, embed_dim=32, eval_ks=(5, 10, 20), sequence_encoder="gru")
BEHAVIOR_MAP = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "buy"}


def load_ciao(path: Path) -> pa.Table:
    """Ciao ratings CSV -> canonical events (one 'review' per row; exact duplicates dropped)."""
    frame = pd.read_csv(path).drop_duplicates()
    return _table(frame["user_id"], frame["item_id"], frame["category_id"], "review",
                  pd.to_datetime(frame["timestamp"], unit="s", utc=True), frame["rating"].astype(float))


def load_taobao(paths: list[Path]) -> pa.Table:
    """Taobao UserBehavior CSVs -> canonical events inside the official window, duplicates dropped."""
    names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    frame = pd.concat([pd.read_csv(p, header=None, names=names) for p in paths]).drop_duplicates()
    frame = frame[(frame["timestamp"] >= 1511539200) & (frame["timestamp"] <= 1512316799)]
    return _table(frame["user_id"], frame["item_id"], frame["category_id"], frame["behavior_type"].map(BEHAVIOR_MAP),
                  pd.to_datetime(frame["timestamp"], unit="s", utc=True), pd.Series(np.nan, index=frame.index))


def _table(user, item, category, behavior, ts, value) -> pa.Table:
    frame = pd.DataFrame({"user_id": user.astype(str).values, "item_id": item.astype(str).values,
                          "category_id": category.astype(str).values,
                          "behavior": behavior.values if isinstance(behavior, pd.Series) else behavior,
                          "ts": ts.astype("datetime64[us, UTC]").values, "value": value.values})
    return pa.Table.from_pandas(frame, schema=EVENT_SCHEMA, preserve_index=False)


def run(data: str, overrides: dict, n_boot: int, use_repeat: bool = True, fit_options: dict | None = None) -> dict:
    if not DATA.is_dir():
        raise SystemExit(f"real data folder {DATA} is absent")
    base = CIAO_SETTINGS if data == "ciao" else TAOBAO_SETTINGS
    settings = load_settings(environ={}, **{**base, **overrides})
    events = (load_ciao(DATA / "ciao" / "ciao_ratings.csv.gz") if data == "ciao" else
              load_taobao([DATA / "taobao" / "UserBehavior_head.csv", DATA / "taobao" / "UserBehavior_tail.csv"]))
    started = time.perf_counter()
    encoded = encode_events(events, settings)
    encode_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Dataset.write(encoded, Path(tmp) / "dataset")
        fit = fit_model(dataset, settings, use_repeat=use_repeat, **(fit_options or {}))
        test = encoded.examples["test"]
        inputs, _, _ = to_model_inputs(test, dataset.vocab.n_categories, dataset.config.seq_len)
        t0 = time.perf_counter()
        probs = predict_proba(fit.model, inputs)
        predict_s = time.perf_counter() - t0
        ks = tuple(settings.eval_ks)
        result = evaluate_dataset(dataset, probs, ks, examples=test, seed=settings.seed)
        t0 = time.perf_counter()
        published_report = _published(settings, fit.model, dataset, encoded, n_boot)
        published_report["seconds"] = time.perf_counter() - t0
    summaries, per = result["summaries"], result["per_example"]
    users = np.asarray(test["user_id"].to_pylist())
    table = comparison_table(summaries, ks)
    headline = ["recall_at_5", "ndcg_at_5", "explore_recall_at_3", "gauc"]
    ci = {name: bootstrap_ci(per[name], users, [m for m in headline if m in per[name]], n_boot=n_boot)
          for name in per}
    diffs = {}
    for rival in ("decayed_frequency", "last_day", "popularity", "markov"):
        diffs[rival] = bootstrap_ci(per["model"], users, ["recall_at_5", "ndcg_at_5", "explore_recall_at_3"],
                                    baseline=per[rival], n_boot=n_boot)
    report = {
        "data": data, "settings": {k: str(v) for k, v in base.items()} | {k: str(v) for k, v in overrides.items()},
        "fit_options": {k: str(v) for k, v in (fit_options or {}).items()},
        "examples": encoded.counts(),
        "test_users": int(len(set(users))), "test_asof": [t.date().isoformat() for t in encoded.asof["test"]],
        "categories": len(encoded.vocab.categories), "encode_seconds": encode_s,
        "train_seconds": fit.train_seconds, "encode_train_seconds": encode_s + fit.train_seconds,
        "examples_per_second": fit.examples_per_second,
        "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run, "val_ndcg": fit.best_val_ndcg,
        "predict_seconds": predict_s, "new_category_share": float(np.mean(per["model"]["has_new"])),
        "decay_half_life_horizons": summaries["decayed_frequency"].get("half_life_horizons"),
        "summaries": summaries, "ci": ci, "diff_ci": diffs, "published": published_report,
    }
    pd.set_option("display.width", 250)
    cols = ["recall_at_5", "ndcg_at_5", "precision_at_5", "hitrate_at_5", "recall_at_10", "ndcg_at_10",
            "recall_at_20", "explore_recall_at_3", "explore_recall_at_5", "repeat_recall_at_5",
            "list_explore_recall_at_5", "auc", "gauc", "brier", "migration_auc"]
    print(f"\n== {data}: {report['examples']} examples, {report['test_users']} test users over "
          f"{len(report['test_asof'])} as-of times ({report['test_asof'][0]}..{report['test_asof'][-1]}), "
          f"{report['categories']} categories, {100 * report['new_category_share']:.1f}% of test windows touch a new "
          f"category")
    print(table[[c for c in cols if c in table.columns]].to_string(float_format=lambda x: f"{x:.4f}"))
    print("\n95% bootstrap intervals over users:")
    for name, values in ci.items():
        print(f"  {name:<18} " + "  ".join(f"{m} [{lo:.4f}, {hi:.4f}]" for m, (lo, hi) in values.items()))
    print("\nmodel minus baseline (95% bootstrap interval of the difference):")
    for name, values in diffs.items():
        print(f"  vs {name:<18} " + "  ".join(
            f"{m} {summaries['model'][m] - summaries[name][m]:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            for m, (lo, hi) in values.items()))
    dec = summaries["decayed_frequency"]
    print(f"\nrelative to decayed_frequency: Recall@5 {100 * (summaries['model']['recall_at_5'] / dec['recall_at_5'] - 1):+.1f}%"
          f", NDCG@5 {100 * (summaries['model']['ndcg_at_5'] / dec['ndcg_at_5'] - 1):+.1f}%")
    print(f"training: {fit.train_seconds:.1f} s, {fit.epochs_run} epochs (best {fit.best_epoch}), "
          f"{fit.examples_per_second:.0f} examples/s; encoding {encode_s:.1f} s; "
          f"scoring {len(probs)} test examples {predict_s:.2f} s; emerging ks {EMERGING_KS}")
    print_published(published_report)
    load = os.getloadavg()
    print(f"encoding + training: {encode_s + fit.train_seconds:.1f} s (load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f})")
    return report


PUBLISHED_HEADLINE = ["recall_at_5", "ndcg_at_5", "explore_recall_at_3"]


def _published(settings, model, dataset, encoded, n_boot: int) -> dict:
    """The published columns at the test as-of times (every look-back user; the scoring engine and
    the outcomes scorer, as the training evaluation does), with bootstrap intervals over users of
    model minus each baseline."""
    activity = encoded.stats.get("activity")  # P(active): published probabilities are unconditional
    scorer = CoreScorer(ModelCore(Predictor(model), dataset.vocab, dataset.config,
                                  ActivityModel.from_dict(activity) if activity else None))
    per_user: dict = {}
    summaries = published_summaries(settings, scorer, encoded.test_events, encoded.asof["test"], per_user=per_user)
    users = np.asarray([key.rsplit("@", 1)[0] for key in per_user["model"]["user_id"].to_pylist()])
    per = {name: {m: np.asarray(t[m].to_numpy(zero_copy_only=False), float) for m in PUBLISHED_HEADLINE}
           for name, t in per_user.items()}
    diffs = {name: bootstrap_ci(per["model"], users, PUBLISHED_HEADLINE, baseline=per[name], n_boot=n_boot)
             for name in per if name != "model"}
    return {"summaries": summaries, "diff_ci": diffs}


def print_published(report: dict) -> None:
    summaries = report["summaries"]
    print("\npublished columns (every look-back user, scoring engine + outcomes scorer):")
    for name, s in summaries.items():
        print(f"  {name:<18} users {s['users']}  " + "  ".join(
            f"{m} {s[m]:.4f}" for m in (*PUBLISHED_HEADLINE, "migration_auc", "fading_precision", "brier")))
    for name, values in report["diff_ci"].items():
        print(f"  model vs {name:<18} " + "  ".join(
            f"{m} {summaries['model'][m] - summaries[name][m]:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            for m, (lo, hi) in values.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("ciao", "taobao"), required=True,
                        help="real data set under ../shared/data: ciao (90-day horizon) or taobao (1-day)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a setting, e.g. --set sequence_encoder=gru")
    parser.add_argument("--no-repeat", action="store_true", help="ablation: model without the repeat path")
    parser.add_argument("--fit", action="append", default=[], metavar="NAME=VALUE",
                        help="fit_model option, e.g. --fit listwise_weight=1.0 --fit residual_base=true")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples of the users for the intervals (default 1000)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hints = typing.get_type_hints(Settings)
    overrides = {}
    for item in args.set:
        name, _, raw = item.partition("=")
        overrides[name] = _parse(name, raw, hints[name])
    fit_options: dict = {}
    for item in args.fit:
        name, _, raw = item.partition("=")
        if name == "listwise_weight":
            fit_options[name] = float(raw)
        elif name == "residual_base":
            fit_options[name] = raw.lower() in ("1", "true", "yes")
        else:
            raise SystemExit(f"--fit {item}: unknown option {name!r} (listwise_weight, residual_base)")
    report = run(args.data, overrides, args.bootstrap, use_repeat=not args.no_repeat, fit_options=fit_options)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
