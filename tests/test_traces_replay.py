"""Replaying a trace reproduces, round for round, what the engine does (tiny models, float32)."""

from __future__ import annotations

import collections
import itertools
import math

import pytest
import torch

from adaptive_spec.engine import PADDED_PLAIN_STEP, Decision, SpeculativeEngine, StopRule
from adaptive_spec.policy.base import FixedPolicy, RequestInfo
from adaptive_spec.policy.cost import CostModel, CostTable
from adaptive_spec.runtime import eos_ids, standard_drafters
from adaptive_spec.traces.collect import TraceCollector
from adaptive_spec.traces.format import RequestTrace, read_traces, write_traces
from adaptive_spec.traces.simulate import replay
from tests.tiny import noisy_copy, tiny_model

PROMPTS = [[5, 17, 42, 9, 3, 17, 42, 9, 77, 5, 17], list(range(20, 60)), [100, 101, 102, 103, 100, 101],
           [7, 8, 9, 10, 7, 8, 9, 10, 7, 8]]


def flat_cost() -> CostModel:
    table = CostTable(tokens=[1, 16], contexts=[0, 1000], seconds=[[0.1, 0.2], [0.2, 0.3]])
    return CostModel(pair_id="tiny", hardware="test", dtype="float32", target=table,
                     drafts={"model": table, "head": table})  # fmt: skip


class _Scripted:
    """A policy whose decisions cycle through a list (the same sequence in the engine and in replay)."""

    name = "scripted"

    def __init__(self, decisions):
        self.decisions = decisions

    def start(self, request: RequestInfo):
        policy = FixedPolicy()
        session = policy.start(request)
        cycle = itertools.cycle(self.decisions)
        session.decide = lambda state: next(cycle)
        return session


SCRIPTS = {
    "model k=4": [Decision("model", 4)],
    "model k=8 thr=0.5": [Decision("model", 8, 0.5)],
    "lookup k=6": [Decision("lookup", 6)],
    "hybrid k=5 thr=0.4": [Decision("hybrid", 5, 0.4)],
    "switching": [Decision("model", 3), Decision("none", 0), Decision("lookup", 5), Decision("hybrid", 8, 0.6),
                  Decision("model", 9, 0.35), Decision("none", 0), Decision("none", 0)],
    "model k=3 + lookup extension 4": [Decision("model", 3, 0.0, 4)],
    "switching with extensions": [Decision("model", 2, 0.0, 6), Decision("lookup", 5), Decision("hybrid", 4, 0.4, 3),
                                  Decision("model", 1, 0.0, 16), Decision("none", 0)],
    "model k=4 + siblings": [Decision("model", 4, sibling_below=0.9)],
    "switching with siblings": [Decision("model", 3, 0.0, 0, 1.0), Decision("hybrid", 5, 0.4, 2, 0.8),
                                Decision("none", 0), Decision("model", 6, 0.5, 0, 0.95), Decision("lookup", 4)],
    "padded plain steps": [PADDED_PLAIN_STEP],
    "switching with padded plain steps": [Decision("model", 3), PADDED_PLAIN_STEP, PADDED_PLAIN_STEP,
                                          Decision("lookup", 4), PADDED_PLAIN_STEP, Decision("none", 0)],
}


def _stop(engine):
    return StopRule(48, eos_ids(None, engine.target.model))


@pytest.fixture(scope="module")
def traced():
    target = tiny_model(0)
    draft = noisy_copy(target, 0.25, seed=1)
    with torch.no_grad():
        draft.lm_head.weight.mul_(3.0)  # a confident draft: probabilities on both sides of the thresholds
    engine = SpeculativeEngine(target, standard_drafters(target, draft))
    collector = TraceCollector(engine, draft, None, "tiny", "float32", depth=16, theta_min=0.3)
    traces = [collector.trace(torch.tensor(p), str(p), "test", 48) for p in PROMPTS]
    return engine, traces


def test_trace_records_the_target_output(traced, pair):
    engine, traces = traced
    for prompt, trace in zip(PROMPTS, traces):
        out = engine.generate(torch.tensor(prompt), stop=_stop(engine))
        assert trace.target == out.new_tokens.tolist()
    assert sum(sum(t.drafts["model"].match) for t in traces) > 0
    assert sum(sum(t.lookup.match) for t in traces) > 0
    assert sum(len(t.drafts["model"].diverge) for t in traces) > 0


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_replay_matches_engine_round_for_round(traced, script):
    engine, traces = traced
    for prompt, trace in zip(PROMPTS, traces):
        policy = _Scripted(SCRIPTS[script])
        session = policy.start(RequestInfo())
        real = engine.generate(torch.tensor(prompt), session.decide, stop=_stop(engine)).records
        sim = replay(trace, _Scripted(SCRIPTS[script]), flat_cost()).records
        fields = lambda r: (r.drafter, r.k, r.proposed, r.accepted, r.emitted, r.context_len, r.catchup,  # noqa: E731
                            r.extension_accepted, r.extension if r.accepted == r.proposed else None,
                            r.sibling_accepted, r.guessed, r.guess_accepted)
        assert [fields(r) for r in sim] == [fields(r) for r in real]
        for s, r in zip(sim, real):  # the confidences a controller sees are the engine's, where recorded
            known = [(a, b) for a, b in zip(s.draft_probs, r.draft_probs) if not math.isnan(a)]
            assert [a for a, _ in known] == pytest.approx([b for _, b in known], abs=1e-4)
            if len(known) == len(s.draft_probs):  # siblings sit where the confidence is low: known everywhere
                assert s.siblings == r.siblings


