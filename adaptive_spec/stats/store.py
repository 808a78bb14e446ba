"""Where counters live: the ``StatsStore`` protocol and the in-memory default.

A store holds :class:`~adaptive_spec.stats.counters.Counters` per :class:`StatsKey`. Writes are per round and
must be cheap and never block on I/O; reads return a private copy (the caller may keep it). The estimator
passes the ``CounterSpec`` with every call, so a store needs no configuration of its own to create a key.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from ..records import RoundRecord
from .counters import Counters, CounterSpec
from .keys import StatsKey, check_key


@runtime_checkable
class StatsStore(Protocol):
    def observe_round(self, key: StatsKey, spec: CounterSpec, record: RoundRecord, now: float) -> None:
        """Count one round (``now``: unix seconds). Never blocks on I/O."""

    def observe_request(
        self, key: StatsKey, spec: CounterSpec, alpha: float, mean_accepted: float, extreme: str | None, now: float,
        draft_tokens: int | None = None,
    ) -> None:
        """Count one finished request's own alpha, mean accepted per round and (when given) draft tokens."""

    def read(self, key: StatsKey, spec: CounterSpec) -> Counters | None:
        """Current counters for ``key`` (None: nothing known). Bounded in time whatever the backend does."""

    def snapshot(
        self, spec: CounterSpec, pair_id: str | None = None, request_class: str | None = None, drafter: str | None = None
    ) -> dict[StatsKey, Counters]:
        """Every key matching the filters (``None`` matches all), read now. For reports, not the hot path."""

    def delete(self, pair_id: str | None = None, request_class: str | None = None, drafter: str | None = None) -> int:
        """Forget the matching keys; returns how many there were."""

    def flush(self, timeout_s: float | None = None) -> bool:
        """Push buffered observations out; True when nothing is left buffered."""

    def close(self) -> None:
        """Flush what can be flushed in the store's close timeout and release resources."""


def _matches(key: StatsKey, pair_id: str | None, request_class: str | None, drafter: str | None) -> bool:
    return (
        (pair_id is None or key.pair_id == pair_id)
        and (request_class is None or key.request_class == request_class)
        and (drafter is None or key.drafter == drafter)
    )


class MemoryStatsStore:
    """Counters in this process's memory, guarded by one lock: the default, shared by threads, not processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[StatsKey, Counters] = {}

    def _get(self, key: StatsKey, spec: CounterSpec) -> Counters:
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[check_key(key)] = Counters(spec)
        return counters

    def observe_round(self, key: StatsKey, spec: CounterSpec, record: RoundRecord, now: float) -> None:
        with self._lock:
            self._get(key, spec).add_round(record, now)

    def observe_request(
        self, key: StatsKey, spec: CounterSpec, alpha: float, mean_accepted: float, extreme: str | None, now: float,
        draft_tokens: int | None = None,
    ) -> None:
        with self._lock:
            self._get(key, spec).add_request(alpha, mean_accepted, extreme, now, draft_tokens)

    def read(self, key: StatsKey, spec: CounterSpec) -> Counters | None:
        with self._lock:
            counters = self._counters.get(key)
            return None if counters is None else counters.copy()

    def snapshot(
        self, spec: CounterSpec, pair_id: str | None = None, request_class: str | None = None, drafter: str | None = None
    ) -> dict[StatsKey, Counters]:
        with self._lock:
            return {k: c.copy() for k, c in self._counters.items() if _matches(k, pair_id, request_class, drafter)}

    def delete(self, pair_id: str | None = None, request_class: str | None = None, drafter: str | None = None) -> int:
        with self._lock:
            doomed = [k for k in self._counters if _matches(k, pair_id, request_class, drafter)]
            for key in doomed:
                del self._counters[key]
            return len(doomed)

    def flush(self, timeout_s: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass
