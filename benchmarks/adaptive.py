"""Adaptive benchmark: the controller against fixed configurations on a mixed Spec-Bench workload (real pair).

Greedy, bf16, 2 threads, 128 new tokens. The workload is the held-out half of the traced Spec-Bench prompts (the
policy was trained on the other half), all categories mixed in one stream (shuffled, then one category at a time
in turn, so a run cut short stays balanced; results are saved after every prompt). For every prompt, back to
back in one process:

- target-only (this engine, plain steps) and HF assisted generation with its defaults;
- the best single fixed configuration in hindsight (over model draft k = 1..8, prompt lookup, and the
  confidence-stopped draft and hybrid policies of HEADROOM.md) and the
  per-category oracle (the best fixed configuration of each category in hindsight) — "hindsight" is decided by
  exact replay of these prompts' own traces, then run for real (``--best-plain`` / ``--best-fixed`` name the
  baselines instead, where the calibration was taken in a slow spell);
- AdaptiveGenerator with the trained policy, starting cold (empty statistics store), classifying each prompt
  itself (no class given).

Where two rows are the same fixed policy for a prompt (the per-category oracle often picks the best fixed
configuration), one run serves both.

Plus the off path: a policy that never speculates, through the full controller, against target-only; and the
controller's per-decision cost.

    python benchmarks/adaptive.py --traces /path/to/traces.jsonl --policy policies/qwen2.5-coder-cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from off_path import ENGINE_PLAIN, HF, measure, off_path_runs  # noqa: E402  (benchmarks/off_path.py)
from off_path import summarize as off_summary  # noqa: E402

from adaptive_spec.generator import AdaptiveGenerator, policy_from_file  # noqa: E402
from adaptive_spec.models import DEFAULT_PAIR, DRAFT_QUANTIZATIONS, configure_threads, load_pair  # noqa: E402
from adaptive_spec.models.load import quantized_pair_id  # noqa: E402
from adaptive_spec.policy.base import FixedPolicy  # noqa: E402
from adaptive_spec.policy.cost import CostModel  # noqa: E402
from adaptive_spec.policy.file import PolicyFileError, load_policy_file  # noqa: E402
from adaptive_spec.policy.train import split_by_class  # noqa: E402
from adaptive_spec.prompts import chat_ids  # noqa: E402
from adaptive_spec.traces.format import read_traces  # noqa: E402
from adaptive_spec.traces.simulate import replay, simulate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
EXTENDED = "adaptive + lookup extension (cold)"
# The fixed set the issue names (model draft k = 1..8, prompt lookup), plus what HEADROOM.md found to be the strongest
# fixed policies: a confidence-stopped draft and the hybrid (lookup when it proposes, else that draft). The adaptive
# controller is compared with the best of each: the set, and the stronger set including the hybrids.
PLAIN_FIXED = [FixedPolicy("model", k) for k in range(1, 9)] + [FixedPolicy("lookup", k) for k in (2, 4, 6, 8, 10, 16)]
FIXED = PLAIN_FIXED + [
    FixedPolicy(drafter, k, threshold) for drafter in ("model", "hybrid") for k in (4, 8, 16) for threshold in (0.5, 0.7)
]


class Timed:
    """Wraps a policy to time its sessions' decide() and on_round() calls (microseconds).

    ``samples``: every decide(); ``decisions``: (round index in its request, drafter chosen) per sample;
    ``on_round_samples``: every on_round() (the controller's per-round learning, also between forwards)."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.samples, self.decisions, self.on_round_samples = [], [], []

    def start(self, request):
        session = self.inner.start(request)
        decide, on_round = session.decide, session.on_round

        def timed_decide(state):
            t0 = time.perf_counter()
            decision = decide(state)
            self.samples.append((time.perf_counter() - t0) * 1e6)
            self.decisions.append((len(self.decisions) - start_index, decision.drafter))
            return decision

        def timed_on_round(record):
            t0 = time.perf_counter()
            on_round(record)
            self.on_round_samples.append((time.perf_counter() - t0) * 1e6)

        start_index = len(self.decisions)
        session.decide, session.on_round = timed_decide, timed_on_round
        return session


def hindsight(traces, cost, max_new_tokens=None):
    """By exact replay: the best single fixed configuration overall, the best of the issue's plain set (model k,
    lookup), and the best per class."""
    runs = {p.name: simulate(traces, p, cost, max_new_tokens) for p in FIXED}
    best = max(runs, key=lambda n: runs[n].throughput())
    best_plain = max((p.name for p in PLAIN_FIXED), key=lambda n: runs[n].throughput())
    classes = sorted({t.request_class for t in traces})
    per_class = {c: max(runs, key=lambda n: runs[n].throughput(c)) for c in classes}
    by_name = {p.name: p for p in FIXED}
    return (by_name[best], by_name[best_plain], {c: by_name[n] for c, n in per_class.items()},
            {n: r.throughput() for n, r in runs.items()})


def saved_cost_model(path: Path) -> CostModel:
    """The cost model a benchmark run priced with, from its saved result (replay scripts and ``--cost-from`` price
    with it): under ``summary`` where adaptive.py ``--calibrate`` wrote it, at the top where head.py did."""
    doc = json.loads(path.read_text())
    saved = doc.get("cost_model") or (doc.get("summary") or {}).get("cost_model")
    if saved is None:
        raise SystemExit(f"{path} holds no calibrated cost model (run adaptive.py with --calibrate, or head.py)")
    return CostModel.model_validate(saved)


def chosen(name: str | None, candidates: list, replay_pick):
    """The configuration named on the command line (one of ``candidates``), else replay's pick."""
    if name is None:
        return replay_pick
    by_name = {p.name: p for p in candidates}
    if name not in by_name:
        raise SystemExit(f"unknown configuration {name!r}; choose from: {', '.join(by_name)}")
    return by_name[name]


def _named_picks(meta: dict) -> str:
    """A sentence for the report where the command line named a baseline instead of replay's pick."""
    picks = meta.get("replay_picks", {})
    named = [f"{meta[key]} (replay picked {picks[key]})" for key in ("best_fixed", "best_plain_fixed")
             if key in picks and picks[key] != meta.get(key)]  # fmt: skip
    return f"Named on the command line: {'; '.join(named)}. " if named else ""


def round_robin(traces: list) -> list:
    """One prompt of each category in turn (each category's prompts in their given order)."""
    queues = defaultdict(list)
    for trace in traces:
        queues[trace.request_class].append(trace)
    ordered, rank = [], 0
    while len(ordered) < len(traces):
        ordered += [q[rank] for _, q in sorted(queues.items()) if rank < len(q)]
        rank += 1
    return ordered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path)
    parser.add_argument("--policy", type=Path, default=ROOT / "policies" / "qwen2.5-coder-cpu.json")
    parser.add_argument("--held-out", type=float, default=0.5,
                        help="share of each category's traces held out (the policy was trained on the rest)")
    parser.add_argument("--all-held-out", action="store_true",
                        help="the traces file holds only prompts the policy was not trained on (e.g. "
                             "notebooks/data/traces_small.jsonl): use all of them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draft-quantize", choices=DRAFT_QUANTIZATIONS, default="none",
                        help="the draft for every configuration that drafts (fixed, oracle, HF assisted, adaptive); "
                             "int8 needs that pair's policy and traces (its own pair id)")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="at most this many prompts (quick runs)")
    parser.add_argument("--per-category", type=int, default=None,
                        help="at most this many held-out prompts of each category (shorter, still balanced runs)")
    parser.add_argument("--skip-hf", action="store_true", help="leave out HF assisted generation (the slowest run)")
    parser.add_argument("--off-prompts", type=int, default=6, help="prompts for the off-path measurement")
    parser.add_argument("--calibrate", action="store_true",
                        help="measure the cost model here, right before the runs (and again after, to report drift), "
                             "instead of using the policy file's; the replay and the controller then use it")
    parser.add_argument("--lookup-extension", type=int, default=0,
                        help="also run the controller with this lookup extension (Decision.extend) from its own cold "
                             "store, beside the policy as committed")  # fmt: skip
    parser.add_argument("--best-plain", default=None, metavar="NAME",
                        help="measure this configuration of the issue's set (e.g. 'model k=2') as its best fixed one "
                             "instead of replay's pick: a calibration taken in a slow spell can make replay pick a "
                             "weaker one (replay's pick is still printed and saved)")  # fmt: skip
    parser.add_argument("--best-fixed", default=None, metavar="NAME",
                        help="the same for the best fixed configuration of the whole set (e.g. 'hybrid k=4 thr=0.7')")
    parser.add_argument("--out", type=Path, default=RESULTS / "adaptive")
    parser.add_argument("--exclude-prompts", default=None,
                        help="with --resummarize: comma-separated prompt indices (0-based) to leave out")
    parser.add_argument("--resummarize", type=Path, default=None,
                        help="print the summary of this saved result without --exclude-prompts (no runs)")
    args = parser.parse_args()
    if args.resummarize:
        print(resummarize(args.resummarize, {int(p) for p in (args.exclude_prompts or "").split(",") if p}))
        return

    if args.traces is None:
        parser.error("--traces is required (unless --resummarize)")
    configure_threads(args.threads)
    try:  # the pair this run loads must be the policy's: checked before the minute of loading
        policy_file = load_policy_file(args.policy, quantized_pair_id(DEFAULT_PAIR, args.draft_quantize))
    except PolicyFileError as error:
        parser.error(str(error))
    traces = read_traces(args.traces, pair_id=policy_file.pair_id)
    held_out = list(traces) if args.all_held_out else split_by_class(traces, args.held_out, args.seed)[1]
    if args.per_category:
        seen = defaultdict(int)
        held_out = [t for t in held_out if _count(seen, t.request_class) <= args.per_category]
    random.Random(args.seed).shuffle(held_out)
    held_out = round_robin(held_out)  # a run cut short (or --limit) still covers the categories evenly
    held_out = held_out[: args.limit] if args.limit else held_out
    pair = load_pair(dtype="bfloat16", draft_quantize=args.draft_quantize)
    tok = pair.tokenizer
    drift = {}
    if args.calibrate:
        policy_file = policy_file.model_copy(update={"cost": fresh_cost(pair)})
        drift["before"] = cost_summary(policy_file.cost)
    best_fixed, best_plain, per_class, sim_fixed = hindsight(held_out, policy_file.cost, args.max_new_tokens)
    print(f"best single fixed in hindsight: {best_fixed.name}; of model k / lookup: {best_plain.name}; per class: "
          f"{ {c: p.name for c, p in per_class.items()} }", flush=True)  # fmt: skip
    replay_picks = {"best_fixed": best_fixed.name, "best_plain_fixed": best_plain.name}
    best_fixed = chosen(args.best_fixed, FIXED, best_fixed)
    best_plain = chosen(args.best_plain, PLAIN_FIXED, best_plain)
    adaptive_policy = Timed(policy_from_file(policy_file))  # empty in-memory store: a cold start
    adaptive = AdaptiveGenerator(pair.target, pair.draft, tok, policy=adaptive_policy)
    fixed_gen = AdaptiveGenerator(pair.target, pair.draft, tok, policy=best_fixed)
    plain_gen = AdaptiveGenerator(pair.target, pair.draft, tok, policy=FixedPolicy())
    default_assistant = copy.deepcopy(pair.draft.generation_config)

    def run_fixed(policy):
        fixed_gen.policy = policy
        return lambda ids, row: fixed_gen.generate(ids, max_new_tokens=args.max_new_tokens).result

    def hf_default(ids, row):
        pair.draft.generation_config = copy.deepcopy(default_assistant)
        start = time.perf_counter()
        out = pair.target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=pair.draft,
                                   do_sample=False, max_new_tokens=args.max_new_tokens,
                                   pad_token_id=tok.pad_token_id)  # fmt: skip
        return _Result(out.shape[1] - ids.shape[1], time.perf_counter() - start)

    fixed_names = {f"best fixed ({best_fixed.name})": best_fixed.name,
                   f"best model-k/lookup ({best_plain.name})": best_plain.name}  # fmt: skip

    def same_run(name: str, row) -> str:
        """Configurations that are the same fixed policy for this prompt share one run (the oracle often picks the
        best fixed configuration): same tokens, and one measurement instead of two back to back."""
        if name == "per-category oracle":
            return per_class[row.request_class].name
        return fixed_names.get(name, name)

    corrected: dict[str, bool] = {}  # per adaptive configuration: did its last request decide with corrected costs

    def run_adaptive(name: str, generator: AdaptiveGenerator):
        def run(ids, row):
            out = generator.generate(ids, max_new_tokens=args.max_new_tokens, prompt_text=row.prompt)
            corrected[name] = "costs" in out.report.extra  # cost tracking found the calibration off (a warning too)
            return out.result

        return run

    configs = {
        "target-only": lambda ids, row: plain_gen.generate(ids, max_new_tokens=args.max_new_tokens).result,
        "hf assisted default": hf_default,
        f"best fixed ({best_fixed.name})": run_fixed(best_fixed),
        f"best model-k/lookup ({best_plain.name})": run_fixed(best_plain),
        "per-category oracle": lambda ids, row: run_fixed(per_class[row.request_class])(ids, row),
        "adaptive (cold)": run_adaptive("adaptive (cold)", adaptive),
    }
    extended_file = None
    if args.lookup_extension:
        config = policy_file.controller.model_copy(update={"lookup_extension": args.lookup_extension})
        extended_file = policy_file.model_copy(update={"controller": config})
        extended = AdaptiveGenerator(pair.target, pair.draft, tok, policy=policy_from_file(extended_file))
        configs[EXTENDED] = run_adaptive(EXTENDED, extended)
    if args.skip_hf:
        del configs["hf assisted default"]
    if best_plain.name == best_fixed.name:  # the set already holds the best: one run serves both
        del configs[f"best model-k/lookup ({best_plain.name})"]
    predicted = predicted_seconds(held_out, policy_file, best_fixed, best_plain, per_class, args.max_new_tokens,
                                  extended_file)  # fmt: skip
    warm = chat_ids(tok, "Say hi.")
    for name, run in configs.items():
        if name not in ("adaptive (cold)", EXTENDED):  # the adaptive stores must start empty
            run(warm, held_out[0])

    rows = []
    names = list(configs)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def meta(done: int) -> dict:
        return {"prompts": done, "prompts_planned": len(held_out), "partial": done < len(held_out),
                "max_new_tokens": args.max_new_tokens, "threads": args.threads, "policy": str(args.policy),
                "draft_quantize": args.draft_quantize,
                "traces": str(args.traces), "best_fixed": best_fixed.name, "best_plain_fixed": best_plain.name,
                "per_category_oracle": {c: p.name for c, p in per_class.items()}, "replay_picks": replay_picks,
                "command": "python " + " ".join(sys.argv)}  # fmt: skip

    def save(summary: dict, done: int) -> None:
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta(done), "summary": summary, "runs": rows},
                                                            indent=1))  # fmt: skip
        args.out.with_suffix(".md").write_text(markdown(summary, meta(done)))

    for p, trace in enumerate(held_out):
        ids = torch.tensor([trace.prompt_ids])
        order = names[p % len(names) :] + names[: p % len(names)]
        measured = {}
        for name in order:
            key = same_run(name, trace)
            reused = key in measured
            result = measured[key] = measured[key] if reused else configs[name](ids, trace)
            rows.append({"prompt": p, "class": trace.request_class, "config": name, "reused_run": reused,
                         "tokens": result.num_new_tokens, "seconds": result.total_s,
                         "replay_seconds": predicted.get(name, {}).get(p), "costs_corrected": corrected.get(name)})  # fmt: skip
            print(f"[{p + 1}/{len(held_out)}] {trace.request_class:15s} {name:32s} "
                  f"{result.num_new_tokens / result.total_s:6.2f} tok/s", flush=True)  # fmt: skip
        if p + 1 < len(held_out):  # saved after every prompt: a run cut short keeps what it measured
            save(summarize(rows, names, adaptive_policy.samples, None, sim_fixed), p + 1)

    off = off_path(pair, policy_file, held_out[: args.off_prompts], args.max_new_tokens)
    summary = summarize(rows, names, adaptive_policy.samples, off, sim_fixed)
    if args.calibrate:
        drift["after"] = cost_summary(fresh_cost(pair))
        summary["cost_drift"] = drift
        summary["cost_model"] = json.loads(policy_file.cost.model_dump_json())
    save(summary, len(held_out))
    plot(summary, args.out.with_suffix(".png"))
    print(markdown(summary, meta(len(held_out))))


