"""The hot path against the Python ceiling: the sidecar's three paths next to a bare hop and aiohttp's floor.

    python -m bench.hotpath [--duration 2] [--rounds 3] [--concurrency 1,16] [--instructions]

Every target sits behind nginx serving a canned chat.completion (``json``) and a canned
stream of 23 frames (``sse``, ``bench/nginx.conf``), so the upstream never limits:

- ``pass-through``: the bare aiohttp proxy (``bench/passthrough.py``), the reference;
- ``aiohttp static answer``: aiohttp reading the body and answering fixed bytes
  (``bench/floor.py``), the least any aiohttp server can do for a call;
- ``llm-sidecar serve`` with default telemetry (metrics, access log): its miss path
  (cache off), its memory hit, and its Redis hit with the local tier off (every hit a
  Redis round trip to a real ``redis-server``).

Each cell runs ``--rounds`` times with the targets alternating and keeps its best round
(other work only ever slows a cell down); CPU per call comes from /proc. With
``--instructions``, each target's instructions per call are counted under callgrind too
(``bench/instructions.py``): the figure that does not move with the machine's load.
Results go to stdout and ``bench/results/hotpath.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import load, procs
from bench.core import PROMPT, _static_answer

SCENARIOS = ("json", "sse")
PASS_THROUGH = "pass-through"
FLOOR = "aiohttp static answer"
MISS = "sidecar miss (cache off)"
MEMORY = "sidecar memory hit"
REDIS = "sidecar Redis hit (local tier off)"
TARGETS = (PASS_THROUGH, FLOOR, MISS, MEMORY, REDIS)
_CACHES: dict[str, dict[str, Any]] = {
    MISS: {"backend": "none"},
    MEMORY: {"backend": "memory"},
    REDIS: {"backend": "redis", "local_ttl": 0},
}
#: issue 19's targets: calls/s ratios to the pass-through at concurrency 16
MIN_MISS_RATIO = 0.80
MIN_MEMORY_RATIO = 2.5
MIN_REDIS_RATIO = 1.5
MAX_MISS_CPU_RATIO = 1.25


def static_stream() -> bytes:
    """The event stream nginx serves: the mock provider's 20-chunk answer to the benchmark prompt."""
    from proxy.mock_provider import Behaviour, decide, openai_chat_chunks

    answer = decide({"model": "bench-sse", "messages": PROMPT, "stream": True}, Behaviour(chunks=20))
    return b"".join(openai_chat_chunks(answer, include_usage=False))


def body(scenario: str) -> bytes:
    # temperature 0: cacheable under the default policy (the miss path has its cache off).
    extra = {"stream": True} if scenario == "sse" else {}
    return orjson.dumps({"model": f"bench-{scenario}", "messages": PROMPT, "temperature": 0, **extra})


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


#: how a target's process is made: (name, argv, port, ready URL, cwd) → the process
Starter = Callable[[str, list[str], int, "str | None", "Path | None"], procs.Proc]


def plain(name: str, argv: list[str], port: int, ready: str | None, cwd: Path | None) -> procs.Proc:
    return procs.Proc(name, argv, port, procs.PROXY_CORES, ready=ready, cwd=cwd)


