"""Custom draft vs generic draft, end to end on held-out traffic (a script, not a test).

Runs on the held-out rows that ``adaptive-spec distill`` set aside (``DIR/heldout.jsonl``): per class (e.g.
``code`` from the stdlib workload, held out by module, and a Spec-Bench category), N prompts, greedy, bf16, each
configuration on the same prompt back to back (order rotated per prompt) in one process:

- target-only; generic 0.5B draft ("model") at k in {1, 2, 3, 4, 6}; custom draft at k in {1, 2, 3, 4, 6, 8}.

Reports per class: tokens/s and engine alpha per config, each drafter's best k and speedup over target-only, and
the bar: custom best speedup >= 1.3 x generic best speedup. Also the draft cost per token (both drafters, same
context) and the teacher-forced alpha from ``DIR/eval.json``. Writes ``benchmarks/results/distill.{json,md}``.

    python benchmarks/distill.py --draft-dir runs/distill-code --per-class 6          # ~1 h on 2 CPU cores
    python benchmarks/distill.py --draft-dir runs/distill-code --quick                # ~5 min: 1 prompt per class
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaptive_spec.distill import load_custom_draft  # noqa: E402
from adaptive_spec.distill.cost import draft_cost_per_token  # noqa: E402
from adaptive_spec.distill.head import head_heldout_prompts  # noqa: E402
from adaptive_spec.distill.evaluate import end_to_end, runs_to_json, summarize  # noqa: E402
from adaptive_spec.engine import ModelDrafter, SpeculativeEngine, StopRule  # noqa: E402
from adaptive_spec.models import DRAFT_QUANTIZATIONS, configure_threads, load_pair, quantize_draft  # noqa: E402
from adaptive_spec.prompts import chat_ids  # noqa: E402
from adaptive_spec.runtime import eos_ids  # noqa: E402
from results_files import write_results  # noqa: E402  (benchmarks/results_files.py)

RESULTS = ROOT / "benchmarks" / "results"
BAR = 1.3


def heldout_prompts(directory: Path, per_class: int, classes: list[str] | None) -> list[dict]:
    """``distill``'s held-out rows ({"class", "prompt"}), at most ``per_class`` of each class."""
    by_class = {c: prompts for c, prompts in head_heldout_prompts(directory, per_class).items()
                if classes is None or c in classes}  # fmt: skip
    # alternate classes, so a cut-short run still covers every class
    return [{"class": c, "prompt": ps[i]} for i in range(per_class) for c, ps in by_class.items() if i < len(ps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draft-dir", type=Path, required=True, help="output directory of `adaptive-spec distill`")
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--classes", nargs="*", help="default: every class in heldout.jsonl")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--generic-k", default="1,2,3,4,6")
    parser.add_argument("--custom-k", default="1,2,3,4,6,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 prompt per class, 32 new tokens, k in {2,4} / {2,4,6}")
    parser.add_argument("--draft-quantize", choices=DRAFT_QUANTIZATIONS, default="none",
                        help="int8: the custom draft runs with int8 linear layers, compared with the generic draft in "
                             "bfloat16 ('model') and in int8 ('int8'), so the gain of training shows apart from "
                             "the gain of quantization")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "distill")
    args = parser.parse_args()
    if args.quick:
        args.per_class, args.max_new_tokens, args.generic_k, args.custom_k = 1, 32, "2,4", "2,4,6"

    configure_threads(args.threads)
    pair = load_pair(dtype="bfloat16")
    target, tok = pair.target, pair.tokenizer
    custom = load_custom_draft(args.draft_dir, target, quantize=args.draft_quantize)
    generic = ModelDrafter(pair.draft, "model", vocab_size=target.config.vocab_size)
    drafters = [generic]
    if args.draft_quantize == "int8":
        drafters.append(ModelDrafter(quantize_draft(copy.deepcopy(pair.draft)), "int8", vocab_size=target.config.vocab_size))
    engine = SpeculativeEngine(target, [*drafters, custom])
    rows = heldout_prompts(args.draft_dir, args.per_class, args.classes)
    prompts = [(r["class"], chat_ids(tok, r["prompt"])[0]) for r in rows]
    names = [d.name for d in drafters]
    configs = ([("model", 0)] + [(name, int(k)) for name in names for k in args.generic_k.split(",")]
               + [("custom", int(k)) for k in args.custom_k.split(",")])  # fmt: skip

    context = prompts[0][1]
    cost = {"generic_ms": draft_cost_per_token(generic, context) * 1e3, "custom_ms": draft_cost_per_token(custom, context) * 1e3}
    if len(drafters) > 1:
        cost["generic_int8_ms"] = draft_cost_per_token(drafters[1], context) * 1e3
    cost["ratio"] = cost["custom_ms"] / cost["generic_ms"]
    print("draft cost per token (ms):", {k: round(v, 1) for k, v in cost.items() if k.endswith("_ms")}, flush=True)

    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        print(f"[{done}/{total}] {time.perf_counter() - start:.0f} s", flush=True)

    runs = end_to_end(engine, prompts, configs, StopRule(args.max_new_tokens, eos_ids(tok, target)), progress)
    summary = summarize(runs, (*names, "custom"))
    eval_path = args.draft_dir / "eval.json"
    teacher_forced = json.loads(eval_path.read_text()).get("alpha") if eval_path.is_file() else None
    meta = {"draft_dir": str(args.draft_dir), "per_class": args.per_class, "max_new_tokens": args.max_new_tokens,
            "threads": args.threads, "dtype": "bfloat16", "quick": args.quick, "prompts": len(prompts),
            "draft_quantize": args.draft_quantize, "command": "python " + " ".join(sys.argv),
            "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
            "bar": f"custom best speedup >= {BAR} x generic best speedup"}  # fmt: skip
    doc = {"meta": meta, "draft_cost": cost, "teacher_forced_alpha": teacher_forced, "summary": summary,
           "runs": runs_to_json(runs)}  # fmt: skip
    write_results(args.out, doc, markdown(doc))


