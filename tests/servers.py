"""Real servers on free loopback ports, for the tests: the mock provider, the sidecar, redis-server.

aiohttp servers run on one private event loop in a daemon thread, so sync SDK
clients and async tests alike talk to them over real TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.config import Config, parse_config
from proxy.mock_provider import build_mock_app
from proxy.server import CURRENT, Servers
from tests.waiting import wait_until

PROVIDER_KEY = "sk-test-provider-key-0123456789"
#: the installed console script, as users run it
LLM_SIDECAR = str(Path(sys.executable).with_name("llm-sidecar"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    """``url`` answers 200 (an ``OSError`` while nothing listens there)."""
    with urllib.request.urlopen(url, context=context, timeout=2) as response:
        return response.status == 200


def start_on_free_ports(
    command: Callable[..., list[str]],
    ready: Callable[..., object],
    log: Path,
    ports: int = 1,
    timeout: float = 30,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], list[int]]:
    """``command(*ports)`` started on ``ports`` free loopback ports; returns once ``ready(*ports)`` is true.

    A port from ``free_port()`` is only free for now: a server of another test (another xdist
    worker) may take it before this one binds it. The server then exits saying "address already
    in use" and starts again on new ports. ``command`` may write a config file naming the ports;
    the server's stderr goes to ``log`` (the last try's); an ``OSError`` from ``ready`` means "not yet".
    """
    deadline = time.monotonic() + timeout
    popen.setdefault("stdout", subprocess.DEVNULL)
    while True:
        chosen: list[int] = []
        while len(chosen) < ports:  # distinct: the same port twice is a config error (84de115), not a lost race
            if (port := free_port()) not in chosen:
                chosen.append(port)
        with log.open("wb") as stderr:
            process = subprocess.Popen(command(*chosen), stderr=stderr, **popen)
        try:
            state = wait_until(functools.partial(_state, process, ready, chosen), max(deadline - time.monotonic(), 0))
        except AssertionError:
            process.kill()
            process.wait(5)
            raise AssertionError(f"not up within {timeout} s: {log.read_text(errors='replace')[-2000:]}") from None
        if state == "up":
            return process, chosen
        text = log.read_text(errors="replace")
        lost = any(f":{port}: address already in use" in text for port in chosen)
        assert lost and time.monotonic() < deadline, f"exited with {process.returncode}: {text[-2000:]}"


def listening_port(log: Path) -> int | None:
    """The port a process that logs JSON says it bound (its ``listening`` line), once it has."""
    for line in log.read_text(errors="replace").splitlines():
        if '"listening"' in line:
            return int(json.loads(line)["address"].rsplit(":", 1)[1])
    return None


def start_webhook(
    cert: Path, key: Path, ca: Path, log: Path, *args: str, **popen: Any
) -> tuple[subprocess.Popen[bytes], str]:
    """``llm-sidecar webhook --no-kube`` on a free port with ``cert`` and ``key`` (and ``args``), up once it
    logs that it bound that port and its /healthz answers over TLS trusted by ``ca``: the process and its base
    URL. (Its own log line, not the answer alone: another test's webhook may hold the port ours lost.)"""
    ctx = ssl.create_default_context(cafile=str(ca))
    flags = ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--no-kube", "--kube-version", "1.30", *args]
    process, (port,) = start_on_free_ports(
        lambda port: [LLM_SIDECAR, "webhook", "--port", str(port), *flags],
        lambda port: listening_port(log) == port and answers(f"https://127.0.0.1:{port}/healthz", ctx),
        log,
        **popen,
    )
    return process, f"https://127.0.0.1:{port}"


def _state(process: subprocess.Popen[bytes], ready: Callable[..., object], ports: list[int]) -> str | None:
    """ "exited", "up", or None while it starts."""
    if process.poll() is not None:
        return "exited"
    try:
        if not ready(*ports):
            return None
    except OSError:
        return None
    # What answered may be another test's server on a port ours lost, if ours has already tried to bind it.
    return "exited" if process.poll() is not None else "up"


class RefusedPort:
    """A loopback port that refuses connections until ``release()``: bound, never listening.

    A port from ``free_port()`` is only unused for now: another server (or another test run)
    may take it, and the kernel may pick it as the local port of an outgoing connection to
    it, which then connects to itself. While it stays bound, neither can happen.
    """

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def release(self) -> None:
        self._sock.close()


class ServerLoop:
    """An event loop in a daemon thread that hosts the test servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-servers", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @contextlib.contextmanager
    def serving(self, app: web.Application) -> Iterator[str]:
        """``app`` served on a free loopback port while the block runs; yields its base URL."""
        runner = web.AppRunner(app, access_log=None)
        port = free_port()

        async def start() -> None:
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()

        self.run(start())
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            self.run(runner.cleanup())


def _get_json(url: str, method: str = "GET", body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


class MockProvider:
    """The project's mock provider on a free port; ``stop()`` makes the port refuse connections."""

    def __init__(self, loop: ServerLoop, port: int | None = None, host: str = "127.0.0.1") -> None:
        self._loop = loop
        #: another loopback address (127.0.0.2 …) stands in for another pod on the same port
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self._runner: web.AppRunner | None = None
        self.start()

    def start(self) -> None:
        async def start() -> web.AppRunner:
            runner = web.AppRunner(build_mock_app(), access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
            return runner

        self._runner = self._loop.run(start())

    def stop(self) -> None:
        if self._runner is not None:
            self._loop.run(self._runner.cleanup())
            self._runner = None

    def stats(self) -> dict[str, Any]:
        return _get_json(self.url + "/_mock/stats")

    def calls(self, model: str | None = None) -> int:
        stats = self.stats()
        return stats["total_calls"] if model is None else stats["calls"].get(model, 0)

    def reset(self) -> None:
        """Counts start again; the peak in flight starts from the calls in flight now."""
        _get_json(self.url + "/_mock/reset", "POST")

    def requests(self) -> list[dict[str, Any]]:
        return _get_json(self.url + "/_mock/requests")

    def set_behaviour(self, model: str, **behaviour: Any) -> None:
        _get_json(f"{self.url}/_mock/behaviour/{model}", "PUT", behaviour)


def default_config(mock_url: str, **overrides: Any) -> dict[str, Any]:
    """Two model groups in front of the mock: ``gpt-4o-mini`` (OpenAI) and ``claude-sonnet`` (Anthropic)."""
    config: dict[str, Any] = {
        "server": {"port": 0, "admin_port": 0, "admin_host": "127.0.0.1", "drain_timeout": 5},
        "model_groups": {
            "gpt-4o-mini": {
                "endpoints": [
                    {
                        "name": "mock-openai",
                        "url": f"{mock_url}/v1",
                        "dialect": "openai",
                        "model": "mock-gpt",
                        "api_key": PROVIDER_KEY,
                    }
                ]
            },
            "claude-sonnet": {
                "endpoints": [
                    {
                        "name": "mock-anthropic",
                        "url": mock_url,
                        "dialect": "anthropic",
                        "model": "mock-claude",
                        "api_key": PROVIDER_KEY,
                    }
                ]
            },
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


class Sidecar:
    """The proxy and admin listeners of one sidecar, on free ports."""

    def __init__(self, loop: ServerLoop, config: Config | dict[str, Any]) -> None:
        self._loop = loop
        self.config = config if isinstance(config, Config) else parse_config(config)
        self.servers = Servers(self.config)
        loop.run(self.servers.start())
        self.url = f"http://127.0.0.1:{self.servers.port}"
        self.openai_base = self.url + "/v1"
        self.anthropic_base = self.url + "/anthropic"
        self.admin_url = f"http://127.0.0.1:{self.servers.admin_port}"
        self._stopped = False

    @property
    def pipeline(self) -> Any:
        """The pipeline calls are using now (a reload replaces it)."""
        return self.servers.app[CURRENT].pipeline

    def openai(self, **kwargs: Any):
        import openai

        return openai.OpenAI(base_url=self.openai_base, api_key="sk-client-placeholder", max_retries=0, **kwargs)

    def async_openai(self, **kwargs: Any):
        import openai

        return openai.AsyncOpenAI(base_url=self.openai_base, api_key="sk-client-placeholder", max_retries=0, **kwargs)

    def anthropic(self, **kwargs: Any):
        import anthropic

        return anthropic.Anthropic(
            base_url=self.anthropic_base, api_key="sk-ant-client-placeholder", max_retries=0, **kwargs
        )

    def async_anthropic(self, **kwargs: Any):
        import anthropic

        return anthropic.AsyncAnthropic(
            base_url=self.anthropic_base, api_key="sk-ant-client-placeholder", max_retries=0, **kwargs
        )

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._loop.run(self.servers.stop(), timeout=60)


class RedisServer:
    """A real ``redis-server`` on a free loopback port; ``kill()`` and ``start()`` test failures."""

    def __init__(self, port: int | None = None, *extra_args: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make test` (it installs it)")
        self.binary = binary
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra_args = extra_args
        self.dir = tempfile.mkdtemp(prefix="redis-test-")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def command(self) -> list[str]:
        """How the server is started; a subclass (a Sentinel) starts it another way."""
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            *self.extra_args,
        ]

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}: {' '.join(self.command()[1:])}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(16)


class SidecarProcess:
    """``llm-sidecar serve`` (the installed console script) on a config file, on free ports, ready.

    For tests that need several sidecars as separate processes (each its own event loop and
    state, as pods are); ``kill()`` is SIGKILL, ``stop()`` SIGTERM. With ``injected``, the ports
    come from the command line as the injector passes them (``--port``/``--admin-port``), and
    the file holds the chart's defaults instead.
    """

    def __init__(self, config: dict[str, Any], directory: Path, injected: bool = False, **popen: Any) -> None:
        self.directory = directory
        self.log = next(log for n in itertools.count() if not (log := directory / f"sidecar-{n}.log").exists())

        def command(port: int, admin_port: int) -> list[str]:
            self.port, self.admin_port = port, admin_port
            self.url, self.admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
            ports = (15180, 15190) if injected else (port, admin_port)
            server = {**config.get("server", {}), "port": ports[0], "admin_port": ports[1]}
            self.config = {**config, "server": server}
            argv = ["--port", str(port), "--admin-port", str(admin_port)] if injected else []
            return [LLM_SIDECAR, "serve", "--config", str(self.write_config(self.config)), *argv]

        self.process, _ = start_on_free_ports(
            command, lambda _, admin_port: answers(f"http://127.0.0.1:{admin_port}/readyz"), self.log, ports=2, **popen
        )

    def write_config(self, config: dict[str, Any]) -> Path:
        """Where the config goes; the file ``serve`` is given."""
        path = self.log.with_suffix(".yaml")
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    def status(self) -> dict[str, Any]:
        return _get_json(self.admin_url + "/status")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=5) as response:
            return response.read().decode()

    def events(self) -> list[dict[str, Any]]:
        """The sidecar's JSON log lines."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
