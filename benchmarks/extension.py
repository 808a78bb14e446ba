"""Lookup extension (replay): prompt lookup continuing a model draft in the same verify forward — what it is worth.

A model draft that starts to reproduce a span of the prompt (or of earlier output) is often right for longer than
the draft was asked to run; prompt lookup can offer the rest of the span for nothing but verify width
(``Decision.extend``). On a verify forward whose cost is nearly flat in width (a CPU target verifying 1..5 tokens,
a GPU at batch size 1) the extension is almost free; where width costs, it can lose.

Exact replay of greedy traces (tokens and acceptance exact; the extension's length after a wrong draft, which only
prices the verify, is the true path's — see ``traces.simulate``), priced by a cost model: fixed configurations and
the controller, each with extensions of 0 (off) .. 8 tokens. Replay only: real runs are what
``benchmarks/adaptive.py`` measures.

    python benchmarks/extension.py --traces notebooks/data/traces_small.jsonl \
        --cost-from benchmarks/results/adaptive.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaptive_spec.generator import policy_from_file  # noqa: E402
from adaptive_spec.policy.base import FixedPolicy  # noqa: E402
from adaptive_spec.policy.file import load_policy_file  # noqa: E402
from adaptive_spec.traces.format import read_traces  # noqa: E402
from adaptive_spec.traces.simulate import simulate  # noqa: E402

from adaptive import saved_cost_model  # noqa: E402  (benchmarks/adaptive.py writes the cost model)
from results_files import write_results  # noqa: E402  (benchmarks/results_files.py)

RESULTS = ROOT / "benchmarks" / "results"
EXTENDS = (0, 2, 4, 8)
FIXED = [("model", 2, 0.0), ("model", 3, 0.0), ("model", 8, 0.7), ("hybrid", 4, 0.7), ("hybrid", 8, 0.7)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, required=True)
    parser.add_argument("--policy", type=Path, default=ROOT / "policies" / "qwen2.5-coder-cpu.json")
    parser.add_argument("--cost-from", type=Path, default=None,
                        help="a benchmarks/adaptive.py result whose calibrated cost model prices the replay "
                             "(default: the policy file's)")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS / "extension")
    args = parser.parse_args()

    policy_file = load_policy_file(args.policy)
    if args.cost_from:
        cost = saved_cost_model(args.cost_from)
        policy_file = policy_file.model_copy(update={"cost": cost})
    cost = policy_file.cost
    traces = list(read_traces(args.traces, pair_id=policy_file.pair_id))
    base = simulate(traces, FixedPolicy(), cost, args.max_new_tokens)
    rows = {}
    for drafter, k, threshold in FIXED:
        for extend in EXTENDS:
            policy = FixedPolicy(drafter, k, threshold, extend=extend)
            family = FixedPolicy(drafter, k, threshold).name
            rows[policy.name] = _row(simulate(traces, policy, cost, args.max_new_tokens), base, family, extend)
    for extend in EXTENDS:
        config = policy_file.controller.model_copy(update={"lookup_extension": extend})
        controller = policy_from_file(policy_file.model_copy(update={"controller": config}))
        name = "controller" + (f" +lookup {extend}" if extend else "")
        rows[name] = _row(simulate(traces, controller, cost, args.max_new_tokens), base, "controller", extend)
    verify = {w: cost.verify_s(w, 300) * 1e3 for w in (1, 2, 3, 5, 9, 17)}
    result = {"meta": {"traces": str(args.traces), "prompts": len(traces), "max_new_tokens": args.max_new_tokens,
                       "cost": str(args.cost_from or args.policy), "verify_ms_at_context_300": verify,
                       "command": "python " + " ".join(sys.argv)},
              "rows": rows}  # fmt: skip
    write_results(args.out, result, markdown(result))


def _row(sim, base, family: str, extend: int) -> dict:
    records = [r for res in sim.results for r in res.records]
    return {"family": family, "extend": extend, "speedup": sim.throughput() / base.throughput(),
            "by_class": {c: sim.throughput(c) / base.throughput(c) for c in sorted(base.by_class)},
            "extension_tokens": sum(r.extension for r in records),
            "extension_accepted": sum(r.extension_accepted for r in records)}  # fmt: skip


def markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    by_family: dict[str, dict[int, dict]] = {}
    for row in rows.values():
        by_family.setdefault(row["family"], {})[row["extend"]] = row
    verify = ", ".join(f"{w}: {ms:.0f}" for w, ms in meta["verify_ms_at_context_300"].items())
    lines = [
        "# Lookup extension (replay)",
        "",
        f"Exact replay of {meta['prompts']} greedy traces ({meta['traces']}, {meta['max_new_tokens']} tokens), priced "
        f"by the cost model of `{meta['cost']}` (verify ms by tokens at context 300 — {verify}). "
        f"Command: `{meta['command']}`.",
        "",
        "Speedup over target-only; extension = prompt lookup may append up to this many tokens after a model draft "
        "(accepted extension tokens / proposed in brackets):",
        "",
        "| configuration | " + " | ".join(f"extension {e}" for e in EXTENDS) + " |",
        "|---|" + "---|" * len(EXTENDS),
    ]
    for family in by_family:
        cells = []
        for e in EXTENDS:
            row = by_family[family].get(e)
            cells.append("-" if row is None else f"{row['speedup']:.3f}" + (
                f" ({row['extension_accepted']}/{row['extension_tokens']})" if e else ""))  # fmt: skip
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
