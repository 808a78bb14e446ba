"""The speculative loop: decide, draft, verify, accept, roll back, emit.

Invariant between rounds: the target's cache holds every context token except the last one (the *pending*
token), so every round feeds ``[pending, d_1..d_n]`` and a plain step is the same round with n = 0.

Before each round the engine asks a ``decide`` callback for a ``Decision`` (drafter, k, confidence threshold):
that is the hook the adaptive policy uses; the engine knows nothing about policies, statistics or Redis. After
each round it hands a ``RoundRecord`` to ``on_round``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import PreTrainedModel

from ..records import NO_DRAFTER, RoundRecord
from .accept import accept_greedy, accept_sampled
from .drafters import Draft, Drafter, DraftRequest
from .kv import CachedLM, Tree
from .sampling import GREEDY, SamplingParams, distribution, sample
from .stopping import StopRule


@dataclass(frozen=True)
class Decision:
    """What to do in the next round. ``k == 0`` is a plain target step (no drafter runs)."""

    drafter: str = NO_DRAFTER
    k: int = 0
    threshold: float = 0.0  # a model drafter stops after a token it gives probability below this
    # after the drafter's tokens, the engine's prompt-lookup drafter (named "lookup") may append up to this many
    # more that continue them: free to propose, paid only in verify width; the budget still caps the round
    extend: int = 0
    # greedy only: a model drafter's second choice is verified beside each drafted token it gave probability below
    # this (a depth-1 token tree, one forward); when the target picks it, the round keeps it and one token more
    sibling_below: float = 0.0
    # a round that would feed the target only the pending token feeds a guess after it (prompt lookup's next token,
    # else the pending token again), verified as a deterministic proposal: on CPUs where a 1-token forward is no
    # cheaper than a 2-token one (bf16 on this project's reference machine: slower), a plain step costs less and
    # sometimes emits two tokens. The output is unchanged (greedy: identical; sampling: the same distribution).
    pad_plain: bool = False
    # greedy only: another drafter (a cheap one, e.g. a draft head) proposes its first token for this position too,
    # unverified, and the record says whether the target emitted it (``shadow_hit``): a policy measures a drafter's
    # first-position acceptance for the price of one of its steps instead of rounds spent drafting with it
    shadow: str = ""


PLAIN_STEP = Decision()
PADDED_PLAIN_STEP = Decision(pad_plain=True)
EXTENDER = "lookup"  # the drafter a decision's ``extend`` asks


@dataclass(frozen=True)
class RoundState:
    """What ``decide`` sees before a round."""

    generated: int  # tokens emitted so far in this request
    remaining: int  # tokens still allowed by max_new_tokens
    context: torch.Tensor  # [L] prompt + generated; the last one is the pending token
    last: RoundRecord | None  # the previous round, None before the first
    # The same L tokens as Python ints, kept by the engine: a policy that reads tokens (e.g. its own n-gram index)
    # need not touch the tensor, whose every access costs tens of microseconds once a forward has flushed the CPU
    # caches. None when a caller builds a state without it.
    tokens: list[int] | None = None


Decide = Callable[[RoundState], Decision]
OnRound = Callable[[RoundRecord], None]
OnPrefill = Callable[[int, float], None]  # (prompt tokens, seconds)


def fixed(drafter: str, k: int, threshold: float = 0.0, extend: int = 0, sibling_below: float = 0.0,
          pad_plain: bool = False) -> Decide:  # fmt: skip
    """A ``decide`` that always returns the same decision."""
    decision = Decision(drafter, k, threshold, extend, sibling_below, pad_plain)
    return lambda state: decision


@dataclass
class GenerationResult:
    sequences: torch.Tensor  # [1, prompt_len + new_tokens]
    prompt_len: int
    records: list[RoundRecord]
    prefill_s: float  # seconds, target prefill of the prompt (and the first token)
    total_s: float  # seconds, whole call
    stop_reason: str  # "eos" | "stop_string" | "max_new_tokens"

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.sequences[0, self.prompt_len :]

    @property
    def num_new_tokens(self) -> int:
        return self.sequences.shape[1] - self.prompt_len

    @property
    def target_forwards(self) -> int:
        """Target forwards: one prefill plus one per round."""
        return 1 + len(self.records)

    @property
    def proposed(self) -> int:
        return sum(r.proposed for r in self.records)

    @property
    def accepted(self) -> int:
        return sum(r.accepted for r in self.records)

    @property
    def alpha(self) -> float:
        """Token-level acceptance rate over proposed tokens (nan when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def mean_accepted(self) -> float:
        """Mean accepted proposals per speculative round (bonus/recovered token excluded)."""
        rounds = sum(1 for r in self.records if r.speculative)
        return self.accepted / rounds if rounds else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.num_new_tokens / self.total_s

    @property
    def forward_s(self) -> float:
        """Seconds inside model forwards (prefill, drafting, verification)."""
        return self.prefill_s + sum(r.draft_s + r.verify_s for r in self.records)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SpeculativeEngine:
    """Speculative decoding for one target model and any number of named drafters.

    Batch size 1: per-request state lives in ``generate``'s locals and the models' caches, which are reset at the
    start of each call, so nothing leaks from one request into the next.
    """

    def __init__(self, target: PreTrainedModel, drafters: Iterable[Drafter] = (), vocab_size: int | None = None):
        self.target = CachedLM(target, vocab_size)
        self.drafters: dict[str, Drafter] = {}
        for drafter in drafters:
            self.add_drafter(drafter)

    def add_drafter(self, drafter: Drafter) -> None:
        if drafter.name == NO_DRAFTER or drafter.name in self.drafters:
            raise ValueError(f"drafter name {drafter.name!r} is reserved or already used")
        self.drafters[drafter.name] = drafter

    @property
    def device(self) -> torch.device:
        return self.target.device

    def generate(
        self,
        input_ids: torch.Tensor,
        decide: Decide = lambda state: PLAIN_STEP,
        *,
        stop: StopRule,
        sampling: SamplingParams = GREEDY,
        generator: torch.Generator | None = None,
        streamer: Any = None,
        on_round: OnRound | None = None,
        on_prefill: OnPrefill | None = None,
    ) -> GenerationResult:
        """Generate after ``input_ids`` ([L] or [1, L]); ``decide`` is asked before every round, ``on_round`` told
        after it, ``on_prefill`` told the prompt's length and prefill time before the first round."""
        start = time.perf_counter()
        _check_generator(generator, self.device)
        prompt = _as_prompt(input_ids, self.device)
        self.target.reset()
        for drafter in self.drafters.values():
            drafter.reset()
        if streamer is not None:
            streamer.put(prompt[None].cpu())

        # Prefill: the cache takes the whole prompt; the first token comes from its last position.
        logits = self.target.forward(prompt, last_only=True)
        first = _choose(logits, sampling, generator)
        _sync(self.device)
        prefill_s = time.perf_counter() - start
        if on_prefill is not None:
            on_prefill(prompt.numel(), prefill_s)

        generated: list[int] = []
        records: list[RoundRecord] = []
        keep, reason = stop.cut(generated, [int(first)])
        context = torch.cat([prompt, first.view(1)])
        generated.append(int(first))
        tokens = prompt.tolist() + [int(first)]  # context as Python ints, for the policy
        if streamer is not None:
            streamer.put(first.view(1).cpu())

        while reason is None:
            record, new = self._round(context, tokens, generated, stop, decide, sampling, generator, records)
            new_ids = new.tolist()
            keep, reason = stop.cut(generated, new_ids)
            new, new_ids = new[:keep], new_ids[:keep]
            record = _trimmed(record, keep)
            records.append(record)
            if on_round is not None:
                on_round(record)
            context = torch.cat([context, new])
            generated.extend(new_ids)
            tokens.extend(new_ids)
            if streamer is not None:
                streamer.put(new.cpu())

        if streamer is not None:
            streamer.end()
        return GenerationResult(
            sequences=context[None],
            prompt_len=prompt.numel(),
            records=records,
            prefill_s=prefill_s,
            total_s=time.perf_counter() - start,
            stop_reason=reason,
        )

    def _round(
        self,
        context: torch.Tensor,
        tokens: list[int],
        generated: list[int],
        stop: StopRule,
        decide: Decide,
        sampling: SamplingParams,
        generator: torch.Generator | None,
        records: list[RoundRecord],
    ) -> tuple[RoundRecord, torch.Tensor]:
        remaining = stop.max_new_tokens - len(generated)
        # 1. decide: which drafter, how many tokens
        decision = decide(RoundState(len(generated), remaining, context, records[-1] if records else None, tokens))
        k = self._check(decision)
        k_run = min(k, remaining - 1)  # a round emits up to k + 1 tokens; drafting past the budget is waste
        drafter_name = decision.drafter if k_run > 0 else NO_DRAFTER

        # 2. draft
        t0 = time.perf_counter()
        if k_run > 0:
            request = DraftRequest(k_run, sampling, decision.threshold, generator, decision.sibling_below)
            draft = self.drafters[decision.drafter].propose(context, request)
            assert len(draft) <= k_run, f"drafter {decision.drafter!r} proposed {len(draft)} > k={k_run} tokens"
        else:
            draft = Draft(tokens=context[:0], source=NO_DRAFTER)
        shadow = self._shadow(decision.shadow, context, sampling)
        proposals, q_draft, extension = self._extended(context, draft, decision.extend, remaining - 1 - len(draft))
        guessed = decision.pad_plain and not proposals.numel()
        if guessed:
            proposals, q_draft = self._guess(context, q_draft)
        _sync(self.device)
        t1 = time.perf_counter()

        # 3. verify: one target forward over the pending token and the proposals (and the siblings, as a tree)
        siblings = draft.siblings if not sampling.do_sample else ()
        fed = torch.cat([context[-1:], proposals])
        tree = None
        if siblings:
            fed = torch.cat([fed, torch.tensor([t for _, t in siblings], device=fed.device)])
            tree = Tree(list(range(-1, proposals.numel())) + [i for i, _ in siblings])
        start = self.target.seen
        logits = self.target.forward(fed, tree=tree)  # [fed, V]
        _sync(self.device)
        t2 = time.perf_counter()

        # 4. accept a prefix of the proposals, then add the target's own token
        n = proposals.numel()
        if sampling.do_sample:
            accepted, added = accept_sampled(proposals, q_draft, logits, sampling, generator)
        else:
            accepted, added = accept_greedy(proposals, logits[: n + 1])

        # 5. a sibling the target chose replaces the first rejected proposal; roll the target back to the path kept
        rescued = _rescue(siblings, accepted, int(added)) if siblings else None
        if rescued is None:
            new = torch.cat([proposals[:accepted], added.view(1)])
            self.target.rollback(fed.numel() - accepted - 1)
        else:
            row = n + 1 + rescued
            new = torch.cat([proposals[:accepted], added.view(1), logits[row].argmax().view(1)])
            self.target.keep(start, list(range(accepted + 1)) + [row])

        own = min(accepted, len(draft))  # the drafter's acceptance; the extension's and the guess's counted apart
        record = RoundRecord(
            drafter=(draft.source or drafter_name) if len(draft) else drafter_name,
            k=k_run,
            proposed=len(draft),
            accepted=own,
            emitted=new.numel(),
            context_len=context.numel(),
            draft_s=t1 - t0,
            verify_s=t2 - t1,
            draft_probs=draft.probs,
            catchup=draft.catchup,
            k_asked=k if k != k_run else None,
            extension=extension,
            extension_accepted=accepted - own if not guessed else 0,
            siblings=len(siblings),
            sibling_accepted=int(rescued is not None),
            guessed=int(guessed),
            guess_accepted=accepted if guessed else 0,
            shadow=decision.shadow if shadow is not None else "",
            shadow_hit=int(shadow is not None and shadow == int(new[0])),
        )
        return record, new

    def _shadow(self, name: str, context: torch.Tensor, sampling: SamplingParams) -> int | None:
        """The shadow drafter's greedy first token here (None: no shadow asked, sampling, or it proposed nothing).
        Its state is left as after any round it drafted in (a head rolls back its predicted position next time)."""
        if not name or sampling.do_sample:
            return None
        draft = self.drafters[name].propose(context, DraftRequest(1))
        return int(draft.tokens[0]) if len(draft) else None

    def _extended(self, context: torch.Tensor, draft: Draft, extend: int, room: int):
        """(tokens to verify, their draft distributions or None, extension length): the draft, then what prompt
        lookup proposes to follow it. Lookup is deterministic, so in sampling its rows are point masses (the
        acceptance rule stays exact: each proposal's distribution given the ones before it)."""
        n = min(extend, room)
        if n <= 0 or not len(draft):
            return draft.tokens, draft.q_draft, 0
        extension = self.drafters[EXTENDER].extend(context, draft.tokens, n)
        if not extension.numel():
            return draft.tokens, draft.q_draft, 0
        q_draft = draft.q_draft
        if q_draft is not None:
            q_draft = torch.cat([q_draft, _point_masses(extension, q_draft)])
        return torch.cat([draft.tokens, extension]), q_draft, extension.numel()

    def _guess(self, context: torch.Tensor, q_draft: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A padded plain step's one proposal: prompt lookup's next token where the engine has a lookup drafter
        with a match, else the pending token again; its draft row a point mass (rows of a sampled drafter's shape
        when the drafter gave an empty sampled draft, else None: deterministic)."""
        lookup = self.drafters.get(EXTENDER)
        guess = lookup.match(context, 1)[0] if hasattr(lookup, "match") else context[:0]
        if not guess.numel():
            guess = context[-1:]
        return guess, (_point_masses(guess, q_draft) if q_draft is not None else None)

    def _check(self, decision: Decision) -> int:
        k, extend = decision.k, decision.extend
        for field_name, value in (("k", k), ("extend", extend)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"decision {field_name} must be an int >= 0, got {value!r}")
        for role, name in (("drafter", decision.drafter if k > 0 else ""), ("shadow drafter", decision.shadow)):
            if name and name not in self.drafters:
                known = ", ".join(sorted(self.drafters)) or "none"
                raise ValueError(f"decision names unknown {role} {name!r} (known: {known})")
        if extend and not hasattr(self.drafters.get(EXTENDER), "extend"):
            raise ValueError(f"decision asks for a lookup extension but the engine has no {EXTENDER!r} drafter "
                             "with extend()")  # fmt: skip
        below = decision.sibling_below
        if isinstance(below, bool) or not isinstance(below, (int, float)) or not 0.0 <= below <= 1.0:
            raise ValueError(f"decision sibling_below must be a probability in [0, 1], got {below!r}")
        return k


def _point_masses(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Draft rows [n, V] (``like``'s width, dtype, device) of a deterministic proposal: all mass on each token."""
    rows = torch.zeros(tokens.numel(), like.shape[1], dtype=like.dtype, device=like.device)
    return rows.scatter_(1, tokens.view(-1, 1), 1.0)


def _rescue(siblings: tuple[tuple[int, int], ...], accepted: int, added: int) -> int | None:
    """Index of the sibling standing at the first rejected proposal with the target's token there, if any."""
    for index, (position, token) in enumerate(siblings):
        if position == accepted and token == added:
            return index
    return None


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    """Sampling draws on the models' device, which needs a generator of that device type (fail before any work)."""
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"the generator is on {generator.device.type} but the models on {device.type}: "
                         f"create it with torch.Generator(device={str(device)!r})")  # fmt: skip


def _as_prompt(input_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise ValueError(f"batch size 1 only, got input_ids of shape {tuple(ids.shape)}")
        ids = ids[0]
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty [L] or [1, L] tensor, got shape {tuple(ids.shape)}")
    return ids.to(device=device, dtype=torch.long)


def _choose(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """One token from logits [1, V] -> []."""
    if sampling.do_sample:
        return sample(distribution(logits, sampling), generator)[0]
    return logits[0].argmax()


def _trimmed(record: RoundRecord, keep: int) -> RoundRecord:
    return record if keep == record.emitted else replace(record, emitted=keep)

