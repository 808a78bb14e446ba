"""Turning logits into the distributions the target and drafters sample from.

Both sides use transformers' own logits warpers, in the order ``generate`` applies them
(temperature, top-k, top-p), so ``p_target`` here is exactly the distribution ``model.generate(do_sample=True)``
samples from. The drafter's distribution ``q_draft`` may be anything; speculative sampling stays lossless as long as
the tokens it proposes were really drawn from the ``q_draft`` it reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. ``do_sample=False`` is greedy (argmax of the raw logits, as in HF)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1.0 disables

    def __post_init__(self) -> None:
        if self.temperature <= 0 and self.do_sample:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @cached_property
    def warpers(self) -> LogitsProcessorList:
        warpers = LogitsProcessorList()
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k > 0:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return warpers


GREEDY = SamplingParams()


def distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities to sample from, one row per position. logits: [n, V] -> probs: [n, V] float32."""
    scores = logits.float()
    if params.warpers:
        scores = params.warpers(None, scores)
    return torch.softmax(scores, dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row. probs: [n, V] -> tokens: [n]."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def uniform(generator: torch.Generator | None, device: torch.device) -> float:
    """A U(0, 1) draw from the request's generator (so seeded runs repeat exactly)."""
    return torch.rand((), generator=generator, device=device).item()
