"""Greedy speculative decoding equals the target's own greedy decoding, token for token (float32)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from adaptive_spec.engine import (
    PADDED_PLAIN_STEP,
    Decision,
    FallbackDrafter,
    ModelDrafter,
    PromptLookupDrafter,
    SpeculativeEngine,
    StopRule,
    fixed,
)
from adaptive_spec.models import ModelLoadError, load_pair, quantize_draft
from tests.tiny import noisy_copy

PROMPTS = [
    [5, 17, 42, 9, 3, 17, 42, 9, 77, 5, 17],
    [100, 101, 102, 103, 100, 101],
    list(range(20, 60)),
]


def reference(target, prompt, max_new_tokens, eos=None):
    out = target.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=0,
    )
    return out[0].tolist()


@pytest.fixture(scope="module")
def engine(pair):
    target, draft = pair
    lookup = PromptLookupDrafter()
    model = ModelDrafter(draft)
    return SpeculativeEngine(target, [model, lookup, FallbackDrafter(lookup, model, name="hybrid")])


@pytest.mark.parametrize("drafter", ["model", "lookup", "hybrid"])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_fixed_k_matches_target(engine, pair, drafter, k):
    for prompt in PROMPTS:
        expected = reference(pair[0], prompt, 40, eos=-1)
        out = engine.generate(torch.tensor(prompt), fixed(drafter, k), stop=StopRule(40))
        assert out.sequences[0].tolist() == expected
        assert out.num_new_tokens == 40
        assert sum(r.emitted for r in out.records) == 39  # the first token comes from the prefill


def test_plain_steps_match_target(engine, pair):
    prompt = PROMPTS[0]
    out = engine.generate(torch.tensor(prompt), stop=StopRule(25))
    assert out.sequences[0].tolist() == reference(pair[0], prompt, 25, eos=-1)
    assert all(r.k == 0 and r.proposed == 0 for r in out.records)


def test_padded_plain_steps_match_target(engine, pair):
    """A plain step that feeds a guess after the pending token (lookup's next token, else the pending token again)
    emits the target's greedy tokens, one more whenever the guess was right."""
    guessed_right = 0
    for prompt in PROMPTS:
        out = engine.generate(torch.tensor(prompt), fixed("none", 0, pad_plain=True), stop=StopRule(40))
        assert out.sequences[0].tolist() == reference(pair[0], prompt, 40, eos=-1)
        assert all(r.k == 0 and r.proposed == 0 and r.guessed == 1 and r.verified == 2 for r in out.records)
        assert all(r.emitted == 1 + r.guess_accepted for r in out.records[:-1])  # the last may be cut
        guessed_right += sum(r.guess_accepted for r in out.records)
    assert guessed_right > 0, "the test needs right guesses"


@pytest.mark.parametrize("max_new", [1, 2, 9])
def test_padded_plain_steps_without_lookup_guess_the_pending_token(pair, max_new):
    target, draft = pair
    engine = SpeculativeEngine(target, [ModelDrafter(draft)])  # no lookup drafter: the guess repeats the pending
    seen = []

    def decide(state):
        seen.append((state.context.numel(), int(state.context[-1])))
        return PADDED_PLAIN_STEP

    for prompt in PROMPTS:
        seen.clear()
        out = engine.generate(torch.tensor(prompt), decide, stop=StopRule(max_new))
        expected = reference(target, prompt, max_new, eos=-1)
        assert out.sequences[0].tolist() == expected
        # the guess (the pending token) is right when the target's next token repeats it
        assert [r.guess_accepted for r in out.records] == [int(expected[n] == pending) for n, pending in seen]


def test_k_changes_every_round(engine, pair):
    schedule = itertools.cycle([Decision("model", 3), Decision("none", 0), Decision("lookup", 5), PADDED_PLAIN_STEP,
                                Decision("model", 1), Decision("hybrid", 8), Decision("model", 6, 0.5)])
    for prompt in PROMPTS:
        asked = []

        def decide(state):
            asked.append(next(schedule))
            return asked[-1]

        out = engine.generate(torch.tensor(prompt), decide, stop=StopRule(50))
        assert out.sequences[0].tolist() == reference(pair[0], prompt, 50, eos=-1)
        for decision, record in zip(asked, out.records):
            assert record.k == decision.k or record.k_asked == decision.k  # the k asked is the k run
            assert record.proposed <= record.k


def test_round_state_tokens_mirror_the_context(engine):
    """The Python-int copy a policy reads (``state.tokens``) is the context tensor, every round."""
    seen = []

    def decide(state):
        seen.append(state.tokens == state.context.tolist() and state.generated + len(PROMPTS[0]) == len(state.tokens))
        return Decision("hybrid", 3)

    engine.generate(torch.tensor(PROMPTS[0]), decide, stop=StopRule(30))
    assert seen and all(seen)


def test_eos_inside_a_draft(pair):
    target, _ = pair
    prompt = PROMPTS[2]
    free = reference(target, prompt, 30, eos=-1)[len(prompt):]
    eos = free[12]  # a token the target emits mid-output
    expected = reference(target, prompt, 30, eos=eos)
    # A draft identical to the target proposes the EOS inside a long draft that continues past it.
    engine = SpeculativeEngine(target, [ModelDrafter(noisy_copy(target, 0.0, seed=0))])
    out = engine.generate(torch.tensor(prompt), fixed("model", 8), stop=StopRule(30, frozenset([eos])))
    assert out.sequences[0].tolist() == expected
    assert out.stop_reason == "eos"
    assert any(r.accepted > r.emitted - 1 for r in out.records)  # the draft ran past the EOS and was cut


@pytest.mark.parametrize("max_new", [1, 2, 7, 13])
def test_max_new_tokens_mid_round(engine, pair, max_new):
    prompt = PROMPTS[1]
    out = engine.generate(torch.tensor(prompt), fixed("model", 8), stop=StopRule(max_new))
    assert out.sequences[0].tolist() == reference(pair[0], prompt, max_new, eos=-1)
    assert out.stop_reason == "max_new_tokens"


def test_padded_draft_vocab(pair):
    target, _ = pair
    draft = noisy_copy(target, 0.2, seed=3, vocab_size=160)  # embedding padded beyond the tokenizer's ids
    engine = SpeculativeEngine(target, [ModelDrafter(draft, vocab_size=target.config.vocab_size)])
    out = engine.generate(torch.tensor(PROMPTS[0]), fixed("model", 4), stop=StopRule(30))
    assert out.sequences[0].tolist() == reference(target, PROMPTS[0], 30, eos=-1)
    assert out.accepted > 0


def test_lookup_index_matches_brute_force():
    import random

    from adaptive_spec.engine.lookup import LookupIndex

    def brute(seq, k, max_n=3, min_n=1):
        for n in range(min(max_n, len(seq) - 1), min_n - 1, -1):
            suffix = seq[len(seq) - n :]
            for s in range(0, len(seq) - n):
                if seq[s : s + n] == suffix:
                    return seq[s + n : s + n + k], n
        return [], 0

    rng = random.Random(0)
    for _ in range(50):
        seq = [rng.randrange(6) for _ in range(rng.randrange(1, 60))]
        max_n = rng.randrange(1, 5)
        min_n = rng.randrange(1, max_n + 1)
        index = LookupIndex(max_n, min_n)
        end = 0
        while end < len(seq):
            end = min(len(seq), end + rng.randrange(1, 4))  # a round appends one to a few tokens
            index.extend(seq[len(index.tokens) : end])
            proposal, n = brute(seq[:end], 5, max_n, min_n)
            assert index.propose(5) == (proposal, n)
            assert index.proposal_length(5) == (len(proposal), n)  # what the controller asks, without the list
            extra = [rng.randrange(6) for _ in range(rng.randrange(0, 5))]  # a draft's tokens, not yet accepted
            before = (list(index.tokens), dict(index.first))
            expected = brute(seq[:end] + extra, 5, max_n, min_n)[0] if extra else []
            assert index.propose_after(extra, 5) == expected  # what lookup offers were the draft accepted
            assert (index.tokens, index.first) == before  # ... and the index is left as it was


class CharTokenizer:
    """Token i decodes to one letter: enough for stop strings."""

    def decode(self, ids, **kw):
        return "".join(chr(97 + int(i) % 26) for i in ids)


def test_stop_string_ends_generation_at_the_completing_token(engine, pair):
    prompt = PROMPTS[2]
    free = reference(pair[0], prompt, 40, eos=-1)[len(prompt) :]
    text = CharTokenizer().decode(free)
    stop = text[17:20]  # a 3-letter string the free output contains
    first = text.index(stop) + len(stop)  # tokens up to and including the one completing it
    out = engine.generate(torch.tensor(prompt), fixed("model", 8), stop=StopRule(40, stop_strings=(stop,),
                                                                                   tokenizer=CharTokenizer()))
    assert out.new_tokens.tolist() == free[:first]
    assert out.stop_reason == "stop_string"


def test_streamer_receives_prompt_then_every_token(engine):
    class Collect:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.reshape(-1).tolist())

        def end(self):
            self.ended = True

    streamer = Collect()
    out = engine.generate(torch.tensor(PROMPTS[0]), fixed("lookup", 4), stop=StopRule(20), streamer=streamer)
    assert streamer.ended and streamer.puts[0] == PROMPTS[0]
    assert sum(streamer.puts[1:], []) == out.new_tokens.tolist()


