"""A draft head on the target's own hidden states (EAGLE-style), and the tap that feeds it.

The target's final hidden state at position i (the input of its LM head, called the *feature* f_i) already says
much about the tokens after x_{i+1}. The head reads the pair (f_i, embedding of x_{i+1}), fuses them with one
linear layer, runs one decoder layer over the sequence of such pairs (with its own KV cache) and predicts f_{i+1};
a pruned LM head over the traffic's vocabulary turns that into the next token, mapped back to target ids.

Drafting from a context x_0..x_{L-1} whose last token is pending (not yet seen by the target): the true features
f_0..f_{L-2} come from the target's own forwards (``FeatureTap``, no extra forward), the head catches up on the
pairs it has not seen, predicts g_{L-1} from (f_{L-2}, x_{L-1}) and proposes d_1; then (g_{L-1}, d_1) -> d_2, and so
on, autoregressively over its own predicted features. Head positions computed from predicted features are always
rolled back and recomputed from the true ones at the next round (the target has verified by then).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel, Qwen2Config, Qwen2Model

from .drafters import Draft, DraftRequest
from .kv import CachedLM, pack
from .sampling import distribution, sample


def final_norm(model: PreTrainedModel) -> nn.Module:
    """The module whose output feeds the LM head (the target's features)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise ValueError(f"cannot find the final norm of {type(model).__name__}: the head needs its features")
    return norm


class FeatureTap:
    """The target's features per context position, captured by a hook during the engine's own target forwards."""

    def __init__(self, target: CachedLM):
        self.target = target
        self.features: torch.Tensor | None = None  # [capacity, H]
        self.handle = final_norm(target.model).register_forward_hook(self._capture)
        target.listeners.append(self)

    def _capture(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not self.target.forwarding:
            return  # someone else's forward of the same model
        h = output[0].detach()  # [n, H] (all positions, whatever the LM head keeps); `seen` tokens came before
        self._store(self.target.seen, h, h.shape[0])

    def _store(self, start: int, h: torch.Tensor, n: int) -> None:
        if self.features is None or self.features.shape[0] < start + n:
            grown = torch.empty(max(2 * (start + n), 256), h.shape[-1], dtype=h.dtype, device=h.device)
            if self.features is not None:
                grown[: self.features.shape[0]] = self.features
            self.features = grown
        self.features[start : start + n] = h

    @torch.inference_mode()
    def kept(self, start: int, rows: list[int]) -> None:
        """The target kept only ``rows`` of a tree forward from ``start`` (``CachedLM.keep``): so do the features."""
        pack(self.features, 0, start, rows)

    def get(self, n: int) -> torch.Tensor:
        """Features of context positions 0..n-1: [n, H]."""
        return self.features[:n]

    def remove(self) -> None:
        self.handle.remove()
        if self in self.target.listeners:
            self.target.listeners.remove(self)


def head_config(target_config, intermediate_size: int | None = None) -> Qwen2Config:
    """One decoder layer shaped like the target's (hidden size, heads), optionally with a narrower MLP."""
    text = target_config.get_text_config()
    return Qwen2Config(
        vocab_size=1,  # inputs are embeddings; no token table of its own
        hidden_size=text.hidden_size,
        intermediate_size=intermediate_size or text.intermediate_size,
        num_hidden_layers=1,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
        rope_parameters=getattr(text, "rope_parameters", None),
        tie_word_embeddings=False,
    )


class DraftHead(nn.Module):
    """fc(concat(token embedding, feature)) -> one decoder layer -> predicted feature -> pruned LM head."""

    def __init__(self, config: Qwen2Config, vocab_map: torch.Tensor):
        super().__init__()
        hidden = config.hidden_size
        self.config = config
        self.fc = nn.Linear(2 * hidden, hidden, bias=True)
        self.body = Qwen2Model(config)
        self.body.embed_tokens = None  # inputs come as embeddings: the target's own embedding is used
        self.lm_head = nn.Linear(hidden, vocab_map.numel(), bias=False)
        self.register_buffer("vocab_map", vocab_map.long(), persistent=True)  # [V'] head id -> target id

    def forward(self, features: torch.Tensor, token_embeds: torch.Tensor, cache: DynamicCache | None = None,
                logits_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """features, token_embeds: [B, n, H] -> (predicted features [B, n, H], logits [B, n or rows, V'])."""
        x = self.fc(torch.cat([token_embeds, features], dim=-1))
        hidden = self.body(inputs_embeds=x, cache=cache, use_cache=cache is not None).last_hidden_state
        chosen = hidden if logits_rows is None else hidden[:, logits_rows]
        return hidden, self.lm_head(chosen)


class HeadDrafter:
    """Drafts with a ``DraftHead`` over the target's captured features; rolled back and caught up like a model."""

    def __init__(self, head: DraftHead, tap: FeatureTap, target_embedding: nn.Embedding, vocab_size: int,
                 name: str = "head"):  # fmt: skip
        if int(head.vocab_map.max()) >= vocab_size or int(head.vocab_map.min()) < 0:
            raise ValueError("the head's vocabulary map points outside the target's vocabulary")
        self.name = name
        self.head = head.eval().requires_grad_(False)
        self.tap = tap
        self.embed = target_embedding
        self.vocab_size = vocab_size
        self.cache: DynamicCache | None = None
        self.seen = 0  # head positions in the cache computed from true features

    def reset(self) -> None:
        self.cache = None
        self.seen = 0

    def _full(self, probs: torch.Tensor) -> torch.Tensor:
        """A head distribution [n, V'] as a distribution over the target's vocabulary [n, V]."""
        out = probs.new_zeros(probs.shape[0], self.vocab_size)
        out[:, self.head.vocab_map] = probs
        return out

    @torch.inference_mode()
    def propose(self, context: torch.Tensor, request: DraftRequest) -> Draft:
        L = context.numel()
        if request.k <= 0 or L < 2:
            return Draft(tokens=context[:0], source=self.name)
        if self.cache is None:
            self.cache = DynamicCache(config=self.head.config)
        # 1. roll back positions computed from predicted features; feed the true pairs (f_i, x_{i+1}), i < L - 1
        common = min(self.seen, L - 2)
        if self.cache.get_seq_length() > common:
            self.cache.crop(common - self.cache.get_seq_length())
        features = self.tap.get(L - 1)[common:][None]
        embeds = self.embed(context[common + 1 : L])[None].to(features.dtype)
        last = torch.tensor([features.shape[1] - 1], device=context.device)
        feature, logits = self.head(features, embeds, self.cache, last)
        self.seen = L - 1
        feature = feature[:, -1:]
        tokens, rows, probs, siblings = [], [], [], []
        greedy = not request.sampling.do_sample
        for i in range(request.k):
            if i > 0:  # feed (predicted feature, drafted token)
                feature, logits = self.head(feature, self.embed(tokens[-1].view(1, 1)).to(feature.dtype), self.cache)
            q_head = distribution(logits[0, -1:], request.sampling)[0]  # [V']
            if greedy:  # like the model drafter: its second choice where it is unsure (verified beside it)
                top = q_head.topk(min(2, q_head.numel()))
                pick = top.indices[0]
                if top.values[0].item() < request.sibling_below and top.indices.numel() > 1:
                    siblings.append((i, int(self.head.vocab_map[top.indices[1]])))
            else:
                pick = sample(q_head[None], request.generator)[0]
            token = self.head.vocab_map[pick]
            tokens.append(token)
            probs.append(q_head[pick].item())
            rows.append(q_head)
            if probs[-1] < request.threshold:
                break
        q_draft = self._full(torch.stack(rows)) if request.sampling.do_sample else None
        return Draft(torch.stack(tokens), q_draft, tuple(probs), self.name, catchup=features.shape[1],
                     siblings=tuple(siblings))


def attach_head(engine, head: DraftHead, name: str = "head") -> HeadDrafter:
    """Register a head as a drafter of ``engine`` (features tapped from the engine's target forwards)."""
    target = engine.target
    drafter = HeadDrafter(head, FeatureTap(target), target.model.get_input_embeddings(), target.vocab_size, name)
    engine.add_drafter(drafter)
    return drafter
