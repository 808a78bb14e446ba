"""Off-path benchmark: what the adaptive controller costs when it never speculates (real pair).

Issue 5's bar: a policy that stays off costs what plain decoding costs (at most 2% over target-only ``generate``).
For every prompt, back to back in one process with the order rotated from prompt to prompt:

- ``controller off``: ``AdaptiveGenerator`` with the committed policy's controller and every drafter disabled (the
  whole per-request and per-round policy path runs: classifier, prompt indexing, decide, on_round, report);
- ``plain (engine, k=0)``: the same engine with a fixed plain step and no policy work;
- ``plain (engine, padded)``: the same with every plain step padded (``Decision(pad_plain=True)``: a guess verified
  after the pending token, as the controller does where the cost model prices a 2-token forward below a 1-token
  one), so the padded step's gain is measured whatever the policy file's calibration says;
- ``hf generate``: ``target.generate`` as shipped, and with the stride fix of ``engine.py`` (a CPU bf16 slow path
  in transformers' last-token slicing; the fixed run is the faster, more demanding baseline).

Wall-clock ratios on this 2-core machine are noisy (±15% between runs of the same thing), so next to them it
reports what the policy adds that does not depend on the machine's mood: this engine's seconds outside model
forwards (policy, sampling, cache bookkeeping) per token, for the controller and for the plain engine.

    python benchmarks/off_path.py --per-category 1 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import StrideFix, pick_prompts  # noqa: E402  (benchmarks/engine.py)

from adaptive_spec.generator import AdaptiveGenerator, policy_from_file  # noqa: E402
from adaptive_spec.models import configure_threads, load_pair  # noqa: E402
from adaptive_spec.policy.base import FixedPolicy  # noqa: E402
from adaptive_spec.policy.controller import ClassSettings, DraftSettings  # noqa: E402
from adaptive_spec.policy.file import load_policy_file  # noqa: E402
from adaptive_spec.prompts import chat_ids  # noqa: E402
from results_files import write_results  # noqa: E402  (benchmarks/results_files.py)

RESULTS = ROOT / "benchmarks" / "results"
CONTROLLER_OFF, ENGINE_PLAIN, HF, HF_FIXED = "controller off", "plain (engine, k=0)", "hf generate", "hf generate (stride fix)"
ENGINE_PADDED = "plain (engine, padded)"


def off_policy(policy_file):
    """The policy file's controller with every drafter disabled in every class: it never speculates."""
    off_settings = ClassSettings(model=DraftSettings(enabled=False), use_lookup=False)
    config = policy_file.controller.model_copy(update={"default": off_settings, "classes": {}})
    return policy_from_file(policy_file.model_copy(update={"controller": config}))


def off_path_runs(pair, policy_file, max_new_tokens: int, padded: bool = False) -> dict:
    """Runner per configuration: ``run(ids, prompt_text) -> (new tokens, seconds, seconds outside forwards, extra
    row fields)``; this engine's runs add their padded plain steps, right guesses and output tokens (bf16 outputs may
    differ where a near-tie argmax flips between a 1-token and a 2-token forward). ``padded``: also the engine with
    padded plain steps."""
    tok = pair.tokenizer
    gen_off = AdaptiveGenerator(pair.target, pair.draft, tok, policy=off_policy(policy_file))
    gen_plain = AdaptiveGenerator(pair.target, pair.draft, tok, policy=FixedPolicy())

    def ours(gen):
        def run(ids, prompt_text):
            out = gen.generate(ids, max_new_tokens=max_new_tokens, prompt_text=prompt_text).result
            if any(r.k for r in out.records):
                raise AssertionError("the off path speculated")
            extra = {"padded_steps": sum(r.guessed for r in out.records),
                     "right_guesses": sum(r.guess_accepted for r in out.records), "output": out.new_tokens.tolist()}
            return out.num_new_tokens, out.total_s, out.total_s - out.forward_s, extra

        return run

    def hf(fix: bool):
        def run(ids, prompt_text):
            start = time.perf_counter()
            kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                          pad_token_id=tok.pad_token_id)  # fmt: skip
            if fix:
                with StrideFix(pair.target):
                    out = pair.target.generate(ids, **kwargs)
            else:
                out = pair.target.generate(ids, **kwargs)
            return out.shape[1] - ids.shape[1], time.perf_counter() - start, None, {}

        return run

    runs = {CONTROLLER_OFF: ours(gen_off), ENGINE_PLAIN: ours(gen_plain)}
    if padded:
        runs[ENGINE_PADDED] = ours(AdaptiveGenerator(pair.target, pair.draft, tok, policy=FixedPolicy(pad_plain=True)))
    return {**runs, HF: hf(False), HF_FIXED: hf(True)}


