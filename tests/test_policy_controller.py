"""The adaptive controller's decisions, given a cost model and statistics (no models needed)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from adaptive_spec.engine import NO_DRAFTER, PADDED_PLAIN_STEP, PLAIN_STEP, RoundState
from adaptive_spec.policy.base import RequestInfo
from adaptive_spec.policy.controller import AdaptivePolicy, ClassSettings, ControllerConfig, DraftSettings
from adaptive_spec.policy.cost import CostModel, CostTable
from adaptive_spec.records import RoundRecord
from adaptive_spec.stats import AlphaEstimator


def cost_model() -> CostModel:
    # A verify that grows slowly with tokens, a draft step at c = 0.4 of a target step.
    target = CostTable(tokens=[1, 4, 8, 17], contexts=[100, 2000], seconds=[[0.1, 0.11, 0.13, 0.16], [0.12, 0.13, 0.15, 0.19]])
    draft = CostTable(tokens=[1, 32], contexts=[100, 2000], seconds=[[0.04, 0.06], [0.05, 0.07]])
    return CostModel(pair_id="test", hardware="test", dtype="float32", target=target, drafts={"model": draft}, lookup_s=1e-4)


def model_round(proposed: int, accepted: int, context: int = 100) -> RoundRecord:
    return RoundRecord("model", 16, proposed, accepted, accepted + 1, context, 0.04 * proposed, 0.12,
                       tuple([0.9] * proposed))  # fmt: skip


def warm(estimator: AlphaEstimator, cls: str, accept_rate: float, rounds: int = 200, seed: int = 0) -> None:
    rng = random.Random(seed)
    for _ in range(rounds):
        proposed = 8
        accepted = 0
        while accepted < proposed and rng.random() < accept_rate:
            accepted += 1
        estimator.observe(cls, model_round(proposed, accepted))


def state(context_len: int = 100, generated: int = 10) -> RoundState:
    # no repeated n-grams: prompt lookup has nothing to propose
    return RoundState(generated, 100, torch.arange(context_len), None)


def policy(config: ControllerConfig | None = None) -> AdaptivePolicy:
    return AdaptivePolicy(cost_model(), AlphaEstimator(pair_id="test"), config)


def test_low_alpha_class_decodes_plainly():
    p = policy()
    warm(p.estimator, "chat", 0.1)
    session = p.start(RequestInfo(request_class="chat"))
    assert session.decide(state()).k == 0


def test_high_alpha_class_drafts_long():
    p = policy()
    warm(p.estimator, "code", 0.95)
    session = p.start(RequestInfo(request_class="code"))
    decision = session.decide(state())
    assert decision.drafter == "model" and decision.k == ClassSettings().model.max_k


def test_break_even_costs_are_priced_not_thresholded():
    """High acceptance but expensive drafting: the controller follows expected speed, not alpha."""
    p = policy()
    warm(p.estimator, "code", 0.95)
    pricey = cost_model().model_copy(update={"drafts": {"model": CostTable(tokens=[1, 32], contexts=[100], seconds=[[0.5, 0.6]])}})
    session = AdaptivePolicy(pricey, p.estimator).start(RequestInfo(request_class="code"))
    assert session.decide(state()).k == 0


def test_no_flapping_near_break_even():
    """Noisy acceptance around break-even: the model draft switches on/off only a few times."""
    p = policy(ControllerConfig(hysteresis=0.1, prior_weight=16))
    rng = random.Random(1)
    session = p.start(RequestInfo(request_class="edge"))
    switches, last = 0, None
    for i in range(400):
        decision = session.decide(state(100 + i, 10 + i))
        on = decision.drafter == "model"
        if last is not None and on != last:
            switches += 1
        last = on
        if on:
            accepted = 0
            while accepted < 2 and rng.random() < 0.45:
                accepted += 1
            session.on_round(model_round(2, accepted, 100 + i))
        else:
            session.on_round(RoundRecord(NO_DRAFTER, 0, 0, 0, 1, 100 + i, 0.0, 0.1))
    assert switches <= 40, f"{switches} switches in 400 rounds"


def test_switched_off_model_is_reprobed():
    config = ControllerConfig(probe_every=8, probe_k=2)
    p = policy(config)
    warm(p.estimator, "chat", 0.05)
    session = p.start(RequestInfo(request_class="chat"))
    probes = []
    for i in range(40):
        decision = session.decide(state(100 + i, 10 + i))
        if decision.drafter == "model":
            probes.append(i)
            session.on_round(model_round(decision.k, 0, 100 + i))
        else:
            session.on_round(RoundRecord(NO_DRAFTER, 0, 0, 0, 1, 100 + i, 0.0, 0.1))
    assert probes and all(b - a >= 8 for a, b in zip(probes, probes[1:]))
    assert len(probes) <= 40 // 8 + 1


def test_a_probe_whose_catch_up_costs_more_than_its_budget_is_not_run():
    """Where a draft forward costs what its tokens cost one by one (bf16 on a CPU without native bf16 dot
    products), catching the draft up on the plain steps it sat out costs more than those steps' probe budget,
    however long it waits: no probe, plain decoding. With the same costs and an unbounded budget it probes."""
    linear = CostTable(tokens=[1, 32, 256], contexts=[100, 2000], seconds=[[0.04, 1.28, 10.24], [0.05, 1.6, 12.8]])
    pricey = cost_model().model_copy(update={"drafts": {"model": linear}})
    probes = {}
    for budget in (0.1, 1e6):
        p = AdaptivePolicy(pricey, AlphaEstimator(pair_id="test"), ControllerConfig(probe_every=8, probe_budget=budget))
        warm(p.estimator, "chat", 0.05)
        session = p.start(RequestInfo(request_class="chat"))
        probes[budget] = 0
        for i in range(60):
            decision = session.decide(state(100 + i, 10 + i))
            probes[budget] += decision.drafter == "model"
            session.on_round(model_round(decision.k, 0, 100 + i) if decision.drafter == "model"
                             else RoundRecord(NO_DRAFTER, 0, 0, 0, 1, 100 + i, 0.0, 0.1))  # fmt: skip
    assert probes[0.1] == 0 and probes[1e6] >= 5


def test_lookup_is_used_when_the_context_repeats():
    p = policy()
    for _ in range(50):  # lookup proposals of this kind were accepted in full
        p.estimator.observe("sum", RoundRecord("lookup.n3", 8, 8, 8, 9, 100, 1e-4, 0.13))
    session = p.start(RequestInfo(request_class="sum"))
    context = torch.tensor(list(range(50)) + list(range(10, 13)))  # the suffix 10 11 12 occurred before
    decision = session.decide(RoundState(5, 100, context, None))
    assert decision.drafter == "lookup" and decision.k >= 4


def _copy_request(p: AdaptivePolicy, rounds: int, model_accepts: int = 1) -> tuple[list[str], object]:
    """A request whose answer copies its prompt (the case of summaries and RAG): each round the model draft gets
    ``model_accepts`` tokens accepted, a lookup proposal all of its tokens. Returns the drafters run, the session."""
    prompt = list(range(200, 260))
    answer = prompt[:]  # the target copies the prompt, token for token
    session = p.start(RequestInfo(request_class="sum"))
    tokens, made = prompt + [answer[0]], []
    for _ in range(rounds):
        d = session.decide(RoundState(len(tokens) - 60, 100, torch.tensor(tokens), None, list(tokens)))
        made.append(d.drafter)
        done = len(tokens) - 60
        if d.drafter == "lookup":
            accepted = min(d.k, len(answer) - done - 1)
            record = RoundRecord("lookup", d.k, d.k, accepted, accepted + 1, len(tokens), 1e-4, 0.12)
        else:
            accepted = min(model_accepts, d.k) if d.k else 0
            record = RoundRecord(d.drafter, d.k, d.k, accepted, accepted + 1, len(tokens), 0.04 * d.k, 0.12)
        session.on_round(record)
        tokens += answer[done : done + accepted + 1]
    return made, session


def test_a_lookup_proposal_not_run_is_judged_against_the_tokens_the_round_emitted():
    """Where the model draft wins every round, lookup's acceptance would otherwise stay at its prior: its proposal
    is scored against what the round emitted (the target's tokens), in the request and in the class apart from
    its rounds ('<kind>.shadow'); a proposal that foresaw all of a round's tokens marks a copied span (streak)."""
    p = policy(ControllerConfig(prior_lookup_accept=0.1))
    warm(p.estimator, "sum", 0.95)  # the draft is accepted well: it beats lookup at its (low) prior
    made, session = _copy_request(p, 1, model_accepts=3)
    assert made == ["model"]
    d = session.decide(RoundState(5, 100, torch.arange(5), None, list(range(200, 260)) + list(range(200, 205))))
    seen = session.lookup_seen.by_drafter
    # the proposal (the 16 tokens after the prompt's first 200) against the 4 emitted: all 4 judged, all matched
    assert seen["lookup.n1"].tried[:5] == [1, 1, 1, 1, 0] and seen["lookup.n1"].accepted[:5] == [1, 1, 1, 1, 0]
    assert session.last_lookup_full and d is not None
    assert p.estimator.estimate("sum", "lookup.n1.shadow").draft_tokens == 0  # the class counts them at the end
    assert session.finish().extra["lookup_shadow"] == {"proposals": 1, "judged": 4, "matched": 4}
    shadow = p.estimator.estimate("sum", "lookup.n1.shadow")
    assert shadow.draft_tokens == 4 and shadow.accepted_tokens == 4
    assert p.estimator.estimate("sum", "lookup.n1").rounds == 0  # no lookup round ran

    # a proposal that went wrong at its third token: judged up to the miss
    p = policy(ControllerConfig(prior_lookup_accept=0.1))
    warm(p.estimator, "sum", 0.95)
    session = p.start(RequestInfo(request_class="sum"))
    prompt = list(range(200, 260))
    assert session.decide(RoundState(1, 100, torch.tensor(prompt + [200]), None, prompt + [200])).drafter == "model"
    session.on_round(RoundRecord("model", 4, 4, 3, 4, 61, 0.16, 0.12))
    session.decide(RoundState(5, 100, torch.arange(65), None, prompt + [200, 201, 202, 999, 5]))
    counts = session.lookup_seen.by_drafter["lookup.n1"]
    assert counts.tried[:4] == [1, 1, 1, 0] and counts.accepted[:4] == [1, 1, 0, 0]
    assert not session.last_lookup_full


def test_judged_lookup_proposals_turn_lookup_on_where_it_copies():
    """A copying request of a class whose draft is accepted well: lookup, never run, starts from its prior and
    loses to the draft until the request's own rounds sink the draft's price; judged unrun, it takes over at once."""
    made = {}
    for judge in (True, False):
        p = policy(ControllerConfig(lookup_shadow=judge, prior_lookup_accept=0.1))
        warm(p.estimator, "sum", 0.95)
        made[judge], session = _copy_request(p, 12, model_accepts=2)
    first = {judge: drafters.index("lookup") if "lookup" in drafters else len(drafters)
             for judge, drafters in made.items()}  # fmt: skip
    # judged: two model rounds show lookup would copy, and it stays; unjudged: lookup waits until the request's
    # own poor draft rounds have pulled the draft's price below lookup's prior
    assert first[True] <= 2 and set(made[True][first[True] :]) == {"lookup"}
    assert first[False] >= 6
    assert "lookup_shadow" not in policy(ControllerConfig(lookup_shadow=False)).start(
        RequestInfo(request_class="sum")).report.extra  # fmt: skip


@pytest.mark.parametrize("given", ["matching", "other", "none"])
def test_prompt_indexed_at_start_decides_like_indexing_in_rounds(given):
    """The session indexes the request's prompt for lookup when it starts; a prompt that is not what the engine
    then runs on (a caller's mistake) is dropped at the first round, never used."""
    rng = random.Random(1)
    prompt = [rng.randrange(20) for _ in range(60)]
    first = rng.randrange(20)
    ids = {"matching": torch.tensor([prompt]), "other": torch.tensor([[99] * 60]), "none": None}[given]
    decisions = {}
    for name, prompt_ids in (("reference", None), (given, ids)):
        p = policy()
        for _ in range(30):
            p.estimator.observe("sum", RoundRecord("lookup.n3", 8, 8, 6, 7, 100, 1e-4, 0.13))
        session = p.start(RequestInfo(prompt_ids=prompt_ids, request_class="sum"))
        tokens, made = list(prompt) + [first], []
        rng_round = random.Random(2)
        for i in range(40):
            d = session.decide(RoundState(i, 100, torch.tensor(tokens), None, list(tokens)))
            made.append((d.drafter, d.k))
            accepted = rng_round.randint(0, d.k)
            session.on_round(RoundRecord(d.drafter, d.k, d.k, accepted, accepted + 1, len(tokens), 1e-4, 0.13))
            tokens += [rng_round.randrange(20) for _ in range(accepted + 1)]
        decisions[name] = made
    assert decisions[given] == decisions["reference"]
    assert any(drafter == "lookup" for drafter, _ in decisions["reference"])


def test_explicit_class_wins_over_classifier():
    class Fixed:
        def predict_one(self, prompt):
            return "predicted", 0.99

    p = AdaptivePolicy(cost_model(), AlphaEstimator(pair_id="test"), classifier=Fixed())
    assert p.start(RequestInfo(prompt="x", request_class="given")).request_class == "given"
    assert p.start(RequestInfo(prompt="x")).request_class == "predicted"


def test_speculation_off_and_max_k():
    p = policy()
    warm(p.estimator, "code", 0.95)
    assert p.start(RequestInfo(request_class="code", speculation="off")).decide(state()).k == 0
    assert p.start(RequestInfo(request_class="code", max_k=3)).decide(state()).k == 3


def slow_single_token_cost() -> CostModel:
    """A CPU like the reference machine in bf16: a 1-token forward is slower than a 2-token one."""
    target = CostTable(tokens=[1, 2, 4, 17], contexts=[100, 2000],
                       seconds=[[0.12, 0.10, 0.11, 0.16], [0.14, 0.13, 0.14, 0.19]])
    return cost_model().model_copy(update={"target": target})


@pytest.mark.parametrize("mode, slow_single, expected", [
    ("auto", True, PADDED_PLAIN_STEP), ("auto", False, PLAIN_STEP), ("on", False, PADDED_PLAIN_STEP),
    ("off", True, PLAIN_STEP)])  # fmt: skip
def test_plain_steps_are_padded_where_a_two_token_forward_is_cheaper(mode, slow_single, expected):
    cost = slow_single_token_cost() if slow_single else cost_model()
    p = AdaptivePolicy(cost, AlphaEstimator(pair_id="test"), ControllerConfig(pad_plain=mode))
    warm(p.estimator, "chat", 0.05)
    assert p.start(RequestInfo(request_class="chat")).decide(state()) == expected
    # speculation "off" is plain decoding as the user knows it: never padded
    assert p.start(RequestInfo(request_class="chat", speculation="off")).decide(state()) == PLAIN_STEP


@pytest.mark.parametrize("accept_rate", [0.05, 0.75, 0.8, 0.95])
def test_padding_changes_no_choice_between_drafting_and_not(accept_rate):
    """A padded plain step is still priced as a 1-token forward: padding makes the plain steps taken cheaper, it
    does not move the break-even a draft must clear (pricing it at the 2-token forward lost in replay)."""
    decisions = {}
    for mode in ("off", "auto"):
        p = AdaptivePolicy(slow_single_token_cost(), AlphaEstimator(pair_id="test"), ControllerConfig(pad_plain=mode))
        warm(p.estimator, "edge", accept_rate, rounds=400)
        decisions[mode] = p.start(RequestInfo(request_class="edge")).decide(state())
    if decisions["off"].k:
        assert decisions["auto"] == decisions["off"]
    else:
        assert (decisions["off"], decisions["auto"]) == (PLAIN_STEP, PADDED_PLAIN_STEP)


def test_padded_plain_steps_are_reported():
    p = AdaptivePolicy(slow_single_token_cost(), AlphaEstimator(pair_id="test"))
    session = p.start(RequestInfo(request_class="chat"))
    for accepted in (1, 0, 1):
        session.on_round(RoundRecord(NO_DRAFTER, 0, 0, 0, 1 + accepted, 100, 0.0, 0.1, guessed=1,
                                     guess_accepted=accepted))  # fmt: skip
    report = session.finish()
    assert report.extra["padded_plain"] == {"rounds": 3, "accepted": 2}
    assert report.decisions == {"plain": 3}


def test_decision_cost(benchmark=None):
    """Smoke check of the per-decision path (the timing goal itself is in benchmarks/decision_cost.py)."""
    p = policy()
    warm(p.estimator, "code", 0.8)
    session = p.start(RequestInfo(request_class="code"))
    for i in range(100):
        session.decide(state(100 + i, 10 + i))


def test_a_profiled_class_prior_starts_the_draft_on_cold():
    """Cold store: the generic prior keeps a costly draft off; the class's profiled prior turns it on at once."""
    pricey = cost_model().model_copy(update={"drafts": {"model": CostTable(tokens=[1, 128], contexts=[100], seconds=[[0.075, 0.1]])}})
    generic = AdaptivePolicy(pricey, AlphaEstimator(pair_id="test")).start(RequestInfo(request_class="math"))
    assert generic.decide(state()).k == 0
    profiled = ClassSettings(model=DraftSettings(threshold=0.7, max_k=8, prior_accepted=5.5, prior_proposed=6.0))
    config = ControllerConfig(classes={"math": profiled})
    session = AdaptivePolicy(pricey, AlphaEstimator(pair_id="test"), config).start(RequestInfo(request_class="math"))
    decision = session.decide(state())
    assert (decision.drafter, decision.k, decision.threshold) == ("model", 8, 0.7)
    assert session.profiled_prior("model") == (5.5, 6.0)


def test_a_profiled_prior_belongs_to_its_own_drafter():
    """The generic draft's profiled prior is not lent to a head that shares the class's knobs."""
    two = cost_model().model_copy(update={"drafts": {**cost_model().drafts, "head": cost_model().drafts["model"]}})
    settings = ClassSettings(model=DraftSettings(prior_accepted=5.5, prior_proposed=6.0),
                             drafters={"custom": DraftSettings(prior_accepted=1.0, prior_proposed=3.0)})  # fmt: skip
    config = ControllerConfig(classes={"math": settings})
    session = AdaptivePolicy(two, AlphaEstimator(pair_id="test"), config).start(RequestInfo(request_class="math"))
    assert session.profiled_prior("model") == (5.5, 6.0)
    assert session.profiled_prior("head") is None  # so the head starts from its rounds elsewhere, or the generic prior
    assert session.profiled_prior("custom") == (1.0, 3.0)


def with_cheap_head() -> CostModel:
    head = CostTable(tokens=[1, 32], contexts=[100, 2000], seconds=[[0.004, 0.006], [0.005, 0.007]])
    return cost_model().model_copy(update={"drafts": {**cost_model().drafts, "head": head}})


def head_round(proposed: int, accepted: int) -> RoundRecord:
    return RoundRecord("head", 4, proposed, accepted, accepted + 1, 100, 0.004 * proposed, 0.12, tuple([0.9] * proposed))


def test_a_drafter_new_to_a_class_is_priced_by_its_rounds_in_other_classes():
    """A cheap head looks good to a generic prior; once other classes have seen it accept little, a class that
    has never used it starts from those rounds (and decodes plainly) instead of paying to re-learn it."""
    head_only = ClassSettings(model=DraftSettings(enabled=False), drafters={"head": DraftSettings(max_k=4)})
    config = ControllerConfig(default=head_only)
    cold = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config)
    session = cold.start(RequestInfo(request_class="math"))
    assert session.decide(state()).drafter == "head"
    assert session.report.extra["class_side"] == {"head": "generic"}
    assert session.models["head"].weight == config.generic_prior_weight == 4.0  # a guess yields within a few rounds

    p = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config)
    for cls in ("chat", "translation"):
        for _ in range(40):
            p.estimator.observe(cls, head_round(4, 0))
    session = p.start(RequestInfo(request_class="math"))
    assert session.report.extra["class_side"] == {"head": "pooled"}
    head = session.models["head"]
    assert (head.class_accepted / head.weight, head.class_proposed / head.weight, head.weight) == (0.0, 4.0, 16.0)
    assert session.decide(state()).k == 0

    p.estimator.observe("math", head_round(4, 4))  # the class's own rounds come first
    assert p.start(RequestInfo(request_class="math")).report.extra["class_side"] == {"head": "class"}
    profiled = ControllerConfig(default=ClassSettings(model=DraftSettings(enabled=False),
                                                      drafters={"head": DraftSettings(max_k=4, prior_accepted=3.0,
                                                                                      prior_proposed=4.0)}))  # fmt: skip
    p2 = AdaptivePolicy(with_cheap_head(), p.estimator, profiled)
    assert p2.start(RequestInfo(request_class="qa")).report.extra["class_side"] == {"head": "profiled"}


