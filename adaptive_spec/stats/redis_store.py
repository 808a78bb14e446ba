"""Counters pooled in Redis, so every worker of a model pair learns from all of them and a new one starts warm.

The only module that knows Redis; it imports redis-py when a store is created, not before.

**What is stored.** One hash per key, ``{namespace}:v1:{pair}:{class}:{drafter}`` (parts percent-encoded), with
the non-zero counters of ``counters.py`` as decimal strings plus ``schema`` (``1``), ``updated_at`` (Redis
server time, unix seconds) and ``half_life_tokens`` / ``half_life_seconds`` (0: none): the key's decay, set by
its first writer and then used by every flush, so all writers decay it alike. A key expires ``key_ttl_s`` after
its last flush, so abandoned classes disappear. Each writer process also owns one small string,
``{namespace}:writer:v1:{writer_id}``: the sequence number of its last applied flush (same TTL).

**Writes.** ``observe_round`` only adds to this process's batch for the key (no network, one lock). A
background thread flushes every ``flush_interval_s``: one Lua script call per batch (at most
``max_batch_keys`` keys) that atomically, per key, checks the stored hash (one that is garbage, NaN, negative,
inconsistent, of another type or another schema is replaced, with a warning), decays it by the batch's tokens
and the server time since its last update, adds the batch and refreshes the TTL; then records the batch's
sequence number. A batch whose reply never came (timeout, dropped connection, a stopped server) is resent
unchanged with the same number, and the script skips numbers it has already applied: retries never double count.

**Reads.** ``read`` never does I/O in the caller's thread. It returns the last fetched Redis value merged with
this process's batches flushed since that fetch, in flight and still buffered. A key read for the first time
waits at most ``read_timeout_s`` for the background thread to fetch it; afterwards the thread re-fetches keys
read in the last minute once their copy is ``cache_ttl_s`` old. Values that fail the checks are ignored (the
local part is used) with one warning per key until the key is valid again.

**Failures.** An error or timeout (``socket_timeout_s``) marks Redis unavailable: one ``stats.redis.unavailable``
event, then retries with exponential backoff (``backoff_initial_s`` doubling to ``backoff_max_s``) until one
``stats.redis.available`` event. Meanwhile reads serve local values without waiting and batches keep
accumulating (one aggregate per key, so memory does not grow with time).

**What can be lost — only observations never applied in Redis:**

1. the buffered batches of a process that dies without closing its store (a crash, SIGKILL, ``os._exit``; a
   normal interpreter exit closes open stores), or whose ``close()`` cannot reach Redis within
   ``close_timeout_s`` (logged as ``stats.redis.unflushed_at_close``, with the count): what it observed since its
   last acknowledged flush — normally under ``flush_interval_s`` worth, during an outage everything since it
   began. (A batch in flight at that moment may still be applied, once, if the server received it.);
2. when more than ``max_buffered_keys`` keys are buffered, the batch of the key buffered first is dropped
   (counted in ``dropped_rounds`` / ``dropped_requests``, one warning per episode);
3. Redis's own data if Redis restarts without persistence (the pool then rebuilds from new flushes).

Nothing else: every observed round is applied in Redis exactly once, or counted in ``dropped_rounds``, or still
buffered (``buffered_rounds``). The tests check this bookkeeping across a Redis kill and restart.

Create stores after forking worker processes: the flusher is a thread, and threads do not survive ``fork``.
"""

from __future__ import annotations

import atexit
import random
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..logs import get_logger
from ..records import RoundRecord
from .counters import T_REQUESTS, T_ROUNDS, Counters, CounterSpec, InvalidCounters, stored_half_lives
from .keys import SCHEMA_VERSION, StatsKey, check_key, redis_key, writer_key
from .redis_admin import MAX_FETCH_KEYS, delete_keys, import_redis, make_client, scan_keys, server_offset
from .redis_lua import FLUSH_LUA
from .settings import RedisSettings, redacted

log = get_logger("adaptive_spec.stats.redis")

_HOT_WINDOW_S = 60.0  # keys read within this window are kept fresh
_MAX_FLUSHES_PER_TICK = 16

_OPEN_STORES: weakref.WeakSet[RedisStatsStore] = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:
    """A normal interpreter exit flushes what it can (daemon threads would otherwise just stop)."""
    for store in list(_OPEN_STORES):
        store.close()


@dataclass(frozen=True)
class FlushReport:
    """One acknowledged flush, for observability and tests."""

    seq: int
    keys: int
    rounds: int
    requests: int
    started_at: float  # unix seconds when the acknowledged attempt was sent
    finished_at: float
    duplicate: bool  # Redis had already applied this batch (an earlier attempt's reply was lost)


