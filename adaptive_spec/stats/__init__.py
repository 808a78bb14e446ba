"""Online acceptance statistics per (model pair, request class, drafter), in memory or pooled in Redis.

No torch here, and redis-py / prometheus-client are imported only by the classes that need them, so this
package works in any process that receives round records.

- :class:`AlphaEstimator` — feed it round records, ask it for an :class:`Estimate`.
- :class:`RequestStats` — one request's own counts; :func:`blend` mixes them with the class estimate.
- :class:`MemoryStatsStore` (default) / :class:`RedisStatsStore` — where the counters live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .beta import BetaPosterior
from .counters import Counters, CounterSpec, InvalidCounters
from .estimate import Acceptance, Estimate, Prior, blend
from .estimator import AlphaEstimator
from .keys import SCHEMA_VERSION, StatsKey
from .metrics import StatsMetrics
from .request import DrafterCounts, RequestStats
from .settings import RedisSettings, StatsSettings, describe_error
from .store import MemoryStatsStore, StatsStore

if TYPE_CHECKING:
    from .redis_admin import StatsStoreUnavailable
    from .redis_store import FlushReport, RedisStatsStore

__all__ = [
    "SCHEMA_VERSION",
    "Acceptance",
    "AlphaEstimator",
    "BetaPosterior",
    "CounterSpec",
    "Counters",
    "DrafterCounts",
    "Estimate",
    "FlushReport",
    "InvalidCounters",
    "MemoryStatsStore",
    "Prior",
    "RedisSettings",
    "RedisStatsStore",
    "RequestStats",
    "StatsKey",
    "StatsMetrics",
    "StatsSettings",
    "StatsStore",
    "StatsStoreUnavailable",
    "blend",
    "describe_error",
]

_LAZY = {"RedisStatsStore": "redis_store", "FlushReport": "redis_store", "StatsStoreUnavailable": "redis_admin"}


def __getattr__(name: str) -> Any:
    # The Redis modules import redis-py only when a store or client is created; they load lazily anyway.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