def measure(runs: dict, prompts: list[tuple[torch.Tensor, str, str]], log=print) -> list[dict]:
    """Every configuration on every prompt ``(ids, text, class)``, back to back, the order rotated per prompt."""
    names, rows = list(runs), []
    for p, (ids, text, request_class) in enumerate(prompts):
        for name in names[p % len(names) :] + names[: p % len(names)]:
            tokens, seconds, outside, extra = runs[name](ids, text)
            rows.append({"prompt": p, "class": request_class, "config": name, "tokens": tokens, "seconds": seconds,
                         "outside_forwards_s": outside, **extra})  # fmt: skip
            log(f"[{p + 1}/{len(prompts)}] {request_class:15s} {name:26s} {tokens / seconds:6.2f} tok/s")
    return rows


def summarize(rows: list[dict]) -> dict:
    names = list(dict.fromkeys(r["config"] for r in rows))
    by = {n: [r for r in rows if r["config"] == n] for n in names}
    tps = {n: sum(r["tokens"] for r in rs) / sum(r["seconds"] for r in rs) for n, rs in by.items()}
    prompts = sorted({r["prompt"] for r in rows})

    def per_prompt(base: str) -> list[float]:
        """Seconds per token of the controller over the baseline's, prompt by prompt, minus 1 (+: slower)."""
        spt = {(r["prompt"], r["config"]): r["seconds"] / r["tokens"] for r in rows}
        return [spt[p, CONTROLLER_OFF] / spt[p, base] - 1 for p in prompts if (p, base) in spt]

    overhead = {}
    for base in (n for n in names if n != CONTROLLER_OFF):
        ratios = per_prompt(base)
        overhead[base] = {"pooled": tps[base] / tps[CONTROLLER_OFF] - 1, "median_per_prompt": statistics.median(ratios),
                          "min_per_prompt": min(ratios), "max_per_prompt": max(ratios)}  # fmt: skip
    outside = {n: sum(r["outside_forwards_s"] for r in rs) / sum(r["tokens"] for r in rs)
               for n, rs in by.items() if rs and rs[0]["outside_forwards_s"] is not None}  # fmt: skip
    tokens_equal = all(len({r["tokens"] for r in rows if r["prompt"] == p}) == 1 for p in prompts)
    return {"prompts": len(prompts), "tokens_per_s": tps, "controller_overhead": overhead,
            "outside_forwards_ms_per_token": {n: v * 1e3 for n, v in outside.items()},
            "policy_ms_per_token": (outside[CONTROLLER_OFF] - outside[ENGINE_PLAIN]) * 1e3,
            "policy_share_of_plain_time": (outside[CONTROLLER_OFF] - outside[ENGINE_PLAIN]) * tps[ENGINE_PLAIN],
            "same_token_counts": tokens_equal,
            "padded_plain_steps": {n: {"steps": sum(r["padded_steps"] for r in rs),
                                       "right_guesses": sum(r["right_guesses"] for r in rs)}
                                   for n, rs in by.items() if sum(r.get("padded_steps", 0) for r in rs)},
            "padded_vs_plain": tps[ENGINE_PADDED] / tps[ENGINE_PLAIN] if ENGINE_PADDED in tps else None,
            "padded_outputs_equal": _same_outputs(rows, ENGINE_PADDED, ENGINE_PLAIN)}  # fmt: skip


