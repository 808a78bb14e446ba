"""Exact replay of any policy on greedy traces, priced by a cost model.

``replay`` mirrors ``SpeculativeEngine.generate`` round by round: the policy's session gets the same
``RoundState`` (the context is the real token ids) and the same ``RoundRecord``s it would get from the engine, the
draft budget is capped by the tokens left, the model drafter's cache catch-up is tracked as the engine's
``ModelDrafter`` does it, a ``hybrid`` drafter uses lookup when it proposes, else the model draft, and siblings
are priced where the trace has the draft's second choices. Only time is predicted (from the cost model); tokens,
acceptance and decisions are exact (see ``format`` for the limits).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ..engine import NO_DRAFTER, RoundState
from ..policy.base import Policy, RequestInfo, RequestReport
from ..policy.cost import CostModel
from ..records import RoundRecord
from .format import DraftColumns, RequestTrace

LOOKUP = "lookup"
HYBRID = "hybrid"


@dataclass
class ReplayResult:
    request_id: str
    request_class: str
    tokens: int
    prefill_s: float
    decode_s: float
    records: list[RoundRecord]
    report: RequestReport | None = None

    @property
    def seconds(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def accepted(self) -> int:
        return sum(r.accepted for r in self.records)

    @property
    def proposed(self) -> int:
        return sum(r.proposed for r in self.records)


@dataclass
class SimulationResult:
    policy: str
    results: list[ReplayResult]
    by_class: dict[str, list[ReplayResult]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_class = defaultdict(list)
        for r in self.results:
            self.by_class[r.request_class].append(r)

    def throughput(self, request_class: str | None = None, decode_only: bool = False) -> float:
        """Tokens per second over all requests (of one class): total tokens / total time."""
        rs = self.results if request_class is None else self.by_class[request_class]
        seconds = sum(r.decode_s if decode_only else r.seconds for r in rs)
        return sum(r.tokens for r in rs) / seconds if seconds else float("nan")

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.results)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results)


class _DraftState:
    """Which true-context tokens a model drafter's cache holds (mirrors ``ModelDrafter._catch_up``)."""

    def __init__(self) -> None:
        self.true_len = 0  # cached tokens that are on the target's path

    def catchup(self, context_len: int, own_features: bool = False) -> int:
        if own_features:  # a head feeds the pairs (feature i, token i + 1) it has not seen, i < context_len - 1
            return context_len - 1 - min(max(self.true_len - 1, 0), context_len - 2)
        return context_len - min(self.true_len, context_len - 1)

    def after_round(self, context_len: int, proposed: int, match: int, own_features: bool = False) -> None:
        # the drafter fed its first proposed - 1 tokens; those up to the first wrong one are on the true path; a head
        # (``own_features``) drops every position it computed from its own predictions (``HeadDrafter.propose``)
        self.true_len = context_len if own_features else context_len + min(proposed - 1, match)


def _columns(trace: RequestTrace, name: str) -> DraftColumns:
    if name not in trace.drafts:
        raise ValueError(f"trace {trace.request_id} has no columns for drafter {name!r}")
    return trace.drafts[name]


def _priced_steps(trace: RequestTrace, name: str, i: int, proposed: int, context_len: int, state: _DraftState,
                  cost: CostModel) -> tuple[float, int]:  # fmt: skip
    """(seconds, catch-up) of drafter ``name``'s ``proposed`` steps at position i (a round's draft, or a shadow
    token); its cache state moves on as the engine's drafter would."""
    columns = _columns(trace, name)
    own = columns.chain is not None  # a head: it drops the positions it computed from its own predictions
    catchup = state.catchup(context_len, own)
    state.after_round(context_len, proposed, columns.match[i], own)
    return cost.draft_s(proposed, context_len, catchup, name), catchup