def test_a_class_of_unlike_requests_yields_to_the_requests_own_rounds_sooner():
    """Half of a class's requests accept the head fully, half not at all (a class pooling traffic the head was
    trained on with traffic it was not): the class's mean says "draft", but its rounds count only as much as its
    requests agree, so a request that accepts nothing turns the (very cheap) head off within a few rounds, where
    the class's 16 rounds would keep it on for the whole request; a class of alike requests keeps its weight."""
    head_only = ClassSettings(model=DraftSettings(enabled=False), drafters={"head": DraftSettings(max_k=4)})

    def rounds_until_off(weigh: bool, accepted_by_request: list[int]) -> tuple[int, float]:
        config = ControllerConfig(default=head_only, weigh_by_spread=weigh)
        p = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test", half_life_tokens=None), config)
        for accepted in accepted_by_request:
            p.estimator.observe_request("stem", [head_round(4, accepted)] * 10)
        session = p.start(RequestInfo(request_class="stem"))
        weight = session.models["head"].weight
        for n in range(40):
            decision = session.decide(state())
            if decision.drafter != "head":
                return n, weight
            session.on_round(head_round(decision.k, 0))
        return 40, weight

    unlike = [4, 0, 4, 0]
    off_weighed, weight = rounds_until_off(True, unlike)
    off_counted, full = rounds_until_off(False, unlike)
    assert full == 16.0 and weight == 1.0  # requests at alpha 1 and 0: no agreement, the floor of one round
    assert off_weighed <= 8 and off_counted == 40  # counted fully, the class keeps a useless head on all along
    alike_off, alike_weight = rounds_until_off(True, [2, 2, 2, 2])
    assert alike_weight == 16.0  # requests agree: the class's rounds keep their weight

    config = ControllerConfig(default=head_only)
    p = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test", half_life_tokens=None), config)
    for accepted in unlike[:2]:  # two requests: too few to judge their spread
        p.estimator.observe_request("stem", [head_round(4, accepted)] * 10)
    assert p.start(RequestInfo(request_class="stem")).models["head"].weight == 16.0
    p.estimator.observe_request("stem", [head_round(4, 3)] * 10)
    session = p.start(RequestInfo(request_class="stem"))
    assert session.report.extra["class_weight"] == {"head": pytest.approx(session.models["head"].weight)}