@dataclass
class _Batch:
    seq: int
    deltas: dict[StatsKey, Counters]
    keys: list[str] = field(default_factory=list)
    argv: list[Any] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        return round(sum(c.totals[T_ROUNDS] for c in self.deltas.values()))

    @property
    def requests(self) -> int:
        return round(sum(c.totals[T_REQUESTS] for c in self.deltas.values()))


@dataclass
class _Snapshot:
    counters: Counters | None  # None: absent or invalid in Redis
    fetched: float  # time.monotonic()


def _half_life(value: float | None) -> float:
    return 0.0 if value is None else float(value)


class RedisStatsStore:
    """A :class:`~adaptive_spec.stats.store.StatsStore` pooled in Redis; degrades to local values when it cannot be reached."""

    def __init__(self, settings: RedisSettings | None = None, *, on_flush: Callable[[FlushReport], None] | None = None):
        self.settings = settings if settings is not None else RedisSettings()
        self._redis = import_redis()
        self._client = make_client(self.settings)
        self._script = self._client.register_script(FLUSH_LUA)
        self._on_flush = on_flush
        self.writer_id = uuid.uuid4().hex[:16]
        self._writer_key = writer_key(self.settings.namespace, self.writer_id)
        self._ns = self.settings.namespace

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified after every flush attempt
        self._pending: OrderedDict[StatsKey, Counters] = OrderedDict()  # buffered, oldest first
        self._inflight: _Batch | None = None  # sent, not acknowledged
        self._flushed: dict[StatsKey, Counters] = {}  # acknowledged since the key's snapshot was fetched
        self._snapshots: dict[StatsKey, _Snapshot] = {}
        self._last_read: dict[StatsKey, float] = {}
        self._waiting: dict[StatsKey, threading.Event] = {}
        self._specs: dict[StatsKey, CounterSpec] = {}
        self._warned: set[tuple[str, StatsKey]] = set()
        self._seq = 0
        self._available = True  # until the first failure
        self._down_since = 0.0
        self._backoff = self.settings.backoff_initial_s
        self._retry_at = 0.0
        self._overflowing = False
        self._closed = False
        self.dropped_rounds = 0
        self.dropped_requests = 0
        self.flushed_rounds = 0

        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adaptive-spec-stats-redis", daemon=True)
        self._thread.start()
        _OPEN_STORES.add(self)

    # --- hot path (caller threads; no I/O) -------------------------------------------------------------------

    def _batch(self, key: StatsKey, spec: CounterSpec) -> Counters | None:
        if self._closed:
            return None
        batch = self._pending.get(key)
        if batch is not None:
            return batch
        self._specs.setdefault(check_key(key), spec)
        if len(self._pending) >= self.settings.max_buffered_keys:
            dropped_key, dropped = self._pending.popitem(last=False)
            self.dropped_rounds += round(dropped.totals[T_ROUNDS])
            self.dropped_requests += round(dropped.totals[T_REQUESTS])
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "stats.buffer.overflow",
                    max_buffered_keys=self.settings.max_buffered_keys,
                    dropped_key=dropped_key,
                    dropped_rounds_total=self.dropped_rounds,
                )
        batch = self._pending[key] = Counters(spec)
        return batch

    def observe_round(self, key: StatsKey, spec: CounterSpec, record: RoundRecord, now: float) -> None:
        with self._lock:
            batch = self._batch(key, spec)
            if batch is None:
                self.dropped_rounds += 1
                return
            batch.add_round(record, now)

    def observe_request(
        self, key: StatsKey, spec: CounterSpec, alpha: float, mean_accepted: float, extreme: str | None, now: float,
        draft_tokens: int | None = None,
    ) -> None:
        with self._lock:
            batch = self._batch(key, spec)
            if batch is None:
                self.dropped_requests += 1
                return
            batch.add_request(alpha, mean_accepted, extreme, now, draft_tokens)

    def read(self, key: StatsKey, spec: CounterSpec) -> Counters | None:
        event = None
        with self._lock:
            self._specs.setdefault(key, spec)
            self._last_read[key] = time.monotonic()
            if key not in self._snapshots and self._available and not self._closed and self.settings.read_timeout_s > 0:
                event = self._waiting.get(key)
                if event is None:
                    event = self._waiting[key] = threading.Event()
        if event is not None:
            self._wake.set()
            event.wait(self.settings.read_timeout_s)
        with self._lock:
            return self._view(key)

    def _view(self, key: StatsKey) -> Counters | None:
        snapshot = self._snapshots.get(key)
        parts = [
            snapshot.counters if snapshot is not None else None,
            self._flushed.get(key),
            self._inflight.deltas.get(key) if self._inflight is not None else None,
            self._pending.get(key),
        ]
        view = None
        for part in parts:
            if part is None or part.empty:
                continue
            if view is None:
                view = part.copy()
            else:
                view.absorb(part)
        return view

    # --- state ---------------------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False after a failed call to Redis, until a later one succeeds."""
        return self._available

    @property
    def buffered_rounds(self) -> int:
        """Rounds observed here and not yet acknowledged by Redis (buffered or in flight)."""
        with self._lock:
            batches = list(self._pending.values())
            if self._inflight is not None:
                batches += list(self._inflight.deltas.values())
            return round(sum(c.totals[T_ROUNDS] for c in batches))

    def _unflushed(self) -> bool:
        return bool(self._pending) or self._inflight is not None

    # --- background thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.flush_interval_s)
            self._wake.clear()
            self._tick(reads=True)
        deadline = time.monotonic() + self.settings.close_timeout_s
        while True:
            with self._lock:
                if not self._unflushed():
                    break
            now = time.monotonic()
            if now >= deadline:
                break
            if now < self._retry_at:
                time.sleep(min(self._retry_at, deadline) - now)
                continue
            self._tick(reads=False)

    def _tick(self, reads: bool) -> None:
        if time.monotonic() < self._retry_at:
            return
        try:
            for _ in range(_MAX_FLUSHES_PER_TICK):
                if not self._flush_once():
                    break
            if reads:
                self._refresh()
        except Exception as error:  # noqa: BLE001 - a statistics thread must outlive any failure
            self._mark_down(error)
        else:
            self._mark_up()
        finally:
            with self._lock:
                self._changed.notify_all()

    def _mark_down(self, error: BaseException) -> None:
        with self._lock:
            delay = self._backoff * random.uniform(0.8, 1.2)
            self._retry_at = time.monotonic() + delay
            self._backoff = min(self._backoff * 2.0, self.settings.backoff_max_s)
            was_available, self._available = self._available, False
            waiting, self._waiting = self._waiting, {}
        for event in waiting.values():
            event.set()  # nobody waits on an unavailable store
        if was_available:
            self._down_since = time.monotonic()
            expected = isinstance(error, (self._redis.RedisError, OSError))
            log.warning(
                "stats.redis.unavailable",
                url=redacted(self.settings.url),
                error=f"{type(error).__name__}: {error}",
                exc_info=not expected,
            )

    def _mark_up(self) -> None:
        if self._available:
            return
        with self._lock:
            self._available = True
            self._backoff = self.settings.backoff_initial_s
        log.info("stats.redis.available", url=redacted(self.settings.url), down_s=round(time.monotonic() - self._down_since, 3))

    def _flush_once(self) -> bool:
        """Send the in-flight batch (or the next one); False when there was nothing to send."""
        with self._lock:
            batch = self._inflight
            if batch is None:
                if not self._pending:
                    self._overflowing = False
                    return False
                self._seq += 1
                deltas = {}
                for _ in range(min(len(self._pending), self.settings.max_batch_keys)):
                    key, counters = self._pending.popitem(last=False)
                    deltas[key] = counters
                batch = self._inflight = _Batch(self._seq, deltas)  # still part of the local view
        if not batch.keys:
            self._prepare(batch)  # outside the lock: these deltas no longer change
        started = time.time()
        reply = self._script(keys=[self._writer_key, *batch.keys], args=batch.argv)
        finished = time.time()
        duplicate = int(reply[0]) == 1
        with self._lock:
            self._inflight = None
            for key, delta in batch.deltas.items():
                previous = self._flushed.get(key)
                if previous is None:
                    self._flushed[key] = delta
                else:
                    previous.absorb(delta)
            while len(self._flushed) > self.settings.max_buffered_keys:
                self._flushed.pop(next(iter(self._flushed)))  # local view only; Redis has it
            self.flushed_rounds += batch.rounds
        keys = list(batch.deltas)
        if not duplicate:
            for position in reply[1]:
                self._warn_once("replaced", keys[int(position) - 1], "stats.redis.invalid_value_replaced")
            for position in reply[2]:
                self._warn_once("half_life", keys[int(position) - 1], "stats.redis.half_life_mismatch")
        if self._on_flush is not None:
            report = FlushReport(batch.seq, len(keys), batch.rounds, batch.requests, started, finished, duplicate)
            try:
                self._on_flush(report)
            except Exception:  # noqa: BLE001 - a listener bug must not stop flushing
                log.exception("stats.redis.on_flush_failed")
        return True

    def _prepare(self, batch: _Batch) -> _Batch:
        """The script's KEYS and ARGV for a batch (computed once: a resent batch is byte-for-byte the same)."""
        batch.argv = [str(SCHEMA_VERSION), batch.seq, int(self.settings.key_ttl_s * 1000)]
        for counters in batch.deltas.values():
            fields = counters.to_fields()
            spec = counters.spec
            batch.argv += (_half_life(spec.half_life_tokens), _half_life(spec.half_life_seconds), len(fields))
            for name, value in fields.items():
                batch.argv += (name, value)
        batch.keys = [redis_key(self._ns, key) for key in batch.deltas]
        return batch

    def _refresh(self) -> None:
        """Fetch keys someone waits for, and recently read keys whose copy is older than the cache TTL."""
        with self._lock:
            if self._inflight is not None:
                return  # its outcome is unknown: a fetch now might count it twice in the local view
            now = time.monotonic()
            wanted = dict.fromkeys(self._waiting)
            for key, last_read in list(self._last_read.items()):
                if now - last_read > _HOT_WINDOW_S:
                    del self._last_read[key]
                    self._snapshots.pop(key, None)
                    continue
                snapshot = self._snapshots.get(key)
                if snapshot is None or now - snapshot.fetched >= self.settings.cache_ttl_s:
                    wanted[key] = None
            specs = {key: self._specs[key] for key in wanted}
        keys = list(wanted)
        for start in range(0, len(keys), MAX_FETCH_KEYS):
            self._fetch(keys[start : start + MAX_FETCH_KEYS], specs)

    def _fetch(self, keys: list[StatsKey], specs: dict[StatsKey, CounterSpec]) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.time()
        for key in keys:
            pipe.hgetall(redis_key(self._ns, key))
        replies = pipe.execute(raise_on_error=False)
        if isinstance(replies[0], Exception):
            raise replies[0]
        offset = server_offset(replies[0])
        fetched = time.monotonic()
        parsed: dict[StatsKey, Counters | None] = {}
        for key, reply in zip(keys, replies[1:]):
            parsed[key] = self._parse(key, specs[key], reply, offset)
        with self._lock:
            for key, counters in parsed.items():
                self._snapshots[key] = _Snapshot(counters, fetched)
                self._flushed.pop(key, None)
                event = self._waiting.pop(key, None)
                if event is not None:
                    event.set()

    def _parse(self, key: StatsKey, spec: CounterSpec, reply: Any, offset: float) -> Counters | None:
        if isinstance(reply, Exception):
            self._warn_once("invalid", key, "stats.redis.invalid_value_ignored", reason=str(reply))
            return None
        if not reply:
            return None
        try:
            counters = Counters.from_fields(spec, reply, clock_offset=offset)
        except InvalidCounters as error:
            self._warn_once("invalid", key, "stats.redis.invalid_value_ignored", reason=str(error))
            return None
        self._warned.discard(("invalid", key))
        if stored_half_lives(reply) != (spec.half_life_tokens, spec.half_life_seconds):
            self._warn_once("half_life", key, "stats.redis.half_life_mismatch", stored=stored_half_lives(reply))
        return counters

    def _warn_once(self, kind: str, key: StatsKey, event: str, **fields: Any) -> None:
        if (kind, key) in self._warned:
            return
        self._warned.add((kind, key))
        log.warning(event, key=redis_key(self._ns, key), **fields)

    # --- reports and lifecycle (caller threads; these do I/O and may raise StatsStoreUnavailable) ------------

    def snapshot(
        self, spec: CounterSpec, pair_id: str | None = None, request_class: str | None = None, drafter: str | None = None
    ) -> dict[StatsKey, Counters]:
        """Every valid matching key in Redis, read now (invalid ones are skipped with a warning)."""
        found = scan_keys(self._client, self.settings, spec, pair_id, request_class, drafter)
        return {key: counters for key, counters in found.items() if isinstance(counters, Counters)}

    def delete(self, pair_id: str | None = None, request_class: str | None = None, drafter: str | None = None) -> int:
        gone = delete_keys(self._client, self.settings, pair_id, request_class, drafter)
        with self._lock:
            for key in gone:
                self._snapshots.pop(key, None)
                self._flushed.pop(key, None)
        return len(gone)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wake the flusher and wait until nothing is buffered (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + (self.settings.close_timeout_s if timeout_s is None else timeout_s)
        with self._lock:
            while self._unflushed():
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._wake.set()
                self._changed.wait(min(left, 0.05))
            return True

    def close(self) -> None:
        """Stop the flusher after a last flush (at most ``close_timeout_s`` plus one socket timeout)."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
        _OPEN_STORES.discard(self)
        self._stop.set()
        self._wake.set()
        self._thread.join(self.settings.close_timeout_s + self.settings.socket_timeout_s + self.settings.connect_timeout_s + 1.0)
        left = self.buffered_rounds
        if left:
            log.warning("stats.redis.unflushed_at_close", rounds=left, url=redacted(self.settings.url))
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing must not raise
            pass

    def __enter__(self) -> RedisStatsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

