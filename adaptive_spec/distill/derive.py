"""Deriving a small draft from the generic one: keep some of its layers, prune its output vocabulary.

The result is a plain ``Qwen2ForCausalLM``-style model (same class as the base) whose config has fewer layers and a
vocabulary of ``V' + 1`` (the kept target ids plus the *other* row, see ``vocab``), so it saves and loads with
``save_pretrained`` / ``AutoModelForCausalLM.from_pretrained``. Weights come from the base:

- kept layer ``i`` is base layer ``layers[i]`` (attention, MLP, norms), the final norm is the base's;
- embedding rows are the base's rows of the kept ids; the *other* row is the mean of the dropped rows;
- the output head is its own parameter (the 0.5B ties it to the embedding): the base head's rows of the kept ids,
  and a zero row for *other* (never proposed: the drafter cuts it off).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from .vocab import VocabMap


def spaced_layers(total: int, keep: int) -> list[int]:
    """``keep`` evenly spaced layer indices that include the first and the last."""
    if not 1 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} layers")
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def parse_layers(spec: str, total: int) -> list[int]:
    """Layer choice from the CLI: ``"4"`` (4 evenly spaced), ``"first3+last"`` or explicit ``"0,1,2,23"``."""
    spec = spec.strip()
    if spec.isdigit():
        return spaced_layers(total, int(spec))
    if spec.startswith("first") and spec.endswith("+last") and spec[5:-5].isdigit():
        n = int(spec[5:-5])
        if not 1 <= n < total:
            raise ValueError(f"layers {spec!r}: need 1 <= n < {total}")
        return list(range(n)) + [total - 1]
    try:
        layers = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"layers {spec!r}: expected N, firstN+last or a comma-separated list of indices") from None
    if sorted(set(layers)) != layers or layers[0] < 0 or layers[-1] >= total:
        raise ValueError(f"layers {spec!r}: indices must be increasing, distinct and within 0..{total - 1}")
    return layers


def derive_draft(base: PreTrainedModel, layers: Sequence[int], vmap: VocabMap,
                 dtype: torch.dtype = torch.float32) -> PreTrainedModel:  # fmt: skip
    """A new model with ``base``'s ``layers`` and the output vocabulary of ``vmap`` (see the module docstring)."""
    total = base.config.num_hidden_layers
    layers = list(layers)
    if not layers or sorted(set(layers)) != layers or layers[-1] >= total:
        raise ValueError(f"layers must be increasing indices within 0..{total - 1}, got {layers}")
    config = copy.deepcopy(base.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    if getattr(config, "max_window_layers", None) is not None:
        config.max_window_layers = min(config.max_window_layers, len(layers))
    config.vocab_size = vmap.size + 1
    config.tie_word_embeddings = False
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the draft's own ids for the same tokens
        setattr(config, name, _map_special(getattr(config, name, None), vmap))
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)

    source = base.state_dict()
    kept = vmap.draft_to_target.to(base.device)
    dropped = torch.ones(base.config.vocab_size, dtype=torch.bool, device=base.device)
    dropped[kept] = False
    state = {}
    with torch.no_grad():
        for name in model.state_dict():
            if name.endswith("embed_tokens.weight"):
                embed = base.get_input_embeddings().weight
                other = embed[: base.config.vocab_size][dropped].float().mean(0, keepdim=True)
                state[name] = torch.cat([embed[kept].float(), other.nan_to_num()])
            elif name == "lm_head.weight":
                head = base.get_output_embeddings().weight
                state[name] = torch.cat([head[kept].float(), head.new_zeros(1, head.shape[1]).float()])
            elif ".layers." in name:
                prefix, rest = name.split(".layers.", 1)
                index, tail = rest.split(".", 1)
                state[name] = source[f"{prefix}.layers.{layers[int(index)]}.{tail}"]
            else:
                state[name] = source[name]
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model.to(base.device).eval()


def _map_special(value, vmap: VocabMap):
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_map_special(v, vmap) for v in value]
    return int(vmap.target_to_draft[int(value)]) if 0 <= int(value) < vmap.target_vocab_size else None
