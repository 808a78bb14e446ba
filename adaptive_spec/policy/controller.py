"""The adaptive controller: before every round, the drafting choice with the highest expected tokens per second.

Per round it compares, at the current context length (costs from the calibrated ``CostModel``):

- a plain step: 1 token per target forward;
- each model-type drafter (the generic draft, a custom draft, a draft head), drafting until its own confidence
  falls below the class's threshold, at most ``max_k`` tokens: (accepted per round + 1) / (draft time + verify
  time), from this request's rounds with that drafter blended with the class's (the class counts as at most
  ``prior_weight`` rounds, so a request unlike its class moves away fast);
- prompt lookup, when it has a proposal here: per-position acceptance for this kind of proposal (the n-gram size
  it came from, or "streak": the previous lookup round was accepted in full, as inside a copied span), blended the
  same way, and the k up to the proposal's length that maximises the expected rate.

Model-type drafters are switched off and on with hysteresis (no flapping near break-even); while all are off, one
is probed (in turn) with a short round every ``probe_every`` plain steps, so neither a request nor a class gets
stuck off. Class statistics
come from the ``AlphaEstimator`` (memory or Redis) and are read once per request; everything per round is
arithmetic on cached numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..engine import NO_DRAFTER, Decision, RoundState
from ..engine.lookup import LookupIndex
from ..logs import get_logger
from ..records import RoundRecord
from ..stats import AlphaEstimator, Estimate
from .base import RequestInfo, RequestReport
from .cost import CostModel

log = get_logger("adaptive_spec.policy")

MODEL = "model"
LOOKUP = "lookup"
STREAK = "lookup.streak"


def lookup_key(ngram: int, streak: bool) -> str:
    """The statistics key of a lookup proposal: its kind predicts its acceptance."""
    return STREAK if streak else f"lookup.n{ngram}"


class DraftSettings(BaseModel):
    """One model-type drafter's knobs in one class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.6, ge=0.0, le=1.0, description="drafting stops after a token below this")
    max_k: int = Field(16, ge=1, le=64, description="at most this many tokens per round")
    enabled: bool = True
    # Cold start for this class, measured on its profiled traffic (train-policy): a class whose draft is accepted
    # well starts with the draft on instead of waiting for probes to overturn a generic prior. Only for the drafter
    # it was measured for (the ``model`` entry's: the drafter named "model").
    prior_accepted: float | None = Field(None, ge=0, description="accepted tokens per round; None: controller's prior")
    prior_proposed: float | None = Field(None, ge=1, description="proposed tokens per round; None: controller's prior")

    @model_validator(mode="after")
    def _priors_pair(self) -> DraftSettings:
        if (self.prior_accepted is None) != (self.prior_proposed is None):
            raise ValueError("prior_accepted and prior_proposed are given together or not at all")
        if self.prior_accepted is not None and self.prior_accepted > self.prior_proposed:
            raise ValueError(f"prior_accepted {self.prior_accepted} > prior_proposed {self.prior_proposed}")
        return self


