"""Training a draft head on collected features (tiny models): it learns, saves small, loads only for its target,
and drafts losslessly."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from adaptive_spec.distill.collect import Collection, CollectSettings, collect
from adaptive_spec.distill.vocab import VocabMap
from adaptive_spec.distill.head import (
    HeadError,
    HeadSettings,
    _position_loss,
    attach_saved_head,
    build_head,
    head_alpha,
    head_heldout_prompts,
    load_head,
    save_head,
    train_head,
)
from adaptive_spec.engine import SpeculativeEngine, StopRule, fixed
from tests.test_distill import ToyEncoder, rows
from tests.test_engine_greedy import PROMPTS, reference
from tests.tiny import tiny_model

VOCAB = 128


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    target = tiny_model(0, layers=2)
    out = tmp_path_factory.mktemp("collection")
    collect(target, ToyEncoder(), rows(40), out, CollectSettings(top_k=8, hidden_states=True, shard_examples=16))
    collection = Collection(out)
    ids = [e.id for e in collection.manifest.examples]
    vmap = VocabMap(torch.arange(VOCAB), VOCAB)
    return target, collection, ids[:30], ids[30:], vmap


@pytest.mark.parametrize(("bf16_autocast", "prompt_weight"), [(False, 1.0), (True, 1.0), (False, 0.0)])
def test_head_learns_from_features(setup, tmp_path, bf16_autocast, prompt_weight):
    target, collection, train_ids, test_ids, vmap = setup
    settings = HeadSettings(intermediate_size=64, steps=60, batch_tokens=256, lr=3e-3, warmup=5, checkpoint_every=20,
                            bf16_autocast=bf16_autocast, prompt_weight=prompt_weight)  # fmt: skip
    head = build_head(target, vmap, settings)
    before = head_alpha(head, target, collection, test_ids, vmap)
    summary = train_head(head, target, collection, train_ids, vmap, settings, tmp_path)
    after = head_alpha(head, target, collection, test_ids, vmap)
    assert summary["steps"] == 60
    assert after["alpha_1"] > max(0.2, 5 * before["alpha_1"])  # toy data: learnable, not to perfection
    if bf16_autocast:  # the same head kept in bf16 is evaluated in bf16 (it failed on a dtype mismatch)
        in_bf16 = head_alpha(head.to(torch.bfloat16), target, collection, test_ids, vmap)
        assert abs(in_bf16["alpha_1"] - after["alpha_1"]) < 0.1


def test_prompt_weight_zero_trains_on_response_positions_only(setup):
    """A head drafts responses: with prompt_weight 0 the target's distributions over prompt positions do not reach
    the loss (the prompt still feeds the head as context), and the positions counted are the response's."""
    target, collection, train_ids, _, vmap = setup
    ex = collection.example(train_ids[0], hidden=True)
    prompt_rows = ex.record.prompt_len - 1  # rows 0..prompt_len-2 predict prompt tokens (row r: token r + 1)
    shuffled = copy.copy(ex)
    shuffled.topk_probs = ex.topk_probs.clone()
    shuffled.topk_probs[:prompt_rows] = shuffled.topk_probs[:prompt_rows].flip(-1)
    embed = target.get_input_embeddings()

    def loss(example, weight):
        settings = HeadSettings(intermediate_size=64, prompt_weight=weight, unroll=0)
        return _position_loss(build_head(target, vmap, settings), embed, example, vmap, settings)

    responses_only, shuffled_only = loss(ex, 0.0), loss(shuffled, 0.0)
    torch.testing.assert_close(responses_only[0], shuffled_only[0])
    # each response token, and what follows the last (the target's distribution there is stored too)
    assert responses_only[1] == ex.record.length - ex.record.prompt_len + 1
    everything = loss(ex, 1.0)
    assert everything[1] == ex.record.length - 1
    assert not torch.allclose(everything[0], loss(shuffled, 1.0)[0])
    assert responses_only[0] < loss(ex, 0.5)[0] < everything[0]


