"""The generic draft with int8 weights (``quantize_draft``) against the same draft in bfloat16, real pair, CPU.

On CPU a draft forward streams the model's weights from memory for every token, so its cost follows their bytes:
int8 linear layers halve them. The draft's proposals change a little (acceptance), the output does not (the
target verifies every token). This measures both: one draft step at context 200 in each precision (and the
target's), then fixed configurations end to end on Spec-Bench questions (the first N of each category), greedy,
interleaved per prompt in one process: target-only, and the draft at k = 2 and 4 in each precision. With
``--adaptive``, also AdaptiveGenerator in each precision with that pair's committed policy (the int8 draft's:
``policies/qwen2.5-coder+int8-draft-cpu.json``, from ``adaptive-spec calibrate --draft-quantize int8``), each
starting from an empty statistics store.

    python benchmarks/draft_int8.py --per-category 1 --adaptive
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from results_files import write_results

from adaptive_spec.engine import PLAIN_STEP, ModelDrafter, SpeculativeEngine, StopRule, fixed
from adaptive_spec.generator import AdaptiveGenerator
from adaptive_spec.models import DEFAULT_PAIR, configure_threads, load_pair, quantize_draft
from adaptive_spec.models.load import quantized_pair_id
from adaptive_spec.policy.file import default_policy_path
from adaptive_spec.policy.calibrate import hardware
from adaptive_spec.prompts import chat_ids
from adaptive_spec.runtime import eos_ids
from adaptive_spec.stats import MemoryStatsStore
from adaptive_spec.traces.profile import select
from adaptive_spec.traces.workload import read_workload

ROOT = Path(__file__).resolve().parents[1]
SPEC_BENCH = ROOT.parent / "shared" / "data" / "spec_bench_questions.jsonl"
KS = (2, 4)
PAIR_IDS = {"bf16": DEFAULT_PAIR, "int8": quantized_pair_id(DEFAULT_PAIR, "int8")}


def step_ms(model, context: int = 200, steps: int = 12) -> float:
    """Median milliseconds of one single-token forward after a ``context``-token prefill."""
    ids = torch.arange(1000, 1000 + context)[None]
    times, cache = [], DynamicCache(config=model.config)
    with torch.inference_mode():
        token = model(ids, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        for _ in range(steps):
            start = time.perf_counter()
            logits = model(token, cache=cache, use_cache=True).logits
            times.append(time.perf_counter() - start)
            token = logits[:, -1:].argmax(-1)
    return sorted(times)[len(times) // 2] * 1e3


def summary(runs: list[dict], configs: list[str]) -> dict:
    out = {}
    for cls in sorted({r["class"] for r in runs}) + ["all"]:
        chosen = [r for r in runs if cls in (r["class"], "all")]
        entry = {}
        for name in configs:
            tokens = sum(r[name]["tokens"] for r in chosen)
            seconds = sum(r[name]["seconds"] for r in chosen)
            proposed = sum(r[name]["proposed"] for r in chosen)
            entry[name] = {"tok_s": tokens / seconds,
                           "alpha": sum(r[name]["accepted"] for r in chosen) / proposed if proposed else None,
                           "same_as_target": sum(r[name]["same"] for r in chosen) / len(chosen)}  # fmt: skip
        base = entry["target"]["tok_s"]
        for precision in ("bf16", "int8"):
            best = max((f"{precision} k={k}" for k in KS), key=lambda n: entry[n]["tok_s"])
            entry[f"best {precision}"] = {"config": best, "speedup": entry[best]["tok_s"] / base}
        entry["int8 / bf16 (best k each)"] = entry["best int8"]["speedup"] / entry["best bf16"]["speedup"]
        for precision in ("bf16", "int8"):
            if f"adaptive {precision}" in configs:
                speedup = entry[f"adaptive {precision}"]["tok_s"] / base
                entry[f"adaptive {precision}"].update(speedup=speedup,
                                                      over_best_fixed=speedup / entry[f"best {precision}"]["speedup"])
        out[cls] = entry
    return out


def markdown(doc: dict) -> str:
    meta, s = doc["meta"], doc["summary"]
    steps = meta["step_ms"]
    lines = ["# The draft in int8 vs bfloat16 (CPU)", "",
             f"Target Qwen2.5-Coder-1.5B-Instruct in bfloat16, draft Qwen2.5-Coder-0.5B-Instruct in bfloat16 or with "
             f"int8 linear layers (`quantize_draft`); {meta['hardware']}; greedy, {meta['max_new_tokens']} new "
             f"tokens, {meta['prompts']} Spec-Bench questions ({meta['per_category']} per category), interleaved per "
             f"prompt. Command: `{meta['command']}`.", "",
             f"One forward at context 200 (median): target {steps['target']:.1f} ms; draft bf16 {steps['bf16']:.1f} "
             f"ms (c = {steps['bf16'] / steps['target']:.3f}), int8 {steps['int8']:.1f} ms "
             f"(c = {steps['int8'] / steps['target']:.3f}).", "",
             "| class | target tok/s | best bf16 draft | best int8 draft | int8 / bf16 | α bf16 k=4 | α int8 k=4 |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for cls, e in s.items():
        name = f"**{cls}**" if cls == "all" else cls
        lines.append(f"| {name} | {e['target']['tok_s']:.2f} | {e['best bf16']['config']} "
                     f"({e['best bf16']['speedup']:.2f}×) | {e['best int8']['config']} "
                     f"({e['best int8']['speedup']:.2f}×) "
                     f"| {e['int8 / bf16 (best k each)']:.2f} | {e['bf16 k=4']['alpha']:.2f} | "
                     f"{e['int8 k=4']['alpha']:.2f} |")  # fmt: skip
    if any(n.startswith("adaptive") for n in meta["configs"]):
        lines += ["", "AdaptiveGenerator with each pair's committed policy, from an empty store (speedup over "
                  "target-only; in brackets, over that precision's best fixed k):", "",
                  "| class | adaptive bf16 | adaptive int8 | int8 / bf16 |", "|---|---|---|---|"]
        for cls, e in s.items():
            bf16, int8 = e["adaptive bf16"], e["adaptive int8"]
            lines.append(f"| {f'**{cls}**' if cls == 'all' else cls} | {bf16['speedup']:.2f}× "
                         f"({bf16['over_best_fixed']:.2f}) | {int8['speedup']:.2f}× ({int8['over_best_fixed']:.2f}) "
                         f"| {int8['speedup'] / bf16['speedup']:.2f} |")  # fmt: skip
    a = s["all"]
    lines += ["", "Outputs identical to target-only decoding (bf16 near-ties flip between 1-token and multi-token "
              "forwards; exactness is a float32 property, tested): "
              + ", ".join(f"{n} {a[n]['same_as_target']:.0%}" for n in meta["configs"] if n != "target") + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adaptive", action="store_true", help="also AdaptiveGenerator with each pair's policy")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "draft_int8")
    args = parser.parse_args()
    policies = {precision: default_policy_path(pair_id) for precision, pair_id in PAIR_IDS.items()}
    if args.adaptive and not all(path.is_file() for path in policies.values()):
        parser.error(f"--adaptive needs {policies['int8']}: run adaptive-spec calibrate --draft-quantize int8")
    configure_threads(args.threads)
    pair = load_pair(dtype="bfloat16")
    int8 = quantize_draft(copy.deepcopy(pair.draft))
    steps = {"target": step_ms(pair.target, steps=6), "bf16": step_ms(pair.draft), "int8": step_ms(int8)}
    engines = {"bf16": SpeculativeEngine(pair.target, [ModelDrafter(pair.draft)]),
               "int8": SpeculativeEngine(pair.target, [ModelDrafter(int8)])}  # fmt: skip
    stop = StopRule(args.max_new_tokens, eos_ids(pair.tokenizer, pair.target))

    def engine_run(engine, decide):
        return lambda ids, row: engine.generate(ids, decide, stop=stop)

    configs = {"target": engine_run(engines["bf16"], lambda state: PLAIN_STEP)}
    for precision, k in ((p, k) for p in engines for k in KS):
        configs[f"{precision} k={k}"] = engine_run(engines[precision], fixed("model", k))
    if args.adaptive:
        for precision, draft in (("bf16", pair.draft), ("int8", int8)):
            gen = AdaptiveGenerator(pair.target, draft, pair.tokenizer, policy=policies[precision],
                                    store=MemoryStatsStore(), pair_id=PAIR_IDS[precision])  # fmt: skip
            configs[f"adaptive {precision}"] = lambda ids, row, gen=gen: gen.generate(
                ids, max_new_tokens=args.max_new_tokens, prompt_text=row.prompt).result  # fmt: skip
    runs = []
    prompts = select(read_workload(SPEC_BENCH).rows, per_class=args.per_category)
    for i, row in enumerate(prompts, 1):
        cls = row.request_class
        ids = chat_ids(pair.tokenizer, row.prompt)
        run, reference = {"class": cls}, None
        for name, run_config in configs.items():
            out = run_config(ids, row)
            tokens = out.new_tokens.tolist()
            reference = tokens if reference is None else reference
            run[name] = {"tokens": out.num_new_tokens, "seconds": out.total_s, "proposed": out.proposed,
                         "accepted": out.accepted, "same": tokens == reference}  # fmt: skip
        runs.append(run)
        print(f"[{i}/{len(prompts)}] {cls}", {n: round(run[n]["tokens"] / run[n]["seconds"], 2) for n in configs},
              file=sys.stderr)  # fmt: skip
    meta = {"hardware": hardware(), "per_category": args.per_category, "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens, "step_ms": steps, "configs": list(configs),
            "command": "python " + " ".join(sys.argv)}  # fmt: skip
    doc = {"meta": meta, "summary": summary(runs, list(configs)), "runs": runs}
    write_results(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
