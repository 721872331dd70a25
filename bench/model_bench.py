"""Benchmark: train and evaluate the interest-migration model and the baselines on real data.

    python bench/model_bench.py --data ciao      # 90-day horizon, 24 monthly test as-of times
    python bench/model_bench.py --data taobao    # 1-day horizon on the head+tail user histories
    python bench/model_bench.py --data ciao --rolling 4   # rolling origin: a model per test block

Reads ../shared/data (read-only), encodes in memory with the project's own functions, trains with
the project's settings, and prints the comparison table with 95% bootstrap intervals (resampling
users), the model-minus-best-baseline differences, the training time and examples/second.
Nothing is written to the repository; scratch files go to a temporary folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from pipelines.config import Settings, _parse, load_settings  # noqa: E402
from pipelines.contracts import EVENT_SCHEMA  # noqa: E402
from pipelines.features.asof import plan_asof_times  # noqa: E402
from pipelines.features.batch import to_model_inputs  # noqa: E402
from pipelines.features.dataset import Dataset  # noqa: E402
from pipelines.features.encoding import encode_events  # noqa: E402
from pipelines.model import outcomes  # noqa: E402
from pipelines.model.activity import ActivityModel  # noqa: E402
from pipelines.model.core import ModelCore  # noqa: E402
from pipelines.model.evaluate import evaluate_dataset  # noqa: E402
from pipelines.model.inference import UnsupportedModel, load_numpy_network  # noqa: E402
from pipelines.model.metrics import EMERGING_KS, bootstrap_ci, comparison_table, summarize  # noqa: E402
from pipelines.model.network import Predictor, predict_proba  # noqa: E402
from pipelines.model.published import published_summaries  # noqa: E402
from pipelines.model.train import fit_model  # noqa: E402
from pipelines.platform.dates import floor_day  # noqa: E402
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


def _settings(data: str, overrides: dict) -> Settings:
    base = CIAO_SETTINGS if data == "ciao" else TAOBAO_SETTINGS
    return load_settings(environ={}, **{**base, **overrides})


def _load(data: str) -> pa.Table:
    if not DATA.is_dir():
        raise SystemExit(f"real data folder {DATA} is absent")
    return (load_ciao(DATA / "ciao" / "ciao_ratings.csv.gz") if data == "ciao" else
            load_taobao([DATA / "taobao" / "UserBehavior_head.csv", DATA / "taobao" / "UserBehavior_tail.csv"]))


def _one_origin(events: pa.Table, settings: Settings, *, use_repeat: bool, fit_options: dict | None,
                data_end: dt.datetime | None = None) -> dict:
    """Encode, train and evaluate once (one training run, one test block): the example-level
    summaries and per-example metrics, and the published columns' summaries and per-user tables."""
    started = time.perf_counter()
    encoded = encode_events(events, settings, data_end=data_end)
    encode_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Dataset.write(encoded, Path(tmp) / "dataset")
        fit = fit_model(dataset, settings, use_repeat=use_repeat, **(fit_options or {}))
        test = encoded.examples["test"]
        inputs, _, _ = to_model_inputs(test, dataset.vocab.n_categories, dataset.config.seq_len)
        t0 = time.perf_counter()
        probs = predict_proba(fit.model, inputs)
        predict_s = time.perf_counter() - t0
        result = evaluate_dataset(dataset, probs, tuple(settings.eval_ks), examples=test, seed=settings.seed)
        t0 = time.perf_counter()
        published = _published(settings, fit.model, dataset, encoded)
        published["seconds"] = time.perf_counter() - t0
    return {"encoded": encoded, "fit": fit, "encode_s": encode_s, "predict_s": predict_s, "n_test": len(probs),
            "summaries": result["summaries"], "per": result["per_example"],
            "users": np.asarray(test["user_id"].to_pylist()), "published": published}