def test_head_alpha_counts_drafts_of_response_tokens_only(setup, monkeypatch):
    """The engine drafts only after the prompt: head_alpha's default counts drafts whose first token is a response
    token, so the target's top-1 inside the prompt cannot move it; response_only=False counts every position."""
    target, collection, _, test_ids, vmap = setup
    head = build_head(target, vmap, HeadSettings(intermediate_size=64))
    examples = list(collection.examples(test_ids, hidden=True))

    def alpha(edit, **kw):
        edited = []
        for ex in examples:
            ex = copy.copy(ex)
            ex.record, ex.topk_ids = ex.record.model_copy(), ex.topk_ids.clone()
            edit(ex)
            edited.append(ex)
        monkeypatch.setattr(collection, "examples", lambda ids, hidden=False: iter(edited))
        return head_alpha(head, target, collection, test_ids, vmap, **kw)

    def keep(ex):
        pass

    def corrupt_prompt(ex):  # rows before prompt_len - 1 predict prompt tokens
        ex.topk_ids[: ex.record.prompt_len - 1, 0] = (ex.topk_ids[: ex.record.prompt_len - 1, 0] + 1) % VOCAB

    def all_prompt(ex):
        ex.record.prompt_len = ex.record.length

    def one_token_prompt(ex):
        ex.record.prompt_len = 1

    assert alpha(corrupt_prompt) == alpha(keep)
    assert alpha(one_token_prompt) == alpha(keep, response_only=False)
    assert all(v is None for v in alpha(all_prompt).values())
    assert alpha(all_prompt, response_only=False)["alpha_1"] is not None  # later ones need a first hit


def test_training_resumes_to_the_same_head(setup, tmp_path):
    target, collection, train_ids, _, vmap = setup
    settings = HeadSettings(intermediate_size=64, steps=30, batch_tokens=128, checkpoint_every=10, seed=3)
    straight = build_head(target, vmap, settings)
    whole = train_head(straight, target, collection, train_ids, vmap, settings, tmp_path / "a")
    (tmp_path / "b").mkdir()
    interrupted = build_head(target, vmap, settings)
    train_head(interrupted, target, collection, train_ids, vmap, settings.model_copy(update={"steps": 20}), tmp_path / "b")
    resumed = build_head(target, vmap, settings)
    summary = train_head(resumed, target, collection, train_ids, vmap, settings, tmp_path / "b")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    # the summary describes the whole run, also when a finished training is run again (distill re-run to re-save)
    rerun = build_head(target, vmap, settings)
    again = train_head(rerun, target, collection, train_ids, vmap, settings, tmp_path / "b")
    for result in (summary, again):
        assert result["steps"] == 30
        assert result["final_loss"] == pytest.approx(whole["final_loss"], rel=1e-5)
        assert result["train_top1_agreement"] == pytest.approx(whole["train_top1_agreement"], rel=1e-5)
    assert again["seconds"] == pytest.approx(summary["seconds"], abs=0.05)


@pytest.mark.parametrize("quantize", [False, True])
def test_saved_head_drafts_losslessly_and_only_for_its_target(setup, tmp_path, quantize):
    target, collection, train_ids, _, vmap = setup
    (tmp_path / "ckpt").mkdir()
    settings = HeadSettings(intermediate_size=64, steps=20, batch_tokens=256)
    head = build_head(target, vmap, settings)
    train_head(head, target, collection, train_ids, vmap, settings, tmp_path / "ckpt")
    save_head(head, target, tmp_path / "head", {"steps": 20}, quantize=quantize)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "head" / "head.safetensors"), framework="pt") as f:
        assert not any(k.startswith("lm_head") for k in f.keys())  # the target's own rows are not stored
    engine = SpeculativeEngine(target, [])
    attach_saved_head(engine, tmp_path / "head")
    for prompt in PROMPTS:
        out = engine.generate(torch.tensor(prompt), fixed("head", 4), stop=StopRule(30))
        assert out.sequences[0].tolist() == reference(target, prompt, 30, eos=-1)
    with pytest.raises(HeadError, match="another target"):
        load_head(tmp_path / "head", tiny_model(7, layers=2))


