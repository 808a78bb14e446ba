"""Drafters: cheap proposers of the next few tokens.

A drafter is anything with ``name``, ``reset()`` and ``propose(context, k, ...) -> Draft``. The engine verifies
whatever is proposed, so a drafter can never make output wrong, only slower or faster.

- ``ModelDrafter``: a small causal LM sharing the target's tokenizer; drafts autoregressively from its own KV cache,
  which catches up with the context in one batched forward (after plain steps or another drafter's rounds).
- ``PromptLookupDrafter``: no model; copies what followed the latest suffix n-gram's first earlier occurrence.
- ``FallbackDrafter``: the first of several drafters that proposes anything (e.g. lookup, else the model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel

from .kv import CachedLM
from .lookup import LookupIndex
from .sampling import SamplingParams, distribution, sample


@dataclass
class Draft:
    """Proposed tokens and, for sampled drafts, the distributions they were drawn from."""

    tokens: torch.Tensor  # [n] long
    q_draft: torch.Tensor | None = None  # [n, V] float, the drafter's sampling distribution; None = deterministic
    probs: tuple[float, ...] = ()  # the drafter's probability of each proposed token, for records and thresholds
    source: str = ""  # which drafter proposed (a FallbackDrafter reports the member that did)
    catchup: int = 0  # context tokens the drafter had to feed before drafting
    # (position i among the proposed tokens, token): second choices to verify beside ``tokens[i]`` (greedy only)
    siblings: tuple[tuple[int, int], ...] = ()

    def __len__(self) -> int:
        return self.tokens.numel()


@dataclass(frozen=True)
class DraftRequest:
    """Everything a drafter may use besides the context."""

    k: int  # at most this many tokens
    sampling: SamplingParams = field(default_factory=SamplingParams)
    threshold: float = 0.0  # model drafters stop after a token whose probability is below this
    generator: torch.Generator | None = None
    sibling_below: float = 0.0  # greedy: offer the second choice where the first's probability is below this


@runtime_checkable
class Drafter(Protocol):
    name: str

    def reset(self) -> None:
        """Forget per-request state (caches). Called before each request."""

    def propose(self, context: torch.Tensor, request: DraftRequest) -> Draft:
        """Propose up to ``request.k`` tokens to follow ``context`` ([L] long, prompt + generated so far)."""


def _empty(context: torch.Tensor, source: str) -> Draft:
    return Draft(tokens=context.new_empty(0), source=source)


class ModelDrafter:
    """Drafts with a small causal LM that shares the target's vocabulary."""

    def __init__(self, model: PreTrainedModel, name: str = "model", vocab_size: int | None = None):
        self.name = name
        self.lm = CachedLM(model, vocab_size)
        self._cached = torch.empty(0, dtype=torch.long, device=self.lm.device)  # ids the cache holds

    def reset(self) -> None:
        self.lm.reset()
        self._cached = self._cached[:0]

    def _catch_up(self, context: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Roll the cache back to what it shares with ``context``, feed the rest in one forward.

        Returns the logits [V] for the token after ``context`` and how many tokens were fed.
        """
        n = min(self._cached.numel(), context.numel() - 1)  # always feed at least the last token
        mismatch = (self._cached[:n] != context[:n]).nonzero()
        common = int(mismatch[0]) if mismatch.numel() else n
        self.lm.rollback(self.lm.seen - common)
        fed = context[common:]
        logits = self.lm.forward(fed, last_only=True)[-1]
        self._cached = context
        return logits, fed.numel()

    def propose(self, context: torch.Tensor, request: DraftRequest) -> Draft:
        if request.k <= 0:
            return _empty(context, self.name)
        logits, catchup = self._catch_up(context)
        tokens, rows, probs, siblings = [], [], [], []
        greedy = not request.sampling.do_sample
        for i in range(request.k):
            if i > 0:  # feed the token just drafted
                logits = self.lm.forward(tokens[-1].view(1), last_only=True)[-1]
                self._cached = torch.cat([self._cached, tokens[-1].view(1)])
            q = distribution(logits[None], request.sampling)[0]
            if greedy:
                top = q.topk(2)
                token, p = top.indices[0], top.values[0].item()
                if p < request.sibling_below:
                    siblings.append((i, int(top.indices[1])))
            else:
                token = sample(q[None], request.generator)[0]
                p = q[token].item()
            tokens.append(token)
            rows.append(q)
            probs.append(p)
            if p < request.threshold:
                break
        return Draft(
            tokens=torch.stack(tokens),
            q_draft=torch.stack(rows) if request.sampling.do_sample else None,
            probs=tuple(probs),
            source=self.name,
            catchup=catchup,
            siblings=tuple(siblings),
        )


class PromptLookupDrafter:
    """Model-free drafting by n-gram match over the context (prompt lookup decoding).

    For n from ``max_ngram`` down to ``min_ngram``, find the first earlier occurrence of the context's last n tokens
    and propose the tokens that followed it. Deterministic, so its ``q_draft`` is a point mass. The n-gram index
    is kept incrementally across the rounds of a request (``reset`` starts a new one).
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, name: str = "lookup"):
        self.name = name
        self.index = LookupIndex(max_ngram, min_ngram)

    def reset(self) -> None:
        self.index.reset()

    def _index(self, context: torch.Tensor) -> LookupIndex:
        """The index, brought up to ``context`` (rebuilt if ``context`` does not continue what it holds)."""
        index = self.index
        if context.numel() < len(index.tokens) or (index.tokens and int(context[len(index.tokens) - 1]) != index.tokens[-1]):
            index.reset()  # not a continuation of the indexed context
        index.extend(context[len(index.tokens) :].tolist())
        return index

    def match(self, context: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
        """The proposal (up to k tokens) and the n of the n-gram that produced it (0 if none)."""
        tokens, n = self._index(context).propose(k)
        return torch.tensor(tokens, dtype=torch.long, device=context.device), n

    def extend(self, context: torch.Tensor, draft: torch.Tensor, k: int) -> torch.Tensor:
        """Up to k tokens continuing ``context`` + ``draft`` (another drafter's proposal), as lookup would propose
        them were the draft accepted: where a draft starts to reproduce a span of the prompt, the rest comes free."""
        tokens = self._index(context).propose_after(draft.tolist(), k)
        return torch.tensor(tokens, dtype=torch.long, device=context.device)

    def propose(self, context: torch.Tensor, request: DraftRequest) -> Draft:
        if request.k <= 0:
            return _empty(context, self.name)
        tokens, _ = self.match(context, request.k)
        return Draft(tokens=tokens, source=self.name)


class FallbackDrafter:
    """Asks its members in order and returns the first non-empty proposal."""

    def __init__(self, *members: Drafter, name: str | None = None):
        if not members:
            raise ValueError("FallbackDrafter needs at least one member")
        self.members = members
        self.name = name or "+".join(m.name for m in members)

    def reset(self) -> None:
        for member in self.members:
            member.reset()

    def propose(self, context: torch.Tensor, request: DraftRequest) -> Draft:
        draft = _empty(context, self.name)
        for member in self.members:
            draft = member.propose(context, request)
            if len(draft):
                return draft
        return draft
