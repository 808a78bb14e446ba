"""A causal LM plus its KV cache, advanced by forwards and rolled back by cropping.

Both the target and the model drafter use this: the prefix is encoded once and never re-encoded; rejected
tokens are dropped from the cache with ``DynamicCache.crop(-n)``.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel


class CachedLM:
    """Holds ``model`` and the cache of the tokens it has seen, for one request at a time."""

    def __init__(self, model: PreTrainedModel, vocab_size: int | None = None):
        self.model = model
        self.device = model.device
        # Logits are cut to the shared vocabulary: padded rows beyond the tokenizer's ids are never proposed.
        self.vocab_size = vocab_size or model.config.get_text_config().vocab_size
        self.cache: DynamicCache | None = None
        self.seen = 0  # tokens in the cache
        self.forwarding = False  # True while this object runs the model (lets hooks tell its forwards apart)

    def reset(self) -> None:
        self.cache = None
        self.seen = 0

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Feed tokens [n] after what the cache holds; returns logits [n, V] (or [1, V] with ``last_only``)."""
        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
        # An index tensor, not ``logits_to_keep=1``: the int form slices the hidden states into a non-contiguous
        # view, and on CPU a bf16 matmul over such a view takes a slow path (measured 600 ms instead of 90 ms for
        # the 0.5B draft's head when 2+ tokens are fed).
        keep = torch.tensor([tokens.numel() - 1], device=self.device) if last_only else 0
        self.forwarding = True
        try:
            out = self.model(input_ids=tokens.view(1, -1), cache=self.cache, use_cache=True, logits_to_keep=keep)
        finally:
            self.forwarding = False
        self.seen += tokens.numel()
        return out.logits[0, :, : self.vocab_size]

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` tokens of the cache."""
        if n <= 0:
            return
        assert n <= self.seen, f"cannot drop {n} of {self.seen} cached tokens"
        if n == self.seen:
            self.reset()
            return
        self.cache.crop(-n)
        self.seen -= n
