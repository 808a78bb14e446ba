"""The adaptive controller with and without a draft head, replayed on traces that hold the head's columns.

The live comparison (``head.py --controller-only``) takes ~9 minutes for 18 prompts, and one changed decision early
in a request shifts everything after it, so a ratio near 1 moves by a percent between variants. Replay prices the
same decisions in seconds, on as many traced prompts as there are: traces from ``adaptive-spec profile --head DIR``
(the head's own chains recorded), replayed in file order, each configuration with a cold in-memory store, each
request classed by the policy's classifier (as ``AdaptiveGenerator`` does), priced by the policy's cost model
(prefill included). The head's measured acceptance and held-out prompts come from ``--head-dir``, as live.

    python benchmarks/head_replay.py --traces benchmarks/data/head_traces_mix57.jsonl \
        --cost-from benchmarks/results/head.json --head-dir heads/qwen2.5-coder-code
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from results_files import write_results

from adaptive_spec.distill.head import head_heldout_alpha, head_heldout_prompts
from adaptive_spec.generator import policy_from_file
from adaptive_spec.policy.cost import CostModel
from adaptive_spec.policy.file import load_policy_file
from adaptive_spec.traces.format import read_traces
from adaptive_spec.traces.simulate import replay

CONFIGS = ("without head", "with head")


def run(traces, policy_file, head_dir: Path, with_head: bool, max_new_tokens: int) -> list[dict]:
    measured = {"head": head_heldout_alpha(head_dir)} if with_head else None
    policy = policy_from_file(policy_file, model_drafters=["model", "head"] if with_head else ["model"],
                              measured_alpha=measured)  # fmt: skip
    if with_head:
        policy.align_measured_alpha("head", head_heldout_prompts(head_dir))
    runs = []
    for trace in traces:
        predicted = str(policy.classifier.predict_one(trace.prompt)[0]) if policy.classifier else trace.request_class
        result = replay(trace, policy, policy_file.cost, max_new_tokens, request_class=predicted)
        used = defaultdict(lambda: [0, 0, 0])
        for record in result.records:
            if record.proposed:
                entry = used[record.drafter.split(".")[0]]
                entry[0], entry[1], entry[2] = entry[0] + 1, entry[1] + record.proposed, entry[2] + record.accepted
        runs.append({"class": trace.request_class, "predicted_class": predicted, "tokens": result.tokens,
                     "seconds": result.seconds, "rounds": dict(used),
                     "shadows": sum(1 for r in result.records if r.shadow),
                     "class_side": result.report.extra.get("class_side", {})})  # fmt: skip
    return runs


def summary(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for cls in sorted({r["class"] for r in runs[CONFIGS[0]]}) + ["all"]:
        entry = {}
        for name in CONFIGS:
            chosen = [r for r in runs[name] if cls in (r["class"], "all")]
            entry[name] = sum(r["tokens"] for r in chosen) / sum(r["seconds"] for r in chosen)
        entry["ratio"] = entry["with head"] / entry["without head"]
        entry["prompts"] = sum(1 for r in runs[CONFIGS[0]] if cls in (r["class"], "all"))
        out[cls] = entry
    return out


def markdown(doc: dict) -> str:
    meta = doc["meta"]
    lines = ["# The controller with and without the draft head, replayed", "",
             f"{meta['traces']} traced prompts ({', '.join(meta['trace_files'])}), greedy, at most "
             f"{meta['max_new_tokens']} new tokens; head `{meta['head_dir']}`; policy `{meta['policy']}`, cost model "
             f"{meta['cost_from'] or 'its own'} ({meta['hardware']}); controller overrides {meta['set'] or 'none'}. "
             f"Command: `{meta['command']}`.", "",
             "| class | prompts | without head tok/s | with head tok/s | ratio (bar > 1 on all) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for cls, e in doc["summary"].items():
        name = f"**{cls}**" if cls == "all" else cls
        row = f"| {name} | {e['prompts']} | {e['without head']:.2f} | {e['with head']:.2f} | {e['ratio']:.3f} |"
        lines.append(row)
    totals = {name: defaultdict(lambda: [0, 0, 0]) for name in CONFIGS}
    for name in CONFIGS:
        for r in doc["runs"][name]:
            for drafter, (rounds, proposed, accepted) in r["rounds"].items():
                t = totals[name][drafter]
                t[0], t[1], t[2] = t[0] + rounds, t[1] + proposed, t[2] + accepted
    shadows = sum(r["shadows"] for r in doc["runs"]["with head"])
    lines += ["", "Rounds by drafter (rounds, acceptance): " + "; ".join(
        f"{name}: " + ", ".join(f"{d} {t[0]} ({t[2] / t[1]:.2f})" for d, t in sorted(totals[name].items()))
        for name in CONFIGS) + f"; shadow tokens asked: {shadows}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, nargs="+", required=True, help="traces with the head's columns")
    parser.add_argument("--policy", type=Path, default=Path("policies/qwen2.5-coder-cpu.json"))
    parser.add_argument("--cost-from", type=Path, default=None,
                        help="a results JSON whose 'cost_model' (with the head's prices) replaces the policy's")
    parser.add_argument("--head-dir", type=Path, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--set", nargs="*", default=[], help="controller overrides key=JSON, e.g. shadow_rounds=0")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/head_replay"))
    args = parser.parse_args()
    traces = read_traces(args.traces)
    missing = [t.request_id for t in traces if "head" not in t.drafts]
    if missing:
        sys.exit(f"{len(missing)} traces have no head columns (profile --head DIR), e.g. {missing[0]}")
    policy_file = load_policy_file(args.policy)
    if args.cost_from is not None:
        cost = CostModel.model_validate(json.loads(args.cost_from.read_text())["cost_model"])
        policy_file = policy_file.model_copy(update={"cost": cost})
    if "head" not in policy_file.cost.drafts:
        sys.exit("the cost model has no head prices (calibrate --head DIR, or --cost-from a head benchmark's JSON)")
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    policy_file = policy_file.model_copy(update={"controller": policy_file.controller.model_copy(update=overrides)})
    runs = {name: run(traces, policy_file, args.head_dir, name == "with head", args.max_new_tokens) for name in CONFIGS}
    meta = {"traces": len(traces), "trace_files": [str(p) for p in args.traces], "policy": str(args.policy),
            "cost_from": str(args.cost_from) if args.cost_from else None,
            "head_dir": str(args.head_dir), "max_new_tokens": args.max_new_tokens, "set": args.set,
            "hardware": policy_file.cost.hardware, "command": "python " + " ".join(sys.argv)}  # fmt: skip
    doc = {"meta": meta, "summary": summary(runs), "runs": runs}
    write_results(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