def test_a_drafter_measured_at_training_starts_from_that_and_is_explored_on_other_classes():
    """A head trained on code traffic knows its code alpha (its held-out chain); on a class its traffic lacked it
    starts pessimistic, not from its rounds elsewhere (code's alpha says nothing about chat), and is tried
    ``explore_rounds`` times so the class gets rounds of its own; measured classes are not explored."""
    head_only = ClassSettings(model=DraftSettings(enabled=False), drafters={"head": DraftSettings(max_k=4)})
    config = ControllerConfig(default=head_only, explore_rounds=3, shadow_rounds=0)  # explored by drafting
    measured = {"head": {"code": [0.9, 0.8]}}
    p = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config, measured_alpha=measured)
    for _ in range(40):
        p.estimator.observe("code", head_round(4, 4))  # lent to other classes, these would make it look great

    session = p.start(RequestInfo(request_class="docs"))
    head = session.models["head"]
    assert session.report.extra["class_side"] == {"head": "unseen"}
    a = config.prior_unseen_accept
    assert head.class_accepted / head.weight == pytest.approx(a + a**2 + a**3 + a**4)
    assert (head.class_proposed / head.weight, head.weight) == (4.0, config.generic_prior_weight)
    decisions = []
    for _ in range(6):
        decision = session.decide(state())
        decisions.append((decision.drafter, decision.k))
        proposed = decision.k
        session.on_round(RoundRecord(decision.drafter, decision.k, proposed, 0, 1, 100, 0.004 * proposed, 0.12,
                                     tuple([0.9] * proposed)) if proposed else plain_round())  # fmt: skip
    assert decisions == [("head", config.probe_k)] * 3 + [(NO_DRAFTER, 0)] * 3  # tried, then judged on its rounds
    assert p.estimator.estimate("docs", "head").rounds == pytest.approx(3, abs=1e-3)  # the class's own (decayed)
    assert p.start(RequestInfo(request_class="docs")).models["head"].explore_left == 0

    p_code = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config, measured_alpha=measured)  # cold
    session = p_code.start(RequestInfo(request_class="code"))
    head = session.models["head"]
    assert session.report.extra["class_side"] == {"head": "measured"}
    assert head.class_accepted / head.weight == pytest.approx(0.9 + 0.72 + 0.576 + 0.4608)
    assert head.explore_left == 0
    assert session.decide(state()) == head.decision

    with pytest.raises(ValueError, match="class 'code'"):
        AdaptivePolicy(with_cheap_head(), config=config, measured_alpha={"head": {"code": [0.5, float("nan")]}})