@contextmanager
def targets(
    directory: Path, nginx: str, redis_url: str, tree: Path, names: list[str], start: Starter = plain
) -> Iterator[dict[str, tuple[procs.Proc, dict[str, str]]]]:
    """name → (process, scenario → URL to load), every target up at once (only the loaded one is busy).

    The sidecars run from ``tree`` (its own ``.venv``: ``python -m proxy`` imports the
    checkout it runs in), so another checkout can be measured against this one.
    """
    chat = "/v1/chat/completions"
    (directory / "answer.json").write_bytes(_static_answer())
    (directory / "answer.sse").write_bytes(static_stream())
    groups = {"bench-json": nginx + "/v1", "bench-sse": nginx + "/sse/v1"}
    with ExitStack() as stack:
        out: dict[str, tuple[procs.Proc, dict[str, str]]] = {}
        for name in names:
            port = procs.free_port()
            if name in (PASS_THROUGH, FLOOR):
                if name == PASS_THROUGH:
                    args = ["bench.passthrough", "--upstream", nginx]
                else:
                    args = ["bench.floor", "--json", str(directory / "answer.json")]
                    args += ["--sse", str(directory / "answer.sse")]
                argv = [procs.PYTHON, "-m", *args, "--port", str(port)]
                proc = stack.enter_context(start(name, argv, port, None, None))
                out[name] = (proc, {"json": proc.url + chat, "sse": proc.url + "/sse" + chat})
                continue
            sub = directory / slug(name)
            sub.mkdir()
            cache = {**_CACHES[name], **({"redis_url": redis_url} if name == REDIS else {})}
            config, port, admin = procs.sidecar_config(sub, groups, cache=cache)
            argv = [str(tree / ".venv" / "bin" / "python"), "-m", "proxy", "serve", "--config", str(config)]
            proc = stack.enter_context(start(name, argv, port, f"http://127.0.0.1:{admin}/readyz", tree))
            out[name] = (proc, {"json": proc.url + chat, "sse": proc.url + chat})
        yield out


@contextmanager
def upstreams() -> Iterator[tuple[procs.Proc, str]]:
    """nginx (canned JSON and stream) and a redis-server: (nginx, Redis URL)."""
    from bench.cache import start_redis

    nginx = procs.start_nginx(_static_answer(), sse=static_stream())
    if nginx is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    with nginx, start_redis() as redis:
        yield nginx, f"redis://127.0.0.1:{redis.port}/0"


@dataclass(frozen=True)
class Cell:
    scenario: str
    target: str
    concurrency: int
    result: load.LoadResult
    cpu_ms: float
    rss_mb: float | None


def run(duration: float, rounds: int, concurrencies: list[int], names: list[str], tree: Path) -> list[Cell]:
    cells: list[Cell] = []
    with upstreams() as (nginx, redis_url), tempfile.TemporaryDirectory(prefix="bench-hotpath-") as tmp:
        with targets(Path(tmp), nginx.url, redis_url, tree, names) as running:
            for scenario in SCENARIOS:
                payload = body(scenario)
                direct = nginx.url + ("/sse" if scenario == "sse" else "") + "/v1/chat/completions"
                for _, urls in running.values():
                    load.run(urls[scenario], payload, max(concurrencies), 1.0)  # warm-up; fills the caches
                for concurrency in concurrencies:
                    best: dict[str, Cell] = {}
                    for _ in range(rounds):
                        result = load.run(direct, payload, concurrency, duration)
                        if "direct" not in best or result.rate > best["direct"].result.rate:
                            best["direct"] = Cell(scenario, "direct (nginx)", concurrency, result, 0.0, None)
                        for name, (proc, urls) in running.items():
                            before = proc.cpu_seconds()
                            result = load.run(urls[scenario], payload, concurrency, duration)
                            cpu = (proc.cpu_seconds() - before) / result.calls * 1000 if result.calls else 0.0
                            cell = Cell(scenario, name, concurrency, result, cpu, proc.peak_rss_mb())
                            best[name] = load.best_round(best.get(name), cell)
                    for cell in best.values():
                        cells.append(cell)
                        print(_line(cell, cells), flush=True)
    return cells


def _get(cells: list[Cell], scenario: str, target: str, concurrency: int) -> Cell | None:
    return next((c for c in cells if (c.scenario, c.target, c.concurrency) == (scenario, target, concurrency)), None)


