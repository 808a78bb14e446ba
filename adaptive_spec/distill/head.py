"""Training a draft head on the target's own features (``adaptive-spec distill --kind head``).

Data: a collection with hidden states (``collect.py``): per example, tokens x_0..x_{n-1}, the target's features
f_0..f_{n-1} (the input of its LM head) and its top-k next-token distribution at every position.

The head reads (f_i, x_{i+1}) and predicts g_{i+1} ~ f_{i+1}; its pruned LM head (the target's own rows for the
kept vocabulary, frozen) turns g_{i+1} into a distribution over x_{i+2}. Loss per position, as in EAGLE:
cross-entropy against the target's top-k distribution (restricted to the kept vocabulary) plus ``feature_weight``
x smooth-L1(g, f). With ``unroll`` > 0 the head is also trained on its own predictions: a second pass reads
(g_i, x_{i+1}) instead of (f_i, x_{i+1}) — what it sees when drafting its second and later tokens.

Saved as a directory: ``head.safetensors`` (fc, decoder layer, final norm; optionally int8 with per-row scales),
``head_config.json`` (the layer's shape, the target's identity, the vocabulary map, the training summary) and a
model card. The LM head rows and the token embedding are the target's own and are not stored: a head only loads
next to the target it was trained for.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, Qwen2Config

from ..engine.head import DraftHead, HeadDrafter, attach_head, head_config
from ..traces.format import atomic_write_text
from .collect import Collection
from .identity import IdentityError, TargetIdentity, target_identity
from .vocab import VocabMap

HEAD_FILE = "head.safetensors"
CONFIG_FILE = "head_config.json"
CHECKPOINT = "checkpoint.pt"
HELDOUT_FILE = "heldout.jsonl"  # the rows `distill` held out (either kind), written beside the artifact
Progress = Callable[[int, int, float], None]  # (step, steps, loss)


class HeadError(ValueError):
    """A head directory is malformed or was trained for another target."""


class HeadSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    intermediate_size: int | None = Field(2048, ge=64, description="MLP width of the head's layer (None: target's)")
    steps: int = Field(1500, ge=1)
    batch_tokens: int = Field(2048, ge=64, description="positions per optimizer step")
    lr: float = Field(1e-3, gt=0)
    warmup: int = Field(50, ge=0)
    feature_weight: float = Field(0.1, ge=0)
    unroll: int = Field(1, ge=0, le=3, description="extra passes on the head's own predicted features")
    init_from_target: bool = Field(True, description="start from the target's last decoder layer when shapes fit")
    seed: int = 0
    checkpoint_every: int = Field(100, ge=1)
    bf16_autocast: bool = Field(False, description="bfloat16 autocast for forward/backward (weights stay float32)")
    prompt_weight: float = Field(1.0, ge=0, le=1, description="loss weight of the positions that predict prompt "
                                 "tokens; a head drafts only responses, so 0 trains on those alone (the prompt "
                                 "is still read as context)")  # fmt: skip


class HeadFileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_: str = Field("adaptive-spec/draft-head", alias="schema")
    version: int = 1
    layer: dict  # the head's Qwen2Config (one layer)
    target: TargetIdentity
    vocab: list[int]  # head id -> target id
    quantized: bool = False
    training: dict = Field(default_factory=dict)
    # per class of the training traffic: teacher-forced acceptance of draft positions 1..n on held-out rows (drafts
    # of response tokens); the controller's cold start for the head in those classes
    heldout_alpha: dict[str, list[Annotated[float, Field(ge=0, le=1)]]] = Field(default_factory=dict)


# --- building ------------------------------------------------------------------------------------------------------


def build_head(target: PreTrainedModel, vmap: VocabMap, settings: HeadSettings) -> DraftHead:
    """A fresh head for ``target``; its LM head is the target's rows for the kept vocabulary (frozen)."""
    config = head_config(target.config, settings.intermediate_size)
    torch.manual_seed(settings.seed)
    head = DraftHead(config, vmap.draft_to_target.cpu())
    last = target.model.layers[-1]
    with torch.no_grad():
        head.lm_head.weight.copy_(target.lm_head.weight[vmap.draft_to_target].float())
        head.body.norm.weight.copy_(target.model.norm.weight.float())
        # fc starts as "take the feature": the first prediction is the target's own feature
        head.fc.weight.zero_()
        head.fc.weight[:, config.hidden_size :].copy_(torch.eye(config.hidden_size) * 0.5)
        head.fc.weight[:, : config.hidden_size].copy_(torch.eye(config.hidden_size) * 0.5)
        head.fc.bias.zero_()
        if settings.init_from_target and config.intermediate_size == target.config.intermediate_size:
            head.body.layers[0].load_state_dict({k: v.float() for k, v in last.state_dict().items()})
        elif settings.init_from_target:  # attention and norms from the target's last layer; a fresh narrow MLP
            own = head.body.layers[0]
            own.self_attn.load_state_dict({k: v.float() for k, v in last.self_attn.state_dict().items()})
            own.input_layernorm.load_state_dict(last.input_layernorm.state_dict())
            own.post_attention_layernorm.load_state_dict(last.post_attention_layernorm.state_dict())
    head.lm_head.weight.requires_grad_(False)
    return head.float()


