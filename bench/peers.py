"""The sidecar next to LiteLLM's proxy: the same calls to the same static upstream, in one run.

    make bench-peers     # installs LiteLLM into .tools/peers-venv first, then runs this
    python -m bench.peers [--duration 2] [--rounds 2] [--concurrency 1,16] [--venv .tools/peers-venv]

Three targets, each on its own core like every proxy here, behind the nginx of
``bench/hotpath.py`` (a canned chat.completion for ``json``, a canned 23-frame stream for
``sse``):

- ``pass-through``: the bare aiohttp proxy (``bench/passthrough.py``), the reference;
- ``llm-sidecar serve``: its miss path (cache off), default telemetry;
- ``LiteLLM proxy``: ``litellm --config`` with one uvicorn worker, one model per scenario
  pointing at nginx as an OpenAI-compatible ``api_base``, caching off, no database, a master key
  (it refuses to start without one; it is checked against the key in memory), its defaults
  otherwise (an access line per call, as the sidecar writes).

LiteLLM lives in a virtualenv of its own (``--venv``, made by ``make bench-peers``), never in
the project's: it is not a dependency, and its several hundred MB of packages would only slow
everyone's ``make setup``. Its network fetches at start (price map, beta headers, blog posts,
policy templates, router presets) are turned to the copies it ships with, and its usage
telemetry is off unless configured, so the run stays on loopback. Results go to stdout and
``bench/results/peers.md``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from bench import hotpath, load, procs
from bench.core import _static_answer

LITELLM = "LiteLLM proxy (1 worker)"
TARGETS = (hotpath.PASS_THROUGH, hotpath.MISS, LITELLM)
DIRECT = "direct (nginx)"
VENV = procs.ROOT / ".tools" / "peers-venv"
#: LiteLLM's switches to the copies it ships with, instead of a fetch at start (the network here
#: reaches no such host, and a benchmark should not depend on one)
OFFLINE = {
    name: "True"
    for name in (
        "LITELLM_LOCAL_MODEL_COST_MAP",
        "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS",
        "LITELLM_LOCAL_BLOG_POSTS",
        "LITELLM_LOCAL_POLICY_TEMPLATES",
        "LITELLM_LOCAL_AUTOROUTER_PRESETS",
    )
}


def litellm_version(venv: Path) -> str:
    argv = [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def litellm_config(directory: Path, nginx: str, master_key: str) -> Path:
    """One model per scenario, each an OpenAI-compatible deployment at nginx's base URL."""
    bases = {"bench-json": nginx + "/v1", "bench-sse": nginx + "/sse/v1"}
    config = {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {"model": f"openai/{name}", "api_base": base, "api_key": "sk-bench-not-a-real-key"},
            }
            for name, base in bases.items()
        ],
        "litellm_settings": {"cache": False},
        "general_settings": {"master_key": master_key},
    }
    path = directory / "litellm.yaml"
    path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))  # JSON is YAML
    return path


@contextmanager
def start_litellm(directory: Path, nginx: str, venv: Path) -> Iterator[tuple[procs.Proc, str]]:
    """LiteLLM's proxy pinned to the proxy core: (process, the master key its callers send)."""
    master_key = "sk-" + secrets.token_hex(32)
    config = litellm_config(directory, nginx, master_key)
    port = procs.free_port()
    argv = [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "1"]
    # Importing LiteLLM's proxy takes seconds (tens on a busy machine).
    ready = f"http://127.0.0.1:{port}/health/liveliness"
    proc = procs.Proc(LITELLM, argv, port, procs.PROXY_CORES, ready=ready, cwd=directory, timeout=180, env=OFFLINE)
    with proc:
        yield proc, master_key


def run(duration: float, rounds: int, concurrencies: list[int], venv: Path) -> list[hotpath.Cell]:
    cells: list[hotpath.Cell] = []
    nginx = procs.start_nginx(_static_answer(), sse=hotpath.static_stream())
    if nginx is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    with nginx, tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        names = [hotpath.PASS_THROUGH, hotpath.MISS]
        with hotpath.targets(Path(tmp), nginx.url, "", procs.ROOT, names) as ours:
            with start_litellm(Path(tmp), nginx.url, venv) as (litellm, master_key):
                chat = litellm.url + "/v1/chat/completions"
                running: dict[str, tuple[procs.Proc, dict[str, str], dict[str, str]]] = {
                    name: (proc, urls, {}) for name, (proc, urls) in ours.items()
                }
                running[LITELLM] = (litellm, {"json": chat, "sse": chat}, {"Authorization": f"Bearer {master_key}"})
                for scenario in hotpath.SCENARIOS:
                    payload = hotpath.body(scenario)
                    direct = nginx.url + ("/sse" if scenario == "sse" else "") + "/v1/chat/completions"
                    for _, urls, headers in running.values():
                        load.run(urls[scenario], payload, max(concurrencies), 1.0, headers)  # warm-up
                    for concurrency in concurrencies:
                        best: dict[str, hotpath.Cell] = {}
                        for _ in range(rounds):
                            result = load.run(direct, payload, concurrency, duration)
                            if DIRECT not in best or result.rate > best[DIRECT].result.rate:
                                best[DIRECT] = hotpath.Cell(scenario, DIRECT, concurrency, result, 0.0, None)
                            for name, (proc, urls, headers) in running.items():
                                before = proc.cpu_seconds()
                                result = load.run(urls[scenario], payload, concurrency, duration, headers)
                                cpu = (proc.cpu_seconds() - before) / result.calls * 1000 if result.calls else 0.0
                                cell = hotpath.Cell(scenario, name, concurrency, result, cpu, proc.peak_rss_mb())
                                best[name] = load.best_round(best.get(name), cell)
                        cells += best.values()
                        for cell in best.values():
                            print(line(cell, cells), flush=True)
    return cells