def test_a_few_class_rounds_are_shrunk_towards_the_drafters_prior():
    """Two bad rounds of one request must not settle a class's estimate of a drafter (priced below the others,
    it would never run there again): until the class has ``prior_weight`` rounds of it, its rounds are blended
    with what the drafter was expected to do without them (here the head's measured chain), as
    ``generic_prior_weight`` rounds; past that, the class's rounds alone."""
    head_only = ClassSettings(model=DraftSettings(enabled=False), drafters={"head": DraftSettings(max_k=4)})
    config = ControllerConfig(default=head_only, prior_weight=16, generic_prior_weight=4)
    measured = {"head": {"code": [0.8]}}
    chain = 0.8 + 0.8**2 + 0.8**3 + 0.8**4
    p = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test", half_life_tokens=None), config,
                       measured_alpha=measured)  # fmt: skip
    for _ in range(2):
        p.estimator.observe("code", head_round(4, 0))
    session = p.start(RequestInfo(request_class="code"))
    head = session.models["head"]
    assert session.report.extra["class_side"] == {"head": "class"}
    assert head.weight == pytest.approx(6.0)
    assert head.class_accepted / head.weight == pytest.approx(4 * chain / 6)
    assert head.class_proposed / head.weight == pytest.approx(4.0)
    first = p.estimator.estimate("code", "head").positions[0].mean
    assert head.class_alpha1 == pytest.approx((2 * first + 4 * 0.8) / 6)

    for _ in range(18):
        p.estimator.observe("code", head_round(4, 0))
    head = p.start(RequestInfo(request_class="code")).models["head"]
    assert head.weight == pytest.approx(16.0) and head.class_accepted == 0.0