@pytest.mark.parametrize("drafter", ["model", "hybrid"])
@pytest.mark.parametrize("k,extend", [(1, 1), (2, 4), (3, 8), (5, 16)])
def test_lookup_extension_keeps_greedy_output(pair, drafter, k, extend):
    """Prompt lookup continuing a model draft in the same verify forward: output unchanged; the drafter's own
    acceptance and the extension's are counted apart; the round stays within the budget."""
    target, draft = pair
    for copy_noise in (0.0, 0.3):  # an exact draft (every proposal accepted: the extension is judged) and a noisy one
        lookup, model = PromptLookupDrafter(), ModelDrafter(noisy_copy(target, copy_noise, seed=1))
        engine = SpeculativeEngine(target, [model, lookup, FallbackDrafter(lookup, model, name="hybrid")])
        for prompt in PROMPTS + [[7, 8, 9, 10, 7, 8, 9, 10, 7, 8]]:
            out = engine.generate(torch.tensor(prompt), fixed(drafter, k, 0.0, extend), stop=StopRule(40))
            assert out.sequences[0].tolist() == reference(target, prompt, 40, eos=-1)
            left = 39
            for r in out.records:
                assert r.accepted <= r.proposed <= k and r.extension <= extend
                assert r.proposed + r.extension <= left - 1  # never drafts past the budget
                assert r.extension_accepted == 0 or r.accepted == r.proposed
                assert r.extension_accepted <= r.extension
                assert r.emitted == r.accepted + r.extension_accepted + 1 or r is out.records[-1]
                left -= r.emitted


