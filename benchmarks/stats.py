"""Shared acceptance statistics, shown: N worker processes replay synthetic round records through Redis.

Measures, and writes to ``benchmarks/results/stats.{json,md}``:

1. aggregated throughput: round observations per second from N processes, counted as applied in Redis
   (from the common start until every worker's last flush is acknowledged), with an exactness check;
2. in-process cost of ``observe()`` (and ``estimate()``), p50/p99, memory and Redis stores;
3. Redis memory per (class, drafter) key (``MEMORY USAGE``);
4. warm start: requests a fresh worker needs before its estimate is within 0.05 of the pooled one, with Redis
   and, for contrast, with only its own in-memory observations.

No models: records are drawn from per-class acceptance probabilities. Without ``--redis`` a private
``redis-server`` (no persistence) is started and stopped.

    python benchmarks/stats.py                       # 8 workers x 100,000 rounds
    python benchmarks/stats.py --workers 4 --rounds 20000 --redis redis://localhost:6379/0
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adaptive_spec.records import RoundRecord  # noqa: E402
from adaptive_spec.stats import AlphaEstimator, MemoryStatsStore, RedisSettings  # noqa: E402

PAIR = "qwen2.5-coder-1.5b+0.5b"
# class -> (drafter, per-position acceptance, k range, share of lookup misses)
TRAFFIC = {
    "code": [("model", 0.85, (4, 8), 0.0), ("lookup", 0.92, (8, 16), 0.6)],
    "chat": [("model", 0.60, (2, 6), 0.0), ("lookup", 0.70, (4, 10), 0.8)],
    "math": [("model", 0.72, (3, 8), 0.0)],
    "translate": [("model", 0.45, (1, 4), 0.0)],
}
REQUEST_ROUNDS = 40  # rounds per synthetic request
WARM_TOLERANCE = 0.05


def synth_round(rng: random.Random, drafter: str, p: float, k_range: tuple[int, int], miss: float) -> RoundRecord:
    k = rng.randint(*k_range)
    if rng.random() < miss:
        return RoundRecord(drafter, k, 0, 0, 1, 500, 0.0001, 0.02)
    accepted = 0
    while accepted < k and rng.random() < p:
        accepted += 1
    return RoundRecord(drafter, k, k, accepted, accepted + 1, 500, 0.002, 0.02)


def synth_requests(seed: int, count: int) -> list[tuple[str, list[RoundRecord]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        cls = rng.choice(list(TRAFFIC))
        drafter, p, k_range, miss = rng.choice(TRAFFIC[cls])
        out.append((cls, [synth_round(rng, drafter, p, k_range, miss) for _ in range(REQUEST_ROUNDS)]))
    return out


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    samples = sorted(samples_ns)
    return {
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        "mean_us": statistics.fmean(samples) / 1000,
    }


# --- 1. throughput from N processes --------------------------------------------------------------------------------


def _worker(url: str, seed: int, rounds: int, ready, start, queue) -> None:
    from adaptive_spec.stats.redis_store import RedisStatsStore

    requests = synth_requests(seed, max(1, rounds // REQUEST_ROUNDS))
    flat = [(cls, r) for cls, records in requests for r in records][:rounds]
    store = RedisStatsStore(RedisSettings(url=url, socket_timeout_s=1.0))
    est = AlphaEstimator(store, PAIR)
    ready.put(seed)
    start.wait()
    t0 = time.time()
    for cls, record in flat:
        est.observe(cls, record)
    observed_s = time.time() - t0
    flushed = est.flush(60.0)
    done = time.time()
    est.close()
    queue.put({"seed": seed, "rounds": len(flat), "observe_s": observed_s, "done": done, "flushed": flushed,
               "dropped": store.dropped_rounds})  # fmt: skip


def throughput(url: str, workers: int, rounds: int) -> dict:
    ctx = mp.get_context("spawn")
    ready, start, queue = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, seed, rounds, ready, start, queue)) for seed in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:  # every process has imported, built its records and created its store
        ready.get(timeout=300)
    time.sleep(0.5)
    t0 = time.time()
    start.set()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    elapsed = max(r["done"] for r in results) - t0
    total = sum(r["rounds"] for r in results)
    return {
        "workers": workers,
        "rounds_per_worker": rounds,
        "rounds_total": total,
        "elapsed_s": elapsed,
        "updates_per_s": total / elapsed,
        "all_flushed": all(r["flushed"] for r in results),
        "dropped": sum(r["dropped"] for r in results),
        "observe_only_s_max": max(r["observe_s"] for r in results),
    }


# --- 2. in-process cost ------------------------------------------------------------------------------------------------


def latency(store, n: int) -> dict:
    est = AlphaEstimator(store, PAIR)
    requests = synth_requests(99, n // REQUEST_ROUNDS + 1)
    flat = [(cls, r) for cls, records in requests for r in records][:n]
    for cls, record in flat[:2000]:  # warm up
        est.observe(cls, record)
    observe_ns = []
    for cls, record in flat:
        t0 = time.perf_counter_ns()
        est.observe(cls, record)
        observe_ns.append(time.perf_counter_ns() - t0)
    estimate_ns = []
    for cls, record in flat[: n // 10]:
        t0 = time.perf_counter_ns()
        est.estimate(cls, record.drafter)
        estimate_ns.append(time.perf_counter_ns() - t0)
    est.flush(30.0)
    return {"observe": percentiles(observe_ns), "estimate": percentiles(estimate_ns)}


# --- 3. memory per key -----------------------------------------------------------------------------------------------


def memory_per_key(url: str) -> dict:
    import redis

    client = redis.Redis.from_url(url)
    sizes = {}
    for name in client.scan_iter(match=f"adaptive-spec:v1:{PAIR}:*"):
        sizes[name.decode()] = {"bytes": client.memory_usage(name, samples=0), "fields": client.hlen(name)}
    values = [s["bytes"] for s in sizes.values()]
    return {"keys": len(sizes), "mean_bytes": statistics.fmean(values), "max_bytes": max(values), "per_key": sizes}


# --- 4. warm start ---------------------------------------------------------------------------------------------------


def _requests_until_close(est: AlphaEstimator, pooled: dict, seed: int, max_requests: int) -> dict:
    """Per key: requests of that key this worker must observe before |alpha - pooled alpha| <= tolerance."""
    out = {}
    for (cls, drafter), target in pooled.items():
        rng = random.Random(seed)
        _, p, k_range, miss = next(t for t in TRAFFIC[cls] if t[0] == drafter)
        needed = None
        for n in range(max_requests + 1):
            if abs(est.estimate(cls, drafter).alpha.mean - target) <= WARM_TOLERANCE:
                needed = n
                break
            est.observe_request(cls, [synth_round(rng, drafter, p, k_range, miss) for _ in range(REQUEST_ROUNDS)])
        out[f"{cls}/{drafter}"] = needed
    return out


def _fresh_worker(url: str, pooled: dict, queue) -> None:
    from adaptive_spec.stats.redis_store import RedisStatsStore

    est = AlphaEstimator(RedisStatsStore(RedisSettings(url=url, read_timeout_s=0.5)), PAIR)
    first = {f"{c}/{d}": est.estimate(c, d).alpha.mean for c, d in pooled}
    with_redis = _requests_until_close(est, pooled, seed=1234, max_requests=200)
    est.close()
    local = AlphaEstimator(MemoryStatsStore(), PAIR)
    without = _requests_until_close(local, pooled, seed=1234, max_requests=200)
    queue.put({"first_estimate": first, "requests_needed_with_redis": with_redis, "requests_needed_memory_only": without})


def warm_start(url: str) -> dict:
    from adaptive_spec.stats.redis_store import RedisStatsStore

    reader = AlphaEstimator(RedisStatsStore(RedisSettings(url=url, socket_timeout_s=2.0)), PAIR)
    pooled = {(e.key.request_class, e.key.drafter): e.alpha.mean for e in reader.estimates()}
    reader.close()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_fresh_worker, args=(url, pooled, queue))
    proc.start()
    result = queue.get(timeout=300)
    proc.join(30)
    result["pooled_alpha"] = {f"{c}/{d}": a for (c, d), a in pooled.items()}
    result["max_first_gap"] = max(abs(result["first_estimate"][k] - a) for k, a in result["pooled_alpha"].items())
    return result


# --- report ------------------------------------------------------------------------------------------------------------


def environment() -> dict:
    try:
        redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        redis_version = "unknown"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "redis_server": redis_version,
    }


def markdown(r: dict) -> str:
    t, lat, mem, warm = r["throughput"], r["latency"], r["memory"], r["warm_start"]
    needed_redis = warm["requests_needed_with_redis"]
    needed_local = warm["requests_needed_memory_only"]
    lines = [
        "# Shared acceptance statistics: benchmark",
        "",
        f"`{r['command']}` — {r['environment']['date']}, {r['environment']['cpus']} CPUs, Python "
        f"{r['environment']['python']}, {r['environment']['redis_server'].split(' sha')[0]} (private, no persistence).",
        "",
        "| measure | result | bar |",
        "|---|---|---|",
        f"| aggregated round observations/s, {t['workers']} processes through Redis | **{t['updates_per_s']:,.0f}** "
        f"({t['rounds_total']:,} rounds in {t['elapsed_s']:.2f} s, all flushed: {t['all_flushed']}, pooled counts exact: "
        f"{r['exact']}) | ≥ 50,000 |",
        f"| `observe()` in process, Redis store | p50 **{lat['redis']['observe']['p50_us']:.1f} µs**, "
        f"p99 {lat['redis']['observe']['p99_us']:.1f} µs | p50 ≤ 20 µs |",
        f"| `observe()` in process, memory store | p50 {lat['memory']['observe']['p50_us']:.1f} µs, "
        f"p99 {lat['memory']['observe']['p99_us']:.1f} µs | |",
        f"| `estimate()` in process, Redis store (cached) | p50 {lat['redis']['estimate']['p50_us']:.1f} µs, "
        f"p99 {lat['redis']['estimate']['p99_us']:.1f} µs | |",
        f"| Redis memory per (class, drafter) key | mean **{mem['mean_bytes']:.0f} B**, max {mem['max_bytes']} B "
        f"over {mem['keys']} keys | ≤ 2 KB |",
        f"| requests a fresh worker needs to be within {WARM_TOLERANCE} of the pooled α, with Redis | "
        f"**{max(v for v in needed_redis.values())}** (max over keys; first-read gap {warm['max_first_gap']:.2g}) | 0 |",
        "",
        "Warm start per key (requests of 40 rounds before |α − pooled α| ≤ 0.05; `None`: not within 200):",
        "",
        "| key | pooled α | with Redis | own observations only |",
        "|---|---|---|---|",
    ]
    for key, alpha in warm["pooled_alpha"].items():
        lines.append(f"| {key} | {alpha:.3f} | {needed_redis[key]} | {needed_local[key]} |")
    lines += [
        "",
        "Notes: the machine's cores are shared by all worker processes and redis-server. Throughput counts rounds "
        "applied in Redis, from the common start to the last acknowledged flush; `observe()` itself never touches "
        "the network (batches are flushed by a background thread). The memory-only column shows what the pool "
        "saves: a worker on its own needs that many requests (with the default prior and half-life).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="Redis URL; default: start a private redis-server")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=100_000, help="round observations per worker")
    parser.add_argument("--latency-samples", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    server = None
    url = args.redis
    if url is None:
        from tests.redis_server import RedisServer

        server = RedisServer().start()
        url = server.url
    try:
        import redis

        redis.Redis.from_url(url).flushdb()  # the benchmark's own database: start empty
        result: dict = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]), "environment": environment()}
        result["throughput"] = throughput(url, args.workers, args.rounds)
        pooled = redis.Redis.from_url(url)
        total = sum(int(float(pooled.hget(n, "total_rounds") or 0)) for n in pooled.scan_iter(match=f"adaptive-spec:v1:{PAIR}:*"))
        result["exact"] = total == result["throughput"]["rounds_total"]
        result["memory"] = memory_per_key(url)
        result["warm_start"] = warm_start(url)
        result["latency"] = {
            "memory": latency(MemoryStatsStore(), args.latency_samples),
            "redis": _redis_latency(url, args.latency_samples),
        }
    finally:
        if server is not None:
            server.cleanup()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stats.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "stats.md").write_text(markdown(result))
    print(markdown(result))


def _redis_latency(url: str, n: int) -> dict:
    from adaptive_spec.stats.redis_store import RedisStatsStore

    store = RedisStatsStore(RedisSettings(url=url))
    try:
        return latency(store, n)
    finally:
        store.close()


if __name__ == "__main__":
    main()