def test_a_cheap_drafter_new_to_a_class_is_scored_by_shadow_tokens_not_rounds():
    """A head with no rounds in a class starts pessimistic; instead of rounds drafted with it, its first token is
    asked beside ``shadow_rounds`` rounds of whatever else runs (here plain steps), during which it sits out (a
    cheap drafter priced at a guess must not win rounds, nor set off exploring the others), then it is priced from
    the hits: a head the target agrees with is chosen, one it does not is left off without a round spent on it.
    The class keeps the tally, so its next request starts from it without shadows; sampled requests, and
    drafters too dear for it, explore by drafting as before."""
    head_only = ClassSettings(model=DraftSettings(enabled=False), drafters={"head": DraftSettings(max_k=4)})
    config = ControllerConfig(default=head_only, shadow_rounds=4, explore_rounds=3, prior_unseen_accept=0.05)
    measured = {"head": {"code": [0.9, 0.8]}}

    def run(p: AdaptivePolicy, hit: int, rounds: int = 8) -> tuple[list, object]:
        session = p.start(RequestInfo(request_class="docs"))
        decisions = []
        for _ in range(rounds):
            d = session.decide(state())
            decisions.append((d.drafter, d.k, d.shadow))
            if d.drafter == "head":
                session.on_round(head_round(d.k, min(d.k, 3 * hit)))
            else:
                session.on_round(RoundRecord(NO_DRAFTER, 0, 0, 0, 1, 100, 0.0, 0.1, shadow=d.shadow,
                                             shadow_hit=hit if d.shadow else 0))  # fmt: skip
        return decisions, session

    agreeing = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config, measured_alpha=measured)
    decisions, session = run(agreeing, hit=1)
    assert session.report.extra["class_side"] == {"head": "unseen"}
    assert decisions[:4] == [(NO_DRAFTER, 0, "head")] * 4  # scored beside plain steps, sitting out meanwhile...
    assert all(d == "head" and not shadow for d, _, shadow in decisions[4:])  # ... then drafted with
    shadows = agreeing.estimator.estimate("docs", "head.shadow")
    assert shadows.draft_tokens == pytest.approx(4, abs=1e-3) and shadows.accepted_tokens == pytest.approx(4, abs=1e-3)

    useless = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config, measured_alpha=measured)
    decisions, _ = run(useless, hit=0)
    assert decisions == [(NO_DRAFTER, 0, "head")] * 4 + [(NO_DRAFTER, 0, "")] * 4  # never drafted with

    decisions, session = run(useless, hit=0)  # the class's tally stands: no more shadows
    assert session.report.extra["class_side"] == {"head": "shadow"} and all(s == "" for _, _, s in decisions)

    sampled = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config, measured_alpha=measured)
    session = sampled.start(RequestInfo(request_class="docs", do_sample=True))
    assert session.decide(state()) == session.models["head"].probe  # explored by drafting
    dear = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config.model_copy(
        update={"shadow_max_cost": 0.01}), measured_alpha=measured)  # fmt: skip
    assert dear.start(RequestInfo(request_class="docs")).models["head"].explore_left == 3


class _KeywordClassifier:
    """Stands in for the policy's classifier: "def" prompts are "coding", "poem" ones "writing", the rest "qa"."""

    def predict_one(self, prompt: str) -> tuple[str, float]:
        return ("coding" if "def " in prompt else "writing" if "poem" in prompt else "qa"), 0.9


