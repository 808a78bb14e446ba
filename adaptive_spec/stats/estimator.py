"""The online alpha estimator: round records in, per-(class, drafter) acceptance estimates out.

Usage (the policy does this; the engine only hands records to ``on_round``)::

    estimator = AlphaEstimator(RedisStatsStore(), pair_id="qwen2.5-coder-1.5b+0.5b", half_life_tokens=20_000)
    request = estimator.new_request()
    ...  # per round:
    estimator.observe("code", record); request.observe(record)
    posterior = blend(estimator.estimate("code", "model"), request)   # class prior + this request's rounds
    k = max(range(1, 9), key=lambda k: posterior.expected_accepted(k) - cost(k))
    ...  # when the request ends:
    estimator.observe_request_end("code", request)

``observe`` costs a few microseconds and never touches the network; ``estimate`` never waits longer than the
store's read timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ..records import NO_DRAFTER, RoundRecord
from .counters import ACCEPTED, DRAFT, ROUNDS, CounterSpec
from .estimate import Estimate, Prior
from .keys import StatsKey, check_name
from .metrics import StatsMetrics
from .request import RequestStats
from .settings import StatsSettings
from .store import MemoryStatsStore, StatsStore


class AlphaEstimator:
    """Acceptance statistics of one model pair, per request class and drafter, kept in a ``StatsStore``.

    ``settings`` or keyword overrides of :class:`StatsSettings` (``half_life_tokens=5000, prior_mean=0.7``);
    both are validated here, before any work.
    """

    def __init__(
        self,
        store: StatsStore | None = None,
        pair_id: str = "default",
        settings: StatsSettings | None = None,
        *,
        metrics: StatsMetrics | None = None,
        **overrides: Any,
    ):
        self.store = MemoryStatsStore() if store is None else store
        self.pair_id = check_name("pair_id", pair_id)
        unknown = set(overrides) - set(StatsSettings.model_fields)
        if unknown:
            raise TypeError(f"unknown StatsSettings field(s): {', '.join(sorted(unknown))}")
        if settings is None:
            self.settings = StatsSettings(**overrides)
        else:
            self.settings = StatsSettings(**{**settings.model_dump(), **overrides}) if overrides else settings
        self.metrics = metrics
        self.spec = CounterSpec(self.settings.half_life_tokens, self.settings.half_life_seconds, self.settings.max_positions)
        self.prior = Prior(self.settings.prior_mean, self.settings.prior_strength)

    # --- writing -------------------------------------------------------------------------------------------

    def observe(self, request_class: str, record: RoundRecord) -> None:
        """Count one round of a request of ``request_class`` (the fast path: in-process, buffered)."""
        key = StatsKey(self.pair_id, request_class, record.drafter)
        self.store.observe_round(key, self.spec, record, time.time())
        if self.metrics is not None:
            self.metrics.observe_round(key, record)

    def sink(self, request_class: str, request: RequestStats | None = None) -> Callable[[RoundRecord], None]:
        """An ``on_round`` callback for the engine: observes each round here (and in ``request``, if given)."""
        if request is None:
            return lambda record: self.observe(request_class, record)

        def on_round(record: RoundRecord) -> None:
            self.observe(request_class, record)
            request.observe(record)

        return on_round

    def new_request(self) -> RequestStats:
        """A per-request accumulator sized like this estimator's counters."""
        return RequestStats(self.settings.max_positions)

    def observe_request_end(self, request_class: str, request: RequestStats) -> None:
        """Count a finished request's own figures (request-weighted alpha, extreme flags), per drafter used."""
        now = time.time()
        for drafter in request.speculative_drafters:
            counts = request.by_drafter[drafter]
            extreme = counts.extreme(self.settings.extreme_margin, self.settings.extreme_min_rounds)
            key = StatsKey(self.pair_id, request_class, drafter)
            self.store.observe_request(key, self.spec, counts.alpha, counts.mean_accepted, extreme, now,
                                       counts.draft_tokens)

    def observe_request(self, request_class: str, records: Iterable[RoundRecord]) -> RequestStats:
        """All rounds of one finished request (e.g. ``GenerationResult.records``), then its end."""
        request = self.new_request()
        for record in records:
            self.observe(request_class, record)
            request.observe(record)
        self.observe_request_end(request_class, request)
        return request

    # --- reading -------------------------------------------------------------------------------------------

    def estimate(self, request_class: str, drafter: str) -> Estimate:
        """Current estimate for (class, drafter); the prior alone when nothing is known."""
        key = StatsKey(self.pair_id, request_class, drafter)
        estimate = Estimate.from_counters(key, self.store.read(key, self.spec), self.prior, self.settings.max_positions)
        if self.metrics is not None and drafter != NO_DRAFTER:
            self.metrics.set_alpha(key, estimate.alpha.mean)
        return estimate

    def pooled(self, drafter: str) -> tuple[float, float, float] | None:
        """``drafter``'s (rounds, accepted tokens, draft tokens) summed over every class of this pair, decayed to
        now; None when no class has data. A cold class's best guess for a drafter before it has any data of its
        own. Reads every class's key of the drafter (a Redis scan): per request at most, not per round; a store
        that knows it is down (``available`` False) is not asked."""
        if getattr(self.store, "available", True) is False:
            return None
        now = time.time()
        rounds = accepted = drafted = 0.0
        for counters in self.store.snapshot(self.spec, self.pair_id, None, drafter).values():
            v = counters.values_at(now)
            rounds, accepted, drafted = rounds + v[ROUNDS], accepted + v[ACCEPTED], drafted + v[DRAFT]
        return (rounds, accepted, drafted) if rounds > 0 else None

    def estimates(self, request_class: str | None = None, drafter: str | None = None) -> list[Estimate]:
        """Every known key of this pair (reads the whole store: for reports, not per round)."""
        snapshot = self.store.snapshot(self.spec, self.pair_id, request_class, drafter)
        now = time.time()
        return [
            Estimate.from_counters(key, counters, self.prior, self.settings.max_positions, now)
            for key, counters in sorted(snapshot.items())
        ]

    # --- lifecycle -----------------------------------------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> bool:
        return self.store.flush(timeout_s)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> AlphaEstimator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
