"""A draft head trained on the user's traffic vs the generic 0.5B draft, and the controller with and without it.

Runs on the held-out rows that ``adaptive-spec distill --kind head`` set aside (``DIR/heldout.jsonl``), greedy,
bf16, in one process, configurations interleaved per prompt with the order rotated:

1. Cost, from a calibration made here and now (``calibrate_pair(..., heads=...)``): milliseconds per drafted
   token of the head and of the generic draft against one target forward (bar: head <= 1/8 of a target forward).
2. End to end per class: target-only, generic draft at k in ``--generic-k``, head at k in ``--head-k``; each
   drafter's best k. Bars: head best speedup >= 1.5 x generic best; >= 2.5 x target-only on code.
3. The adaptive controller on a mixed workload (the held-out rows plus ``--mixed-per-category`` Spec-Bench
   prompts of other categories): the default policy with the cost model calibrated in step 1, a cold in-memory
   store per configuration, with and without the head. Bar: tokens/s with the head > without.

Writes ``benchmarks/results/head.{json,md}``; ``--controller-only`` runs steps 1 and 3 into ``head_controller.*``.

    python benchmarks/head.py --head-dir runs/head --per-class 3 --max-new-tokens 96        # ~30 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaptive import saved_cost_model  # noqa: E402  (benchmarks/adaptive.py)
from distill import config_table, heldout_prompts  # noqa: E402  (benchmarks/distill.py)

from adaptive_spec.distill.evaluate import end_to_end, runs_to_json, summarize  # noqa: E402
from adaptive_spec.distill.head import attach_saved_head  # noqa: E402
from adaptive_spec.engine import ModelDrafter, SpeculativeEngine, StopRule  # noqa: E402
from adaptive_spec.generator import AdaptiveGenerator  # noqa: E402
from adaptive_spec.models import configure_threads, load_pair  # noqa: E402
from adaptive_spec.policy.calibrate import calibrate_pair  # noqa: E402
from adaptive_spec.policy.controller import ControllerConfig  # noqa: E402
from adaptive_spec.policy.file import default_policy_path, load_policy_file  # noqa: E402
from adaptive_spec.prompts import chat_ids  # noqa: E402
from adaptive_spec.runtime import eos_ids  # noqa: E402
from adaptive_spec.stats import MemoryStatsStore  # noqa: E402
from results_files import write_results  # noqa: E402  (benchmarks/results_files.py)

RESULTS = ROOT / "benchmarks" / "results"
SPEC_BENCH = ROOT.parent / "shared" / "data" / "spec_bench_questions.jsonl"
COST_BAR, GENERIC_BAR, CODE_BAR = 1 / 8, 1.5, 2.5
CONTEXT = 256  # where the per-token costs are read from the calibrated tables


def mixed_prompts(heldout: list[dict], per_category: int, skip: set[str]) -> list[dict]:
    """Held-out rows plus Spec-Bench prompts of categories the head was not trained on, alternating."""
    others = defaultdict(list)
    for line in SPEC_BENCH.read_text().splitlines():
        q = json.loads(line)
        if q["category"] not in skip and len(others[q["category"]]) < per_category:
            others[q["category"]].append({"class": q["category"], "prompt": q["turns"][0]})
    extra = [row for group in others.values() for row in group]
    out = []
    for i in range(max(len(heldout), len(extra))):
        out += ([heldout[i]] if i < len(heldout) else []) + ([extra[i]] if i < len(extra) else [])
    return out


def costs(cost, context: int = CONTEXT) -> dict:
    target = cost.plain_step_s(context)
    out = {"context": context, "target_forward_ms": target * 1e3}
    for name in cost.drafts:
        step = cost.draft_s(1, context, 1, name)
        out[f"{name}_ms_per_token"] = step * 1e3
        out[f"{name}_vs_target"] = step / target
    return out


def priced_seconds(cost, records, prompt_len: int) -> float:
    """A run's time by the cost model rather than the clock: its prefill and every round as replay prices it (the
    drafter's forwards with their catch-up, the verify forward's width). Two configurations that ran on different
    minutes of a noisy machine then compare on their decisions alone."""
    total = cost.prefill_s(prompt_len)
    for r in records:
        total += cost.round_s(r.drafter, r.proposed, r.context_len, max(r.catchup, 1), r.verified)
        total += cost.lookup_s if r.extension else 0.0
    return total


def controller_runs(generators: dict[str, AdaptiveGenerator], prompts: list[tuple[str, torch.Tensor, str]],
                    max_new_tokens: int, progress, cost=None) -> list[dict]:  # fmt: skip
    """Each prompt under each configuration (order alternating); ``cost``: also price each run's rounds with it."""
    runs = []
    names = list(generators)
    for p, (cls, ids, text) in enumerate(prompts):
        for name in names[p % 2 :] + names[: p % 2]:
            start = time.perf_counter()
            out = generators[name].generate(ids[None], max_new_tokens=max_new_tokens, prompt_text=text)
            seconds = time.perf_counter() - start
            used, drafted = defaultdict(int), defaultdict(lambda: [0, 0])
            for r in out.result.records:
                used[r.drafter] += 1
                drafted[r.drafter][0] += r.proposed
                drafted[r.drafter][1] += r.accepted
            runs.append({"prompt": p, "class": cls, "config": name, "tokens": out.result.num_new_tokens,
                         "seconds": seconds, "predicted_class": out.report.request_class, "rounds": dict(used),
                         "proposed_accepted": dict(drafted),
                         "class_side": out.report.extra.get("class_side", {})})  # fmt: skip
            if cost is not None:
                runs[-1]["priced_seconds"] = priced_seconds(cost, out.result.records, out.result.prompt_len)
            progress(len(runs), len(prompts) * len(names))
    return runs


