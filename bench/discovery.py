"""The discovery benchmark: a model group of four discovered replicas against one endpoint, same run.

    python -m bench.discovery [--duration 3] [--concurrency 1,16,64] [--rounds 2]

The upstream is nginx's static answer (the mock provider without nginx), listening on
127.0.0.1 and on 127.0.0.2-5 at one port: four replicas of one server. A real DNS server
(dnsmasq) answers the replicas' name with the four addresses, as cluster DNS answers for a
headless Service. Three ``llm-sidecar serve`` in front of it, identical but for the model
group: one endpoint (127.0.0.1); ``discover: {dns: ...}`` with the default balance; the same
with ``balance: latency``. Rounds alternate the targets; calls/s and latency come from each
target's best round, CPU per call from its lowest. The target: the discovered group within
10 % of the single endpoint's calls/s.

Everything binds to loopback; loads are closed-loop and stop after ``duration``.
Results go to stdout and ``bench/results/discovery.md``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench import load, procs
from bench.cache import _measure
from bench.core import PROMPT, _static_answer

MODEL = "bench-json"
NAME = "vllm-headless.models.svc.cluster.local"
REPLICAS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
SINGLE = "one endpoint"
DISCOVERED = "4 discovered replicas"
LATENCY = "4 discovered replicas, balance: latency"


@dataclass(frozen=True)
class Row:
    target: str
    concurrency: int
    result: load.LoadResult
    cpu_ms: float


def start_dnsmasq(directory: Path) -> procs.Proc:
    """dnsmasq answering ``NAME`` with the four replicas' addresses (TTL 5 s)."""
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    hosts = directory / "hosts"
    hosts.write_text("".join(f"{address} {NAME}\n" for address in REPLICAS))
    port = procs.free_port()
    argv = [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--local=/cluster.local/",
        "--no-hosts",
        f"--addn-hosts={hosts}",
        "--local-ttl=5",
        "--pid-file=",
        "--user=root",
    ]
    return procs.Proc("dnsmasq", argv, port, procs.LOAD_CORES)


def _config(directory: Path, upstream: str, discover: dict | None, balance: str | None = None) -> tuple[Path, int, int]:
    """A sidecar config: the group's one endpoint, or ``discover`` with the same endpoint settings."""
    directory.mkdir()
    config, proxy_port, admin = procs.sidecar_config(directory, {MODEL: upstream + "/v1"})
    if discover is not None:
        data = orjson.loads(config.read_bytes())
        group = data["model_groups"][MODEL]
        endpoint = group.pop("endpoints")[0]
        group["discover"] = {**discover, "endpoint": {k: endpoint[k] for k in ("dialect", "api_key", "max_concurrent")}}
        if balance:
            group["balance"] = balance
        config.write_bytes(orjson.dumps(data))
    return config, proxy_port, admin


def _discovered(admin_port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/status", timeout=5) as response:
        return len(orjson.loads(response.read())["groups"][MODEL]["endpoints"])


def run(duration: float, concurrencies: list[int], rounds: int) -> tuple[list[Row], str]:
    body = orjson.dumps({"model": MODEL, "messages": PROMPT})
    nginx = procs.start_nginx(_static_answer(), also=REPLICAS)
    if nginx is None:
        raise RuntimeError("nginx is not installed: the replicas are nginx listening on four addresses")
    rows: list[Row] = []
    path = "/v1/chat/completions"
    with nginx, tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp, start_dnsmasq(Path(tmp)) as dns:
        base = {"dns": NAME, "nameservers": [f"127.0.0.1:{dns.port}"], "port": nginx.port}
        sidecars = {}
        for i, (name, discover, balance) in enumerate(
            ((SINGLE, None, None), (DISCOVERED, base, None), (LATENCY, base, "latency"))
        ):
            config, port, admin = _config(Path(tmp) / f"sidecar-{i}", nginx.url, discover, balance)
            sidecars[name] = (procs.start_sidecar(config, port, admin), admin)
        try:
            for name, (proc, admin) in sidecars.items():
                expected = 1 if name == SINGLE else len(REPLICAS)
                deadline = time.monotonic() + 15
                while _discovered(admin) != expected:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name}: {_discovered(admin)} endpoints, not {expected}")
                    time.sleep(0.05)
                load.run(proc.url + path, body, max(concurrencies), 1.0)  # warm-up: connections to every replica
            for concurrency in concurrencies:
                best: dict[str, Row] = {}
                for _ in range(rounds):
                    for name, (proc, _admin) in sidecars.items():
                        result, cpu_ms = _measure(proc, proc.url + path, body, concurrency, duration)
                        best[name] = load.best_round(best.get(name), Row(name, concurrency, result, cpu_ms))
                for row in best.values():
                    rows.append(row)
                    print(
                        f"{row.target:40} c={concurrency:<3} {row.result.rate:9,.0f}/s p50 {row.result.p50_ms:.3f} ms "
                        f"p99 {row.result.p99_ms:.3f} ms CPU {row.cpu_ms:.3f} ms/call errors {row.result.errors}",
                        flush=True,
                    )
        finally:
            for proc, _admin in sidecars.values():
                proc.stop()
    return rows, "nginx (static JSON)"


def report(rows: list[Row], upstream: str, duration: float, rounds: int) -> str:
    def get(target: str, concurrency: int) -> Row:
        return next(r for r in rows if (r.target, r.concurrency) == (target, concurrency))

    lines = [
        f"# Discovery benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- load generator: {load.GENERATOR}, closed loop, {duration:g} s per cell, {rounds} rounds alternating "
        "the targets: calls/s and latency from each target's best round, CPU per call the lowest",
        f"- placement: {procs.layout()}",
        f"- load average at the start: {os.getloadavg()[0]:.2f} (2 cores shared with other work)",
        f"- upstream: {upstream} on 127.0.0.1 and 127.0.0.2-5 (one server, four addresses); the replicas "
        "are found by DNS (dnsmasq, TTL 5 s)",
        "",
        "| target | c | calls/s | × one endpoint | p50 ms | p99 ms | CPU ms/call | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    checks = []
    for row in rows:
        single = get(SINGLE, row.concurrency)
        ratio = row.result.rate / single.result.rate if single.result.rate else float("nan")
        lines.append(
            f"| {row.target} | {row.concurrency} | {row.result.rate:,.0f} | {ratio:.2f} | {row.result.p50_ms:.3f} | "
            f"{row.result.p99_ms:.3f} | {row.cpu_ms:.3f} | {row.result.errors} |"
        )
        if row.target != SINGLE:
            checks.append((f"{row.target}, c={row.concurrency}: ≥ 90 % of one endpoint's calls/s", ratio))
    lines += ["", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {name} | {value:.2f}× | {'met' if value >= 0.9 else '**missed**'} |" for name, value in checks]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return load.grid_main("discovery", "the discovery benchmark", run, report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