def _line(cell: Cell, cells: list[Cell]) -> str:
    bare = _get(cells, cell.scenario, PASS_THROUGH, cell.concurrency)
    direct = _get(cells, cell.scenario, "direct (nginx)", cell.concurrency)
    r = cell.result
    ratio = f"{r.rate / bare.result.rate:.2f}" if bare and bare.result.rate else "–"
    cpu_ratio = f"{cell.cpu_ms / bare.cpu_ms:.2f}" if bare and bare.cpu_ms and cell.cpu_ms else "–"
    added = f"{r.p50_ms - direct.result.p50_ms:.2f}" if direct and cell.rss_mb is not None else "–"
    values = [
        cell.scenario,
        cell.target,
        str(cell.concurrency),
        f"{r.rate:,.0f}",
        ratio,
        f"{r.p50_ms:.2f}",
        added,
        f"{r.p99_ms:.2f}",
        f"{cell.cpu_ms:.3f}" if cell.rss_mb is not None else "–",
        cpu_ratio,
        f"{cell.rss_mb:.1f}" if cell.rss_mb is not None else "–",
        str(r.errors),
    ]
    return "| " + " | ".join(values) + " |"


HEADER = (
    "| scenario | target | c | calls/s | × pass-through | p50 ms | added p50 ms | p99 ms | CPU ms/call "
    "| CPU × pass-through | peak RSS MB | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def verdicts(cells: list[Cell]) -> list[str]:
    lines = ["| target (issue 19) | measured | |", "|---|---|---|"]
    for scenario in SCENARIOS:
        bare = _get(cells, scenario, PASS_THROUGH, 16)
        if bare is None or not bare.result.rate:
            continue
        for target, bound in ((MISS, MIN_MISS_RATIO), (MEMORY, MIN_MEMORY_RATIO), (REDIS, MIN_REDIS_RATIO)):
            cell = _get(cells, scenario, target, 16)
            if cell is None:
                continue
            ratio = cell.result.rate / bare.result.rate
            measured = f"{ratio:.2f}× (CPU per call {cell.cpu_ms / bare.cpu_ms:.2f}× the pass-through's)"
            lines.append(
                f"| {scenario}: {target} ≥ {bound:g}× the pass-through at c=16 | {measured} | "
                f"{'met' if ratio >= bound else '**missed**'} |"
            )
        miss = _get(cells, scenario, MISS, 16)
        if miss is not None and bare.cpu_ms:
            ratio = miss.cpu_ms / bare.cpu_ms
            lines.append(
                f"| {scenario}: miss CPU per call ≤ {MAX_MISS_CPU_RATIO:g}× the pass-through's at c=16 | "
                f"{miss.cpu_ms:.3f} / {bare.cpu_ms:.3f} ms = {ratio:.2f}× | "
                f"{'met' if ratio <= MAX_MISS_CPU_RATIO else '**missed**'} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.splitlines()[0])
    load.grid_options(parser, duration=2.0, concurrency="1,16", rounds=3)
    parser.add_argument("--tree", type=Path, default=procs.ROOT, help="checkout whose sidecar is measured")
    parser.add_argument("--instructions", action="store_true", help="also count instructions per call (valgrind)")
    args = parser.parse_args(argv)
    concurrencies = load.concurrencies(parser, args)
    tree = args.tree.resolve()
    print(f"hot path benchmark: {load.GENERATOR}; {procs.layout()}; sidecar from {tree}", flush=True)
    print(HEADER, flush=True)
    started = time.monotonic()
    cells = run(args.duration, args.rounds, concurrencies, list(TARGETS), tree)
    parts = [
        f"# Hot path benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- load generator: {load.GENERATOR}, closed loop; {args.duration:g} s per cell, {args.rounds} rounds with "
        "the targets alternating, calls/s from each cell's best round, CPU per call the lowest",
        f"- placement: {procs.layout()}; sidecar from `{tree}`, default telemetry; whole run "
        f"{time.monotonic() - started:.0f} s",
        "- upstream: nginx, a canned chat.completion (json) and a canned 23-frame stream (sse); "
        "added p50 = the target's p50 minus nginx's own at the same concurrency",
        "",
        HEADER,
        *(_line(cell, cells) for cell in cells),
        "",
        *verdicts(cells),
        "",
    ]
    if args.instructions:
        from bench import instructions

        counts = instructions.run(400, 16, tree, list(TARGETS), 100)
        parts += [
            "Instructions per call (callgrind, 400 calls at c=16 after 100 uncounted):",
            "",
            instructions.table(counts),
            "",
        ]
    text = "\n".join(parts)
    load.publish("hotpath", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