def _example_report(summaries: dict, per: dict, users: np.ndarray, ks: tuple, n_boot: int) -> dict:
    """Print the example-level table, intervals and model-minus-baseline differences."""
    table = comparison_table(summaries, ks)
    headline = ["recall_at_5", "ndcg_at_5", "explore_recall_at_3", "gauc"]
    ci = {name: bootstrap_ci(per[name], users, [m for m in headline if m in per[name]], n_boot=n_boot)
          for name in per}
    diffs = {}
    for rival in ("decayed_frequency", "last_day", "popularity", "markov"):
        diffs[rival] = bootstrap_ci(per["model"], users, ["recall_at_5", "ndcg_at_5", "explore_recall_at_3"],
                                    baseline=per[rival], n_boot=n_boot)
    pd.set_option("display.width", 250)
    cols = ["recall_at_5", "ndcg_at_5", "precision_at_5", "hitrate_at_5", "recall_at_10", "ndcg_at_10",
            "recall_at_20", "explore_recall_at_3", "explore_recall_at_5", "repeat_recall_at_5",
            "list_explore_recall_at_5", "auc", "gauc", "brier", "migration_auc"]
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
    return {"ci": ci, "diff_ci": diffs}


def run(data: str, overrides: dict, n_boot: int, use_repeat: bool = True, fit_options: dict | None = None) -> dict:
    settings = _settings(data, overrides)
    one = _one_origin(_load(data), settings, use_repeat=use_repeat, fit_options=fit_options)
    encoded, fit, summaries, per, users = one["encoded"], one["fit"], one["summaries"], one["per"], one["users"]
    ks = tuple(settings.eval_ks)
    print(f"\n== {data}: {encoded.counts()} examples, {len(set(users))} test users over "
          f"{len(encoded.asof['test'])} as-of times ({encoded.asof['test'][0].date()}..{encoded.asof['test'][-1].date()}), "
          f"{len(encoded.vocab.categories)} categories, {100 * float(np.mean(per['model']['has_new'])):.1f}% of test "
          f"windows touch a new category")
    example = _example_report(summaries, per, users, ks, n_boot)
    print(f"training: {fit.train_seconds:.1f} s, {fit.epochs_run} epochs (best {fit.best_epoch}), "
          f"{fit.examples_per_second:.0f} examples/s; encoding {one['encode_s']:.1f} s; "
          f"scoring {one['n_test']} test examples {one['predict_s']:.2f} s; emerging ks {EMERGING_KS}")
    published_report = _published_diffs(one["published"], n_boot)
    print_published(published_report)
    load = os.getloadavg()
    print(f"encoding + training: {one['encode_s'] + fit.train_seconds:.1f} s (load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f})")
    return {
        "data": data, "settings": settings.describe(),
        "fit_options": {k: str(v) for k, v in (fit_options or {}).items()},
        "examples": encoded.counts(),
        "test_users": int(len(set(users))), "test_asof": [t.date().isoformat() for t in encoded.asof["test"]],
        "categories": len(encoded.vocab.categories), "encode_seconds": one["encode_s"],
        "train_seconds": fit.train_seconds, "encode_train_seconds": one["encode_s"] + fit.train_seconds,
        "examples_per_second": fit.examples_per_second,
        "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run, "val_ndcg": fit.best_val_ndcg,
        "predict_seconds": one["predict_s"], "new_category_share": float(np.mean(per["model"]["has_new"])),
        "decay_half_life_horizons": summaries["decayed_frequency"].get("half_life_horizons"),
        "summaries": summaries, **example, "published": published_report,
    }