def _same_outputs(rows: list[dict], a: str, b: str) -> list[int] | None:
    """[prompts with identical tokens, prompts] between two configurations."""
    output = {(r["prompt"], r["config"]): r["output"] for r in rows if "output" in r}
    prompts = sorted({p for p, c in output if c == a} & {p for p, c in output if c == b})
    return [sum(output[p, a] == output[p, b] for p in prompts), len(prompts)] if prompts else None


def markdown(summary: dict, meta: dict) -> str:
    lines = ["# Off path: the controller when it never speculates", "",
             f"Reference pair, bf16, {meta['threads']} threads, greedy, {meta['max_new_tokens']} new tokens, "
             f"{summary['prompts']} Spec-Bench prompts ({meta['per_category']} per category, after the first "
             f"{meta['skip']}), configurations interleaved per prompt, order rotated. Command: `{meta['command']}`.", "",
             "| config | tokens/s | seconds outside model forwards per token |", "|---|---|---|"]  # fmt: skip
    outside = summary["outside_forwards_ms_per_token"]
    for name, tps in summary["tokens_per_s"].items():
        lines.append(f"| {name} | {tps:.3f} | " + (f"{outside[name]:.2f} ms" if name in outside else "-") + " |")
    lines += ["", "Controller off vs each baseline (seconds per token, + = the controller is slower; bar <= +2% vs "
              "`generate`):", "", "| baseline | pooled | median per prompt | range per prompt |", "|---|---|---|---|"]
    for base, o in summary["controller_overhead"].items():
        lines.append(f"| {base} | {o['pooled'] * 100:+.2f}% | {o['median_per_prompt'] * 100:+.2f}% | "
                     f"{o['min_per_prompt'] * 100:+.1f}% .. {o['max_per_prompt'] * 100:+.1f}% |")  # fmt: skip
    lines += ["", f"- What the policy itself adds (controller off minus the plain engine, time outside forwards): "
              f"**{summary['policy_ms_per_token']:.3f} ms per token = {summary['policy_share_of_plain_time'] * 100:.2f}%** "
              "of plain decoding's time per token; the rest of any wall-clock difference is the machine.",
              f"- Every configuration generated the same number of tokens on each prompt: {summary['same_token_counts']}."]
    if summary.get("padded_vs_plain"):
        same = summary.get("padded_outputs_equal")
        lines.append("- Padded plain steps vs plain steps, same engine: "
                     f"**{summary['padded_vs_plain']:.3f}×** tokens/s"
                     + (f"; bf16 outputs identical in {same[0]} of {same[1]} prompts (float32: identical, tests)."
                        if same else "."))
    for name, g in summary.get("padded_plain_steps", {}).items():
        lines.append(f"- {name}: {g['steps']} padded plain steps, {g['right_guesses']} right guesses (2 tokens each).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=ROOT / "policies" / "qwen2.5-coder-cpu.json")
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--skip", type=int, default=8, help="skip the first N prompts of each category (the traced ones)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many prompts (quick runs)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "off_path")
    args = parser.parse_args()

    configure_threads(args.threads)
    pair = load_pair(dtype="bfloat16")
    runs = off_path_runs(pair, load_policy_file(args.policy), args.max_new_tokens, padded=True)
    warm = chat_ids(pair.tokenizer, "Say hi.")
    for run in runs.values():
        run(warm, "Say hi.")
    rows_in = pick_prompts(args.per_category, args.skip)
    rows_in = rows_in[: args.limit] if args.limit else rows_in
    prompts = [(chat_ids(pair.tokenizer, row.prompt), row.prompt, row.request_class) for row in rows_in]
    rows = measure(runs, prompts, log=lambda line: print(line, flush=True))
    summary = summarize(rows)
    meta = {"max_new_tokens": args.max_new_tokens, "threads": args.threads, "per_category": args.per_category,
            "skip": args.skip, "policy": str(args.policy), "command": "python " + " ".join(sys.argv)}  # fmt: skip
    write_results(args.out, {"meta": meta, "summary": summary, "runs": rows}, markdown(summary, meta))


if __name__ == "__main__":
    main()
