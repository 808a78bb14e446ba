"""Costs corrected by measured round times: a policy calibrated on one machine, run on another."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
import torch

from adaptive_spec.engine import RoundState
from adaptive_spec.generator import policy_from_file
from adaptive_spec.policy.base import FixedPolicy, RequestInfo
from adaptive_spec.policy.controller import AdaptivePolicy, ControllerConfig
from adaptive_spec.policy.cost import CostTable
from adaptive_spec.policy.cost_tracking import CostTracker, bucket
from adaptive_spec.policy.file import load_policy_file
from adaptive_spec.records import RoundRecord
from adaptive_spec.stats import AlphaEstimator
from adaptive_spec.traces.format import read_traces
from adaptive_spec.traces.simulate import replay
from tests.test_policy_controller import cost_model, warm

ROOT = Path(__file__).resolve().parents[1]


def linear_verify(width: int) -> float:
    """A machine where a forward costs its tokens one by one (an AVX2-only CPU in bf16): 0.1 s a token, where the
    calibration (``cost_model``) says 0.1 s for 1 token and 0.13 s for 8."""
    return 0.1 * width


def round_of(proposed: int, verify_s: float, draft_s: float = 0.0, catchup: int = 0, context: int = 100,
             drafter: str = "model") -> RoundRecord:  # fmt: skip
    return RoundRecord(drafter if proposed else "none", proposed, proposed, proposed, proposed + 1, context, draft_s,
                       verify_s, catchup=catchup)  # fmt: skip


def test_times_within_tolerance_keep_the_calibration():
    cost = cost_model()
    tracker = CostTracker(cost, tolerance=0.25)
    for i in range(200):
        proposed = i % 6
        tracker.observe(round_of(proposed, 1.15 * cost.target(proposed + 1, 100), 0.04 * proposed))
    assert tracker.cost is cost


def test_two_measured_widths_price_every_width_on_a_machine_where_time_grows_with_tokens():
    """Rounds of 3 and 5 tokens only: the plain step and a 16-token forward are extrapolated along their line."""
    tracker = CostTracker(cost_model())
    for i in range(40):
        proposed = 2 if i % 2 else 4
        tracker.observe(round_of(proposed, linear_verify(proposed + 1), 0.04 * proposed))
    cost = tracker.cost
    assert cost is not tracker.calibrated
    assert cost.target(1, 100) == pytest.approx(0.1, rel=0.05)
    assert cost.target(4, 100) == pytest.approx(0.4, rel=0.05)
    assert cost.target(16, 100) == pytest.approx(1.6, rel=0.05)
    assert cost.target(16, 2000) > cost.target(16, 100)  # the calibrated context scaling stays
    assert cost.draft_s(1, 100) == pytest.approx(tracker.calibrated.draft_s(1, 100), rel=0.05)  # steps were right


def test_the_first_correction_is_a_warning_naming_the_fix():
    tracker = CostTracker(cost_model())
    with structlog.testing.capture_logs() as events:
        for i in range(40):
            proposed = 2 if i % 2 else 4
            tracker.observe(round_of(proposed, linear_verify(proposed + 1), 0.04 * proposed))
    corrections = [e for e in events if e["event"] == "cost_model_corrected"]
    assert corrections[0]["log_level"] == "warning" and "calibrate" in corrections[0]["hint"]
    assert corrections[0]["verify_ms"][16] == pytest.approx(1600, rel=0.05)
    assert all(e["log_level"] == "info" for e in corrections[1:])


def test_a_draft_catch_up_is_measured_apart_from_its_steps():
    """The draft's single steps match the calibration; its catch-up forwards (here, prompts of 200 tokens) cost
    their tokens one by one, where the calibration says 0.06 s for 32 tokens."""
    calibrated = cost_model()
    tracker = CostTracker(calibrated)
    step = calibrated.draft_s(1, 100)
    for i in range(40):
        if i % 4 == 0:
            tracker.observe(round_of(3, 0.12, draft_s=0.04 * 200 + 2 * step, catchup=200))
        else:
            tracker.observe(round_of(3, 0.12, draft_s=3 * step, catchup=1))
    draft = tracker.cost.drafts["model"]
    assert draft(200, 100) == pytest.approx(8.0, rel=0.1)
    assert draft(1, 100) == pytest.approx(calibrated.drafts["model"](1, 100), rel=0.05)


def test_back_within_tolerance_the_calibration_stands_again():
    calibrated = cost_model()
    tracker = CostTracker(calibrated, half_life_rounds=16)
    drafting = calibrated.draft_s(4, 100)
    for _ in range(40):
        tracker.observe(round_of(4, linear_verify(5), drafting))
    assert tracker.cost is not calibrated
    for _ in range(400):
        tracker.observe(round_of(4, calibrated.target(5, 100), drafting))
    assert tracker.cost is calibrated


def test_long_forwards_share_geometric_buckets():
    assert [bucket(w) for w in (1, 17, 18, 23, 200, 210, 1000)] == [1, 17, 16, 23, 181, 181, 1024]


def _run_request(policy: AdaptivePolicy, rounds: int):
    """Rounds priced by the linear machine, 80% of each draft accepted: the k of each decision, and the report."""
    session = policy.start(RequestInfo(request_class="code"))
    ks = []
    for i in range(rounds):
        decision = session.decide(RoundState(10 + i, 400, torch.arange(100 + i), None))
        proposed = decision.k
        accepted = int(proposed * 0.8)
        session.on_round(RoundRecord(decision.drafter if proposed else "none", proposed, proposed, accepted,
                                     accepted + 1, 100 + i, 0.04 * proposed, linear_verify(proposed + 1)))  # fmt: skip
        ks.append(proposed)
    return ks, session.finish()


@pytest.mark.parametrize("track", [True, False])
def test_a_policy_calibrated_elsewhere_stops_drafting_where_rounds_cost_their_tokens(track):
    """An 8-token draft, 80% accepted, returns 7.4 tokens for 12 plain steps' time on the linear machine (1.4 for 1.3
    as calibrated): a tracking controller learns it in its first rounds and decodes plainly (bar bounded probes);
    an untracked one keeps drafting."""
    estimator = AlphaEstimator(pair_id="test")
    warm(estimator, "code", 0.9)
    policy = AdaptivePolicy(cost_model(), estimator, ControllerConfig(track_costs=track))
    ks, report = _run_request(policy, 120)
    assert ks[0] > 0  # the calibration says drafting pays
    assert ("costs" in report.extra) is track  # a request priced with corrected costs says so
    drafting_late = sum(k > 0 for k in ks[60:])
    if track:
        assert drafting_late <= 3, ks
    else:
        assert drafting_late > 50, ks


def linear_machine(calibrated):
    """``calibrated``'s tables as on a CPU where forwards cost their tokens one by one (from 1.4x its plain step),
    prompt prefills included."""
    plain = calibrated.target(1, 128)
    return calibrated.model_copy(update={
        "target": CostTable(tokens=[1, 16], contexts=[128, 1024], seconds=[[1.4 * plain, 16 * 1.4 * plain],
                                                                            [1.5 * plain, 16 * 1.5 * plain]]),
        "prefill": CostTable(tokens=[32, 1024], contexts=[0], seconds=[[32 * 1.3 * plain, 1024 * 1.4 * plain]]),
        "drafts": {name: CostTable(tokens=t.tokens, contexts=t.contexts,
                                   seconds=[[row[0] * 2 * n for n in t.tokens] for row in t.seconds])
                   for name, t in calibrated.drafts.items()},
    })  # fmt: skip


def committed_policy_and_one_trace_per_class():
    policy_file = load_policy_file(ROOT / "policies" / "qwen2.5-coder-cpu.json")
    traces = read_traces(ROOT / "notebooks" / "data" / "traces_small.jsonl", pair_id=policy_file.pair_id)
    return policy_file, list({t.request_class: t for t in traces}.values())


def test_replayed_on_a_machine_unlike_its_calibration_the_default_policy_stays_near_plain_speed():
    """The committed policy, its decisions priced by its own (AVX-512) calibration, its time charged as on a CPU
    where forwards cost their tokens one by one: one request of each class in turn. The first request pays for
    the lesson; every later one runs at plain speed."""
    policy_file, one_per_class = committed_policy_and_one_trace_per_class()
    slow = linear_machine(policy_file.cost)
    plain_s = [replay(t, FixedPolicy(), slow, 128).decode_s for t in one_per_class]

    def speeds(track: bool) -> list[float]:
        config = policy_file.controller.model_copy(update={"track_costs": track})
        policy = policy_from_file(policy_file.model_copy(update={"controller": config}))
        return [s / replay(t, policy, slow, 128).decode_s for t, s in zip(one_per_class, plain_s)]

    untracked, tracked = speeds(False), speeds(True)
    assert sum(untracked) / len(untracked) < 0.85
    assert min(tracked[1:]) > 0.98, tracked
    assert sum(tracked) / len(tracked) > 0.93


def test_replayed_on_a_machine_faster_than_its_calibration_the_default_policy_recovers_its_speedup():
    """The mirror case: decisions priced as on the linear machine, time charged by the committed (AVX-512) table,
    where wide forwards and the draft's catch-ups cost far less. The controller must try what the calibration
    prices high to learn it is cheap: an unmeasured draft is assumed to scale like the target, and widths past
    the widest measured are priced no higher than it."""
    policy_file, one_per_class = committed_policy_and_one_trace_per_class()
    fast = policy_file.cost
    plain_s = [replay(t, FixedPolicy(), fast, 128).decode_s for t in one_per_class]

    def speed(decide_with, track: bool) -> float:
        config = policy_file.controller.model_copy(update={"track_costs": track})
        policy = policy_from_file(policy_file.model_copy(update={"controller": config, "cost": decide_with}))
        return sum(s / replay(t, policy, fast, 128).decode_s for t, s in zip(one_per_class, plain_s))

    calibrated_there = speed(fast, True)
    assert speed(linear_machine(fast), False) < 0.7 * calibrated_there
    assert speed(linear_machine(fast), True) > 0.95 * calibrated_there


def linear_calibration():
    """``cost_model`` with a verify that costs its tokens one by one: 0.1 s for 1 token, 1.6 s for 16."""
    calibrated = cost_model()
    linear = CostTable(tokens=[1, 16], contexts=[100, 2000], seconds=[[0.1, 1.6], [0.12, 1.9]])
    return calibrated.model_copy(update={"target": linear})


def test_past_the_widest_measured_width_a_faster_machine_is_priced_no_higher_than_it():
    """Calibrated linear, measured flat at 2 and 3 tokens: 16 tokens are priced at the 3-token time (growing as
    calibrated would keep wide rounds untried, so never measured), until a wide forward is measured."""
    tracker = CostTracker(linear_calibration())
    for i in range(40):
        tracker.observe(round_of(1 + i % 2, 0.1, 0.04, drafter="lookup"))
    assert tracker.cost.target(16, 100) == pytest.approx(0.1, rel=0.05)
    assert tracker.cost.target(1, 100) == pytest.approx(0.1, rel=0.05)
    for _ in range(16):  # a refit's worth of rounds
        tracker.observe(round_of(15, 0.3, 0.04, drafter="lookup"))
    assert tracker.cost.target(16, 100) == pytest.approx(0.3, rel=0.1)


@pytest.mark.parametrize("step_ratio", [None, 0.5])
def test_a_draft_not_measured_apart_is_shaped_like_the_target(step_ratio):
    """Target forwards measured on a linear machine, the draft's catch-ups never: they are corrected by the
    target's factor at their width (constant past the target's widest column). Where its single steps are
    measured, those set the level."""
    calibrated = cost_model()
    tracker = CostTracker(calibrated)
    step = calibrated.draft_s(1, 100)
    for i in range(40):
        proposed = 2 if i % 2 else 4
        drafter, draft_s = ("model", step_ratio * proposed * step) if step_ratio else ("lookup", 1e-4)
        tracker.observe(round_of(proposed, linear_verify(proposed + 1), draft_s, catchup=1, drafter=drafter))
    cost, draft, calibrated_draft = tracker.cost, tracker.cost.drafts["model"], calibrated.drafts["model"]
    target_factor = cost.target(17, 100) / calibrated.target(17, 100)
    assert target_factor > 5
    level = step_ratio / (cost.target(1, 100) / calibrated.target(1, 100)) if step_ratio else 1.0
    assert draft(32, 100) / calibrated_draft(32, 100) == pytest.approx(level * target_factor, rel=0.05)
    assert draft(1, 100) == pytest.approx((step_ratio or 1.0) * calibrated_draft(1, 100), rel=0.05)


def test_a_drafter_is_shadow_scored_as_cheap_only_while_its_measured_steps_are():
    """A head calibrated at 5% of a target forward is scored by shadow tokens; measured at ten times that, it is
    priced like any drafter."""
    calibrated = cost_model()
    head = CostTable(tokens=[1, 32], contexts=[100, 2000], seconds=[[0.005, 0.01], [0.006, 0.012]])
    calibrated = calibrated.model_copy(update={"drafts": {**calibrated.drafts, "head": head}})
    policy = AdaptivePolicy(calibrated, AlphaEstimator(pair_id="test"), ControllerConfig())
    assert policy.cheap_drafters == {"head"}
    step = calibrated.draft_s(1, 100, 1, "head")
    for _ in range(40):
        policy.cost_tracker.observe(round_of(3, calibrated.target(4, 100), 10 * 3 * step, catchup=1, drafter="head"))
    assert policy.cost is not calibrated
    assert policy.cheap_drafters == set()


@pytest.mark.parametrize(("slower", "rounds_needed"), [(3.0, 4), (1.3, 8)])
def test_a_machine_far_off_its_calibration_is_corrected_sooner(slower, rounds_needed):
    """Forwards at 3x their price are corrected after 4 rounds (3 are as clear as 8 at 1.3x, and each costs far
    more); at 1.3x (just past the 25% tolerance), after 8."""
    calibrated = cost_model()
    tracker = CostTracker(calibrated)
    seen = 0
    while tracker.cost is calibrated:
        tracker.observe(round_of(3, slower * calibrated.target(4, 100), calibrated.draft_s(3, 100)))
        seen += 1
        assert seen <= rounds_needed
    assert seen == rounds_needed


def test_a_catch_up_much_faster_than_calibrated_is_priced_as_measured():
    """A draft calibrated on a slow machine (its catch-up costs its tokens one by one), measured at 3% of that:
    the correction follows it past 10x (MIN_FACTOR bounds it at 50x)."""
    calibrated = cost_model()
    slow_draft = CostTable(tokens=[1, 32], contexts=[100, 2000], seconds=[[0.04, 1.28], [0.05, 1.6]])
    calibrated = calibrated.model_copy(update={"drafts": {"model": slow_draft}})
    tracker = CostTracker(calibrated)
    step = calibrated.draft_s(1, 100)
    for i in range(40):
        if i % 4 == 0:
            tracker.observe(round_of(3, 0.12, draft_s=0.03 * slow_draft(200, 100) + 2 * step, catchup=200))
        else:
            tracker.observe(round_of(3, 0.12, draft_s=3 * step, catchup=1))
    # past the table's widest column (32) its price is extrapolated, hence the looser match
    assert tracker.cost.drafts["model"](200, 100) == pytest.approx(0.03 * slow_draft(200, 100), rel=0.15)


def test_a_borrowed_shape_is_levelled_only_by_widths_the_target_measured():
    """Target forwards measured on a linear machine up to 6 tokens; the draft only in one catch-up of 200 tokens,
    past the target's widest column (17), where the target's shape is a constant guess: the draft's steps keep the
    target's shape unscaled, instead of being levelled by that guess."""
    calibrated = cost_model()
    tracker = CostTracker(calibrated)
    tracker.observe(round_of(3, 0.12, draft_s=0.5 * calibrated.draft_s(3, 100, 200), catchup=200))
    for i in range(40):
        proposed = 2 if i % 2 else 4
        tracker.observe(round_of(proposed, linear_verify(proposed + 1), 1e-4, drafter="lookup"))
    cost = tracker.cost
    target_factor_1 = cost.target(1, 100) / calibrated.target(1, 100)
    assert cost.drafts["model"](1, 100) == pytest.approx(target_factor_1 * calibrated.drafts["model"](1, 100), rel=0.05)


