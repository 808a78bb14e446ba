"""A custom draft on disk: a normal ``transformers`` directory plus what it takes to use it safely.

    DIR/config.json, model.safetensors, generation_config.json   # AutoModelForCausalLM.from_pretrained(DIR) loads it
    DIR/vocab_map.json      # draft ids -> target ids (see ``vocab``)
    DIR/draft_config.json   # schema, kind, the target's identity, layers kept, traffic and training facts
    DIR/README.md           # the model card (traffic, examples, steps, seed, alpha before/after, cost per token)

``draft_config.json`` is written last, so a directory without it is an unfinished save. ``load_custom_draft``
refuses a draft made for another target (``identity.IdentityError``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoModelForCausalLM, PreTrainedModel

from ..traces.format import atomic_write_text
from .drafter import CUSTOM, CustomDrafter
from .identity import TargetIdentity, target_identity
from .vocab import VOCAB_MAP, VocabMap

SCHEMA = "adaptive-spec/custom-draft"
VERSION = 1
DRAFT_CONFIG = "draft_config.json"
CARD = "README.md"


class DraftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_: str = Field(SCHEMA, alias="schema")
    version: int = VERSION
    kind: Literal["draft"] = "draft"
    target: TargetIdentity
    base_draft: str = Field(description="the generic draft the layers and embeddings come from")
    layers: list[int] = Field(description="indices of the base draft's layers that were kept, in order")
    mlp_width: int | None = Field(None, description="MLP neurons kept per layer (None: the base's width)")
    vocab_size: int = Field(description="V': output ids (the embedding has one more row, the *other* id)")
    facts: dict[str, Any] = Field(default_factory=dict, description="traffic, training and evaluation facts")

    def dump(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, mode="json"), indent=1)


def save_custom_draft(model: PreTrainedModel, vmap: VocabMap, directory: str | os.PathLike, config: DraftConfig,
                      card: str, dtype: torch.dtype = torch.bfloat16) -> Path:  # fmt: skip
    """Write the draft into ``directory`` (other files there, e.g. the collection, are left alone)."""
    out = Path(directory)
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (out / DRAFT_CONFIG).unlink(missing_ok=True)  # the directory is unfinished until the new config is written
    copy.deepcopy(model).to(dtype).save_pretrained(tmp)  # a copy: the caller's model keeps its dtype
    for path in tmp.iterdir():
        os.replace(path, out / path.name)
    tmp.rmdir()
    vmap.save(out)
    atomic_write_text(out / CARD, card)
    atomic_write_text(out / DRAFT_CONFIG, config.dump())
    return out


def read_draft_config(directory: str | os.PathLike) -> DraftConfig:
    path = Path(directory) / DRAFT_CONFIG
    if not path.is_file():
        raise ValueError(f"{directory} is not a custom draft ({DRAFT_CONFIG} not found; an unfinished save?)")
    doc = json.loads(path.read_text())
    if doc.get("schema") != SCHEMA or doc.get("version") != VERSION:
        raise ValueError(f"{path}: schema {doc.get('schema')!r} v{doc.get('version')}, expected {SCHEMA} v{VERSION}")
    if doc.get("kind") != "draft":
        raise ValueError(f"{path}: kind {doc.get('kind')!r} is not a draft model")
    return DraftConfig.model_validate(doc)


def load_custom_draft(directory: str | os.PathLike, target: PreTrainedModel, name: str = CUSTOM,
                      dtype: torch.dtype | None = None, quantize: str = "none") -> CustomDrafter:  # fmt: skip
    """The drafter saved in ``directory``, checked against ``target``, on the target's device and dtype;
    ``quantize="int8"``: its linear layers in int8 (``models.quantize_draft``, CPU), as the generic draft's can be."""
    from ..models.load import check_draft_quantization, quantize_draft

    check_draft_quantization(quantize)
    config = read_draft_config(directory)
    config.target.check(target_identity(target), f"the custom draft in {directory}")
    vmap = VocabMap.load(directory)
    if vmap.size != config.vocab_size or not (Path(directory) / VOCAB_MAP).is_file():
        raise ValueError(f"{directory}: {VOCAB_MAP} does not match {DRAFT_CONFIG}")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or target.dtype)
    model.to(target.device).eval().requires_grad_(False)
    if quantize == "int8":
        model = quantize_draft(model)
    return CustomDrafter(model, vmap, name=name)
