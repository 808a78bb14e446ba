"""Prompt features and the request-class predictor on Spec-Bench, shown.

Measures, and writes to ``benchmarks/results/features.{json,md}``:

1. latency per prompt, p50/p99 over all Spec-Bench first turns (and over the 2,500-3,500-character ones):
   the hand-crafted features (``prompt_feature_row``), the whole stateless feature union on one prompt
   (``transform([prompt])``), ``PromptClassifier.predict_one`` (the request-time path) and, for contrast,
   ``predict_proba([prompt])`` through scikit-learn;
2. held-out accuracy per category: stratified 50/50 split by category (``--seed``), ``fit`` on one half,
   scored on the other; the most frequent confusions; overall accuracy over ``--seeds`` further splits; and the
   accuracy of one online pass of ``partial_fit`` in batches of 20;
3. the size of the saved JSON file.

    python benchmarks/features.py                    # about 15 s on a busy 2-core machine
    python benchmarks/features.py --repeats 5 --seeds 10
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adaptive_spec.policy.classifier import PromptClassifier  # noqa: E402
from adaptive_spec.policy.features import FEATURES, prompt_feature_row  # noqa: E402

DATA = Path("/work/shared/data/spec_bench_questions.jsonl")


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    samples = sorted(samples_ns)
    return {
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000,
        "mean_us": statistics.fmean(samples) / 1000,
        "n": len(samples),
    }


def time_each(fn, prompts: list[str], repeats: int) -> list[int]:
    """Nanoseconds per call, one sample per prompt per repeat (after one warm-up pass); GC off while timing."""
    for p in prompts:
        fn(p)
    samples = []
    gc.disable()
    try:
        for _ in range(repeats):
            for p in prompts:
                start = time.perf_counter_ns()
                fn(p)
                samples.append(time.perf_counter_ns() - start)
    finally:
        gc.enable()
    return samples


def latency(clf: PromptClassifier, prompts: list[str], repeats: int) -> dict:
    long = [p for p in prompts if 2500 <= len(p) <= 3500]
    union = clf.features_
    paths = {
        "hand_crafted": prompt_feature_row,
        "feature_union": lambda p: union.transform([p]),
        "predict_one": clf.predict_one,
        "predict_proba_sklearn": lambda p: clf.predict_proba([p]),
    }
    out = {}
    for name, fn in paths.items():
        r = repeats if name != "predict_proba_sklearn" else 1
        out[name] = {
            "all": percentiles(time_each(fn, prompts, r)),
            "chars_2500_3500": percentiles(time_each(fn, long, r)),
        }
    start = time.perf_counter()
    union.transform(prompts)
    out["feature_union_batch_us_per_prompt"] = (time.perf_counter() - start) / len(prompts) * 1e6
    out["long_prompts"] = len(long)
    return out


def accuracy(prompts: np.ndarray, labels: np.ndarray, seed: int, seeds: int) -> dict:
    train, test = train_test_split(np.arange(len(labels)), test_size=0.5, stratify=labels, random_state=seed)
    start = time.perf_counter()
    clf = PromptClassifier(random_state=seed).fit(list(prompts[train]), labels[train])
    fit_s = time.perf_counter() - start
    predicted = clf.predict(list(prompts[test]))
    truth = labels[test]
    per_category = {}
    for c in sorted(set(labels)):
        mask = truth == c
        wrong = collections.Counter(predicted[mask & (predicted != c)].tolist())
        per_category[c] = {
            "test_prompts": int(mask.sum()),
            "accuracy": float(np.mean(predicted[mask] == c)),
            "predicted_as": dict(wrong.most_common()),
        }
    pairs = collections.Counter(zip(truth[predicted != truth].tolist(), predicted[predicted != truth].tolist()))
    mt_bench = [c for c in per_category if per_category[c]["test_prompts"] <= 5]
    in_mt = np.isin(truth, mt_bench)

    others = []
    for s in range(seed + 1, seed + 1 + seeds):
        tr, te = train_test_split(np.arange(len(labels)), test_size=0.5, stratify=labels, random_state=s)
        m = PromptClassifier(random_state=s).fit(list(prompts[tr]), labels[tr])
        others.append(m.score(list(prompts[te]), labels[te]))

    online = PromptClassifier(random_state=seed)
    order = np.random.default_rng(seed).permutation(train)
    for batch in np.array_split(order, max(1, len(order) // 20)):
        online.partial_fit(list(prompts[batch]), labels[batch], classes=np.unique(labels))

    return {
        "seed": seed,
        "train_prompts": len(train),
        "test_prompts": len(test),
        "fit_seconds": fit_s,
        "accuracy": float(np.mean(predicted == truth)),
        "accuracy_spec_bench_80_each": float(np.mean(predicted[~in_mt] == truth[~in_mt])),
        "accuracy_mt_bench_5_each": float(np.mean(predicted[in_mt] == truth[in_mt])),
        "chance_majority": float(max(collections.Counter(truth.tolist()).values()) / len(truth)),
        "per_category": per_category,
        "top_confusions": [{"true": t, "predicted": p, "count": n} for (t, p), n in pairs.most_common(10)],
        "other_splits": {"seeds": seeds, "accuracy": others,
                         "mean": statistics.fmean(others) if others else None,
                         "min": min(others) if others else None, "max": max(others) if others else None},
        "online_one_pass_batches_of_20": online.score(list(prompts[test]), truth),
        "model": clf,
    }


def markdown(report: dict) -> str:
    lat, acc = report["latency"], report["accuracy"]
    lines = [
        "# Prompt features and request-class predictor (Spec-Bench)",
        "",
        f"{report['date']}, {report['machine']}; Python {report['python']}, scikit-learn {report['sklearn']}. "
        f"`{report['command']}`",
        "",
        f"{report['note']}",
        "",
        f"## Latency per prompt (µs; {report['prompts']} prompts x {report['repeats']} repeats; "
        f"{lat['long_prompts']} prompts of 2,500-3,500 characters)",
        "",
        "| path | p50 all | p99 all | p50 2.5-3.5k chars | p99 2.5-3.5k chars |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("hand_crafted", "feature_union", "predict_one", "predict_proba_sklearn"):
        a, b = lat[name]["all"], lat[name]["chars_2500_3500"]
        lines.append(f"| {name} | {a['p50_us']:.0f} | {a['p99_us']:.0f} | {b['p50_us']:.0f} | {b['p99_us']:.0f} |")
    lines += [
        "",
        f"Feature union on all prompts in one batch: {lat['feature_union_batch_us_per_prompt']:.0f} µs per prompt. "
        f"{len(FEATURES)} hand-crafted features + {report['hashing_buckets']} hashed word 1-2-gram buckets.",
        "",
        f"## Held-out accuracy (stratified 50/50 split, seed {acc['seed']}: {acc['train_prompts']} train, "
        f"{acc['test_prompts']} test)",
        "",
        f"Overall **{acc['accuracy']:.3f}** (majority-class chance {acc['chance_majority']:.3f}); "
        f"the five 80-prompt categories {acc['accuracy_spec_bench_80_each']:.3f}; "
        f"the eight MT-bench categories (5 test prompts each) {acc['accuracy_mt_bench_5_each']:.3f}. "
        f"Fit: {acc['fit_seconds']:.2f} s. Over {acc['other_splits']['seeds']} other splits: mean "
        f"{acc['other_splits']['mean']:.3f} (min {acc['other_splits']['min']:.3f}, max "
        f"{acc['other_splits']['max']:.3f}). One online pass of `partial_fit` in batches of 20: "
        f"{acc['online_one_pass_batches_of_20']:.3f}.",
        "",
        "| category | test prompts | accuracy | mistaken for |",
        "|---|---:|---:|---|",
    ]
    for c, row in acc["per_category"].items():
        wrong = ", ".join(f"{k} {v}" for k, v in row["predicted_as"].items()) or "-"
        lines.append(f"| {c} | {row['test_prompts']} | {row['accuracy']:.2f} | {wrong} |")
    lines += ["", "Most frequent confusions (true → predicted):", ""]
    lines += [f"- {x['true']} → {x['predicted']}: {x['count']}" for x in acc["top_confusions"]]
    lines += ["", f"Saved classifier (JSON, sparse weights): {report['json_bytes'] / 1e6:.1f} MB.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=0, help="split and SGD seed")
    parser.add_argument("--seeds", type=int, default=5, help="further splits for the accuracy spread")
    parser.add_argument("--repeats", type=int, default=3, help="timing passes over the prompts")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    prompts = np.array([r["turns"][0] for r in rows], dtype=object)
    labels = np.array([r["category"] for r in rows])

    acc = accuracy(prompts, labels, args.seed, args.seeds)
    clf = acc.pop("model")
    lat = latency(clf, list(prompts), args.repeats)
    report = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python benchmarks/features.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "note": "Single-threaded pure-Python timings on a shared machine (another measurement job was using both "
        "cores), so absolute latencies are pessimistic; accuracy figures are deterministic for a given seed.",
        "prompts": len(prompts),
        "repeats": args.repeats,
        "hashing_buckets": clf.n_features,
        "latency": lat,
        "accuracy": acc,
        "json_bytes": len(clf.to_json().encode()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "features.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "features.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
