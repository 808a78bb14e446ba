"""The adaptive controller: before every round, the drafting choice with the highest expected tokens per second.

Per round it compares, at the current context length (costs from the calibrated ``CostModel``, corrected by the
round times the engine measures once they disagree with it: ``track_costs``, see ``cost_tracking``):

- a plain step: 1 token per target forward. Where the cost model prices a 2-token forward below a 1-token one (bf16
  on this project's reference CPU), the plain step it returns is *padded* (``pad_plain``: the engine verifies a guess
  beside the pending token, which is cheaper and sometimes yields 2 tokens), but it is still priced as the 1-token
  forward: the choice between drafting and not is the one made without padding, and padding only makes the plain
  steps taken cheaper. Pricing them at the 2-token forward lost in replay of the 52 committed traces (1.470 ->
  1.452 over plain decoding; roleplay 1.277 -> 1.226): the cheaper bar turned the draft off in requests where it
  paid, since a class's acceptance estimate runs below what its requests then accept;
- each model-type drafter (the generic draft, a custom draft, a draft head), drafting until its own confidence
  falls below the class's threshold, at most ``max_k`` tokens: (accepted per round + 1) / (draft time + verify
  time), from this request's rounds with that drafter blended with the class's (the class counts as at most
  ``prior_weight`` rounds, so a request unlike its class moves away fast, and at most as many as its requests
  agree: ``weigh_by_spread``, the strength of the spread between the class's requests; a class with fewer rounds
  of a drafter than that is shrunk towards its prior, and a class with none starts from its profiled prior, else
  from the acceptance measured when the drafter was trained (a head's held-out chain; a class its training traffic
  lacked starts pessimistic and is explored for a few rounds), else from the drafter's rounds in other classes,
  else a generic prior); with
  ``sibling_below`` set (greedy requests), plus the siblings this request's rounds got accepted, the verify
  widened by the siblings they verified;
- prompt lookup, when it has a proposal here: per-position acceptance for this kind of proposal (the n-gram size
  it came from, or "streak": the previous lookup round was accepted in full, as inside a copied span), blended the
  same way, and the k up to the proposal's length that maximises the expected rate. A proposal the round does not
  run is still judged (``lookup_shadow``): against the tokens that round emitted, which are the target's whatever
  drafted them, so lookup's acceptance is measured where a model draft serves, at no cost, instead of staying at its
  prior there (in summaries of long articles the draft won every round while lookup would have copied 5x faster).

Model-type drafters are switched off and on with hysteresis (no flapping near break-even); while all are off, one is
probed (in turn) with a short round every ``probe_every`` plain steps, so neither a request nor a class gets stuck
off, where the probe's price over the plain step it replaces, its catch-up included, is within ``probe_budget`` of
the time those plain steps took (on a CPU whose multi-token forwards cost about what their tokens cost one by one, a
draft catching up on 24 tokens costs ~9 plain steps: probing there cost 20% of every request in replay, and no probe
could ever pay). A request whose own acceptance of a drafter falls ``surprise_z`` standard deviations below its
class's tries the other model-type drafters it has not run, once (a request unlike its class, e.g. misclassified),
and from then on weighs the class's estimate of that drafter as a guess (``generic_prior_weight`` rounds). A drafter
tried in a request (that, or ``explore_within``) is drafted with for ``explore_rounds``, unless it is cheap (a draft
head): then ``shadow_rounds`` shadow tokens beside the other drafters' rounds score its first position, and the
class's estimate of it is rescaled by how they compare with the class's first-position acceptance (exploring a head
by drafting cost ~3% of a code request the generic draft served better, plus the draft's catch-up). Class statistics
come from the ``AlphaEstimator`` (memory or Redis) and are read once per request; everything per round is arithmetic
on cached numbers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..engine import NO_DRAFTER, PADDED_PLAIN_STEP, PLAIN_STEP, Decision, RoundState
from ..engine.lookup import LookupIndex
from ..logs import get_logger
from ..records import RoundRecord
from ..stats import AlphaEstimator, Estimate
from .base import RequestInfo, RequestReport
from .cost import CostModel, CostTable
from .cost_tracking import CostTracker

log = get_logger("adaptive_spec.policy")

MODEL = "model"
LOOKUP = "lookup"
STREAK = "lookup.streak"


_LOOKUP_DECISIONS = tuple(Decision(LOOKUP, k) for k in range(65))  # shared, frozen: no allocation per round


def shadow_key(drafter: str) -> str:
    """The statistics key of a drafter's shadow tokens (one "round" each: proposed 1, accepted when it hit)."""
    return f"{drafter}.shadow"


def lookup_key(ngram: int, streak: bool) -> str:
    """The statistics key of a lookup proposal: its kind predicts its acceptance."""
    return STREAK if streak else f"lookup.n{ngram}"


def _checked_alpha(drafter: str, by_class: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, ...]]:
    out = {}
    for cls, alphas in by_class.items():
        values = tuple(float(a) for a in alphas)
        if not values or not all(0.0 <= a <= 1.0 for a in values):  # NaN fails the comparison too
            raise ValueError(f"measured alpha of drafter {drafter!r}, class {cls!r}: expected acceptance per "
                             f"position in [0, 1], got {list(alphas)}")  # fmt: skip
        out[str(cls)] = values
    return out


