"""Speculative sampling draws from exactly the target's distribution (chi-square tests, fixed seeds).

The drafts deliberately disagree with the target, so rejections and residual draws are exercised.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from adaptive_spec.engine import (
    PADDED_PLAIN_STEP,
    Decision,
    FallbackDrafter,
    ModelDrafter,
    PromptLookupDrafter,
    SamplingParams,
    SpeculativeEngine,
    StopRule,
    fixed,
)
from adaptive_spec.engine.accept import accept_sampled
from adaptive_spec.engine.sampling import distribution
from adaptive_spec.models import quantize_draft
from tests.tiny import tiny_model

VOCAB = 8
NEW = 4  # the first token comes from the prefill; tokens 2..4 from speculative rounds
SAMPLES = 20_000
PROMPT = [3, 5, 2, 3, 5, 2, 3]  # repeats, so prompt lookup proposes


def exact_joint(target, prompt, params):
    """P(t_1..t_NEW | prompt) under the target, by enumeration: {tuple: probability}."""
    probs = {(): 1.0}
    for _ in range(NEW):
        nxt = {}
        for prefix, p in probs.items():
            ids = torch.tensor([prompt + list(prefix)])
            with torch.inference_mode():
                row = distribution(target(ids).logits[0, -1:], params)[0]
            for token, q in enumerate(row.tolist()):
                if q > 0:
                    nxt[prefix + (token,)] = p * q
        probs = nxt
    return probs


def chi_square_pvalue(samples: Counter, expected: dict, n: int) -> float:
    """Pearson chi-square over outcome cells; cells expected fewer than 5 times are pooled into one."""
    big = {cell for cell, p in expected.items() if p * n >= 5}
    obs = [samples.get(cell, 0) for cell in big]
    exp = [expected[cell] * n for cell in big]
    obs.append(n - sum(obs))
    exp.append(n - sum(exp))
    assert sum(samples.values()) == n
    unexpected = set(samples) - set(expected)
    assert not unexpected, f"sampled outcomes the target gives probability 0: {sorted(unexpected)[:5]}"
    return chisquare(obs, exp).pvalue


@pytest.fixture(scope="module")
def models():
    return _models()


def _models():
    target = tiny_model(0, vocab_size=VOCAB, layers=1, hidden=16)
    disagreeing = tiny_model(5, vocab_size=VOCAB, layers=1, hidden=16)  # unrelated weights: a poor draft
    return target, disagreeing


def run_engine(target, draft, decide, params, seed):
    lookup = PromptLookupDrafter(max_ngram=2)
    engine = SpeculativeEngine(target, [ModelDrafter(draft), lookup, FallbackDrafter(lookup, ModelDrafter(draft, "m2"), name="hybrid")])
    generator = torch.Generator().manual_seed(seed)
    counts = Counter()
    stop = StopRule(NEW)
    proposed = accepted = 0
    for _ in range(SAMPLES):
        out = engine.generate(torch.tensor(PROMPT), decide, stop=stop, sampling=params, generator=generator)
        counts[tuple(out.new_tokens.tolist())] += 1
        proposed += out.proposed + sum(r.extension + r.guessed for r in out.records)
        accepted += out.accepted + sum(r.extension_accepted + r.guess_accepted for r in out.records)
    return counts, proposed, accepted


CASES = {
    "model-T1": (fixed("model", 3), SamplingParams(do_sample=True)),
    # lookup (a deterministic draft: q is a point mass), the hybrid and the model, switching every round
    "switching-T0.7-topp0.8-topk5": (
        lambda state, it=itertools.cycle([Decision("model", 2), Decision("hybrid", 3), Decision("lookup", 1)]): next(it),
        SamplingParams(do_sample=True, temperature=0.7, top_p=0.8, top_k=5),
    ),
    # a sampled model draft continued by prompt lookup in the same round (point-mass rows after sampled ones)
    "model+lookup-extension-T0.9": (fixed("model", 1, 0.0, 2), SamplingParams(do_sample=True, temperature=0.9)),
    # padded plain steps (a guess verified as a point mass: lookup's next token, else the pending token again)
    # between model rounds
    "padded-plain-T0.8": (
        lambda state, it=itertools.cycle([PADDED_PLAIN_STEP, Decision("model", 2), PADDED_PLAIN_STEP]): next(it),
        SamplingParams(do_sample=True, temperature=0.8),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_speculative_sampling_matches_target_distribution(models, case):
    target, draft = models
    decide, params = CASES[case]
    expected = exact_joint(target, PROMPT, params)
    counts, proposed, accepted = run_engine(target, draft, decide, params, seed=1234)
    assert 0 < accepted < proposed, "the test needs both accepted and rejected proposals (extensions included)"
    p = chi_square_pvalue(counts, expected, SAMPLES)
    assert p > 1e-3, f"{case}: speculative samples differ from the target's distribution (p={p:.2e})"


def test_rejection_step_preserves_distribution():
    """One position, constructed distributions: the emitted token is distributed as p_target."""
    g = torch.Generator().manual_seed(7)
    logits_p = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    p = torch.softmax(logits_p, -1)[0]
    q = torch.tensor([[0.05, 0.05, 0.1, 0.7, 0.1]])  # mostly proposes a token the target dislikes
    params = SamplingParams(do_sample=True)
    n = 40_000
    counts = np.zeros(5)
    for _ in range(n):
        d = torch.multinomial(q[0], 1, generator=g)
        accepted, added = accept_sampled(d, q, torch.cat([logits_p, logits_p]), params, g)
        counts[int(d[0]) if accepted else int(added)] += 1
    expected = p.double().numpy()
    assert chisquare(counts, expected / expected.sum() * n).pvalue > 1e-3


def test_a_seed_reproduces_the_output(models):
    target, draft = models
    engine = SpeculativeEngine(target, [ModelDrafter(draft)])
    params = SamplingParams(do_sample=True, temperature=0.9)
    outs = [
        engine.generate(torch.tensor(PROMPT), fixed("model", 3), stop=StopRule(20), sampling=params,
                        generator=torch.Generator().manual_seed(99)).new_tokens.tolist()
        for _ in range(2)
    ]
    assert outs[0] == outs[1]


def test_a_generator_on_another_device_type_is_refused_up_front():
    """A CPU generator cannot drive draws on a CUDA model (torch fails mid-request); the engine says so first."""
    from adaptive_spec.engine.loop import _check_generator

    with pytest.raises(ValueError, match="generator is on cpu but the models on cuda"):
        _check_generator(torch.Generator(), torch.device("cuda"))
    _check_generator(torch.Generator(), torch.device("cpu"))
    _check_generator(None, torch.device("cuda"))


@pytest.mark.slow
def test_an_int8_draft_keeps_the_target_distribution(models):
    """A draft with int8 weights (``quantize_draft``) proposes from its own, slightly different, distribution; the
    rejection step corrects for whatever q the draft used, so samples still follow the target's."""
    target, draft = models
    params = SamplingParams(do_sample=True, temperature=0.9)
    expected = exact_joint(target, PROMPT, params)
    counts, proposed, accepted = run_engine(target, quantize_draft(copy.deepcopy(draft)), fixed("model", 3), params, 99)
    assert 0 < accepted < proposed
    p = chi_square_pvalue(counts, expected, SAMPLES)
    assert p > 1e-3, f"int8 draft: samples differ from the target's distribution (p={p:.2e})"