def test_replay_prices_padded_plain_steps_as_two_token_forwards(traced):
    """A padded plain step is priced as the 2-token forward it is, and its right guesses are in the traces (the
    round-for-round comparison above then checks something)."""
    _, traces = traced
    script = SCRIPTS["padded plain steps"]
    runs = [replay(t, _Scripted(script), flat_cost()).records for t in traces]
    assert sum(r.guess_accepted for records in runs for r in records) > 0
    cost = flat_cost()
    assert all(r.verify_s == cost.verify_s(2, r.context_len) for records in runs for r in records)


def test_replay_prices_siblings_from_the_second_choice_column(traced):
    """Siblings are accepted in the traced runs (the scripts above then compare something), and a trace from before
    the ``second`` column replays with no siblings rather than failing."""
    engine, traces = traced
    script = SCRIPTS["model k=4 + siblings"]
    rescued = sum(r.sibling_accepted for t in traces for r in replay(t, _Scripted(script), flat_cost()).records)
    assert rescued > 0
    old = traces[0].model_copy(deep=True)
    old.drafts["model"].second = None
    assert "second" not in old.dump_line()
    records = replay(RequestTrace.model_validate_json(old.dump_line()), _Scripted(script), flat_cost()).records
    assert all(r.siblings == 0 == r.sibling_accepted for r in records)


def test_replay_of_a_heads_siblings_matches_engine():
    """A head whose second choice is often right (two tokens only: the target's most common ones): the replay's
    record of its second choice at its first wrong token rescues exactly the rounds the engine's tree does."""
    from tests.test_engine_head import common_output_tokens, random_head

    from adaptive_spec.engine.head import attach_head

    target = tiny_model(0)
    draft = noisy_copy(target, 0.25, seed=1)
    common = common_output_tokens(target, 2, PROMPTS, 48)
    engine = SpeculativeEngine(target, standard_drafters(target, draft))
    attach_head(engine, random_head(target, torch.tensor(common)))
    collector = TraceCollector(engine, draft, None, "tiny", "float32", depth=16, theta_min=0.05)
    script = [Decision("head", 4, 0.05, sibling_below=1.0), Decision("head", 2, 0.05, sibling_below=0.7)]
    rescued = 0
    for prompt in PROMPTS:
        trace = collector.trace(torch.tensor(prompt), str(prompt), "test", 48)
        real = engine.generate(torch.tensor(prompt), _Scripted(script).start(RequestInfo()).decide,
                               stop=_stop(engine)).records  # fmt: skip
        sim = replay(trace, _Scripted(script), flat_cost()).records
        fields = lambda r: (r.drafter, r.proposed, r.accepted, r.emitted, r.siblings, r.sibling_accepted)  # noqa: E731
        assert [fields(r) for r in sim] == [fields(r) for r in real]
        rescued += sum(r.sibling_accepted for r in real)
    assert rescued > 0


def test_replay_prices_each_drafter_by_its_own_table(traced):
    """A trace with columns for a second model-type drafter (a custom draft, a head) replays its rounds at that
    drafter's measured cost, not the generic draft's."""
    _, traces = traced
    trace = traces[0].model_copy(deep=True)
    trace.drafts["custom"] = trace.drafts["model"]
    cheap = CostTable(tokens=[1, 16], contexts=[0, 1000], seconds=[[0.01, 0.02], [0.02, 0.03]])
    cost = flat_cost().model_copy(update={"drafts": {**flat_cost().drafts, "custom": cheap}})
    model = replay(trace, _Scripted([Decision("model", 4)]), cost).records
    custom = replay(trace, _Scripted([Decision("custom", 4)]), cost).records
    assert [(r.proposed, r.accepted) for r in custom] == [(r.proposed, r.accepted) for r in model]
    for m, c in [(m, c) for m, c in zip(model, custom) if c.proposed]:  # not the last rounds' plain steps
        assert c.drafter == "custom" and c.draft_s == pytest.approx(cost.draft_s(c.proposed, c.context_len, c.catchup,
                                                                                 "custom"))  # fmt: skip
        assert c.draft_s < m.draft_s


