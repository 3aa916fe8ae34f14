"""The command line: serve drains on SIGTERM; demo works out of the box and stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.servers import SidecarProcess, answers, default_config, free_port, start_on_free_ports

SCRIPT = str(Path(sys.executable).with_name("llm-sidecar"))


def test_serve_drains_in_flight_streams_on_sigterm(tmp_path: Path, mock_provider) -> None:
    sidecar = SidecarProcess(default_config(mock_provider.url, server={"drain_timeout": 10}), tmp_path)
    process, port, admin_port = sidecar.process, sidecar.port, sidecar.admin_port
    try:
        # 15 chunks 200 ms apart: the stream is still running while the test looks at the draining process.
        mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=200, chunks=15)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
        )
        first = next(iter(stream))
        process.send_signal(signal.SIGTERM)
        # The process drains once its loop handles the signal: later on a loaded machine.
        deadline = time.monotonic() + 10
        while (readiness := httpx.get(f"http://127.0.0.1:{admin_port}/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "SIGTERM did not start the drain"
            time.sleep(0.02)
        assert readiness.status_code == 503 and readiness.json()["checks"]["not_draining"] is False
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/v1/models")
        rest = list(stream)
        words = "".join(c.choices[0].delta.content or "" for c in [first, *rest])
        assert len(words.split()) == 15  # the in-flight stream finished whole
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
    logs = [json.loads(line) for line in sidecar.log.read_text().splitlines() if line.startswith("{")]
    assert [entry["msg"] for entry in logs if entry["logger"] == "llm_sidecar"] == ["listening", "draining", "stopped"]


def test_demo_answers_curl_and_sdk_then_stops_on_ctrl_c(tmp_path: Path) -> None:
    process, (port, admin_port) = start_on_free_ports(
        lambda port, admin_port: [SCRIPT, "demo", "--port", str(port), "--admin-port", str(admin_port)],
        lambda _, admin_port: answers(f"http://127.0.0.1:{admin_port}/readyz"),
        tmp_path / "demo.log",
        ports=2,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        ask = lambda: httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
        )
        first, second = ask(), ask()
        assert first.json()["choices"][0]["message"]["content"]
        # The demo caches every call, so the help text's "run it twice" shows a hit.
        assert (first.headers["x-llm-sidecar-cache"], second.headers["x-llm-sidecar-cache"]) == ("miss", "hit")
        assert second.json()["choices"] == first.json()["choices"]
        import anthropic

        message = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}/anthropic", api_key="x").messages.create(
            model="claude-sonnet", max_tokens=20, messages=[{"role": "user", "content": "Hello"}]
        )
        assert message.content[0].text
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
        output = process.stdout.read().decode()
        assert f"curl -si http://127.0.0.1:{port}/v1/chat/completions" in output
        assert "demo stopped" in output
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("which, flag", [("port", "--port"), ("admin_port", "--admin-port")])
def test_a_busy_port_is_one_line_naming_the_setting(tmp_path: Path, mock_provider, which: str, flag: str) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        ports = {"port": free_port(), "admin_port": free_port(), which: busy}
        config = default_config(mock_provider.url, server={**ports, "admin_host": "127.0.0.1"})
        path = tmp_path / "sidecar.yaml"
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run([SCRIPT, "serve", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"llm-sidecar: cannot listen on 127.0.0.1:{busy}: address already in use; "
        f"change server.{which} (or serve {flag}) or stop what holds the port"
    ]


@pytest.mark.parametrize("flag", ["--port", "--admin-port"])
def test_a_busy_demo_port_names_the_demos_own_flag(flag: str) -> None:
    """The demo has no config file: its message names its own flag (8080 is often taken on a laptop)."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        ports = {"--port": free_port(), "--admin-port": free_port(), flag: busy}
        result = subprocess.run(
            [SCRIPT, "demo", *(str(a) for item in ports.items() for a in item)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"llm-sidecar: cannot listen on 127.0.0.1:{busy}: address already in use; "
        f"change demo {flag} or stop what holds the port"
    ]


def test_a_busy_mock_provider_port_is_one_line_naming_the_flag() -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        result = subprocess.run(
            [SCRIPT, "mock-provider", "--host", "127.0.0.1", "--port", str(busy)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"llm-sidecar: cannot listen on 127.0.0.1:{busy}: address already in use; "
        "change mock-provider --port or stop what holds the port"
    ]


@pytest.mark.parametrize("spec", ["m:latency_ms=abc", "m:no_such=1", "m:latency"])
def test_a_bad_mock_behaviour_is_a_usage_error(spec: str) -> None:
    result = subprocess.run(
        [SCRIPT, "mock-provider", "--port", str(free_port()), "--behaviour", spec],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"argument --behaviour: {spec!r}" in result.stderr and "MODEL:KEY=VALUE" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["mock-provider", "--port", "99999"],
        ["webhook", "--no-kube", "--tls-cert-file", "x.crt", "--tls-key-file", "x.key", "--port", "-1"],
        ["serve", "--config", "sidecar.yaml", "--port", "70000"],
        ["demo", "--admin-port", "65536"],
    ],
    ids=["mock-provider", "webhook", "serve", "demo"],
)
def test_a_port_out_of_range_is_a_usage_error_naming_the_flag(command: list[str]) -> None:
    # bind() raised OverflowError (a traceback) in mock-provider and webhook; serve and demo named
    # server.port / server.admin_port, keys the user never wrote.
    result = subprocess.run([SCRIPT, *command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    flag, value = command[-2:]
    assert f"argument {flag}: {value} is not a port (0-65535)" in result.stderr.splitlines()[-1]


def test_the_demo_on_one_port_twice_names_its_flags() -> None:
    # The demo has no config file, and said "server.admin_port: the proxy's port (server.port) too".
    port = str(free_port())
    result = subprocess.run(
        [SCRIPT, "demo", "--port", port, "--admin-port", port], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "llm-sidecar: error: demo: --admin-port is --port too; give each its own"
