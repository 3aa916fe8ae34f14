"""SIGTERM drain of the installed ``llm-sidecar serve``: one clock, cut streams told so, plain-container mode."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.servers import SidecarProcess, default_config


def _serve(tmp_path: Path, mock_url: str, drain_timeout: float, **env: str) -> SidecarProcess:
    config = default_config(mock_url, server={"drain_timeout": drain_timeout})
    return SidecarProcess(config, tmp_path, env={**os.environ, **env})


def _wait_not_ready(admin_port: int) -> None:
    deadline = time.monotonic() + 10
    while httpx.get(f"http://127.0.0.1:{admin_port}/readyz").status_code == 200:
        assert time.monotonic() < deadline, "SIGTERM did not start the drain"
        time.sleep(0.02)


def test_drain_ends_by_its_timeout_and_cut_streams_get_an_error_event(tmp_path: Path, mock_provider) -> None:
    drain_timeout = 3.0
    sidecar = _serve(tmp_path, mock_provider.url, drain_timeout)
    process, port = sidecar.process, sidecar.port
    # 100 chunks 200 ms apart: 20 s of answer, far past the drain timeout.
    for model in ("mock-gpt", "mock-claude"):
        mock_provider.set_behaviour(model, chunk_delay_ms=200, chunks=100)
    outcomes: dict[str, Any] = {}

    def read_openai(stream: Any) -> None:
        try:
            for _ in stream:
                pass
            outcomes["openai"] = "clean end"
        except openai.APIError as error:
            outcomes["openai"] = error

    def read_anthropic(stream: Any) -> None:
        try:
            for _ in stream:
                pass
            outcomes["anthropic"] = "clean end"
        except anthropic.APIError as error:
            outcomes["anthropic"] = error

    try:
        oa = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        an = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}/anthropic", api_key="x", max_retries=0)
        s1 = oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True)
        s2 = an.messages.create(
            model="claude-sonnet", max_tokens=500, messages=[{"role": "user", "content": "x"}], stream=True
        )
        readers = [
            threading.Thread(target=read_openai, args=(s1,)),
            threading.Thread(target=read_anthropic, args=(s2,)),
        ]
        for reader in readers:
            reader.start()
        process.send_signal(signal.SIGTERM)
        process.wait(drain_timeout + 10)
        for reader in readers:
            reader.join(10)
    finally:
        if process.poll() is None:
            process.kill()
    # The drain on the sidecar's own clock, from its "draining" line to its "stopped" line: the
    # signal's delivery and the interpreter's exit, slow on a loaded machine, are no part of it.
    events = {
        e["msg"]: e["ts"]
        for e in map(json.loads, sidecar.log.read_text().splitlines())
        if e.get("msg") in ("draining", "stopped")
    }
    took = events["stopped"] - events["draining"]
    assert took < drain_timeout + 1.0, f"the drain took {took:.1f} s for a timeout of {drain_timeout} s"
    for dialect in ("openai", "anthropic"):
        assert isinstance(outcomes.get(dialect), Exception), f"{dialect}: {outcomes.get(dialect)}"
        assert "shutting down" in str(outcomes[dialect])


def test_plain_container_mode_keeps_serving_the_app_until_it_is_idle(tmp_path: Path, mock_provider) -> None:
    sidecar = _serve(tmp_path, mock_provider.url, 30, LLM_SIDECAR_MODE="container")
    process, port, admin_port = sidecar.process, sidecar.port, sidecar.admin_port
    try:
        process.send_signal(signal.SIGTERM)
        _wait_not_ready(admin_port)  # readiness turns 503 at once...
        sigterm_seen = time.monotonic()
        # ... while the app's own shutdown calls, on new connections, are still served.
        for _ in range(3):
            with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0) as client:
                assert client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "bye"}]
                )
            time.sleep(1)  # not a wait: the app's shutdown pauses between calls, with no connection open
        # With no app connection left, the drain ends after its idle window, long before 30 s.
        process.wait(20)
        assert time.monotonic() - sigterm_seen < 15
    finally:
        if process.poll() is None:
            process.kill()


def test_native_sidecar_mode_stops_accepting_at_once(tmp_path: Path, mock_provider) -> None:
    """Without the plain-container mode, the app has already exited: no one is left to serve."""
    sidecar = _serve(tmp_path, mock_provider.url, 30)
    process, port = sidecar.process, sidecar.port
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(20)
    assert time.monotonic() - started < 5
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models")


def test_a_call_still_waiting_for_its_upstream_when_the_drain_ends_gets_an_error(tmp_path: Path, mock_provider) -> None:
    sidecar = _serve(tmp_path, mock_provider.url, 3)
    process, port = sidecar.process, sidecar.port
    mock_provider.set_behaviour("mock-gpt", latency_ms=20_000)  # the answer's head would come in 20 s
    outcome: dict[str, Any] = {}

    def call() -> None:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)
        try:
            outcome["answer"] = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        except openai.APIError as error:
            outcome["error"] = error

    caller = threading.Thread(target=call)
    try:
        caller.start()
        deadline = time.monotonic() + 10
        while not mock_provider.stats()["in_flight"].get("mock-gpt"):
            assert time.monotonic() < deadline, "the call did not reach the upstream"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        caller.join(10)
    finally:
        if process.poll() is None:
            process.kill()
    # An answer in its dialect saying why, not a connection that vanished.
    error = outcome.get("error")
    assert isinstance(error, openai.APIStatusError) and error.status_code == 503, (
        outcome,
        sidecar.log.read_text(),
    )
    assert "shutting down" in error.message


def test_coalesced_streams_cut_by_the_drain_are_told_why(tmp_path: Path, mock_provider) -> None:
    """The leader's stream and the identical call that follows it end with the drain's own error."""
    sidecar = _serve(tmp_path, mock_provider.url, 3.0)
    process, port, admin_port = sidecar.process, sidecar.port, sidecar.admin_port
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=200, chunks=100)  # 20 s of answer
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "temperature": 0,  # cacheable, so the second call follows
        "messages": [{"role": "user", "content": "drained together"}],
    }
    results: dict[str, tuple[str, bytes]] = {}

    def call(name: str) -> None:
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30) as response:
            results[name] = (response.headers["x-llm-sidecar-cache"], response.read())

    def in_flight() -> float:
        metrics = httpx.get(f"http://127.0.0.1:{admin_port}/metrics").text
        return float(
            next(line.split()[-1] for line in metrics.splitlines() if line.startswith("llm_sidecar_calls_in_flight"))
        )

    callers = [threading.Thread(target=call, args=(name,)) for name in ("first", "second")]
    try:
        callers[0].start()
        deadline = time.monotonic() + 20
        while mock_provider.calls() < 1:
            assert time.monotonic() < deadline, "the first call did not reach the provider"
            time.sleep(0.02)
        callers[1].start()
        while in_flight() < 2:
            assert time.monotonic() < deadline, "the second call did not join the first"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        for caller in callers:
            caller.join(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert mock_provider.calls() == 1
    assert sorted(status for status, _ in results.values()) == ["coalesced", "miss"]
    for _, data in results.values():
        last = data.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        assert b'"error"' in last and b"shutting down" in last, last
        assert data.count(b'"error"') == 1