class ClassSettings(BaseModel):
    """Knobs that differ by request class (tuned by ``train-policy``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: DraftSettings = DraftSettings()  # every model-type drafter (generic draft, custom draft, head)...
    drafters: dict[str, DraftSettings] = Field(default_factory=dict)  # ...unless it has its own entry here
    lookup_max_k: int = Field(16, ge=1, le=64)
    lookup_min_ngram: int = Field(1, ge=1, le=8, description="ignore lookup proposals from shorter n-grams")
    use_lookup: bool = True

    def for_drafter(self, name: str) -> DraftSettings:
        return self.drafters.get(name, self.model)


class ControllerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: ClassSettings = ClassSettings()
    classes: dict[str, ClassSettings] = Field(default_factory=dict)
    prior_weight: float = Field(16.0, gt=0, description="class estimate's weight, in rounds, against the request")
    prior_model_accepted: float = Field(2.0, ge=0, description="cold start: accepted tokens per model round")
    prior_model_proposed: float = Field(4.0, ge=1, description="cold start: proposed tokens per model round")
    prior_lookup_accept: float = Field(0.5, gt=0, lt=1, description="cold start: lookup acceptance per position")
    hysteresis: float = Field(0.05, ge=0, lt=1, description="relative margin to switch the model draft on/off")
    probe_every: int = Field(24, ge=1, description="plain steps before the switched-off model draft is re-tried")
    probe_k: int = Field(3, ge=1)
    refresh_tokens: int = Field(128, ge=1, description="re-price rounds after the context grows this much")
    catchup_amortize: float = Field(4.0, ge=1, description="model rounds a long draft catch-up is spread over")

    def for_class(self, request_class: str | None) -> ClassSettings:
        return self.classes.get(request_class or "", self.default)


@dataclasses.dataclass
class _RoundCosts:
    """Round costs at one context length, tabulated so a decision is a few lookups (no pydantic access per round)."""

    context: int
    verify: list[float]  # [n] seconds for a target forward over n tokens (index 0 unused)
    draft_step: dict[str, float]  # per model-type drafter: one single-token step
    lookup: float
    cost: CostModel
    first: dict[tuple[str, int], float]  # (drafter, catch-up tokens) -> the round's first draft forward

    @classmethod
    def at(cls, cost: CostModel, context: int, max_k: int) -> _RoundCosts:
        verify = [0.0] + [cost.verify_s(n, context) for n in range(1, max_k + 2)]
        steps = {name: cost.draft_s(1, context, 1, name) for name in cost.drafts}
        first = {(name, 1): step for name, step in steps.items()}  # catching up on 1 token is a plain step
        first.update({(name, 2): cost.draft_s(1, context, 2, name) for name in cost.drafts})
        return cls(context, verify, steps, cost.lookup_s, cost, first)

    def model_round(self, drafter: str, proposed: float, catchup: int, amortize: float) -> float:
        """A model-type round's time; a catch-up beyond 2 tokens is a one-off, spread over ``amortize`` rounds."""
        step = self.draft_step[drafter]
        n = min(max(1, round(proposed)), len(self.verify) - 2)
        first = self.first.get((drafter, catchup))
        if first is None:
            first = self.first[(drafter, catchup)] = self.cost.draft_s(1, self.context, catchup, drafter)
        if catchup > 2:
            first = step + (first - step) / amortize
        return first + (n - 1) * step + self.verify[n + 1]


class AdaptivePolicy:
    """Chooses drafter and k per round from measured costs and (class + request) acceptance."""

    name = "adaptive"

    def __init__(self, cost: CostModel, estimator: AlphaEstimator | None = None, config: ControllerConfig | None = None,
                 classifier=None, model_drafters: Sequence[str] | None = None):  # fmt: skip
        """``model_drafters``: the engine's model-type drafters to choose from (default: all the cost model knows)."""
        self.cost = cost
        self.estimator = estimator or AlphaEstimator(pair_id=cost.pair_id)
        self.config = config or ControllerConfig()
        self.classifier = classifier
        names = list(cost.drafts) if model_drafters is None else list(model_drafters)
        missing = [n for n in names if n not in cost.drafts]
        if missing:
            raise ValueError(f"the cost model has no measurements for drafter(s) {missing}: calibrate them first "
                             "(`adaptive-spec calibrate`, with --head DIR for a draft head)")  # fmt: skip
        self.model_drafters = names

    def classify(self, request: RequestInfo) -> tuple[str, str]:
        """The caller's class wins; else the classifier's; else "default"."""
        from .classifier import resolve_request_class

        request_class, source, _ = resolve_request_class(request.prompt, request.request_class, self.classifier)
        return (str(request_class), source) if request_class is not None else ("default", "fixed")

    def start(self, request: RequestInfo) -> AdaptiveSession:
        request_class, source = self.classify(request)
        return AdaptiveSession(self, request, request_class, source)


