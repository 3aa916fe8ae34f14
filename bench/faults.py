"""The sidecar's own fault tests: each injects one fault under load and counts what became of every call.

    python -m bench.faults [NAME ...]      (make chaos runs them after bench.chaos's endpoint kill)

- ``redis``: Redis killed under load (concurrency 16, cached calls), restarted 3 s later.
- ``sigterm``: SIGTERM under streaming load (concurrency 16): short streams (1 s) that fit in
  the 3 s drain, long ones (10 s) that do not.
- ``flood``: 1,100 idle connections held on the admin port of a sidecar that has the 1,024
  file descriptors many nodes give a container, while calls go through and the kubelet's
  probe polls ``/healthz``.
- ``echo``: a provider answers 401 and echoes the key it was sent, in both dialects.
- ``streams``: the provider's streams end before their end marker, hold a malformed frame,
  come back empty, or arrive in CRLF pieces (concurrency 16, cache on): a broken answer must
  never pass for a whole one, nor be stored; the CRLF ones must all succeed and be stored.

Every call is one of: **succeeded** (a complete answer), **failed** (the client got a clear
error: an error status, an error event at the end of a stream, or a refused connection), or
**lost** (accepted, then neither an answer nor an error: a reset, a timeout, a stream cut
without an error event). Everything binds 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import socket
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import procs

KEY = "sk-bench-fault-key-0123456789abcdef"
CONCURRENCY = 16


class Tally(Counter):
    def line(self, name: str) -> str:
        attempted = self["succeeded"] + self["failed"] + self["lost"]
        return f"| {name} | {attempted} | {self['succeeded']} | {self['failed']} | {self['lost']} |"


def _config(directory: Path, mock_url: str, **sections: Any) -> tuple[Path, int, int]:
    endpoints = {
        "gpt-4o-mini": [
            {
                "name": "mock-openai",
                "url": mock_url + "/v1",
                "dialect": "openai",
                "model": "mock-gpt",
                "api_key": KEY,
                "max_concurrent": 256,
            }
        ],
        "claude-sonnet": [
            {
                "name": "mock-anthropic",
                "url": mock_url,
                "dialect": "anthropic",
                "model": "mock-claude",
                "api_key": KEY,
                "max_concurrent": 256,
            }
        ],
    }
    path, port, admin_port = procs.sidecar_config(directory, {}, **sections)
    config = orjson.loads(path.read_bytes())
    config["model_groups"] = {name: {"endpoints": e} for name, e in endpoints.items()}
    config["telemetry"] = {"access_log": False}
    path.write_bytes(orjson.dumps(config))
    return path, port, admin_port


def _sidecar(
    config: Path, port: int, admin_port: int, nofile: int | None = None, drain_timeout: float | None = None
) -> procs.Proc:
    if drain_timeout is not None:
        data = orjson.loads(config.read_bytes())
        data["server"]["drain_timeout"] = drain_timeout
        config.write_bytes(orjson.dumps(data))
    argv = [procs.PYTHON, "-m", "proxy", "serve", "--config", str(config)]
    if nofile is not None:
        argv = [shutil.which("prlimit") or "prlimit", f"--nofile={nofile}:{nofile}", "--", *argv]
    return procs.Proc("llm-sidecar", argv, port, procs.PROXY_CORES, ready=f"http://127.0.0.1:{admin_port}/readyz")


async def _call(session: aiohttp.ClientSession, url: str, body: dict[str, Any], tally: Tally) -> None:
    """One call, classified by what the client got."""
    stream = body.get("stream") is True
    try:
        async with session.post(url, json=body) as response:
            data = await response.read()
    except aiohttp.ClientConnectorError:
        tally["failed"] += 1  # refused: the client knows at once
        return
    except (TimeoutError, aiohttp.ClientError):
        tally["lost"] += 1
        return
    if stream:
        data = data.replace(b"\r\n", b"\n")  # any of SSE's line ends
    if response.status != 200:
        tally["failed"] += 1
    elif not stream:
        tally["succeeded" if data.rstrip().endswith(b"}") else "lost"] += 1
    elif data.endswith(b"data: [DONE]\n\n"):  # the streams here are OpenAI chat
        tally["succeeded"] += 1
    elif b'"error"' in data.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]:
        tally["failed"] += 1  # ended with an error event in its dialect
    else:
        tally["lost"] += 1


async def _load(
    url: str,
    bodies: Callable[[int], dict[str, Any]],
    until: Callable[[], bool],
    tally: Callable[[], Tally],
    concurrency: int = CONCURRENCY,
    headers: dict[str, str] | None = None,
) -> None:
    """Closed-loop calls until ``until()``; each counts in ``tally()`` as of its start."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout, headers=headers
    ) as session:
        counter = iter(range(10**9))

        async def worker() -> None:
            while not until():
                await _call(session, url, bodies(next(counter)), tally())

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _chat(index: int, stream: bool = False) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": f"q{index % 20}"}]}


