"""Policy benchmark (replay): the trained policy against the per-request oracle, and how fast a cold start warms up.

On Spec-Bench traces of the reference pair, split per class into a training and a held-out half:

1. the policy fitted on the training half (``train-policy``) replayed on the held-out half after warming its
   store on the training half, against the per-request oracle (each request's best fixed configuration in
   hindsight) — bar: >= 95% of the oracle's throughput;
2. cold start: per class, a stream of 60 requests drawn (with replacement, fixed seed) from the class's traces,
   replayed from an empty store; the running throughput of the last 10 requests against the warm throughput on
   the same traces — bar: >= 90% of warm within 50 requests.

    python benchmarks/policy.py --traces /path/to/traces.jsonl --policy policies/qwen2.5-coder-cpu.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaptive_spec.policy import train as T  # noqa: E402
from adaptive_spec.policy.file import load_policy_file  # noqa: E402
from adaptive_spec.traces.format import read_traces  # noqa: E402
from adaptive_spec.traces.simulate import replay, simulate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def cold_start(traces, cost, config, stream_len: int = 60, window: int = 10, seed: int = 0) -> dict:
    by_class = defaultdict(list)
    for t in traces:
        by_class[t.request_class].append(t)
    rng = random.Random(seed)
    out = {}
    for cls, items in sorted(by_class.items()):
        stream = [rng.choice(items) for _ in range(stream_len)]
        warm = T.adaptive(cost, config)
        simulate(stream, warm, cost)  # one pass to warm the store
        warm_runs = [replay(t, warm, cost) for t in stream]
        cold = T.adaptive(cost, config)
        cold_runs = [replay(t, cold, cost) for t in stream]
        ratios = []  # running ratio of cold to warm throughput over the last `window` requests
        for i in range(len(stream)):
            lo = max(0, i - window + 1)
            c = sum(r.tokens for r in cold_runs[lo : i + 1]) / sum(r.seconds for r in cold_runs[lo : i + 1])
            w = sum(r.tokens for r in warm_runs[lo : i + 1]) / sum(r.seconds for r in warm_runs[lo : i + 1])
            ratios.append(c / w)
        reached = next((i + 1 for i, r in enumerate(ratios) if r >= 0.9 and all(x >= 0.9 for x in ratios[i:])), None)
        first = sum(r.tokens for r in cold_runs[:50]) / sum(r.seconds for r in cold_runs[:50])
        first_warm = sum(r.tokens for r in warm_runs[:50]) / sum(r.seconds for r in warm_runs[:50])
        out[cls] = {"requests_to_90pct": reached, "first_50_vs_warm": first / first_warm, "running_ratio": ratios}
    return out


def decision_cost(traces, cost, config, warm) -> dict:
    """Microseconds per controller decision (``decide``), over every round of a replay of ``traces``."""
    import time

    policy = T.adaptive(cost, config)
    simulate(warm, policy, cost)
    samples: list[float] = []
    start = policy.start

    def timed_start(request):
        session = start(request)
        decide = session.decide

        def timed(state):
            t0 = time.perf_counter()
            decision = decide(state)
            samples.append((time.perf_counter() - t0) * 1e6)
            return decision

        session.decide = timed
        return session

    policy.start = timed_start
    simulate(traces, policy, cost)
    samples.sort()
    return {"p50": samples[len(samples) // 2], "p99": samples[int(0.99 * len(samples))], "count": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, required=True)
    parser.add_argument("--policy", type=Path, default=ROOT / "policies" / "qwen2.5-coder-cpu.json")
    parser.add_argument("--held-out", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "policy")
    args = parser.parse_args()

    policy = load_policy_file(args.policy)
    traces = read_traces(args.traces, pair_id=policy.pair_id)
    train_set, test_set = T.split_by_class(traces, args.held_out, args.seed)
    rows = T.evaluate(test_set, policy.cost, policy.controller, warm=train_set)
    cold = cold_start(traces, policy.cost, policy.controller, seed=args.seed)
    overall = next(r for r in rows if r["class"] == "all")
    summary = {
        "adaptive_vs_per_request_oracle": overall["adaptive_vs_oracle"],
        "adaptive_speedup": overall["adaptive_speedup"],
        "best_fixed": overall["best_fixed"],
        "best_fixed_speedup": overall["best_fixed_tps"] / overall["target_only"],
        "decide_us": decision_cost(test_set, policy.cost, policy.controller, train_set),
        "cold_start_worst_requests_to_90pct": max((c["requests_to_90pct"] or 10**9) for c in cold.values()),
        "rows": rows,
        "cold_start": {c: {k: v for k, v in d.items() if k != "running_ratio"} for c, d in cold.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary | {"cold_start_curves": cold}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(summary, args, len(train_set), len(test_set)))
    plot(cold, args.out.with_name(args.out.name + "_cold_start.png"))
    print(markdown(summary, args, len(train_set), len(test_set)))


def markdown(summary, args, n_train, n_test) -> str:
    lines = ["# Policy benchmark (exact replay, calibrated costs)", "",
             f"Traces: `{args.traces.name}`, {n_train} training / {n_test} held-out requests; policy "
             f"`{args.policy.name}`. Command: `python benchmarks/policy.py --traces {args.traces} --policy {args.policy.relative_to(ROOT) if args.policy.is_relative_to(ROOT) else args.policy}`.",
             "", "| class | requests | target tok/s | best fixed (speedup) | adaptive speedup | oracle speedup | adaptive/oracle |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary["rows"]:
        lines.append(f"| {r['class']} | {r['requests']} | {r['target_only']:.2f} | {r['best_fixed']} "
                     f"({r['best_fixed_tps'] / r['target_only']:.2f}x) | {r['adaptive_speedup']:.2f}x | "
                     f"{r['oracle_tps'] / r['target_only']:.2f}x | {r['adaptive_vs_oracle'] * 100:.1f}% |")  # fmt: skip
    lines += ["", f"- held-out adaptive / per-request oracle: **{summary['adaptive_vs_per_request_oracle'] * 100:.1f}%** "
              "(bar >= 95%)",
              f"- controller decision cost (replay, every held-out round): p50 {summary['decide_us']['p50']:.1f} us, "
              f"p99 {summary['decide_us']['p99']:.1f} us over {summary['decide_us']['count']} decisions (bar p50 <= 50 us)",
              "", "Cold start (empty store, 60-request stream per class, 10-request window):", "",
              "| class | requests until >= 90% of warm (and staying) | first 50 requests vs warm |", "|---|---|---|"]  # fmt: skip
    for c, d in summary["cold_start"].items():
        lines.append(f"| {c} | {d['requests_to_90pct']} | {d['first_50_vs_warm'] * 100:.1f}% |")
    return "\n".join(lines) + "\n"


def plot(cold, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for cls, d in cold.items():
        ax.plot(range(1, len(d["running_ratio"]) + 1), d["running_ratio"], lw=1, label=cls)
    ax.axhline(0.9, color="gray", ls="--")
    ax.set_xlabel("requests of the class since a cold start")
    ax.set_ylabel("throughput / warm (10-request window)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
