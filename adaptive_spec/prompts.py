"""Prompt text to token ids (chat template), and the context-window check done before any model work."""

from __future__ import annotations

import json
import os

import torch
from transformers import PreTrainedTokenizerBase

from .models.load import resolve


class PromptError(ValueError):
    """The prompt cannot be generated from (empty, or longer than the model's context window)."""


def chat_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None = None) -> torch.Tensor:
    """Token ids [1, L] of a single-turn chat, with the generation prompt appended."""
    if not prompt or not prompt.strip():
        raise PromptError("the prompt is empty")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if tokenizer.chat_template is None:
        return tokenizer(prompt, return_tensors="pt").input_ids
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids


def context_window(spec: str | os.PathLike) -> int:
    """The model's context length, read from its config or GGUF header (no weights are loaded)."""
    directory, gguf_file = resolve(spec)
    if gguf_file is None:
        config = json.loads((directory / "config.json").read_text())
        return int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)
    from transformers.integrations.gguf.reader import read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(directory / gguf_file))
    return int(metadata[f"{metadata['general.architecture']}.context_length"])


def check_fits(prompt_len: int, max_new_tokens: int, window: int) -> None:
    if prompt_len + max_new_tokens > window:
        raise PromptError(
            f"prompt of {prompt_len} tokens + max_new_tokens {max_new_tokens} exceeds the context window of "
            f"{window} tokens"
        )