def test_measured_classes_are_aligned_with_the_classifiers():
    """The head's traffic was labelled "code"; the classifier calls those prompts "coding": requests classed
    "coding" start from the measured chain (no exploration), not from the pessimistic unseen guess. A class with
    its own measurement keeps it, a minority label lends nothing, and without a classifier nothing is aligned."""
    head_only = ClassSettings(model=DraftSettings(enabled=False), drafters={"head": DraftSettings(max_k=4)})
    config = ControllerConfig(default=head_only)
    code = [f"def f{i}(x): return x" for i in range(5)]
    prompts = {"code": code, "chat": ["def a(): pass", "write a poem", "a poem"], "unmeasured": code}
    measured = {"head": {"code": [0.9, 0.8], "chat": [0.3], "writing": [0.1]}}

    p = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config, _KeywordClassifier(),
                       measured_alpha=measured)  # fmt: skip
    assert p.start(RequestInfo(request_class="coding")).report.extra["class_side"] == {"head": "unseen"}
    assert p.align_measured_alpha("head", prompts) == {"coding": "code"}  # chat's home "writing" has its own
    assert p.measured_alpha["head"]["coding"] == (0.9, 0.8) and p.measured_alpha["head"]["writing"] == (0.1,)
    session = p.start(RequestInfo(request_class="coding"))
    assert session.report.extra["class_side"] == {"head": "measured"}
    assert session.models["head"].explore_left == 0
    assert session.models["head"].class_accepted / session.models["head"].weight == pytest.approx(
        0.9 + 0.72 + 0.576 + 0.4608)

    minority = {"head": {"code": [0.9]}}
    p = AdaptivePolicy(with_cheap_head(), config=config, classifier=_KeywordClassifier(), measured_alpha=minority)
    assert p.align_measured_alpha("head", {"code": code[:2] + ["a poem", "poem", "c"]}) == {}  # 2 of 5 at most
    assert AdaptivePolicy(with_cheap_head(), config=config, measured_alpha=minority).align_measured_alpha(
        "head", {"code": code}) == {}  # fmt: skip
    assert p.align_measured_alpha("other", {"code": code}) == {}


def test_a_request_far_below_its_class_tries_the_other_drafters():
    """The class says the cheap head is accepted well, this request accepts none of it (a request unlike its
    class): once its own rounds are clearly below the class's, the model draft it has not run is tried for
    ``explore_rounds`` rounds, once per request, and the class's estimate of the head counts as a guess from then
    on; a request like its class, or a single drafter, is left alone."""
    both = ClassSettings(model=DraftSettings(max_k=4), drafters={"head": DraftSettings(max_k=4)})
    config = ControllerConfig(default=both, explore_rounds=2, surprise_min_tokens=8)
    p = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config)
    for _ in range(40):
        p.estimator.observe("math", head_round(4, 3))
        p.estimator.observe("math", model_round(4, 1))  # the class prefers the head

    def run(accepted: int, rounds: int = 12):
        session = p.start(RequestInfo(request_class="math"))
        drafters = []
        for _ in range(rounds):
            d = session.decide(state())
            drafters.append(d.drafter)
            if d.drafter == "head":
                session.on_round(head_round(d.k, min(accepted, d.k)))
            else:
                session.on_round(model_round(d.k, min(3, d.k)))
        return session, drafters

    unlike, drafters = run(accepted=0)
    assert drafters[:2] == ["head", "head"] and drafters.count("model") >= 2
    first_model = drafters.index("model")
    assert drafters[first_model: first_model + 2] == ["model", "model"]  # the probes, k = probe_k
    assert unlike.report.extra["surprise"]["drafter"] == "head"
    head = unlike.models["head"]  # the class's estimate, refuted for this request, now counts as a guess
    assert head.weight == config.generic_prior_weight
    assert head.class_accepted / head.weight == pytest.approx(3.0) and head.class_proposed / head.weight == 4.0
    like, drafters = run(accepted=3)
    assert "surprise" not in like.report.extra and set(drafters) == {"head"}

    alone = AdaptivePolicy(with_cheap_head(), p.estimator, config, model_drafters=["head"])
    session = alone.start(RequestInfo(request_class="math"))
    for _ in range(12):
        session.on_round(head_round(session.decide(state()).k, 0))
    assert "surprise" not in session.report.extra


def drive(session, rounds: int, head_accepts: int, model_accepts: int, shadow_hit: int = 0) -> list[str]:
    """``rounds`` decisions, each fed the round it asked for (the head's or the draft's leading proposals accepted
    up to the given count, a shadow token hitting per ``shadow_hit``): "drafter" or "drafter+shadow" per round."""
    out = []
    for _ in range(rounds):
        d = session.decide(state())
        out.append(d.drafter + (f"+{d.shadow}" if d.shadow else ""))
        if d.drafter == "head":
            record = head_round(d.k, min(head_accepts, d.k))
        else:
            record = model_round(d.k, min(model_accepts, d.k))
        session.on_round(dataclasses.replace(record, shadow=d.shadow, shadow_hit=shadow_hit if d.shadow else 0))
    return out


def test_a_drafter_priced_close_to_the_best_is_tried_once_per_request():
    """The class prices the head a little above the model draft: with ``explore_within`` a request tries the
    draft (``explore_rounds`` probes, once) and keeps it where its own rounds are accepted in full, returns to the
    head where they are not; without the margin, or with one the draft's price misses, it never runs the draft.
    Once the draft is best, the head is the one priced close to it: being cheap, it is tried by shadow tokens
    beside the draft's rounds (``shadow_rounds``, here missing every time), not by rounds drafted with it."""
    both = ClassSettings(model=DraftSettings(max_k=4), drafters={"head": DraftSettings(max_k=4)})

    def drafters_of(explore_within: float, model_accepts: bool) -> list[str]:
        config = ControllerConfig(default=both, explore_rounds=4, probe_k=4, prior_weight=4,
                                  explore_within=explore_within, shadow_rounds=3)  # fmt: skip
        p = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config)
        for _ in range(40):
            p.estimator.observe("math", head_round(4, 1))
            p.estimator.observe("math", model_round(4, 3))  # priced at 0.92 of the head
        return drive(p.start(RequestInfo(request_class="math")), 10, head_accepts=1, model_accepts=4 * model_accepts)

    assert drafters_of(0.0, True) == ["head"] * 10
    assert drafters_of(0.05, True) == ["head"] * 10
    kept = drafters_of(0.2, True)
    assert kept == ["model"] + ["model+head"] * 3 + ["model"] * 6
    left = drafters_of(0.2, False)
    assert left[:4] == ["model"] * 4 and left[4:] == ["head"] * 6


