"""The fleet-limits benchmark: the upstream path with fleet limits on and off, in the same run.

    python -m bench.fleet [--duration 3] [--concurrency 1,16,64] [--rounds 2]

Three targets in front of the same upstream (nginx's static answer, or the mock provider
without nginx): the bare pass-through (``bench/passthrough.py``), and two ``llm-sidecar
serve`` with the same Redis cache, identical but for the endpoint's ``fleet:`` block (limits
far above the load, so no call waits: what is measured is the price of asking). The call is
not cacheable under the default policy (no temperature 0), so every call goes upstream.
Then the same three at c=1 in front of the mock provider answering in ``SLOW_MS``: what the
wait for Redis costs next to a call that takes time, as every real model's does.
Rounds alternate the targets; calls/s and latency come from each target's best round, CPU
per call (from /proc) from its lowest.

Redis round trips per call: the difference in Redis's own command counts (``INFO
commandstats``) across the fleet-on cells, per call: ``EVALSHA``/``EVAL`` (the fleet sends
nothing else: the ``ACQUIRE`` a call waits for, the ``RELEASE`` sent when no ``ACQUIRE``
came soon enough to carry an ended call's lease back, heartbeats and renewals), and the
commands Redis ran for them (inside the scripts). The targets: at most one Redis round trip on a call's path, at most 15 % fewer
calls/s than with fleet limits off.

Everything binds 127.0.0.1; loads are closed-loop and stop after ``duration``.
Results go to stdout and ``bench/results/fleet.md``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis

from bench import load, procs
from bench.cache import _measure, start_redis
from bench.core import PROMPT, _static_answer

MODEL = "bench-json"
PASS_THROUGH = "pass-through"
OFF = "sidecar, fleet limits off"
ON = "sidecar, fleet limits on"
#: far above any load here: every call is granted, none waits
LIMITS = {"max_concurrent": 100_000, "rpm": 100_000_000, "tpm": 100_000_000_000}


#: the second upstream's answer time: shorter than any real model's (a short completion from a fast
#: in-cluster server takes tens of milliseconds at least), so it shows the least that the wait for
#: Redis is worth next to a real call
SLOW_MS = 20


@dataclass(frozen=True)
class Row:
    upstream: str
    target: str
    concurrency: int
    result: load.LoadResult
    cpu_ms: float
    #: Redis EVALSHA / all commands per call during this target's cells (fleet on only)
    scripts_per_call: float | None = None
    commands_per_call: float | None = None


def _commands(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats")
    total = sum(v["calls"] for v in stats.values())
    return stats.get("cmdstat_evalsha", {}).get("calls", 0) + stats.get("cmdstat_eval", {}).get("calls", 0), total


def run(duration: float, concurrencies: list[int], rounds: int) -> tuple[list[Row], str]:
    """The grid against an upstream that answers at once, then c=1 against one that takes ``SLOW_MS``."""
    nginx = procs.start_nginx(_static_answer())
    static = nginx or procs.start_mock(procs.LOAD_CORES, f"{MODEL}:chunks=20")
    static_name = "nginx (static JSON)" if nginx else "mock provider"
    with static:
        rows = _cells(static, static_name, duration, concurrencies, rounds)
    with procs.start_mock(procs.LOAD_CORES, f"{MODEL}:latency_ms={SLOW_MS}") as slow:
        rows += _cells(slow, f"mock provider, answers in {SLOW_MS} ms", duration, [1], rounds)
    return rows, static_name


def _cells(
    upstream: procs.Proc, upstream_name: str, duration: float, concurrencies: list[int], rounds: int
) -> list[Row]:
    body = orjson.dumps({"model": MODEL, "messages": PROMPT})  # not deterministic: never cached
    path = "/v1/chat/completions"
    rows: list[Row] = []
    with start_redis() as redis_proc, tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        redis_url = f"redis://127.0.0.1:{redis_proc.port}/0"
        client = redis.Redis.from_url(redis_url)
        cache = {"backend": "redis", "redis_url": redis_url}
        sidecars = {}
        for name, fleet in ((OFF, None), (ON, LIMITS)):
            sub = Path(tmp) / ("on" if fleet else "off")
            sub.mkdir()
            config, port, admin = procs.sidecar_config(sub, {MODEL: upstream.url + "/v1"}, cache=cache)
            if fleet:
                data = orjson.loads(config.read_bytes())
                data["model_groups"][MODEL]["endpoints"][0]["fleet"] = fleet
                config.write_bytes(orjson.dumps(data))
            sidecars[name] = procs.start_sidecar(config, port, admin)
        with procs.start_passthrough(upstream.url) as bare, sidecars[OFF] as off, sidecars[ON] as on:
            targets = {PASS_THROUGH: bare, OFF: off, ON: on}
            for proc in targets.values():
                load.run(proc.url + path, body, max(concurrencies), 1.0)  # warm-up: connections, scripts loaded
            for concurrency in concurrencies:
                best: dict[str, Row] = {}
                redis_counts = [0, 0, 0]  # scripts, commands, calls (fleet on)
                for _ in range(rounds):
                    for target, proc in targets.items():
                        before = _commands(client)
                        result, cpu_ms = _measure(proc, proc.url + path, body, concurrency, duration)
                        if target == ON:
                            after = _commands(client)
                            redis_counts[0] += after[0] - before[0]
                            redis_counts[1] += after[1] - before[1]
                            redis_counts[2] += result.calls
                        row = Row(upstream_name, target, concurrency, result, cpu_ms)
                        best[target] = load.best_round(best.get(target), row)
                scripts, commands, calls = redis_counts
                best[ON] = dataclasses.replace(
                    best[ON], scripts_per_call=scripts / calls, commands_per_call=commands / calls
                )
                for row in best.values():
                    rows.append(row)
                    extra = (
                        f" Redis: {row.scripts_per_call:.2f} scripts, {row.commands_per_call:.2f} commands per call"
                        if row.scripts_per_call is not None
                        else ""
                    )
                    print(
                        f"{upstream_name[:20]:20} {row.target:28} c={concurrency:<3} {row.result.rate:9,.0f}/s p50 {row.result.p50_ms:.3f} ms "
                        f"p99 {row.result.p99_ms:.3f} ms CPU {row.cpu_ms:.3f} ms/call errors {row.result.errors}{extra}",
                        flush=True,
                    )
    return rows


def report(rows: list[Row], upstream: str, duration: float, rounds: int) -> str:
    def get(upstream: str, target: str, concurrency: int) -> Row:
        return next(r for r in rows if (r.upstream, r.target, r.concurrency) == (upstream, target, concurrency))

    lines = [
        f"# Fleet limits benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- load generator: {load.GENERATOR}, closed loop, {duration:g} s per cell, {rounds} rounds alternating "
        "the targets: calls/s and latency from each target's best round, CPU per call the lowest",
        f"- placement: {procs.layout()}",
        f"- load average at the start: {os.getloadavg()[0]:.2f} (2 cores shared with other work)",
        f"- upstreams: {upstream} (answers at once: the sidecar's own cost shows whole), then at c=1 the mock "
        f"provider answering in {SLOW_MS} ms; both sidecars use the same Redis cache (the call is not cacheable: "
        f"every call goes upstream); fleet on = `fleet: {LIMITS}` on the endpoint",
        "",
        "| upstream | target | c | calls/s | × fleet off | p50 ms | p99 ms | CPU ms/call | errors "
        "| Redis round trips/call | commands Redis ran/call |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    checks = []
    for row in rows:
        off = get(row.upstream, OFF, row.concurrency)
        ratio = row.result.rate / off.result.rate if off.result.rate else float("nan")
        scripts = "" if row.scripts_per_call is None else f"{row.scripts_per_call:.2f}"
        commands = "" if row.commands_per_call is None else f"{row.commands_per_call:.2f}"
        lines.append(
            f"| {row.upstream} | {row.target} | {row.concurrency} | {row.result.rate:,.0f} | {ratio:.2f} | {row.result.p50_ms:.3f} | "
            f"{row.result.p99_ms:.3f} | {row.cpu_ms:.3f} | {row.result.errors} | {scripts} | {commands} |"
        )
        if row.target == ON:
            name = f"calls/s with fleet limits ≥ 85 % of without, c={row.concurrency}, {row.upstream}"
            checks.append((name, ratio, ratio >= 0.85))
    lines += ["", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {name} | {value:.2f}× | {'met' if ok else '**missed**'} |" for name, value, ok in checks]
    lines += [
        "",
        "A call waits for one script (`ACQUIRE`); its lease and token settlement go back with the budget's next "
        "`ACQUIRE`, or in a `RELEASE` of their own when none comes within 2 ms, so round trips/call is between "
        "1 and 2 and nears 1 as load rises. Every round trip is one `EVALSHA`; the commands column counts what "
        "Redis ran inside the scripts.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return load.grid_main("fleet", "the fleet-limits benchmark", run, report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