def _draft_proposal(trace: RequestTrace, name: str, i: int, k: int, threshold: float) -> tuple[int, int, list[float]]:
    """(proposed, matching, probabilities) of model drafter ``name`` at position i with budget k."""
    d = _columns(trace, name)
    n = len(trace.target)
    m = d.match[i]
    probs: list[float] = []
    if d.chain is not None:  # a drafter over its own predictions: its recorded chain, unknown (NaN) past it
        chain = d.chain[i]
        for j in range(k):
            probs.append(chain[j] if j < len(chain) else math.nan)
            if probs[-1] < threshold:
                break
        return len(probs), min(m, len(probs)), probs
    branch = None
    for j in range(k):
        if j <= m:
            # on the true path (j < m), or the draft's first wrong token (j == m); unknown past the output's end
            prob = d.p[i + j] if i + j < n else math.nan
        else:
            if branch is None:
                branch = d.diverge.get(i + m, [])
            b = j - m - 1
            # Past the recorded branch the probability is unknown: the branch stopped below theta_min, so any
            # threshold >= theta_min has stopped already; a lower one is taken to keep going (NaN in the record).
            prob = branch[b] if b < len(branch) else math.nan
        probs.append(prob)
        if prob < threshold:
            break
    return len(probs), min(m, len(probs)), probs


def _extension(trace: RequestTrace, i: int, proposed: int, matching: int, room: int) -> tuple[int, int]:
    """(length, matching) of prompt lookup's extension after a proposal of ``proposed`` tokens at position i.

    Exact when every proposal matched (the extension then continues the target's own text, which the trace's
    lookup columns describe at i + proposed). After a wrong proposal the extension is rejected whatever it holds;
    its length, which only prices the verify forward, is taken as the true path's at i + proposed."""
    j = i + proposed
    if room <= 0 or proposed == 0 or j >= len(trace.target):
        return 0, 0
    length = min(trace.lookup.len[j], room)
    return length, (min(trace.lookup.match[j], length) if matching == proposed else 0)


def _siblings(trace: RequestTrace, name: str, i: int, matching: int, probs: list[float], below: float) -> tuple[int, int]:
    """(verified, accepted) siblings of a model proposal at position i: its second choices where its probability
    was below ``below``. The first wrong token's sibling is accepted when it is the target's token (exact, from the
    trace's ``second`` column); a trace without that column prices no siblings."""
    columns = trace.drafts[name]
    second = columns.second
    if not below or second is None:
        return 0, 0
    uncertain = [j for j, p in enumerate(probs) if p < below]  # NaN (unknown) counts as confident
    # a chain drafter's second choice at its first wrong token from i; a teacher-forced one's at that position
    choice = second[i] if columns.chain is not None else second[min(i + matching, len(second) - 1)]
    rescued = matching < len(probs) and matching in uncertain and choice == trace.target[i + matching]
    return len(uncertain), int(rescued)


def _guess_right(trace: RequestTrace, i: int) -> int:
    """Whether a padded plain step's guess at position i is the target's token (exact): prompt lookup's next token
    where lookup has a proposal (the trace's lookup columns), else the pending token again."""
    if trace.lookup.len[i] > 0:
        return int(trace.lookup.match[i] > 0)
    return int(trace.target[i] == trace.target[i - 1])