def chain_round(alphas: Sequence[float], k: int) -> tuple[float, float]:
    """(accepted, proposed) per round of ``k`` drafted tokens, from the acceptance of each position given the
    earlier ones accepted (positions past the measured ones reuse the last)."""
    accepted, survive = 0.0, 1.0
    for j in range(k):
        survive *= alphas[min(j, len(alphas) - 1)]
        accepted += survive
    return accepted, float(k)


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
    weigh_by_spread: bool = Field(True, description="a class's rounds of a drafter weigh at most as much as its "
                                  "requests agree (the strength of their spread, Estimate.request_strength, over "
                                  "the class's draft tokens per round; at least 1 round): where a class pools "
                                  "requests a drafter suits with ones it does not, a request's own rounds "
                                  "overrule the class sooner")  # fmt: skip
    spread_min_requests: int = Field(3, ge=2, description="requests of a class before their spread is trusted")
    prior_model_accepted: float = Field(2.0, ge=0, description="cold start: accepted tokens per model round")
    prior_model_proposed: float = Field(4.0, ge=1, description="cold start: proposed tokens per model round")
    generic_prior_weight: float = Field(4.0, gt=0, description="the generic prior's weight, in rounds: a guess, "
                                        "not a measurement, so a request's own rounds overturn it fast")  # fmt: skip
    prior_lookup_accept: float = Field(0.5, gt=0, lt=1, description="cold start: lookup acceptance per position")
    prior_unseen_accept: float = Field(0.2, ge=0, lt=1, description="cold start of a drafter trained on traffic "
                                       "without this class (its measured alpha names other classes): acceptance "
                                       "per position; alignment, not size, sets alpha, so assume little")  # fmt: skip
    explore_rounds: int = Field(4, ge=0, description="rounds a drafter is tried in a request of a class its "
                                "training traffic lacked, while the class has no rounds of it")  # fmt: skip
    shadow_rounds: int = Field(8, ge=0, description="a cheap drafter (a step within shadow_max_cost of a target "
                               "forward) unseen in a class, or tried in a request (explore_within, surprise_z), is "
                               "scored on this many rounds by shadow tokens (Decision.shadow: its first token at "
                               "the round's position, unverified) instead of explore_rounds drafted with it; the "
                               "class keeps the tally. 0: explore by drafting")  # fmt: skip
    shadow_max_cost: float = Field(0.1, ge=0, description="a drafter's step over a target forward, at most, for "
                                   "shadow scoring")  # fmt: skip
    explore_within: float = Field(0.3, ge=0, lt=1, description="a model-type drafter a request has not run, "
                                  "priced within this fraction of the best model-type drafter's rate, is tried "
                                  "(explore_rounds, or shadow_rounds for a cheap one), once per request")  # fmt: skip
    surprise_z: float = Field(2.0, gt=0, description="a request whose own acceptance of a drafter sits this many "
                              "standard deviations below its class's tries the other model-type drafters it has "
                              "not run (explore_rounds each), once per request, and weighs the class's "
                              "estimate of that drafter as a guess (generic_prior_weight) from then on")  # fmt: skip
    surprise_min_tokens: int = Field(16, ge=1, description="drafted tokens of the request before that test")
    hysteresis: float = Field(0.05, ge=0, lt=1, description="relative margin to switch the model draft on/off")
    probe_every: int = Field(24, ge=1, description="plain steps before the switched-off model draft is re-tried")
    probe_k: int = Field(3, ge=1)
    probe_budget: float = Field(0.1, gt=0, description="a probe runs only where its price over a plain step (its "
                                "catch-up included) is at most this share of the plain steps' time since the "
                                "drafter last ran")  # fmt: skip
    refresh_tokens: int = Field(128, ge=1, description="re-price rounds after the context grows this much")
    catchup_amortize: float = Field(4.0, ge=1, description="a long draft catch-up is spread over the model rounds "
                                    "left in the request (tokens left / tokens per round), at most this many")  # fmt: skip
    lookup_shadow: bool = Field(True, description="judge the lookup proposal a round did not run against the tokens "
                                "it emitted (the target's): counted per position for that kind of proposal, in the "
                                "request and, as '<kind>.shadow', in the class; one whose every judged token (at "
                                "least 2) matched marks a copied span, like a lookup round accepted in full")  # fmt: skip
    lookup_extension: int = Field(0, ge=0, le=16, description="after a model-type draft, prompt lookup may append "
                                  "up to this many tokens continuing it (verified in the same forward)")  # fmt: skip
    sibling_below: float = Field(0.0, ge=0, le=1, description="greedy: verify a model-type drafter's second choice "
                                 "beside each drafted token it gave probability below this")  # fmt: skip
    pooled_refresh_s: float = Field(10.0, ge=0, description="re-read a drafter's statistics pooled over classes "
                                    "(a cold class's prior) at most this often")  # fmt: skip
    track_costs: bool = Field(True, description="decide with the cost model corrected by the round times the engine "
                              "measures, once they differ from it beyond cost_tolerance (a policy calibrated on "
                              "other hardware; see cost_tracking)")  # fmt: skip
    cost_tolerance: float = Field(0.25, gt=0, description="measured/calibrated round time off by more than this, "
                                  "over at least 8 rounds of one forward width or drafter, before costs are "
                                  "corrected")  # fmt: skip
    pad_plain: Literal["auto", "on", "off"] = Field("auto", description="plain steps verify a guess after the "
                                                    "pending token (the engine's padded plain step): 'auto' where "
                                                    "the cost model prices a 2-token forward below a 1-token one "
                                                    "at the context length; never with speculation 'off'")  # fmt: skip

    def for_class(self, request_class: str | None) -> ClassSettings:
        return self.classes.get(request_class or "", self.default)


