"""Wiring shared by the CLI, the generator and the benchmarks: standard drafters, EOS ids."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .engine import Drafter, FallbackDrafter, ModelDrafter, PromptLookupDrafter

# Fixed modes (CLI --mode, benchmarks) and the drafter each one uses; None = target-only.
MODE_DRAFTER: dict[str, str | None] = {"target": None, "draft": "model", "lookup": "lookup", "hybrid": "hybrid"}


def standard_drafters(target: PreTrainedModel, draft: PreTrainedModel | None) -> list[Drafter]:
    """Prompt lookup, plus the model draft and 'hybrid' (lookup when it proposes, else the draft) when given."""
    lookup = PromptLookupDrafter()
    if draft is None:
        return [lookup]
    model = ModelDrafter(draft, vocab_size=target.config.get_text_config().vocab_size)
    return [lookup, model, FallbackDrafter(lookup, model, name="hybrid")]


def eos_ids(tokenizer: PreTrainedTokenizerBase | None, model: PreTrainedModel) -> frozenset[int]:
    """EOS ids from the model's generation config and the tokenizer, as ``generate`` would stop on."""
    ids = model.generation_config.eos_token_id
    found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return frozenset(found)
