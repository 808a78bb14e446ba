"""The same behaviour from every store: the in-memory default and Redis (a real private redis-server)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from adaptive_spec.records import RoundRecord
from adaptive_spec.stats import AlphaEstimator, MemoryStatsStore, RedisSettings, StatsStore
from tests.redis_server import RedisServer, redis_server  # noqa: F401 - fixture

STORES = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


def rnd(proposed: int, accepted: int, drafter: str = "model") -> RoundRecord:
    return RoundRecord(drafter, max(proposed, 1), proposed, accepted, accepted + 1, 100, 0.001, 0.002)


@pytest.fixture(params=STORES)
def make_store(request) -> Iterator:
    """A factory: each call opens a new store on the same backing state (a new process would do the same)."""
    opened: list[StatsStore] = []
    if request.param == "memory":
        shared = MemoryStatsStore()

        def factory() -> StatsStore:
            return shared
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        from adaptive_spec.stats.redis_store import RedisStatsStore

        def factory() -> StatsStore:
            store = RedisStatsStore(RedisSettings(url=server.url, flush_interval_s=0.02, cache_ttl_s=0.0, read_timeout_s=2.0))
            opened.append(store)
            return store

    yield factory
    for store in opened:
        store.close()


def test_store_follows_the_protocol(make_store):
    assert isinstance(make_store(), StatsStore)


def test_counts_are_exact_without_decay(make_store):
    est = AlphaEstimator(make_store(), pair_id="pair", half_life_tokens=None)
    rng = random.Random(1)
    expected: dict[tuple[str, str], list[int]] = {}
    for _ in range(3000):
        cls, drafter = rng.choice(["code", "chat"]), rng.choice(["model", "lookup"])
        proposed = rng.randint(0, 6)
        accepted = rng.randint(0, proposed)
        est.observe(cls, rnd(proposed, accepted, drafter))
        e = expected.setdefault((cls, drafter), [0, 0, 0, 0, 0])
        e[0] += 1
        e[1] += proposed
        e[2] += accepted
        e[3] += min(accepted + 1, proposed)
        e[4] += accepted
    assert est.flush(5.0)
    reader = AlphaEstimator(make_store(), pair_id="pair", half_life_tokens=None)
    for (cls, drafter), (rounds, proposed, accepted, tried, accepted_pos) in expected.items():
        e = reader.estimate(cls, drafter)
        assert (e.total_rounds, e.total_draft_tokens, e.total_accepted_tokens) == (rounds, proposed, accepted)
        assert e.rounds == rounds and e.draft_tokens == proposed  # no decay: decayed counts are exact too
        assert sum(e.tried) == tried
        assert sum(p.a - reader.prior.posterior.a for p in e.positions) == pytest.approx(accepted_pos)
    assert {(x.key.request_class, x.key.drafter) for x in reader.estimates()} == set(expected)


def test_concurrent_threads_lose_nothing(make_store):
    est = AlphaEstimator(make_store(), pair_id="pair", half_life_tokens=None)

    def work(seed: int) -> None:
        for i in range(5000):
            est.observe(f"class{seed % 2}", rnd(4, i % 5))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert est.flush(5.0)
    reader = AlphaEstimator(make_store(), pair_id="pair", half_life_tokens=None)
    assert [reader.estimate(f"class{c}", "model").total_rounds for c in (0, 1)] == [10_000, 10_000]
    assert reader.estimate("class0", "model").total_accepted_tokens == 2 * sum(i % 5 for i in range(5000))


def test_decay_tracks_a_change_from_08_to_03(make_store):
    """After one half-life of new traffic at alpha 0.3, the estimate is halfway from 0.8 (0.55); after five, ~0.3."""
    h = 2000.0
    est = AlphaEstimator(make_store(), pair_id="pair", half_life_tokens=h)
    for _ in range(int(8 * h / 10)):
        est.observe("code", rnd(10, 8))
    alphas = []
    for _ in range(5):
        for _ in range(int(h / 10)):
            est.observe("code", rnd(10, 3))
        assert est.flush(5.0)
        alphas.append(AlphaEstimator(make_store(), pair_id="pair", half_life_tokens=h).estimate("code", "model").alpha_observed)
    for m, alpha in enumerate(alphas, start=1):
        assert alpha == pytest.approx(0.3 + 0.5 * 2.0**-m, abs=0.01), (m, alpha)


def test_delete_and_request_figures(make_store):
    est = AlphaEstimator(make_store(), pair_id="pair", half_life_tokens=None)
    est.observe_request("code", [rnd(4, 4)] * 20)
    est.observe_request("code", [rnd(4, 2)] * 4)
    est.observe_request("chat", [rnd(4, 1)] * 4)
    assert est.flush(5.0)
    reader = AlphaEstimator(make_store(), pair_id="pair", half_life_tokens=None)
    code = reader.estimate("code", "model")
    assert code.total_requests == 2 and code.request_alpha == pytest.approx(0.75)
    assert code.extreme_share == (0.0, 0.5)
    assert reader.store.delete("pair", "code") == 1
    assert not AlphaEstimator(make_store(), pair_id="pair").estimate("code", "model").has_data
    assert AlphaEstimator(make_store(), pair_id="pair").estimate("chat", "model").has_data
