"""Siblings: a model draft's second choices verified beside its first in one tree-shaped forward (greedy only).

Lossless: the output equals the target's greedy decoding (float32) whatever is drafted; a sibling the target picks
replaces the rejected proposal and the round goes one token further; the caches (target, draft, a head's features)
keep only the accepted path.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from adaptive_spec.engine import (
    Decision,
    FallbackDrafter,
    ModelDrafter,
    PromptLookupDrafter,
    SamplingParams,
    SpeculativeEngine,
    StopRule,
    fixed,
)
from adaptive_spec.engine.head import attach_head
from adaptive_spec.engine.kv import CachedLM, Tree
from adaptive_spec.policy.base import FixedPolicy, RequestInfo
from tests.test_engine_greedy import PROMPTS, reference
from tests.test_engine_head import assert_tap_is_fresh, common_output_tokens, random_head
from tests.tiny import noisy_copy, tiny_model


@pytest.fixture(scope="module")
def target():
    return tiny_model(0)


def engine_with(target, noise: float) -> SpeculativeEngine:
    lookup = PromptLookupDrafter()
    model = ModelDrafter(noisy_copy(target, noise, seed=1))
    return SpeculativeEngine(target, [model, lookup, FallbackDrafter(lookup, model, name="hybrid")])


@pytest.mark.parametrize("noise", [0.3, 0.8])
@pytest.mark.parametrize(("drafter", "k", "threshold", "below", "extend"),
                         [("model", 1, 0.0, 1.0, 0), ("model", 2, 0.0, 1.0, 0), ("model", 4, 0.0, 0.9, 0),
                          ("model", 6, 0.5, 1.0, 0), ("hybrid", 4, 0.0, 1.0, 0), ("model", 3, 0.0, 1.0, 4)])  # fmt: skip
def test_siblings_keep_greedy_output(target, noise, drafter, k, threshold, below, extend):
    engine = engine_with(target, noise)
    rescued = 0
    for prompt in PROMPTS:
        out = engine.generate(torch.tensor(prompt), fixed(drafter, k, threshold, extend, below), stop=StopRule(40))
        assert out.sequences[0].tolist() == reference(target, prompt, 40, eos=-1)
        assert sum(r.emitted for r in out.records) == 39
        for r in out.records:
            assert r.sibling_accepted <= min(1, r.siblings)
            assert r.emitted <= r.accepted + r.extension_accepted + r.sibling_accepted + 1
            assert r.verified == 1 + r.proposed + r.extension + r.siblings
            if r.sibling_accepted:
                assert r.accepted < r.proposed and r.extension_accepted == 0
        rescued += sum(r.sibling_accepted for r in out.records)
    if drafter == "model" and noise > 0.5:
        assert rescued > 0, "no sibling was ever accepted: the test would not exercise the tree's kept path"


def test_siblings_only_below_the_confidence_asked(target):
    engine = engine_with(target, 0.8)
    out = engine.generate(torch.tensor(PROMPTS[2]), fixed("model", 4, sibling_below=0.5), stop=StopRule(30))
    for r in out.records:
        assert r.siblings == sum(p < 0.5 for p in r.draft_probs)
    off = engine.generate(torch.tensor(PROMPTS[2]), fixed("model", 4), stop=StopRule(30))
    assert all(r.siblings == 0 for r in off.records)


def test_siblings_with_a_head_switching_in(target):
    """A head reads the target's tapped features: after a sibling is kept, its feature must sit where the proposal's
    was, or the head's next draft reads a wrong feature (still lossless, so compare the tap with a fresh forward)."""
    engine = engine_with(target, 0.8)
    drafter = attach_head(engine, random_head(target, torch.arange(128)))
    cycle = itertools.cycle([Decision("model", 3, sibling_below=1.0), Decision("head", 2), Decision("model", 2, 0.0, 2, 1.0)])
    rescued = 0
    for prompt in PROMPTS:
        out = engine.generate(torch.tensor(prompt), lambda s: next(cycle), stop=StopRule(45))
        seq = out.sequences[0]
        assert seq.tolist() == reference(target, prompt, 45, eos=-1)
        assert_tap_is_fresh(target, drafter, seq)
        rescued += sum(r.sibling_accepted for r in out.records)
    assert rescued > 0
    drafter.tap.remove()


