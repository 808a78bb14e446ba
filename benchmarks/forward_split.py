"""Where the time of a speculative round goes: this engine vs HF assisted generation at the same fixed k.

Forward hooks time every target and draft forward (calls, seconds, tokens fed), so a difference in wall time
splits into: more or fewer forwards (rounds, draft steps), slower forwards, or time outside forwards. Greedy, bf16,
2 threads, the same prompts as ``engine.py`` (1 per category by default), both runs back to back per prompt with
the order alternating. HF runs use the stride fix (``engine.StrideFix``), the demanding comparison.

    python benchmarks/forward_split.py --k 6 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import RESULTS, StrideFix, pick_prompts  # noqa: E402

from adaptive_spec.engine import SpeculativeEngine, StopRule, fixed  # noqa: E402
from adaptive_spec.models import configure_threads, load_pair  # noqa: E402
from adaptive_spec.prompts import chat_ids  # noqa: E402
from adaptive_spec.runtime import eos_ids, standard_drafters  # noqa: E402
from results_files import write_results  # noqa: E402  (benchmarks/results_files.py)


class ForwardTimer:
    """Calls, seconds and tokens fed of every forward of one model."""

    def __init__(self, model):
        self.calls, self.seconds, self.tokens, self._t0 = 0, 0.0, 0, 0.0
        model.register_forward_pre_hook(self._pre, with_kwargs=True)
        model.register_forward_hook(self._post, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += ids.shape[1]
        self._t0 = time.perf_counter()

    def _post(self, module, args, kwargs, out):
        self.calls += 1
        self.seconds += time.perf_counter() - self._t0

    def take(self) -> dict:
        out = {"calls": self.calls, "seconds": self.seconds, "tokens": self.tokens}
        self.calls, self.seconds, self.tokens = 0, 0.0, 0
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--skip", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "forward_split")
    args = parser.parse_args()

    configure_threads(args.threads)
    pair = load_pair(dtype="bfloat16")
    target, draft, tok = pair.target, pair.draft, pair.tokenizer
    timers = {"target": ForwardTimer(target), "draft": ForwardTimer(draft)}
    engine = SpeculativeEngine(target, standard_drafters(target, draft))
    assistant_config = copy.deepcopy(draft.generation_config)
    assistant_config.num_assistant_tokens = args.k
    assistant_config.num_assistant_tokens_schedule = "constant"
    assistant_config.assistant_confidence_threshold = 0.0

    def hf(ids):
        draft.generation_config = copy.deepcopy(assistant_config)
        with StrideFix(target, draft):
            out = target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=draft, do_sample=False,
                                  max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id)  # fmt: skip
        return out.shape[1] - ids.shape[1]

    def ours(ids):
        stop = StopRule(args.max_new_tokens, eos_ids(tok, target))
        return engine.generate(ids[0], fixed("model", args.k), stop=stop).num_new_tokens

    runs = {f"hf assisted k={args.k}": hf, f"ours model k={args.k}": ours}
    warm = chat_ids(tok, "Say hi.")
    for run in runs.values():
        run(warm)
    for timer in timers.values():
        timer.take()

    rows = []
    prompts = pick_prompts(args.per_category, args.skip)
    for p, row in enumerate(prompts):
        ids = chat_ids(tok, row.prompt)
        names = list(runs) if p % 2 == 0 else list(reversed(runs))
        for name in names:
            start = time.perf_counter()
            tokens = runs[name](ids)
            wall = time.perf_counter() - start
            forwards = {m: t.take() for m, t in timers.items()}
            outside = wall - sum(f["seconds"] for f in forwards.values())
            rows.append({"prompt": p, "class": row.request_class, "config": name, "tokens": tokens, "wall_s": wall,
                         "outside_s": outside, **{f"{m}_{k}": v for m, f in forwards.items() for k, v in f.items()}})  # fmt: skip
            print(f"[{p + 1}/{len(prompts)}] {row.request_class:15s} {name:18s} {tokens / wall:5.2f} tok/s", flush=True)

    summary = summarize(rows, list(runs))
    meta = {"k": args.k, "max_new_tokens": args.max_new_tokens, "prompts": len(prompts), "threads": args.threads,
            "command": "python " + " ".join(sys.argv)}  # fmt: skip
    write_results(args.out, {"meta": meta, "summary": summary, "runs": rows}, markdown(summary, meta))


def summarize(rows: list[dict], names: list[str]) -> dict:
    out = {}
    for name in names:
        rs = [r for r in rows if r["config"] == name]
        total = defaultdict(float)
        for r in rs:
            for key, value in r.items():
                if isinstance(value, (int, float)) and key != "prompt":
                    total[key] += value
        out[name] = {
            "tokens_per_s": total["tokens"] / total["wall_s"],
            "target_calls_per_token": total["target_calls"] / total["tokens"],
            "target_ms_per_call": 1e3 * total["target_seconds"] / total["target_calls"],
            "draft_calls_per_token": total["draft_calls"] / total["tokens"],
            "draft_ms_per_call": 1e3 * total["draft_seconds"] / total["draft_calls"],
            "draft_tokens_fed_per_call": total["draft_tokens"] / total["draft_calls"],
            "outside_share": total["outside_s"] / total["wall_s"],
        }
    hf_name, ours_name = names
    by_prompt = defaultdict(dict)
    for r in rows:
        by_prompt[r["prompt"]][r["config"]] = r["tokens"] / r["wall_s"]
    ratios = [v[ours_name] / v[hf_name] for v in by_prompt.values()]
    out["ours_vs_hf"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                         "total": out[ours_name]["tokens_per_s"] / out[hf_name]["tokens_per_s"]}  # fmt: skip
    return out


def markdown(summary: dict, meta: dict) -> str:
    names = [n for n in summary if n != "ours_vs_hf"]
    cols = list(summary[names[0]])
    lines = [f"# Forward split at k={meta['k']}: this engine vs HF assisted generation", "",
             f"Reference pair, bf16, {meta['threads']} threads, greedy, {meta['max_new_tokens']} new tokens, "
             f"{meta['prompts']} Spec-Bench prompts, both runs back to back per prompt. Command: `{meta['command']}`.", "",
             "| config | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]  # fmt: skip
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{summary[name][c]:.3f}" for c in cols) + " |")
    r = summary["ours_vs_hf"]
    lines += ["", f"This engine / HF, tokens/s per prompt: median {r['median']:.3f} (min {r['min']:.3f}, max "
              f"{r['max']:.3f}); over all tokens {r['total']:.3f}."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
