"""AdaptiveGenerator: drop-in generate, lossless under the controller's switching, loud on what it can't do."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_spec.generator import AdaptiveGenerator, make_adaptive
from adaptive_spec.policy.base import RequestInfo
from adaptive_spec.policy.controller import ClassSettings, ControllerConfig, DraftSettings
from adaptive_spec.policy.cost import CostModel, CostTable
from adaptive_spec.policy.file import PolicyFile, PolicyFileError, load_policy_file
from adaptive_spec.stats import MemoryStatsStore

PROMPTS = [[5, 17, 42, 9, 3, 17, 42, 9, 77, 5, 17], list(range(20, 60)), [7, 8, 9, 10, 7, 8, 9, 10, 7, 8]]


def tiny_policy(draft_s: float = 0.03, **controller) -> PolicyFile:
    target = CostTable(tokens=[1, 4, 8, 17], contexts=[16, 512], seconds=[[0.1, 0.11, 0.13, 0.16], [0.12, 0.13, 0.15, 0.19]])
    draft = CostTable(tokens=[1, 32], contexts=[16, 512], seconds=[[draft_s, draft_s + 0.02], [draft_s + 0.01, draft_s + 0.03]])
    cost = CostModel(pair_id="tiny", hardware="test", dtype="float32", target=target, drafts={"model": draft}, lookup_s=1e-4)
    # These prices are fiction (the tiny models run in ~1 ms): tracking would replace them with measured times, and
    # the decisions under test would follow timing noise. test_measured_costs_replace_fictional_ones tracks them.
    controller.setdefault("track_costs", False)
    return PolicyFile(name="tiny", pair_id="tiny", cost=cost, controller=ControllerConfig(**controller))


def reference(target, prompt, n):
    ids = torch.tensor([prompt])
    return target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                           eos_token_id=-1, pad_token_id=0)[0].tolist()  # fmt: skip


class Recording:
    """Wraps a policy; remembers every decision and record, to check that the k asked is the k run."""

    name = "recording"

    def __init__(self, inner):
        self.inner = inner
        self.log = []

    def start(self, request: RequestInfo):
        session = self.inner.start(request)
        decide, on_round = session.decide, session.on_round

        def decide_logged(state):
            decision = decide(state)
            self.log.append(["decision", decision])
            return decision

        def on_round_logged(record):
            self.log.append(["record", record])
            on_round(record)

        session.decide, session.on_round = decide_logged, on_round_logged
        return session


@pytest.mark.parametrize("probe_every", [1, 3])
def test_lossless_while_the_controller_switches(pair, probe_every):
    """Greedy equality while drafter and k change between rounds, off->on transitions of the model included."""
    from adaptive_spec.generator import policy_from_file

    target, draft = pair
    # an expensive draft: the model is mostly off and comes back in probes (off -> on transitions), which here
    # must run whatever they cost (probe_budget unbounded)
    inner = policy_from_file(tiny_policy(0.2, probe_every=probe_every, probe_k=2, hysteresis=0.0, probe_budget=1e6,
                                         default=ClassSettings(model=DraftSettings(threshold=0.3, max_k=6))))  # fmt: skip
    policy = Recording(inner)
    gen = AdaptiveGenerator(target, draft, policy=policy)
    drafters_seen, catch_ups = set(), 0
    for prompt in PROMPTS:
        out = gen.generate(torch.tensor([prompt]), max_new_tokens=60, eos_token_id=-1, request_class="c")
        assert out.sequences[0].tolist() == reference(target, prompt, 60)
        records = out.result.records
        drafters_seen |= {r.drafter for r in records}
        # the model draft came back after other rounds and caught up several tokens in one forward
        catch_ups += sum(1 for a, b in zip(records, records[1:]) if a.drafter != "model" and b.drafter == "model"
                         and b.catchup > 1)  # fmt: skip
    assert {"model", "lookup", "none"} <= drafters_seen
    assert catch_ups > 0
    # the k each round ran with is the k decided (or the budget's cap near the end)
    pending = None
    for kind, item in policy.log:
        if kind == "decision":
            pending = item
        else:
            assert item.k == pending.k or item.k_asked == pending.k
            assert item.drafter in (pending.drafter, "none", "lookup", "model")
            if item.k:
                assert pending.k > 0


def test_no_state_leaks_between_requests_except_the_store(pair):
    """A request's decisions depend on the store's statistics, not on the requests the generator ran before."""
    from adaptive_spec.generator import policy_from_file

    target, draft = pair
    store = MemoryStatsStore()
    policy = Recording(policy_from_file(tiny_policy(), store))
    gen = AdaptiveGenerator(target, draft, policy=policy)
    gen.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=30, eos_token_id=-1, request_class="c")
    clone = MemoryStatsStore()
    clone._counters = store.snapshot(policy.inner.estimator.spec)  # the statistics as they are now
    start = len(policy.log)
    gen.generate(torch.tensor([PROMPTS[1]]), max_new_tokens=30, eos_token_id=-1, request_class="c")
    after_history = [item for kind, item in policy.log[start:] if kind == "decision"]

    fresh = Recording(policy_from_file(tiny_policy(), clone))
    AdaptiveGenerator(target, draft, policy=fresh).generate(
        torch.tensor([PROMPTS[1]]), max_new_tokens=30, eos_token_id=-1, request_class="c"
    )
    assert [item for kind, item in fresh.log if kind == "decision"] == after_history


def test_measured_costs_replace_fictional_ones(pair):
    """The tiny models run ~100x faster than the policy's prices: after a request the controller decides with
    measured ones, and its output is still the target's own."""
    from adaptive_spec.generator import policy_from_file

    target, draft = pair
    policy = policy_from_file(tiny_policy(track_costs=True))
    gen = AdaptiveGenerator(target, draft, policy=policy)
    for prompt in PROMPTS[:2]:
        out = gen.generate(torch.tensor([prompt]), max_new_tokens=30, eos_token_id=-1, request_class="c")
        assert out.sequences[0].tolist() == reference(target, prompt, 30)
    assert policy.cost is not policy.calibrated_cost
    assert policy.cost.target(1, 64) < 0.2 * policy.calibrated_cost.target(1, 64)
    prefills = policy.cost_tracker.target.anchors  # each prompt's prefill, timed as one wide forward
    assert sum(t.rounds for t in prefills.values()) == pytest.approx(2, abs=0.05)
    assert {round(t.width) for t in prefills.values()} == {len(PROMPTS[0]), len(PROMPTS[1])}


