"""``adaptive_spec.distill`` on tiny random-init models: collection, vocabulary map, custom drafter, training,
saving/loading, traffic errors, the CLI and the whole pipeline."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from adaptive_spec.distill import (
    Collection,
    CollectSettings,
    CustomDrafter,
    DraftConfig,
    IdentityError,
    TrainSettings,
    VocabMap,
    load_custom_draft,
    save_custom_draft,
    target_identity,
)
from adaptive_spec.distill.cli import distill_command
from adaptive_spec.distill.collect import CollectionError, collect, read_manifest
from adaptive_spec.distill.derive import derive_draft, parse_layers, spaced_layers
from adaptive_spec.distill.pipeline import DistillModels, DistillSettings, run_distill
from adaptive_spec.distill.train import train
from adaptive_spec.distill.traffic import TrafficError, read_traffic, split_rows
from adaptive_spec.distill.vocab import choose_vocab
from adaptive_spec.engine import Decision, DraftRequest, ModelDrafter, SamplingParams, SpeculativeEngine, StopRule, fixed
from adaptive_spec.traces.workload import PromptRow
from tests.test_engine_greedy import PROMPTS, reference
from tests.tiny import noisy_copy, tiny_model

VOCAB = 128


class ToyEncoder:
    """Characters to ids (no tokenizer needed): prompts start with 2, responses end with EOS (1)."""

    def prompt_ids(self, prompt: str) -> list[int]:
        return [2] + [3 + ord(c) % 100 for c in prompt]

    def response_ids(self, response: str) -> list[int]:
        return [3 + ord(c) % 100 for c in response] + [1]


def rows(n: int, start: int = 0) -> list[PromptRow]:
    return [PromptRow(i + 1, f"write item {i} please", "a" if i % 2 else "b", f"m{i % 5}/f{i}",
                      f"def f{i}(x): return x * {i} + {i % 7}") for i in range(start, start + n)]  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    target = tiny_model(0, layers=2)
    base = noisy_copy(target, 0.3, seed=1)  # the "generic draft": agrees with the target often
    return target, base


@pytest.fixture(scope="module")
def vmap():
    kept = torch.cat([torch.tensor([1, 2]), torch.arange(3, VOCAB, 4), torch.arange(4, VOCAB, 4)]).unique()
    return VocabMap(kept, VOCAB)  # 65 ids: half the vocabulary is never proposable


@pytest.fixture(scope="module")
def collection(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("collection")
    collect(tiny[0], ToyEncoder(), rows(12), out, CollectSettings(top_k=8, shard_examples=5))
    return Collection(out)


# --- collection --------------------------------------------------------------------------------------------------


def test_collection_round_trip(tiny, collection):
    target = tiny[0]
    assert [s.examples for s in collection.manifest.shards] == [5, 5, 2]
    for row, example in zip(rows(12), collection.examples()):
        ids = ToyEncoder().prompt_ids(row.prompt) + ToyEncoder().response_ids(row.response)
        assert example.tokens.tolist() == ids
        assert example.record.prompt_len == len(ToyEncoder().prompt_ids(row.prompt))
        assert example.record.request_class == row.request_class and example.record.line == row.line
        with torch.no_grad():
            probs = torch.softmax(target(torch.tensor([ids])).logits[0].float(), -1)
        top = probs.topk(8, dim=-1)
        assert torch.equal(example.topk_ids, top.indices)
        torch.testing.assert_close(example.topk_probs, top.values, atol=1e-3, rtol=1e-3)  # stored as float16


def test_collection_resumes_and_skips_done_examples(tiny, tmp_path):
    settings = CollectSettings(top_k=4, shard_examples=3)

    class Interrupt(Exception):
        pass

    def interrupt_at_the_8th_forward(module, args, calls=[]):  # noqa: B006 - a counter across calls
        calls.append(1)
        if len(calls) == 8:
            raise Interrupt

    hook = tiny[0].model.register_forward_pre_hook(interrupt_at_the_8th_forward)
    try:
        with pytest.raises(Interrupt):
            collect(tiny[0], ToyEncoder(), rows(10), tmp_path / "c", settings)
    finally:
        hook.remove()
    assert len(read_manifest(tmp_path / "c").examples) == 6  # two full shards; the third was cut short
    calls = []
    hook = tiny[0].model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        collect(tiny[0], ToyEncoder(), rows(10) + rows(2), tmp_path / "c", settings)  # duplicates collected once
    finally:
        hook.remove()
    assert len(calls) == 4  # only the 4 examples not collected before
    collect(tiny[0], ToyEncoder(), rows(10), tmp_path / "full", settings)
    resumed, full = Collection(tmp_path / "c"), Collection(tmp_path / "full")
    assert [e.id for e in resumed.manifest.examples] == [e.id for e in full.manifest.examples]
    for a, b in zip(resumed.examples(), full.examples()):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.topk_ids, b.topk_ids)
    assert not list((tmp_path / "c").glob("*.tmp"))
    with pytest.raises(CollectionError, match="other settings"):
        collect(tiny[0], ToyEncoder(), rows(10), tmp_path / "c", CollectSettings(top_k=5, shard_examples=3))
    with pytest.raises(IdentityError):
        collect(tiny_model(9, layers=2), ToyEncoder(), rows(10), tmp_path / "c", settings)


def test_collection_hidden_states_and_generated_responses(tiny, tmp_path):
    target = tiny[0]
    prompts = [PromptRow(1, "no response here", "q"), PromptRow(2, "given", "q", None, "yes")]
    generated = [40, 41, 1]
    collect(target, ToyEncoder(), prompts, tmp_path, CollectSettings(top_k=4, hidden_states=True),
            respond=lambda ids: generated)  # fmt: skip
    c = Collection(tmp_path)
    first = c.example(c.manifest.examples[0], hidden=True)
    assert first.record.response == "generated" and first.tokens[-3:].tolist() == generated
    with torch.no_grad():
        states = target.model(first.tokens[None]).last_hidden_state[0]
    torch.testing.assert_close(first.hidden.float(), states, atol=2e-3, rtol=2e-3)
    assert c.example(c.manifest.examples[1]).record.response == "given"
    with safe_open(str(tmp_path / c.manifest.shards[0].file), "pt") as f:
        assert f.get_tensor("hidden").dtype == torch.float16 and f.get_tensor("topk_ids").dtype == torch.int32
    with pytest.raises(ValueError, match="line 1: no response"):
        collect(target, ToyEncoder(), prompts[:1], tmp_path / "x", CollectSettings())
    assert not (tmp_path / "x").exists()
    long = [PromptRow(1, "fine", "q", None, "ok"), PromptRow(7, "x" * 40, "q", None, "ok")]
    with pytest.raises(ValueError, match="line 7: the prompt alone has 41 tokens"):
        collect(target, ToyEncoder(), long, tmp_path / "y", CollectSettings(max_tokens=32))
    # refused before anything was written: a retry with a larger max_tokens is not refused for "other settings"
    assert not (tmp_path / "y").exists()
    collect(target, ToyEncoder(), long, tmp_path / "y", CollectSettings(max_tokens=64))
    assert len(read_manifest(tmp_path / "y").examples) == 2


# --- vocabulary map and drafter ------------------------------------------------------------------------------------


def test_vocab_map_stays_inside_the_target_vocabulary(vmap):
    assert int(vmap.to_target(torch.arange(vmap.size)).max()) < VOCAB
    all_ids = torch.arange(VOCAB)
    covered = all_ids[vmap.covers(all_ids)]
    assert torch.equal(vmap.to_target(vmap.to_draft(covered)), covered) and covered.numel() == vmap.size
    assert (vmap.to_draft(all_ids)[~vmap.covers(all_ids)] == vmap.other_id).all()
    with pytest.raises(ValueError, match="outside the target vocabulary"):
        VocabMap(torch.tensor([3, VOCAB]), VOCAB)
    chosen = choose_vocab(torch.tensor([0.0, 5, 1, 0, 2]), torch.tensor([0.0, 0, 0, 0, 3]), 3, always=[3])
    assert chosen.tolist() == [1, 3, 4]


def test_custom_drafter_proposes_only_target_ids(tiny, vmap):
    draft = derive_draft(tiny[1], [0, 1], vmap)
    with torch.no_grad():  # make the pruned *other* row and kept rows compete hard: it must still never come out
        draft.lm_head.weight[vmap.other_id] = 100.0
    drafter = CustomDrafter(draft, vmap)
    g = torch.Generator().manual_seed(0)
    kept = set(vmap.draft_to_target.tolist())
    for sampling in (SamplingParams(), SamplingParams(do_sample=True, temperature=1.5)):
        for prompt in PROMPTS:
            d = drafter.propose(torch.tensor(prompt), DraftRequest(6, sampling, generator=g))
            assert set(d.tokens.tolist()) <= kept
            if sampling.do_sample:
                assert d.q_draft.shape == (6, VOCAB)
                torch.testing.assert_close(d.q_draft.sum(-1), torch.ones(6))
                outside = torch.ones(VOCAB, dtype=torch.bool)
                outside[vmap.draft_to_target] = False
                assert (d.q_draft[:, outside] == 0).all()


def test_one_sampled_round_with_custom_drafter_keeps_target_distribution(tiny, vmap):
    """One round (k=1) with the custom drafter's q_draft emits tokens distributed as p_target, including tokens
    the draft cannot propose (the full multi-round chi-square test is in test_distill_sampling.py, marked slow)."""
    from scipy.stats import chisquare

    from adaptive_spec.engine.accept import accept_sampled
    from adaptive_spec.engine.sampling import distribution

    target, base = tiny
    drafter = CustomDrafter(derive_draft(base, [0, 1], vmap), vmap)
    context = torch.tensor(PROMPTS[0])
    params = SamplingParams(do_sample=True, temperature=2.0)  # flat enough that many ids outside V' matter
    with torch.no_grad():
        logits = target(context[None]).logits[0, -1:]  # [1, V]
    p = distribution(logits, params)[0]
    g = torch.Generator().manual_seed(11)
    q = drafter.propose(context, DraftRequest(1, params, generator=g)).q_draft  # [1, V]: the drafter's row here
    n = 20_000
    counts = torch.zeros(VOCAB)
    for _ in range(n):  # the engine's round: a proposal drawn from q, then the acceptance rule
        token = torch.multinomial(q[0], 1, generator=g)
        accepted, added = accept_sampled(token, q, logits.expand(2, -1), params, g)
        counts[int(token[0]) if accepted else int(added)] += 1
    outside = ~vmap.covers(torch.arange(VOCAB))
    assert (q[0, outside] == 0).all() and 0.05 < float(p[outside].sum()) < 0.95  # both kinds of ids carry mass
    big = p * n >= 5
    observed, expected = counts[big].tolist(), (p[big] * n).tolist()
    if (~big).any():
        observed.append(float(counts[~big].sum()))
        expected.append(float(p[~big].sum() * n))
    assert chisquare(observed, [e * n / sum(expected) for e in expected]).pvalue > 1e-3


@pytest.mark.parametrize(("layers", "width"), [([0, 1], None), ([1], None), ([0, 1], 16)])
def test_greedy_equality_with_custom_drafter(tiny, vmap, layers, width):
    target, base = tiny
    importance = [torch.rand(64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    custom = CustomDrafter(derive_draft(base, layers, vmap, mlp_width=width, importance=importance), vmap)
    engine = SpeculativeEngine(target, [custom, ModelDrafter(base)])
    accepted = 0
    for k in (1, 2, 3, 4, 8):
        for prompt in PROMPTS:
            out = engine.generate(torch.tensor(prompt), fixed("custom", k), stop=StopRule(40))
            assert out.sequences[0].tolist() == reference(target, prompt, 40, eos=-1)
            accepted += out.accepted
    assert accepted > 0
    schedule = iter([Decision("custom", 3), Decision("model", 2), Decision("custom", 8), Decision("none", 0)] * 20)
    out = engine.generate(torch.tensor(PROMPTS[2]), lambda state: next(schedule), stop=StopRule(50))
    assert out.sequences[0].tolist() == reference(target, PROMPTS[2], 50, eos=-1)


def test_width_pruning_keeps_the_important_neurons(tiny, vmap):
    import copy

    base = copy.deepcopy(tiny[1])
    dropped = torch.arange(0, 64, 3)  # neurons that contribute nothing: their down_proj columns are zero
    importance = []
    with torch.no_grad():
        for layer in base.model.layers:
            layer.mlp.down_proj.weight[:, dropped] = 0
            score = torch.ones(64)
            score[dropped] = 0
            importance.append(score)
    draft = derive_draft(base, [0, 1], vmap, mlp_width=64 - dropped.numel(), importance=importance)
    assert draft.config.intermediate_size == 64 - dropped.numel()
    ids = vmap.draft_to_target[torch.randperm(vmap.size, generator=torch.Generator().manual_seed(0))[:16]][None]
    with torch.no_grad():  # inputs the draft's vocabulary covers, so embeddings match too
        expected = base(ids).logits[0][:, vmap.draft_to_target]
        got = draft(vmap.to_draft(ids)).logits[0][:, : vmap.size]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # all inputs kept: same model, fewer neurons

    from adaptive_spec.distill.derive import mlp_importance

    with torch.no_grad():
        base.model.layers[0].mlp.up_proj.weight[5] = 0  # a neuron that never activates
    scores = mlp_importance(base, [torch.tensor(p) for p in PROMPTS])
    assert len(scores) == 2 and scores[0].shape == (64,) and scores[0][5] == 0 and (scores[1] > 0).all()


def test_layer_choices():
    assert spaced_layers(24, 4) == [0, 8, 15, 23]
    assert parse_layers("all", 3) == [0, 1, 2]
    assert parse_layers("first3+last", 24) == [0, 1, 2, 23]
    assert parse_layers("0,5,23", 24) == [0, 5, 23]
    with pytest.raises(ValueError):
        parse_layers("5,2", 24)


# --- training --------------------------------------------------------------------------------------------------------


def _train(tiny, vmap, collection, tmp, **kw):
    draft = derive_draft(tiny[1], [0, 1], vmap)
    stop_after = kw.pop("stop_after", None)
    settings = TrainSettings(**{"steps": 6, "batch_examples": 3, "lr": 3e-3, "warmup_steps": 2, "checkpoint_every": 2, **kw})
    ids = [e.id for e in collection.manifest.examples]
    result = train(draft, vmap, collection, ids, settings, tmp, stop_after=stop_after)
    return draft, result


def test_training_reduces_kl_and_is_reproducible(tiny, vmap, collection, tmp_path):
    a, ra = _train(tiny, vmap, collection, tmp_path / "a")
    b, rb = _train(tiny, vmap, collection, tmp_path / "b")
    assert ra.losses == rb.losses and ra.losses[-1] < ra.losses[0]
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    c, _ = _train(tiny, vmap, collection, tmp_path / "c", seed=1)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert torch.equal(a.model.embed_tokens.weight, derive_draft(tiny[1], [0, 1], vmap).model.embed_tokens.weight)


def test_train_layers_updates_only_the_top_of_the_draft(tiny, vmap, collection, tmp_path):
    start = derive_draft(tiny[1], [0, 1], vmap)
    tuned, result = _train(tiny, vmap, collection, tmp_path, train_layers=1)
    assert result.losses[-1] < result.losses[0]
    changed = {name for (name, p), q in zip(tuned.state_dict().items(), start.state_dict().values())
               if not torch.equal(p, q)}  # fmt: skip
    assert changed and all(n.startswith(("model.layers.1.", "model.norm.", "lm_head.")) for n in changed), changed
    assert any(n.startswith("model.layers.1.") for n in changed) and "lm_head.weight" in changed
    with pytest.raises(ValueError, match="exceeds"):
        _train(tiny, vmap, collection, tmp_path / "x", train_layers=3)


def test_resume_after_interruption_matches_uninterrupted(tiny, vmap, collection, tmp_path):
    full, rf = _train(tiny, vmap, collection, tmp_path / "full")
    _, partial = _train(tiny, vmap, collection, tmp_path / "resumed", stop_after=3)  # checkpoint at step 2
    assert len(partial.losses) == 3
    resumed, rr = _train(tiny, vmap, collection, tmp_path / "resumed")
    assert rr.resumed_from == 2 and rr.losses == rf.losses
    for p, q in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="different run"):
        _train(tiny, vmap, collection, tmp_path / "resumed", lr=1e-3)


# --- saving and loading -------------------------------------------------------------------------------------------


def _save(tiny, vmap, tmp_path):
    draft = derive_draft(tiny[1], [1], vmap)
    config = DraftConfig(target=target_identity(tiny[0]), base_draft="tiny", layers=[1], vocab_size=vmap.size)
    return save_custom_draft(draft, vmap, tmp_path, config, "# card\n", dtype=torch.float32), draft


def test_saved_draft_loads_with_transformers_and_for_its_target(tiny, vmap, tmp_path):
    directory, draft = _save(tiny, vmap, tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(directory)
    assert plain.config.num_hidden_layers == 1 and plain.config.vocab_size == vmap.size + 1
    assert torch.equal(plain.lm_head.weight, draft.lm_head.weight)
    assert json.loads((directory / "vocab_map.json").read_text())["draft_to_target"] == vmap.draft_to_target.tolist()
    drafter = load_custom_draft(directory, tiny[0])
    assert drafter.name == "custom" and drafter.vmap.size == vmap.size
    load_custom_draft(directory, tiny[0].to(torch.bfloat16)).reset()  # same target in another dtype is fine
    tiny[0].float()


def test_saved_draft_in_int8_drafts_losslessly(tiny, vmap, tmp_path):
    directory, _ = _save(tiny, vmap, tmp_path)
    custom = load_custom_draft(directory, tiny[0], quantize="int8")
    assert any(type(m).__module__.startswith("torch.ao") for m in custom.lm.model.modules())  # int8 linears
    engine = SpeculativeEngine(tiny[0], [custom])
    for prompt in PROMPTS:
        out = engine.generate(torch.tensor(prompt), fixed("custom", 4), stop=StopRule(30))
        assert out.sequences[0].tolist() == reference(tiny[0], prompt, 30, eos=-1)
    with pytest.raises(ValueError, match="unknown draft quantization"):
        load_custom_draft(directory, tiny[0], quantize="int4")


def test_draft_for_another_target_is_refused(tiny, vmap, tmp_path):
    directory, _ = _save(tiny, vmap, tmp_path)
    with pytest.raises(IdentityError, match="different target.*fingerprint"):
        load_custom_draft(directory, tiny_model(3, layers=2))
    with pytest.raises(IdentityError, match="num_hidden_layers"):
        load_custom_draft(directory, tiny_model(0, layers=3))
    (directory / "draft_config.json").unlink()
    with pytest.raises(ValueError, match="not a custom draft"):
        load_custom_draft(directory, tiny[0])


def test_a_saved_custom_draft_is_priced_and_chosen_by_the_controller(tiny, vmap, tmp_path):
    """calibrate_pair(custom_drafts=...) measures its own table; AdaptiveGenerator(custom_draft=DIR) drafts with it
    losslessly, and refuses a policy that does not price it (a handed-over drafter is never silently unused)."""
    from adaptive_spec.generator import AdaptiveGenerator
    from adaptive_spec.policy.calibrate import calibrate_pair
    from adaptive_spec.policy.file import PolicyFile
    from tests.test_generator import reference as hf_reference

    directory, _ = _save(tiny, vmap, tmp_path / "custom")
    target = tiny[0]
    cost = calibrate_pair(target, None, "tiny", "float32", reps=1, custom_drafts={"custom": directory})
    assert set(cost.drafts) == {"custom"} and cost.draft_cost_ratio_of("custom") > 0
    unpriced = PolicyFile(name="no-custom", pair_id="tiny", cost=cost.model_copy(update={"drafts": {}}))
    with pytest.raises(ValueError, match="no measurements for drafter.*custom"):
        AdaptiveGenerator(target, policy=unpriced, custom_draft=directory)
    with pytest.raises(ValueError, match="no measurements for drafter.*mine"):
        AdaptiveGenerator(target, policy=unpriced, extra_drafters=(load_custom_draft(directory, target, name="mine"),))
    generator = AdaptiveGenerator(target, policy=PolicyFile(name="tiny-custom", pair_id="tiny", cost=cost),
                                  custom_draft=directory)  # fmt: skip
    for prompt in PROMPTS:
        out = generator.generate(torch.tensor([prompt]), max_new_tokens=24, eos_token_id=-1, speculation="on")
        assert out.sequences[0].tolist() == hf_reference(target, prompt, 24)
        assert any(r.drafter == "custom" and r.proposed > 0 for r in out.result.records)


# --- traffic, CLI, pipeline ---------------------------------------------------------------------------------------


BAD = [
    '{"prompt": "fine", "class": "a"}',
    '{"prompt": "fine too", "response": "ok"}',
    '{"prompt": "broken"',
    '{"prompt": "", "class": "a"}',
    '["not", "an", "object"]',
    '{"prompt": "x", "response": 5}',
]


def test_bad_traffic_rows_are_named_by_line(tmp_path):
    path = tmp_path / "traffic.jsonl"
    path.write_text("\n".join(BAD) + "\n")
    with pytest.raises(TrafficError) as error:
        read_traffic(path)
    message = str(error.value)
    assert message.startswith("4 malformed row(s)")
    for line in (3, 4, 5, 6):
        assert f"traffic.jsonl:{line}:" in message
    assert message.index(":3:") < message.index(":6:")
    kept = read_traffic(path, skip_bad_rows=True)
    assert [r.line for r in kept.rows] == [1, 2] and len(kept.skipped) == 4


def test_cli_refuses_bad_traffic_before_loading_models(tmp_path):
    path = tmp_path / ("deep" * 30) / "traffic.jsonl"  # a path wider than a terminal is still named on one line
    path.parent.mkdir()
    path.write_text("\n".join(BAD) + "\n")
    app = typer.Typer()
    app.command()(distill_command)
    result = CliRunner().invoke(app, [str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{path}:3:" in result.output
    result = CliRunner().invoke(app, [str(path), "--out", str(tmp_path / "out"), "--kind", "head"])
    assert result.exit_code == 2 and "traffic.jsonl:3:" in result.output  # the head pipeline checks traffic first too
    result = CliRunner().invoke(app, [str(path), "--out", str(tmp_path / "out"), "--kind", "bogus"])
    assert result.exit_code == 2
    result = CliRunner().invoke(app, [str(path), "--out", str(tmp_path / "out"), "--layers", "3,1"])
    assert result.exit_code == 2 and "increasing" in result.output
    result = CliRunner().invoke(app, [str(path), "--out", str(tmp_path / "out"), "--responses", "human"])
    assert result.exit_code == 2 and "--responses must be 'target' or 'draft'" in result.output
    head = ["--kind", "head", "--init-head", str(tmp_path / "nohead")]
    result = CliRunner().invoke(app, [str(path), "--out", str(tmp_path / "out"), *head])
    assert result.exit_code == 2 and "no draft head at" in result.output
    result = CliRunner().invoke(app, [str(path), "--out", str(tmp_path / "out"), "--init-head", str(tmp_path)])
    assert result.exit_code == 2 and "use it with --kind head" in result.output
    assert not (tmp_path / "out").exists()


def test_split_keeps_groups_together():
    data = rows(40)
    train_rows, held = split_rows(data, 0.25, seed=0)
    assert len(train_rows) + len(held) == 40 and held
    groups = lambda rs: {(r.request_class, r.row_id.split("/")[0]) for r in rs}  # noqa: E731
    assert not groups(train_rows) & groups(held)
    assert split_rows(data, 0.25, seed=0) == (train_rows, held)


def test_pipeline_end_to_end(tiny, tmp_path):
    target, base = tiny
    path = tmp_path / "traffic.jsonl"
    path.write_text("".join(json.dumps({"id": r.row_id, "class": r.request_class, "prompt": r.prompt,
                                        "response": r.response}) + "\n" for r in rows(20)))  # fmt: skip
    traffic = read_traffic(path)
    models = DistillModels(target=target, base=base, encoder=ToyEncoder(), eos=frozenset([1]), base_name="tiny")
    settings = DistillSettings(layers="all", mlp_width=24, importance_examples=4, vocab_size=64, eval_split=0.2, e2e_prompts=1, e2e_new_tokens=12,
                               generic_k=(2,), custom_k=(2, 4), collect=CollectSettings(top_k=8),
                               train=TrainSettings(steps=4, batch_examples=2, lr=3e-3))  # fmt: skip
    summary = run_distill(path, traffic.rows, tmp_path / "out", settings, models)
    out = tmp_path / "out"
    for name in ("config.json", "model.safetensors", "vocab_map.json", "draft_config.json", "README.md",
                 "eval.json", "heldout.jsonl", "collection/manifest.json", "checkpoint/state.pt"):  # fmt: skip
        assert (out / name).is_file(), name
    assert set(summary["alpha"]) == {"a", "b", "all"}
    e2e = summary["end_to_end"]
    assert e2e["outputs_equal_target_share"] == 1.0  # float32: speculation never changes the output
    assert {"target", "model k=2", "custom k=2", "custom k=4"} == set(e2e["classes"]["all"]["configs"])
    card = (out / "README.md").read_text()
    assert "greedy α generic → custom" in card and str(path) in card
    facts = json.loads((out / "draft_config.json").read_text())["facts"]
    assert facts["training"]["steps_done"] == 4 and facts["traffic"]["heldout_rows"] == 4
    loaded = load_custom_draft(out, target)
    assert loaded.vmap.size <= 64 and loaded.lm.model.config.intermediate_size == 24
    assert (out / "checkpoint" / "mlp_importance.safetensors").is_file()
    again = run_distill(path, traffic.rows, out, settings, models)  # everything resumes: same model, same results
    assert again["alpha"] == summary["alpha"]


def test_an_evaluation_cap_reaches_every_class_in_order():
    """The first ``limit`` held-out rows may all be one class (a file sorted by class): the cap takes them
    round-robin over classes, in their original order, so a class at the end is still measured."""
    from adaptive_spec.distill.traffic import round_robin_by_class

    ids = [f"code/{i}" for i in range(8)] + ["math/0", "math/1"]
    picked = round_robin_by_class(ids, 4, lambda i: i.split("/")[0])
    assert picked == ["code/0", "code/1", "math/0", "math/1"]
    assert round_robin_by_class(ids, 3, lambda i: i.split("/")[0]) == ["code/0", "code/1", "math/0"]
    assert round_robin_by_class(ids, None, lambda i: i) == ids == round_robin_by_class(ids, 99, lambda i: i)


def test_head_traffic_builder_keeps_benchmark_prompts_out():
    """benchmarks/workloads/build_head_traffic.py: prose rows skip each Spec-Bench category's first question (the
    controller benchmark's prompts) and whatever a head's heldout.jsonl lists (modules and questions)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    path = root / "benchmarks" / "workloads" / "build_head_traffic.py"
    spec = importlib.util.spec_from_file_location("build_head_traffic", path)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    questions = [json.loads(line) for line in builder.SPEC_BENCH.read_text().splitlines() if line.strip()]
    firsts = {}
    for q in questions:
        firsts.setdefault(q["category"], f"sb-{q['question_id']}")
    some_module = json.loads((root / "benchmarks/workloads/code.jsonl").read_text().splitlines()[0])["id"]
    excluded_question = f"sb-{[q for q in questions if q['category'] == 'qa'][1]['question_id']}"
    out = builder.build(code_rows=40, math_rows=0, prose_per_category=6, exclude={some_module, excluded_question})
    ids = [r["id"] for r in out]
    assert not set(firsts.values()) & set(ids) and excluded_question not in ids
    assert not any(i.split("/")[0] == some_module.split("/")[0] for i in ids if "/" in i)
    prose = [r for r in out if r["class"] != "code"]
    assert all("response" not in r for r in prose) and all("response" in r for r in out if r["class"] == "code")
    per = {c: sum(r["class"] == c for r in prose) for c in firsts}
    assert per["qa"] == 6 and per["rag"] == per["summarization"] == 2 and per["writing"] == 6


def test_summary_compares_the_custom_draft_with_each_generic_drafter():
    from adaptive_spec.distill.evaluate import Run, summarize

    def run(drafter: str, k: int, seconds: float) -> Run:
        return Run(0, "code", drafter, k, 10, seconds, 4 * k, 3 * k, "same")

    runs = [run("model", 0, 10.0), run("model", 2, 8.0), run("int8", 2, 5.0), run("int8", 4, 4.0),
            run("custom", 2, 3.2), run("custom", 4, 3.6)]  # fmt: skip
    entry = summarize(runs, ("model", "int8", "custom"))["classes"]["code"]
    assert entry["best"]["int8"]["config"] == "int8 k=4" and entry["best"]["custom"]["config"] == "custom k=2"
    assert entry["ratio"] == pytest.approx(8.0 / 3.2)  # custom over the bf16 generic ("model"): the bar
    assert entry["ratio_over"] == pytest.approx({"model": 8.0 / 3.2, "int8": 4.0 / 3.2})
    assert "ratio_over" not in summarize(runs, ("model", "custom"))["classes"]["code"]
