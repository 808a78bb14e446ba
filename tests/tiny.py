"""Tiny random-init Qwen2 models for fast tests."""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def tiny_config(vocab_size: int = 128, layers: int = 2, hidden: int = 32, **kw) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
        **kw,
    )


def tiny_model(seed: int, **kw) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(**kw)).eval()
    # Sharper logits than the default init, so greedy outputs are not near-ties and sampling is not near-uniform.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


def noisy_copy(model: Qwen2ForCausalLM, noise: float, seed: int, vocab_size: int | None = None) -> Qwen2ForCausalLM:
    """A draft that agrees with ``model`` often but not always (more ``noise``, less agreement)."""
    config = model.config.to_dict()
    config["vocab_size"] = vocab_size or model.config.vocab_size
    draft = Qwen2ForCausalLM(Qwen2Config(**config)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for (name, p), q in zip(draft.named_parameters(), model.parameters()):
            rows = min(p.shape[0], q.shape[0])
            p.zero_()
            p[:rows] = q[:rows] + noise * q[:rows].std() * torch.randn(q[:rows].shape, generator=g)
    return draft


def tiny_pair(noise: float = 0.3):
    target = tiny_model(0)
    return target, noisy_copy(target, noise, seed=1)