def test_lookup_extension_is_used_and_accepted(pair):
    """With a draft identical to the target, a repeating output has extensions proposed and accepted."""
    target, _ = pair
    model = ModelDrafter(noisy_copy(target, 0.0, seed=0))
    engine = SpeculativeEngine(target, [model, PromptLookupDrafter()])
    records = []
    for prompt in PROMPTS + [[7, 8, 9, 10, 7, 8, 9, 10, 7, 8]]:
        out = engine.generate(torch.tensor(prompt), fixed("model", 2, 0.0, 6), stop=StopRule(60))
        assert out.sequences[0].tolist() == reference(target, prompt, 60, eos=-1)
        records += out.records
    assert sum(r.extension for r in records) > 0
    assert sum(r.extension_accepted for r in records) > 0


def test_bad_decisions_fail_loudly(engine):
    with pytest.raises(ValueError, match="extend must be"):
        engine.generate(torch.tensor(PROMPTS[0]), fixed("model", 2, 0.0, -1), stop=StopRule(5))
    no_lookup = SpeculativeEngine(engine.target.model, [engine.drafters["model"]])
    with pytest.raises(ValueError, match="no 'lookup' drafter"):
        no_lookup.generate(torch.tensor(PROMPTS[0]), fixed("model", 2, 0.0, 3), stop=StopRule(5))
    with pytest.raises(ValueError, match="unknown drafter"):
        engine.generate(torch.tensor(PROMPTS[0]), fixed("nope", 3), stop=StopRule(5))
    with pytest.raises(ValueError, match="k must be"):
        engine.generate(torch.tensor(PROMPTS[0]), fixed("model", -1), stop=StopRule(5))
    with pytest.raises(ValueError, match="non-empty"):
        engine.generate(torch.tensor([], dtype=torch.long), stop=StopRule(5))
    with pytest.raises(ValueError, match="max_new_tokens"):
        StopRule(0)


def test_mismatched_tokenizers_are_refused():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from adaptive_spec.models import ModelLoadError, check_compatible

    def tok(words):
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, "a")))

    check_compatible(tok(["a", "b", "c"]), tok(["a", "b", "c"]))
    with pytest.raises(ModelLoadError, match="tokenizers differ"):
        check_compatible(tok(["a", "b", "c"]), tok(["a", "c", "b"]))


def test_an_int8_draft_is_lossless(pair):
    """A draft with int8 linear layers (``quantize_draft``: cheaper on CPU, slightly different proposals) drafts
    for a float32 target: output identical to the target's greedy decoding, and its proposals still accepted."""
    target, draft = pair
    quantized = quantize_draft(copy.deepcopy(draft))
    assert isinstance(quantized.lm_head, torch.ao.nn.quantized.dynamic.Linear)
    engine = SpeculativeEngine(target, [ModelDrafter(quantized)])
    for prompt, k in itertools.product(PROMPTS, [2, 4]):
        out = engine.generate(torch.tensor(prompt), fixed("model", k), stop=StopRule(40))
        assert out.sequences[0].tolist() == reference(target, prompt, 40, eos=-1)
        assert 0 < out.accepted < out.proposed


def test_draft_quantization_is_refused_where_it_cannot_run(pair):
    with pytest.raises(ModelLoadError, match="CPU only"):
        quantize_draft(copy.deepcopy(pair[1]).to("meta"))
    with pytest.raises(ModelLoadError, match="unknown draft quantization 'int4'"):
        load_pair(draft_quantize="int4")  # refused before anything is fetched or loaded