# ---------------------------------------------------------------- scenarios


def redis_fault(tmp: Path) -> dict[str, Tally]:
    redis_port = procs.free_port()
    redis_dir = tempfile.mkdtemp(prefix="bench-redis-", dir=tmp)

    def start_redis() -> procs.Proc:
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            redis_dir,
        ]
        return procs.Proc("redis-server", argv, redis_port, procs.LOAD_CORES)

    redis = start_redis()
    with procs.start_mock(procs.LOAD_CORES, "mock-gpt:latency_ms=20") as mock:
        config, port, admin_port = _config(
            tmp,
            mock.url,
            cache={
                "backend": "redis",
                "redis_url": f"redis://127.0.0.1:{redis_port}/0",
                "local_ttl": 0,
                "operation_timeout": 0.1,
                "breaker_cooldown": 0.5,
            },
        )
        data = orjson.loads(config.read_bytes())
        data["model_groups"]["gpt-4o-mini"]["cache"] = {"mode": "always", "ttl": 600}
        config.write_bytes(orjson.dumps(data))
        tallies = {"before": Tally(), "Redis down": Tally(), "after restart": Tally()}
        phase = ["before"]
        with _sidecar(config, port, admin_port):

            async def main() -> None:
                stop_at = time.monotonic() + 9

                async def script() -> None:
                    nonlocal redis
                    await asyncio.sleep(2)
                    redis.process.kill()
                    phase[0] = "Redis down"
                    await asyncio.sleep(3)
                    redis.stop()
                    redis = await asyncio.to_thread(start_redis)
                    phase[0] = "after restart"

                await asyncio.gather(
                    script(),
                    _load(port_url(port), _chat, lambda: time.monotonic() > stop_at, lambda: tallies[phase[0]]),
                )

            asyncio.run(main())
    redis.stop()
    return tallies


def port_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/chat/completions"


def sigterm_fault(tmp: Path) -> dict[str, Tally]:
    tallies = {"short streams (1 s)": Tally(), "long streams (10 s)": Tally()}
    with procs.start_mock(procs.LOAD_CORES) as mock:
        config, port, admin_port = _config(tmp, mock.url)
        sidecar = _sidecar(config, port, admin_port, drain_timeout=3)

        async def main() -> float:
            terminated = asyncio.Event()  # a native sidecar's app is gone by then: no new calls

            async def term() -> float:
                await asyncio.sleep(2)
                sent = time.monotonic()
                sidecar.process.send_signal(signal.SIGTERM)
                terminated.set()
                await asyncio.to_thread(sidecar.process.wait, 30)
                return time.monotonic() - sent

            def streams(delay_ms: int, tally: Tally) -> Any:
                return _load(
                    port_url(port),
                    lambda i: _chat(i, stream=True),
                    terminated.is_set,
                    lambda: tally,
                    CONCURRENCY // 2,
                    {"x-mock-chunk-delay-ms": str(delay_ms), "x-mock-chunks": "20"},
                )

            took, *_ = await asyncio.gather(
                term(), streams(50, tallies["short streams (1 s)"]), streams(500, tallies["long streams (10 s)"])
            )
            return took

        took = asyncio.run(main())
        sidecar.stop()
    tallies["_drain_s"] = took  # type: ignore[assignment]  # the drain time rides along with the tallies
    return tallies


def flood_fault(tmp: Path) -> dict[str, Any]:
    calls, probes = Tally(), Tally()
    with procs.start_mock(procs.LOAD_CORES) as mock:
        config, port, admin_port = _config(tmp, mock.url)
        with _sidecar(config, port, admin_port, nofile=1024):
            import resource

            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
            flood = []
            for _ in range(1100):
                sock = socket.socket()
                sock.settimeout(2)
                try:
                    sock.connect(("127.0.0.1", admin_port))
                    flood.append(sock)
                except OSError:
                    sock.close()

            async def main() -> None:
                stop_at = time.monotonic() + 5

                async def probe() -> None:
                    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
                        while time.monotonic() < stop_at:
                            # A new connection each time, as the kubelet's probes make.
                            try:
                                async with session.get(
                                    f"http://127.0.0.1:{admin_port}/healthz", headers={"Connection": "close"}
                                ) as response:
                                    probes["succeeded" if response.status == 200 else "failed"] += 1
                            except aiohttp.ClientConnectorError:
                                probes["failed"] += 1
                            except (TimeoutError, aiohttp.ClientError):
                                probes["lost"] += 1
                            await asyncio.sleep(0.2)

                await asyncio.gather(
                    probe(), _load(port_url(port), _chat, lambda: time.monotonic() > stop_at, lambda: calls)
                )

            asyncio.run(main())
            held = len(flood)
            for sock in flood:
                sock.close()
    return {"calls through the proxy": calls, "/healthz probes": probes, "_held": held}


