"""A causal LM plus its KV cache, advanced by forwards and rolled back by cropping.

Both the target and the model drafter use this: the prefix is encoded once and never re-encoded; rejected
tokens are dropped from the cache with ``DynamicCache.crop(-n)``. A verify forward may also be a small token tree
(``tree``: each fed token's position and what it attends to); ``keep`` then keeps the accepted path's entries.
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
        self.listeners: list = []  # objects with ``kept(start, rows)``: per-position state to rearrange like the cache

    def reset(self) -> None:
        self.cache = None
        self.seen = 0

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, last_only: bool = False, tree: Tree | None = None) -> torch.Tensor:
        """Feed tokens [n] after what the cache holds; returns logits [n, V] (or [1, V] with ``last_only``).

        ``tree``: the tokens are not one sequence but a tree (see ``Tree``); every fed token still takes a cache
        slot, in feeding order, until ``keep`` or ``rollback``."""
        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
        # An index tensor, not ``logits_to_keep=1``: the int form slices the hidden states into a non-contiguous
        # view, and on CPU a bf16 matmul over such a view takes a slow path (measured 600 ms instead of 90 ms for
        # the 0.5B draft's head when 2+ tokens are fed).
        keep = torch.tensor([tokens.numel() - 1], device=self.device) if last_only else 0
        self.forwarding = True
        try:
            extra = {} if tree is None else tree.model_inputs(self.seen, self.device)
            out = self.model(input_ids=tokens.view(1, -1), cache=self.cache, use_cache=True, logits_to_keep=keep,
                             **extra)  # fmt: skip
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

    @torch.inference_mode()
    def keep(self, start: int, rows: list[int]) -> None:
        """Of the cache entries from ``start`` on, keep only ``rows`` (offsets from ``start``, increasing), packed
        in that order: a tree forward's accepted path becomes an ordinary prefix."""
        for layer in self.cache.layers:
            pack(layer.keys, 2, start, rows)
            pack(layer.values, 2, start, rows)
        for listener in self.listeners:
            listener.kept(start, rows)
        self.rollback(self.seen - start - len(rows))


def pack(tensor: torch.Tensor, dim: int, start: int, rows: list[int]) -> None:
    """In place along ``dim``: entries ``start + rows`` move to ``start``, ``start + 1``, ... (rows increasing)."""
    index = torch.tensor(rows, device=tensor.device) + start
    tensor.narrow(dim, start, len(rows)).copy_(tensor.index_select(dim, index))


class Tree:
    """A verify forward shaped as a tree: fed token i sits at position ``start + depth[i]`` and attends to the
    cache, to its ancestors and to itself (``parent[i]`` = index of its parent among the fed tokens, -1 = the
    cache's last token). A chain is ``parent = [-1, 0, 1, ...]``."""

    def __init__(self, parent: list[int]):
        self.parent = parent
        self.depth: list[int] = []
        for i, p in enumerate(parent):
            if not -1 <= p < i:
                raise ValueError(f"tree node {i} has parent {p}: parents come before their children")
            self.depth.append(0 if p < 0 else self.depth[p] + 1)

    def model_inputs(self, start: int, device: torch.device) -> dict:
        """position_ids [1, n] and a boolean 4D attention mask [1, 1, n, start + n] (True: attend)."""
        n = len(self.parent)
        sees: list[list[bool]] = []  # sees[i][j]: fed token i attends to fed token j
        for i, p in enumerate(self.parent):
            row = list(sees[p]) if p >= 0 else [False] * n
            row[i] = True
            sees.append(row)
        mask = torch.ones(n, start + n, dtype=torch.bool)
        mask[:, start:] = torch.tensor(sees, dtype=torch.bool)
        positions = torch.tensor([[start + d for d in self.depth]], device=device)
        return {"position_ids": positions, "attention_mask": mask[None, None].to(device)}
