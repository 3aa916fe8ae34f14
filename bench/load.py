"""The load generator: closed-loop POSTs at a fixed concurrency for a fixed time.

``run()`` uses ``wrk`` with a Lua script when the binary is there (``apt-get install
wrk``), else a fast async Python client in a separate process (``python -m bench.load``).
Either way it runs pinned to the load cores, every call goes to loopback, and it stops
by itself after ``duration`` seconds. ``GENERATOR`` names the one in use, for reports.

The generator must not be the bottleneck: the reports show the direct upstream's rate
next to the proxies' (nginx direct is several times any Python proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from bench.procs import LOAD_CORES, PYTHON, ROOT, pinned

WRK = shutil.which("wrk")
RowT = TypeVar("RowT")
GENERATOR = (
    "wrk (1 thread, Lua script for the POST body)" if WRK else "async Python client (aiohttp + uvloop, own process)"
)


def grid_options(
    parser: argparse.ArgumentParser, duration: float = 3.0, concurrency: str = "1,16,64", rounds: int = 2
) -> None:
    """``--duration``, ``--concurrency``, ``--rounds``: the cells a scenario measures."""
    parser.add_argument("--duration", type=float, default=duration, help=f"seconds per cell (default {duration:g})")
    parser.add_argument("--concurrency", default=concurrency, help=f"comma-separated (default {concurrency})")
    parser.add_argument("--rounds", type=int, default=rounds, help=f"rounds per cell, best kept (default {rounds})")


def concurrencies(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[int]:
    """``--concurrency`` as numbers; a usage error past the bounds every load here keeps."""
    found = [int(c) for c in args.concurrency.split(",")]
    if max(found) > 256 or args.duration > 30:
        parser.error("loads are bounded: concurrency ≤ 256, duration ≤ 30 s")
    return found


def grid_main(
    name: str,
    description: str,
    run: Callable[[float, list[int], int], tuple[Any, str]],
    report: Callable[[Any, str, float, int], str],
    argv: list[str] | None = None,
) -> int:
    """A grid scenario's command: its cells run (``run``), reported (``report``) and published as ``name``."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    grid_options(parser)
    args = parser.parse_args(argv)
    rows, upstream = run(args.duration, concurrencies(parser, args), args.rounds)
    publish(name, report(rows, upstream, args.duration, args.rounds))
    return 0


def best_round(kept: Any, row: RowT) -> RowT:
    """Of ``kept`` (a cell's best so far, or None) and a new round's ``row``: the faster result and the
    lower CPU per call, each kept on its own (rows are frozen dataclasses with ``result`` and ``cpu_ms``)."""
    if kept is None:
        return row
    result = row.result if row.result.rate > kept.result.rate else kept.result
    return dataclasses.replace(row, result=result, cpu_ms=min(row.cpu_ms, kept.cpu_ms))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (any order); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class LoadResult:
    calls: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


def run(
    url: str,
    body: bytes,
    concurrency: int,
    duration: float,
    headers: dict[str, str] | None = None,
    cores: list[int] = LOAD_CORES,
    python: bool = False,
    ramp: float = 0.0,
    waves: int = 0,
) -> LoadResult:
    """POST ``body`` to ``url`` from ``concurrency`` connections for ``duration`` seconds.

    ``python`` takes the Python client even when wrk is there; ``ramp`` (Python client only)
    starts the connections evenly over that many seconds first and leaves the calls begun
    during the ramp out of the counts. ``waves`` (Python client only) replaces the closed loop:
    ``concurrency`` calls at once, ``waves`` times over, after one uncounted wave that opens the
    connections (``duration`` is then unused)."""
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError("the benchmark only loads loopback servers")
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-client", **(headers or {})}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        if WRK and not python and not ramp and not waves:
            return _wrk(Path(tmp), url, body, concurrency, duration, headers, cores)
        return _python(Path(tmp), url, body, concurrency, duration, headers, cores, ramp, waves)


# ---------------------------------------------------------------- wrk

_LUA = """
wrk.method = "POST"
wrk.body = [==[@BODY@]==]
@HEADERS@
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %.1f %.1f\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def _wrk(
    tmp: Path, url: str, body: bytes, concurrency: int, duration: float, headers: dict[str, str], cores: list[int]
) -> LoadResult:
    if b"]==]" in body:
        raise ValueError("body cannot be embedded in the Lua script")
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script = tmp / "post.lua"
    script.write_text(_LUA.replace("@BODY@", body.decode()).replace("@HEADERS@", lines))
    argv = [WRK, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(pinned(argv, cores), capture_output=True, text=True, timeout=duration + 30)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            calls, micros, errors, p50, p99 = line.split()[1:]
            return LoadResult(int(calls), int(errors), int(micros) / 1e6, float(p50) / 1000, float(p99) / 1000)
    raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")


# ---------------------------------------------------------------- Python client


def _python(
    tmp: Path,
    url: str,
    body: bytes,
    concurrency: int,
    duration: float,
    headers: dict[str, str],
    cores: list[int],
    ramp: float = 0.0,
    waves: int = 0,
) -> LoadResult:
    (tmp / "body").write_bytes(body)
    argv = [
        PYTHON,
        "-m",
        "bench.load",
        "--url",
        url,
        "--body-file",
        str(tmp / "body"),
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
        "--headers",
        orjson.dumps(headers).decode(),
        "--ramp",
        str(ramp),
        "--waves",
        str(waves),
    ]
    timeout = ramp + duration + waves * 10 + 30
    out = subprocess.run(pinned(argv, cores), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr}")
    data = orjson.loads(out.stdout.strip().splitlines()[-1])
    return LoadResult(**data)


async def _client(
    url: str,
    body: bytes,
    concurrency: int,
    duration: float,
    headers: dict[str, str],
    ramp: float = 0.0,
    waves: int = 0,
) -> LoadResult:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def call(counted: bool = True) -> None:
            nonlocal errors
            began = clock()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status < 400
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if not counted:
                return
            if ok:
                latencies.append(clock() - began)
            else:
                errors += 1

        if waves:
            await asyncio.gather(*(call(counted=False) for _ in range(concurrency)))  # opens the connections
            start = clock()
            for _ in range(waves):
                await asyncio.gather(*(call() for _ in range(concurrency)))
            seconds = clock() - start
        else:
            start = clock() + ramp  # calls begun before this are the ramp's, not counted
            deadline = start + duration

            async def worker(index: int) -> None:
                await asyncio.sleep(ramp * index / concurrency)
                while clock() < deadline:
                    await call(counted=clock() >= start)

            await asyncio.gather(*(worker(index) for index in range(concurrency)))
            seconds = clock() - start
    return LoadResult(
        len(latencies), errors, seconds, percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="closed-loop POST load (the fallback when wrk is missing)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--headers", default="{}")
    parser.add_argument("--ramp", type=float, default=0.0)
    parser.add_argument("--waves", type=int, default=0)
    args = parser.parse_args()
    coro = _client(
        args.url,
        Path(args.body_file).read_bytes(),
        args.concurrency,
        args.duration,
        orjson.loads(args.headers),
        args.ramp,
        args.waves,
    )
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    print(orjson.dumps(result.__dict__).decode())


if __name__ == "__main__":
    main()


#: where each scenario keeps its last report (ignored by git)
RESULTS = Path(__file__).with_name("results")


def publish(name: str, text: str) -> None:
    """Print a scenario's report and keep it as ``bench/results/<name>.md``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    print()
    print(text)
    print(f"written to {path}")
