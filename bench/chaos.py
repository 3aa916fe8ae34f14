"""Router benchmarks: an endpoint dies under load, and the cost of routing over a group.

    python -m bench.chaos [--duration 3] [--skip-overhead] [--faults]

``make chaos`` runs ``--skip-overhead --faults``: this endpoint kill, then the fault tests of
``bench/faults.py`` (Redis killed, SIGTERM under streaming load, a connection flood on the
admin port, a 401 that echoes the key), each counting calls attempted / succeeded / failed / lost.

1. **Chaos.** Closed-loop load at concurrency 32 through the sidecar over one model
   group of two endpoints, each its own mock provider process (20 ms per answer).
   After a steady phase one mock is killed (SIGKILL), later restarted on the same
   port. Reports failed calls (target 0), p50/p99 before and during the failure,
   and the seconds from the restart until the restarted endpoint takes calls again
   (the active probe's interval and the circuit's ``open_for`` bound it).
2. **Routing overhead.** The core JSON scenario (static answer from nginx, or the
   mock) at concurrency 16 with the model group holding 4 endpoints vs 1; the
   4-endpoint rate must stay within 10 % of the 1-endpoint rate. Best of 3 rounds each.

Everything binds 127.0.0.1 and stops by itself; the load is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import procs
from bench.load import percentile

CHAOS_CONCURRENCY = 32
OVERHEAD_CONCURRENCY = 16
MAX_OVERHEAD = 0.10
MODEL = "bench-chaos"
PROMPT = [{"role": "user", "content": "Name five things that make a system resilient."}]

# Quick to notice a dead endpoint and quick to take it back; the rest are the defaults.
ROUTER = {
    "max_attempts": 3,
    "queue_timeout": 5.0,
    "backoff": {"base": 0.02, "max": 0.2},
    "circuit": {"failures": 3, "open_for": 2.0},
    "health": {"enabled": True, "interval": 0.5, "timeout": 0.5, "unhealthy_after": 1, "healthy_after": 1},
}


def _write_config(
    directory: Path, endpoints: list[dict[str, Any]], router: dict[str, Any] | None = None, group: str = MODEL
) -> tuple[Path, int, int]:
    port, admin_port = procs.free_port(), procs.free_port()
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "admin_host": "127.0.0.1",
            "admin_port": admin_port,
            "drain_timeout": 1,
        },
        "model_groups": {group: {"endpoints": endpoints}},
        "router": router or {},
        "cache": {"backend": "none"},
        "telemetry": {"access_log": False},
    }
    path = directory / "sidecar.yaml"
    path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))  # JSON is YAML
    return path, port, admin_port


def _endpoint(name: str, url: str) -> dict[str, Any]:
    return {
        "name": name,
        "url": url + "/v1",
        "dialect": "openai",
        "api_key": "sk-bench-not-a-real-key",
        "max_concurrent": 256,
    }


def _mock(port: int | None = None) -> procs.Proc:
    port = port or procs.free_port()
    argv = [
        procs.PYTHON,
        "-m",
        "proxy",
        "mock-provider",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--behaviour",
        f"{MODEL}:latency_ms=20,chunks=20",
    ]
    return procs.Proc("mock provider", argv, port, procs.LOAD_CORES, ready=f"http://127.0.0.1:{port}/v1/models")


def _calls(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/_mock/stats", timeout=1) as response:
            return int(orjson.loads(response.read())["total_calls"])
    except OSError:
        return -1


# ---------------------------------------------------------------- chaos


@dataclass
class Timeline:
    #: (start offset in s, latency in s, ok)
    calls: list[tuple[float, float, bool]] = field(default_factory=list)
    #: succeeded / failed (an error answer) / lost (no answer at all)
    outcomes: Counter[str] = field(default_factory=Counter)
    killed_at: float = 0.0
    restarted_at: float = 0.0
    returned_after: float | None = None

    def window(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        return [c for c in self.calls if start <= c[0] < end]


async def _load(url: str, body: bytes, concurrency: int, stop_at: float, timeline: Timeline, t0: float) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-client"}
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker() -> None:
            while (now := time.monotonic()) < stop_at:
                ok = False
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                    timeline.outcomes["succeeded" if ok else "failed"] += 1
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                    timeline.outcomes["lost"] += 1
                timeline.calls.append((now - t0, time.monotonic() - now, ok))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _chaos_script(
    victim: procs.Proc, timeline: Timeline, t0: float, steady: float, outage: float, recovery_limit: float
) -> procs.Proc:
    await asyncio.sleep(steady)
    timeline.killed_at = time.monotonic() - t0
    victim.process.kill()  # a crash, not a graceful drain
    victim.process.wait(5)
    await asyncio.sleep(outage)
    port = victim.port
    victim.stop()
    revived = await asyncio.to_thread(_mock, port)
    timeline.restarted_at = time.monotonic() - t0
    restarted = time.monotonic()
    while time.monotonic() - restarted < recovery_limit:
        if await asyncio.to_thread(_calls, revived.url) > 0:
            timeline.returned_after = time.monotonic() - restarted
            break
        await asyncio.sleep(0.05)
    return revived


def chaos(steady: float = 3.0, outage: float = 5.0, tail: float = 4.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        survivor, victim = _mock(), _mock()
        revived: procs.Proc | None = None
        try:
            config, port, admin_port = _write_config(
                Path(tmp), [_endpoint("mock-1", survivor.url), _endpoint("mock-2", victim.url)], ROUTER
            )
            with procs.start_sidecar(config, port, admin_port) as sidecar:
                url = sidecar.url + "/v1/chat/completions"
                body = orjson.dumps({"model": MODEL, "messages": PROMPT})
                timeline = Timeline()

                async def main() -> procs.Proc:
                    t0 = time.monotonic()
                    stop_at = t0 + steady + outage + tail + 3.0
                    script = asyncio.create_task(_chaos_script(victim, timeline, t0, steady, outage, tail + 3.0))
                    await _load(url, body, CHAOS_CONCURRENCY, stop_at, timeline, t0)
                    return await script

                revived = asyncio.run(main())
        finally:
            for proc in (survivor, victim, revived):
                if proc is not None:
                    proc.stop()

    def stats(calls: list[tuple[float, float, bool]]) -> dict[str, float]:
        latencies = [c[1] * 1000 for c in calls]
        return {
            "calls": len(calls),
            "failed": sum(not c[2] for c in calls),
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
        }

    return {
        "all": stats(timeline.calls),
        "steady": stats(timeline.window(0.5, timeline.killed_at)),
        "outage": stats(timeline.window(timeline.killed_at, timeline.restarted_at)),
        "after": stats(timeline.window(timeline.restarted_at, float("inf"))),
        "outcomes": timeline.outcomes,
        "returned_after_s": timeline.returned_after,
        "killed_at_s": timeline.killed_at,
        "restarted_at_s": timeline.restarted_at,
    }


# ---------------------------------------------------------------- overhead


def overhead(duration: float = 3.0, rounds: int = 3) -> dict[str, float]:
    from bench import core, load

    body = orjson.dumps({"model": "bench-json", "messages": core.PROMPT})
    rates: dict[int, float] = {}
    with core._upstream("json") as (_, upstream), tempfile.TemporaryDirectory(prefix="bench-route-") as tmp:
        sidecars = {}
        try:
            for count in (1, 4):
                directory = Path(tmp) / str(count)
                directory.mkdir()
                endpoints = [_endpoint(f"upstream-{i}", upstream) for i in range(count)]
                config, port, admin_port = _write_config(directory, endpoints, group="bench-json")
                sidecars[count] = procs.start_sidecar(config, port, admin_port)
            for proc in sidecars.values():
                load.run(proc.url + "/v1/chat/completions", body, OVERHEAD_CONCURRENCY, 1.0)  # warm-up
            for _ in range(rounds):
                for count, proc in sidecars.items():
                    result = load.run(proc.url + "/v1/chat/completions", body, OVERHEAD_CONCURRENCY, duration)
                    if result.errors:
                        raise RuntimeError(f"{result.errors} errors with {count} endpoint(s)")
                    rates[count] = max(rates.get(count, 0.0), result.rate)
        finally:
            for proc in sidecars.values():
                proc.stop()
    return {"one": rates[1], "four": rates[4], "ratio": rates[4] / rates[1]}


# ---------------------------------------------------------------- report


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per overhead round")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--faults", action="store_true", help="then the fault tests of bench/faults.py")
    args = parser.parse_args()

    print(f"layout: {procs.layout()}", flush=True)
    result = chaos()
    print("\n### Chaos: 2 endpoints, concurrency 32, one mock killed then restarted\n")
    print(f"mock-2 killed at {result['killed_at_s']:.1f} s, restarted at {result['restarted_at_s']:.1f} s\n")
    print("| phase | calls | failed | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for phase in ("steady", "outage", "after", "all"):
        s = result[phase]
        print(f"| {phase} | {s['calls']} | {s['failed']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} |")
    returned = result["returned_after_s"]
    print(
        f"\ntraffic back on the restarted endpoint after: "
        f"{'never (within the run)' if returned is None else f'{returned:.2f} s'}"
    )
    o = result["outcomes"]
    print(f"calls attempted {sum(o.values())} / succeeded {o['succeeded']} / failed {o['failed']} / lost {o['lost']}")
    ok = result["all"]["failed"] == 0 and returned is not None
    print(
        f"verdict: failed calls {result['all']['failed']} (target 0) → {'PASS' if result['all']['failed'] == 0 else 'FAIL'}"
    )

    if not args.skip_overhead:
        routing = overhead(args.duration)
        print(f"\n### Routing overhead: JSON, concurrency {OVERHEAD_CONCURRENCY}, best of 3\n")
        print("| endpoints in the group | calls/s |\n|---|---|")
        print(f"| 1 | {routing['one']:.0f} |\n| 4 | {routing['four']:.0f} |")
        within = routing["ratio"] >= 1 - MAX_OVERHEAD
        print(
            f"\nverdict: 4 endpoints at {routing['ratio']:.1%} of 1 endpoint (target ≥ {1 - MAX_OVERHEAD:.0%}) "
            f"→ {'PASS' if within else 'FAIL'}"
        )
        ok = ok and within
    if args.faults:
        from bench import faults

        sys.argv = sys.argv[:1]  # faults.main parses its own command line: run them all
        ok = faults.main() == 0 and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