def test_the_engine_tells_the_prefill_before_the_first_round(pair):
    from adaptive_spec.engine import SpeculativeEngine, StopRule

    target, _ = pair
    told = []
    result = SpeculativeEngine(target, []).generate(
        torch.tensor(PROMPTS[1]), stop=StopRule(5), on_prefill=lambda n, s: told.append((n, s)), on_round=told.append)
    assert told[0] == (len(PROMPTS[1]), result.prefill_s)
    assert len(told) == 1 + len(result.records)


def test_drop_in_arguments(pair):
    target, draft = pair
    gen = AdaptiveGenerator(target, draft, policy=tiny_policy())
    ids = torch.tensor([PROMPTS[0]])
    with pytest.raises(TypeError, match="num_beams"):
        gen.generate(ids, max_new_tokens=5, num_beams=2)
    with pytest.raises(ValueError, match="batch size 1"):
        gen.generate(torch.tensor([PROMPTS[0], PROMPTS[0]]), max_new_tokens=5)
    with pytest.raises(ValueError, match="speculation"):
        gen.generate(ids, max_new_tokens=5, speculation="maybe")
    from transformers import GenerationConfig

    with pytest.raises(ValueError, match="repetition_penalty"):
        gen.generate(ids, generation_config=GenerationConfig(max_new_tokens=5, repetition_penalty=1.2))
    # left padding is stripped; the output equals the unpadded prompt's
    padded = torch.tensor([[0, 0] + PROMPTS[0]])
    mask = torch.tensor([[0, 0] + [1] * len(PROMPTS[0])])
    out = gen.generate(padded, attention_mask=mask, max_new_tokens=10, eos_token_id=-1)
    assert out.sequences[0].tolist() == reference(target, PROMPTS[0], 10)
    # sampling is seeded and reproducible
    a = gen.generate(ids, max_new_tokens=12, do_sample=True, temperature=0.8, seed=3, eos_token_id=-1)
    b = gen.generate(ids, max_new_tokens=12, do_sample=True, temperature=0.8, seed=3, eos_token_id=-1)
    assert a.sequences.tolist() == b.sequences.tolist()