def _get(cells: list[hotpath.Cell], scenario: str, target: str, concurrency: int) -> hotpath.Cell | None:
    found = (c for c in cells if (c.scenario, c.target, c.concurrency) == (scenario, target, concurrency))
    return next(found, None)


def line(cell: hotpath.Cell, cells: list[hotpath.Cell]) -> str:
    bare = _get(cells, cell.scenario, hotpath.PASS_THROUGH, cell.concurrency)
    direct = _get(cells, cell.scenario, DIRECT, cell.concurrency)
    r = cell.result
    proxy = cell.rss_mb is not None
    ratio = f"{r.rate / bare.result.rate:.3f}" if bare and bare.result.rate else "–"
    cpu_ratio = f"{cell.cpu_ms / bare.cpu_ms:.2f}" if bare and bare.cpu_ms and proxy else "–"
    added50 = f"{r.p50_ms - direct.result.p50_ms:.2f}" if direct and proxy else "–"
    added99 = f"{r.p99_ms - direct.result.p99_ms:.2f}" if direct and proxy else "–"
    values = [
        cell.scenario,
        cell.target,
        str(cell.concurrency),
        f"{r.rate:,.0f}",
        ratio,
        f"{r.p50_ms:.2f}",
        added50,
        f"{r.p99_ms:.2f}",
        added99,
        f"{cell.cpu_ms:.3f}" if proxy else "–",
        cpu_ratio,
        f"{cell.rss_mb:.1f}" if cell.rss_mb is not None else "–",
        str(r.errors),
    ]
    return "| " + " | ".join(values) + " |"


HEADER = (
    "| scenario | target | c | calls/s | × pass-through | p50 ms | added p50 ms | p99 ms | added p99 ms "
    "| CPU ms/call | CPU × pass-through | peak RSS MB | errors |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def summary(cells: list[hotpath.Cell]) -> list[str]:
    """The sidecar's miss against LiteLLM, cell by cell: how many times the calls/s, the CPU, the RSS."""
    lines = [
        "| scenario | c | sidecar miss ÷ LiteLLM calls/s | LiteLLM ÷ sidecar CPU per call | LiteLLM ÷ sidecar RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for scenario in hotpath.SCENARIOS:
        for concurrency in sorted({c.concurrency for c in cells}):
            ours = _get(cells, scenario, hotpath.MISS, concurrency)
            theirs = _get(cells, scenario, LITELLM, concurrency)
            if not ours or not theirs or not theirs.result.rate or not ours.cpu_ms:
                continue
            rss = f"{theirs.rss_mb / ours.rss_mb:.1f}×" if theirs.rss_mb and ours.rss_mb else "–"
            lines.append(
                f"| {scenario} | {concurrency} | {ours.result.rate / theirs.result.rate:.1f}× | "
                f"{theirs.cpu_ms / ours.cpu_ms:.1f}× | {rss} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.splitlines()[0])
    load.grid_options(parser, duration=2.0, concurrency="1,16", rounds=2)
    parser.add_argument("--venv", type=Path, default=VENV, help=f"LiteLLM's virtualenv (default {VENV})")
    args = parser.parse_args(argv)
    concurrencies = load.concurrencies(parser, args)
    venv = args.venv.resolve()
    if not (venv / "bin" / "litellm").exists():
        parser.error(f"no LiteLLM in {venv}: `make bench-peers` installs it there")
    version = litellm_version(venv)
    load_average = "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())
    print(f"peers benchmark: LiteLLM {version}; {load.GENERATOR}; {procs.layout()}; load {load_average}", flush=True)
    print(HEADER, flush=True)
    started = time.monotonic()
    cells = run(args.duration, args.rounds, concurrencies, venv)
    parts = [
        f"# The sidecar next to LiteLLM ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- LiteLLM {version} (`litellm --config`, 1 uvicorn worker, caching off, no database, master key), "
        f"from `{venv}`; llm-sidecar from `{procs.ROOT}`, cache off, default telemetry",
        f"- load generator: {load.GENERATOR}, closed loop; {args.duration:g} s per cell, {args.rounds} rounds with "
        "the targets alternating, calls/s from each cell's best round, CPU per call the lowest",
        f"- placement: {procs.layout()}; load average at the start {load_average}; whole run "
        f"{time.monotonic() - started:.0f} s",
        "- upstream: nginx, a canned chat.completion (json) and a canned 23-frame stream (sse); "
        "added = the target's percentile minus nginx's own at the same concurrency",
        "",
        HEADER,
        *(line(cell, cells) for cell in cells),
        "",
        *summary(cells),
        "",
    ]
    load.publish("peers", "\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
