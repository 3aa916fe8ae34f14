"""Where the time goes: each hot-path target sampled by py-spy under load, its samples counted by area.

    python -m bench.profile [--duration 10] [--rate 400] [--targets NAME,...] [--scenarios json,sse] [--tree PATH]

The targets are bench/hotpath.py's (nginx serving a canned chat.completion and a canned
23-frame stream, so the upstream never limits): by default the bare pass-through and
``llm-sidecar serve`` on its miss path (cache off), its memory hit and its Redis hit (local
tier off). For each scenario and target, wrk loads the target at concurrency 16 while
``py-spy record --format raw --nonblocking`` samples it for ``--duration`` seconds; wrk runs
a second longer, so the load covers the whole sampling window.

Each sample counts for one area: that of its innermost frame whose file an ``AREAS`` rule
names. Frames of files no rule names (the standard library's helpers, yarl, multidict,
logging, prometheus_client, redis-py, the project's shared modules such as proxy/errors.py)
count for the frame that called them, so the cost of ``logging`` shows under telemetry and
that of a header copy under whoever copies. uvloop's own C work (the socket calls) has no
Python frame: it shows as the frame that runs the loop (``LOOP_ENTRY``), so under the event
loop. A sample that reaches that frame, or the end of its stack, only through frames no rule
names (a task or callback in such a file) is "other"; the report lists what those were.

Samples per call = samples / (wrk's calls per second × the sampled seconds); µs per call =
that / the rate. py-spy without ``--idle`` records only when the process runs, so the
sampled µs per call is near the CPU per call read from /proc (shown next to it), less the
samples py-spy could not read (``--nonblocking`` reads a running process: some reads fail,
some find no frame; the report counts them as lost). Results go to stdout and
``bench/results/profile.md``. Needs py-spy (``make bench-tools`` puts it in the .venv; it
attaches with ptrace: root, or ``kernel.yama.ptrace_scope`` 0), wrk, nginx and redis-server.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bench import hotpath, load, procs
from bench.hotpath import MEMORY, MISS, PASS_THROUGH, REDIS, SCENARIOS, TARGETS

CONCURRENCY = 16
DEFAULT_TARGETS = (PASS_THROUGH, MISS, MEMORY, REDIS)
OTHER = "other"

#: (area, what it covers, file paths it names): a frame's file matches when the pattern matches its
#: start (py-spy prints paths from their sys.path entry: ``aiohttp/web_protocol.py``,
#: ``proxy/pipeline.py``, ``asyncio/runners.py``). First match wins.
AREAS: tuple[tuple[str, str, str], ...] = (
    # aiohttp/web.py is run_app, the frame under which uvloop's C work (the socket calls) runs.
    ("event loop", "uvloop, asyncio, selectors, sockets", r"uvloop/|asyncio/|selectors\.py|socket\.py|aiohttp/web\.py"),
    (
        "aiohttp server",
        "parse the request, run the handler, write the answer",
        r"aiohttp/(web_|_?http_parser|_?http_writer|base_protocol)",
    ),
    (
        "aiohttp client",
        "request, connection, read the answer",
        r"aiohttp/(client|connector|streams|payload|resolver|tracing|cookiejar)",
    ),
    ("upstream attempt", "first-byte timeout, redactor, headers, the key swap", r"proxy/(upstream|auth)\.py"),
    ("telemetry", "metrics, the access line and its write", r"proxy/telemetry/"),
    ("router", "plan, slot, selection, circuit, attempt log", r"proxy/router/"),
    ("stream checks", "every frame of a stream parsed", r"proxy/dialects/(stream|sse)\.py"),
    (
        "pipeline",
        "read and parse the body, body checks, the call",
        r"proxy/(pipeline|server|call|request_body|listeners)\.py|proxy/dialects/(__init__|base|openai|anthropic)\.py",
    ),
    ("cache", "key, lookup, stored answer", r"proxy/cache/"),
    # The references' handlers are what the sidecar's relay does: copy the answer back.
    ("relay", "the sidecar's relay; the pass-through's and the floor's handler", r"proxy/relay\.py|bench/"),
)
#: the frames that run the loop: uvloop's C work (the socket calls) when innermost; a sample that reaches
#: them only through frames no area names (a task or callback of a file no rule names) is "other"
LOOP_ENTRY = r"asyncio/runners\.py|uvloop/__init__\.py|aiohttp/web\.py"

_RULES = [(name, re.compile(pattern)) for name, _, pattern in AREAS]
_ENTRY = re.compile(LOOP_ENTRY)
_FRAME = re.compile(r"\((.+):\d+\)$")


def frame_file(frame: str) -> str:
    """``Class.method (aiohttp/web_protocol.py:577)`` → ``aiohttp/web_protocol.py``."""
    found = _FRAME.search(frame)
    path = found.group(1) if found else frame
    # a path py-spy left whole: from its sys.path entry on, as the rules read it
    return re.sub(r"^/.*/(?:site-packages|python3\.\d+)/", "", path)


def area_of(path: str) -> str | None:
    """The area a file belongs to, None when no rule names it."""
    return next((name for name, rule in _RULES if rule.match(path)), None)


def classify(stack: list[str]) -> str:
    """The area of a stack (outermost frame first): its innermost frame that an area names."""
    for depth, frame in enumerate(reversed(stack)):
        path = frame_file(frame)
        if depth and _ENTRY.match(path):
            return OTHER
        if area := area_of(path):
            return area
    return OTHER


def other_file(stack: list[str]) -> str:
    """What an "other" sample shows a reader: its innermost project file, else its innermost file."""
    files = [frame_file(frame) for frame in reversed(stack)]
    return next((path for path in files if path.startswith("proxy/")), files[0])


@dataclass
class Profile:
    """One target under one scenario: samples by area, and what its "other" samples were."""

    scenario: str
    target: str
    calls: float = 0.0  # served while sampled
    cpu_us: float = 0.0  # per call, /proc, over the whole load
    lost: int = 0
    areas: Counter[str] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)

    @property
    def samples(self) -> int:
        return sum(self.areas.values())

    @property
    def column(self) -> str:
        return f"{self.target.split(' (')[0]}, {self.scenario.upper()}"


def count(profile: Profile, lines: Iterable[str]) -> None:
    """Adds py-spy's raw lines (``frame;frame;... samples``) to ``profile``."""
    for line in lines:
        stack, _, number = line.rstrip("\n").rpartition(" ")
        if not number.isdigit():
            continue
        frames = [frame for frame in stack.split(";") if frame]
        if not frames:  # a read of a running process that found no frame (--nonblocking)
            profile.lost += int(number)
            continue
        area = classify(frames)
        profile.areas[area] += int(number)
        if area == OTHER:
            profile.other[other_file(frames)] += int(number)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(procs.PYTHON).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed (make bench-tools puts it in the .venv)")
    return found


