"""Lossless speculative decoding on Hugging Face causal LMs (no policy, statistics or Redis in here)."""

from ..records import NO_DRAFTER, RoundRecord
from .drafters import Draft, Drafter, DraftRequest, FallbackDrafter, ModelDrafter, PromptLookupDrafter
from .loop import (
    PADDED_PLAIN_STEP,
    PLAIN_STEP,
    Decide,
    Decision,
    GenerationResult,
    RoundState,
    SpeculativeEngine,
    fixed,
)
from .sampling import GREEDY, SamplingParams
from .stopping import StopRule

__all__ = [
    "GREEDY",
    "NO_DRAFTER",
    "PADDED_PLAIN_STEP",
    "PLAIN_STEP",
    "Decide",
    "Decision",
    "Draft",
    "DraftRequest",
    "Drafter",
    "FallbackDrafter",
    "GenerationResult",
    "ModelDrafter",
    "PromptLookupDrafter",
    "RoundRecord",
    "RoundState",
    "SamplingParams",
    "SpeculativeEngine",
    "StopRule",
    "fixed",
]
