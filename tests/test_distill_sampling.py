"""Speculative sampling with the custom drafter draws from exactly the target's distribution (chi-square).

The custom draft's output vocabulary misses some of the target's tokens (its ``q_draft`` is zero there), and its
weights come from an unrelated model, so rejections, residual draws and never-proposable tokens all occur.
Helpers and constants are the engine's own sampling test's.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from adaptive_spec.distill import CustomDrafter, VocabMap
from adaptive_spec.distill.derive import derive_draft
from adaptive_spec.engine import Decision, ModelDrafter, PromptLookupDrafter, SamplingParams, SpeculativeEngine, StopRule, fixed
from tests.test_engine_sampling import NEW, PROMPT, SAMPLES, VOCAB, chi_square_pvalue, exact_joint
from tests.tiny import tiny_model

KEPT = [0, 2, 3, 5, 6]  # tokens 1, 4 and 7 can never be proposed

CASES = {
    "custom-T1": (fixed("custom", 3), SamplingParams(do_sample=True)),
    "switching-T0.7-topp0.8-topk5": (
        lambda state, it=itertools.cycle([Decision("custom", 2), Decision("model", 2), Decision("lookup", 1),
                                          Decision("custom", 4)]): next(it),  # fmt: skip
        SamplingParams(do_sample=True, temperature=0.7, top_p=0.8, top_k=5),
    ),
}


@pytest.fixture(scope="module")
def engine():
    target = tiny_model(0, vocab_size=VOCAB, layers=1, hidden=16)
    other = tiny_model(5, vocab_size=VOCAB, layers=1, hidden=16)
    vmap = VocabMap(torch.tensor(KEPT), VOCAB)
    custom = CustomDrafter(derive_draft(other, [0], vmap), vmap)
    return target, SpeculativeEngine(target, [custom, ModelDrafter(other), PromptLookupDrafter(max_ngram=2)])


@pytest.mark.slow  # ~1.5 min per case on a busy 2-core machine, like the engine's own sampling test
@pytest.mark.parametrize("case", list(CASES))
def test_custom_draft_sampling_matches_target_distribution(engine, case):
    target, eng = engine
    decide, params = CASES[case]
    expected = exact_joint(target, PROMPT, params)
    generator = torch.Generator().manual_seed(4321)
    counts: Counter = Counter()
    proposed = accepted = 0
    custom_tokens: Counter = Counter()
    for _ in range(SAMPLES):
        out = eng.generate(torch.tensor(PROMPT), decide, stop=StopRule(NEW), sampling=params, generator=generator)
        counts[tuple(out.new_tokens.tolist())] += 1
        proposed += out.proposed
        accepted += out.accepted
        for r in out.records:
            custom_tokens[r.drafter] += r.proposed
    assert 0 < accepted < proposed, "the test needs both accepted and rejected proposals"
    assert custom_tokens["custom"] > 0
    assert any(1 in c or 4 in c or 7 in c for c in counts), "tokens outside the draft vocabulary must still occur"
    p = chi_square_pvalue(counts, expected, SAMPLES)
    assert p > 1e-3, f"{case}: speculative samples differ from the target's distribution (p={p:.2e})"
