"""A policy calibrated on another machine, run here: the controller with and without cost tracking (real pair).

The committed policies carry the cost model of the machine they were calibrated on. On a machine where forwards
scale differently with the tokens fed (an AVX2-only CPU in bf16: a 4-token forward costs ~2.7 one-token ones, where
the calibrating machine measured ~1.0), the controller prices speculation as if it were there. With
``track_costs`` it compares the round times the engine measures with the model's and decides with a corrected
copy once they disagree (``adaptive_spec/policy/cost_tracking.py``). For every prompt, back to back, in turn:

- target-only (plain steps);
- the adaptive controller with the policy as committed, cost tracking on (the default), cold store;
- the same with ``track_costs`` off, cold store.

Both controllers persist across prompts (one process, as a service would), so the first prompts show the lesson
being learnt. Greedy, bf16, 2 threads. On a machine like the calibrating one, tracking stays off and the two
controllers decide alike.

    python benchmarks/uncalibrated.py --traces notebooks/data/traces_small.jsonl --per-category 1 --max-prompt 160

``--replay TABLE.json ...`` instead replays the traces (no models): for every ordered pair of cost tables (the
policy file's and the saved calibrations given), decisions priced by one and time charged by the other, with and
without tracking, beside the policy calibrated where it runs (``results/uncalibrated_replay.*``).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adaptive import RESULTS, _count, round_robin  # noqa: E402
from results_files import write_results  # noqa: E402  (benchmarks/results_files.py)

from adaptive_spec.generator import AdaptiveGenerator, policy_from_file  # noqa: E402
from adaptive_spec.models import configure_threads, load_pair  # noqa: E402
from adaptive_spec.policy.base import FixedPolicy  # noqa: E402
from adaptive_spec.policy.calibrate import hardware  # noqa: E402
from adaptive_spec.policy.file import load_policy_file  # noqa: E402
from adaptive_spec.prompts import chat_ids  # noqa: E402
from adaptive_spec.traces.format import read_traces  # noqa: E402

PLAIN, TRACKED, UNTRACKED = "target-only", "adaptive, cost tracking", "adaptive, untracked"


def shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it (results stay readable on another checkout)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def tracked_prices(policy, widths=(1, 2, 4, 8, 16), context: int = 256) -> dict:
    """Verify and draft-step milliseconds the controller decides with now, beside the calibrated ones."""
    now, calibrated = policy.cost, policy.calibrated_cost
    row = {f"verify_{n}_ms": (round(calibrated.target(n, context) * 1e3, 1), round(now.target(n, context) * 1e3, 1))
           for n in widths}  # fmt: skip
    for name in calibrated.drafts:
        row[f"{name}_step_ms"] = (round(calibrated.drafts[name](1, context) * 1e3, 1),
                                  round(now.drafts[name](1, context) * 1e3, 1))  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, default=ROOT / "notebooks" / "data" / "traces_small.jsonl")
    parser.add_argument("--policy", type=Path, default=ROOT / "policies" / "qwen2.5-coder-cpu.json")
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--max-prompt", type=int, default=None, help="skip prompts longer than this (tokens): "
                        "a slow machine's prefill dominates otherwise")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cost-from", type=Path, default=None, metavar="TABLE",
                        help="decide with this saved calibration instead of the policy's (e.g. this machine's own: "
                        "where it fits, tracking should stay off)")  # fmt: skip
    parser.add_argument("--replay", type=Path, nargs="+", default=None, metavar="TABLE",
                        help="saved calibrations (a benchmark's JSON with a cost model, or a cost model's)")
    args = parser.parse_args()
    if args.replay:
        replay_matrix(args)
        return
    args.out = args.out or RESULTS / "uncalibrated"

    configure_threads(args.threads)
    policy_file = load_policy_file(args.policy)
    if args.cost_from:
        from adaptive import saved_cost_model

        policy_file = policy_file.model_copy(update={"cost": saved_cost_model(args.cost_from)})
    traces = [t for t in read_traces(args.traces, pair_id=policy_file.pair_id)
              if args.max_prompt is None or t.prompt_len <= args.max_prompt]  # fmt: skip
    seen = defaultdict(int)
    chosen = round_robin([t for t in traces if _count(seen, t.request_class) <= args.per_category])
    chosen = chosen[: args.limit] if args.limit else chosen

    pair = load_pair(dtype="bfloat16")
    tok = pair.tokenizer
    untracked_file = policy_file.model_copy(
        update={"controller": policy_file.controller.model_copy(update={"track_costs": False})})
    tracked_policy, untracked_policy = policy_from_file(policy_file), policy_from_file(untracked_file)
    generators = {
        PLAIN: AdaptiveGenerator(pair.target, pair.draft, tok, policy=FixedPolicy()),
        TRACKED: AdaptiveGenerator(pair.target, pair.draft, tok, policy=tracked_policy),
        UNTRACKED: AdaptiveGenerator(pair.target, pair.draft, tok, policy=untracked_policy),
    }
    generators[PLAIN].generate(chat_ids(tok, "Say hi."), max_new_tokens=8)  # warm-up (the controllers stay cold)

    rows, names = [], list(generators)
    for p, trace in enumerate(chosen):
        ids = torch.tensor([trace.prompt_ids])
        for name in names[p % len(names):] + names[: p % len(names)]:
            out = generators[name].generate(ids, max_new_tokens=args.max_new_tokens, prompt_text=trace.prompt)
            result = out.result
            row = {"prompt": p, "class": trace.request_class, "prompt_len": trace.prompt_len, "config": name,
                   "tokens": result.num_new_tokens, "seconds": result.total_s,
                   "decode_s": result.total_s - result.prefill_s, "decisions": out.report.decisions}  # fmt: skip
            if name == TRACKED:
                row["tracking_active"] = tracked_policy.cost_tracker.applied is not None
            rows.append(row)
            print(f"[{p + 1}/{len(chosen)}] {trace.request_class:15s} {name:26s} "
                  f"{result.num_new_tokens / result.total_s:6.2f} tok/s", flush=True)  # fmt: skip

    summary = summarize(rows)
    doc = {"meta": {"command": "python " + " ".join(sys.argv), "hardware": hardware(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "policy": shown(args.policy), "calibrated_on": policy_file.cost.hardware,
                    "cost_from": shown(args.cost_from) if args.cost_from else None,
                    "calibrated_at": policy_file.cost.measured_at, "prompts": len(chosen)},
           "summary": summary, "prices_at_end": tracked_prices(tracked_policy), "runs": rows}  # fmt: skip
    write_results(args.out, doc, markdown(doc))


def replay_matrix(args) -> None:
    """Every ordered pair of tables: decisions priced by the first, time charged by the second (x target-only)."""
    from adaptive import saved_cost_model

    from adaptive_spec.traces.simulate import simulate

    policy_file = load_policy_file(args.policy)
    traces = read_traces(args.traces, pair_id=policy_file.pair_id)
    tables = {"policy file": policy_file.cost} | {path.stem: saved_cost_model(path) for path in args.replay}

    def speed(decide: str, charge: str, track: bool) -> float:
        config = policy_file.controller.model_copy(update={"track_costs": track})
        policy = policy_from_file(policy_file.model_copy(update={"cost": tables[decide], "controller": config}))
        return simulate(traces, policy, tables[charge], args.max_new_tokens).throughput()

    rows = []
    for charge in tables:
        plain = simulate(traces, FixedPolicy(), tables[charge], args.max_new_tokens).throughput()
        there = speed(charge, charge, True) / plain
        for decide in (t for t in tables if t != charge):
            rows.append({"calibrated_on": decide, "run_on": charge, "untracked": speed(decide, charge, False) / plain,
                         "tracked": speed(decide, charge, True) / plain, "calibrated_there": there})  # fmt: skip
            print(rows[-1], flush=True)
    lines = ["# A policy calibrated on one machine, replayed on another", "",
             f"Traces `{shown(args.traces)}` ({len(traces)}), policy `{shown(args.policy)}`; decode speed relative to "
             "target-only on the machine it runs on.", "",
             "| calibrated on | run on | untracked | tracked | calibrated there |", "|---|---|---|---|---|"]
    lines += [f"| {r['calibrated_on']} | {r['run_on']} | {r['untracked']:.3f} | {r['tracked']:.3f} | "
              f"{r['calibrated_there']:.3f} |" for r in rows]  # fmt: skip
    lines += ["", f"Command: `python {' '.join(sys.argv)}`", ""]
    out = args.out or RESULTS / "uncalibrated_replay"
    write_results(out, {"meta": {"command": "python " + " ".join(sys.argv)}, "rows": rows}, "\n".join(lines))


def summarize(rows: list[dict]) -> dict:
    """Per class and overall: tokens/s over each configuration's total time, relative to target-only (end to
    end, prefill included, and decode alone)."""
    by = defaultdict(lambda: defaultdict(lambda: [0, 0.0, 0.0]))
    for r in rows:
        for key in (r["class"], "all"):
            acc = by[key][r["config"]]
            acc[0] += r["tokens"]
            acc[1] += r["seconds"]
            acc[2] += r["decode_s"]
    out = {}
    for key, configs in by.items():
        plain = configs[PLAIN]
        out[key] = {name: {"end_to_end": (t / s) / (plain[0] / plain[1]), "decode": (t / d) / (plain[0] / plain[2])}
                    for name, (t, s, d) in configs.items()}  # fmt: skip
    return out


def markdown(doc: dict) -> str:
    meta, summary = doc["meta"], doc["summary"]
    lines = [f"# A policy calibrated elsewhere, run on {meta['hardware']}", "",
             f"Policy `{meta['policy']}`, calibrated on {meta['calibrated_on']} ({meta['calibrated_at']}); "
             f"{meta['prompts']} prompts, interleaved. Speed relative to target-only, end to end (decode alone).", "",
             f"| class | {TRACKED} | {UNTRACKED} |", "|---|---|---|"]  # fmt: skip
    for key in sorted(summary, key=lambda k: (k == "all", k)):
        cells = [f"{summary[key][n]['end_to_end']:.3f} ({summary[key][n]['decode']:.3f})" for n in (TRACKED, UNTRACKED)]
        lines.append(f"| {'**all**' if key == 'all' else key} | " + " | ".join(cells) + " |")
    lines += ["", "Prices the tracking controller decided with at the end (calibrated → tracked, context 256):", ""]
    lines += [f"- {k}: {a} → {b}" for k, (a, b) in doc["prices_at_end"].items()]
    lines += ["", f"Command: `{meta['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
