"""Cost regimes (replay): how much the controller gains over the best fixed configuration, per measured cost model.

This machine's speed drifts within minutes and differs between days, and not uniformly: one day the draft step
costs a third of a target forward and a 1-token target forward is slower than a 3-token one (the bf16 GEMV path),
another day the draft costs half and the verify grows with width. What the controller can gain over a fixed
configuration depends on that shape: a dear draft makes every model-draft configuration worse and prompt lookup
relatively better. Exact replay of the committed greedy traces, priced in turn by each given cost model (the
policy file's, and those ``benchmarks/adaptive.py --calibrate`` saved): the issue's fixed set (model draft k = 1..8,
prompt lookup), the hybrids, and the controller as committed (cold store). Replay only, decode time only.

    python benchmarks/regimes.py --traces notebooks/data/traces_small.jsonl \
        --cost-from benchmarks/results/adaptive.json benchmarks/results/adaptive_siblings.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaptive_spec.generator import policy_from_file  # noqa: E402
from adaptive_spec.policy.base import FixedPolicy  # noqa: E402
from adaptive_spec.policy.cost import CostModel  # noqa: E402
from adaptive_spec.policy.file import load_policy_file  # noqa: E402
from adaptive_spec.traces.format import read_traces  # noqa: E402
from adaptive_spec.traces.simulate import simulate  # noqa: E402

from adaptive import hindsight, saved_cost_model  # noqa: E402  (the real-run benchmark's fixed sets and replay)
from results_files import write_results  # noqa: E402  (benchmarks/results_files.py)

RESULTS = ROOT / "benchmarks" / "results"
CONTEXT = 200  # where the regime's shape is read off


def regime(traces, policy_file, cost: CostModel, max_new_tokens: int) -> dict:
    """Replayed speedups over target-only under one cost model, and the shape of that cost model."""
    base = simulate(traces, FixedPolicy(), cost, max_new_tokens).throughput()
    best, best_plain, _, throughputs = hindsight(traces, cost, max_new_tokens)
    fixed = {name: throughput / base for name, throughput in throughputs.items()}
    controller = simulate(traces, policy_from_file(policy_file.model_copy(update={"cost": cost})), cost,
                          max_new_tokens).throughput() / base  # fmt: skip
    target = {n: round(cost.target(n, CONTEXT) * 1e3, 1) for n in (1, 2, 3, 5, 9)}
    draft = cost.drafts["model"](1, CONTEXT)
    return {"measured_at": cost.measured_at, "target_ms": target, "draft_ms": round(draft * 1e3, 1),
            "c": draft / cost.target(1, CONTEXT), "best_plain": best_plain.name,
            "best_plain_speedup": fixed[best_plain.name], "best_fixed": best.name,
            "best_fixed_speedup": fixed[best.name], "controller_speedup": controller,
            "controller_vs_best_plain": controller / fixed[best_plain.name],
            "controller_vs_best_fixed": controller / fixed[best.name], "fixed": fixed}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, required=True)
    parser.add_argument("--policy", type=Path, default=ROOT / "policies" / "qwen2.5-coder-cpu.json")
    parser.add_argument("--cost-from", type=Path, nargs="*", default=[],
                        help="benchmarks/adaptive.py results whose calibrated cost models price the replay too")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS / "regimes")
    args = parser.parse_args()

    policy_file = load_policy_file(args.policy)
    traces = list(read_traces(args.traces, pair_id=policy_file.pair_id))
    costs = {"policy file": policy_file.cost}
    for path in args.cost_from:
        costs[path.name] = saved_cost_model(path)
    rows = {}
    for name, cost in costs.items():
        rows[name] = regime(traces, policy_file, cost, args.max_new_tokens)
        r = rows[name]
        print(f"{name}: c {r['c']:.2f}, controller / best plain {r['controller_vs_best_plain']:.3f}", flush=True)
    meta = {"traces": str(args.traces), "prompts": len(traces), "max_new_tokens": args.max_new_tokens,
            "policy": str(args.policy), "command": "python " + " ".join(sys.argv)}
    doc = {"meta": meta, "regimes": rows}
    write_results(args.out, doc, markdown(doc))


def markdown(doc: dict) -> str:
    meta = doc["meta"]
    lines = [
        "# Cost regimes (replay)",
        "",
        f"Exact replay of {meta['prompts']} greedy traces, {meta['max_new_tokens']} new tokens, decode time, priced by "
        f"each cost model in turn (context {CONTEXT} shown). Command: `{meta['command']}`.",
        "",
        "| cost model | measured | target ms (1 / 2 / 3 / 5 / 9 tokens) | draft ms | c | best of model k / lookup | "
        "best fixed | controller | controller / best plain | controller / best fixed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in doc["regimes"].items():
        t = r["target_ms"]
        lines.append(
            f"| {name} | {r['measured_at'][:16]} | {' / '.join(f'{v:.0f}' for v in t.values())} | "
            f"{r['draft_ms']:.0f} | {r['c']:.2f} | {r['best_plain']} {r['best_plain_speedup']:.3f}× | "
            f"{r['best_fixed']} {r['best_fixed_speedup']:.3f}× | {r['controller_speedup']:.3f}× | "
            f"**{r['controller_vs_best_plain']:.3f}** | {r['controller_vs_best_fixed']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