@pytest.mark.parametrize("hits", [1, 0])
def test_a_cheap_drafter_priced_close_to_the_best_is_scored_in_the_request_by_shadow_tokens(hits):
    """The class prices the cheap head a little below the model draft (its first token accepted 0.4 of the time):
    a greedy request scores the head by ``shadow_rounds`` shadow tokens beside the draft's rounds, then rescales
    the class's estimate by how its own shadows compare with the class's first-position acceptance: hitting, the
    head takes over as soon as it is priced above the draft; all missing, the draft keeps the request. Under
    sampling (no shadows), the head is explored by drafting instead."""
    both = ClassSettings(model=DraftSettings(max_k=4), drafters={"head": DraftSettings(max_k=4)})
    config = ControllerConfig(default=both, explore_rounds=4, probe_k=4, prior_weight=4, explore_within=0.3,
                              shadow_rounds=4)  # fmt: skip

    def run(do_sample: bool = False) -> list[str]:
        p = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config)
        for i in range(40):
            p.estimator.observe("math", head_round(4, 2 if i % 5 < 2 else 0))
            p.estimator.observe("math", model_round(4, 3))
        session = p.start(RequestInfo(request_class="math", do_sample=do_sample))
        return drive(session, 10, head_accepts=2, model_accepts=3, shadow_hit=hits)

    if hits:  # priced above the draft after its first hit: drafted with from then on
        assert run() == ["model+head"] + ["head"] * 9
    else:
        assert run() == ["model+head"] * 4 + ["model"] * 6
    sampled = run(do_sample=True)
    assert sampled[0] == "head" and not any("+" in d for d in sampled)  # explored by drafting, no shadow asked


def plain_round(context: int = 100) -> RoundRecord:
    return RoundRecord(NO_DRAFTER, 0, 0, 0, 1, context, 0.0, 0.1, ())


def test_pooled_statistics_are_cached_and_a_store_outage_falls_back_to_the_generic_prior():
    from adaptive_spec.stats import MemoryStatsStore

    class Flaky(MemoryStatsStore):
        reads, fail = 0, False

        def snapshot(self, *args, **kwargs):
            Flaky.reads += 1
            if Flaky.fail:
                raise ConnectionError("store down")
            return super().snapshot(*args, **kwargs)

    head_only = ClassSettings(model=DraftSettings(enabled=False), drafters={"head": DraftSettings(max_k=4)})
    config = ControllerConfig(default=head_only, pooled_refresh_s=3600)
    p = AdaptivePolicy(with_cheap_head(), AlphaEstimator(Flaky(), pair_id="test"), config)
    p.estimator.observe("chat", head_round(4, 1))
    for cls in ("a", "b", "c"):
        assert p.start(RequestInfo(request_class=cls)).report.extra["class_side"] == {"head": "pooled"}
    assert Flaky.reads == 1  # one scan serves every request within pooled_refresh_s

    Flaky.fail = True
    p = AdaptivePolicy(with_cheap_head(), AlphaEstimator(Flaky(), pair_id="test"), config)
    session = p.start(RequestInfo(request_class="a"))
    assert session.report.extra["class_side"] == {"head": "generic"}
    assert session.decide(state()).drafter == "head"


def test_estimated_speedup_is_measured_against_this_machines_speed():
    """Plain steps only: 1.0, however much faster or slower the machine runs than when it was calibrated; drafted
    rounds are compared with plain steps at the speed this request's verify forwards actually ran."""
    for slowdown in (0.5, 1.0, 2.0):
        session = policy().start(RequestInfo(request_class="chat", speculation="off"))
        for i in range(20):
            session.decide(state(100 + i))
            session.on_round(RoundRecord("none", 0, 0, 0, 1, 100 + i, 0.0, 0.1 * slowdown))
        assert session.finish().extra["estimated_speedup"] == pytest.approx(1.0)

        session = policy().start(RequestInfo(request_class="chat", speculation="on"))
        session.decide(state())
        verify = session.costs.verify
        session.on_round(RoundRecord("model", 4, 4, 3, 4, 100, 0.16 * slowdown, verify[5] * slowdown))
        expected = 4 * verify[1] / (0.16 + verify[5])  # 4 tokens for one round vs 4 plain steps, at either speed
        assert session.finish().extra["estimated_speedup"] == pytest.approx(expected)


@pytest.mark.parametrize("fields, message", [({"prior_accepted": 2.0}, "together"),
                                             ({"prior_accepted": 3.0, "prior_proposed": 2.0}, "prior_accepted 3.0 >")])
def test_bad_profiled_priors_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        DraftSettings(**fields)


def test_round_cost_tables_match_the_cost_model():
    """What a decision reads from its per-context tables is what the cost model says, catch-up included."""
    from adaptive_spec.policy.controller import _RoundCosts

    cost = cost_model()
    for context in (100, 777, 3000):
        costs = _RoundCosts.at(cost, context, 64)
        assert list(costs.verify[1:]) == [cost.verify_s(n, context) for n in range(1, 66)]
        for proposed in (1, 3, 8):
            for catchup in (1, 2, 5, 40, 64, 65, 200):
                for amortize in (1.0, 4.0):
                    first = cost.draft_s(1, context, catchup)
                    if catchup > 2:  # a long catch-up is a one-off, spread over `amortize` rounds
                        first = cost.draft_s(1, context) + (first - cost.draft_s(1, context)) / amortize
                    expected = first + (proposed - 1) * cost.draft_s(1, context) + cost.verify_s(proposed + 1, context)
                    got = costs.model_round("model", proposed, catchup, amortize=amortize)
                    assert got == pytest.approx(expected, rel=1e-12)


