"""Two policy files end to end: the adaptive generator under each, on the same prompts, interleaved.

For a policy change (a refit after recalibration, new knobs) replay says what it should gain; this says what it
gains on the real pair. Greedy, bf16, cold in-memory store per policy, the policy's own classifier. Per prompt,
both policies back to back (order alternating). Each run is timed and also *priced*: its rounds replayed through
policy A's cost model (prefill, each drafter's forwards with catch-up, each verify's width), which compares the
decisions without the minutes they ran in.

    python benchmarks/policy_ab.py --a old.json --b policies/qwen2.5-coder-cpu.json \\
        --traces notebooks/data/traces_small.jsonl --per-category 2                       # ~15 min

Writes ``--out`` ``.json`` and ``.md``; ``--summarize RUNS.json`` re-renders a saved run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from head import controller_summary, priced_seconds  # noqa: E402  (benchmarks/head.py)
from siblings import pick  # noqa: E402  (benchmarks/siblings.py: per category in turn, a cut-short run stays balanced)
from results_files import write_results  # noqa: E402  (benchmarks/results_files.py)

RESULTS = ROOT / "benchmarks" / "results"


def summarize(runs: list[dict]) -> dict:
    out = controller_summary(runs, "a", "b")
    pairs = defaultdict(dict)
    for r in runs:
        pairs[r["prompt"]][r["config"]] = r["output"]
    out["all"]["same_output"] = sum(v.get("a") == v.get("b") for v in pairs.values())
    out["all"]["prompts"] = len(pairs)
    return out


def markdown(doc: dict) -> str:
    meta, summary = doc["meta"], doc["summary"]
    lines = [
        "# Two policies end to end", "",
        f"A: `{meta['a']}`; B: `{meta['b']}`. Reference pair, bf16"
        f"{' (the draft with int8 linear layers)' if meta.get('draft_quantize') == 'int8' else ''}, "
        f"{meta['threads']} threads, greedy, "
        f"{meta['max_new_tokens']} new tokens, {summary['all']['prompts']} prompts of `{meta['traces']}`, cold "
        f"in-memory store per policy, both back to back per prompt (order alternating). Command: `{meta['command']}`.",
        "",
        "| class | A tok/s | B tok/s | B / A (clock) | B / A (priced) |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for cls, e in summary.items():
        t = e["tokens_per_s"]
        lines.append(f"| {cls} | {t['a']:.2f} | {t['b']:.2f} | {e['ratio']:.3f} | {e['priced_ratio']:.3f} |")
    a = summary["all"]
    lines += ["", f"Priced: each run's rounds through A's cost model (decisions, not the clock's minutes). Same output "
              f"under A and B (bf16: near-tie flips between forward shapes): {a['same_output']} of {a['prompts']}."]
    return "\n".join(lines) + "\n"


def run(args) -> dict:
    from adaptive_spec.generator import AdaptiveGenerator
    from adaptive_spec.models import configure_threads, load_pair
    from adaptive_spec.policy.file import load_policy_file
    from adaptive_spec.prompts import chat_ids
    from adaptive_spec.stats import MemoryStatsStore
    from adaptive_spec.traces.format import read_traces

    configure_threads(args.threads)
    pair = load_pair(dtype="bfloat16", draft_quantize=args.draft_quantize)
    policies = {"a": load_policy_file(args.a, pair.pair_id), "b": load_policy_file(args.b, pair.pair_id)}
    cost = policies["a"].cost
    generators = {name: AdaptiveGenerator(pair.target, pair.draft, pair.tokenizer, p, MemoryStatsStore())
                  for name, p in policies.items()}  # fmt: skip
    prompts = pick(read_traces(args.traces), args.per_category)  # their prompts only: traces of any pair will do
    warm = chat_ids(pair.tokenizer, prompts[0].prompt)[0][None]
    for generator in generators.values():  # one-off costs (first forwards, allocations) outside the timed runs
        generator.generate(warm, max_new_tokens=8)
    runs, started = [], time.perf_counter()
    for p, trace in enumerate(prompts):
        ids = chat_ids(pair.tokenizer, trace.prompt)[0]
        for name in (["a", "b"] if p % 2 == 0 else ["b", "a"]):
            start = time.perf_counter()
            out = generators[name].generate(ids[None], max_new_tokens=args.max_new_tokens, prompt_text=trace.prompt)
            runs.append({"prompt": p, "class": trace.request_class, "config": name,
                         "tokens": out.result.num_new_tokens, "seconds": time.perf_counter() - start,
                         "priced_seconds": priced_seconds(cost, out.result.records, out.result.prompt_len),
                         "predicted": out.report.request_class, "decisions": out.report.decisions,
                         "output": out.sequences[0].tolist()})  # fmt: skip
        print(f"[{p + 1}/{len(prompts)}] {trace.request_class} {time.perf_counter() - started:.0f} s", flush=True)
    return {"runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, help="policy file A (the baseline; its cost model prices both)")
    parser.add_argument("--b", type=Path, help="policy file B")
    parser.add_argument("--traces", type=Path, default=ROOT / "notebooks" / "data" / "traces_small.jsonl",
                        help="their prompts are used (not their tokens)")  # fmt: skip
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draft-quantize", default="none", choices=["none", "int8"],
                        help="the draft's weights (the policies must be that pair's: int8 has its own pair id)")
    parser.add_argument("--out", type=Path, default=RESULTS / "policy_ab")
    parser.add_argument("--summarize", type=Path, help="re-render a saved run's JSON (no models)")
    parser.add_argument("--exclude-prompts", default="", help="with --summarize: prompt indices to leave out, e.g. 0,3")
    args = parser.parse_args()
    if args.summarize:
        doc = json.loads(args.summarize.read_text())
        excluded = {int(p) for p in args.exclude_prompts.split(",") if p.strip()}
        doc["runs"] = [r for r in doc["runs"] if r["prompt"] not in excluded]
        doc["meta"]["excluded_prompts"] = sorted(excluded)
    else:
        if args.a is None or args.b is None:
            parser.error("--a and --b are required (or --summarize)")
        doc = run(args)
        doc["meta"] = {"a": str(args.a), "b": str(args.b), "traces": str(args.traces), "threads": args.threads,
                       "max_new_tokens": args.max_new_tokens, "draft_quantize": args.draft_quantize,
                       "command": "python " + " ".join(sys.argv)}  # fmt: skip
    doc["summary"] = summarize(doc["runs"])
    write_results(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
