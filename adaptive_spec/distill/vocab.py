"""The pruned output vocabulary of a custom draft and its map back to the target's token ids.

The draft's vocabulary is ``V'`` target ids (``draft_to_target``) plus one extra *other* row, id ``V'``, that
stands for every target id outside the kept set when it appears in the *input* (a rare prompt token). The other
row is never an output: the drafter cuts its logits to the first ``V'`` columns, so every proposal maps to a real
target id.

    vmap = VocabMap(torch.tensor([5, 9, 2]), target_vocab_size=10)    # V' = 3, other = 3
    vmap.to_draft(torch.tensor([9, 7, 2]))   # -> [1, 3, 2]  (7 is not kept: the other row)
    vmap.to_target(torch.tensor([0, 1]))     # -> [5, 9]
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from ..traces.format import atomic_write_text

VOCAB_MAP = "vocab_map.json"


class VocabMap:
    """Draft ids ``0..V'-1`` -> target ids; any other target id -> the *other* draft id ``V'``."""

    def __init__(self, draft_to_target: torch.Tensor, target_vocab_size: int):
        ids = torch.as_tensor(draft_to_target, dtype=torch.long).flatten()
        if ids.numel() == 0:
            raise ValueError("a vocabulary map needs at least one token")
        if int(ids.min()) < 0 or int(ids.max()) >= target_vocab_size:
            raise ValueError(f"vocabulary map has ids outside the target vocabulary [0, {target_vocab_size})")
        if ids.unique().numel() != ids.numel():
            raise ValueError("vocabulary map lists a target id twice")
        self.draft_to_target = ids  # [V'] long
        self.target_vocab_size = target_vocab_size
        self.target_to_draft = torch.full((target_vocab_size,), ids.numel(), dtype=torch.long)  # [V_target]
        self.target_to_draft[ids] = torch.arange(ids.numel())

    @property
    def size(self) -> int:
        """V': the draft's output vocabulary (its embedding has one more row, the *other* id)."""
        return self.draft_to_target.numel()

    @property
    def other_id(self) -> int:
        return self.size

    def to(self, device: torch.device | str) -> VocabMap:
        self.draft_to_target = self.draft_to_target.to(device)
        self.target_to_draft = self.target_to_draft.to(device)
        return self

    def to_draft(self, target_ids: torch.Tensor) -> torch.Tensor:
        return self.target_to_draft[target_ids]

    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return self.draft_to_target[draft_ids]

    def covers(self, target_ids: torch.Tensor) -> torch.Tensor:
        """Which of ``target_ids`` the draft can propose. [n] -> [n] bool."""
        return self.target_to_draft[target_ids] < self.size

    def save(self, directory: Path) -> None:
        doc = {"target_vocab_size": self.target_vocab_size, "other_id": self.other_id,
               "draft_to_target": self.draft_to_target.tolist()}  # fmt: skip
        atomic_write_text(Path(directory) / VOCAB_MAP, json.dumps(doc, separators=(",", ":")))

    @classmethod
    def load(cls, directory: Path) -> VocabMap:
        path = Path(directory) / VOCAB_MAP
        if not path.is_file():
            raise ValueError(f"{path} not found: not a custom draft directory")
        doc = json.loads(path.read_text())
        return cls(torch.tensor(doc["draft_to_target"]), int(doc["target_vocab_size"]))


def choose_vocab(
    token_counts: torch.Tensor, target_mass: torch.Tensor, size: int, always: Iterable[int] = ()
) -> torch.Tensor:
    """The ``size`` target ids most worth proposing, sorted by id.

    token_counts: [V] occurrences of each id in the traffic (prompts and responses);
    target_mass: [V] the target's probability summed over all positions (its top-k), i.e. how often it predicts
    each id. Ids are ranked by ``mass + count`` (each normalised to sum 1); ``always`` (special tokens: EOS,
    chat markers) are kept regardless. Ids never seen and never predicted are dropped, so V' may come out smaller.
    """
    counts = token_counts.double()
    mass = target_mass.double()
    score = counts / counts.sum().clamp_min(1) + mass / mass.sum().clamp_min(1e-12)
    always = sorted({int(i) for i in always if 0 <= int(i) < score.numel()})
    score[always] = float("inf")
    # a stable descending sort: equal scores keep id order, so the choice is deterministic
    order = torch.sort(-score, stable=True).indices
    seen = int((score > 0).sum())
    return order[: min(size, seen)].sort().values