def test_a_catch_up_is_spread_over_the_rounds_left_in_the_request():
    """A draft that has not seen the context pays a one-off catch-up, worth it for the rounds that follow: near the
    end of a request it counts whole, early on it is spread over the rounds left, at most ``catchup_amortize``."""
    p = policy(ControllerConfig(catchup_amortize=16))
    warm(p.estimator, "code", 0.7)
    session = p.start(RequestInfo(request_class="code"))
    session.decide(state(1000))  # the tables at context 1000; the draft has seen none of it
    model = session.models["model"]
    rate = {left: session._model_rate(model, 1000, left) for left in (1, 10, 40, 10_000, 100_000)}
    assert rate[1] < rate[10] < rate[40] < rate[10_000] == rate[100_000]
    model.true_len = 999  # caught up: what is left no longer matters
    assert session._model_rate(model, 1000, 1) == session._model_rate(model, 1000, 10_000)


def test_lookup_extension_rides_on_model_decisions_and_is_reported():
    """``lookup_extension`` asks the engine to let prompt lookup continue a model draft; never where lookup is off
    for the class or speculation is off; the extension's rounds are reported apart from the draft's acceptance."""
    p = policy(ControllerConfig(lookup_extension=4))
    warm(p.estimator, "code", 0.95)
    session = p.start(RequestInfo(request_class="code"))
    decision = session.decide(state())
    assert decision.drafter == "model" and decision.extend == 4
    extended = RoundRecord("model", 16, 8, 8, 12, 100, 0.3, 0.13, tuple([0.9] * 8), extension=4, extension_accepted=3)
    session.on_round(extended)
    report = session.finish()
    assert report.accepted == 8 and report.proposed == 8  # the draft's own acceptance
    assert report.extra["lookup_extension"] == {"rounds": 1, "proposed": 4, "accepted": 3}

    no_lookup = ControllerConfig(lookup_extension=4, classes={"code": ClassSettings(use_lookup=False)})
    p = policy(no_lookup)
    warm(p.estimator, "code", 0.95)
    assert p.start(RequestInfo(request_class="code")).decide(state()).extend == 0
    assert policy().start(RequestInfo(request_class="code")).decide(state()).extend == 0  # off by default
    with pytest.raises(ValueError):
        ControllerConfig(lookup_extension=-1)


def test_siblings_ride_on_model_decisions_and_are_reported():
    """``sibling_below`` asks the engine to verify the draft's second choices (greedy); it rides on every model-type
    decision, probes included, never on a request with speculation off; the report counts the siblings apart."""
    p = policy(ControllerConfig(sibling_below=0.8))
    warm(p.estimator, "code", 0.95)
    session = p.start(RequestInfo(request_class="code"))
    decision = session.decide(state())
    assert decision.drafter == "model" and decision.sibling_below == 0.8
    rescued = RoundRecord("model", 16, 4, 2, 4, 100, 0.3, 0.13, (0.9, 0.9, 0.5, 0.6), siblings=2, sibling_accepted=1)
    session.on_round(rescued)
    report = session.finish()
    assert report.accepted == 2 and report.proposed == 4  # the draft's own acceptance
    assert report.extra["siblings"] == {"rounds": 1, "verified": 2, "accepted": 1}
    assert policy().start(RequestInfo(request_class="code")).decide(state()).sibling_below == 0.0  # off by default
    off = p.start(RequestInfo(request_class="code", speculation="off"))
    assert off.decide(state()) == PLAIN_STEP
    sampled = p.start(RequestInfo(request_class="code", do_sample=True)).decide(state())
    assert sampled.drafter == "model" and sampled.sibling_below == 0.0  # greedy only: not asked when sampling
    with pytest.raises(ValueError):
        ControllerConfig(sibling_below=1.5)


def test_siblings_are_priced_from_the_requests_own_rounds():
    """A model round's expected tokens include the siblings it gets accepted: the request's own rounds, blended with
    a cold-start prior, move the price; without siblings asked the price is the plain one."""
    p = policy(ControllerConfig(sibling_below=0.9))
    warm(p.estimator, "code", 0.7)
    lucky, unlucky = (p.start(RequestInfo(request_class="code")) for _ in range(2))
    for session, accepted in ((lucky, 1), (unlucky, 0)):
        session.decide(state())
        for _ in range(8):
            session.on_round(RoundRecord("model", 16, 4, 2, 3 + accepted, 100, 0.3, 0.13, (0.9, 0.9, 0.5, 0.6),
                                         siblings=2, sibling_accepted=accepted))  # fmt: skip
    rate = lambda session: session._model_rate(session.models["model"], 140, 100)  # noqa: E731
    assert rate(lucky) > rate(unlucky)
    plain = policy()
    warm(plain.estimator, "code", 0.7)
    unpriced = plain.start(RequestInfo(request_class="code"))
    unpriced.decide(state())
    fresh = p.start(RequestInfo(request_class="code"))
    fresh.decide(state())
    assert rate(fresh) != rate(unpriced)


def test_a_drafter_that_loses_is_not_repriced_until_something_it_depends_on_changes():
    """Decisions sit between target forwards, where every object touched is a cache miss: a model-type drafter
    priced below the best choice, that has not run since, only got dearer (its catch-up grew, fewer rounds are
    left to spread it over), so its rate is not recomputed; its own round, a shadow token or new round costs
    (context growth) re-price it."""
    both = ClassSettings(model=DraftSettings(max_k=4), drafters={"head": DraftSettings(max_k=4)})
    config = ControllerConfig(default=both, explore_within=0.0, refresh_tokens=64)
    p = AdaptivePolicy(with_cheap_head(), AlphaEstimator(pair_id="test"), config)
    for _ in range(40):
        p.estimator.observe("math", head_round(4, 0))  # loses to the draft
        p.estimator.observe("math", model_round(4, 4))
    session = p.start(RequestInfo(request_class="math"))
    priced = []
    full_price = session._model_rate
    session._model_rate = lambda model, *args: priced.append(model.name) or full_price(model, *args)

    assert session.decide(state(100)).drafter == "model" and priced == ["model", "head"]
    session.on_round(model_round(4, 4))
    priced.clear()
    assert session.decide(state(105)).drafter == "model" and priced == ["model"]  # the head only got dearer
    session.on_round(head_round(4, 0))
    priced.clear()
    session.decide(state(110))
    assert priced == ["model", "head"]  # its own round changed the head's price
    session.on_round(model_round(4, 4))
    priced.clear()
    session.decide(state(180))  # the context grew past refresh_tokens: new round costs, everything re-priced
    assert priced == ["model", "head"]