# --- training ------------------------------------------------------------------------------------------------------


def _position_loss(head: DraftHead, embed, ex, vmap: VocabMap, settings: HeadSettings, rows: slice | None = None):
    """Loss over one example's positions. Returns (loss sum, positions, top-1 agreement count of the first pass)."""
    hidden = ex.hidden.float()  # [n, H]
    n = hidden.shape[0]
    if n < 3:
        return None
    features, tokens = head_inputs(ex, embed, torch.float32)
    target_features = hidden[1:]  # f_1..f_{n-1}
    ids = vmap.to_draft(ex.topk_ids[1:])  # [n-1, K] rows 1..n-1: what follows x_{i+1}
    probs = ex.topk_probs[1:] * (ids != vmap.other_id)
    ids = ids.clamp(max=vmap.size - 1)
    weights = _row_weights(n - 1, ex.record.prompt_len, settings.prompt_weight)  # None: every row counts fully
    counted = n - 1 if weights is None else int((weights > 0).sum())
    if counted == 0:
        return None
    total = torch.zeros(())
    agree = 0
    for step, (predicted, logits) in enumerate(own_feature_passes(head, features, tokens, settings.unroll + 1)):
        logp = torch.log_softmax(logits[0].float(), dim=-1)
        if weights is None:
            ce = -(probs * logp.gather(1, ids)).sum()
            reg = F.smooth_l1_loss(predicted[0], target_features, reduction="sum") / hidden.shape[1]
        else:
            ce = -((probs * logp.gather(1, ids)).sum(1) * weights).sum()
            per_row = F.smooth_l1_loss(predicted[0].float(), target_features, reduction="none").sum(1)
            reg = (per_row * weights).sum() / hidden.shape[1]
        total = total + ce + settings.feature_weight * reg
        if step == 0:
            hits = logp.argmax(-1) == ids[:, 0]
            agree = int(hits.sum() if weights is None else hits[weights > 0].sum())
    return total, counted, agree


