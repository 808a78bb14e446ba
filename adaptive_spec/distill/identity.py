"""Which target a collection or a custom draft belongs to: shape facts plus a fingerprint of its output head.

A custom draft predicts one target's distributions; used with another target it is merely slow, never wrong
(the engine verifies everything), but that is a mistake worth refusing loudly. The fingerprint is 256 weights of
the target's output embedding at fixed positions, compared with a tolerance, so the same target loaded in
bfloat16 or float32 matches and a different one does not.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict
from transformers import PreTrainedModel

FINGERPRINT_SIZE = 256
TOLERANCE = 2e-2  # relative to the largest fingerprint weight; bf16 rounding is ~4e-3


class IdentityError(ValueError):
    """A collection or custom draft was made for a different target."""


class TargetIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    name: str = ""  # informational: where the target was loaded from
    fingerprint: tuple[float, ...]  # [FINGERPRINT_SIZE] output-embedding weights at fixed (row, col) positions

    def check(self, other: TargetIdentity, what: str) -> None:
        """Raise ``IdentityError`` unless ``other`` (the target at hand) is the target ``what`` was made for."""
        facts = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
        for fact in facts:
            if getattr(self, fact) != getattr(other, fact):
                raise IdentityError(
                    f"{what} was made for a different target: {fact} {getattr(self, fact)!r} "
                    f"(made for {self.name or 'unnamed'}) vs {getattr(other, fact)!r} (this target)"
                )
        mine, theirs = torch.tensor(self.fingerprint), torch.tensor(other.fingerprint)
        scale = mine.abs().max().clamp_min(1e-12)
        if mine.shape != theirs.shape or ((mine - theirs).abs().max() / scale) > TOLERANCE:
            raise IdentityError(
                f"{what} was made for a different target ({self.name or 'unnamed'}): same shape, but its output "
                "weights differ (fingerprint mismatch)"
            )


def target_identity(target: PreTrainedModel) -> TargetIdentity:
    config = target.config.get_text_config()
    head = target.get_output_embeddings().weight  # [V_padded, H]
    rows = torch.linspace(0, config.vocab_size - 1, FINGERPRINT_SIZE).long()
    cols = torch.linspace(0, head.shape[1] - 1, FINGERPRINT_SIZE).long().flip(0)
    with torch.no_grad():
        values = head[rows.to(head.device), cols.to(head.device)].float().cpu()
    return TargetIdentity(
        model_type=config.model_type,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        vocab_size=config.vocab_size,
        name=str(getattr(target.config, "_name_or_path", "") or ""),
        fingerprint=tuple(round(v, 6) for v in values.tolist()),
    )