@dataclasses.dataclass
class _RoundCosts:
    """Round costs at one context length, tabulated so a decision is a few lookups (no pydantic access per round).

    A decision runs right after a target forward has flushed the CPU caches, so what it touches matters more than
    what it computes: flat float arrays (a list of floats is one heap object per number), no calls into the
    pydantic cost model between refreshes."""

    context: int
    verify: array  # [n] seconds for a target forward over n tokens (index 0 unused)
    lookup_round: array  # [k] seconds for a lookup round proposing k tokens (index 0 unused)
    draft_step: dict[str, float]  # per model-type drafter: one single-token step
    # per model-type drafter, by catch-up tokens c: the round's first draft forward, which feeds every token the
    # drafter has not seen yet (beyond 2 tokens a one-off, which ``model_round`` spreads over later rounds)
    first_draft: dict[str, array]
    catchup_rows: dict[str, tuple[CostTable, list[float]]]  # per drafter: its table and row at `context`
    step_overhead: float
    # PLAIN_STEP or PADDED_PLAIN_STEP (``pad_plain``); priced as a 1-token forward either way (see the module doc)
    plain_step: Decision

    @classmethod
    def at(cls, cost: CostModel, context: int, max_k: int, pad_plain: str = "off") -> _RoundCosts:
        target, row = cost.target, cost.target.row_at(context)  # = cost.verify_s(n, context), one row for all n
        verify = array("d", [0.0] + [target.row_value(row, n) + cost.round_overhead_s for n in range(1, max_k + 2)])
        lookup_round = array("d", [0.0] + [cost.lookup_s + verify[n + 1] for n in range(1, max_k + 1)])
        steps = {name: cost.draft_s(1, context, 1, name) for name in cost.drafts}
        rows = {name: (table, table.row_at(context)) for name, table in cost.drafts.items()}
        pad = pad_plain == "on" or (pad_plain == "auto" and verify[2] < verify[1])
        costs = cls(context, verify, lookup_round, steps, {}, rows, cost.draft_step_overhead_s,
                    PADDED_PLAIN_STEP if pad else PLAIN_STEP)
        costs.first_draft = {name: array("d", [costs._first_draft(name, c) for c in range(max_k + 1)])
                             for name in steps}  # fmt: skip
        return costs

    def _first_draft(self, drafter: str, catchup: int) -> float:
        step = self.draft_step[drafter]
        if catchup <= 1:
            return step
        table, row = self.catchup_rows[drafter]
        return table.row_value(row, catchup) + self.step_overhead  # = CostModel.draft_s(1, context, catchup)

    def model_round(self, drafter: str, proposed: float, catchup: int, siblings: float = 0.0,
                    amortize: float = 1.0) -> float:  # fmt: skip
        """A model-type round's time: its first draft forward (catching up), proposed - 1 steps, the verify (of the
        pending token, the proposals and the siblings). A catch-up beyond 2 tokens is paid once for the rounds that
        follow it: spread over ``amortize`` rounds."""
        verify, firsts = self.verify, self.first_draft[drafter]
        n = min(max(1, round(proposed)), len(verify) - 2)
        width = min(n + 1 + round(siblings), len(verify) - 1)
        step = self.draft_step[drafter]
        first = firsts[catchup] if catchup < len(firsts) else self._first_draft(drafter, catchup)
        if catchup > 2:
            first = step + (first - step) / amortize
        return first + (n - 1) * step + verify[width]


class AdaptivePolicy:
    """Chooses drafter and k per round from measured costs and (class + request) acceptance."""

    name = "adaptive"

    def __init__(self, cost: CostModel, estimator: AlphaEstimator | None = None, config: ControllerConfig | None = None,
                 classifier=None, model_drafters: Sequence[str] | None = None,
                 measured_alpha: Mapping[str, Mapping[str, Sequence[float]]] | None = None):  # fmt: skip
        """``model_drafters``: the engine's model-type drafters to choose from (default: all the cost model knows).
        ``measured_alpha``: per drafter, per class of its training traffic, the acceptance per draft position
        measured on held-out rows when it was trained (a draft head's ``heldout_alpha``): a class's cold start
        for that drafter, and a sign that other classes were not in its traffic."""
        self.calibrated_cost = cost
        self.estimator = estimator or AlphaEstimator(pair_id=cost.pair_id)
        self.config = config or ControllerConfig()
        self.cost_tracker = CostTracker(cost, self.config.cost_tolerance) if self.config.track_costs else None
        self.classifier = classifier
        names = list(cost.drafts) if model_drafters is None else list(model_drafters)
        missing = [n for n in names if n not in cost.drafts]
        if missing:
            raise ValueError(f"the cost model has no measurements for drafter(s) {missing}: calibrate them first "
                             "(`adaptive-spec calibrate`, with --head DIR for a draft head)")  # fmt: skip
        self.model_drafters = names
        self._cheap: tuple[CostModel | None, frozenset[str]] = (None, frozenset())
        measured_alpha = measured_alpha or {}
        self.measured_alpha = {name: _checked_alpha(name, by_class) for name, by_class in measured_alpha.items()}
        self._pooled: dict[str, tuple[float, tuple[float, float, float] | None]] = {}

    def align_measured_alpha(self, drafter: str, prompts: Mapping[str, Sequence[str]],
                             min_share: float = 0.5) -> dict[str, str]:  # fmt: skip
        """Lend each class's measured acceptance of ``drafter`` to the class the classifier puts most of that
        class's held-out ``prompts`` in (at least ``min_share`` of them).

        Training traffic names its classes as the user labelled it ("code"); requests are classed by the policy's
        classifier ("coding"). Unaligned, a head trained on exactly that traffic starts pessimistic there, as on
        traffic it never saw, and spends exploration rounds on it. A class with its own measurement keeps it; where
        two measured classes land in one class, the one with more prompts there lends. Returns {classifier's class:
        measured class}; nothing without a classifier or measurements."""
        measured = self.measured_alpha.get(drafter)
        if self.classifier is None or not measured:
            return {}
        homes: dict[str, tuple[int, str]] = {}
        for cls, texts in prompts.items():
            if cls not in measured or not texts:
                continue
            label, n = Counter(str(self.classifier.predict_one(text)[0]) for text in texts).most_common(1)[0]
            if label not in measured and n >= min_share * len(texts) and n > homes.get(label, (0, ""))[0]:
                homes[label] = (n, cls)
        aliases = {label: cls for label, (_, cls) in homes.items()}
        for label, cls in aliases.items():
            measured[label] = measured[cls]
        if aliases:
            log.info("measured_alpha_aligned", drafter=drafter, aliases=aliases)
        return aliases

    @property
    def cost(self) -> CostModel:
        """The cost model rounds are priced with: the calibrated one, or its correction by measured round times
        (``track_costs``)."""
        return self.calibrated_cost if self.cost_tracker is None else self.cost_tracker.cost

    @property
    def cheap_drafters(self) -> frozenset[str]:
        """Drafters whose step costs at most ``shadow_max_cost`` of a target forward, as priced now (a correction
        of the costs may move a drafter across): scored by shadow tokens."""
        cost, cheap = self._cheap
        if cost is not (now := self.cost):
            limit = self.config.shadow_max_cost * now.plain_step_s(256)
            cheap = frozenset(n for n in self.model_drafters if now.draft_s(1, 256, 1, n) <= limit)
            self._cheap = (now, cheap)
        return cheap

    def pooled(self, drafter: str) -> tuple[float, float, float] | None:
        """``drafter``'s (rounds, accepted, draft tokens) over every class, re-read at most every
        ``pooled_refresh_s`` (a store scan); None when unknown or the store cannot be read (never fails a request)."""
        now = time.monotonic()
        cached = self._pooled.get(drafter)
        if cached is None or now - cached[0] > self.config.pooled_refresh_s:
            try:
                value = self.estimator.pooled(drafter)
            except Exception as exc:  # a store outage: fall back to the generic prior, as reads do
                log.warning("pooled_read_failed", drafter=drafter, error=repr(exc))
                value = None
            self._pooled[drafter] = cached = (now, value)
        return cached[1]

    def classify(self, request: RequestInfo) -> tuple[str, str]:
        """The caller's class wins; else the classifier's; else "default"."""
        from .classifier import resolve_request_class

        request_class, source, _ = resolve_request_class(request.prompt, request.request_class, self.classifier)
        return (str(request_class), source) if request_class is not None else ("default", "fixed")

    def start(self, request: RequestInfo) -> AdaptiveSession:
        request_class, source = self.classify(request)
        return AdaptiveSession(self, request, request_class, source)


