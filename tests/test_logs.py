"""Library events go where the application wants them, and never to its stdout unasked."""

from __future__ import annotations

import logging

import structlog
import torch

from adaptive_spec.generator import AdaptiveGenerator
from adaptive_spec.logs import get_logger
from tests.test_generator import PROMPTS, tiny_policy


def test_without_structlog_config_events_go_to_stdlib_logging(capsys, caplog):
    log = get_logger("adaptive_spec.test")
    with caplog.at_level(logging.INFO, logger="adaptive_spec"):
        log.info("request_done", rounds=3)
        log.debug("too_fine", x=1)
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records] == ["event='request_done' rounds=3"]
    assert caplog.records[0].name == "adaptive_spec.test"


def test_an_application_structlog_config_receives_the_events():
    with structlog.testing.capture_logs() as events:
        get_logger("adaptive_spec.test").warning("stats.redis.unavailable", url="redis://x")
    assert events == [{"event": "stats.redis.unavailable", "url": "redis://x", "log_level": "warning"}]


def test_a_generation_prints_nothing_to_stdout(pair, capsys, caplog):
    target, draft = pair
    gen = AdaptiveGenerator(target, draft, policy=tiny_policy())
    with caplog.at_level(logging.INFO, logger="adaptive_spec"):
        gen.generate(torch.tensor([PROMPTS[1]]), max_new_tokens=8)
    assert capsys.readouterr().out == ""
    assert any("request_done" in r.getMessage() for r in caplog.records)  # observable, where asked for


def test_replayed_requests_are_not_logged(caplog):
    """Tuning replays thousands of recorded requests (train-policy, the notebooks): served requests log their end,
    replayed ones do not."""
    from pathlib import Path

    from adaptive_spec.generator import policy_from_file
    from adaptive_spec.policy.file import load_policy_file
    from adaptive_spec.traces.format import read_traces
    from adaptive_spec.traces.simulate import simulate

    root = Path(__file__).resolve().parents[1]
    policy = load_policy_file(root / "policies" / "qwen2.5-coder-cpu.json")
    traces = read_traces(root / "notebooks" / "data" / "traces_small.jsonl")[:3]
    with caplog.at_level(logging.INFO, logger="adaptive_spec"):
        result = simulate(traces, policy_from_file(policy), policy.cost)
    assert len(result.results) == 3 and result.results[0].records
    assert not any("request_done" in r.getMessage() for r in caplog.records)
