"""``distill`` end to end: split, collect, choose the vocabulary, derive, train, save, evaluate.

Every stage is resumable in the output directory: the collection skips examples it has, training continues from
its checkpoint (the vocabulary chosen the first time is kept with it), and saving/evaluating are redone.

    OUT/collection/        the target's distributions over the traffic (``collect``)
    OUT/checkpoint/        training state and the vocabulary map of this run (``train``)
    OUT/config.json, model.safetensors, vocab_map.json, draft_config.json, README.md   the custom draft
    OUT/heldout.jsonl      the held-out rows (prompt, class, response if given), for benchmarks
    OUT/eval.json          teacher-forced alpha per class, draft costs, end-to-end results
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel

from ..engine import ModelDrafter, SpeculativeEngine, StopRule, fixed
from ..traces.format import atomic_write_text
from ..traces.workload import PromptRow
from .artifact import DraftConfig, load_custom_draft, save_custom_draft
from .collect import Collection, CollectSettings, Encoder, Respond, collect, example_id
from .cost import draft_cost_per_token
from .derive import derive_draft, mlp_importance, parse_layers
from .drafter import CUSTOM
from .evaluate import end_to_end, runs_to_json, summarize, teacher_forced_alpha
from .head import HELDOUT_FILE
from .identity import target_identity
from .traffic import interleave_classes, round_robin_by_class, split_rows
from .train import TrainResult, TrainSettings, train
from .vocab import VocabMap, choose_vocab

Report = Callable[[str, int, int, str], None]  # (stage, done, total, note)
GENERIC = "model"


class DistillSettings(BaseModel):
    """Everything ``distill`` does, one field per CLI option."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["draft"] = "draft"
    layers: str = Field("all", description="base-draft layers kept: all, N (evenly spaced), firstN+last, or i,j,k")
    mlp_width: int | None = Field(608, ge=1, description="MLP neurons kept per layer (None: the base's width)")
    importance_examples: int = Field(32, ge=1, description="training examples that rank MLP neurons")
    vocab_size: int = Field(16384, ge=16, description="output vocabulary V' (target ids kept)")
    eval_split: float = Field(0.1, ge=0, lt=1)
    max_examples: int | None = Field(None, ge=2)
    seed: int = 0
    eval_max_examples: int = Field(200, ge=0, description="held-out examples for teacher-forced alpha")
    e2e_prompts: int = Field(1, ge=0, description="held-out prompts per class for end-to-end tokens/s")
    e2e_new_tokens: int = Field(96, ge=2)
    generic_k: tuple[int, ...] = (1, 2, 3, 4, 6)
    custom_k: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    collect: CollectSettings = CollectSettings()
    train: TrainSettings = TrainSettings()


@dataclass
class DistillModels:
    target: PreTrainedModel
    base: PreTrainedModel  # the generic draft: compared against, and the source of the custom draft's weights
    encoder: Encoder
    eos: frozenset[int]
    special_ids: Sequence[int] = ()
    base_name: str = ""


def split_and_collect(rows: list[PromptRow], out: Path, settings, models: DistillModels, report: Report):
    """The first two steps of every distill kind: split rows (whole examples) into train and held-out, write the
    held-out rows, collect the target's distributions over both.

    ``settings`` has ``max_examples``, ``eval_split``, ``seed`` and ``collect``. Returns (train rows, held-out rows,
    train example ids, held-out example ids, the collection).
    """
    rows = interleave_classes(rows, settings.max_examples)
    train_rows, eval_rows = split_rows(rows, settings.eval_split, settings.seed)
    if not train_rows:
        raise ValueError("no training rows left after the held-out split")
    train_ids = _unique(example_id(r) for r in train_rows)
    eval_ids = [i for i in _unique(example_id(r) for r in eval_rows) if i not in set(train_ids)]
    _write_heldout(out / HELDOUT_FILE, eval_rows)
    collect(models.target, models.encoder, train_rows + eval_rows, out / "collection", settings.collect,
            _responder(models, settings.collect.max_new_tokens, settings.collect.respond_with),
            lambda done, total: report("collecting (target prefill)", done, total, ""))  # fmt: skip
    return train_rows, eval_rows, train_ids, eval_ids, Collection(out / "collection")