def replay(trace: RequestTrace, policy: Policy, cost: CostModel, max_new_tokens: int | None = None,
           request_class: str | None = None) -> ReplayResult:  # fmt: skip
    """Replay one request under ``policy``; ``request_class`` overrides the trace's (None: use the trace's)."""
    n = len(trace.target) if max_new_tokens is None else min(max_new_tokens, len(trace.target))
    cls = trace.request_class if request_class is None else request_class
    full_ids = trace.prompt_ids + trace.target
    full = torch.tensor(full_ids)
    prompt_len = trace.prompt_len
    session = policy.start(RequestInfo(trace.prompt, full[:prompt_len], cls, replayed=True))
    if (on_prefill := getattr(session, "on_prefill", None)) is not None:  # as the engine tells it (decode time
        on_prefill(prompt_len, cost.prefill_s(prompt_len))  # is what a replay charges; the prefill is not in it)
    budget = max_new_tokens or trace.max_new_tokens
    draft_states: dict[str, _DraftState] = defaultdict(_DraftState)
    records: list[RoundRecord] = []
    decode_s = 0.0
    i = 1  # the prefill produced position 0
    while i < n:
        context_len = prompt_len + i
        remaining = budget - i
        state = RoundState(i, remaining, full[:context_len], records[-1] if records else None, full_ids[:context_len])
        decision = session.decide(state)
        k_run = min(decision.k, remaining - 1)
        drafter = decision.drafter if k_run > 0 else NO_DRAFTER
        proposed = matching = catchup = siblings = sibling_accepted = 0
        probs: list[float] = []
        draft_s = 0.0
        source = drafter
        if drafter in (LOOKUP, HYBRID):
            proposed = min(trace.lookup.len[i], k_run)
            matching = min(trace.lookup.match[i], proposed)
            draft_s = cost.lookup_s
            source = LOOKUP
        if drafter not in (NO_DRAFTER, LOOKUP) and proposed == 0:
            name = "model" if drafter == HYBRID else drafter
            proposed, matching, probs = _draft_proposal(trace, name, i, k_run, decision.threshold)
            seconds, catchup = _priced_steps(trace, name, i, proposed, context_len, draft_states[name], cost)
            draft_s += seconds
            siblings, sibling_accepted = _siblings(trace, name, i, matching, probs, decision.sibling_below)
            source = name
        elif drafter == HYBRID:
            source = LOOKUP if proposed else drafter
        room = min(decision.extend, remaining - 1 - proposed)
        extension, extension_matching = _extension(trace, i, proposed, matching, room)
        if extension:
            draft_s += cost.lookup_s
        shadow_hit = 0
        if decision.shadow:  # one greedy step of the shadow drafter at this position, unverified
            name = decision.shadow
            draft_s += _priced_steps(trace, name, i, 1, context_len, draft_states[name], cost)[0]
            shadow_hit = int(trace.drafts[name].top[i] == trace.target[i])
        guessed = guess_right = 0
        if decision.pad_plain and proposed + extension == 0:
            guessed, guess_right = 1, _guess_right(trace, i)
        verify_s = cost.verify_s(proposed + extension + siblings + guessed + 1, context_len)
        emitted = min(matching + extension_matching + sibling_accepted + guess_right + 1, n - i)
        record = RoundRecord(
            drafter=source if proposed else drafter,
            k=k_run,
            proposed=proposed,
            accepted=matching,
            emitted=emitted,
            context_len=context_len,
            draft_s=draft_s,
            verify_s=verify_s,
            draft_probs=tuple(probs),
            catchup=catchup,
            k_asked=decision.k if decision.k != k_run else None,
            extension=extension,
            extension_accepted=extension_matching,
            siblings=siblings,
            sibling_accepted=sibling_accepted,
            guessed=guessed,
            guess_accepted=guess_right,
            shadow=decision.shadow,
            shadow_hit=shadow_hit,
        )
        records.append(record)
        session.on_round(record)
        decode_s += draft_s + verify_s
        i += emitted
    return ReplayResult(trace.request_id, cls, n, cost.prefill_s(prompt_len), decode_s, records, session.finish())


def simulate(traces: Iterable[RequestTrace], policy: Policy, cost: CostModel,
             max_new_tokens: int | None = None) -> SimulationResult:  # fmt: skip
    """Replay every trace, in order, under one policy (its shared state carries from request to request)."""
    return SimulationResult(policy.name, [replay(t, policy, cost, max_new_tokens) for t in traces])


def per_round_oracle(trace: RequestTrace, cost: CostModel, max_k: int = 16, drafter: str = "model") -> float:
    """Least decode time for the trace when every round's drafter and k are chosen knowing the outcome.

    A shortest path over positions; the model drafter's catch-up is taken as one token (slightly optimistic).
    """
    n = len(trace.target)
    d = trace.drafts[drafter]
    best = [math.inf] * (n + 1)
    best[n] = 0.0
    for i in range(n - 1, 0, -1):
        ctx = trace.prompt_len + i
        options = [cost.verify_s(1, ctx) + best[i + 1]]
        for k in range(1, min(max_k, n - i) + 1):
            step = min(d.match[i], k) + 1
            options.append(cost.draft_s(k, ctx) + cost.verify_s(k + 1, ctx) + best[min(i + step, n)])
        for k in range(1, min(trace.lookup.len[i], max_k, n - i) + 1):
            step = min(trace.lookup.match[i], k) + 1
            options.append(cost.lookup_s + cost.verify_s(k + 1, ctx) + best[min(i + step, n)])
        best[i] = min(options)
    return best[1]


def speedups(results: Sequence[SimulationResult], baseline: SimulationResult) -> dict[str, float]:
    return {r.policy: r.throughput() / baseline.throughput() for r in results}
