"""Instructions per call: what the process under test executes for one call, counted by callgrind.

    python -m bench.instructions [--calls 400] [--concurrency 16] [--tree PATH]

Wall-clock rates swing with whatever else runs on the machine; the number of
instructions a process executes for a call does not. Each target runs under
``valgrind --tool=callgrind`` with counting off; after a warm-up (which also fills
the caches), counting is switched on for ``--calls`` calls at ``--concurrency``
(``callgrind_control``) and the total divided by the calls. So a change in the hot
path shows as a change in instructions per call on any machine, busy or not.

Targets, each behind nginx serving a canned chat.completion and a canned stream of
23 frames (``bench/nginx.conf``), so the upstream never limits: the bare pass-through
(``bench/passthrough.py``), aiohttp's static-answer floor (``bench/floor.py``), and
``llm-sidecar serve`` with default telemetry on its miss path (cache off), its memory
hit and its Redis hit (``local_ttl: 0``: every hit a Redis round trip). ``--tree``
runs the sidecar from another checkout (its own ``.venv``): before/after on one run.

Counted: user-space instructions of that one process (Python, aiohttp, uvloop, libc);
not the kernel's work in its system calls. Results go to stdout and
``bench/results/instructions.md``. Needs valgrind, nginx and redis-server.

``--check`` compares each sidecar path's count, as a ratio to the pass-through's in the
same run (which cancels most of what the Python build and library versions change),
with the reference kept in ``bench/instructions.json``, and fails when one is more than
``TOLERANCE`` above it: a regression in the hot path shows on any machine.
``--write-reference`` records this run as the new reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import hotpath, load, procs
from bench.hotpath import PASS_THROUGH, SCENARIOS, TARGETS, body

REFERENCE = Path(__file__).with_name("instructions.json")
#: run-to-run spread of a ratio is ~2-6 % (calls per event-loop turn vary); beyond this is a change
TOLERANCE = 0.10


class Counted(procs.Proc):
    """A server run under callgrind with counting off until ``count()``."""

    def __init__(
        self, name: str, argv: list[str], port: int, directory: Path, ready: str | None = None, cwd: Path | None = None
    ) -> None:
        self.out = directory / f"callgrind.{hotpath.slug(name)}"
        valgrind = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.out}",
            "-q",
        ]
        super().__init__(name, valgrind + argv, port, procs.PROXY_CORES, ready=ready, cwd=cwd, timeout=180)

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.pid)], check=True, capture_output=True, timeout=120)

    def start_counting(self) -> None:
        self._control("-i", "on")
        self._control("-z")

    def counted(self) -> int:
        """Instructions since ``start_counting``: dumps, reads the dump's total."""
        before = set(self.out.parent.glob(self.out.name + ".*"))
        self._control("-d")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for dump in set(self.out.parent.glob(self.out.name + ".*")) - before:
                for line in dump.read_text(errors="replace").splitlines():
                    if line.startswith(("totals:", "summary:")):
                        return int(line.split()[1])
            time.sleep(0.2)
        raise RuntimeError(f"no callgrind dump from {self.name}")


async def _calls(url: str, payload: bytes, calls: int, concurrency: int) -> int:
    """``calls`` POSTs over ``concurrency`` connections; returns how many failed."""
    import aiohttp

    failed = 0
    left = calls
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-client"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker() -> None:
            nonlocal failed, left
            while left > 0:
                left -= 1
                async with session.post(url, data=payload, headers=headers) as response:
                    answer = await response.read()
                    if response.status != 200 or not (answer.endswith(b"[DONE]\n\n") or answer.endswith(b"}")):
                        failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


@dataclass(frozen=True)
class Count:
    scenario: str
    target: str
    per_call: float
    failed: int


def measure(proc: Counted, url: str, scenario: str, calls: int, concurrency: int, warmup: int) -> Count:
    payload = body(scenario)
    failed = asyncio.run(_calls(url, payload, warmup, concurrency))
    proc.start_counting()
    failed += asyncio.run(_calls(url, payload, calls, concurrency))
    total = proc.counted()
    return Count(scenario, proc.name, total / calls, failed)


