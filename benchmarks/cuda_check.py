"""CUDA check of the engine (a script for a lent GPU machine, not a test: CI and the dev machine have no GPU).

What it checks, on the first CUDA device:

1. Greedy losslessness in float32: this engine's output equals ``target.generate(do_sample=False)`` token for token
   on tiny random-init Qwen2 pairs (model, lookup and hybrid drafters, k in {1, 2, 3, 4, 8}, k changing every
   round, a draft with a padded vocabulary), and on a Qwen2.5-1.5B-shaped random-init target with a noisy copy as
   draft (bigger kernels; fp32 matmuls of 1 and k+1 rows may round differently, so mismatches are counted, not
   assumed away).
2. Speculative sampling on CUDA with a CUDA generator: chi-square of the first tokens against the target's exact
   distribution (the unit test's set-up, fewer samples); a seed repeats its output; a CPU generator is refused
   with a clear error before any work.
3. Speed, bf16, batch 1: 1.5B-shaped random-init target with itself as the draft (every proposal accepted, so the
   rounds are full) and with a 0.5B-shaped random draft (almost nothing accepted): tokens/s of HF ``generate``,
   HF assisted generation at k = 4 and this engine at k = 0 and 4, and the share of this engine's wall time spent
   outside model forwards (the Python loop's cost, which a fast GPU exposes and a CPU hides).

The real reference pair cannot travel to that machine (1.6 GB against a 64 MiB transfer limit), hence the shapes.

    python benchmarks/cuda_check.py --out "$OUT/cuda"
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaptive_spec.engine import (  # noqa: E402
    PLAIN_STEP,
    Decision,
    FallbackDrafter,
    ModelDrafter,
    PromptLookupDrafter,
    SamplingParams,
    SpeculativeEngine,
    StopRule,
    fixed,
)
from tests.test_engine_sampling import NEW, PROMPT, VOCAB, chi_square_pvalue, exact_joint  # noqa: E402
from tests.tiny import noisy_copy, tiny_model, tiny_pair  # noqa: E402

DEVICE = torch.device("cuda")
PROMPTS = [[5, 17, 42, 9, 3, 17, 42, 9, 77, 5, 17], [100, 101, 102, 103, 100, 101], list(range(20, 60))]

# Qwen2.5-1.5B and -0.5B shapes (the reference pair's), random weights
SHAPE_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
SHAPE_0_5B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip


def qwen(shape: dict, seed: int, dtype: torch.dtype, vocab: int = 151936) -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=vocab, max_position_embeddings=4096, bos_token_id=0, eos_token_id=1,
                         pad_token_id=0, **shape)  # fmt: skip
    torch.manual_seed(seed)
    with torch.device(DEVICE):
        model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # sharper logits: fewer near-ties (as tests/tiny.py)
    return model.to(dtype)


def reference(target, prompt, n):
    ids = torch.tensor([prompt], device=DEVICE)
    out = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                          eos_token_id=-1, pad_token_id=0)  # fmt: skip
    return out[0].tolist()


def greedy_tiny() -> dict:
    target, draft = tiny_pair()
    padded = noisy_copy(target, 0.3, seed=2, vocab_size=160).to(DEVICE)  # draft vocab 160 > target's 128
    target, draft = target.to(DEVICE), draft.to(DEVICE)
    lookup = PromptLookupDrafter()
    engine = SpeculativeEngine(target, [ModelDrafter(draft), lookup, FallbackDrafter(lookup, ModelDrafter(draft, "m2"),
                               name="hybrid"), ModelDrafter(padded, "padded")])  # fmt: skip
    cases, failures = 0, []
    for drafter, k in itertools.product(["model", "lookup", "hybrid", "padded"], [1, 2, 3, 4, 8]):
        for p, prompt in enumerate(PROMPTS):
            out = engine.generate(torch.tensor(prompt), fixed(drafter, k), stop=StopRule(40))
            cases += 1
            if out.sequences[0].tolist() != reference(target, prompt, 40):
                failures.append(f"{drafter} k={k} prompt {p}")
    schedule = [Decision("model", 3), PLAIN_STEP, Decision("lookup", 5), Decision("model", 1),
                Decision("hybrid", 8), Decision("model", 6, 0.5), Decision("padded", 4)]  # fmt: skip
    for p, prompt in enumerate(PROMPTS):
        it = itertools.cycle(schedule)
        out = engine.generate(torch.tensor(prompt), lambda s: next(it), stop=StopRule(50))
        cases += 1
        if out.sequences[0].tolist() != reference(target, prompt, 50):
            failures.append(f"k changing every round, prompt {p}")
    assert out.sequences.device.type == "cuda"
    return {"cases": cases, "mismatches": failures}


def greedy_large() -> dict:
    target = qwen(SHAPE_1_5B, 0, torch.float32)
    draft = copy.deepcopy(target)
    g = torch.Generator(device=DEVICE).manual_seed(3)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g, device=DEVICE))
    engine = SpeculativeEngine(target, [ModelDrafter(draft), PromptLookupDrafter()])
    rows = []
    for (drafter, k), (p, prompt) in itertools.product([("model", 4), ("model", 8), ("lookup", 4)], enumerate(PROMPTS)):
        out = engine.generate(torch.tensor(prompt), fixed(drafter, k), stop=StopRule(64))
        expected = reference(target, prompt, 64)
        got = out.sequences[0].tolist()
        first_diff = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
        rows.append({"drafter": drafter, "k": k, "prompt": p, "identical": got == expected,
                     "first_difference_at": first_diff, "alpha": out.alpha if out.proposed else None})  # fmt: skip
    del engine, target, draft
    torch.cuda.empty_cache()
    return {"runs": rows, "identical": sum(r["identical"] for r in rows), "of": len(rows)}


def sampling(samples: int) -> dict:
    target = tiny_model(0, vocab_size=VOCAB, layers=1, hidden=16).to(DEVICE)
    draft = tiny_model(5, vocab_size=VOCAB, layers=1, hidden=16).to(DEVICE)
    lookup = PromptLookupDrafter(max_ngram=2)
    engine = SpeculativeEngine(target, [ModelDrafter(draft), lookup,
                                        FallbackDrafter(lookup, ModelDrafter(draft, "m2"), name="hybrid")])  # fmt: skip
    cases = {
        "model-T1": (fixed("model", 3), SamplingParams(do_sample=True)),
        "switching-T0.7-topp0.8-topk5": (
            lambda s, it=itertools.cycle([Decision("model", 2), Decision("hybrid", 3), Decision("lookup", 1)]): next(it),
            SamplingParams(do_sample=True, temperature=0.7, top_p=0.8, top_k=5)),
    }  # fmt: skip
    result = {}
    for name, (decide, params) in cases.items():
        expected = exact_joint(target.cpu(), PROMPT, params)
        target.to(DEVICE)
        generator = torch.Generator(device=DEVICE).manual_seed(1234)
        counts, proposed, accepted = Counter(), 0, 0
        start = time.perf_counter()
        for _ in range(samples):
            out = engine.generate(torch.tensor(PROMPT), decide, stop=StopRule(NEW), sampling=params, generator=generator)
            counts[tuple(out.new_tokens.tolist())] += 1
            proposed += out.proposed
            accepted += out.accepted
        result[name] = {"samples": samples, "p_value": chi_square_pvalue(counts, expected, samples),
                        "accepted": accepted, "proposed": proposed, "seconds": time.perf_counter() - start}  # fmt: skip
    params = SamplingParams(do_sample=True, temperature=0.9)
    seeded = [engine.generate(torch.tensor(PROMPT), fixed("model", 3), stop=StopRule(20), sampling=params,
                              generator=torch.Generator(device=DEVICE).manual_seed(99)).new_tokens.tolist()
              for _ in range(2)]  # fmt: skip
    result["seed_repeats"] = seeded[0] == seeded[1]
    try:
        engine.generate(torch.tensor(PROMPT), fixed("model", 3), stop=StopRule(4), sampling=params,
                        generator=torch.Generator().manual_seed(1))  # fmt: skip
        result["cpu_generator"] = "accepted (unexpected)"
    except ValueError as e:
        result["cpu_generator"] = f"refused: {e}"
    return result


def speed(tokens: int, reps: int) -> dict:
    target = qwen(SHAPE_1_5B, 0, torch.bfloat16)
    small = qwen(SHAPE_0_5B, 7, torch.bfloat16)
    rows = []
    for draft_name, draft in [("self (all accepted)", target), ("0.5B random (~none accepted)", small)]:
        engine = SpeculativeEngine(target, [ModelDrafter(draft)])
        stop = StopRule(tokens)
        assistant = copy.copy(draft)  # HF reads k from the assistant's generation_config: give it its own
        assistant.generation_config = copy.deepcopy(draft.generation_config)
        assistant.generation_config.num_assistant_tokens = 4
        assistant.generation_config.num_assistant_tokens_schedule = "constant"
        assistant.generation_config.assistant_confidence_threshold = 0.0

        def hf(ids, **kw):
            return target.generate(ids[None], attention_mask=torch.ones_like(ids[None]), do_sample=False,
                                   max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0, **kw)  # fmt: skip

        configs = {
            "hf generate": lambda ids: (hf(ids), None),
            "hf assisted k=4": lambda ids: (hf(ids, assistant_model=assistant), None),
            "ours k=0": lambda ids: (None, engine.generate(ids, lambda s: PLAIN_STEP, stop=stop)),
            "ours model k=4": lambda ids: (None, engine.generate(ids, fixed("model", 4), stop=stop)),
        }
        prompt = torch.arange(200, 400, device=DEVICE)  # context 200, as the CPU measurements
        for run in configs.values():  # warm-up
            run(prompt)
        times = {name: [] for name in configs}
        outside = {name: [] for name in configs if name.startswith("ours")}
        for r in range(reps):
            for name in list(configs)[r % 4 :] + list(configs)[: r % 4]:
                torch.cuda.synchronize()
                start = time.perf_counter()
                _, result = configs[name](prompt)
                torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
                if result is not None:
                    outside[name].append(1 - result.forward_s / result.total_s)
        for name in configs:
            rows.append({"draft": draft_name, "config": name,
                         "tokens_per_s": tokens / statistics.median(times[name]),
                         "outside_forwards_share": statistics.median(outside[name]) if name in outside else None})  # fmt: skip
    return {"tokens": tokens, "reps": reps, "context": 200, "rows": rows}


def policy_stack() -> dict:
    """The layers above the engine on CUDA: the adaptive generator (controller switching drafters and k, greedy
    equality; a seeded sampled request) and calibration of a cost model on this GPU (the reference shapes, bf16)."""
    from adaptive_spec.generator import AdaptiveGenerator, policy_from_file
    from adaptive_spec.policy.calibrate import calibrate_pair
    from adaptive_spec.policy.controller import ClassSettings, DraftSettings
    from tests.test_generator import tiny_policy

    target, draft = (model.to(DEVICE) for model in tiny_pair())
    policy = policy_from_file(tiny_policy(0.2, probe_every=1, probe_k=2, hysteresis=0.0,
                                          default=ClassSettings(model=DraftSettings(threshold=0.3, max_k=6))))  # fmt: skip
    gen = AdaptiveGenerator(target, draft, policy=policy)
    mismatches, drafters = [], set()
    for p, prompt in enumerate(PROMPTS):
        out = gen.generate(torch.tensor([prompt]), max_new_tokens=60, eos_token_id=-1, request_class="c")
        if out.sequences[0].tolist() != reference(target, prompt, 60):
            mismatches.append(p)
        drafters |= {r.drafter for r in out.result.records}
    sampled = [gen.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=20, do_sample=True, temperature=0.8, seed=3,
                            eos_token_id=-1).sequences[0].tolist() for _ in range(2)]  # fmt: skip
    big, small = qwen(SHAPE_1_5B, 0, torch.bfloat16), qwen(SHAPE_0_5B, 7, torch.bfloat16)
    start = time.perf_counter()
    cost = calibrate_pair(big, small, "random-reference-shapes", "bfloat16", reps=2)
    seconds = time.perf_counter() - start
    return {
        "generator_greedy_mismatches": mismatches, "prompts": len(PROMPTS), "drafters_seen": sorted(drafters),
        "seeded_sample_repeats": sampled[0] == sampled[1], "calibrate_seconds": seconds, "hardware": cost.hardware,
        "target_ms_at_256": {n: 1e3 * cost.verify_s(n, 256) for n in (1, 4, 8, 16)},
        "draft_ms_at_256": {n: 1e3 * cost.draft_s(n, 256) for n in (1, 4, 8)},
        "draft_cost_ratio_c": cost.draft_cost_ratio, "round_overhead_ms": 1e3 * cost.round_overhead_s,
        "break_even_alpha_k4": cost.break_even_alpha("model", 4), "cost_model": cost.model_dump(mode="json"),
    }  # fmt: skip


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = ["# CUDA check of the engine", "",
             f"{env['gpu']}, torch {env['torch']}, transformers {env['transformers']}. "
             "Command: `python benchmarks/cuda_check.py` on a lent GPU machine (random-init models of the reference "
             "pair's shapes: the real weights cannot travel there).", ""]  # fmt: skip
    for section, value in results.items():
        if section == "environment":
            continue
        lines.append(f"## {section}")
        lines.append("")
        if isinstance(value, dict) and "error" in value:
            lines += ["```", value["error"], "```", ""]
            continue
        if section == "speed":
            lines += ["| draft | config | tokens/s | outside forwards |", "|---|---|---|---|"]
            for r in value["rows"]:
                share = "" if r["outside_forwards_share"] is None else f"{r['outside_forwards_share'] * 100:.1f}%"
                lines.append(f"| {r['draft']} | {r['config']} | {r['tokens_per_s']:.1f} | {share} |")
            lines.append("")
            continue
        shown = {k: v for k, v in value.items() if k not in ("runs", "cost_model")}
        lines += ["```", json.dumps(shown, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cuda")
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--only", default="", help="comma-separated sections to run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this check runs on a GPU machine")
    results = {"environment": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                               "transformers": transformers.__version__}}  # fmt: skip
    sections = {"greedy_tiny_fp32": greedy_tiny, "greedy_1.5B_shape_fp32": greedy_large,
                "sampling": lambda: sampling(args.samples), "speed": lambda: speed(args.tokens, args.reps),
                "policy_stack": policy_stack}  # fmt: skip
    only = {s for s in args.only.split(",") if s}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, run in sections.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        try:
            results[name] = run()
        except Exception:  # one broken section must not hide the others' results
            results[name] = {"error": traceback.format_exc()}
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
        print(json.dumps(results[name], default=str)[:2000], flush=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
        args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
