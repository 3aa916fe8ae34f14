"""``python -m bench.profile``: py-spy's samples counted by area, and the table it prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.profile import AREAS, OTHER, Profile, classify, count

ROOT = Path(__file__).resolve().parent.parent

# Stacks as py-spy's raw format prints them (outermost frame first), from the targets under load.
LOOP = (
    "_run_module_as_main (<frozen runpy>:198);_run_code (<frozen runpy>:88);<module> (proxy/__main__.py:5);"
    "main (proxy/cli.py:364);cmd_serve (proxy/cli.py:35);_run (proxy/cli.py:23);run (uvloop/__init__.py:92);"
    "Runner.run (asyncio/runners.py:118)"
)
HANDLER = (
    LOOP + ";RequestHandler._handle_request (aiohttp/web_protocol.py:577);Application._handle (aiohttp/web_app.py:563);"
    "_dialect_handler.<locals>.handle (proxy/server.py:128);Pipeline.handle (proxy/pipeline.py:52)"
)
CASES = {
    # uvloop's C work: no Python frame below the one that runs the loop
    LOOP: "event loop",
    "<module> (bench/passthrough.py:69);main (bench/passthrough.py:65);run_app (aiohttp/web.py:502)": "event loop",
    HANDLER: "pipeline",
    # a dataclass's generated __init__ counts for its caller
    HANDLER + ";__create_fn__.<locals>.__init__ (<string>:12)": "pipeline",
    HANDLER + ";Routed.__aenter__ (proxy/router/router.py:566)": "router",
    "Upstream.open (proxy/upstream.py:405);ClientSession._request (aiohttp/client.py:900);"
    "ClientSession._prepare_headers (aiohttp/client.py:1459)": "aiohttp client",
    # a torn stack (--nonblocking): its innermost named frame decides
    "ClientResponse.read (aiohttp/client_reqrep.py:916);ABCMeta.__instancecheck__ (<frozen abc>:117);"
    "log_access (proxy/telemetry/logs.py:155)": "telemetry",
    "ClientResponse.start (aiohttp/client_reqrep.py:781);TimerNoop.__exit__ (aiohttp/helpers.py:702);"
    "StreamWriter._write (aiohttp/http_writer.py:104)": "aiohttp server",
    HANDLER + ";handle (proxy/relay.py:80);AnswerStream.feed (proxy/dialects/stream.py:120)": "stream checks",
    HANDLER + ";Cache.lookup (proxy/cache/response_cache.py:200);Redis.get (redis/asyncio/client.py:600)": "cache",
    # a path py-spy left whole
    HANDLER + ";f (/usr/lib/python3.11/site-packages/aiohttp/web_response.py:1)": "aiohttp server",
    # a task of a file no rule names, run straight from the loop
    LOOP + ";Watch.run (proxy/discovery/manager.py:50);compile (re/__init__.py:227)": OTHER,
}


@pytest.mark.parametrize("stack, area", list(CASES.items()))
def test_a_sample_counts_for_the_area_of_its_innermost_named_frame(stack: str, area: str) -> None:
    assert classify(stack.split(";")) == area


def test_raw_lines_are_counted_and_empty_stacks_are_lost() -> None:
    profile = Profile("json", "sidecar miss (cache off)")
    count(profile, [f"{LOOP} 3\n", f"{HANDLER} 2\n", " 4\n", f"{LOOP};Watch.run (proxy/discovery/manager.py:50) 1\n"])
    assert profile.areas == {"event loop": 3, "pipeline": 2, OTHER: 1}
    assert profile.lost == 4
    assert profile.other == {"proxy/discovery/manager.py": 1}


def _missing() -> list[str]:
    tools = {
        "py-spy": shutil.which("py-spy") or Path(sys.executable).with_name("py-spy").exists(),
        "wrk": shutil.which("wrk"),
        "nginx": shutil.which("nginx") or Path("/usr/sbin/nginx").exists(),
        "redis-server": shutil.which("redis-server"),
    }
    return [name for name, found in tools.items() if not found]


def _may_trace() -> bool:
    """py-spy attaches with ptrace: root, or any process of the same user when Yama allows it."""
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    return os.geteuid() == 0 or not scope.exists() or scope.read_text().strip() == "0"


@pytest.mark.skipif(bool(_missing()), reason=f"bench tools missing: {', '.join(_missing())} (make bench-tools)")
@pytest.mark.skipif(not _may_trace(), reason="py-spy cannot attach: not root and kernel.yama.ptrace_scope is not 0")
def test_profile_prints_every_area_for_the_pass_through(tmp_path: Path) -> None:
    out = tmp_path / "profile.md"
    argv = [sys.executable, "-m", "bench.profile", "--duration", "1", "--targets", "pass-through"]
    done = subprocess.run(
        [*argv, "--scenarios", "json", "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.read_text() in done.stdout

    # The first table: one row per area (its name, then what it covers), then the totals.
    lines = out.read_text().splitlines()
    start = lines.index("| area | pass-through, JSON |")
    table = lines[start : lines.index("", start)]
    rows = dict(tuple(line.strip("| ").split(" | ")) for line in table[2:])
    areas = [name for name, _, _ in AREAS] + [OTHER]
    assert [label.split(":")[0] for label in rows][: len(areas)] == areas
    shares = {
        label.split(":")[0]: 0.0 if cell == "–" else float(cell.removesuffix(" %"))
        for label, cell in rows.items()
        if label.split(":")[0] in areas
    }
    assert abs(sum(shares.values()) - 100) < 1, shares
    assert shares[OTHER] < 5, shares
    # the pass-through is aiohttp's server and client, and the loop
    assert shares["aiohttp server"] > 10 and shares["aiohttp client"] > 10, shares
    assert all(shares[name] == 0 for name in ("router", "telemetry", "cache", "upstream attempt")), shares
    assert int(rows["samples (lost: unreadable)"].split(" (")[0].replace(",", "")) > 100, rows
    assert float(rows["CPU µs per call (/proc)"]) > 0, rows