def run(
    calls: int, concurrency: int, tree: Path, names: list[str], warmup: int, keep: Path | None = None
) -> list[Count]:
    counts: list[Count] = []
    with hotpath.upstreams() as (nginx, redis_url), tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        directory = keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)

        def start(name: str, argv: list[str], port: int, ready: str | None, cwd: Path | None) -> procs.Proc:
            return Counted(name, argv, port, directory, ready=ready, cwd=cwd)

        with hotpath.targets(directory, nginx.url, redis_url, tree, names, start) as running:
            for scenario in SCENARIOS:
                for proc, urls in running.values():
                    assert isinstance(proc, Counted)
                    count = measure(proc, urls[scenario], scenario, calls, concurrency, warmup)
                    counts.append(count)
                    print(
                        f"{scenario:4} {proc.name:36} {count.per_call:12,.0f} instructions/call  failed {count.failed}"
                    )
    return counts


def table(counts: list[Count]) -> str:
    def get(scenario: str, target: str) -> Count | None:
        return next((c for c in counts if (c.scenario, c.target) == (scenario, target)), None)

    lines = [
        "| target | JSON instructions/call | × pass-through | SSE instructions/call | × pass-through |",
        "|---|---:|---:|---:|---:|",
    ]
    for target in TARGETS:
        cells = []
        for scenario in SCENARIOS:
            count, bare = get(scenario, target), get(scenario, PASS_THROUGH)
            if count is None:
                cells += ["–", "–"]
                continue
            ratio = f"{count.per_call / bare.per_call:.2f}" if bare else "–"
            cells += [f"{count.per_call:,.0f}", ratio]
        if any(cell != "–" for cell in cells):
            lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="calls counted per target and scenario (default 400)")
    parser.add_argument("--warmup", type=int, default=100, help="calls before counting starts (default 100)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections (default 16)")
    parser.add_argument("--tree", type=Path, default=procs.ROOT, help="checkout whose sidecar is measured")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, of: " + ", ".join(TARGETS))
    parser.add_argument(
        "--keep", type=Path, help="an empty directory to keep the callgrind dumps in (callgrind_annotate reads them)"
    )
    parser.add_argument("--check", action="store_true", help=f"fail on a ratio above {REFERENCE.name}'s")
    parser.add_argument("--write-reference", action="store_true", help=f"record this run in {REFERENCE.name}")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if unknown := [n for n in names if n not in TARGETS]:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench.instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    tree = args.tree.resolve()
    print(f"instructions per call: {args.calls} calls at concurrency {args.concurrency}; sidecar from {tree}")
    counts = run(args.calls, args.concurrency, tree, names, args.warmup, args.keep)
    text = "\n".join(
        [
            f"# Instructions per call ({time.strftime('%Y-%m-%d %H:%M')})",
            "",
            f"- callgrind, {args.calls} calls at concurrency {args.concurrency} after {args.warmup} uncounted; "
            f"sidecar from `{tree}`; upstream: nginx (canned JSON, canned 23-frame stream)",
            "",
            table(counts),
            "",
        ]
    )
    load.publish("instructions", text)
    if any(c.failed for c in counts):
        return 1
    measured = ratios(counts)
    if args.write_reference:
        REFERENCE.write_text(json.dumps(measured, indent=2, sort_keys=True) + "\n")
    if args.check:
        return check(measured, json.loads(REFERENCE.read_text()))
    return 0


def ratios(counts: list[Count]) -> dict[str, float]:
    """``scenario/target`` → instructions per call over the pass-through's, for every sidecar path."""
    bare = {c.scenario: c.per_call for c in counts if c.target == PASS_THROUGH}
    return {
        f"{c.scenario}/{c.target}": round(c.per_call / bare[c.scenario], 3)
        for c in counts
        if c.target != PASS_THROUGH and c.scenario in bare
    }


def check(measured: dict[str, float], reference: dict[str, float]) -> int:
    # Redis hits are left out: concurrent lookups share pipelined round trips, and how many
    # share one depends on timing (the same tree has counted 493,000 and 594,000 a hit).
    worse = [
        f"{name}: {value:.3f}× the pass-through, reference {reference[name]:.3f}×"
        for name, value in measured.items()
        if name in reference and "sidecar" in name and "Redis" not in name and value > reference[name] * (1 + TOLERANCE)
    ]
    for line in worse:
        print(f"regression: {line}", file=sys.stderr)
    if not worse:
        print(f"no path above its reference by more than {TOLERANCE:.0%} ({REFERENCE.name})")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