def head_inputs(ex, embed, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A collected example as the head reads it: row r holds the target's feature f_r and the embedding of x_{r+1}
    (rows 0..n-2), so row r predicts x_{r+2}."""
    return ex.hidden[:-1][None].to(dtype), embed(ex.tokens[1:])[None].to(dtype)


def own_feature_passes(head: DraftHead, features: torch.Tensor, tokens: torch.Tensor, passes: int):
    """Yield (predicted features, logits) of ``passes`` teacher-forced passes over one example.

    The first pass reads the target's features; each later pass reads the head's own predictions from the pass
    before, shifted one row (row r gets g_{r-1}, row 0 keeps f_0). So pass j's row r is the head's (j+1)-th draft
    token from anchor r - j, drafted the way the engine drafts it. Training, ``head_alpha`` and the tree benchmark
    share this; predictions are detached, so later passes do not train earlier ones through their inputs.
    """
    inputs = features
    for j in range(passes):
        predicted, logits = head(inputs, tokens)
        yield predicted, logits
        if j + 1 < passes:
            inputs = torch.cat([features[:, :1], predicted[:, :-1].detach()], dim=1)


def _row_weights(rows: int, prompt_len: int, prompt_weight: float) -> torch.Tensor | None:
    """Loss weight of each row of ``_position_loss`` (row i predicts token i + 2): ``prompt_weight`` where that
    token is part of the prompt, 1 for response tokens; None when all weigh 1 (the plain sum, bit for bit)."""
    if prompt_weight == 1.0:
        return None
    weights = torch.ones(rows)
    weights[: max(prompt_len - 2, 0)] = prompt_weight
    return weights


def train_head(head: DraftHead, target: PreTrainedModel, collection: Collection, train_ids: Sequence[str],
               vmap: VocabMap, settings: HeadSettings, out: Path, progress: Progress | None = None) -> dict:  # fmt: skip
    """Train in place; checkpoints to ``out`` every ``checkpoint_every`` steps and resumes from one if present."""
    out.mkdir(parents=True, exist_ok=True)
    embed = target.get_input_embeddings()
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, settings))
    rng = random.Random(settings.seed)
    order: list[str] = []
    step, losses, agree, seen, seconds_before = 0, [], 0, 0, 0.0
    checkpoint = out / CHECKPOINT
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)  # our own file, written by this function
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        step, order = state["step"], state["order"]
        # the run's figures so far, so a resumed (or finished and re-run) training reports the whole run
        losses, agree, seen = list(state.get("losses", [])), state.get("agree", 0), state.get("seen", 0)
        seconds_before = state.get("seconds", 0.0)
    start = time.perf_counter()
    head.train()
    while step < settings.steps:
        optimizer.zero_grad(set_to_none=True)
        tokens_in_batch, batch_loss = 0, 0.0
        while tokens_in_batch < settings.batch_tokens:
            if not order:
                order = list(train_ids)
                rng.shuffle(order)
            ex = collection.example(order.pop(), hidden=True)
            with torch.autocast(embed.weight.device.type, dtype=torch.bfloat16, enabled=settings.bf16_autocast):
                result = _position_loss(head, embed, ex, vmap, settings)
            if result is None:
                continue
            loss, positions, agreed = result
            (loss / settings.batch_tokens).backward()
            batch_loss += float(loss.detach())
            tokens_in_batch += positions
            agree += agreed
            seen += positions
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        losses.append(batch_loss / tokens_in_batch)
        if progress:
            progress(step, settings.steps, losses[-1])
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            _atomic_torch_save(checkpoint, {
                "head": head.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "step": step, "order": order,
                "losses": losses, "agree": agree, "seen": seen, "seconds": seconds_before + time.perf_counter() - start,
            })  # fmt: skip
    head.eval()
    return {"steps": step, "final_loss": float(sum(losses[-20:]) / max(len(losses[-20:]), 1)) if losses else None,
            "train_top1_agreement": agree / seen if seen else None,
            "seconds": seconds_before + time.perf_counter() - start}  # fmt: skip


def _lr_factor(step: int, settings: HeadSettings) -> float:
    if step < settings.warmup:
        return (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _atomic_torch_save(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --- evaluation ----------------------------------------------------------------------------------------------------


@torch.inference_mode()
def head_alpha(head: DraftHead, target: PreTrainedModel, collection: Collection, ids: Sequence[str],
               vmap: VocabMap, depth: int = 4, response_only: bool = True) -> dict:  # fmt: skip
    """Teacher-forced acceptance: position 1 from true features, positions 2..depth from the head's own.

    ``alpha_1`` is the share of positions where the head's first draft token is the target's top-1; ``alpha_j``
    the share where its j-th draft token (drafted from its own predicted features) is, given the first j-1 were.
    ``response_only``: count only drafts whose first token is a response token, as in generation (the engine never
    drafts inside the prompt; prompt rows, often the same source the head trained on, inflate alpha).
    """
    embed = target.get_input_embeddings()
    dtype = next(head.parameters()).dtype  # a head kept in bf16 reads bf16 features
    tried, hit = [0] * depth, [0] * depth
    for ex in collection.examples(ids, hidden=True):
        n = ex.hidden.shape[0]
        if n < depth + 2:
            continue
        top1 = ex.topk_ids[:, 0]
        features, tokens = head_inputs(ex, embed, dtype)
        # anchors i whose first `depth` draft tokens all have a truth (and, response_only, the first is a response
        # token: anchor i drafts x_{i+2}, the response starts at x_{prompt_len})
        first = max(ex.record.prompt_len - 2, 0) if response_only else 0
        if first >= n - 1 - depth:
            continue
        anchors = torch.arange(first, n - 1 - depth)
        ok = torch.ones(anchors.numel(), dtype=torch.bool)
        for j, (_, logits) in enumerate(own_feature_passes(head, features, tokens, depth)):
            guess = vmap.to_target(logits[0].argmax(-1))  # row r guesses x_{r+2}; truth top1[r+1]
            # anchor i's (j+1)-th draft token is row i + j's guess
            rows = anchors + j
            tried[j] += int(ok.sum())
            ok = ok & (guess[rows] == top1[rows + 1])
            hit[j] += int(ok.sum())
    return {f"alpha_{j + 1}": hit[j] / tried[j] if tried[j] else None for j in range(depth)}


# --- saving and loading --------------------------------------------------------------------------------------------


def save_head(head: DraftHead, target: PreTrainedModel, directory: Path, training: dict, quantize: bool = False,
              card: str = "", heldout_alpha: dict[str, list[float]] | None = None) -> None:  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in head.state_dict().items()
             if not k.startswith("lm_head") and k != "vocab_map"}  # fmt: skip
    if quantize:
        state = _int8(state)
    tmp = directory / (HEAD_FILE + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, directory / HEAD_FILE)
    config = HeadFileConfig(layer=head.config.to_dict(), target=target_identity(target),
                            vocab=head.vocab_map.tolist(), quantized=quantize, training=training,
                            heldout_alpha=heldout_alpha or {})  # fmt: skip
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config.model_dump(by_alias=True), indent=1))
    if card:
        atomic_write_text(directory / "README.md", card)


def _int8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, w in state.items():
        if w.dim() == 2 and w.numel() >= 4096:
            scale = w.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127
            out[name + ".int8"] = (w.float() / scale).round().clamp(-127, 127).to(torch.int8)
            out[name + ".scale"] = scale.squeeze(1).to(torch.float32)
        else:
            out[name] = w
    return out


def _dequant(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, w in state.items():
        if name.endswith(".int8"):
            base = name[: -len(".int8")]
            out[base] = w.float() * state[base + ".scale"][:, None]
        elif not name.endswith(".scale"):
            out[name] = w.float()
    return out


def read_head_config(directory: str | os.PathLike) -> HeadFileConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise HeadError(f"no draft head at {directory} ({CONFIG_FILE} not found)")
    return HeadFileConfig.model_validate_json(path.read_text())


def load_head(directory: str | os.PathLike, target: PreTrainedModel) -> DraftHead:
    """Load a head for ``target``; refuses a head trained for another target."""
    directory = Path(directory)
    config = read_head_config(directory)
    try:
        config.target.check(target_identity(target), f"the draft head at {directory}")
    except IdentityError as error:
        raise HeadError(f"{error}: this head was trained for another target") from None
    vocab = torch.tensor(config.vocab, dtype=torch.long)
    head = DraftHead(Qwen2Config(**config.layer), vocab)
    state = _dequant(load_file(str(directory / HEAD_FILE)))
    state["lm_head.weight"] = target.lm_head.weight[vocab].float()
    state["vocab_map"] = vocab
    head.load_state_dict(state)
    return head.to(dtype=target.dtype, device=target.device).eval()


def head_heldout_alpha(directory: str | os.PathLike) -> dict[str, list[float]]:
    """The acceptance per class and draft position a saved head was measured at (empty for heads saved without)."""
    return read_head_config(directory).heldout_alpha


def head_heldout_prompts(directory: str | os.PathLike, per_class: int = 200) -> dict[str, list[str]]:
    """The prompts ``distill`` held out beside a saved head (or custom draft), by the traffic's class (at most
    ``per_class`` each; empty when the directory has none): where a head's ``heldout_alpha`` was measured, for
    ``AdaptivePolicy.align_measured_alpha``; the benchmarks' held-out prompts."""
    path = Path(directory) / HELDOUT_FILE
    out: dict[str, list[str]] = {}
    if not path.is_file():
        return out
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            cls, prompt = str(row["class"]), row["prompt"]
        except (ValueError, KeyError, TypeError) as exc:
            raise HeadError(f"{path}:{number}: expected a JSON object with 'class' and 'prompt' ({exc})") from None
        if isinstance(prompt, str) and len(bucket := out.setdefault(cls, [])) < per_class:
            bucket.append(prompt)
    return out


def attach_saved_head(engine, directory: str | os.PathLike, name: str = "head") -> HeadDrafter:
    return attach_head(engine, load_head(directory, engine.target.model), name)