def resummarize(result: Path, exclude: set[int]) -> str:
    """The summary of a saved run without some prompts (e.g. those that ran while another process competed for
    the cores): same rows, same ratios, no new measurement."""
    saved = json.loads(result.read_text())
    rows = [r for r in saved["runs"] if r["prompt"] not in exclude]
    names = list(saved["summary"]["tokens_per_s"])
    summary = summarize(rows, names, [1.0], None, None)
    kept = len({r["prompt"] for r in rows})
    lines = [f"Without prompts {sorted(exclude)} ({kept} of {saved['meta']['prompts']} kept):", "",
             "| config | " + " | ".join(summary["speedup_vs_target"]["target-only"]) + " |",
             "|---|" + "---|" * len(summary["speedup_vs_target"]["target-only"])]  # fmt: skip
    for name, row in summary["speedup_vs_target"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")
    lines += ["", f"- adaptive / best fixed of the issue's set: **{summary['adaptive_vs_best_plain_fixed']:.3f}**; "
              f"/ best fixed hybrid: **{summary['adaptive_vs_best_fixed']:.3f}**; / per-category oracle: "
              f"**{summary['adaptive_vs_per_category_oracle']:.3f}**; worst category / target-only: "
              f"**{summary['worst_category_vs_target']:.3f}**"]  # fmt: skip
    return "\n".join(lines) + "\n"


def fresh_cost(pair):
    """The cost model measured now, in this process, as `adaptive-spec calibrate` does."""
    from adaptive_spec.policy.calibrate import calibrate_pair

    cost = calibrate_pair(pair.target, pair.draft, pair.pair_id, "bfloat16", reps=5)
    print("calibrated: " + ", ".join(f"{k} {v:.1f}" for k, v in cost_summary(cost).items()), flush=True)
    return cost


def cost_summary(cost) -> dict[str, float]:
    """A few milliseconds that show how fast the machine was at a moment (context 128)."""
    return {"target_1_ms": cost.target(1, 128) * 1e3, "target_4_ms": cost.target(4, 128) * 1e3,
            "draft_1_ms": cost.draft(1, 128) * 1e3, "prefill_512_ms": cost.prefill_s(512) * 1e3}  # fmt: skip


def _count(seen: dict, key: str) -> int:
    seen[key] += 1
    return seen[key]


def predicted_seconds(traces, policy_file, best_fixed, best_plain, per_class, max_new_tokens=None,
                      extended_file=None) -> dict[str, dict[int, float]]:  # fmt: skip
    """Per configuration and prompt, the time exact replay predicts (the simulator's validation).

    The adaptive replay runs on a fresh policy in the same order, so its store evolves as in the real run; it uses
    the traces' classes where the real run classifies the prompt itself.
    """
    cost = policy_file.cost
    policies = {"target-only": [FixedPolicy()] * len(traces),
                f"best fixed ({best_fixed.name})": [best_fixed] * len(traces),
                f"best model-k/lookup ({best_plain.name})": [best_plain] * len(traces),
                "per-category oracle": [per_class[t.request_class] for t in traces]}  # fmt: skip
    out = {name: {p: replay(t, pol[p], cost, max_new_tokens).seconds for p, t in enumerate(traces)} for name, pol in policies.items()}
    adaptive = policy_from_file(policy_file)
    out["adaptive (cold)"] = {p: replay(t, adaptive, cost, max_new_tokens).seconds for p, t in enumerate(traces)}
    if extended_file is not None:
        extended = policy_from_file(extended_file)
        out[EXTENDED] = {p: replay(t, extended, cost, max_new_tokens).seconds for p, t in enumerate(traces)}
    return out


def validation(rows) -> dict:
    """How close replayed time is to measured time, per configuration (bar: within 10%)."""
    out = {}
    for name in sorted({r["config"] for r in rows if r.get("replay_seconds")}):
        errors = [r["replay_seconds"] / r["seconds"] - 1 for r in rows if r["config"] == name and r.get("replay_seconds")]
        out[name] = {"prompts": len(errors), "within_10pct": sum(abs(e) <= 0.10 for e in errors),
                     "median_abs_error": statistics.median(abs(e) for e in errors),
                     "total_error": sum(r["replay_seconds"] for r in rows if r["config"] == name)
                     / sum(r["seconds"] for r in rows if r["config"] == name) - 1}  # fmt: skip
    return out


class _Result:
    def __init__(self, tokens: int, seconds: float):
        self.num_new_tokens, self.total_s = tokens, seconds


def off_path(pair, policy_file, traces, max_new_tokens) -> dict:
    """A controller that never speculates against plain decoding, interleaved (``benchmarks/off_path.py``)."""
    runs = off_path_runs(pair, policy_file, max_new_tokens)
    summary = off_summary(measure(runs, [(torch.tensor([t.prompt_ids]), t.prompt, t.request_class) for t in traces]))
    return {**summary, "overhead_vs_engine_plain": summary["controller_overhead"][ENGINE_PLAIN]["pooled"],
            "overhead_vs_hf_generate": summary["controller_overhead"][HF]["pooled"]}  # fmt: skip


def summarize(rows, names, decide_us, off, sim_fixed) -> dict:
    classes = sorted({r["class"] for r in rows})
    tps = {}
    for name in names:
        tps[name] = {}
        for cls in classes + ["all"]:
            rs = [r for r in rows if r["config"] == name and (cls == "all" or r["class"] == cls)]
            tps[name][cls] = sum(r["tokens"] for r in rs) / sum(r["seconds"] for r in rs)
    base, adaptive = "target-only", "adaptive (cold)"
    best = next(n for n in names if n.startswith("best fixed"))
    plain = next((n for n in names if n.startswith("best model-k/lookup")), best)
    speedup = {n: {c: tps[n][c] / tps[base][c] for c in tps[n]} for n in names}
    return {
        "tokens_per_s": tps,
        "speedup_vs_target": speedup,
        "adaptive_vs_best_fixed": tps[adaptive]["all"] / tps[best]["all"],
        "adaptive_vs_best_plain_fixed": tps[adaptive]["all"] / tps[plain]["all"],
        "adaptive_vs_per_category_oracle": tps[adaptive]["all"] / tps["per-category oracle"]["all"],
        "worst_category_vs_target": min(speedup[adaptive][c] for c in classes),
        "decide_us": {"p50": statistics.median(decide_us), "p99": sorted(decide_us)[int(0.99 * len(decide_us))],
                      "count": len(decide_us)},  # fmt: skip
        "off_path": off,
        "simulated_fixed_tps": sim_fixed,
        "replay_validation": validation(rows),
        **({"extension_vs_adaptive": tps[EXTENDED]["all"] / tps[adaptive]["all"]} if EXTENDED in tps else {}),
        "costs_corrected": {n: sum(bool(r.get("costs_corrected")) for r in rows if r["config"] == n)
                            for n in (adaptive, EXTENDED) if n in tps},  # requests priced by cost tracking
    }


def _draft_note(meta) -> str:
    return " (the draft with int8 linear layers, in every configuration that drafts)" if meta.get(
        "draft_quantize") == "int8" else ""


def markdown(summary, meta) -> str:
    tps = summary["tokens_per_s"]
    classes = [c for c in next(iter(tps.values())) if c != "all"] + ["all"]
    lines = ["# Adaptive benchmark", "",
             f"Reference pair, bf16{_draft_note(meta)}, {meta['threads']} threads, greedy, "
             f"{meta['max_new_tokens']} new tokens, "
             f"{meta['prompts']} held-out Spec-Bench prompts (categories in turn), every configuration interleaved per prompt. "
             f"Best single fixed configuration in hindsight: **{meta['best_fixed']}**; of the issue's set (model draft "
             f"k = 1..8, prompt lookup): **{meta.get('best_plain_fixed', meta['best_fixed'])}**. "
             + _named_picks(meta) + f"Command: `{meta.get('command', '')}`.", "",
             *([f"**Partial run: {meta['prompts']} of {meta['prompts_planned']} prompts** (saved after each prompt; "
                "the hindsight choices were made by replay on all of them; no off-path or drift measurement).", ""]
               if meta.get("partial") else []),
             "Speedup over target-only (tokens/s ratio):", "",
             "| config | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]  # fmt: skip
    for name, row in summary["speedup_vs_target"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in classes) + " |")
    d, o = summary["decide_us"], summary["off_path"]
    plain = summary.get("adaptive_vs_best_plain_fixed", summary["adaptive_vs_best_fixed"])
    lines += ["", f"- adaptive / best single fixed of the issue's set (model k = 1..8, lookup): **{plain:.3f}** "
              "(bar >= 1.15)",
              f"- adaptive / best single fixed including the hybrids: **{summary['adaptive_vs_best_fixed']:.3f}** "
              "(the stronger baseline HEADROOM.md asks to beat: > 1)",
              f"- adaptive / per-category oracle: **{summary['adaptive_vs_per_category_oracle']:.3f}** (bar >= 0.90)",
              f"- worst category, adaptive / target-only: **{summary['worst_category_vs_target']:.3f}** (bar >= 0.98)",
              *([f"- the controller with the lookup extension / as committed: **{summary['extension_vs_adaptive']:.3f}**"]
                if "extension_vs_adaptive" in summary else []),
              f"- controller decision cost: p50 {d['p50']:.1f} us, p99 {d['p99']:.1f} us over {d['count']} decisions "
              "(bar p50 <= 50 us)",
              *(["- requests priced by cost tracking (the calibration found off): " + ", ".join(
                  f"{name} {n}" for name, n in summary["costs_corrected"].items())]
                if "costs_corrected" in summary else []),
              f"- off path ({o['prompts']} prompts): a controller that never speculates, against plain decoding: "
              f"{o['overhead_vs_engine_plain'] * 100:+.2f}% vs this engine at k=0, "
              f"{o['overhead_vs_hf_generate'] * 100:+.2f}% vs `generate` (bar <= 2%); tokens/s "
              + ", ".join(f"{k} {v:.3f}" for k, v in o["tokens_per_s"].items())
              if o else "- off path: not measured (partial run)"]  # fmt: skip
    lines += ["", "Replay validation: time predicted by exact replay of each prompt's trace vs measured time:", "",
              "| config | prompts | within 10% | median abs error | total error |", "|---|---|---|---|---|"]
    for name, v in summary["replay_validation"].items():
        lines.append(f"| {name} | {v['prompts']} | {v['within_10pct']} | {v['median_abs_error'] * 100:.1f}% | "
                     f"{v['total_error'] * 100:+.1f}% |")  # fmt: skip
    if "cost_drift" in summary:
        before, after = summary["cost_drift"]["before"], summary["cost_drift"]["after"]
        lines += ["", "Cost model measured in this process before the runs (used by the replay and the controller) and "
                  "again after them, to show how much the machine's speed drifted during the run:", "",
                  "| | " + " | ".join(before) + " |", "|---|" + "---|" * len(before),
                  "| before | " + " | ".join(f"{v:.1f}" for v in before.values()) + " |",
                  "| after | " + " | ".join(f"{after[k]:.1f}" for k in before) + " |"]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = summary["speedup_vs_target"]
    names = [n for n in speed if n != "target-only"]
    classes = [c for c in next(iter(speed.values()))]
    fig, ax = plt.subplots(figsize=(max(8, len(classes) * 0.9), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([j + i * width for j in range(len(classes))], [speed[name][c] for c in classes], width, label=name)
    ax.axhline(1.0, color="gray", ls="--", lw=1)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(classes))], classes, rotation=45, ha="right")
    ax.set_ylabel("speedup over target-only")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