class AdaptiveSession:
    """One request's state: its own counts, the class estimates read at its start, each model drafter's on/off."""

    def __init__(self, policy: AdaptivePolicy, request: RequestInfo, request_class: str, class_source: str):
        config = policy.config
        self.policy = policy
        self.config = config
        self.settings = config.for_class(request_class)
        self.request_class = request_class
        self.mode = request.speculation
        self.max_k = request.max_k
        est = policy.estimator
        self.requests = est.new_request()
        self.drafters = [d for d in policy.model_drafters if self.settings.for_drafter(d).enabled]
        # the class's side of every blend is fixed for the request (read once): weighted sums, computed once
        self.model_blend = {d: self._class_side(d, est.estimate(request_class, d)) for d in self.drafters}
        self.lookup_blend: dict[str, tuple[list[float], list[float]]] = {}
        self.lookup = LookupIndex()
        self.costs: _RoundCosts | None = None
        self.on = {d: True for d in self.drafters}
        self.true_len = {d: 0 for d in self.drafters}  # context tokens each drafter's cache holds
        self.plain_since_model = 0
        self.probe_turn = 0
        self.last_lookup_full = False
        self.pending_key = NO_DRAFTER
        self.report = RequestReport(request_class, class_source)
        self.predicted_s = 0.0
        self.plain_equivalent_s = 0.0

    # --- deciding -----------------------------------------------------------------------------------------------

    def decide(self, state: RoundState) -> Decision:
        context_len = len(state.tokens) if state.tokens is not None else state.context.numel()
        if self.costs is None or context_len - self.costs.context >= self.config.refresh_tokens:
            self.costs = _RoundCosts.at(self.policy.cost, context_len, 64)
        decision, key = self._choose(state, context_len)
        self.pending_key = key
        return decision

    def _choose(self, state: RoundState, context_len: int) -> tuple[Decision, str]:
        s, costs = self.settings, self.costs
        plain_rate = 1.0 / costs.verify[1]
        if self.mode == "off":
            return Decision(), NO_DRAFTER
        cap = self.max_k or 64
        best_rate, best = plain_rate, (Decision(), NO_DRAFTER)
        if self.mode == "on":
            best_rate = 0.0  # speculate whenever a drafter is available

        # prompt lookup: what would it propose here, and how is such a proposal accepted?
        if s.use_lookup:
            seen = len(self.lookup.tokens)
            self.lookup.extend(state.tokens[seen:] if state.tokens is not None else state.context[seen:].tolist())
            proposal, ngram = self.lookup.propose(min(s.lookup_max_k, cap))
            if proposal and ngram >= s.lookup_min_ngram:
                key = lookup_key(ngram, self.last_lookup_full)
                k, rate = self._best_lookup_k(key, len(proposal))
                if rate > best_rate:
                    best_rate, best = rate, (Decision(LOOKUP, k), key)

        # model-type drafters, each switched on/off with hysteresis
        for name in self.drafters:
            d = s.for_drafter(name)
            rate = self._model_rate(name, context_len)
            switch = (1 - self.config.hysteresis) if self.on[name] else (1 + self.config.hysteresis)
            self.on[name] = rate > plain_rate * switch or self.mode == "on"
            if self.on[name] and rate > best_rate:
                best_rate, best = rate, (Decision(name, min(d.max_k, cap), d.threshold), name)
        if (best[1] == NO_DRAFTER and self.drafters and not any(self.on.values())
                and self.plain_since_model >= self.config.probe_every):  # fmt: skip
            name = self.drafters[self.probe_turn % len(self.drafters)]  # a bounded probe, drafters in turn
            self.probe_turn += 1
            best = (Decision(name, min(self.config.probe_k, cap), s.for_drafter(name).threshold), name)
        return best

    def _class_side(self, name: str, estimate: Estimate) -> tuple[float, float, float]:
        """(weight x accepted, weight x proposed, weight) per round: the class (at most prior_weight rounds) or the
        prior, to blend with this request's own rounds."""
        if estimate.rounds > 0:
            weight = min(estimate.rounds, self.config.prior_weight)
            accepted, proposed = estimate.accepted_tokens / estimate.rounds, estimate.draft_tokens / estimate.rounds
        else:
            weight = self.config.prior_weight
            accepted, proposed = self.model_prior(name)
        return weight * accepted, weight * proposed, weight

    def _model_rate(self, name: str, context_len: int) -> float:
        class_accepted, class_proposed, weight = self.model_blend[name]
        mine = self.requests.by_drafter.get(name)
        if mine is None:
            accepted, proposed = class_accepted / weight, class_proposed / weight
        else:
            accepted = (class_accepted + mine.accepted_tokens) / (weight + mine.rounds)
            proposed = (class_proposed + mine.draft_tokens) / (weight + mine.rounds)
        catchup = context_len - min(self.true_len[name], context_len - 1)
        return (accepted + 1.0) / self.costs.model_round(name, proposed, catchup, self.config.catchup_amortize)

    def model_prior(self, name: str) -> tuple[float, float]:
        """(accepted, proposed) tokens per round before any data: the class's profiled prior, else the generic one.

        A profiled prior was measured for one drafter: the one of the ``model`` entry belongs to the generic draft
        ("model") and is not lent to other model-type drafters (a head or custom draft with the same knobs)."""
        d = self.settings.drafters.get(name) or (self.settings.model if name == MODEL else None)
        if d is not None and d.prior_accepted is not None:
            return d.prior_accepted, d.prior_proposed
        return self.config.prior_model_accepted, self.config.prior_model_proposed

    def _lookup_class_side(self, key: str) -> tuple[list[float], list[float]]:
        """Per position: (weight x class mean, weight) for this kind of lookup proposal, read once per request."""
        blend = self.lookup_blend.get(key)
        if blend is None:
            estimate = self.policy.estimator.estimate(self.request_class, key)
            sums, weights = [], []
            for j in range(self.requests.max_positions):
                if estimate.has_data and estimate.tried[j] > 0:
                    p = estimate.positions[j]
                    mean, weight = p.mean, min(p.weight, self.config.prior_weight)
                else:
                    mean, weight = self.config.prior_lookup_accept, 2.0
                sums.append(mean * weight)
                weights.append(weight)
            blend = self.lookup_blend[key] = (sums, weights)
        return blend

    def _best_lookup_k(self, key: str, available: int) -> tuple[int, float]:
        """The k up to the proposal's length with the highest expected rate; positions past the counters' reuse
        the last one."""
        sums, weights = self._lookup_class_side(key)
        mine = self.requests.by_drafter.get(key)
        last = len(sums) - 1
        verify, lookup = self.costs.verify, self.costs.lookup
        top = len(verify) - 1
        best_k, best_rate = 1, 0.0
        tokens, survive = 1.0, 1.0
        for k in range(1, available + 1):
            j = min(k - 1, last)
            if mine is None:
                survive *= sums[j] / weights[j]
            else:
                survive *= (sums[j] + mine.accepted[j]) / (weights[j] + mine.tried[j])
            tokens += survive
            rate = tokens / (lookup + verify[min(k + 1, top)])
            if rate > best_rate:
                best_k, best_rate = k, rate
        return best_k, best_rate

    # --- learning -------------------------------------------------------------------------------------------------

    def on_round(self, record: RoundRecord) -> None:
        key = record.drafter
        if record.drafter == LOOKUP:
            key = self.pending_key if self.pending_key.startswith(LOOKUP) else LOOKUP
            self.last_lookup_full = record.proposed > 0 and record.accepted == record.proposed
        elif record.proposed > 0 or record.k > 0:
            self.last_lookup_full = False
        if record.drafter in self.true_len:
            self.plain_since_model = 0
            self.true_len[record.drafter] = record.context_len + min(record.proposed - 1, record.accepted)
        elif record.k == 0:
            self.plain_since_model += 1
        if key != record.drafter:
            record = dataclasses.replace(record, drafter=key)
        self.requests.observe(record)
        self.policy.estimator.observe(self.request_class, record)
        r = self.report
        r.rounds += 1
        r.proposed += record.proposed
        r.accepted += record.accepted
        name = f"{record.drafter}:{record.k}" if record.k else "plain"
        r.decisions[name] = r.decisions.get(name, 0) + 1
        self.predicted_s += record.draft_s + record.verify_s
        self.plain_equivalent_s += record.emitted * (self.costs.verify[1] if self.costs else 0.0)

    def finish(self) -> RequestReport:
        self.policy.estimator.observe_request_end(self.request_class, self.requests)
        r = self.report
        r.extra["estimated_speedup"] = self.plain_equivalent_s / self.predicted_s if self.predicted_s else 1.0
        r.extra["drafters_on_at_end"] = [d for d, on in self.on.items() if on]
        log.info("request_done", request_class=r.request_class, class_source=r.class_source, rounds=r.rounds,
                 alpha=round(r.alpha, 3) if r.proposed else None, decisions=r.decisions,
                 estimated_speedup=round(r.extra["estimated_speedup"], 3))  # fmt: skip
        return r
