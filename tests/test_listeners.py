"""Every listener is bounded: a connection flood or a slow-loris never takes the pod's calls down.

The sidecar runs as ``llm-sidecar serve`` with the 1,024 file descriptors many nodes
give a container; 1,100 connections held open against one of its ports must not
starve the app's calls, nor the kubelet's probes.
"""

from __future__ import annotations

import http.client
import json
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import SidecarProcess, default_config

FLOOD = 1100


def _nofile_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


@pytest.fixture
def served(tmp_path: Path, mock_provider) -> Iterator[SidecarProcess]:
    """The sidecar with 1,024 descriptors."""
    sidecar = SidecarProcess(
        default_config(mock_provider.url, server={"drain_timeout": 2}), tmp_path, preexec_fn=_nofile_1024
    )
    try:
        yield sidecar
    finally:
        sidecar.stop()


def _flood(port: int, head: bytes = b"") -> list[socket.socket]:
    """``FLOOD`` connections to ``port``, each having sent ``head`` (a slow-loris sends part of one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * FLOOD)), hard))
    sockets = []
    for _ in range(FLOOD):
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
            if head:
                sock.sendall(head)
        except OSError:
            sock.close()  # the listener's backlog is full: the flood is as big as it gets
            continue
        sockets.append(sock)
    return sockets


def _calls_go_through(port: int, admin_port: int) -> None:
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=10)
    for _ in range(10):
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert answer.choices[0].message.content
    assert httpx.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("target", ["admin", "proxy"])
@pytest.mark.parametrize("head", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "], ids=["idle", "slow-loris"])
def test_a_connection_flood_does_not_starve_the_calls(served: SidecarProcess, target: str, head: bytes) -> None:
    port, admin_port, process = served.port, served.admin_port, served.process
    flood = _flood(admin_port if target == "admin" else port, head)
    try:
        assert len(flood) >= 1000
        _calls_go_through(port, admin_port)
    finally:
        for sock in flood:
            sock.close()
    assert process.poll() is None


def test_the_descriptor_budget_is_logged_and_the_soft_limit_raised(tmp_path: Path, mock_provider) -> None:
    def soft_512_hard_2048() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 2048))

    config = default_config(mock_provider.url, server={"drain_timeout": 1})
    sidecar = SidecarProcess(config, tmp_path, preexec_fn=soft_512_hard_2048)
    try:
        limits = Path(f"/proc/{sidecar.process.pid}/limits").read_text()
        assert any(
            line.startswith("Max open files") and line.split()[3:5] == ["2048", "2048"] for line in limits.splitlines()
        )
    finally:
        sidecar.stop()
    err = sidecar.log.read_text()
    budget = next(json.loads(line) for line in err.splitlines() if '"listening"' in line)
    # (2048 - 64 admin - 64 reserved) / 2: each call may hold an upstream connection too.
    assert budget["fd_limit"] == 2048 and budget["proxy_max_connections"] == 960
    assert budget["admin_max_connections"] == 64


def test_request_heads_are_bounded_and_parser_errors_are_one_json_line(served: SidecarProcess) -> None:
    port, admin_port = served.port, served.admin_port
    secret = "sk-leaked-in-a-bad-header-0123"
    heads = [
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /v1/models?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret.encode() + b"\x01\r\n\r\n",
    ]
    for listener in (port, admin_port):
        for head in heads:
            with socket.create_connection(("127.0.0.1", listener), timeout=5) as sock:
                sock.sendall(head)
                assert sock.recv(64).startswith((b"HTTP/1.0 400", b"HTTP/1.1 400"))
    served.stop()
    err = served.log.read_text()
    lines = err.splitlines()
    assert lines, "nothing was logged"
    for line in lines:
        json.loads(line)  # every line is one JSON object
    errors = [json.loads(line) for line in lines if "Error handling request" in line]
    assert len(errors) == 2 * len(heads)
    assert {e["error"] for e in errors} >= {"LineTooLong", "BadHttpMessage"}
    assert secret not in err and "aaaa" not in err


def test_past_the_cap_idle_connections_make_room_and_busy_ones_are_kept(make_sidecar, mock_provider) -> None:
    sidecar = make_sidecar(server={"port": 0, "admin_port": 0, "admin_host": "127.0.0.1", "max_connections": 2})
    port = sidecar.servers.port
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=100, chunks=30)  # 3 s streams
    body = b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    busy = socket.create_connection(("127.0.0.1", port), timeout=10)
    busy.sendall(request)
    assert busy.recv(64).startswith(b"HTTP/1.1 200")
    # A third connection: the idle one is closed to make room, the busy stream goes on.
    third = socket.create_connection(("127.0.0.1", port), timeout=10)
    third.sendall(request)
    assert third.recv(64).startswith(b"HTTP/1.1 200")
    assert idle.recv(64) == b""  # closed by the sidecar
    # A fourth, with both connections in the middle of a call: refused at once.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as fourth:
        fourth.sendall(request)
        try:
            assert fourth.recv(64) == b""
        except ConnectionResetError:
            pass
    cap = sidecar.servers._runner.cap
    assert (cap.evicted, cap.refused) == (1, 1)
    for sock in (idle, busy, third):
        sock.close()


def test_a_body_that_stops_coming_is_a_408_in_the_callers_dialect(make_sidecar, mock_provider) -> None:
    # The head's timeout ends once the head is in. A client that then stalled its body held its
    # connection for good, and a connection in a request is never evicted past the cap: two such
    # clients took a sidecar capped at two connections away from every other caller.
    server = {"port": 0, "admin_port": 0, "admin_host": "127.0.0.1", "keepalive_timeout": 1, "max_connections": 2}
    sidecar = make_sidecar(server=server)
    port = sidecar.servers.port
    stalled = {path: socket.create_connection(("127.0.0.1", port), timeout=10) for path in ("/v1/", "/anthropic/v1/")}
    try:
        for path, sock in stalled.items():
            operation = b"messages" if path.startswith("/anthropic") else b"chat/completions"
            sock.sendall(b"POST %s%s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{" % (path.encode(), operation))
        for path, sock in stalled.items():
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 408
            error = json.loads(response.read())
            if path.startswith("/anthropic"):
                assert error["type"] == "error" and error["error"]["type"] == "timeout_error"
            else:
                assert error["error"]["type"] == "timeout_error"
        # Answered, they are no longer in a request: a new caller gets in.
        answer = sidecar.openai().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
        assert answer.choices[0].message.content
    finally:
        for sock in stalled.values():
            sock.close()
    assert mock_provider.calls() == 1
