"""``CustomDrafter``: a distilled draft with a pruned output vocabulary, used by the engine like any drafter.

It drafts exactly as ``ModelDrafter`` does (own KV cache, catch-up in one batched forward, then one token per
forward), with two differences at the vocabulary boundary:

- context tokens (target ids) are mapped to draft ids before they are fed (ids outside the kept set become the
  *other* id);
- logits cover the ``V'`` kept ids only; a proposed draft id is mapped back to its target id, and in sampling mode
  ``q_draft`` is scattered into a target-vocabulary row (zeros outside the kept set), so it is a proper
  distribution over the target's ids and speculative sampling stays exact.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..engine.drafters import Draft, DraftRequest
from ..engine.kv import CachedLM
from ..engine.sampling import distribution, sample
from .vocab import VocabMap

CUSTOM = "custom"


class CustomDrafter:
    """Drafts with a distilled model whose output vocabulary is a subset of the target's (see ``VocabMap``)."""

    def __init__(self, model: PreTrainedModel, vmap: VocabMap, name: str = CUSTOM):
        if model.config.get_text_config().vocab_size != vmap.size + 1:
            raise ValueError(
                f"draft vocabulary {model.config.get_text_config().vocab_size} does not match the vocabulary map "
                f"({vmap.size} kept ids + 1 other)"
            )
        self.name = name
        self.lm = CachedLM(model, vocab_size=vmap.size)  # logits cut to the kept ids: *other* is never proposed
        self.vmap = vmap.to(self.lm.device)
        self._cached = torch.empty(0, dtype=torch.long, device=self.lm.device)  # target ids the cache holds

    def reset(self) -> None:
        self.lm.reset()
        self._cached = self._cached[:0]

    def _feed(self, target_ids: torch.Tensor) -> torch.Tensor:
        """Feed target ids [n]; the draft's logits [V'] for the token after them."""
        return self.lm.forward(self.vmap.to_draft(target_ids), last_only=True)[-1]

    def _catch_up(self, context: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Roll the cache back to what it shares with ``context``, feed the rest in one forward."""
        n = min(self._cached.numel(), context.numel() - 1)  # always feed at least the last token
        mismatch = (self._cached[:n] != context[:n]).nonzero()
        common = int(mismatch[0]) if mismatch.numel() else n
        self.lm.rollback(self.lm.seen - common)
        logits = self._feed(context[common:])
        self._cached = context
        return logits, context.numel() - common

    def propose(self, context: torch.Tensor, request: DraftRequest) -> Draft:
        if request.k <= 0:
            return Draft(tokens=context.new_empty(0), source=self.name)
        logits, catchup = self._catch_up(context)
        tokens, rows, probs = [], [], []
        for i in range(request.k):
            if i > 0:  # feed the token just drafted
                logits = self._feed(tokens[-1].view(1))
                self._cached = torch.cat([self._cached, tokens[-1].view(1)])
            q = distribution(logits[None], request.sampling)[0]  # [V'] over the kept ids
            choice = sample(q[None], request.generator)[0] if request.sampling.do_sample else q.argmax()
            tokens.append(self.vmap.to_target(choice))
            if request.sampling.do_sample:
                rows.append(self._full_row(q))
            probs.append(q[choice].item())
            if probs[-1] < request.threshold:
                break
        return Draft(
            tokens=torch.stack(tokens),
            q_draft=torch.stack(rows) if request.sampling.do_sample else None,
            probs=tuple(probs),
            source=self.name,
            catchup=catchup,
        )

    def _full_row(self, q: torch.Tensor) -> torch.Tensor:
        """q over the kept ids [V'] -> the same distribution over the target's ids [V_target] (zeros elsewhere)."""
        row = q.new_zeros(self.vmap.target_vocab_size)
        row[self.vmap.draft_to_target] = q
        return row
