"""A draft head on the target's features: lossless as a drafter (greedy and sampling), features tapped exactly."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from adaptive_spec.engine import (
    PADDED_PLAIN_STEP,
    Decision,
    ModelDrafter,
    SamplingParams,
    SpeculativeEngine,
    StopRule,
    fixed,
)
from adaptive_spec.engine.head import DraftHead, attach_head, head_config
from tests.test_engine_greedy import PROMPTS, reference
from tests.tiny import tiny_model


def random_head(target, vocab: torch.Tensor, seed: int = 0, scale: float = 4.0) -> DraftHead:
    torch.manual_seed(seed)
    head = DraftHead(head_config(target.config), vocab)
    with torch.no_grad():
        head.lm_head.weight.copy_(target.lm_head.weight[vocab.clamp(max=target.config.vocab_size - 1)] * 0.5)  # correlated with the target's head
        head.lm_head.weight.mul_(scale / 8)
    return head.eval()


def common_output_tokens(target, n: int, prompts=PROMPTS, new_tokens: int = 40) -> list[int]:
    """The target's ``n`` most frequent greedy output tokens on ``prompts``: a head drafting only these hits often."""
    outputs = [reference(target, prompt, new_tokens, eos=-1)[len(prompt):] for prompt in prompts]
    return [t for t, _ in Counter(t for output in outputs for t in output).most_common(n)]


def assert_tap_is_fresh(target, drafter, sequence: torch.Tensor) -> None:
    """The features a head's tap kept are those of one fresh target forward over the final sequence."""
    with torch.inference_mode():
        expected = target.model(sequence[None, :-1]).last_hidden_state[0]
    torch.testing.assert_close(drafter.tap.get(sequence.numel() - 1), expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def target():
    return tiny_model(0)


@pytest.mark.parametrize("padded", [False, True])
def test_tap_captures_the_targets_features(target, padded):
    """Also after padded plain steps, whose rejected guesses leave a feature row the next forward overwrites."""
    engine = SpeculativeEngine(target, [])
    drafter = attach_head(engine, random_head(target, torch.arange(128)))
    decide = fixed("none", 0, pad_plain=padded)
    out = engine.generate(torch.tensor(PROMPTS[0]), decide, stop=StopRule(12))
    assert_tap_is_fresh(target, drafter, out.sequences[0])
    drafter.tap.remove()


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_equality_with_a_head(target, k):
    vocab = torch.arange(0, 128, 2)  # a pruned vocabulary: even ids only
    engine = SpeculativeEngine(target, [])
    attach_head(engine, random_head(target, vocab))
    accepted = 0
    for prompt in PROMPTS:
        out = engine.generate(torch.tensor(prompt), fixed("head", k), stop=StopRule(40))
        assert out.sequences[0].tolist() == reference(target, prompt, 40, eos=-1)
        accepted += out.accepted
    assert accepted > 0, "the head never got a token accepted: the test would not exercise acceptance"


def test_head_switching_with_other_drafters(target):
    from tests.tiny import noisy_copy

    engine = SpeculativeEngine(target, [ModelDrafter(noisy_copy(target, 0.3, seed=1))])
    attach_head(engine, random_head(target, torch.arange(128)))
    cycle = itertools.cycle([Decision("head", 4), Decision("none", 0), Decision("model", 3), Decision("head", 2, 0.3),
                             PADDED_PLAIN_STEP, Decision("head", 3)])
    for prompt in PROMPTS:
        out = engine.generate(torch.tensor(prompt), lambda s: next(cycle), stop=StopRule(45))
        assert out.sequences[0].tolist() == reference(target, prompt, 45, eos=-1)


def test_a_shadow_head_changes_nothing_but_is_scored(target):
    """A head asked only for a shadow token (``Decision.shadow``) beside rounds of other drafters and plain steps:
    the output stays the target's greedy output, each record says whether the head's token was emitted (checked
    against the head's own proposal at that context), and under sampling no shadow is taken."""
    from tests.tiny import noisy_copy

    from adaptive_spec.engine.drafters import DraftRequest

    engine = SpeculativeEngine(target, [ModelDrafter(noisy_copy(target, 0.3, seed=1))])
    drafter = attach_head(engine, random_head(target, torch.tensor(common_output_tokens(target, 1))))  # hits often
    decisions = [Decision("model", 3, shadow="head"), Decision("none", 0, shadow="head"), Decision("head", 2),
                 Decision(pad_plain=True, shadow="head"), Decision("head", 3, shadow="head")]  # fmt: skip
    hits = 0
    for prompt in PROMPTS:
        cycle = itertools.cycle(decisions)
        out = engine.generate(torch.tensor(prompt), lambda s: next(cycle), stop=StopRule(40))
        seq = out.sequences[0]
        assert seq.tolist() == reference(target, prompt, 40, eos=-1)
        start = len(prompt) + 1
        for record, decision in zip(out.records, itertools.cycle(decisions)):
            assert record.shadow == decision.shadow
            if record.shadow:  # the head's first token at this context, computed afresh
                drafter.reset()
                guess = drafter.propose(seq[: record.context_len], DraftRequest(1)).tokens[0]
                assert record.shadow_hit == int(guess == seq[record.context_len])
                hits += record.shadow_hit
            start += record.emitted
    assert hits > 0
    with pytest.raises(ValueError, match="unknown shadow drafter 'nope'"):
        engine.generate(torch.tensor(PROMPTS[0]), lambda s: Decision(shadow="nope"), stop=StopRule(5))
    params = SamplingParams(do_sample=True, temperature=0.9)
    out = engine.generate(torch.tensor(PROMPTS[0]), lambda s: Decision("model", 2, shadow="head"), stop=StopRule(10),
                          sampling=params, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert all(r.shadow == "" and r.shadow_hit == 0 for r in out.records)


def test_vocabulary_map_stays_inside_the_target_vocabulary(target):
    engine = SpeculativeEngine(target, [])
    with pytest.raises(ValueError, match="outside the target's vocabulary"):
        attach_head(engine, random_head(target, torch.tensor([0, 5, 128])))
    drafter = attach_head(engine, random_head(target, torch.tensor([3, 7, 11, 13])))
    out = engine.generate(torch.tensor(PROMPTS[1]), fixed("head", 5), stop=StopRule(20))
    assert out.proposed > 0
    from adaptive_spec.engine.drafters import DraftRequest

    draft = drafter.propose(out.sequences[0], DraftRequest(5))
    assert set(draft.tokens.tolist()) <= {3, 7, 11, 13}


@pytest.mark.slow
def test_sampling_with_a_head_matches_the_target():
    from tests.test_engine_sampling import NEW, PROMPT, SAMPLES, chi_square_pvalue, exact_joint

    target = tiny_model(0, vocab_size=8, layers=1, hidden=16)
    engine = SpeculativeEngine(target, [])
    attach_head(engine, random_head(target, torch.tensor([0, 2, 3, 5, 7]), scale=8.0))
    params = SamplingParams(do_sample=True, temperature=0.9)
    expected = exact_joint(target, PROMPT, params)
    g = torch.Generator().manual_seed(5)
    counts, proposed, accepted = Counter(), 0, 0
    for _ in range(SAMPLES):
        out = engine.generate(torch.tensor(PROMPT), fixed("head", 3), stop=StopRule(NEW), sampling=params, generator=g)
        counts[tuple(out.new_tokens.tolist())] += 1
        proposed += out.proposed
        accepted += out.accepted
    assert 0 < accepted < proposed
    assert chi_square_pvalue(counts, expected, SAMPLES) > 1e-3