def overridden(config: ControllerConfig, settings: list[str]) -> ControllerConfig:
    """``config`` with ``KEY=JSON`` overrides, validated as a policy file's controller section is."""
    values = config.model_dump()
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or key not in values:
            raise SystemExit(f"--controller-set {setting!r}: expected KEY=JSON with KEY a ControllerConfig field")
        values[key] = json.loads(value)
    return ControllerConfig.model_validate(values)


def controller_summary(runs: list[dict], base: str = "without head", other: str = "with head") -> dict:
    """Per class and "all": tokens/s of each configuration, ``other`` / ``base``; the same priced where every run
    was (``priced_seconds``)."""
    by = defaultdict(lambda: defaultdict(lambda: [0, 0.0, 0.0]))
    priced = all("priced_seconds" in r for r in runs)
    for r in runs:
        for cls in (r["class"], "all"):
            by[cls][r["config"]][0] += r["tokens"]
            by[cls][r["config"]][1] += r["seconds"]
            by[cls][r["config"]][2] += r.get("priced_seconds", 0.0)
    out = {}
    for cls, configs in sorted(by.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        rates = {name: t / s for name, (t, s, _) in configs.items()}
        out[cls] = {"tokens_per_s": rates, "ratio": rates[other] / rates[base]}
        if priced:
            rates = {name: t / s for name, (t, _, s) in configs.items()}
            out[cls]["priced_tokens_per_s"] = rates
            out[cls]["priced_ratio"] = rates[other] / rates[base]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dir", type=Path, required=True, help="output directory of `distill --kind head`")
    parser.add_argument("--prompts-from", type=Path, default=None,
                        help="held-out prompts from this directory's heldout.jsonl instead of --head-dir's: a head "
                             "continued from another (distill --init-head) on the prompts that one held out")  # fmt: skip
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--generic-k", default="2,3,4,6")
    parser.add_argument("--head-k", default="2,3,4,6,8")
    parser.add_argument("--mixed-per-category", type=int, default=1)
    parser.add_argument("--skip-controller", action="store_true")
    parser.add_argument("--controller-only", action="store_true",
                        help="only step 3 (after the calibration), written to --out's name + '_controller'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="calibration repetitions per point")
    parser.add_argument("--cost-from", type=Path, default=None,
                        help="price with the cost model saved in an earlier run's JSON instead of calibrating "
                             "(one calibration is noisy: the draft measured at 0.37 and 0.54 of a target forward "
                             "on the same day), so that controller runs compare on the same prices")  # fmt: skip
    parser.add_argument("--controller-set", action="append", default=[], metavar="KEY=JSON",
                        help="override a controller setting of the policy file for step 3, e.g. explore_rounds=2 "
                             "(repeatable; validated like the policy file)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "head")
    args = parser.parse_args()

    configure_threads(args.threads)
    started = time.perf_counter()
    pair = load_pair(dtype="bfloat16")
    target, tok = pair.target, pair.tokenizer

    def progress(done: int, total: int) -> None:
        print(f"[{done}/{total}] {time.perf_counter() - started:.0f} s", flush=True)

    # 1. cost, measured here and now; the same cost model prices the controller's choices in step 3
    cost_source = f"saved in `{args.cost_from}`" if args.cost_from else "calibrated in this run"
    if args.cost_from:
        cost = saved_cost_model(args.cost_from)
    else:
        cost = calibrate_pair(target, pair.draft, pair.pair_id, "bfloat16", args.reps, heads={"head": args.head_dir})
    cost_figures = costs(cost)
    print(json.dumps(cost_figures, indent=1), flush=True)

    # 2. fixed configurations, end to end
    heldout = heldout_prompts(args.prompts_from or args.head_dir, args.per_class, None)
    prompts = [(r["class"], chat_ids(tok, r["prompt"])[0]) for r in heldout]
    runs, summary = [], None
    if not args.controller_only:
        engine = SpeculativeEngine(target, [ModelDrafter(pair.draft, "model", vocab_size=target.config.vocab_size)])
        attach_saved_head(engine, args.head_dir, "head")
        configs = ([("model", 0)] + [("model", int(k)) for k in args.generic_k.split(",")]
                   + [("head", int(k)) for k in args.head_k.split(",")])  # fmt: skip
        runs = end_to_end(engine, prompts, configs, StopRule(args.max_new_tokens, eos_ids(tok, target)), progress)
        summary = summarize(runs, ("model", "head"))
        for entry in summary["classes"].values():
            best = entry["best"]
            entry["ratio"] = best["head"]["speedup"] / best["model"]["speedup"]

    # 3. the controller with and without the head
    controller = None
    if not args.skip_controller:
        base = load_policy_file(default_policy_path(pair.pair_id), pair.pair_id)
        policy = base.model_copy(update={"cost": cost, "controller": overridden(base.controller, args.controller_set)})
        generators = {
            "without head": AdaptiveGenerator(target, pair.draft, tok, policy, MemoryStatsStore()),
            "with head": AdaptiveGenerator(target, pair.draft, tok, policy, MemoryStatsStore(), head=args.head_dir),
        }  # fmt: skip
        rows = mixed_prompts(heldout, args.mixed_per_category, {r["class"] for r in heldout})
        mixed = [(r["class"], chat_ids(tok, r["prompt"])[0], r["prompt"]) for r in rows]
        c_runs = controller_runs(generators, mixed, args.max_new_tokens, progress, cost)
        controller = {"summary": controller_summary(c_runs), "runs": c_runs, "prompts": len(mixed),
                      "cost_source": cost_source, "controller_set": args.controller_set}

    eval_path = args.head_dir / "eval.json"
    evaluation = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
    meta = {"head_dir": str(args.head_dir), "prompts_from": str(args.prompts_from or args.head_dir),
            "per_class": args.per_class, "max_new_tokens": args.max_new_tokens,
            "threads": args.threads, "dtype": "bfloat16", "prompts": len(prompts), "hardware": cost.hardware,
            "seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__,
            "cost_source": cost_source,
            "command": "python " + " ".join(sys.argv)}  # fmt: skip
    doc = {"meta": meta, "cost": cost_figures, "cost_model": json.loads(cost.model_dump_json()),
           "teacher_forced_alpha": evaluation.get("alpha"),
           "training": evaluation.get("training"), "summary": summary, "runs": runs_to_json(runs),
           "controller": controller}  # fmt: skip
    out = args.out.with_name(args.out.name + "_controller") if args.controller_only else args.out
    write_results(out, doc, controller_markdown(doc) if args.controller_only else markdown(doc))


def _cost_source(section: dict) -> str:
    """Where a run's prices came from (runs before ``--cost-from`` existed calibrated their own)."""
    return section.get("cost_source", "calibrated in this run")


def _mark(ok: bool) -> str:
    return "yes" if ok else "no"


def markdown(doc: dict) -> str:
    meta, cost, summary = doc["meta"], doc["cost"], doc["summary"]
    ratio = cost["head_vs_target"]
    lines = [
        "# Draft head vs the generic 0.5B draft, and the controller with the head", "",
        f"Target Qwen2.5-Coder-1.5B-Instruct, bf16, {meta['threads']} threads ({meta['hardware']}), greedy, "
        f"{meta['max_new_tokens']} new tokens, {meta['prompts']} held-out prompts ({meta['per_class']} per class) from "
        f"`{meta.get('prompts_from', meta['head_dir'])}/heldout.jsonl`; configurations interleaved per prompt in one process.", "",
        f"Cost per drafted token at context {cost['context']} ({_cost_source(meta)}): head "
        f"{cost['head_ms_per_token']:.1f} ms, generic draft {cost['model_ms_per_token']:.1f} ms, one target forward "
        f"{cost['target_forward_ms']:.1f} ms → head / target **{ratio:.3f}** (bar ≤ {COST_BAR:.3f}: "
        f"{_mark(ratio <= COST_BAR)}); generic / target {cost['model_vs_target']:.3f}.", "",
        "| class | target tok/s | generic best (speedup) | head best (speedup) | head / generic (bar ≥ 1.5) | head vs target on code (bar ≥ 2.5) |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for cls, entry in summary["classes"].items():
        b = entry["best"]
        code = f"{b['head']['speedup']:.2f}× ({_mark(b['head']['speedup'] >= CODE_BAR)})" if cls == "code" else "-"
        lines.append(f"| {cls} | {entry['configs']['target']['tokens_per_s']:.2f} | {b['model']['config']} "
                     f"({b['model']['speedup']:.2f}×) | {b['head']['config']} ({b['head']['speedup']:.2f}×) | "
                     f"{entry['ratio']:.2f} ({_mark(entry['ratio'] >= GENERIC_BAR)}) | {code} |")  # fmt: skip
    lines += ["", "Tokens/s and engine α (accepted / proposed) per configuration:", ""] + config_table(summary)
    if doc["teacher_forced_alpha"]:
        lines += ["", "Teacher-forced acceptance of the head on the held-out collection (`eval.json`; α_j: j-th draft "
                  "token right given the previous, drafted from the head's own features):", ""]  # fmt: skip
        for cls, a in doc["teacher_forced_alpha"].items():
            lines.append(f"- {cls}: " + ", ".join(f"{k} {v:.3f}" for k, v in a.items() if v is not None))
    if doc["training"]:
        lines += ["", f"Training: {json.dumps(doc['training'])}"]
    if doc["controller"]:
        lines += [""] + controller_section(doc["controller"])
    lines += ["", f"bf16 outputs equal to target-only's: {summary['outputs_equal_target_share']:.0%} of speculative runs "
              "(near-tie argmax flips between batched and single-token forwards; exactness is a float32 property)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def controller_section(controller: dict) -> list[str]:
    lines = [f"## The adaptive controller with and without the head ({controller['prompts']} mixed prompts)", "",
             f"Default policy, cost model {_cost_source(controller)} (with the head's "
             "table), cold in-memory store per "
             "configuration, the policy's classifier picks each request's class"
             + (f"; controller settings overridden: {', '.join(controller['controller_set'])}"
                if controller.get("controller_set") else "") + ".", "",
             "| class | without head tok/s | with head tok/s | ratio (bar > 1 on all) | priced ratio |",
             "|---|---|---|---|---|"]  # fmt: skip
    for cls, entry in controller["summary"].items():
        t = entry["tokens_per_s"]
        priced = f"{entry['priced_ratio']:.3f}" if "priced_ratio" in entry else "-"
        lines.append(f"| {cls} | {t['without head']:.2f} | {t['with head']:.2f} | {entry['ratio']:.3f} | {priced} |")
    if "priced_ratio" in controller["summary"].get("all", {}):
        lines += ["", "Priced ratio: each run's rounds priced with the cost model instead of the clock (prefill, "
                  "each drafter's forwards with their catch-up, each verify forward's width), so the two "
                  "configurations compare on their decisions, not on the minutes they ran in."]
    used = defaultdict(lambda: defaultdict(int))
    for run in controller["runs"]:
        for drafter, rounds in run["rounds"].items():
            used[run["config"]][drafter] += rounds
    lines += ["", "Rounds by drafter (all prompts): " + "; ".join(
        f"{config}: " + ", ".join(f"{d} {n}" for d, n in sorted(counts.items())) for config, counts in used.items())]
    return lines + drafter_alpha_section(controller["runs"])


def drafter_alpha_section(runs: list[dict]) -> list[str]:
    """With the head: per class, each model-type drafter's rounds and acceptance (accepted / proposed tokens), and
    where its cold start came from in each request (the controller's ``class_side``)."""
    runs = [r for r in runs if r["config"] == "with head" and "proposed_accepted" in r]
    if not runs:
        return []
    by = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    sides = defaultdict(set)
    for r in runs:
        for drafter in ("head", "model"):
            proposed, accepted = r["proposed_accepted"].get(drafter, (0, 0))
            entry = by[r["class"]][drafter]
            entry[0] += r["rounds"].get(drafter, 0)
            entry[1] += proposed
            entry[2] += accepted
        sides[r["class"]].add(f"{r['predicted_class']}: head {r['class_side'].get('head', '-')}")
    lines = ["", "With the head, per class: rounds and acceptance (accepted / proposed tokens) of each drafter; the "
             "classifier's class and where the head's cold start came from in each request.", "",
             "| class | head rounds | head α | model rounds | model α | predicted class: head's cold start |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for cls in sorted(by):
        cells = []
        for drafter in ("head", "model"):
            rounds, proposed, accepted = by[cls][drafter]
            cells += [str(rounds), f"{accepted / proposed:.2f}" if proposed else "-"]
        lines.append(f"| {cls} | " + " | ".join(cells) + f" | {'; '.join(sorted(sides[cls]))} |")
    return lines


def controller_markdown(doc: dict) -> str:
    """``--controller-only``: the calibrated costs and step 3."""
    meta, cost = doc["meta"], doc["cost"]
    lines = ["# The adaptive controller with and without the draft head", "",
             f"Target Qwen2.5-Coder-1.5B-Instruct, bf16, {meta['threads']} threads ({meta['hardware']}), greedy, "
             f"{meta['max_new_tokens']} new tokens; head `{meta['head_dir']}`. Command: `{meta['command']}`.", "",
             f"Cost per drafted token at context {cost['context']} ({_cost_source(meta)}): head "
             f"{cost['head_ms_per_token']:.1f} ms, generic draft {cost['model_ms_per_token']:.1f} ms, one target forward "
             f"{cost['target_forward_ms']:.1f} ms.", ""] + controller_section(doc["controller"])  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
