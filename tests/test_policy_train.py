"""train-policy's building blocks on the committed small real-pair traces (no models needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptive_spec.policy.base import FixedPolicy
from adaptive_spec.policy.controller import ClassSettings, DraftSettings
from adaptive_spec.policy.file import load_policy_file
from adaptive_spec.policy.train import ProfiledPriors, train, tune_class, without_priors
from adaptive_spec.traces.format import read_traces
from adaptive_spec.traces.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def math_traces():
    policy = load_policy_file(ROOT / "policies" / "qwen2.5-coder-cpu.json")
    traces = read_traces(ROOT / "notebooks" / "data" / "traces_small.jsonl", pair_id=policy.pair_id)
    return [t for t in traces if t.request_class == "math"], policy.cost


def test_profiled_priors_are_the_drafters_own_rounds_on_the_traces(math_traces):
    traces, cost = math_traces
    priors = ProfiledPriors(traces, cost)
    settings = priors.apply(ClassSettings(model=DraftSettings(threshold=0.7, max_k=8)))
    records = [r for res in simulate(traces, FixedPolicy("model", 8, 0.7), cost).results for r in res.records
               if r.drafter == "model" and r.proposed]  # fmt: skip
    assert settings.model.prior_accepted == pytest.approx(sum(r.accepted for r in records) / len(records), abs=1e-3)
    assert settings.model.prior_proposed == pytest.approx(sum(r.proposed for r in records) / len(records), abs=1e-3)
    assert settings.model.threshold == 0.7 and settings.model.max_k == 8  # only the priors change
    assert priors.apply(settings) == settings  # memoised and idempotent


def test_tuned_class_settings_carry_priors_for_their_own_threshold(math_traces):
    traces, cost = math_traces
    from adaptive_spec.policy.controller import ControllerConfig

    settings, throughput = tune_class(traces, cost, ControllerConfig(), "math", passes=1)
    measured = ProfiledPriors(traces, cost).measure("model", settings.model.max_k, settings.model.threshold)
    assert throughput > 0 and measured is not None
    assert (settings.model.prior_accepted, settings.model.prior_proposed) == pytest.approx(measured, abs=1e-3)


def test_classes_depart_from_the_shared_setting_only_for_a_clear_gain():
    policy = load_policy_file(ROOT / "policies" / "qwen2.5-coder-cpu.json")
    traces = read_traces(ROOT / "notebooks" / "data" / "traces_small.jsonl", pair_id=policy.pair_id)
    shrunk = train(traces, policy.cost, held_out_share=0.5, class_margin=10.0)  # no gain is large enough
    shared = shrunk.config.default
    assert shared.model.prior_accepted is None  # priors of all classes pooled describe none: left generic
    for cls, settings in shrunk.config.classes.items():
        assert without_priors(settings) == shared, cls  # the shared knobs...
        assert settings.model.prior_accepted is not None  # ...with the class's own profiled cold start
    free = train(traces, policy.cost, held_out_share=0.5, class_margin=0.001)
    assert free.config.default == shared
    assert any(without_priors(s) != shared for s in free.config.classes.values())


def test_a_split_with_no_held_out_share_keeps_every_trace_for_training(math_traces):
    from adaptive_spec.policy.train import split_by_class

    traces, _ = math_traces
    train_set, test_set = split_by_class(traces, 0.0)
    assert test_set == [] and sorted(t.request_id for t in train_set) == sorted(t.request_id for t in traces)
    train_set, test_set = split_by_class(traces, 0.1)  # any share above 0 holds out at least one of 2 or more
    assert len(test_set) == 1 and len(train_set) == len(traces) - 1
