"""The estimator: estimates, token- vs request-weighted figures, extreme requests, blending, settings, cost."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from adaptive_spec.records import NO_DRAFTER, RoundRecord
from adaptive_spec.stats import (
    AlphaEstimator,
    CounterSpec,
    MemoryStatsStore,
    RedisSettings,
    RequestStats,
    StatsKey,
    StatsMetrics,
    StatsSettings,
    blend,
    describe_error,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rnd(proposed: int, accepted: int, drafter: str = "model") -> RoundRecord:
    return RoundRecord(drafter, max(proposed, 1), proposed, accepted, accepted + 1, 100, 0.001, 0.002)


def test_no_data_gives_the_prior():
    est = AlphaEstimator(pair_id="p", prior_mean=0.7, prior_strength=4.0)
    e = est.estimate("code", "model")
    assert not e.has_data and e.updated_at is None and e.age_s() is None
    assert e.alpha.mean == pytest.approx(0.7) and e.positions[0].weight == pytest.approx(4.0)
    assert e.mean_accepted is None and e.request_alpha is None
    assert e.expected_accepted(2) == pytest.approx(0.7 + 0.49)


def test_estimate_from_rounds():
    est = AlphaEstimator(pair_id="p", half_life_tokens=None, prior_mean=0.5, prior_strength=2.0)
    for _ in range(8):
        est.observe("code", rnd(4, 4))
    for _ in range(2):
        est.observe("code", rnd(4, 0))
    e = est.estimate("code", "model")
    assert e.total_rounds == 10 and e.total_draft_tokens == 40 and e.total_tokens == 40
    assert e.alpha_observed == pytest.approx(32 / 40)
    assert e.mean_accepted == pytest.approx(3.2)
    assert e.positions[0].mean == pytest.approx((1 + 8) / (2 + 10))  # Beta(1 + 8, 1 + 2)
    assert e.positions[1].mean == pytest.approx((1 + 8) / (2 + 8))  # judged only in the 8 full rounds
    assert e.positions[4].mean == pytest.approx(0.5)  # never judged: the prior
    assert 0 <= e.age_s() < 5
    assert est.estimate("code", "lookup").has_data is False
    assert est.estimate("chat", "model").has_data is False


def test_pooled_sums_a_drafter_over_the_classes_of_its_pair():
    est = AlphaEstimator(pair_id="p", half_life_tokens=None)
    assert est.pooled("head") is None
    est.observe("code", rnd(4, 3, "head"))
    est.observe("chat", rnd(2, 0, "head"))
    est.observe("chat", rnd(4, 4))  # another drafter
    AlphaEstimator(est.store, pair_id="other", half_life_tokens=None).observe("code", rnd(8, 8, "head"))
    assert est.pooled("head") == pytest.approx((2, 3, 6))
    assert est.pooled("model") == pytest.approx((1, 4, 4))


def test_sink_feeds_the_estimator_and_the_request():
    est = AlphaEstimator(pair_id="p", half_life_tokens=None)
    request = est.new_request()
    on_round = est.sink("code", request)
    for r in (rnd(4, 2), rnd(4, 4)):
        on_round(r)
    est.sink("code")(rnd(2, 0))
    assert est.estimate("code", "model").total_rounds == 3
    assert request.counts("model").rounds == 2 and request.counts("model").accepted_tokens == 6


def test_token_and_request_weighted_alpha_differ():
    """One long request at alpha 0.9 and one short at 0.1: pooled rounds say ~0.9, requests say 0.5."""
    est = AlphaEstimator(pair_id="p", half_life_tokens=None)
    long = [rnd(10, 9)] * 100
    short = [rnd(10, 1)] * 2
    est.observe_request("chat", long)
    est.observe_request("chat", short)
    e = est.estimate("chat", "model")
    assert e.alpha_observed == pytest.approx((900 + 2) / 1020)
    assert e.request_alpha == pytest.approx(0.5)
    assert e.request_mean_accepted == pytest.approx((9 + 1) / 2)
    assert e.total_requests == 2


def test_request_spread_tells_a_class_of_alike_requests_from_a_mixed_one():
    """Four requests at alpha 0.5: their spread is sampling noise only (0; strength inf). Two at 0.9 and two at 0.1
    (a class pooling unlike requests): the variance of their alphas less the noise of 100 draft tokens each, and a
    strength below one token. Fewer than three requests, or requests counted without their draft tokens (stores
    written before the spread was counted), give None."""
    alike = AlphaEstimator(pair_id="p", half_life_tokens=None)
    mixed = AlphaEstimator(pair_id="p", half_life_tokens=None)
    for i in range(4):
        alike.observe_request("c", [rnd(10, 5)] * 10)
        mixed.observe_request("c", [rnd(10, 9 if i % 2 else 1)] * 10)
    e = alike.estimate("c", "model")
    assert e.request_spread() == 0.0 and e.request_strength() == math.inf
    m = mixed.estimate("c", "model")
    spread = 4 / 3 * 0.16 - 0.25 / 100  # sample variance of (0.9, 0.1, 0.9, 0.1) less 0.5 x 0.5 / 100
    assert m.request_spread() == pytest.approx(spread)
    assert m.request_strength() == pytest.approx(0.25 / spread - 1)
    assert m.to_dict()["request_alpha_std"] == pytest.approx(math.sqrt(spread))
    assert m.request_spread(min_requests=5) is None
    two = AlphaEstimator(pair_id="p", half_life_tokens=None)
    two.observe_request("c", [rnd(10, 9)] * 10)
    two.observe_request("c", [rnd(10, 1)] * 10)
    assert two.estimate("c", "model").request_spread() is None and two.estimate("c", "model").request_strength() is None
    old = MemoryStatsStore()
    key = StatsKey("p", "c", "model")
    for alpha in (0.9, 0.1, 0.9):
        old.observe_request(key, CounterSpec(None), alpha, 1.0, None, 1.0)  # no draft tokens given
    assert AlphaEstimator(pair_id="p", store=old).estimate("c", "model").request_spread() is None


def test_extreme_requests_are_flagged():
    est = AlphaEstimator(pair_id="p", half_life_tokens=None, extreme_min_rounds=16, extreme_margin=0.02)
    est.observe_request("c", [rnd(4, 4)] * 20)  # alpha 1: a copy or a loop
    est.observe_request("c", [rnd(4, 0)] * 20)  # alpha 0
    est.observe_request("c", [rnd(4, 4)] * 5)  # alpha 1 but too short to say
    est.observe_request("c", [rnd(4, 2)] * 40)
    low, high = est.estimate("c", "model").extreme_share
    assert (low, high) == (pytest.approx(0.25), pytest.approx(0.25))
    request = RequestStats()
    for r in [rnd(4, 4)] * 16:
        request.observe(r)
    assert request.counts("model").extreme() == "high"
    assert request.counts("lookup").extreme() is None


def test_request_stats_per_drafter():
    request = RequestStats(max_positions=4)
    for r in (rnd(4, 2), rnd(0, 0, "lookup"), rnd(3, 3, "lookup"), RoundRecord(NO_DRAFTER, 0, 0, 0, 1, 5, 0, 0.01)):
        request.observe(r)
    assert request.counts("model").tried == [1, 1, 1, 0] and request.counts("model").accepted == [1, 1, 0, 0]
    lookup = request.counts("lookup")
    assert (lookup.rounds, lookup.empty_rounds, lookup.alpha, lookup.mean_accepted) == (2, 1, 1.0, 1.5)
    assert sorted(request.speculative_drafters) == ["lookup", "model"]


def test_blend_caps_the_class_prior():
    est = AlphaEstimator(pair_id="p", half_life_tokens=None)
    for _ in range(5000):
        est.observe("code", rnd(4, 4) if _ % 5 else rnd(4, 0))  # position 1 accepted 80% of the time
    class_estimate = est.estimate("code", "model")
    assert class_estimate.positions[0].mean == pytest.approx(0.8, abs=1e-3)
    request = est.new_request()
    assert blend(class_estimate, request).positions[0].mean == pytest.approx(0.8, abs=1e-3)  # no data: the class
    for _ in range(48):
        request.observe(rnd(4, 0))  # this request: nothing accepted
    mixed = blend(class_estimate, request, max_prior_weight=32.0)
    assert mixed.positions[0].mean == pytest.approx(0.8 * 32 / (32 + 48), abs=1e-3)
    assert mixed.positions[0].weight == pytest.approx(80.0)
    assert mixed.expected_accepted(4) < class_estimate.expected_accepted(4)
    assert mixed.alpha.mean < 0.5
    with pytest.raises(ValueError):
        blend(class_estimate, request, max_prior_weight=0)


def test_tracks_a_drop_from_08_to_03_within_the_half_life():
    """Token-level alpha after m half-lives of new traffic: 0.3 + 0.5 * 2**-m (the decay law, exactly)."""
    h = 4000.0
    est = AlphaEstimator(pair_id="p", half_life_tokens=h)
    for _ in range(int(10 * h / 10)):  # ten half-lives at alpha 0.8 (10 tokens per round)
        est.observe("code", rnd(10, 8))
    assert est.estimate("code", "model").alpha_observed == pytest.approx(0.8, abs=1e-9)
    observed = []
    for m in (1, 2, 3, 4, 5):
        for _ in range(int(h / 10)):
            est.observe("code", rnd(10, 3))
        observed.append(est.estimate("code", "model").alpha_observed)
    for m, alpha in enumerate(observed, start=1):
        assert alpha == pytest.approx(0.3 + 0.5 * 2.0**-m, abs=0.01), (m, alpha)
    assert observed[0] <= 0.55 + 0.01  # within one half-life, at least half of the change shows


def test_metrics_are_exported():
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    est = AlphaEstimator(pair_id="p", half_life_tokens=None, metrics=StatsMetrics(registry))
    for r in (rnd(4, 3), rnd(4, 1), RoundRecord(NO_DRAFTER, 0, 0, 0, 1, 5, 0, 0.01)):
        est.observe("code", r)
    est.estimate("code", "model")
    labels = {"pair_id": "p", "request_class": "code", "drafter": "model"}
    value = registry.get_sample_value
    assert value("adaptive_spec:spec_decode_num_rounds_total", labels) == 2
    assert value("adaptive_spec:spec_decode_num_draft_tokens_total", labels) == 8
    assert value("adaptive_spec:spec_decode_num_accepted_tokens_total", labels) == 4
    assert value("adaptive_spec:spec_decode_alpha", labels) == pytest.approx(5 / 10)
    assert value("adaptive_spec:spec_decode_enabled", {"pair_id": "p", "request_class": "code"}) == 0


def test_bad_settings_fail_early_with_one_line():
    with pytest.raises(ValidationError) as error:
        AlphaEstimator(pair_id="p", half_life_tokens=-5)
    line = describe_error(error.value)
    assert "\n" not in line and line.startswith("half_life_tokens:")
    with pytest.raises(TypeError, match="half_life_tokns"):
        AlphaEstimator(pair_id="p", half_life_tokns=5)
    with pytest.raises(ValidationError) as error:
        RedisSettings(url="http://localhost:6379")
    assert describe_error(error.value) == "url: scheme must be redis://, rediss:// or unix:// (got 'http')"
    with pytest.raises(ValueError):
        AlphaEstimator(pair_id="")


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("ADAPTIVE_SPEC_REDIS_URL", "rediss://:s3cret@cache.example:6380/2")
    monkeypatch.setenv("ADAPTIVE_SPEC_STATS_HALF_LIFE_TOKENS", "1234")
    redis_settings = RedisSettings()
    assert redis_settings.url.startswith("rediss://")
    assert StatsSettings().half_life_tokens == 1234
    from adaptive_spec.stats.settings import redacted

    assert "s3cret" not in redacted(redis_settings.url)
    monkeypatch.setenv("ADAPTIVE_SPEC_STATS_HALF_LIFE_SECONDS", "-1")
    with pytest.raises(ValidationError) as error:
        StatsSettings()
    assert describe_error(error.value).startswith("half_life_seconds:")


def test_rediss_url_and_password_reach_the_client():
    pytest.importorskip("redis")
    from redis.connection import SSLConnection

    from adaptive_spec.stats.redis_admin import make_client

    client = make_client(RedisSettings(url="rediss://cache.example:6380/2", password="pw"))
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is SSLConnection
    assert kwargs["password"] == "pw" and kwargs["port"] == 6380 and kwargs["db"] == 2
    assert kwargs["socket_timeout"] == RedisSettings().socket_timeout_s


def test_package_imports_neither_torch_nor_redis():
    code = (
        "import sys, adaptive_spec.stats, adaptive_spec.stats.redis_store, adaptive_spec.stats_cli; "
        "bad = [m for m in ('torch', 'redis', 'prometheus_client', 'adaptive_spec.engine') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)


def test_many_observes_all_counted_latency_printed():
    """20,000 rounds through observe() are all counted; the time per call is printed, not asserted (performance
    goals live in benchmarks/stats.py, which measures observe() and estimate() p50/p99)."""
    est = AlphaEstimator(MemoryStatsStore(), pair_id="p", half_life_tokens=None)
    records = [rnd(p, a) for p in range(0, 9) for a in range(0, p + 1)]
    samples = []
    for i in range(20_000):
        r = records[i % len(records)]
        t0 = time.perf_counter_ns()
        est.observe("code", r)
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    print(f"\nobserve(): p50 {samples[len(samples) // 2] / 1000:.1f} us")
    assert est.estimate("code", "model").total_rounds == 20_000
