"""Custom drafts distilled from the target on the user's own traffic (``adaptive-spec distill``).

- ``collect``: teacher-forced target prefills -> sharded top-k distributions (+ optional hidden states).
- ``vocab``, ``derive``: the pruned output vocabulary and the small draft derived from the generic one.
- ``train``: KL distillation, reproducible and resumable.
- ``drafter``, ``artifact``: ``CustomDrafter`` (a third drafter, "custom"), saving, ``load_custom_draft``.
- ``evaluate``, ``pipeline``, ``cli``: held-out evaluation, the whole run, the command.
"""

from .artifact import DraftConfig, load_custom_draft, read_draft_config, save_custom_draft
from .collect import ChatEncoder, Collection, CollectSettings, collect
from .drafter import CUSTOM, CustomDrafter
from .identity import IdentityError, TargetIdentity, target_identity
from .train import TrainSettings, train
from .vocab import VocabMap

__all__ = [
    "CUSTOM",
    "ChatEncoder",
    "CollectSettings",
    "Collection",
    "CustomDrafter",
    "DraftConfig",
    "IdentityError",
    "TargetIdentity",
    "TrainSettings",
    "VocabMap",
    "collect",
    "load_custom_draft",
    "read_draft_config",
    "save_custom_draft",
    "target_identity",
    "train",
]