def test_make_adaptive_patches_generate(pair):
    target, draft = pair
    import copy

    model = copy.deepcopy(target)
    make_adaptive(model, draft=draft, policy=tiny_policy())
    out = model.generate(torch.tensor([PROMPTS[1]]), max_new_tokens=20, eos_token_id=-1)
    assert out[0].tolist() == reference(target, PROMPTS[1], 20)
    assert model.adaptive.last_output.report.rounds > 0


def test_bad_policy_files(tmp_path):
    good = tiny_policy()
    path = tmp_path / "p.json"
    path.write_text(good.to_json())
    assert load_policy_file(path, "tiny").pair_id == "tiny"
    with pytest.raises(PolicyFileError, match="model pair"):
        load_policy_file(path, "other")
    data = json.loads(good.to_json())
    del data["cost"]
    path.write_text(json.dumps(data))
    with pytest.raises(PolicyFileError, match="cost"):
        load_policy_file(path)
    path.write_text(good.to_json().replace('"lookup_s": 0.0001', '"lookup_s": NaN'))
    with pytest.raises(PolicyFileError, match="NaN"):
        load_policy_file(path)
    data = json.loads(good.to_json())
    data["version"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(PolicyFileError, match="version 7"):
        load_policy_file(path)
    data = json.loads(good.to_json())
    data["controller"]["default"]["threshold"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(PolicyFileError, match="threshold"):
        load_policy_file(path)
    with pytest.raises(PolicyFileError, match="not found"):
        load_policy_file(tmp_path / "missing.json")


def test_calibrated_policy_keeps_the_file_there_else_starts_from_the_seed(tmp_path):
    """calibrate swaps its measured cost into the policy at --out; a new file starts from --seed-policy (another
    pair's: a quantized draft reuses the bf16 draft's tuned controller and classifier) or from defaults."""
    from adaptive_spec.policy.file import ControllerConfig, calibrated_policy

    seed = tiny_policy(prior_weight=9.0)
    cost = seed.cost.model_copy(update={"pair_id": "tiny+int8-draft", "lookup_s": 0.0002})
    made = calibrated_policy(tmp_path / "int8.json", "tiny+int8-draft", cost, seed)
    assert made.pair_id == "tiny+int8-draft" and made.cost == cost and made.name == "int8"
    assert made.controller == seed.controller and made.classifier == seed.classifier
    assert made.trained_on["seeded_from"] == {"policy": seed.name, "pair_id": "tiny"}
    (tmp_path / "int8.json").write_text(made.to_json())
    assert load_policy_file(tmp_path / "int8.json", "tiny+int8-draft") == made  # consistent: it loads back
    again = calibrated_policy(tmp_path / "int8.json", "tiny+int8-draft", cost.model_copy(update={"lookup_s": 3e-4}))
    assert again.cost.lookup_s == 3e-4 and again.trained_on == made.trained_on  # the file there wins over any seed
    plain = calibrated_policy(tmp_path / "new.json", "tiny+int8-draft", cost)
    assert plain.controller == ControllerConfig() and plain.classifier is None


def test_the_committed_int8_draft_policy_is_its_pairs_and_prices_the_cheaper_draft():
    """``--draft-quantize int8`` finds its own committed policy: valid, for that pair id, the bf16 policy's
    classifier and controller (seeded), and a draft step priced below the bf16 draft's."""
    from adaptive_spec.policy.file import default_policy_path

    bf16 = load_policy_file(default_policy_path("qwen2.5-coder"), "qwen2.5-coder")
    int8 = load_policy_file(default_policy_path("qwen2.5-coder+int8-draft"), "qwen2.5-coder+int8-draft")
    assert int8.classifier == bf16.classifier and int8.trained_on["seeded_from"]["policy"] == bf16.name
    assert int8.cost.draft_s(4, 256) < 0.7 * bf16.cost.draft_s(4, 256)


@pytest.mark.parametrize("fixed_policy", ["fixed", "per-class"])
def test_speculation_off_wins_over_a_fixed_policy(pair, fixed_policy):
    """speculation="off" means plain steps whatever the policy; a fixed policy that ignored it once made a
    benchmark's target-only baseline silently speculate."""
    from adaptive_spec.policy.base import FixedPolicy, PerClassPolicy

    target, draft = pair
    policy = FixedPolicy("model", 4)
    if fixed_policy == "per-class":
        policy = PerClassPolicy({"c": policy}, FixedPolicy("lookup", 3))
    gen = AdaptiveGenerator(target, draft, policy=policy)
    prompt = torch.tensor([PROMPTS[0]])
    off = gen.generate(prompt, max_new_tokens=20, eos_token_id=-1, request_class="c", speculation="off")
    assert {r.k for r in off.result.records} == {0}
    on = gen.generate(prompt, max_new_tokens=20, eos_token_id=-1, request_class="c")
    assert any(r.k > 0 for r in on.result.records)
    assert torch.equal(off.sequences, on.sequences)


def test_models_from_load_pair_find_their_pairs_committed_policy(tmp_path, monkeypatch):
    import copy

    import adaptive_spec.policy.file as policy_file
    from adaptive_spec.models import quantize_draft
    from adaptive_spec.models.load import PAIR_ID_ATTRIBUTE
    from tests.tiny import tiny_pair

    target, draft = tiny_pair()  # fresh models: the marks must not reach the session's shared pair
    monkeypatch.setattr(policy_file, "POLICIES_DIR", tmp_path)
    (tmp_path / "tiny-cpu.json").write_text(tiny_policy().model_dump_json())
    with pytest.raises(ValueError, match="no default policy"):
        AdaptiveGenerator(target, draft)  # unmarked models: nothing to go by
    for model in (target, draft):
        setattr(model, PAIR_ID_ATTRIBUTE, "tiny")  # what load_pair does
    gen = AdaptiveGenerator(target, draft)
    assert gen.policy.estimator.pair_id == "tiny"
    assert gen.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=4).sequences.shape[-1] == len(PROMPTS[0]) + 4
    # the pair's draft quantized after loading prices as the int8 pair, never with the bfloat16 draft's costs
    int8 = quantize_draft(copy.deepcopy(draft))
    assert getattr(int8, PAIR_ID_ATTRIBUTE) == "tiny+int8-draft" and getattr(draft, PAIR_ID_ATTRIBUTE) == "tiny"
    with pytest.raises(ValueError, match=r"tiny\+int8-draft-cpu.json not found"):
        AdaptiveGenerator(target, int8)
    setattr(draft, PAIR_ID_ATTRIBUTE, "other")  # a draft of another pair: no pair policy fits
    with pytest.raises(ValueError, match="no default policy for this pair: pass"):
        AdaptiveGenerator(target, draft)
    setattr(draft, PAIR_ID_ATTRIBUTE, "tiny")
    with pytest.raises(ValueError, match="missing-cpu.json not found"):
        AdaptiveGenerator(target, draft, pair_id="missing")  # an explicit pair id wins, and the error names the file