def run_rolling(data: str, overrides: dict, n_boot: int, blocks: int, use_repeat: bool = True,
                fit_options: dict | None = None) -> dict:
    """Rolling origin: the test as-of times of the single-origin run cut into ``blocks``
    consecutive blocks; each block is judged with a model (and a tuned decayed-frequency
    half-life) trained only on data before the block: the events are cut one horizon after the
    block's last as-of time, and the as-of plan puts validation and training before the block,
    as a training run on that day would. Metrics are pooled over the blocks and per block."""
    settings = _settings(data, overrides)
    events = _load(data)
    horizon = dt.timedelta(days=settings.horizon_days)
    # the single-origin run's test as-of times (encode_events plans them the same way)
    test = plan_asof_times(pc.min(events["ts"]).as_py(), floor_day(pc.max(events["ts"]).as_py()) + dt.timedelta(days=1),
                           horizon_days=settings.horizon_days, train_step_days=settings.asof_step_days,
                           eval_step_days=settings.eval_asof_step_days,
                           validation_count=settings.validation_asof_count,
                           test_count=settings.test_asof_count)["test"]
    chunks = [list(c) for c in np.array_split(np.array(test, dtype=object), blocks) if len(c)]
    ts_type = events.schema.field("ts").type
    outs, rows = [], []
    for b, chunk in enumerate(chunks, 1):
        block_end = chunk[-1] + horizon
        block_events = events.filter(pc.less(events["ts"], pa.scalar(block_end, ts_type)))
        block_settings = _settings(data, {**overrides, "test_asof_count": len(chunk)})
        print(f"\n-- block {b}/{len(chunks)}: test as-of {chunk[0].date()}..{chunk[-1].date()}, events before "
              f"{block_end.date()} ({block_events.num_rows:,})", flush=True)
        one = _one_origin(block_events, block_settings, use_repeat=use_repeat, fit_options=fit_options,
                          data_end=block_end)
        if one["encoded"].asof["test"] != chunk:
            raise RuntimeError(f"block {b}: planned test as-of times {one['encoded'].asof['test']} != {chunk}")
        outs.append(one)
        s, ps = one["summaries"], one["published"]["summaries"]
        row = {"block": b, "test": f"{chunk[0].date()}..{chunk[-1].date()}",
               "last_train_asof": one["encoded"].asof["train"][-1].date().isoformat(),
               "test_examples": one["n_test"], "encode_train_s": round(one["encode_s"] + one["fit"].train_seconds, 1),
               "epochs": f"{one['fit'].epochs_run} ({one['fit'].best_epoch})"}
        for m in ("recall_at_5", "ndcg_at_5", "explore_recall_at_3"):
            row[f"{m} model"] = s["model"][m]
            row[f"{m} DF"] = s["decayed_frequency"][m]
        row["explore_recall_at_3 markov"] = s["markov"]["explore_recall_at_3"]
        for m in PUBLISHED_HEADLINE + ["migration_auc"]:
            row[f"published {m} model"] = ps["model"][m]
        row["published explore_recall_at_3 markov"] = ps["markov"]["explore_recall_at_3"]
        rows.append(row)
        print("   " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
              flush=True)
    names = list(outs[0]["per"])
    per = {name: {m: np.concatenate([o["per"][name][m] for o in outs]) for m in outs[0]["per"][name]}
           for name in names}
    users = np.concatenate([o["users"] for o in outs])
    summaries = {name: summarize(per[name]) for name in names}
    print(f"\n== {data}, rolling origin: {len(chunks)} blocks, {len(users)} test examples of {len(set(users))} "
          f"users, pooled (a model per block, trained before it)")
    print(pd.DataFrame(rows).set_index("block").T.to_string(float_format=lambda x: f"{x:.4f}"))
    example = _example_report(summaries, per, users, tuple(settings.eval_ks), n_boot)
    pooled = _pool_published([o["published"] for o in outs])
    published_report = _published_diffs(pooled, n_boot)
    print_published(published_report)
    seconds = [o["encode_s"] + o["fit"].train_seconds for o in outs]
    print(f"encoding + training per block: {', '.join(f'{x:.1f}' for x in seconds)} s "
          f"(load average {os.getloadavg()[0]:.2f})")
    return {"data": data, "settings": settings.describe(), "blocks": rows, "summaries": summaries, **example,
            "published": published_report, "encode_train_seconds": seconds}


PUBLISHED_HEADLINE = ["recall_at_5", "ndcg_at_5", "explore_recall_at_3"]