def config_table(summary: dict) -> list[str]:
    """Markdown rows: tokens/s and engine alpha of every configuration (rows) in every class (columns)."""
    classes = list(summary["classes"])
    lines = ["| config | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name in summary["classes"]["all"]["configs"]:
        cells = []
        for cls in classes:
            c = summary["classes"][cls]["configs"].get(name)
            cells.append("-" if c is None else f"{c['tokens_per_s']:.2f}" + (f" (α {c['alpha']:.2f})" if c["alpha"] is not None else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(doc: dict) -> str:
    meta, cost, summary = doc["meta"], doc["draft_cost"], doc["summary"]
    lines = [
        "# Custom (distilled) draft vs the generic 0.5B draft, end to end", "",
        f"Target Qwen2.5-Coder-1.5B-Instruct, bf16, {meta['threads']} threads, greedy, {meta['max_new_tokens']} new "
        f"tokens, {meta['prompts']} held-out prompts ({meta['per_class']} per class) from `{meta['draft_dir']}/heldout.jsonl`; "
        "all configurations interleaved per prompt in one process" + (" (**--quick**: a smoke run, not a measurement)" if meta["quick"] else "") + ".",
        "",
        f"Draft cost per token: generic {cost['generic_ms']:.1f} ms, custom {cost['custom_ms']:.1f} ms "
        f"(ratio {cost['ratio']:.3f})" + (f"; generic in int8 {cost['generic_int8_ms']:.1f} ms" if "generic_int8_ms" in cost else "") + ".",
        "",
    ]  # fmt: skip
    int8 = meta.get("draft_quantize") == "int8"
    if int8:
        lines += ["The custom draft runs in int8 (`--draft-quantize int8`); `model` is the generic draft in bfloat16, "
                  "`int8` the generic draft in int8: the last column is what training on the traffic adds beyond "
                  "quantization.", ""]  # fmt: skip
    lines += ["| class | target tok/s | generic best (speedup) |" + (" generic int8 best |" if int8 else "")
              + " custom best (speedup) | ratio | bar ≥ 1.3 |" + (" custom / generic int8 |" if int8 else ""),
              "|---|---|---|---|---|---|" + ("---|---|" if int8 else "")]  # fmt: skip
    for cls, entry in summary["classes"].items():
        b = entry["best"]
        ratio = entry.get("ratio", float("nan"))
        generic_int8 = f" {b['int8']['config']} ({b['int8']['speedup']:.2f}×) |" if int8 else ""
        over_int8 = f" {entry['ratio_over']['int8']:.2f} |" if int8 else ""
        lines.append(f"| {cls} | {entry['configs']['target']['tokens_per_s']:.2f} | {b['model']['config']} "
                     f"({b['model']['speedup']:.2f}×) |{generic_int8} {b['custom']['config']} ({b['custom']['speedup']:.2f}×) | "
                     f"{ratio:.2f} | {'yes' if ratio >= BAR else 'no'} |{over_int8}")  # fmt: skip
    lines += ["", "Tokens/s and engine α (accepted / proposed) per configuration:", ""] + config_table(summary)
    if doc["teacher_forced_alpha"]:
        lines += ["", "Teacher-forced α on the held-out collection (from `eval.json`; greedy / sampled):", "",
                  "| class | generic | custom |", "|---|---|---|"]  # fmt: skip
        for cls, a in doc["teacher_forced_alpha"].items():
            g, c = a["generic"], a["custom"]
            lines.append(f"| {cls} | {g['greedy_alpha']:.3f} / {g['sampled_alpha']:.3f} | "
                         f"{c['greedy_alpha']:.3f} / {c['sampled_alpha']:.3f} |")  # fmt: skip
    lines += ["", f"bf16 outputs equal to target-only's: {summary['outputs_equal_target_share']:.0%} of speculative runs "
              "(near-tie argmax flips between batched and single-token forwards; exactness is a float32 property)."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
