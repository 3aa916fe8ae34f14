"""Instructions per slow stream: what a proxy executes to relay a stream whose chunks come apart.

    python -m bench.stream_instructions [--chunks 20,60] [--calls 200] [--concurrency 4] [--baseline TREE]

``bench.instructions`` counts streams that nginx sends whole, so its proxies find the next
frames buffered and never wait; a slow upstream makes a proxy wait for every chunk, and
that wait has its own cost. Here the upstream is the mock provider sending each chunk 25 ms
after the last (``--chunks`` words), few enough streams at once (``--concurrency``) that
every chunk arrives alone even under callgrind. Each proxy runs under callgrind as in
``bench.instructions`` (counting switched on after an uncounted warm-up); the count is
divided by the streams. With two ``--chunks`` values the difference gives the cost of one
chunk, apart from the call's own. Targets: the bare pass-through, the sidecar (cache off,
default telemetry), and with ``--baseline`` the sidecar from another checkout (its own
``.venv``), each in turn, in one run. Results go to stdout and
``bench/results/stream_instructions.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import hotpath, load, procs
from bench.instructions import Counted, _calls
from bench.streams import CHAT, body

MODEL = "bench-slow"
CHUNK_DELAY_MS = 25
WARMUP = 40


def count(proc: Counted, payload: bytes, calls: int, concurrency: int) -> float:
    failed = asyncio.run(_calls(proc.url + CHAT, payload, WARMUP, concurrency))
    proc.start_counting()
    failed += asyncio.run(_calls(proc.url + CHAT, payload, calls, concurrency))
    if failed:
        raise RuntimeError(f"{proc.name}: {failed} streams failed")
    return proc.counted() / calls


def run(chunks: list[int], calls: int, concurrency: int, baseline: Path | None) -> dict[str, dict[int, float]]:
    """target → chunks per stream → instructions per stream."""
    counts: dict[str, dict[int, float]] = {}
    payload = body(MODEL)
    trees = {"sidecar (cache off)": procs.ROOT}
    if baseline is not None:
        trees["baseline sidecar (cache off)"] = baseline
    with tempfile.TemporaryDirectory(prefix="bench-stream-instructions-") as tmp:
        for n in chunks:
            spec = f"{MODEL}:chunk_delay_ms={CHUNK_DELAY_MS},chunks={n}"
            with procs.start_mock(procs.LOAD_CORES, spec) as mock:
                directory = Path(tmp) / f"{n}"
                directory.mkdir()
                port = procs.free_port()
                argv = [procs.PYTHON, "-m", "bench.passthrough", "--port", str(port), "--upstream", mock.url]
                bare = Counted("pass-through", argv, port, directory)
                with bare:
                    counts.setdefault("pass-through", {})[n] = count(bare, payload, calls, concurrency)
                for name, tree in trees.items():
                    (directory / hotpath.slug(name)).mkdir()
                    config, port, admin = procs.sidecar_config(
                        directory / hotpath.slug(name), {MODEL: mock.url + "/v1"}
                    )
                    python = str(tree / ".venv" / "bin" / "python")
                    argv = [python, "-m", "proxy", "serve", "--config", str(config)]
                    sidecar = Counted(name, argv, port, directory, ready=f"http://127.0.0.1:{admin}/readyz", cwd=tree)
                    with sidecar:
                        counts.setdefault(name, {})[n] = count(sidecar, payload, calls, concurrency)
                for name, by in counts.items():
                    print(f"{n:3} chunks  {name:30} {by[n]:12,.0f} instructions/stream", flush=True)
    return counts


def table(counts: dict[str, dict[int, float]], chunks: list[int]) -> str:
    bare = counts["pass-through"]
    head = "| target | " + " | ".join(f"{n} chunks: instructions/stream | × pass-through" for n in chunks)
    rule = "|---|" + "---:|---:|" * len(chunks)
    if len(chunks) > 1:
        head += " | per chunk | × pass-through"
        rule += "---:|---:|"
    lines = [head + " |", rule]
    low, high = chunks[0], chunks[-1]
    for name, by in counts.items():
        cells = [f"{by[n]:,.0f} | {by[n] / bare[n]:.2f}" for n in chunks]
        if len(chunks) > 1:
            per, bare_per = (by[high] - by[low]) / (high - low), (bare[high] - bare[low]) / (high - low)
            cells.append(f"{per:,.0f} | {per / bare_per:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="20,60", help="words per stream, comma-separated (default 20,60)")
    parser.add_argument("--calls", type=int, default=200, help="streams counted per target (default 200)")
    parser.add_argument("--concurrency", type=int, default=4, help="streams at once (default 4)")
    parser.add_argument("--baseline", type=Path, help="another checkout whose sidecar is counted too")
    args = parser.parse_args(argv)
    chunks = sorted({int(n) for n in args.chunks.split(",") if n.strip()})
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench.stream_instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    baseline = args.baseline.resolve() if args.baseline else None
    counts = run(chunks, args.calls, args.concurrency, baseline)
    text = "\n".join(
        [
            f"# Instructions per slow stream ({time.strftime('%Y-%m-%d %H:%M')})",
            "",
            f"- callgrind, {args.calls} streams at concurrency {args.concurrency} after {WARMUP} uncounted; "
            f"upstream: the mock provider, chunks {CHUNK_DELAY_MS} ms apart"
            + (f"; baseline sidecar from `{baseline}`" if baseline else ""),
            "",
            table(counts, chunks),
            "",
        ]
    )
    load.publish("stream_instructions", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
