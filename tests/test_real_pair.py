"""The engine on the real reference pair (Qwen2.5-Coder 1.5B target, 0.5B draft).

float32: output identical token for token to ``target.generate(do_sample=False)``.
bfloat16: a 1-token and a multi-token forward can round differently, so speculative output may diverge from
target-only output; where it does, the target's top two logits must be a near-tie there (numerics, not a bug).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from adaptive_spec.engine import Decision, SpeculativeEngine, StopRule, fixed
from adaptive_spec.generator import AdaptiveGenerator
from adaptive_spec.prompts import chat_ids
from adaptive_spec.runtime import eos_ids, standard_drafters
from tests import real_pair

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

CATEGORIES = ["coding", "summarization", "translation"]
NEW = 32


def _switching(state, it=itertools.cycle(
    [Decision("model", 4), Decision("lookup", 6), Decision("none", 0), Decision("hybrid", 5, 0.5), Decision("model", 2)]
)):
    return next(it)


def target_greedy(pair, ids: torch.Tensor) -> list[int]:
    """The target's own greedy output (``generate``), prompt included: what speculation must reproduce."""
    return pair.target.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW,
        pad_token_id=pair.tokenizer.pad_token_id,
    )[0].tolist()  # fmt: skip


@pytest.fixture(scope="module")
def fp32():
    pair = real_pair.load("float32")
    engine = SpeculativeEngine(pair.target, standard_drafters(pair.target, pair.draft))
    return pair, engine


@pytest.mark.parametrize("question", real_pair.spec_bench(CATEGORIES), ids=CATEGORIES)
def test_greedy_equals_target_generate_fp32(fp32, question):
    pair, engine = fp32
    ids = chat_ids(pair.tokenizer, question["turns"][0])
    expected = target_greedy(pair, ids)
    stop = StopRule(NEW, eos_ids(pair.tokenizer, pair.target))
    for name, decide in [("model k=4", fixed("model", 4)), ("lookup k=6", fixed("lookup", 6)),
                         ("switching", _switching)]:  # fmt: skip
        out = engine.generate(ids, decide, stop=stop)
        assert out.sequences[0].tolist() == expected, f"{name} diverged from target.generate"


def test_bf16_divergence_is_only_near_ties():
    pair = real_pair.load("bfloat16")
    engine = SpeculativeEngine(pair.target, standard_drafters(pair.target, pair.draft))
    stop = StopRule(48, eos_ids(pair.tokenizer, pair.target))
    diverged = 0
    for question in real_pair.spec_bench(["coding", "writing"]):
        ids = chat_ids(pair.tokenizer, question["turns"][0])
        plain = engine.generate(ids, stop=stop).new_tokens.tolist()
        spec = engine.generate(ids, fixed("model", 6), stop=stop).new_tokens.tolist()
        first = next((i for i, (a, b) in enumerate(zip(plain, spec)) if a != b), None)
        if first is None:
            continue
        diverged += 1
        prefix = torch.cat([ids[0], torch.tensor(plain[:first])])
        with torch.inference_mode():
            logits = pair.target(prefix[None].to(pair.target.device)).logits[0, -1].float()
        top2 = logits.topk(2).values
        assert top2[0] - top2[1] < 0.5, f"divergence at {first} without a near-tie (gap {top2[0] - top2[1]:.3f})"
    print(f"bf16: {diverged}/2 prompts diverged from target-only within 48 tokens, each at a near-tie")


def test_committed_head_drafts_losslessly_for_its_target_only(fp32):
    """The draft head committed in heads/ loads next to the reference target (fp32 here, trained in bf16), keeps
    greedy output identical, and is refused for another model (the 0.5B draft)."""
    from pathlib import Path

    from adaptive_spec.distill.head import HeadError, attach_saved_head, load_head

    pair, _ = fp32
    directory = Path(__file__).resolve().parents[1] / "heads" / "qwen2.5-coder-code"
    engine = SpeculativeEngine(pair.target, [])
    attach_saved_head(engine, directory)
    question = real_pair.spec_bench(["coding"])[0]
    ids = chat_ids(pair.tokenizer, question["turns"][0])
    expected = target_greedy(pair, ids)
    out = engine.generate(ids, fixed("head", 4), stop=StopRule(NEW, eos_ids(pair.tokenizer, pair.target)))
    assert out.sequences[0].tolist() == expected
    assert out.accepted > 0  # it is a trained head, not noise
    with pytest.raises(HeadError, match="another target"):
        load_head(directory, pair.draft)


def test_int8_draft_keeps_greedy_output_and_names_its_pair(fp32):
    """The 0.5B draft with int8 linear layers drafts for the float32 target: identical greedy output, most of its
    proposals accepted; loaded that way, the pair carries its own id (a bfloat16 draft's policy must not price it)."""
    import copy

    from adaptive_spec.engine import ModelDrafter
    from adaptive_spec.models import load_pair, pair_id_of, quantize_draft

    pair, _ = fp32
    int8_draft = quantize_draft(copy.deepcopy(pair.draft))
    assert pair_id_of(pair.target, int8_draft) == "qwen2.5-coder+int8-draft"  # quantized after loading: the int8 pair
    engine = SpeculativeEngine(pair.target, [ModelDrafter(int8_draft)])
    question = real_pair.spec_bench(["coding"])[0]
    ids = chat_ids(pair.tokenizer, question["turns"][0])
    expected = target_greedy(pair, ids)
    out = engine.generate(ids, fixed("model", 4), stop=StopRule(NEW, eos_ids(pair.tokenizer, pair.target)))
    assert out.sequences[0].tolist() == expected
    assert out.accepted > out.proposed / 2
    int8 = load_pair(dtype="bfloat16", draft_quantize="int8")
    assert int8.pair_id == "qwen2.5-coder+int8-draft"
    # with no policy= nor pair_id=, the generator finds each loaded pair's committed policy
    assert AdaptiveGenerator(int8.target, int8.draft, int8.tokenizer).policy.estimator.pair_id == int8.pair_id
    assert AdaptiveGenerator(pair.target, pair.draft, pair.tokenizer).policy.estimator.pair_id == "qwen2.5-coder"