class _ModelDrafter:
    """One model-type drafter's state in one request, in one small object: a round reads it whole."""

    __slots__ = ("name", "decision", "class_accepted", "class_proposed", "weight", "on", "true_len",
                 "sibling_accepted", "sibling_verified", "explore_left", "probe", "shadow_left", "shadow_hits",
                 "shadow_tried", "shadow_k", "class_alpha1", "shadow_base", "rate", "priced_with")

    def __init__(self, name: str, decision: Decision, class_side: tuple[float, float, float], probe: Decision):
        self.name, self.decision, self.probe = name, decision, probe
        self.explore_left = 0  # rounds still to try it in this request (a class its training traffic lacked)
        # the class's side of the blend, fixed for the request: weight x accepted, weight x proposed, weight
        self.class_accepted, self.class_proposed, self.weight = class_side
        self.on = True
        self.rate = 0.0  # expected tokens per second, as priced in the latest round (0: sat out)
        # the round costs ``rate`` was priced with, while nothing it depends on but the context has changed since
        # (None: re-price); a drafter that does not run only gets dearer (its catch-up grows, fewer rounds are
        # left to spread it over), so a rate below the best so far need not be recomputed to know it loses
        self.priced_with: _RoundCosts | None = None
        self.true_len = 0  # context tokens this drafter's cache holds
        # this request's siblings with this drafter (when the decision asks for them): accepted, verified
        self.sibling_accepted = self.sibling_verified = 0
        # shadow scoring (a cold, cheap drafter): rounds still to score; hits and tries so far, the class's
        # included, with a pessimistic prior; the chain length its first-position rate is priced at
        self.shadow_left, self.shadow_hits, self.shadow_tried, self.shadow_k = 0, 0.0, 0.0, 0  # k 0: not scored
        # the class's first-position acceptance of this drafter (what a shadow token measures), and, while a
        # drafter the class knows is scored in this request, the class side its shadow hits rescale
        self.class_alpha1 = 0.0
        self.shadow_base: tuple[float, float] | None = None

    def catchup(self, context_len: int) -> int:
        """Tokens this drafter's first forward of a round at ``context_len`` feeds (at least the pending one)."""
        return context_len - min(self.true_len, context_len - 1)


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
        self.replayed = request.replayed
        est = policy.estimator
        self.requests = est.new_request()
        self.report = RequestReport(request_class, class_source)
        self.drafters = [d for d in policy.model_drafters if self.settings.for_drafter(d).enabled]
        cap = self.max_k or 64
        self.use_lookup = self.settings.use_lookup and self.mode != "off"
        self.pad_plain = config.pad_plain  # speculation "off" never reaches it: _choose returns PLAIN_STEP first
        self.extend = extend = config.lookup_extension if self.use_lookup else 0
        # the class's side of every blend is fixed for the request (read once): weighted sums, computed once
        self.sibling_below = siblings = config.sibling_below if self.mode != "off" and not request.do_sample else 0.0
        # cheap drafters are scored by shadow tokens (greedy only: the engine takes no shadow under sampling)
        self.shadowable = (set() if request.do_sample or self.mode == "off" or not config.shadow_rounds
                           else policy.cheap_drafters)  # fmt: skip
        self.models = {}
        for d in self.drafters:
            knobs = self.settings.for_drafter(d)
            probe = Decision(d, min(config.probe_k, cap), knobs.threshold, extend, siblings)
            side, source, alpha1 = self._class_side(d, est.estimate(request_class, d))
            model = _ModelDrafter(d, Decision(d, min(knobs.max_k, cap), knobs.threshold, extend, siblings), side, probe)
            model.class_alpha1 = alpha1
            shadowed = source == "unseen" and self._start_shadow(model, probe.k)
            if source == "unseen" and not shadowed:
                model.explore_left = config.explore_rounds
            self.models[d] = model
        self.lookup_blend: dict[str, tuple[array, array]] = {}
        self.lookup = LookupIndex()
        self.costs: _RoundCosts | None = None
        self.costs_from: CostModel | None = None  # the cost model ``costs`` was tabulated from
        self.plain_since_model = 0
        self.shadow_decisions: dict[tuple[int, str], tuple[Decision, Decision]] = {}  # _with_shadow's copies
        self.probe_turn = 0
        self.surprised = False  # a drafter's acceptance in this request fell far below its class's (once)
        self.last_lookup_full = False
        self.pending_key = NO_DRAFTER
        # lookup proposals judged in this request, run or not (``lookup_shadow``), by kind: what _best_lookup_k reads
        self.lookup_seen = est.new_request()
        self.judge_unrun = self.use_lookup and config.lookup_shadow
        self.lookup_offer: str | None = None  # the kind of lookup proposal this decision had, if any
        self.lookup_unrun: tuple[int, str, list[int]] | None = None  # (context length, kind, tokens) to judge
        self.lookup_judged: list[tuple[str, int, int, int, int]] = []  # (kind, k, tried, matched, context length)
        # for the report's estimated speedup: this request's rounds (measured, or priced in replay), what plain
        # decoding of its tokens costs by the cost model, and its verify forwards measured and priced
        self.round_s = self.plain_priced_s = self.verify_measured_s = self.verify_priced_s = 0.0
        # the knobs a round reads, as plain values (pydantic attribute access is slow once the caches are cold)
        self.lookup_k = min(self.settings.lookup_max_k, cap)
        self.lookup_min_ngram = self.settings.lookup_min_ngram
        self.keep_on, self.turn_on = 1 - config.hysteresis, 1 + config.hysteresis
        self.catchup_amortize, self.refresh_tokens = config.catchup_amortize, config.refresh_tokens
        self.generic_prior_weight, self.probe_every = config.generic_prior_weight, config.probe_every
        self.probe_budget = config.probe_budget
        tries = config.explore_rounds or self.shadowable  # a drafter can be tried by rounds or by shadows
        self.explore_within = config.explore_within if len(self.models) > 1 and tries else 0.0
        self.checked_prompt = True
        if self.use_lookup:  # the class's side of every kind of lookup proposal, read now rather than mid-request
            kinds = range(self.lookup.min_ngram, self.lookup.max_ngram + 1)
            for key in [lookup_key(n, False) for n in kinds] + [STREAK]:
                self._lookup_class_side(key)
            if request.prompt_ids is not None:  # index the prompt now, before its prefill, not in the first round
                self.lookup.extend(request.prompt_ids.reshape(-1).tolist())
                self.checked_prompt = False

    # --- deciding -----------------------------------------------------------------------------------------------

    def decide(self, state: RoundState) -> Decision:
        context_len = len(state.tokens) if state.tokens is not None else state.context.numel()
        cost = self.policy.cost  # the calibrated model, or its correction by measured round times (track_costs)
        if self.costs is None or cost is not self.costs_from or context_len - self.costs.context >= self.refresh_tokens:
            self._tabulate(cost, context_len)
        self.lookup_offer = None
        decision, key = self._choose(state, context_len)
        self.pending_key = key
        if self.lookup_offer is not None and not key.startswith(LOOKUP):  # judged once this round's tokens are known
            self.lookup_unrun = (len(self.lookup.tokens), self.lookup_offer, self.lookup.propose(self.lookup_k)[0])
        return decision

    def _tabulate(self, cost: CostModel, context_len: int) -> None:
        self.costs = _RoundCosts.at(cost, context_len, 64, self.pad_plain)
        self.costs_from = cost
        if cost is not self.policy.calibrated_cost:  # the report says which prices the rounds had
            self.report.extra["costs"] = "corrected by measured round times"

    def _choose(self, state: RoundState, context_len: int) -> tuple[Decision, str]:
        costs = self.costs
        plain_rate = 1.0 / costs.verify[1]
        if self.mode == "off":
            return PLAIN_STEP, NO_DRAFTER
        tracker = self.policy.cost_tracker
        if tracker is not None and tracker.wants_width and self.mode != "on":  # costs off, one width measured
            return (PLAIN_STEP if tracker.wants_width == 1 else PADDED_PLAIN_STEP), NO_DRAFTER
        forced = self.mode == "on"
        best_rate, best, best_key = (0.0 if forced else plain_rate), costs.plain_step, NO_DRAFTER  # "on": speculate

        # prompt lookup: what would it propose here, and how is such a proposal accepted?
        if self.use_lookup:
            lookup = self.lookup
            if not self.checked_prompt:  # first round: the engine's context must start with the prompt indexed
                self.checked_prompt = True
                tokens = state.tokens if state.tokens is not None else state.context.tolist()
                if tokens[: len(lookup.tokens)] != lookup.tokens:
                    lookup.reset()
            seen = len(lookup.tokens)
            lookup.extend(state.tokens[seen:] if state.tokens is not None else state.context[seen:].tolist())
            if self.lookup_unrun is not None:
                self._judge_unrun_lookup()
            available, ngram = lookup.proposal_length(self.lookup_k)
            if available and ngram >= self.lookup_min_ngram:
                key = lookup_key(ngram, self.last_lookup_full)
                if self.judge_unrun:
                    self.lookup_offer = key
                k, rate = self._best_lookup_k(key, available)
                if rate > best_rate:
                    best_rate, best, best_key = rate, _LOOKUP_DECISIONS[k], key

        # model-type drafters, each switched on/off with hysteresis (one the class does not know sits out while
        # shadow tokens score it: its price is a guess)
        for model in self.models.values():
            if model.shadow_left and model.shadow_base is None and not forced:
                model.on, model.rate = False, 0.0
                continue
            if model.priced_with is costs and model.rate < best_rate:  # only got dearer since: it loses again
                rate = model.rate  # (an upper bound: it stays on no longer than the hysteresis would keep it)
            else:
                model.rate = rate = self._model_rate(model, context_len, state.remaining)
                model.priced_with = costs
            model.on = on = forced or rate > plain_rate * (self.keep_on if model.on else self.turn_on)
            if on and rate > best_rate:
                best_rate, best, best_key = rate, model.decision, model.name
        if best_key in self.models and self.explore_within:
            self._explore_close(best_key, best_rate)
        for model in self.models.values():
            if model.explore_left and best_key != model.name:  # measure it here before trusting a guess
                return model.probe, model.name
            if model.shadow_left and best_key != model.name:  # ... or score its first token beside this round
                return self._with_shadow(best, model.name), best_key
        if (best_key == NO_DRAFTER and self.drafters and self.plain_since_model >= self.probe_every
                and not any(m.on for m in self.models.values())):  # fmt: skip
            name = self.drafters[self.probe_turn % len(self.drafters)]  # a bounded probe, drafters in turn
            self.probe_turn += 1
            model = self.models[name]
            extra = costs.model_round(name, model.probe.k, model.catchup(context_len)) - costs.verify[1]
            if extra <= self.probe_budget * self.plain_since_model * costs.verify[1]:
                return model.probe, name
        return best, best_key

    def _judge_unrun_lookup(self) -> None:
        """Score the lookup proposal the previous round did not run against the tokens it emitted: the target's
        tokens whatever drafted them (greedy: its argmax; sampling: a sample, which matches a proposed token with
        the probability that token would have been accepted). Positions past the emitted tokens are not judged."""
        start, key, proposal = self.lookup_unrun
        self.lookup_unrun = None
        emitted = self.lookup.tokens[start : start + len(proposal)]
        judged = len(emitted)
        if not judged:
            return
        matched = 0
        while matched < judged and proposal[matched] == emitted[matched]:
            matched += 1
        if matched == judged >= 2:  # lookup foresaw all the round emitted: a copied span, as after a full lookup round
            self.last_lookup_full = True
        tried = min(matched + 1, judged)
        self.lookup_seen.observe_counts(key, tried, matched)
        # the class counts them when the request ends (a request reads its class once, at its start)
        self.lookup_judged.append((key, len(proposal), tried, matched, start))

    def _with_shadow(self, decision: Decision, name: str) -> Decision:
        """``decision`` asking for ``name``'s shadow token, made once per decision object (decisions are shared,
        long-lived objects; ``dataclasses.replace`` per round cost ~5 µs of the 50 µs budget)."""
        key = (id(decision), name)
        cached = self.shadow_decisions.get(key)
        if cached is None:  # the entry holds the decision too, so its id is not reused while cached
            cached = self.shadow_decisions[key] = (decision, dataclasses.replace(decision, shadow=name))
        return cached[1]

    def _start_shadow(self, model: _ModelDrafter, k: int) -> bool:
        """A cold drafter cheap enough is scored by shadow tokens rather than drafted with (True), from the class's
        tally so far; once the class has ``shadow_rounds`` of them, it starts from that tally alone. Greedy requests
        only (the engine takes no shadow under sampling)."""
        config = self.config
        if model.name not in self.shadowable:
            return False
        tally = self.policy.estimator.estimate(self.request_class, shadow_key(model.name))
        prior = 2.0  # pseudo-tries at prior_unseen_accept
        model.shadow_k = k
        model.shadow_hits = prior * config.prior_unseen_accept + tally.accepted_tokens
        model.shadow_tried = prior + tally.draft_tokens
        self._price_from_shadows(model)
        model.shadow_left = max(config.shadow_rounds - round(tally.draft_tokens), 0)
        self.report.extra["class_side"][model.name] = "shadow" if tally.draft_tokens else "unseen"
        return True

    def _price_from_shadows(self, model: _ModelDrafter) -> None:
        """The class's side of a drafter known only by shadow tokens: a ``shadow_k``-token chain at their hit rate,
        weighted as a guess. For a drafter the class knows (``shadow_base``), the class's rounds rescaled by how
        this request's shadow hits compare with the class's first-position acceptance."""
        model.priced_with = None
        rate = model.shadow_hits / model.shadow_tried
        if model.shadow_base is not None:
            accepted, proposed = model.shadow_base
            model.class_accepted = min(accepted * rate / model.class_alpha1, proposed)
            return
        accepted, proposed = chain_round((rate,), model.shadow_k)
        model.class_accepted, model.class_proposed = model.weight * accepted, model.weight * proposed

    def _try_in_request(self, model: _ModelDrafter) -> None:
        """Measure ``model`` on this request before trusting the class's estimate of it: a cheap drafter by
        ``shadow_rounds`` shadow tokens beside the rounds the others serve (it costs a fraction of drafting with
        it, and no catch-up for the drafter it would displace), any other by ``explore_rounds`` rounds drafted
        with it."""
        if model.name in self.shadowable and model.class_alpha1 > 0:
            model.shadow_base = (model.class_accepted, model.class_proposed)
            model.shadow_k = model.probe.k
            prior = self.config.generic_prior_weight  # pseudo-tries at the class's first-position acceptance
            model.shadow_hits, model.shadow_tried = prior * model.class_alpha1, prior
            model.shadow_left = self.config.shadow_rounds
        else:
            model.explore_left = max(model.explore_left, self.config.explore_rounds)

    def _explore_close(self, best: str, best_rate: float) -> None:
        """Another model-type drafter this request has not run, priced within ``explore_within`` of the best one,
        is tried (``explore_rounds``, once per request): classes mix requests whose acceptance differs by far more
        than that margin, and only a request's own rounds tell which drafter suits it."""
        for model in self.models.values():
            # already being tried (explore_left) or scored (shadows), or already run in this request: nothing to decide
            if model.name == best or model.explore_left or model.shadow_k or model.name in self.requests.by_drafter:
                continue
            if model.rate >= best_rate * (1 - self.explore_within):
                self._try_in_request(model)

    def _class_side(self, name: str, estimate: Estimate) -> tuple[tuple[float, float, float], str, float]:
        """(weight x accepted, weight x proposed, weight) per round, to blend with this request's own rounds,
        where it came from (also in the report's ``class_side``) and its first-position acceptance.

        The class's rounds with this drafter, counting as at most ``prior_weight`` rounds (fewer where its
        requests disagree: ``weigh_by_spread``); while they are fewer than ``prior_weight``, shrunk towards what
        the drafter was expected to do without them (``_prior_side``, as ``generic_prior_weight`` rounds): a few
        rounds of one request must not settle a class's estimate for good, since a drafter priced below the others
        is not run again there. No rounds: that prior alone."""
        cap, rounds = self.config.prior_weight, estimate.rounds
        if rounds >= cap:  # enough of the class's own: no prior (nor its store scan, for a pooled one)
            source, weight, accepted, proposed, alpha1 = "class", 0.0, 0.0, 0.0, 0.0
        else:
            source, weight, accepted, proposed, alpha1 = self._prior_side(name)
        if rounds > 0:
            mean_accepted, mean_proposed = estimate.accepted_tokens / rounds, estimate.draft_tokens / rounds
            class_alpha1 = estimate.positions[0].mean if estimate.tried[0] > 0 else mean_accepted / mean_proposed
            shrink = self.config.generic_prior_weight if rounds < cap else 0.0
            source, n = "class", rounds + shrink
            accepted = (rounds * mean_accepted + shrink * accepted) / n
            proposed = (rounds * mean_proposed + shrink * proposed) / n
            alpha1 = (rounds * class_alpha1 + shrink * alpha1) / n
            weight = min(n, cap)
            if self.config.weigh_by_spread and proposed > 0:
                strength = estimate.request_strength(self.config.spread_min_requests)  # in draft tokens
                if strength is not None and strength / proposed < weight:
                    weight = max(strength / proposed, 1.0)
                    self.report.extra.setdefault("class_weight", {})[name] = round(weight, 2)
        self.report.extra.setdefault("class_side", {})[name] = source
        return (weight * accepted, weight * proposed, weight), source, alpha1

    def _prior_side(self, name: str) -> tuple[str, float, float, float, float]:
        """What a drafter is expected to do in this class before the class has rounds of it: (source, weight,
        accepted, proposed, first-position acceptance), from the first that exists: the class's profiled prior,
        the acceptance measured when the drafter was trained (``measured_alpha``: for this class, else the
        pessimistic ``prior_unseen_accept``, then explored), the drafter's rounds in all classes (a head or custom
        draft new to this class is priced by how it did elsewhere, not by a generic guess), the generic prior.
        Measured rounds count as at most ``prior_weight``; guesses as ``generic_prior_weight``."""
        cap, alpha1 = self.config.prior_weight, None
        if profiled := self.profiled_prior(name):
            (source, weight), (accepted, proposed) = ("profiled", cap), profiled
        elif (measured := self.policy.measured_alpha.get(name)) is not None:
            # measured when it was trained, on its own traffic: a class there starts from that, any other from a
            # pessimistic guess (then explored); either is a guess about this traffic, weighted as one
            alphas = measured.get(self.request_class)
            source = "measured" if alphas is not None else "unseen"
            k = min(self.settings.for_drafter(name).max_k, self.max_k or 64)
            alphas = alphas or (self.config.prior_unseen_accept,)
            accepted, proposed = chain_round(alphas, k)
            alpha1 = alphas[0]
            weight = min(self.config.generic_prior_weight, cap)
        elif pooled := self.policy.pooled(name):
            rounds, total_accepted, total_drafted = pooled
            source, weight, accepted, proposed = "pooled", min(rounds, cap), total_accepted / rounds, total_drafted / rounds
        else:
            source, weight = "generic", min(self.config.generic_prior_weight, cap)
            accepted, proposed = self.config.prior_model_accepted, self.config.prior_model_proposed
        if alpha1 is None:  # no per-position counts: the per-token acceptance stands in
            alpha1 = accepted / proposed if proposed else 0.0
        return source, weight, accepted, proposed, alpha1

    def _model_rate(self, model: _ModelDrafter, context_len: int, remaining: int) -> float:
        """Expected tokens per second of a round with this drafter: class and request blended; a catch-up spread
        over the rounds it would serve (the request's tokens left at this rate, at most ``catchup_amortize``)."""
        mine = self.requests.by_drafter.get(model.name)
        if mine is None:
            accepted, proposed = model.class_accepted / model.weight, model.class_proposed / model.weight
            rounds = 0
        else:
            accepted = (model.class_accepted + mine.accepted_tokens) / (model.weight + mine.rounds)
            proposed = (model.class_proposed + mine.draft_tokens) / (model.weight + mine.rounds)
            rounds = mine.speculative_rounds
        catchup = model.catchup(context_len)
        # siblings (none unless the decision asks for them): what this request's rounds found, shrunk towards none
        # (a prior of 0.15 accepted per round, or more, replayed worse on the 52 committed traces: the gain is small
        # and varies by request)
        shrink = self.generic_prior_weight + rounds
        gain, width = model.sibling_accepted / shrink, model.sibling_verified / shrink
        tokens = accepted + 1.0 + gain
        amortize = min(max(remaining / tokens, 1.0), self.catchup_amortize)
        return tokens / self.costs.model_round(model.name, proposed, catchup, width, amortize)

    def profiled_prior(self, name: str) -> tuple[float, float] | None:
        """The class's profiled (accepted, proposed) for this drafter, if ``train-policy`` measured one.

        A profiled prior was measured for one drafter: the one of the ``model`` entry belongs to the generic draft
        ("model") and is not lent to other model-type drafters (a head or custom draft with the same knobs)."""
        d = self.settings.drafters.get(name) or (self.settings.model if name == MODEL else None)
        return (d.prior_accepted, d.prior_proposed) if d is not None and d.prior_accepted is not None else None

    def _lookup_class_side(self, key: str) -> tuple[array, array]:
        """Per position: (weight x class mean, weight) for this kind of lookup proposal, read once per request: its
        rounds and, with ``lookup_shadow``, its proposals judged without running (each weighted by its tries)."""
        blend = self.lookup_blend.get(key)
        if blend is None:
            estimator = self.policy.estimator
            estimates = [estimator.estimate(self.request_class, key)]
            if self.judge_unrun:
                estimates.append(estimator.estimate(self.request_class, shadow_key(key)))
            estimates = [e for e in estimates if e.has_data]
            sums, weights = [], []
            for j in range(self.requests.max_positions):
                tried = sum(e.tried[j] for e in estimates)
                if tried > 0:
                    mean = sum(e.positions[j].mean * e.tried[j] for e in estimates) / tried
                    weight = min(sum(e.positions[j].weight for e in estimates if e.tried[j] > 0),
                                 self.config.prior_weight)  # fmt: skip
                else:
                    mean, weight = self.config.prior_lookup_accept, 2.0
                sums.append(mean * weight)
                weights.append(weight)
            blend = self.lookup_blend[key] = (array("d", sums), array("d", weights))
        return blend

    def _best_lookup_k(self, key: str, available: int) -> tuple[int, float]:
        """The k up to the proposal's length with the highest expected rate; positions past the counters' reuse
        the last one."""
        sums, weights = self._lookup_class_side(key)
        mine = self.lookup_seen.by_drafter.get(key)
        last = len(sums) - 1
        round_s = self.costs.lookup_round
        best_k, best_rate = 1, 0.0
        tokens, survive = 1.0, 1.0
        if mine is not None:
            accepted, tried = mine.accepted, mine.tried
        for k in range(1, min(available, len(round_s) - 1) + 1):
            j = k - 1 if k <= last else last
            if mine is None:
                survive *= sums[j] / weights[j]
            else:
                survive *= (sums[j] + accepted[j]) / (weights[j] + tried[j])
            tokens += survive
            rate = tokens / round_s[k]
            if rate > best_rate:
                best_k, best_rate = k, rate
        return best_k, best_rate

    # --- learning -------------------------------------------------------------------------------------------------

    def on_prefill(self, prompt_len: int, seconds: float) -> None:
        if (tracker := self.policy.cost_tracker) is not None:
            tracker.observe_prefill(prompt_len, seconds)

    def on_round(self, record: RoundRecord) -> None:
        if (tracker := self.policy.cost_tracker) is not None:
            tracker.observe(record)
        key = record.drafter
        if record.drafter == LOOKUP:
            key = self.pending_key if self.pending_key.startswith(LOOKUP) else LOOKUP
            self.last_lookup_full = record.proposed > 0 and record.accepted == record.proposed
        elif record.proposed > 0 or record.k > 0:
            self.last_lookup_full = False
        model = self.models.get(record.drafter)
        if model is not None:
            model.priced_with = None
            self.plain_since_model = 0
            model.explore_left = max(model.explore_left - 1, 0)
            model.true_len = record.context_len + min(record.proposed - 1, record.accepted)
            model.sibling_accepted += record.sibling_accepted
            model.sibling_verified += record.siblings
        elif record.k == 0:
            self.plain_since_model += 1
        if record.shadow and (shadowed := self.models.get(record.shadow)) is not None:
            shadowed.shadow_left = max(shadowed.shadow_left - 1, 0)
            shadowed.shadow_hits += record.shadow_hit
            shadowed.shadow_tried += 1
            if shadowed.name not in self.requests.by_drafter:
                self._price_from_shadows(shadowed)
            self.policy.estimator.observe(self.request_class, RoundRecord(
                shadow_key(shadowed.name), 1, 1, record.shadow_hit, 1, record.context_len, 0.0, 0.0))  # fmt: skip
        if key != record.drafter:
            record = dataclasses.replace(record, drafter=key)
        self.requests.observe(record)
        if key.startswith(LOOKUP):
            self.lookup_seen.observe(record)
        self.policy.estimator.observe(self.request_class, record)
        if model is not None and not self.surprised and len(self.models) > 1:
            self._check_surprise(model)
        r = self.report
        r.rounds += 1
        r.proposed += record.proposed
        r.accepted += record.accepted
        if record.siblings:
            siblings = r.extra.setdefault("siblings", {"rounds": 0, "verified": 0, "accepted": 0})
            siblings["rounds"] += 1
            siblings["verified"] += record.siblings
            siblings["accepted"] += record.sibling_accepted
        if record.guessed:
            guess = r.extra.setdefault("padded_plain", {"rounds": 0, "accepted": 0})
            guess["rounds"] += 1
            guess["accepted"] += record.guess_accepted
        if record.extension:
            extension = r.extra.setdefault("lookup_extension", {"rounds": 0, "proposed": 0, "accepted": 0})
            extension["rounds"] += 1
            extension["proposed"] += record.extension
            extension["accepted"] += record.extension_accepted
        name = f"{record.drafter}:{record.k}" if record.k else "plain"
        r.decisions[name] = r.decisions.get(name, 0) + 1
        self.round_s += record.draft_s + record.verify_s
        if self.costs is not None:
            verify = self.costs.verify
            self.plain_priced_s += record.emitted * verify[1]
            self.verify_priced_s += verify[min(record.verified, len(verify) - 1)]
            self.verify_measured_s += record.verify_s

    def _check_surprise(self, model: _ModelDrafter) -> None:
        """This request accepts ``model`` far below what its class predicts (a request unlike its class, e.g. prose
        the classifier put with math): the other model-type drafters it has not run are tried, so that they are
        judged on this request's rounds, their catch-up paid once, not on the class estimate that misjudged it."""
        mine = self.requests.by_drafter.get(model.name)
        if mine is None or mine.draft_tokens < self.config.surprise_min_tokens or model.class_proposed <= 0:
            return
        p = min(model.class_accepted / model.class_proposed, 1.0)
        n = mine.draft_tokens
        z = (mine.accepted_tokens - n * p) / math.sqrt(max(n * p * (1 - p), 1e-9))
        if z < -self.config.surprise_z:
            self.surprised = True
            # the class's estimate of ``model`` is refuted for this request: from now on it counts as a guess
            scale = min(model.weight, self.config.generic_prior_weight) / model.weight
            model.class_accepted, model.class_proposed, model.weight = (
                model.class_accepted * scale, model.class_proposed * scale, model.weight * scale)
            model.priced_with = None
            for other in self.models.values():  # (one scored by shadow tokens in this request is judged by them)
                if other is not model and other.name not in self.requests.by_drafter and not other.shadow_k:
                    self._try_in_request(other)
            self.report.extra["surprise"] = {"drafter": model.name, "round": self.report.rounds, "z": round(z, 2)}

    def finish(self) -> RequestReport:
        estimator, r = self.policy.estimator, self.report
        judged = self.lookup_judged
        for key, k, tried, matched, context_len in judged:
            record = RoundRecord(shadow_key(key), k, tried, matched, 0, context_len, 0.0, 0.0)
            estimator.observe(self.request_class, record)
        estimator.observe_request_end(self.request_class, self.requests)
        if judged:
            r.extra["lookup_shadow"] = {"proposals": len(judged), "judged": sum(x[2] for x in judged),
                                        "matched": sum(x[3] for x in judged)}  # fmt: skip
        # plain decoding's time for these tokens: the cost model's price, scaled by how fast this request's verify
        # forwards ran against their prices (the machine is rarely as fast as on the day it was calibrated)
        drift = self.verify_measured_s / self.verify_priced_s if self.verify_priced_s else 1.0
        r.extra["estimated_speedup"] = self.plain_priced_s * drift / self.round_s if self.round_s else 1.0
        r.extra["drafters_on_at_end"] = [m.name for m in self.models.values() if m.on]
        if not self.replayed:
            log.info("request_done", request_class=r.request_class, class_source=r.class_source, rounds=r.rounds,
                     alpha=round(r.alpha, 3) if r.proposed else None, decisions=r.decisions,
                     estimated_speedup=round(r.extra["estimated_speedup"], 3))  # fmt: skip
        return r