def run_distill(traffic_path: Path, rows: list[PromptRow], out: Path, settings: DistillSettings,
                models: DistillModels, report: Report | None = None) -> dict:  # fmt: skip
    """Train and evaluate a custom draft from ``rows``; returns the evaluation summary (also in OUT/eval.json)."""
    report = report or (lambda stage, done, total, note="": None)
    layers = parse_layers(settings.layers, models.base.config.num_hidden_layers)  # bad choices fail before any work
    out.mkdir(parents=True, exist_ok=True)
    # 1-2. which rows train, which are held out; the target's distributions over both
    train_rows, eval_rows, train_ids, eval_ids, collection = split_and_collect(rows, out, settings, models, report)

    # 3. vocabulary, then the derived draft, trained
    vmap = _vocabulary(collection, train_ids, settings.vocab_size, models, out / "checkpoint")
    importance = None
    if settings.mlp_width is not None and settings.mlp_width < models.base.config.intermediate_size:
        importance = _importance(collection, train_ids[: settings.importance_examples], models, out / "checkpoint")
    draft = derive_draft(models.base, layers, vmap, mlp_width=settings.mlp_width, importance=importance)
    result = train(draft, vmap, collection, train_ids, settings.train, out / "checkpoint",
                   lambda step, total, loss: report("training", step, total, f"loss {loss:.3f}"))  # fmt: skip

    # 4. save, so a long evaluation cannot lose the model
    facts = _facts(traffic_path, train_rows, eval_rows, collection, train_ids, eval_ids, vmap, settings, result)
    width = draft.config.intermediate_size
    config = DraftConfig(target=target_identity(models.target), base_draft=models.base_name, layers=layers,
                         mlp_width=width if width < models.base.config.intermediate_size else None,
                         vocab_size=vmap.size, facts=facts)  # fmt: skip
    save_custom_draft(draft, vmap, out, config, model_card(config, None))

    # 5. evaluate the saved draft against the generic one
    capped = round_robin_by_class(eval_ids, settings.eval_max_examples, lambda i: collection.by_id[i].request_class)
    evaluation = evaluate_against_generic(out, models, collection, capped,
                                          eval_rows, settings, report)  # fmt: skip
    config.facts["evaluation"] = {k: v for k, v in evaluation.items() if k != "end_to_end"} | (
        {"end_to_end": {k: v for k, v in evaluation["end_to_end"].items() if k != "runs"}} if "end_to_end" in evaluation else {}
    )  # per-run rows stay in eval.json
    save_custom_draft(draft, vmap, out, config, model_card(config, evaluation))
    atomic_write_text(out / "eval.json", json.dumps(evaluation, indent=1))
    return evaluation


def _unique(ids) -> list[str]:
    return list(dict.fromkeys(ids))


def _write_heldout(path: Path, rows: list[PromptRow]) -> None:
    lines = [json.dumps({"id": r.row_id, "class": r.request_class, "line": r.line, "prompt": r.prompt,
                         **({"response": r.response} if r.response is not None else {})}) for r in rows]  # fmt: skip
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _responder(models: DistillModels, max_new_tokens: int, writer: str = "target") -> Respond:
    """Greedy responses for rows without one. The target's are sped up by lookup-else-generic-draft speculation
    (the same output as plain greedy decoding, up to bf16 near-tie flips); the base draft's are its plain greedy
    decoding (``respond_with="draft"``: cheaper text for the same target labels)."""
    from ..runtime import standard_drafters

    stop = StopRule(max_new_tokens, models.eos)
    if writer == "draft":
        engine = SpeculativeEngine(models.base, vocab_size=models.target.config.get_text_config().vocab_size)

        def respond(prompt_ids: list[int]) -> list[int]:
            return engine.generate(torch.tensor(prompt_ids, device=engine.device), stop=stop).new_tokens.tolist()

        return respond
    engine = SpeculativeEngine(models.target, standard_drafters(models.target, models.base))

    def respond(prompt_ids: list[int]) -> list[int]:
        out = engine.generate(torch.tensor(prompt_ids), fixed("hybrid", 8, 0.5), stop=stop)
        return out.new_tokens.tolist()

    return respond


