"""Does the cost model price the forwards that real runs pay? Every forward, measured against its price.

The controller and replay trust the calibrated table literally, so a forward shape it misprices biases every
decision that involves it (and every replayed speedup). This hooks the target and the draft, runs a few
configurations on real prompts (greedy, bf16, 128 new tokens, one prompt per category, back to back per prompt),
and for every forward compares the seconds it took with the policy's price for the same tokens fed and context:
grouped by model and tokens fed (a tree-shaped verify apart), plus the time outside forwards.

    python benchmarks/cost_audit.py --traces notebooks/data/traces_small.jsonl --prompts 6
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaptive_spec.generator import AdaptiveGenerator, policy_from_file  # noqa: E402
from adaptive_spec.models import DEFAULT_PAIR, DRAFT_QUANTIZATIONS, configure_threads, load_pair  # noqa: E402
from adaptive_spec.models.load import quantized_pair_id  # noqa: E402
from adaptive_spec.policy.base import FixedPolicy  # noqa: E402
from adaptive_spec.policy.cost import CostModel  # noqa: E402
from adaptive_spec.policy.file import PolicyFileError, load_policy_file  # noqa: E402
from adaptive_spec.traces.format import read_traces  # noqa: E402

from adaptive import round_robin  # noqa: E402  (benchmarks/adaptive.py: one prompt of each category in turn)
from results_files import write_results  # noqa: E402  (benchmarks/results_files.py)

RESULTS = ROOT / "benchmarks" / "results"
OUTSIDE = "outside forwards"


class ForwardLog:
    """(tokens fed, cached context, seconds, tree-shaped) of every forward of ``model`` while ``on``."""

    def __init__(self, model) -> None:
        self.entries: list[tuple[int, int, float, bool]] = []
        self.on = False
        model.register_forward_pre_hook(self._pre, with_kwargs=True)
        model.register_forward_hook(self._post, with_kwargs=True)

    def _pre(self, module, args, kwargs) -> None:
        cache = kwargs.get("cache")
        self._shape = (kwargs["input_ids"].shape[1], cache.get_seq_length() if cache is not None else 0,
                       kwargs.get("attention_mask") is not None)  # fmt: skip
        self._start = time.perf_counter()

    def _post(self, module, args, kwargs, output) -> None:
        if self.on:
            n, context, tree = self._shape
            self.entries.append((n, context, time.perf_counter() - self._start, tree))


def bucket(model: str, n: int, context: int, tree: bool, cost: CostModel) -> tuple[str, float]:
    """The group a forward falls in and its price."""
    if model == "target" and context == 0:
        return "target prefill", cost.prefill_s(n)
    if model == "target":
        return f"target {n:2d} tokens{' (tree)' if tree else ''}", cost.target(n, context)
    label = f"{n:2d} tokens" if n < 9 else " 9+ tokens"
    return f"draft {label}", cost.drafts["model"](n, context)


def audit(pair, cost: CostModel, configs: dict, traces, max_new_tokens: int) -> dict:
    logs = {"target": ForwardLog(pair.target), "draft": ForwardLog(pair.draft)}
    groups = {name: defaultdict(lambda: [0, 0.0, 0.0]) for name in configs}  # calls, measured, priced
    for p, trace in enumerate(traces):
        ids = torch.tensor([trace.prompt_ids])
        names = list(configs)
        for name in names[p % len(names) :] + names[: p % len(names)]:
            for log in logs.values():
                log.entries.clear()
                log.on = True
            start = time.perf_counter()
            result = configs[name](ids, trace)
            wall = time.perf_counter() - start
            for log in logs.values():
                log.on = False
            inside = 0.0
            for model, log in logs.items():
                for n, context, seconds, tree in log.entries:
                    key, price = bucket(model, n, context, tree, cost)
                    group = groups[name][key]
                    group[0], group[1], group[2] = group[0] + 1, group[1] + seconds, group[2] + price
                    inside += seconds
            outside = groups[name][OUTSIDE]
            outside[0], outside[1] = outside[0] + 1, outside[1] + wall - inside
            print(f"[{p + 1}/{len(traces)}] {trace.request_class:15s} {name:20s} "
                  f"{result.num_new_tokens / wall:6.2f} tok/s", flush=True)  # fmt: skip
    return {name: {key: {"calls": c, "measured_s": m, "priced_s": pr} for key, (c, m, pr) in sorted(g.items())}
            for name, g in groups.items()}  # fmt: skip


def markdown(doc: dict) -> str:
    meta = doc["meta"]
    lines = ["# Cost audit: every forward of real runs against its price", "",
             f"Policy `{meta['policy']}` (cost model measured {meta['measured_at']}), {meta['prompts']} prompts "
             f"(one per category), greedy, bf16, {meta['max_new_tokens']} new tokens. Command: `{meta['command']}`.",
             "", "| configuration | forward | calls | measured s | priced s | measured / priced |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, groups in doc["audit"].items():
        for key, g in groups.items():
            ratio = f"{g['measured_s'] / g['priced_s']:.3f}" if g["priced_s"] else ""
            lines.append(f"| {name} | {key} | {g['calls']} | {g['measured_s']:.2f} | {g['priced_s']:.2f} | {ratio} |")
        forwards = [g for key, g in groups.items() if key != OUTSIDE]
        measured, priced = sum(g["measured_s"] for g in forwards), sum(g["priced_s"] for g in forwards)
        lines.append(f"| {name} | **all forwards** | {sum(g['calls'] for g in forwards)} | {measured:.2f} | "
                     f"{priced:.2f} | **{measured / priced:.3f}** |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, required=True, help="traces whose prompts to run (one per category)")
    parser.add_argument("--policy", type=Path, default=ROOT / "policies" / "qwen2.5-coder-cpu.json")
    parser.add_argument("--draft-quantize", choices=DRAFT_QUANTIZATIONS, default="none")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "cost_audit")
    args = parser.parse_args()

    try:  # the pair this run loads must be the policy's: checked before loading
        policy_file = load_policy_file(args.policy, quantized_pair_id(DEFAULT_PAIR, args.draft_quantize))
    except PolicyFileError as error:
        parser.error(str(error))
    picked = round_robin(list(read_traces(args.traces, pair_id=policy_file.pair_id)))[: args.prompts]
    configure_threads(args.threads)
    pair = load_pair(dtype="bfloat16", draft_quantize=args.draft_quantize)

    def generator(policy):
        return AdaptiveGenerator(pair.target, pair.draft, pair.tokenizer, policy=policy)

    adaptive = generator(policy_from_file(policy_file))
    fixed = {name: generator(policy) for name, policy in
             {"model k=2": FixedPolicy("model", 2), "hybrid k=4 thr=0.7": FixedPolicy("hybrid", 4, 0.7),
              "target-only": FixedPolicy()}.items()}  # fmt: skip
    configs = {"adaptive": lambda ids, t: adaptive.generate(ids, max_new_tokens=args.max_new_tokens,
                                                            prompt_text=t.prompt).result}  # fmt: skip
    for name, gen in fixed.items():
        configs[name] = lambda ids, t, gen=gen: gen.generate(ids, max_new_tokens=args.max_new_tokens).result
    warm = torch.tensor([picked[0].prompt_ids])
    for gen in fixed.values():
        gen.generate(warm, max_new_tokens=8)
    result = audit(pair, policy_file.cost, configs, picked, args.max_new_tokens)
    policy = args.policy.resolve()
    shown = policy.relative_to(ROOT) if policy.is_relative_to(ROOT) else policy
    meta = {"policy": str(shown), "measured_at": policy_file.cost.measured_at, "prompts": len(picked),
            "max_new_tokens": args.max_new_tokens, "command": "python " + " ".join(sys.argv)}  # fmt: skip
    doc = {"meta": meta, "audit": result}
    write_results(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
