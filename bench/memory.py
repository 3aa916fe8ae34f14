"""Where the sidecar's RSS goes: the libraries it loads, its own modules, start-up.

    python -m bench.memory [--runs 3] [--tree PATH]

- ``imports``: a fresh interpreter imports, step by step, what ``llm-sidecar serve``
  loads, and reads its RSS after each step: aiohttp and uvloop (all the bare
  pass-through loads, with the two TLS contexts aiohttp builds at import), then each
  library the sidecar adds over them (pydantic with one model built and used, since
  ``import pydantic`` alone defers most of it), then the sidecar's own modules (their
  config models built), then the config read. Each step's cost is the median over
  ``--runs`` interpreters; a library's cost includes its shared objects' pages.
- ``ready``: ``llm-sidecar serve`` (the bench config: one model group, cache off) and the
  bare pass-through when ready, RSS split into anonymous memory (the heap, Python's
  objects) and file-backed pages (the executable and shared libraries' code).

What a slow stream adds is ``bench.streams``' (1,000 open streams). Results go to stdout
and ``bench/results/memory.md``; about 15 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench import load, procs

#: (step, code run in the interpreter after the steps before it)
STEPS = (
    ("python", ""),
    ("aiohttp, uvloop", "import aiohttp, aiohttp.web, uvloop"),
    (
        "pydantic",
        "from pydantic import BaseModel, ConfigDict, Field\n"
        "class M(BaseModel):\n"
        "    model_config = ConfigDict(extra='forbid', frozen=True)\n"
        "    x: int = Field(1, ge=0)\n"
        "M(x=2)",
    ),
    ("PyYAML", "import yaml"),
    ("prometheus_client", "import prometheus_client"),
    ("msgspec", "import msgspec"),
    ("orjson", "import orjson"),
    ("the sidecar's modules", "import proxy.cli, proxy.server"),
    ("its config read", "from proxy.config import load_config; load_config(CONFIG)"),
)

_PROBE = """
import json, sys
CONFIG = sys.argv[1]
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
out = []
for code in json.loads(sys.stdin.read()):
    exec(code)
    out.append(rss())
print(json.dumps(out))
"""


def imports(python: str, cwd: Path, config: Path, runs: int) -> list[tuple[str, float, float]]:
    """(step, median RSS after it, median MB it added), each run in a fresh interpreter."""
    samples = []
    for _ in range(runs):
        done = subprocess.run(
            [python, "-c", _PROBE, str(config)],
            input=json.dumps([code for _, code in STEPS]),
            capture_output=True,
            text=True,
            cwd=cwd,
            check=True,
            timeout=120,
        )
        samples.append(json.loads(done.stdout))
    after = [statistics.median(run[i] for run in samples) for i in range(len(STEPS))]
    return [(name, after[i], after[i] - after[i - 1] if i else after[0]) for i, (name, _) in enumerate(STEPS)]


def split(pid: int) -> tuple[float, float, float]:
    """RSS, its anonymous part and its file-backed part, MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return tuple(int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "RssAnon", "RssFile"))  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh interpreters per import step (default 3)")
    parser.add_argument("--tree", type=Path, help="checkout whose sidecar is measured (its .venv)")
    args = parser.parse_args(argv)
    tree = args.tree.resolve() if args.tree else procs.ROOT
    python = str(tree / ".venv" / "bin" / "python") if args.tree else procs.PYTHON
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, procs.start_mock() as mock:
        config, port, admin = procs.sidecar_config(Path(tmp), {"bench-memory": mock.url + "/v1"})
        steps = imports(python, tree, config, args.runs)
        with procs.start_sidecar(config, port, admin, tree=args.tree and tree) as sidecar:
            time.sleep(1)  # past start-up's last allocations
            ready = {"sidecar (cache off)": split(sidecar.pid)}
        with procs.start_passthrough(mock.url) as bare:
            time.sleep(1)
            ready["pass-through"] = split(bare.pid)
    text = "\n".join(
        [
            f"# Memory benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {tree})",
            "",
            f"Imports: RSS of a fresh interpreter after each step, median of {args.runs}",
            "",
            "| step | RSS MB | added MB |",
            "|---|---:|---:|",
            *(f"| {name} | {after:.1f} | {added:+.1f} |" for name, after, added in steps),
            "",
            "When ready:",
            "",
            "| process | RSS MB | anonymous MB | file-backed MB |",
            "|---|---:|---:|---:|",
            *(f"| {name} | {rss:.1f} | {anon:.1f} | {file:.1f} |" for name, (rss, anon, file) in ready.items()),
        ]
    )
    load.publish("memory", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
