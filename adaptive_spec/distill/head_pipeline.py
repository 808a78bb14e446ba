"""``distill --kind head`` end to end: split, collect (with the target's features), vocabulary, train, save, evaluate.

The same traffic format, split and collection as the small draft (``pipeline.py``); the collection must store
hidden states. Every stage resumes in the output directory.

    OUT/collection/   the target's distributions and features over the traffic
    OUT/checkpoint/   training state and the head's vocabulary map
    OUT/head.safetensors, head_config.json, README.md   the head
    OUT/eval.json     teacher-forced alpha per class, cost per drafted token, end-to-end tokens/s
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..engine import ModelDrafter, SpeculativeEngine, StopRule
from ..engine.drafters import DraftRequest
from ..engine.head import DraftHead
from ..traces.format import atomic_write_text
from ..traces.workload import PromptRow
from .collect import Collection, CollectSettings
from .evaluate import end_to_end, runs_to_json, summarize
from .head import (HeadSettings, attach_saved_head, build_head, head_alpha, load_head, read_head_config, save_head,
                   train_head)
from .pipeline import GENERIC, DistillModels, Report, _e2e_prompts, _vocabulary, split_and_collect
from .traffic import round_robin_by_class
from .vocab import VocabMap

HEAD = "head"


class HeadRunSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(16384, ge=16)
    eval_split: float = Field(0.1, ge=0, lt=1)
    max_examples: int | None = Field(None, ge=2)
    seed: int = 0
    quantize: bool = Field(True, description="store the head's weights as int8 with per-row scales")
    init_head: str | None = Field(None, description="a saved head to continue training (its layer width and "
                                  "vocabulary kept; it must be this target's): new traffic, not a new head")  # fmt: skip
    eval_max_examples: int = Field(200, ge=0)
    e2e_prompts: int = Field(1, ge=0)
    e2e_new_tokens: int = Field(96, ge=2)
    generic_k: tuple[int, ...] = (1, 2, 3, 4, 6)
    head_k: tuple[int, ...] = (2, 3, 4, 6, 8)
    collect: CollectSettings = CollectSettings(hidden_states=True)
    head: HeadSettings = HeadSettings()


def run_head(traffic_path: Path, rows: list[PromptRow], out: Path, settings: HeadRunSettings, models: DistillModels,
             report: Report | None = None) -> dict:  # fmt: skip
    report = report or (lambda stage, done, total, note="": None)
    if not settings.collect.hidden_states:
        raise ValueError("a draft head needs the target's features: collect with hidden states")
    # a head to continue is checked (this target's?) before the long collection
    continued = continued_head(settings.init_head, models.target) if settings.init_head is not None else None
    out.mkdir(parents=True, exist_ok=True)
    # 1-2. split, then the target's distributions and features
    train_rows, eval_rows, train_ids, eval_ids, collection = split_and_collect(rows, out, settings, models, report)
    # 3. vocabulary, head, training
    if continued is not None:
        head, vmap, origin = continued
    else:
        vmap = _vocabulary(collection, train_ids, settings.vocab_size, models, out / "checkpoint")
        head = build_head(models.target, vmap, settings.head)
    summary = train_head(head, models.target, collection, train_ids, vmap, settings.head, out / "checkpoint",
                         lambda step, total, loss: report("training the head", step, total, f"loss {loss:.3f}"))  # fmt: skip
    # 4. evaluate, then save with the figures in the model card
    evaluation = {"training": summary, "vocab_size": vmap.size}
    by_class = defaultdict(list)
    for i in round_robin_by_class(eval_ids, settings.eval_max_examples, lambda i: collection.by_id[i].request_class):
        by_class[collection.by_id[i].request_class].append(i)
    evaluation["alpha"] = {c: head_alpha(head, models.target, collection, ids, vmap) for c, ids in by_class.items()}
    if continued is not None:
        summary["init_head"] = origin
    save_head(head, models.target, out, {**summary, "vocab_size": vmap.size, "seed": settings.seed},
              settings.quantize, heldout_alpha=heldout_chains(evaluation["alpha"]))  # fmt: skip
    engine = SpeculativeEngine(models.target, [ModelDrafter(models.base, GENERIC,
                                                            vocab_size=models.target.config.vocab_size)])
    attach_saved_head(engine, out, HEAD)
    evaluation["cost_per_token_ms"] = drafter_costs(engine, collection, eval_ids or train_ids)
    prompts = _e2e_prompts(eval_rows, settings.e2e_prompts, models.encoder, models.target.device)
    if prompts:
        configs = [(GENERIC, 0)] + [(GENERIC, k) for k in settings.generic_k] + [(HEAD, k) for k in settings.head_k]
        runs = end_to_end(engine, prompts, configs, StopRule(settings.e2e_new_tokens, models.eos),
                          lambda d, t: report("end-to-end runs", d, t, ""))  # fmt: skip
        result = summarize(runs, (GENERIC, HEAD))
        for entry in result["classes"].values():
            best = entry["best"]
            if GENERIC in best and HEAD in best:
                entry["ratio"] = best[HEAD]["speedup"] / best[GENERIC]["speedup"]
        evaluation["end_to_end"] = {"new_tokens": settings.e2e_new_tokens, **result, "runs": runs_to_json(runs)}
    atomic_write_text(out / "eval.json", json.dumps(evaluation, indent=1))
    atomic_write_text(out / "README.md", model_card(traffic_path, settings, evaluation, len(train_ids)))
    return evaluation


def continued_head(directory: str, target) -> tuple[DraftHead, VocabMap, dict]:
    """A saved head, in float32 for training (its output rows, the target's, frozen), its vocabulary map
    (continuing keeps the ids the head was trained to propose) and where it came from ({path, training}), read
    when it is loaded, not after the hour of collection. Refuses a head of another target (``load_head``)."""
    origin = {"path": directory, "training": read_head_config(directory).training}
    head = load_head(directory, target).float()
    head.lm_head.weight.requires_grad_(False)
    vocab = target.config.get_text_config().vocab_size
    return head, VocabMap(head.vocab_map.cpu(), vocab), origin


def heldout_chains(alpha: dict[str, dict]) -> dict[str, list[float]]:
    """Per class, alpha_1.. up to the first position no held-out draft reached (``head_alpha`` gives None there)."""
    out = {}
    for cls, by_position in alpha.items():
        chain = []
        for j in range(1, len(by_position) + 1):
            value = by_position.get(f"alpha_{j}")
            if value is None:
                break
            chain.append(round(value, 4))
        if chain:
            out[cls] = chain
    return out


def drafter_costs(engine: SpeculativeEngine, collection: Collection, ids: list[str], k: int = 8, reps: int = 5) -> dict:
    """Milliseconds per drafted token for each drafter and for one target forward, after the same context."""
    context = collection.example(ids[0]).tokens[:256].to(engine.device)
    out = {}
    for name, drafter in engine.drafters.items():
        engine.target.reset()
        engine.target.forward(context[:-1], last_only=True)  # the head reads the target's features of the context
        drafter.reset()
        drafter.propose(context, DraftRequest(1))
        times = []
        for _ in range(reps + 1):
            start = time.perf_counter()
            draft = drafter.propose(context, DraftRequest(k))
            times.append((time.perf_counter() - start) / max(len(draft), 1))
        out[name] = round(statistics.median(times[1:]) * 1e3, 2)
    engine.target.reset()
    engine.target.forward(context[:-1], last_only=True)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        engine.target.forward(context[-1:])
        times.append(time.perf_counter() - start)
        engine.target.rollback(1)
    out["target_forward"] = round(statistics.median(times) * 1e3, 2)
    out["head_vs_target"] = round(out.get(HEAD, float("nan")) / out["target_forward"], 4)
    return out


def model_card(traffic: Path, settings: HeadRunSettings, evaluation: dict, train_examples: int) -> str:
    lines = ["# Draft head (adaptive-spec)", "",
             "A one-layer EAGLE-style head that drafts from the target's own features; the engine verifies every "
             "drafted token, so it changes speed, never output. Loads only next to the target it was trained for "
             "(`head_config.json` holds the target's fingerprint); the target's embedding and LM head rows are reused, "
             "not stored.", "",
             f"- Traffic: `{traffic}`, {train_examples} training examples; vocabulary {evaluation['vocab_size']} ids.",
             f"- Training: {json.dumps(evaluation['training'])}",
             f"- Settings: {settings.head.model_dump_json()}",
             *([f"- Continued from the head at `{settings.init_head}` (its vocabulary and layer width)."]
               if settings.init_head else []),
             f"- Responses the traffic lacks written by: the {settings.collect.respond_with}.", "",
             "Teacher-forced acceptance on held-out examples, drafts of response tokens (alpha_j: j-th draft token "
             "right given the previous; `heldout_alpha` in head_config.json, the controller's cold start):",
             ""]  # fmt: skip
    for cls, a in evaluation.get("alpha", {}).items():
        lines.append(f"- {cls}: " + ", ".join(f"{k} {v:.3f}" for k, v in a.items() if v is not None))
    lines += ["", f"Cost per drafted token (ms): {json.dumps(evaluation.get('cost_per_token_ms', {}))}", ""]
    e2e = evaluation.get("end_to_end")
    if e2e:
        for cls, entry in e2e["classes"].items():
            best = entry["best"]
            parts = [f"{d} {b['config']} {b['speedup']:.2f}x" for d, b in best.items()]
            lines.append(f"- end to end, {cls}: " + "; ".join(parts) + (f"; ratio {entry['ratio']:.2f}" if "ratio" in entry else ""))
    return "\n".join(lines) + "\n"