def test_a_prefill_anchors_the_price_of_widths_past_those_measured():
    """Calibrated linear, measured flat at 2 and 3 tokens, and a 128-token prefill timed at 1 s: 16 tokens are
    priced on the line toward the prefill (0.1 + 0.9 * 13 / 125 s), not flat. A prefill alone corrects nothing."""
    tracker = CostTracker(linear_calibration())
    tracker.observe_prefill(128, 1.0)
    assert tracker.cost is tracker.calibrated
    for i in range(40):
        tracker.observe(round_of(1 + i % 2, 0.1, 0.04, drafter="lookup"))
    assert tracker.cost.target(16, 100) == pytest.approx(0.1 + 0.9 * 13 / 125, rel=0.05)
    assert tracker.cost.target(1, 100) == pytest.approx(0.1, rel=0.05)


def test_a_prefill_does_not_stand_in_for_a_narrow_width():
    """Rounds of one width (5 tokens) on a machine where a forward costs 0.12 s + 0.17 s a token, and a 52-token
    prefill at 0.15 s a token: the line from 5 tokens toward the prefill would put the plain step at 0.39 s (it
    costs 0.29 s), high enough that drafting keeps winning and plain steps are never run to be measured. The tracker
    still asks for a plain step, and the prefill shapes prices only once two widths are measured."""
    tracker = CostTracker(cost_model())
    tracker.observe_prefill(52, 0.15 * 52)
    for _ in range(12):
        tracker.observe(round_of(4, 0.12 + 0.17 * 5, 0.04 * 4, drafter="lookup"))
    assert tracker.cost is not tracker.calibrated
    assert tracker.wants_width == 1
    [(width, seconds)] = tracker.target.points()
    assert (width, seconds) == (pytest.approx(5.0), pytest.approx(0.97, rel=0.01))
