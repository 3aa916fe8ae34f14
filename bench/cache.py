"""The cache benchmark: hits from memory and Redis next to the bare pass-through, and coalescing.

    python -m bench.cache [--duration 3] [--concurrency 1,16,64] [--burst 10,50,100]

``hit``: one cacheable chat completion, loaded at each concurrency against four
targets in one run: the bare pass-through (``bench/passthrough.py``, every call
goes upstream to nginx's static answer, or the mock provider without nginx) and
``llm-sidecar serve`` with the memory backend, with a real ``redis-server`` and the
in-process tier off (``local_ttl: 0``: every hit is a Redis round trip), and with
Redis and the tier on (the default: repeated hits are answered in-process), all
warmed so every measured call is a hit. Besides calls/s, each cell reports the CPU
milliseconds the process under test spent per call (from /proc): on a shared
2-core machine throughput swings with other work, CPU per call much less, so the
comparison leans on it. Issue 3's targets: memory hits ≥ 2× the pass-through's
throughput with p50 < 0.3 ms at c=1; Redis hits ≥ the pass-through's throughput.

``coalesce``: N identical streaming calls at once against the mock provider with
200 ms to the first token, through a sidecar with the memory backend: the upstream
calls made (mock provider counts) and the time to first byte of the leader and of
its followers (fan-out: followers get frames as the leader does).

Everything binds 127.0.0.1; loads are closed-loop and stop after ``duration``.
Results go to stdout and ``bench/results/cache.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench import load, procs
from bench.core import PROMPT, _static_answer

MODEL = "bench-json"
TTFT_MS = 200


@dataclass(frozen=True)
class HitRow:
    target: str
    concurrency: int
    result: load.LoadResult
    #: CPU ms the process under test spent per call (lowest over the rounds)
    cpu_ms: float


@dataclass(frozen=True)
class BurstRow:
    calls: int
    upstream_calls: int
    leader_ttfb_ms: float
    follower_ttfb_p50_ms: float
    follower_ttfb_max_ms: float
    statuses: dict[str, int]


def start_redis() -> procs.Proc:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = procs.free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return procs.Proc("redis-server", argv, port, procs.LOAD_CORES)


@contextmanager
def _sidecar(directory: Path, upstream: str, cache: dict, name: str, **sections: dict) -> Iterator[procs.Proc]:
    sub = directory / name
    sub.mkdir()
    config, port, admin = procs.sidecar_config(sub, {MODEL: upstream + "/v1"}, cache=cache, **sections)
    with procs.start_sidecar(config, port, admin) as sidecar:
        yield sidecar


PASS_THROUGH = "pass-through"
MEMORY = "sidecar, memory hit"
REDIS = "sidecar, Redis hit (local tier off)"
REDIS_LOCAL = "sidecar, Redis hit (local tier on)"


def _measure(
    proc: procs.Proc, url: str, body: bytes, concurrency: int, duration: float
) -> tuple[load.LoadResult, float]:
    before = proc.cpu_seconds()
    result = load.run(url, body, concurrency, duration)
    spent = proc.cpu_seconds() - before
    return result, (spent / result.calls * 1000 if result.calls else float("nan"))


def run_hits(duration: float, concurrencies: list[int], rounds: int) -> tuple[list[HitRow], str]:
    # temperature 0: cacheable under the default "deterministic" policy.
    body = orjson.dumps({"model": MODEL, "messages": PROMPT, "temperature": 0})
    rows: list[HitRow] = []
    nginx = procs.start_nginx(_static_answer())
    upstream_proc = nginx or procs.start_mock(procs.LOAD_CORES, f"{MODEL}:chunks=20")
    upstream_name = "nginx (static JSON)" if nginx else "mock provider"
    path = "/v1/chat/completions"
    with upstream_proc, start_redis() as redis, tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
        with (
            procs.start_passthrough(upstream_proc.url) as bare,
            _sidecar(Path(tmp), upstream_proc.url, {"backend": "memory"}, "memory") as memory,
            _sidecar(
                Path(tmp), upstream_proc.url, {"backend": "redis", "redis_url": redis_url, "local_ttl": 0}, "redis"
            ) as red,
            _sidecar(
                Path(tmp),
                upstream_proc.url,
                {"backend": "redis", "redis_url": redis_url, "local_ttl": 5},
                "redis-local",
            ) as local,
        ):
            targets = {PASS_THROUGH: bare, MEMORY: memory, REDIS: red, REDIS_LOCAL: local}
            for proc in targets.values():
                load.run(proc.url + path, body, max(concurrencies), 1.0)  # warm-up; fills the caches
            for concurrency in concurrencies:
                best: dict[str, HitRow] = {}
                for _ in range(rounds):
                    for target, proc in targets.items():
                        result, cpu_ms = _measure(proc, proc.url + path, body, concurrency, duration)
                        best[target] = load.best_round(best.get(target), HitRow(target, concurrency, result, cpu_ms))
                for row in best.values():
                    rows.append(row)
                    print(
                        f"hit  {row.target:36} c={concurrency:<3} {row.result.rate:9,.0f}/s "
                        f"p50 {row.result.p50_ms:.3f} ms p99 {row.result.p99_ms:.3f} ms "
                        f"CPU {row.cpu_ms:.3f} ms/call",
                        flush=True,
                    )
    return rows, upstream_name


async def _burst(url: str, count: int, prompt: str) -> list[tuple[str, float]]:
    import aiohttp

    body = orjson.dumps(
        {"model": MODEL, "stream": True, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
    )
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one() -> tuple[str, float]:
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                await response.content.readany()
                ttfb = time.perf_counter() - started
                await response.read()
                return response.headers.get("x-llm-sidecar-cache", "?"), ttfb

        return await asyncio.gather(*(one() for _ in range(count)))


def _upstream_calls(mock: procs.Proc) -> int:
    with urllib.request.urlopen(mock.url + "/_mock/stats", timeout=5) as response:
        return orjson.loads(response.read())["total_calls"]


def run_coalescing(bursts: list[int]) -> list[BurstRow]:
    rows = []
    behaviour = f"{MODEL}:ttft_ms={TTFT_MS},chunks=20,chunk_delay_ms=5"
    with (
        procs.start_mock(procs.LOAD_CORES, behaviour) as mock,
        tempfile.TemporaryDirectory(prefix="bench-coalesce-") as tmp,
        _sidecar(Path(tmp), mock.url, {"backend": "memory"}, "memory") as sidecar,
    ):
        for count in bursts:
            before = _upstream_calls(mock)
            results = asyncio.run(_burst(sidecar.url + "/v1/chat/completions", count, f"burst of {count}"))
            upstream_calls = _upstream_calls(mock) - before
            leader = [t for status, t in results if status == "miss"]
            followers = [t for status, t in results if status == "coalesced"]
            statuses: dict[str, int] = {}
            for status, _ in results:
                statuses[status] = statuses.get(status, 0) + 1
            row = BurstRow(
                count,
                upstream_calls,
                (leader[0] if leader else float("nan")) * 1000,
                load.percentile(followers, 50) * 1000,
                (max(followers) if followers else 0) * 1000,
                statuses,
            )
            rows.append(row)
            print(
                f"coalesce N={count:<4} upstream calls {upstream_calls}  leader TTFB {row.leader_ttfb_ms:.1f} ms  "
                f"followers p50 {row.follower_ttfb_p50_ms:.1f} ms max {row.follower_ttfb_max_ms:.1f} ms",
                flush=True,
            )
    return rows


def report(hits: list[HitRow], upstream: str, bursts: list[BurstRow], duration: float, rounds: int) -> str:
    def get(target: str, concurrency: int) -> HitRow | None:
        return next((r for r in hits if (r.target, r.concurrency) == (target, concurrency)), None)

    lines = [
        f"# Cache benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- load generator: {load.GENERATOR}, closed loop, {duration:g} s per cell, {rounds} rounds: calls/s and "
        "latency from the round with the most calls/s, CPU per call the lowest of the rounds",
        f"- placement: {procs.layout()}",
        f"- load average at the start: {os.getloadavg()[0]:.2f} (2 cores shared with other work)",
        f"- pass-through upstream: {upstream}; sidecars: `llm-sidecar serve`, default telemetry, cache "
        "policy `deterministic` (the call has temperature 0), warmed so every measured call is a hit",
        "- CPU ms/call: user + system CPU of the process under test (sidecar or pass-through) per call; "
        "`CPU × pass-through` = the pass-through's CPU per call / the target's (above 1: more calls per core)",
        "",
        "## Cache hits",
        "",
        "| target | c | calls/s | × pass-through | p50 ms | p99 ms | CPU ms/call | CPU × pass-through | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in hits:
        bare = get(PASS_THROUGH, row.concurrency)
        ratio = row.result.rate / bare.result.rate if bare and bare.result.rate else float("nan")
        cpu_ratio = bare.cpu_ms / row.cpu_ms if bare and row.cpu_ms else float("nan")
        lines.append(
            f"| {row.target} | {row.concurrency} | {row.result.rate:,.0f} | {ratio:.2f} | "
            f"{row.result.p50_ms:.3f} | {row.result.p99_ms:.3f} | {row.cpu_ms:.3f} | {cpu_ratio:.2f} | "
            f"{row.result.errors} |"
        )
    checks = []
    for concurrency in sorted({r.concurrency for r in hits}):
        bare = get(PASS_THROUGH, concurrency)
        if bare is None or not bare.result.rate:
            continue
        memory = get(MEMORY, concurrency)
        if memory:
            checks.append(
                (
                    f"memory hit throughput ≥ 2× pass-through, c={concurrency}",
                    f"{memory.result.rate / bare.result.rate:.2f}× (CPU: {bare.cpu_ms / memory.cpu_ms:.2f}×)",
                    memory.result.rate >= 2 * bare.result.rate,
                )
            )
        for target in (REDIS, REDIS_LOCAL):
            redis = get(target, concurrency)
            if redis:
                checks.append(
                    (
                        f"{target.removeprefix('sidecar, ')} throughput ≥ pass-through, c={concurrency}",
                        f"{redis.result.rate / bare.result.rate:.2f}× (CPU: {bare.cpu_ms / redis.cpu_ms:.2f}×)",
                        redis.result.rate >= bare.result.rate,
                    )
                )
    memory1 = get(MEMORY, 1)
    if memory1:
        checks.append(
            ("memory hit p50 at c=1 < 0.3 ms", f"{memory1.result.p50_ms:.3f} ms", memory1.result.p50_ms < 0.3)
        )
    lines += ["", "| target (issue 3) | measured (calls/s ratio; CPU-per-call ratio) | |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {'met' if ok else '**missed**'} |" for name, measured, ok in checks]
    lines += [
        "",
        f"## Coalescing (identical streaming calls, mock provider with {TTFT_MS} ms to first token)",
        "",
        "| concurrent calls | upstream calls | leader TTFB ms | followers TTFB p50 ms | followers TTFB max ms "
        "| cache statuses |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for b in bursts:
        lines.append(
            f"| {b.calls} | {b.upstream_calls} | {b.leader_ttfb_ms:.1f} | {b.follower_ttfb_p50_ms:.1f} | "
            f"{b.follower_ttfb_max_ms:.1f} | {', '.join(f'{k} {v}' for k, v in sorted(b.statuses.items()))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description="the cache benchmark")
    load.grid_options(parser)
    parser.add_argument("--burst", default="10,50,100", help="coalescing burst sizes (default 10,50,100)")
    args = parser.parse_args(argv)
    concurrencies = load.concurrencies(parser, args)
    bursts = [min(int(n), 500) for n in args.burst.split(",")]
    hits, upstream = run_hits(args.duration, concurrencies, args.rounds)
    coalescing = run_coalescing(bursts)
    text = report(hits, upstream, coalescing, args.duration, args.rounds)
    load.publish("cache", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