HEAD_SCRIPTS = {
    "head k=4 thr=0.1": [Decision("head", 4, 0.1)],
    "head k=8 thr=0.05": [Decision("head", 8, 0.05)],
    "switching head, model, lookup": [Decision("head", 3, 0.1), Decision("model", 3), Decision("none", 0),
                                      Decision("head", 6, 0.05), Decision("lookup", 4), Decision("head", 2, 0.2),
                                      Decision("none", 0), Decision("none", 0), Decision("hybrid", 4, 0.4)],
    "head with siblings": [Decision("head", 4, 0.05, sibling_below=1.0), Decision("head", 3, 0.1, sibling_below=0.5),
                           Decision("model", 3), Decision("none", 0)],
    "head as a shadow": [Decision("model", 3, shadow="head"), Decision("none", 0, shadow="head"),
                         Decision("head", 2, 0.1), Decision("lookup", 4, shadow="head"),
                         Decision(pad_plain=True, shadow="head"), Decision("head", 4, 0.05, shadow="head")],
}


@pytest.fixture(scope="module")
def traced_with_head(tmp_path_factory):
    """A head trained for a few seconds on the tiny target's features (a random one matches almost nothing)."""
    from adaptive_spec.distill.collect import Collection, CollectSettings, collect
    from adaptive_spec.distill.head import HeadSettings, build_head, train_head
    from adaptive_spec.distill.vocab import VocabMap
    from adaptive_spec.engine.head import attach_head
    from tests.test_distill import ToyEncoder, rows

    target = tiny_model(0)
    draft = noisy_copy(target, 0.25, seed=1)
    out = tmp_path_factory.mktemp("head")
    collect(target, ToyEncoder(), rows(40), out / "collection", CollectSettings(top_k=8, hidden_states=True))
    vocab = VocabMap(torch.arange(128), 128)
    settings = HeadSettings(intermediate_size=64, steps=60, batch_tokens=256, lr=3e-3, warmup=5, checkpoint_every=20)
    head = build_head(target, vocab, settings)
    collection = Collection(out / "collection")
    train_head(head, target, collection, [e.id for e in collection.manifest.examples], vocab, settings, out / "head")
    engine = SpeculativeEngine(target, standard_drafters(target, draft))
    attach_head(engine, head.eval())
    collector = TraceCollector(engine, draft, None, "tiny", "float32", depth=16, theta_min=0.05)
    traces = [collector.trace(torch.tensor(p), str(p), "test", 48) for p in PROMPTS]
    return engine, traces


def test_head_columns_hold_its_own_chain(traced_with_head):
    """Heads attached to the engine get ``chain`` columns; the chains match the target somewhere (so the replay
    comparison checks something) and survive the file round trip."""
    _, traces = traced_with_head
    head = [t.drafts["head"] for t in traces]
    assert all(h.chain is not None and h.second is not None for h in head)
    assert sum(sum(h.match) for h in head) > 0
    assert any(len(c) > m + 1 for h in head for m, c in zip(h.match, h.chain))  # chains run past a wrong token
    assert any(len(c) < 16 for h in head for c in h.chain)  # ... and some stop below theta_min
    back = RequestTrace.model_validate_json(traces[0].dump_line())
    assert back.drafts["head"].chain == traces[0].drafts["head"].chain


@pytest.mark.parametrize("script", list(HEAD_SCRIPTS))
def test_replay_of_a_head_matches_engine_round_for_round(traced_with_head, script):
    """Proposals, acceptance, catch-up and the head's confidences replay exactly (float32)."""
    engine, traces = traced_with_head
    lengths, accepted = collections.Counter(), 0
    for prompt, trace in zip(PROMPTS, traces):
        session = _Scripted(HEAD_SCRIPTS[script]).start(RequestInfo())
        real = engine.generate(torch.tensor(prompt), session.decide, stop=_stop(engine)).records
        sim = replay(trace, _Scripted(HEAD_SCRIPTS[script]), flat_cost()).records
        fields = lambda r: (r.drafter, r.k, r.proposed, r.accepted, r.emitted, r.context_len, r.catchup,  # noqa: E731
                            r.shadow, r.shadow_hit, r.guess_accepted, r.siblings, r.sibling_accepted)
        assert [fields(r) for r in sim] == [fields(r) for r in real]
        for s, r in zip(sim, real):
            known = [(a, b) for a, b in zip(s.draft_probs, r.draft_probs) if not math.isnan(a)]
            assert [a for a, _ in known] == pytest.approx([b for _, b in known], abs=1e-4)
        lengths.update(r.proposed for r in real if r.drafter == "head")
        accepted += sum(r.accepted for r in real if r.drafter == "head")
    assert len(lengths) >= 2 and accepted > 0  # rounds of several lengths (thresholds cut the chains), some accepted


def test_trace_file_round_trip_and_errors(traced, tmp_path):
    _, traces = traced
    path = tmp_path / "t.jsonl"
    write_traces(path, traces)
    assert [t.target for t in read_traces(path)] == [t.target for t in traces]
    with pytest.raises(ValueError, match="model pair"):
        read_traces(path, pair_id="other")
    bad = tmp_path / "bad.jsonl"
    lines = path.read_text().splitlines()
    bad.write_text(lines[0] + "\n" + lines[1].replace('"version":1', '"version":99') + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*version 99"):
        read_traces(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_traces(bad)
    assert isinstance(traces[0], RequestTrace)
