"""Siblings: the draft's second choices verified beside its first, end to end on the reference pair (greedy).

On this CPU a target forward costs about the same for 1 to 5 tokens, so verifying the draft's second choice at
its uncertain positions costs almost nothing, and about half of the draft's misses are its second choice (measured
on the 52 committed traces). This runs, interleaved per prompt with the order rotated, in one process: target-only,
a fixed model draft with and without siblings, and the adaptive controller (committed policy, cold in-memory store
each) with and without siblings. It also times the verify forward as a chain and as a tree of the same width (what
the 4D attention mask costs) and, in bf16, how often each configuration's output equals target-only's.

    python benchmarks/siblings.py --traces notebooks/data/traces_small.jsonl --per-category 1     # ~35 min

Writes ``benchmarks/results/siblings.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaptive_spec.engine.kv import CachedLM, Tree  # noqa: E402
from adaptive_spec.generator import AdaptiveGenerator, policy_from_file  # noqa: E402
from adaptive_spec.models import configure_threads, load_pair  # noqa: E402
from adaptive_spec.policy.base import FixedPolicy  # noqa: E402
from adaptive_spec.policy.file import load_policy_file  # noqa: E402
from adaptive_spec.prompts import chat_ids  # noqa: E402
from adaptive_spec.traces.format import read_traces  # noqa: E402
from results_files import write_results  # noqa: E402  (benchmarks/results_files.py)

RESULTS = ROOT / "benchmarks" / "results"


def pick(traces, per_category: int) -> list:
    """The first ``per_category`` traces of each category, categories alternating."""
    by_class = defaultdict(list)
    for t in traces:
        if len(by_class[t.request_class]) < per_category:
            by_class[t.request_class].append(t)
    return [group[i] for i in range(per_category) for group in by_class.values() if i < len(group)]


@torch.inference_mode()
def tree_overhead(target, prompt_ids: torch.Tensor, widths=(3, 5, 8), reps: int = 5) -> dict:
    """Median ms of a verify forward of w tokens fed as a chain and as a chain-shaped ``Tree`` (the mask path)."""
    lm = CachedLM(target)
    out = {}
    for w in widths:
        times = {"chain": [], "tree": []}
        tokens = prompt_ids[-w:]
        for _ in range(reps):
            for kind in ("chain", "tree"):
                lm.reset()
                lm.forward(prompt_ids)
                start = time.perf_counter()
                lm.forward(tokens, tree=Tree(list(range(-1, w - 1))) if kind == "tree" else None)
                times[kind].append(time.perf_counter() - start)
        out[w] = {kind: round(statistics.median(ts) * 1e3, 1) for kind, ts in times.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, required=True, help="their prompts are used (not their tokens)")
    parser.add_argument("--policy", type=Path, default=ROOT / "policies" / "qwen2.5-coder-cpu.json")
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--below", type=float, default=0.9, help="siblings where the draft's confidence is below")
    parser.add_argument("--fixed-k", type=int, default=2, help="the fixed model draft's k (the best fixed one)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "siblings")
    args = parser.parse_args()

    configure_threads(args.threads)
    started = time.perf_counter()
    policy_file = load_policy_file(args.policy)
    rows = pick(read_traces(args.traces, pair_id=policy_file.pair_id), args.per_category)
    pair = load_pair(dtype="bfloat16")
    tok = pair.tokenizer
    with_siblings = policy_file.model_copy(
        update={"controller": policy_file.controller.model_copy(update={"sibling_below": args.below})})
    generators = {
        "target-only": AdaptiveGenerator(pair.target, pair.draft, tok, policy=FixedPolicy()),
        f"model k={args.fixed_k}": AdaptiveGenerator(pair.target, pair.draft, tok, policy=FixedPolicy("model", args.fixed_k)),
        f"model k={args.fixed_k} + siblings": AdaptiveGenerator(
            pair.target, pair.draft, tok, policy=FixedPolicy("model", args.fixed_k, sibling_below=args.below)),
        "adaptive (cold)": AdaptiveGenerator(pair.target, pair.draft, tok, policy=policy_from_file(policy_file)),
        "adaptive + siblings (cold)": AdaptiveGenerator(pair.target, pair.draft, tok,
                                                        policy=policy_from_file(with_siblings)),
    }  # fmt: skip
    names = list(generators)
    warm = chat_ids(tok, "Say hi.")
    for name in names[:3]:  # the adaptive ones' stores must start empty
        generators[name].generate(warm, max_new_tokens=8)
    overhead = tree_overhead(pair.target, chat_ids(tok, rows[0].prompt)[0])
    print("verify ms, chain vs tree:", overhead, flush=True)

    runs = []
    for p, row in enumerate(rows):
        ids = chat_ids(tok, row.prompt)
        order = names[p % len(names) :] + names[: p % len(names)]
        for name in order:
            start = time.perf_counter()
            out = generators[name].generate(ids, max_new_tokens=args.max_new_tokens, prompt_text=row.prompt)
            seconds = time.perf_counter() - start
            records = out.result.records
            runs.append({"prompt": p, "class": row.request_class, "config": name, "tokens": out.result.num_new_tokens,
                         "seconds": seconds, "proposed": out.result.proposed, "accepted": out.result.accepted,
                         "siblings": sum(r.siblings for r in records),
                         "sibling_accepted": sum(r.sibling_accepted for r in records),
                         "model_rounds": sum(1 for r in records if r.drafter == "model"),
                         "output": out.result.new_tokens.tolist()})  # fmt: skip
        print(f"[{p + 1}/{len(rows)}] {row.request_class} {time.perf_counter() - started:.0f} s", flush=True)

    doc = {"meta": {"prompts": len(rows), "per_category": args.per_category, "below": args.below,
                    "max_new_tokens": args.max_new_tokens, "threads": args.threads, "dtype": "bfloat16",
                    "seconds": round(time.perf_counter() - started), "command": "python " + " ".join(sys.argv)},
           "verify_ms_chain_vs_tree": overhead, "summary": summarize(runs, names), "runs": runs}  # fmt: skip
    write_results(args.out, doc, markdown(doc))


def summarize(runs: list[dict], names: list[str]) -> dict:
    def rate(rs):
        return sum(r["tokens"] for r in rs) / sum(r["seconds"] for r in rs)

    by = defaultdict(list)
    for r in runs:
        by[(r["config"], r["class"])].append(r)
        by[(r["config"], "all")].append(r)
    classes = sorted({r["class"] for r in runs}) + ["all"]
    reference = {r["prompt"]: r["output"] for r in runs if r["config"] == "target-only"}
    out = {"tokens_per_s": {n: {c: rate(by[(n, c)]) for c in classes} for n in names}, "configs": {}}
    for n in names:
        rs = by[(n, "all")]
        out["configs"][n] = {
            "speedup": rate(rs) / out["tokens_per_s"]["target-only"]["all"],
            "siblings": sum(r["siblings"] for r in rs),
            "sibling_accepted": sum(r["sibling_accepted"] for r in rs),
            "alpha": sum(r["accepted"] for r in rs) / max(1, sum(r["proposed"] for r in rs)),
            "outputs_equal_target": sum(r["output"] == reference[r["prompt"]] for r in rs) / len(rs),
        }
    return out


def markdown(doc: dict) -> str:
    meta, summary = doc["meta"], doc["summary"]
    tps, configs = summary["tokens_per_s"], summary["configs"]
    names = list(tps)
    fixed, fixed_sib, adaptive, adaptive_sib = names[1:5]
    lines = [
        "# Siblings: the draft's second choices verified beside its first (greedy)",
        "",
        f"Reference pair, bf16, {meta['threads']} threads, greedy, {meta['max_new_tokens']} new tokens, "
        f"{meta['prompts']} Spec-Bench prompts ({meta['per_category']} per category, from the committed traces' "
        f"prompts), siblings where the draft's confidence < {meta['below']}, configurations interleaved per prompt "
        f"with the order rotated; {meta['seconds']} s. Command: `{meta['command']}`.",
        "",
        "| configuration | tok/s | vs target-only | α (draft) | siblings accepted / verified | output = target-only (bf16) |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        c = configs[n]
        sib = f"{c['sibling_accepted']} / {c['siblings']}" if c["siblings"] else "-"
        lines.append(f"| {n} | {tps[n]['all']:.2f} | {c['speedup']:.3f}× | {c['alpha']:.2f} | {sib} | "
                     f"{c['outputs_equal_target']:.0%} |")  # fmt: skip
    ratio = lambda a, b: tps[a]["all"] / tps[b]["all"]  # noqa: E731
    lines += [
        "",
        f"- siblings on the fixed draft: **{ratio(fixed_sib, fixed):.3f}** ({fixed_sib} / {fixed})",
        f"- siblings on the controller: **{ratio(adaptive_sib, adaptive):.3f}** ({adaptive_sib} / {adaptive})",
        f"- controller with siblings / the fixed draft without: **{ratio(adaptive_sib, fixed):.3f}**; "
        f"/ the fixed draft with siblings: {ratio(adaptive_sib, fixed_sib):.3f}; controller without / fixed without: "
        f"{ratio(adaptive, fixed):.3f}",
        "",
        "Verify forward, median ms, the same tokens fed as a chain and as a chain-shaped tree (the 4D-mask path): "
        + "; ".join(f"{w} tokens {v['chain']} vs {v['tree']}" for w, v in doc["verify_ms_chain_vs_tree"].items()),
        "",
        "Per category, tok/s:",
        "",
        "| class | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for c in tps[names[0]]:
        lines.append(f"| {c} | " + " | ".join(f"{tps[n][c]:.2f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