def test_distill_kind_head_end_to_end(tmp_path):
    """The whole `distill --kind head` pipeline on tiny models: collect features, train, save, evaluate."""
    from adaptive_spec.distill.head_pipeline import HeadRunSettings, run_head
    from adaptive_spec.distill.pipeline import DistillModels
    from tests.tiny import noisy_copy

    target = tiny_model(0, layers=2)
    models = DistillModels(target=target, base=noisy_copy(target, 0.3, seed=1), encoder=ToyEncoder(),
                           eos=frozenset([1]))  # fmt: skip
    settings = HeadRunSettings(vocab_size=64, eval_split=0.25, e2e_prompts=1, e2e_new_tokens=12,
                               generic_k=(2,), head_k=(2, 4),
                               head=HeadSettings(intermediate_size=64, steps=10, batch_tokens=128))  # fmt: skip
    evaluation = run_head(tmp_path / "traffic.jsonl", rows(16), tmp_path / "out", settings, models)
    assert (tmp_path / "out" / "head.safetensors").is_file() and (tmp_path / "out" / "README.md").is_file()
    assert evaluation["cost_per_token_ms"]["head"] > 0
    assert evaluation["end_to_end"]["outputs_equal_target_share"] == 1.0  # float32: lossless
    # the held-out chain is saved with the head, for the controller's cold start in those classes
    from adaptive_spec.distill.head import head_heldout_alpha

    saved = head_heldout_alpha(tmp_path / "out")
    assert saved and set(saved) <= set(evaluation["alpha"])
    for cls, chain in saved.items():
        assert chain[0] == pytest.approx(evaluation["alpha"][cls]["alpha_1"], abs=1e-4)


def test_distill_continues_a_saved_head_on_traffic_the_draft_answers(tmp_path):
    """`distill --kind head --init-head DIR --responses draft`: new traffic without responses, answered by the base
    draft (greedy), continues a saved head with its vocabulary and width; a head of another target is refused
    before anything is collected."""
    import dataclasses

    from adaptive_spec.distill.head import read_head_config
    from adaptive_spec.distill.head_pipeline import HeadRunSettings, run_head
    from adaptive_spec.distill.pipeline import DistillModels
    from tests.tiny import noisy_copy

    target = tiny_model(0, layers=2)
    models = DistillModels(target=target, base=noisy_copy(target, 0.3, seed=1), encoder=ToyEncoder(),
                           eos=frozenset([1]))  # fmt: skip
    first = HeadRunSettings(vocab_size=64, eval_split=0.25, e2e_prompts=0,
                            head=HeadSettings(intermediate_size=64, steps=5, batch_tokens=128))  # fmt: skip
    run_head(tmp_path / "traffic.jsonl", rows(16), tmp_path / "first", first, models)
    questions = [dataclasses.replace(r, response=None) for r in rows(12, start=16)]
    settings = HeadRunSettings(vocab_size=32, eval_split=0.25, e2e_prompts=0, init_head=str(tmp_path / "first"),
                               collect=CollectSettings(hidden_states=True, max_new_tokens=6, respond_with="draft"),
                               head=HeadSettings(intermediate_size=96, steps=4, batch_tokens=128))  # fmt: skip
    run_head(tmp_path / "more.jsonl", questions, tmp_path / "more", settings, models)
    before, after = read_head_config(tmp_path / "first"), read_head_config(tmp_path / "more")
    assert after.vocab == before.vocab and after.layer["intermediate_size"] == 64  # the saved head's, not 32 / 96
    assert after.training["init_head"]["path"] == str(tmp_path / "first")
    collection = Collection(tmp_path / "more" / "collection")
    assert collection.manifest.settings.respond_with == "draft"
    for record in collection.manifest.examples[:3]:
        example = collection.example(record)
        prompt = example.tokens[: record.prompt_len]
        assert record.response == "generated"
        assert example.tokens.tolist() == reference(models.base, prompt.tolist(), 6, eos=1)  # the draft's greedy text
    with pytest.raises(HeadError, match="another target"):
        run_head(tmp_path / "more.jsonl", questions, tmp_path / "other", settings,
                 dataclasses.replace(models, target=tiny_model(7, layers=2)))
    assert not (tmp_path / "other").exists()


