"""Talking to Redis outside the hot path: the client factory, and whole-namespace reads and deletes (CLI, reports).

Like the store, it imports redis-py only when called.
"""

from __future__ import annotations

import time
from typing import Any

from ..logs import get_logger
from .counters import Counters, CounterSpec, InvalidCounters
from .keys import StatsKey, parse_redis_key, redis_key, scan_pattern
from .settings import RedisSettings, redacted

log = get_logger("adaptive_spec.stats.redis")

MAX_FETCH_KEYS = 512  # keys per read pipeline


class StatsStoreUnavailable(RuntimeError):
    """Redis could not be reached by a reporting call (``snapshot``, ``delete``, the CLI); never raised per round."""


def import_redis():  # noqa: ANN201 - the redis module
    try:
        import redis
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the Redis store needs redis-py: pip install 'adaptive-spec[redis]'") from error
    return redis


def make_client(settings: RedisSettings):  # noqa: ANN201 - a redis.Redis
    """A redis-py client with our timeouts and no hidden retries (the store retries, with backoff, itself)."""
    redis = import_redis()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    return redis.Redis.from_url(settings.url, **kwargs)


def server_offset(time_reply: Any) -> float:
    """This machine's clock minus the server's, from a TIME reply (good to a round trip)."""
    seconds, micros = time_reply
    return time.time() - (int(seconds) + int(micros) / 1e6)


def scan_keys(
    client: Any,
    settings: RedisSettings,
    spec: CounterSpec,
    pair_id: str | None = None,
    request_class: str | None = None,
    drafter: str | None = None,
    log_invalid: bool = True,
) -> dict[StatsKey, Counters | InvalidCounters]:
    """Every matching key, parsed; an invalid one maps to the reason it was rejected (logged unless told not to:
    the CLI reports them itself and keeps stdout clean for ``--json``)."""
    redis = import_redis()
    ns = settings.namespace
    out: dict[StatsKey, Counters | InvalidCounters] = {}
    try:
        names = list(client.scan_iter(match=scan_pattern(ns, pair_id, request_class, drafter), count=500))
        keys = [(name, key) for name in names if (key := parse_redis_key(ns, name)) is not None]
        for start in range(0, len(keys), MAX_FETCH_KEYS):
            chunk = keys[start : start + MAX_FETCH_KEYS]
            pipe = client.pipeline(transaction=False)
            pipe.time()
            for name, _ in chunk:
                pipe.hgetall(name)
            replies = pipe.execute(raise_on_error=False)
            if isinstance(replies[0], Exception):
                raise replies[0]
            offset = server_offset(replies[0])
            for (_, key), reply in zip(chunk, replies[1:]):
                if not reply:
                    continue  # expired between SCAN and HGETALL
                try:
                    if isinstance(reply, Exception):
                        raise InvalidCounters(str(reply))
                    out[key] = Counters.from_fields(spec, reply, clock_offset=offset)
                except InvalidCounters as error:
                    if log_invalid:
                        log.warning("stats.redis.invalid_value_ignored", key=redis_key(ns, key), reason=str(error))
                    out[key] = error
    except redis.RedisError as error:
        raise StatsStoreUnavailable(f"{redacted(settings.url)}: {error}") from error
    return out


def delete_keys(
    client: Any,
    settings: RedisSettings,
    pair_id: str | None = None,
    request_class: str | None = None,
    drafter: str | None = None,
) -> list[StatsKey]:
    """Delete the matching keys; returns those that existed."""
    redis = import_redis()
    ns = settings.namespace
    try:
        names = list(client.scan_iter(match=scan_pattern(ns, pair_id, request_class, drafter), count=500))
        keys = {name: key for name in names if (key := parse_redis_key(ns, name)) is not None}
        if keys:
            client.delete(*keys)
    except redis.RedisError as error:
        raise StatsStoreUnavailable(f"{redacted(settings.url)}: {error}") from error
    return sorted(keys.values())
