"""Engine benchmark: this engine vs transformers' own generation on the reference pair (a script, not a test).

Greedy, bf16, 2 threads, 128 new tokens, N prompts from each Spec-Bench category, every configuration run on the
same prompt back to back (rotating the order from prompt to prompt) in one process, so ratios are fair:

- target-only: ``target.generate`` (as shipped, and with the stride fix below), and this engine with k = 0
- HF assisted generation: its defaults (as shipped), and fixed k = 2, 4, 6 with confidence threshold 0 (set on the
  assistant's generation_config, which is where transformers reads them) with the stride fix, k = 4 also as shipped
- HF prompt lookup (prompt_lookup_num_tokens=10), with the stride fix

The stride fix (``StrideFix``) works around a CPU bf16 slow path that transformers' ``logits_to_keep=1`` slicing
hits: it makes HF's runs much faster, so comparing against the fixed runs is the demanding comparison.
- this engine: model draft k = 2, 4, 6 (threshold 0) and prompt lookup (k = 10)

Reports tokens/s, target forwards per token and mean accepted per round, per category and overall; the share of
wall time this engine spends outside model forwards; and how often bf16 outputs differ from target-only's.

    python benchmarks/engine.py --per-category 2 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaptive_spec.engine import PLAIN_STEP, SpeculativeEngine, StopRule, fixed  # noqa: E402
from adaptive_spec.models import configure_threads, load_pair  # noqa: E402
from adaptive_spec.prompts import chat_ids  # noqa: E402
from adaptive_spec.runtime import eos_ids, standard_drafters  # noqa: E402
from adaptive_spec.traces.workload import read_workload  # noqa: E402

SPEC_BENCH = ROOT.parent / "shared" / "data" / "spec_bench_questions.jsonl"
RESULTS = ROOT / "benchmarks" / "results"


class StrideFix:
    """Restride the LM head's input inside transformers' generate (a CPU bf16 slow path, see the results notes).

    ``logits_to_keep=1`` slices the hidden states into a [1, 1, H] view whose batch stride is n*H; PyTorch calls it
    contiguous (size-1 dims), so ``.contiguous()`` is a no-op, but the bf16 matmul takes a path ~40x slower for
    it (measured: 2.1 s vs 43 ms for the 0.5B's head). A ``reshape`` gives it standard strides.
    """

    def __init__(self, *models):
        self.models = models
        self.handles = []

    def __enter__(self):
        for model in self.models:
            head = model.get_output_embeddings()
            self.handles.append(head.register_forward_pre_hook(lambda m, args: (_restrided(args[0]),)))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _restrided(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).view(x.shape)


class ForwardCounter:
    """Counts the target's forwards and the tokens fed to them (HF passes input_ids as a keyword)."""

    def __init__(self, model):
        self.calls = self.tokens = 0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        self.calls += 1
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.tokens += ids.shape[-1]


def pick_prompts(per_category: int, skip: int) -> list:
    rows = read_workload(SPEC_BENCH).rows
    by_class = defaultdict(list)
    for row in rows:
        by_class[row.request_class].append(row)
    # round-robin over categories, so a run cut short still covers every category about equally
    return [by_class[cls][skip + i] for i in range(per_category) for cls in sorted(by_class)
            if skip + i < len(by_class[cls])]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--skip", type=int, default=8, help="skip the first N prompts of each category (the traced ones)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "engine")
    parser.add_argument("--drop", default="", help="comma-separated configurations to leave out (shorter runs)")
    parser.add_argument("--resummarize", type=Path, help="rewrite the summary and markdown of a saved run's JSON")
    args = parser.parse_args()
    if args.resummarize:
        return resummarize(args.resummarize)
    dropped = {name.strip() for name in args.drop.split(",") if name.strip()}

    configure_threads(args.threads)
    pair = load_pair(dtype="bfloat16")
    target, draft, tok = pair.target, pair.draft, pair.tokenizer
    counter = ForwardCounter(target)
    engine = SpeculativeEngine(target, standard_drafters(target, draft))
    stop = StopRule(args.max_new_tokens, eos_ids(tok, target))
    default_assistant = copy.deepcopy(draft.generation_config)

    def hf(ids, **kw):
        return target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id, **kw)[0]  # fmt: skip

    def hf_assisted(k, fix=True):
        def run(ids):
            draft.generation_config = copy.deepcopy(default_assistant)
            if k is not None:
                draft.generation_config.num_assistant_tokens = k
                draft.generation_config.num_assistant_tokens_schedule = "constant"
                draft.generation_config.assistant_confidence_threshold = 0.0
            if not fix:
                return hf(ids, assistant_model=draft), None
            with StrideFix(target, draft):
                return hf(ids, assistant_model=draft), None

        return run

    def hf_fixed(**kw):
        def run(ids):
            with StrideFix(target, draft):
                return hf(ids, **kw), None

        return run

    def ours(decide):
        def run(ids):
            out = engine.generate(ids, decide, stop=stop)
            return out.sequences[0], out

        return run

    configs = {
        "hf target-only": lambda ids: (hf(ids), None),
        "hf target-only (stride fix)": hf_fixed(),
        "ours target-only": ours(lambda s: PLAIN_STEP),
        "hf assisted default": hf_assisted(None, fix=False),
        "hf assisted default (stride fix)": hf_assisted(None),
        "hf assisted k=4 (as shipped)": hf_assisted(4, fix=False),
        "hf assisted k=2": hf_assisted(2),
        "hf assisted k=4": hf_assisted(4),
        "hf assisted k=6": hf_assisted(6),
        "hf prompt lookup": hf_fixed(prompt_lookup_num_tokens=10),
        "ours model k=2": ours(fixed("model", 2)),
        "ours model k=4": ours(fixed("model", 4)),
        "ours model k=6": ours(fixed("model", 6)),
        "ours lookup k=10": ours(fixed("lookup", 10)),
    }
    unknown = dropped - set(configs)
    if unknown:
        parser.error(f"unknown configuration(s) in --drop: {sorted(unknown)}; known: {list(configs)}")
    configs = {name: run for name, run in configs.items() if name not in dropped}
    reference_name = next(n for n in ("hf target-only", "hf target-only (stride fix)", "ours target-only") if n in configs)
    prompts = pick_prompts(args.per_category, args.skip)
    # warm-up: first calls pay one-off costs (allocations, lazy weights)
    warm = chat_ids(tok, "Say hi.")
    for run in configs.values():
        run(warm)

    rows = []
    names = list(configs)
    for p, row in enumerate(prompts):
        ids = chat_ids(tok, row.prompt)
        order = names[p % len(names) :] + names[: p % len(names)]
        outputs = {}
        for name in order:
            counter.calls = counter.tokens = 0
            start = time.perf_counter()
            sequence, result = configs[name](ids)
            seconds = time.perf_counter() - start
            new = sequence[ids.shape[1] :].tolist()
            forwards = counter.calls
            record = {
                "prompt": p, "class": row.request_class, "config": name, "tokens": len(new), "seconds": seconds,
                "tokens_per_s": len(new) / seconds, "target_forwards": forwards,
                "target_forwards_per_token": forwards / max(len(new), 1),
                # tokens the target was fed beyond the prompt: verified proposals, rejected ones included
                "target_tokens_fed_beyond_prompt": counter.tokens - ids.shape[1],
                "output_sha": hashlib.sha1(json.dumps(new).encode()).hexdigest()[:12],
            }  # fmt: skip
            record["accepted_per_round"] = _accepted_per_round(record)
            if result is not None:
                record["outside_forwards_share"] = 1 - result.forward_s / result.total_s
                record["alpha"] = result.alpha if result.proposed else None
            outputs[name] = new
            rows.append(record)
            print(f"[{p + 1}/{len(prompts)}] {row.request_class:15s} {name:22s} {record['tokens_per_s']:6.2f} tok/s "
                  f"fwd/tok {record['target_forwards_per_token']:.2f}", flush=True)  # fmt: skip
        reference = outputs[reference_name]
        for r in rows[-len(names) :]:
            r["diverged"] = outputs[r["config"]] != reference
        # rewritten after every prompt: a run of hours cut short still leaves its finished prompts
        meta = {"per_category": args.per_category, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
                "dtype": "bfloat16", "prompts": len(prompts), "prompts_done": p + 1, "torch": torch.__version__,
                "dropped": sorted(dropped), "divergence_reference": reference_name}  # fmt: skip
        summary = summarize(rows, names)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=1))
        args.out.with_suffix(".md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))


def resummarize(path: Path) -> None:
    """Recompute the per-run derived figures and the summary of a saved run (e.g. after a fix to their formulas)."""
    saved = json.loads(path.read_text())
    rows = saved["runs"]
    for r in rows:
        r["accepted_per_round"] = _accepted_per_round(r)
    names = list(dict.fromkeys(r["config"] for r in rows))
    saved["summary"] = summarize(rows, names)
    path.write_text(json.dumps(saved, indent=1))
    path.with_suffix(".md").write_text(markdown(saved["summary"], saved["meta"]))
    print(markdown(saved["summary"], saved["meta"]))


def _accepted_per_round(record: dict) -> float:
    """Mean accepted proposals per round of one run: each round adds its accepted proposals plus one target token.

    This engine's prefill is a forward of its own that makes the first token; HF's assisted generation and prompt
    lookup verify their first proposals inside the prompt's forward, so every HF forward is a round.
    """
    prefill = 1 if record["config"].startswith("ours") else 0
    rounds = record["target_forwards"] - prefill
    return (record["tokens"] - prefill - rounds) / rounds if rounds > 0 else 0.0


def summarize(rows: list[dict], names: list[str]) -> dict:
    by = defaultdict(list)
    for r in rows:
        by[(r["config"], r["class"])].append(r)
        by[(r["config"], "all")].append(r)
    classes = sorted({r["class"] for r in rows}) + ["all"]
    table = {}
    for name in names:
        table[name] = {}
        for cls in classes:
            rs = by[(name, cls)]
            table[name][cls] = {
                "tokens_per_s": sum(r["tokens"] for r in rs) / sum(r["seconds"] for r in rs),
                "target_forwards_per_token": sum(r["target_forwards"] for r in rs) / sum(r["tokens"] for r in rs),
                "accepted_per_round": statistics.mean(r["accepted_per_round"] for r in rs),
                "diverged": sum(r["diverged"] for r in rs) / len(rs),
            }
    per_prompt = defaultdict(dict)
    for r in rows:
        per_prompt[r["prompt"]][r["config"]] = r
    pairs = {f"k={k}": (f"ours model k={k}", f"hf assisted k={k}") for k in (2, 4, 6)}
    pairs["lookup"] = ("ours lookup k=10", "hf prompt lookup")
    ratios = {}
    for label, (ours, theirs) in pairs.items():
        if ours in names and theirs in names:  # a shortened run (--drop) may leave out either side
            values = [pp[ours]["tokens_per_s"] / pp[theirs]["tokens_per_s"] for pp in per_prompt.values()]
            ratios[label] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    outside = [r["outside_forwards_share"] for r in rows if "outside_forwards_share" in r]
    return {
        "table": table,
        "ours_vs_hf_ratio": ratios,
        "outside_forwards_share": {"median": statistics.median(outside), "max": max(outside),
                                   "mean": statistics.mean(outside)} if outside else None,  # fmt: skip
    }


def markdown(summary: dict, meta: dict) -> str:
    table = summary["table"]
    classes = list(next(iter(table.values())))
    lines = [
        "# Engine benchmark: tokens/s on the reference pair",
        "",
        f"Qwen2.5-Coder 1.5B target + 0.5B draft, bf16, {meta['threads']} threads, greedy, "
        f"{meta['max_new_tokens']} new tokens, {meta['prompts']} Spec-Bench prompts ({meta['per_category']} per "
        "category), all configurations interleaved per prompt in one process. Command: "
        f"`python benchmarks/engine.py --per-category {meta['per_category']} --max-new-tokens {meta['max_new_tokens']}"
        + (f" --drop '{','.join(meta['dropped'])}'" if meta.get("dropped") else "") + "`.",
        "",
        *([f"Partial: {meta['prompts_done']} of {meta['prompts']} prompts finished.", ""]
          if meta.get("prompts_done", meta["prompts"]) < meta["prompts"] else []),
        "| config | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
    ]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]['tokens_per_s']:.2f}" for c in classes) + " |")
    lines += ["", "Overall (all prompts): target forwards per token, mean accepted per round, share of prompts whose "
              f"output differs from {meta['divergence_reference']} (bf16):", "", "| config | fwd/token | accepted/round | diverged |",
              "|---|---|---|---|"]  # fmt: skip
    for name, row in table.items():
        a = row["all"]
        lines.append(f"| {name} | {a['target_forwards_per_token']:.3f} | {a['accepted_per_round']:.2f} | "
                     f"{a['diverged'] * 100:.0f}% |")  # fmt: skip
    lines += ["", "This engine vs HF at the same k (tokens/s ratio per prompt):", ""]
    for k, r in summary["ours_vs_hf_ratio"].items():
        lines.append(f"- {k}: median {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f})")
    o = summary["outside_forwards_share"]
    if o:
        lines += ["", f"Time outside model forwards in this engine: median {o['median'] * 100:.2f}%, "
                  f"mean {o['mean'] * 100:.2f}%, max {o['max'] * 100:.2f}% of wall time."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