def sample(proc: procs.Proc, url: str, profile: Profile, rate: int, duration: float, directory: Path) -> None:
    raw = directory / f"{hotpath.slug(profile.column)}.txt"
    argv = [py_spy(), "record", "--format", "raw", "--rate", str(rate), "--duration", f"{duration:g}"]
    argv += ["--pid", str(proc.pid), "--nonblocking", "--output", str(raw)]
    before = proc.cpu_seconds()
    # py-spy off the target's core; wrk runs a second longer than the sampling, which starts once py-spy attaches.
    spy = subprocess.Popen(procs.pinned(argv, procs.LOAD_CORES), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    result = load.run(url, hotpath.body(profile.scenario), CONCURRENCY, duration + 1)
    profile.cpu_us = (proc.cpu_seconds() - before) / result.calls * 1e6 if result.calls else 0.0
    out = spy.communicate(timeout=duration + 60)[0].decode(errors="replace")
    if spy.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy failed on {proc.name}:\n{out}")
    if result.errors:
        raise RuntimeError(f"{proc.name}: {result.errors} failed calls under load")
    profile.calls = result.rate * duration
    if errors := re.search(r"Errors: (\d+)", out):
        profile.lost += int(errors.group(1))
    with raw.open() as lines:
        count(profile, lines)


def run(duration: float, rate: int, names: list[str], scenarios: list[str], tree: Path) -> list[Profile]:
    profiles: list[Profile] = []
    with hotpath.upstreams() as (nginx, redis_url), tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        with hotpath.targets(Path(tmp), nginx.url, redis_url, tree, names) as running:
            for scenario in scenarios:
                for _, urls in running.values():
                    load.run(urls[scenario], hotpath.body(scenario), CONCURRENCY, 1.0)  # warm-up; fills the caches
                for name, (proc, urls) in running.items():
                    profile = Profile(scenario, name)
                    sample(proc, urls[scenario], profile, rate, duration, Path(tmp))
                    profiles.append(profile)
                    print(
                        f"{profile.column:28} {profile.samples:6,} samples ({profile.lost:,} lost), "
                        f"{profile.calls:9,.0f} calls, {profile.samples / rate / max(profile.calls, 1) * 1e6:6.1f} sampled "
                        f"µs/call, CPU {profile.cpu_us:6.1f} µs/call",
                        flush=True,
                    )
    return profiles


def tables(profiles: list[Profile], rate: int) -> str:
    """Areas × targets: % of samples (with the totals under it), then µs and samples per call."""
    names = [name for name, _, _ in AREAS] + [OTHER]
    head = "| area | " + " | ".join(p.column for p in profiles) + " |"
    rule = "|---|" + "---:|" * len(profiles)

    def label(name: str) -> str:
        return next((f"{name}: {what}" for area, what, _ in AREAS if area == name), name)

    def row(title: str, cells: Iterable[str]) -> str:
        return f"| {title} | " + " | ".join(cells) + " |"

    def share(p: Profile, name: str) -> str:
        return f"{p.areas[name] / p.samples:.1%}".replace("%", " %") if p.areas[name] else "–"

    def per_call(p: Profile, name: str) -> str:
        n = p.areas[name] / p.calls if p.calls else 0.0
        return f"{n / rate * 1e6:.1f} µs ({n:.4f})" if p.areas[name] else "–"

    first = [head, rule, *(row(label(n), (share(p, n) for p in profiles)) for n in names)]
    first += [
        row("samples (lost: unreadable)", (f"{p.samples:,} ({p.lost:,})" for p in profiles)),
        row("calls served while sampled (wrk)", (f"{p.calls:,.0f}" for p in profiles)),
        row("samples per call", (f"{p.samples / p.calls:.4f}" if p.calls else "–" for p in profiles)),
        row("sampled µs per call", (f"{p.samples / p.calls / rate * 1e6:.1f}" if p.calls else "–" for p in profiles)),
        row("CPU µs per call (/proc)", (f"{p.cpu_us:.1f}" for p in profiles)),
    ]
    second = [head, rule, *(row(n, (per_call(p, n) for p in profiles)) for n in names)]
    others = [
        f"- {p.column}: " + ", ".join(f"`{path}` {n}" for path, n in p.other.most_common(5))
        for p in profiles
        if p.other
    ]
    parts = ["\n".join(first), "", "Sampled µs per call by area (samples per call):", "", "\n".join(second)]
    if others:
        parts += [
            "",
            '"other", by its innermost project file (else its innermost file), most frequent first:',
            "",
            *others,
        ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds sampled per cell (default 10)")
    parser.add_argument("--rate", type=int, default=400, help="py-spy samples per second (default 400)")
    parser.add_argument(
        "--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated, of: " + ", ".join(TARGETS)
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--tree", type=Path, default=procs.ROOT, help="checkout whose sidecar is measured")
    parser.add_argument("--output", type=Path, default=load.RESULTS / "profile.md", help="where the report is written")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := [n for n in names if n not in TARGETS] + [s for s in scenarios if s not in SCENARIOS]:
        parser.error(f"unknown target(s) or scenario(s): {', '.join(unknown)}")
    if not 0 < args.duration <= 30:
        parser.error("--duration is bounded: 0 < duration ≤ 30 s")
    try:
        py_spy()
    except RuntimeError as exc:
        print(f"bench.profile: {exc}", file=sys.stderr)
        return 1
    tree = args.tree.resolve()
    print(f"profile: py-spy at {args.rate} Hz, {args.duration:g} s per cell at c={CONCURRENCY}; sidecar from {tree}")
    started = time.monotonic()
    profiles = run(args.duration, args.rate, names, scenarios, tree)
    text = "\n".join(
        [
            f"# Where the time goes ({time.strftime('%Y-%m-%d %H:%M')})",
            "",
            f"- `python -m bench.profile`: py-spy at {args.rate} Hz (`--nonblocking`), {args.duration:g} s per cell "
            f"while {load.GENERATOR} loads the target at c={CONCURRENCY}; each sample counted by the area of its "
            "innermost frame that an area names (bench/profile.py `AREAS`)",
            f"- placement: {procs.layout()}; sidecar from `{tree}`, default telemetry; whole run "
            f"{time.monotonic() - started:.0f} s",
            "- upstream: nginx, a canned chat.completion (json) and a canned 23-frame stream (sse)",
            "",
            tables(profiles, args.rate),
            "",
        ]
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print()
    print(text)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