def echo_fault(tmp: Path) -> dict[str, Any]:
    tally, leaks = Tally(), 0
    with procs.start_mock(
        procs.LOAD_CORES, "mock-gpt:status=401,echo_key=1", "mock-claude:status=401,echo_key=1"
    ) as mock:
        config, port, admin_port = _config(tmp, mock.url)
        with _sidecar(config, port, admin_port):

            async def main() -> None:
                nonlocal leaks
                async with aiohttp.ClientSession() as session:
                    for index in range(100):
                        openai = index % 2 == 0
                        url = port_url(port) if openai else f"http://127.0.0.1:{port}/anthropic/v1/messages"
                        body = (
                            _chat(index)
                            if openai
                            else {
                                "model": "claude-sonnet",
                                "max_tokens": 5,
                                "messages": [{"role": "user", "content": "x"}],
                            }
                        )
                        async with session.post(url, json=body) as response:
                            text = await response.text()
                            leaked = KEY in text or any(KEY in v for v in response.headers.values())
                            leaks += leaked
                            # The upstream's own 401 reached the client, without the key.
                            tally["succeeded" if response.status == 401 and not leaked else "failed"] += 1

            asyncio.run(main())
    return {"401 echoing the key (answers passed on)": tally, "_leaks": leaks}


def _stores(admin_port: int) -> int:
    """The sidecar's cache stores so far, read off ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('llm_sidecar_cache_events_total{event="store"}'):
                return int(float(line.split()[-1]))
    return 0


#: phase → the mock provider's fault (per request), and whether the calls stream
STREAM_FAULTS = {
    "stream ends before its end marker": ({"x-mock-truncate": "1"}, True),
    "a malformed frame mid-stream": ({"x-mock-malformed": "5"}, True),
    "an empty 200 (JSON)": ({"x-mock-empty": "1"}, False),
    "an empty 200 (stream)": ({"x-mock-empty": "1"}, True),
    "every line end cut between \\r and \\n": ({"x-mock-crlf": "1"}, True),
}


def stream_fault(tmp: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with procs.start_mock(procs.LOAD_CORES) as mock:
        config, port, admin_port = _config(tmp, mock.url, cache={"backend": "memory"})
        data = orjson.loads(config.read_bytes())
        data["model_groups"]["gpt-4o-mini"]["cache"] = {"mode": "always", "ttl": 600}
        config.write_bytes(orjson.dumps(data))
        # A sidecar per phase: the broken answers of one open the endpoint's circuit for the next.
        for number, (phase, (headers, stream)) in enumerate(STREAM_FAULTS.items()):
            with _sidecar(config, port, admin_port):
                result[phase] = _stream_phase(port, number, headers, stream)
                result[f"_stored: {phase}"] = _stores(admin_port)
    return result


def _stream_phase(port: int, number: int, headers: dict[str, str], stream: bool, seconds: float = 2.0) -> Tally:
    tally, stop_at = Tally(), time.monotonic() + seconds

    def body(index: int) -> dict[str, Any]:
        # Each phase asks its own questions: a broken answer stored would show as a hit later.
        return {**_chat(index, stream), "messages": [{"role": "user", "content": f"phase {number} question {index}"}]}

    asyncio.run(_load(port_url(port), body, lambda: time.monotonic() > stop_at, lambda: tally, headers=headers))
    return tally


def _streams_ok(result: dict[str, Any]) -> bool:
    broken = [p for p in STREAM_FAULTS if not p.startswith("every line end")]
    whole = "every line end cut between \\r and \\n"
    return (
        all(result[p]["succeeded"] == 0 for p in broken)
        and all(result[f"_stored: {p}"] == 0 for p in broken)
        and result[whole]["failed"] == 0
        and result[f"_stored: {whole}"] == result[whole]["succeeded"]
    )


SCENARIOS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "redis": redis_fault,
    "sigterm": sigterm_fault,
    "flood": flood_fault,
    "echo": echo_fault,
    "streams": stream_fault,
}


def report(name: str, result: dict[str, Any]) -> bool:
    print(f"\n### Fault: {name}\n")
    print("| calls | attempted | succeeded | failed | lost |\n|---|---|---|---|---|")
    ok = True
    for phase, tally in result.items():
        if not phase.startswith("_"):
            print(tally.line(phase))
            ok = ok and tally["lost"] == 0
    extras = {k[1:]: v for k, v in result.items() if k.startswith("_")}
    if extras:
        print("\n" + ", ".join(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in extras.items()))
    if name == "echo":
        ok = ok and result["_leaks"] == 0
    if name == "streams":
        ok = ok and _streams_ok(result)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[*SCENARIOS, []], help="scenarios to run (default: all)")
    args = parser.parse_args()
    ok = True
    for name in args.names or SCENARIOS:
        with tempfile.TemporaryDirectory(prefix=f"bench-fault-{name}-") as tmp:
            ok = report(name, SCENARIOS[name](Path(tmp))) and ok
    print(f"\nverdict: {'PASS' if ok else 'FAIL'} (no call lost, no key passed on, no broken answer passed or stored)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
