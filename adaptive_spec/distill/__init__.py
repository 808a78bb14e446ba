"""Custom drafts distilled from the target on the user's own traffic (``adaptive-spec distill``).

- ``collect``: teacher-forced target prefills -> sharded top-k distributions (+ optional hidden states).
- ``vocab``, ``derive``: the pruned output vocabulary and the small draft derived from the generic one.
- ``train``: KL distillation, reproducible and resumable.
- ``drafter``, ``artifact``: ``CustomDrafter`` (a third drafter, "custom"), saving, ``load_custom_draft``.
- ``evaluate``, ``pipeline``, ``cli``: held-out evaluation, the whole run, the command.

Names load lazily, so importing ``adaptive_spec.distill.cli`` (to register the command) does not import torch.
The functions ``collect.collect`` and ``train.train`` share their modules' names: import them from the modules.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CUSTOM": "drafter",
    "CustomDrafter": "drafter",
    "ChatEncoder": "collect",
    "CollectSettings": "collect",
    "Collection": "collect",
    "DraftConfig": "artifact",
    "load_custom_draft": "artifact",
    "read_draft_config": "artifact",
    "save_custom_draft": "artifact",
    "IdentityError": "identity",
    "TargetIdentity": "identity",
    "target_identity": "identity",
    "TrainSettings": "train",
    "VocabMap": "vocab",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