def test_a_heads_own_siblings_keep_greedy_output(target):
    """A head offers its second choice where it is unsure, like the model drafter (its map back to target ids
    included): output unchanged, siblings only below the confidence asked, some rescued, the tap's features those
    of a fresh forward."""
    engine = SpeculativeEngine(target, [])
    common = common_output_tokens(target, 2)
    drafter = attach_head(engine, random_head(target, torch.tensor(common)))  # two tokens: the second often right
    rescued = 0
    for prompt, below in zip(PROMPTS, itertools.cycle([1.0, 0.6])):
        out = engine.generate(torch.tensor(prompt), fixed("head", 3, sibling_below=below), stop=StopRule(40))
        seq = out.sequences[0]
        assert seq.tolist() == reference(target, prompt, 40, eos=-1)
        for r in out.records:
            assert r.siblings == sum(p < below for p in r.draft_probs)
        assert_tap_is_fresh(target, drafter, seq)
        rescued += sum(r.sibling_accepted for r in out.records)
    assert rescued > 0
    drafter.tap.remove()


def test_sampling_verifies_no_siblings(target):
    """The tree acceptance rule is greedy's; under sampling no sibling is verified (the chain rule stays exact)."""
    engine = engine_with(target, 0.8)
    params = SamplingParams(do_sample=True, temperature=0.9)
    out = engine.generate(torch.tensor(PROMPTS[0]), fixed("model", 3, sibling_below=1.0), stop=StopRule(20),
                          sampling=params, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.proposed > 0 and all(r.siblings == 0 for r in out.records)


def test_tree_forward_and_keep_equal_the_chain(target):
    """Rows of a tree forward equal the same paths fed as chains; ``keep`` leaves the cache of the kept path."""
    context, chain, sibling = torch.tensor(PROMPTS[2][:12]), torch.tensor([7, 8, 9]), torch.tensor([40])
    tree_lm, chain_lm = CachedLM(target), CachedLM(target)
    for lm in (tree_lm, chain_lm):
        lm.forward(context)
    # pending 7, drafts 8, 9; sibling 40 stands beside 9 (parent: 8)
    logits = tree_lm.forward(torch.cat([chain, sibling]), tree=Tree([-1, 0, 1, 1]))
    torch.testing.assert_close(logits[:3], chain_lm.forward(chain), rtol=1e-5, atol=1e-5)
    chain_lm.rollback(1)
    torch.testing.assert_close(logits[3:], chain_lm.forward(sibling), rtol=1e-5, atol=1e-5)
    tree_lm.keep(12, [0, 1, 3])  # the path 7, 8, 40
    assert tree_lm.seen == chain_lm.seen == 15
    after = torch.tensor([11])
    torch.testing.assert_close(tree_lm.forward(after), chain_lm.forward(after), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="parents come before"):
        Tree([-1, 1])


def test_bad_sibling_threshold_fails_loudly(target):
    engine = engine_with(target, 0.3)
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="sibling_below"):
            engine.generate(torch.tensor(PROMPTS[0]), fixed("model", 2, sibling_below=bad), stop=StopRule(5))


def test_fixed_policy_carries_siblings_through_max_k():
    policy = FixedPolicy("model", 6, 0.7, sibling_below=0.9)
    assert policy.name == "model k=6 thr=0.7 +siblings<0.9"
    decision = policy.start(RequestInfo(max_k=3)).decide(None)
    assert (decision.k, decision.threshold, decision.sibling_below) == (3, 0.7, 0.9)