def test_a_saved_head_is_priced_and_chosen_by_the_controller(setup, tmp_path):
    """calibrate_pair(heads=...) measures the head's own table; AdaptiveGenerator(head=DIR) drafts with it."""
    from adaptive_spec.generator import AdaptiveGenerator
    from adaptive_spec.policy.calibrate import calibrate_pair
    from adaptive_spec.policy.file import PolicyFile
    from tests.test_generator import reference as hf_reference

    target, collection, train_ids, _, vmap = setup
    (tmp_path / "ckpt").mkdir()
    settings = HeadSettings(intermediate_size=64, steps=20, batch_tokens=256)
    head = build_head(target, vmap, settings)
    train_head(head, target, collection, train_ids, vmap, settings, tmp_path / "ckpt")
    save_head(head, target, tmp_path / "head", {"steps": 20}, heldout_alpha={"code": [0.7, 0.6]})
    cost = calibrate_pair(target, None, "tiny", "float32", reps=1, heads={"head": tmp_path / "head"})
    assert set(cost.drafts) == {"head"}
    table = cost.drafts["head"]
    assert table.contexts == [128, 1024] and all(s > 0 for row in table.seconds for s in row)
    assert cost.draft_cost_ratio_of("head") > 0

    policy = PolicyFile(name="tiny-head", pair_id="tiny", cost=cost)
    with pytest.raises(ValueError, match="calibrate --head|no measurements"):
        AdaptiveGenerator(target, policy=PolicyFile(name="no-head", pair_id="tiny", cost=cost.model_copy(
            update={"drafts": {}})), head=tmp_path / "head")  # fmt: skip
    generator = AdaptiveGenerator(target, policy=policy, head=tmp_path / "head")
    assert generator.policy.measured_alpha == {"head": {"code": (0.7, 0.6)}}  # the head's card: its cold start
    # distill's held-out rows say which of the classifier's classes the traffic's "code" is
    from adaptive_spec.policy.classifier import PromptClassifier

    code = [f"def f{i}(x):\n    return x + {i}" for i in range(12)]
    chat = [f"Tell me a story about a {w}." for w in ("cat", "dog", "ship", "king", "tree", "river")] * 2
    clf = PromptClassifier(random_state=0).fit(code + chat, ["coding"] * 12 + ["writing"] * 12)
    (tmp_path / "head" / "heldout.jsonl").write_text("".join(
        json.dumps({"class": "code", "prompt": p}) + "\n" for p in code[:5]))  # fmt: skip
    aligned = AdaptiveGenerator(target, policy=policy.model_copy(update={"classifier": json.loads(clf.to_json())}),
                                head=tmp_path / "head")  # fmt: skip
    assert aligned.policy.measured_alpha == {"head": {"code": (0.7, 0.6), "coding": (0.7, 0.6)}}
    for prompt in PROMPTS:
        out = generator.generate(torch.tensor([prompt]), max_new_tokens=24, eos_token_id=-1, speculation="on")
        assert out.sequences[0].tolist() == hf_reference(target, prompt, 24)
        assert any(r.drafter == "head" for r in out.result.records)


def test_the_heldout_prompts_beside_a_head_are_read_by_class(tmp_path):
    """What ``align_measured_alpha`` classifies: the traffic's classes and prompts, capped per class; no file,
    no prompts; a broken line is named."""
    assert head_heldout_prompts(tmp_path) == {}
    rows = [{"class": "code", "prompt": f"def f{i}(): pass", "response": "x"} for i in range(5)]
    rows.append({"class": "qa", "prompt": "Why is the sky blue?"})
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert head_heldout_prompts(tmp_path, per_class=3) == {"code": ["def f0(): pass", "def f1(): pass",
                                                                     "def f2(): pass"], "qa": ["Why is the sky blue?"]}
    (tmp_path / "heldout.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "no class"}) + "\n")
    with pytest.raises(HeadError, match=r"heldout.jsonl:2: .*'class' and 'prompt'"):
        head_heldout_prompts(tmp_path)