def token_statistics(collection: Collection, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """([V] occurrences of each id, [V] the target's predicted probability mass on it) over the examples ``ids``:
    what ``choose_vocab`` ranks ids by."""
    vocab = collection.manifest.target.vocab_size
    counts = torch.zeros(vocab, dtype=torch.float64)
    mass = torch.zeros(vocab, dtype=torch.float64)
    for example in collection.examples(ids):
        counts += torch.bincount(example.tokens, minlength=vocab)[:vocab].double()
        mass.index_add_(0, example.topk_ids.flatten(), example.topk_probs.flatten().double())
    return counts, mass


def _vocabulary(collection: Collection, train_ids: list[str], size: int, models: DistillModels,
                directory: Path) -> VocabMap:  # fmt: skip
    """The run's vocabulary map: chosen once from the training examples, then kept with the checkpoint."""
    if (directory / "vocab_map.json").is_file():
        vmap = VocabMap.load(directory)
        if vmap.target_vocab_size == collection.manifest.target.vocab_size:
            return vmap
    vocab = collection.manifest.target.vocab_size
    counts, mass = token_statistics(collection, train_ids)
    vmap = VocabMap(choose_vocab(counts, mass, size, [*models.eos, *models.special_ids]), vocab)
    directory.mkdir(parents=True, exist_ok=True)
    vmap.save(directory)
    return vmap


def _importance(collection: Collection, ids: list[str], models: DistillModels, directory: Path) -> list[torch.Tensor]:
    """MLP neuron importance of the base on some training examples, computed once and kept with the checkpoint."""
    from safetensors.torch import load_file, save_file

    path = directory / "mlp_importance.safetensors"
    layers = models.base.config.num_hidden_layers
    if path.is_file():
        saved = load_file(str(path))
        return [saved[f"layer.{i}"] for i in range(layers)]
    importance = mlp_importance(models.base, [e.tokens for e in collection.examples(ids)])
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".mlp_importance.tmp"
    save_file({f"layer.{i}": t.contiguous() for i, t in enumerate(importance)}, str(tmp))
    tmp.replace(path)
    return importance


def coverage(collection: Collection, example_ids: Sequence[str], vmap: VocabMap) -> float:
    """Share of response rows whose target argmax the draft can propose."""
    rows = covered = 0
    for example in collection.examples(example_ids):
        top = example.topk_ids[example.response_rows, 0]
        rows += top.numel()
        covered += int(vmap.covers(top).sum())
    return covered / rows if rows else float("nan")


def _facts(traffic_path, train_rows, eval_rows, collection, train_ids, eval_ids, vmap, settings, result: TrainResult) -> dict:
    digest = hashlib.sha256(Path(traffic_path).read_bytes()).hexdigest()
    records = [collection.by_id[i] for i in train_ids]
    return {
        "traffic": {"file": str(traffic_path), "sha256": digest,
                    "train_rows": len(train_rows), "heldout_rows": len(eval_rows),
                    "train_examples": len(train_ids), "heldout_examples": len(eval_ids),
                    "classes": dict(Counter(r.request_class for r in train_rows + eval_rows)),
                    "responses": dict(Counter(r.response for r in records)),
                    "train_tokens": sum(r.length for r in records)},
        "vocab": {"size": vmap.size, "heldout_top1_coverage": round(coverage(collection, eval_ids, vmap), 4),
                  "train_top1_coverage": round(coverage(collection, train_ids, vmap), 4)},
        "training": {**settings.train.model_dump(), "steps_done": len(result.losses),
                     "resumed_from": result.resumed_from,
                     "first_loss": round(result.losses[0], 4) if result.losses else None,
                     "final_loss": round(sum(result.losses[-10:]) / len(result.losses[-10:]), 4) if result.losses else None},
        "collection": settings.collect.model_dump(),
        "layers_spec": settings.layers,
    }  # fmt: skip


def evaluate_against_generic(directory: Path, models: DistillModels, collection: Collection, eval_ids: list[str],
                             eval_rows: list[PromptRow], settings: DistillSettings,
                             report: Report | None = None) -> dict:  # fmt: skip
    """Teacher-forced alpha per class, draft cost per token, end-to-end tokens/s: generic vs custom draft."""
    report = report or (lambda stage, done, total, note="": None)
    custom = load_custom_draft(directory, models.target)
    vmap = custom.vmap
    generic = ModelDrafter(models.base, GENERIC, vocab_size=models.target.config.get_text_config().vocab_size)
    evaluation: dict = {"heldout_examples": len(eval_ids)}
    if eval_ids:
        before = teacher_forced_alpha(models.base, collection, eval_ids, None,
                                      lambda d, t: report("alpha (generic draft)", d, t, ""))  # fmt: skip
        after = teacher_forced_alpha(custom.lm.model, collection, eval_ids, vmap,
                                     lambda d, t: report("alpha (custom draft)", d, t, ""))  # fmt: skip
        evaluation["alpha"] = {cls: {"generic": before[cls].to_json(), "custom": after[cls].to_json()}
                               for cls in sorted(before, key=lambda c: (c == "all", c))}  # fmt: skip
    context = next(iter(collection.examples(eval_ids or [collection.manifest.examples[0].id]))).tokens[:256]
    generic_s = draft_cost_per_token(generic, context.to(models.target.device))
    custom_s = draft_cost_per_token(custom, context.to(models.target.device))
    evaluation["draft_cost_per_token_ms"] = {"generic": round(generic_s * 1e3, 2), "custom": round(custom_s * 1e3, 2),
                                             "ratio": round(custom_s / generic_s, 3)}  # fmt: skip
    prompts = _e2e_prompts(eval_rows, settings.e2e_prompts, models.encoder, models.target.device)
    if prompts:
        engine = SpeculativeEngine(models.target, [generic, custom])
        configs = [(GENERIC, 0)] + [(GENERIC, k) for k in settings.generic_k] + [(CUSTOM, k) for k in settings.custom_k]
        runs = end_to_end(engine, prompts, configs, StopRule(settings.e2e_new_tokens, models.eos),
                          lambda d, t: report("end-to-end runs", d, t, ""))  # fmt: skip
        evaluation["end_to_end"] = {"new_tokens": settings.e2e_new_tokens, **summarize(runs, (GENERIC, CUSTOM)),
                                    "runs": runs_to_json(runs)}  # fmt: skip
    return evaluation


def _e2e_prompts(rows: list[PromptRow], per_class: int, encoder: Encoder, device) -> list[tuple[str, torch.Tensor]]:
    taken: Counter = Counter()
    prompts = []
    for row in rows:
        if taken[row.request_class] < per_class:
            taken[row.request_class] += 1
            prompts.append((row.request_class, torch.tensor(encoder.prompt_ids(row.prompt), device=device)))
    return prompts


def model_card(config: DraftConfig, evaluation: dict | None) -> str:
    f = config.facts
    t, v, tr = f["traffic"], f["vocab"], f["training"]
    lines = [
        "---", "library_name: transformers", "tags: [speculative-decoding, draft-model, adaptive-spec]", "---", "",
        f"# Custom draft for {config.target.name or 'the target'}", "",
        "A small draft model distilled from the target on one user's traffic, for lossless speculative decoding "
        "with `adaptive-spec` (the engine verifies every drafted token, so this model changes speed, never output).",
        "",
        "## How it was made", "",
        f"- Traffic: `{t['file']}` (sha256 `{t['sha256'][:16]}…`), {t['train_rows']} training rows, "
        f"{t['heldout_rows']} held out; classes {t['classes']}; responses {t['responses']}; "
        f"{t['train_tokens']} training tokens.",
        f"- Base: `{config.base_draft}`, layers kept {config.layers} (`--layers {f['layers_spec']}`), MLP width "
        f"{config.mlp_width or 'unchanged'} (neurons ranked by mean |activation| on the traffic).",
        f"- Output vocabulary: {v['size']} target ids (`vocab_map.json`), covering the target's argmax on "
        f"{v['train_top1_coverage']:.1%} of training and {v['heldout_top1_coverage']:.1%} of held-out response positions; "
        "the input embedding has one more row for every other id.",
        f"- Distillation: KL(target top-{f['collection']['top_k']} || draft) on response positions, {tr['steps_done']} steps "
        f"of {tr['batch_examples']} examples, AdamW lr {tr['lr']}, seed {tr['seed']}; loss {tr['first_loss']} → "
        f"{tr['final_loss']} (mean of the last 10 steps).",
        f"- Target: {config.target.model_type}, hidden {config.target.hidden_size}, {config.target.num_hidden_layers} "
        f"layers, vocabulary {config.target.vocab_size} (`draft_config.json` holds its fingerprint; loading with "
        "another target is refused).",
        "",
    ]  # fmt: skip
    if evaluation:
        lines += ["## Evaluation on the held-out split", ""]
        if "alpha" in evaluation:
            lines += ["Teacher-forced acceptance per response position (greedy: argmax agreement; sampled: "
                      "Σ min(p, q) at T=1):", "", "| class | rows | greedy α generic → custom | sampled α generic → custom |",
                      "|---|---|---|---|"]  # fmt: skip
            for cls, a in evaluation["alpha"].items():
                g, c = a["generic"], a["custom"]
                lines.append(f"| {cls} | {c['rows']} | {g['greedy_alpha']:.3f} → {c['greedy_alpha']:.3f} | "
                             f"{g['sampled_alpha']:.3f} → {c['sampled_alpha']:.3f} |")  # fmt: skip
            lines.append("")
        cost = evaluation["draft_cost_per_token_ms"]
        lines += [f"Draft cost per token: generic {cost['generic']} ms, custom {cost['custom']} ms "
                  f"(ratio {cost['ratio']}).", ""]  # fmt: skip
        e2e = evaluation.get("end_to_end")
        if e2e:
            lines += [f"End to end ({e2e['prompts']} prompts, {e2e['new_tokens']} new tokens, greedy): "
                      "best k per drafter, speedup over target-only:", "",
                      "| class | target tok/s | generic best | custom best | ratio |", "|---|---|---|---|---|"]  # fmt: skip
            for cls, entry in e2e["classes"].items():
                b = entry["best"]
                lines.append(f"| {cls} | {entry['configs']['target']['tokens_per_s']:.2f} | "
                             f"{b['model']['config']}: {b['model']['speedup']:.2f}× | "
                             f"{b['custom']['config']}: {b['custom']['speedup']:.2f}× | {entry.get('ratio', float('nan')):.2f} |")  # fmt: skip
            lines.append("")
    lines += [
        "## Use", "", "```python", "from adaptive_spec.distill import load_custom_draft",
        "from adaptive_spec.engine import SpeculativeEngine, StopRule, fixed", "",
        "drafter = load_custom_draft(\"THIS_DIR\", target)  # refuses a different target",
        "engine = SpeculativeEngine(target, [drafter])", "out = engine.generate(ids, fixed(\"custom\", 4), stop=StopRule(128))",
        "```", "",
    ]  # fmt: skip
    return "\n".join(lines)