def _published(settings, model, dataset, encoded) -> dict:
    """The published columns at the test as-of times (every look-back user; the scoring engine and
    the outcomes scorer, as the training evaluation does): summaries and per-user tables by name."""
    activity = encoded.stats.get("activity")  # P(active): published probabilities are unconditional
    scorer = CoreScorer(ModelCore(_scoring_network(settings, model), dataset.vocab, dataset.config,
                                  ActivityModel.from_dict(activity) if activity else None))
    per_user: dict = {}
    summaries = published_summaries(settings, scorer, encoded.test_events, encoded.asof["test"], per_user=per_user)
    return {"summaries": summaries, "per_user": per_user}


def _scoring_network(settings, model):
    """What daily scoring runs for ``model``: the numpy network (``scoring_runtime`` numpy and an
    architecture it runs), else the Keras model."""
    if settings.scoring_runtime == "numpy":
        with tempfile.TemporaryDirectory() as tmp:
            model.save(Path(tmp) / "model.keras")
            try:
                return load_numpy_network(Path(tmp) / "model.keras")
            except UnsupportedModel:
                pass
    return Predictor(model)


def _pool_published(blocks: list[dict]) -> dict:
    """Published summaries pooled over blocks: list metrics as means over the pooled per-user
    rows, the migration AUC over the pooled scores, fading precision and Brier weighted by their
    counts (Brier: by scored pairs, so exactly the pooled mean)."""
    per_user = {name: pa.concat_tables([b["per_user"][name] for b in blocks]) for name in blocks[0]["per_user"]}
    summaries = {}
    for name, table in per_user.items():
        col = {c: np.asarray(table[c].to_numpy(zero_copy_only=False), float) for c in table.column_names
               if c != "user_id"}
        parts = [b["summaries"][name] for b in blocks]
        pairs = sum(p["scored_pairs"] for p in parts)
        scored = np.isfinite(col["migration_score"])
        summaries[name] = {
            "users": table.num_rows,
            **{m: float(np.nanmean(col[m])) for m in PUBLISHED_HEADLINE},
            "migration_auc": outcomes.auc(col["migration_score"][scored], col["adopted_new"][scored].astype(bool)),
            "fading_precision": float(col["fading_untouched"].sum() / max(col["fading_listed"].sum(), 1)),
            "brier": float(sum(p["brier"] * p["scored_pairs"] for p in parts) / max(pairs, 1)),
        }
    return {"summaries": summaries, "per_user": per_user}


def _published_diffs(published: dict, n_boot: int) -> dict:
    """Bootstrap intervals over users of model minus each baseline on the published columns."""
    per_user = published["per_user"]
    users = np.asarray([key.rsplit("@", 1)[0] for key in per_user["model"]["user_id"].to_pylist()])
    per = {name: {m: np.asarray(t[m].to_numpy(zero_copy_only=False), float) for m in PUBLISHED_HEADLINE}
           for name, t in per_user.items()}
    diffs = {name: bootstrap_ci(per["model"], users, PUBLISHED_HEADLINE, baseline=per[name], n_boot=n_boot)
             for name in per if name != "model"}
    return {"summaries": published["summaries"], "diff_ci": diffs}


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
    parser.add_argument("--rolling", type=int, default=0, metavar="BLOCKS",
                        help="rolling origin: cut the test as-of times into BLOCKS blocks and judge each with a "
                             "model trained only on data before it (BLOCKS training runs); 0 = one training run")
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
        elif name == "recency_half_life_days":
            fit_options[name] = float(raw)
        else:
            raise SystemExit(f"--fit {item}: unknown option {name!r} (listwise_weight, residual_base, "
                             "recency_half_life_days)")
    if args.rolling < 0:
        raise SystemExit(f"--rolling {args.rolling}: give a number of blocks (0 = off)")
    if args.rolling:
        report = run_rolling(args.data, overrides, args.bootstrap, args.rolling, use_repeat=not args.no_repeat,
                             fit_options=fit_options)
    else:
        report = run(args.data, overrides, args.bootstrap, use_repeat=not args.no_repeat, fit_options=fit_options)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
