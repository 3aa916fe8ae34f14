"""``ConcurrentRouter``: the router as a library, against the mock provider with one endpoint failing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy import ConcurrentRouter, ModelEndpoint
from proxy.errors import UpstreamBroken, UpstreamStatus
from proxy.router.config import RouterConfig
from tests.servers import LLM_SIDECAR, PROVIDER_KEY, MockProvider, answers, start_on_free_ports


def test_model_endpoint_infers_dialect_and_key(monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    openai_endpoint = ModelEndpoint(name="gpt-4", url="https://api.openai.com/v1/chat/completions", max_concurrent=5)
    claude = ModelEndpoint(name="claude-3", url="https://api.anthropic.com/v1/messages", max_concurrent=3)
    assert (openai_endpoint.dialect, openai_endpoint.url, openai_endpoint.model) == (
        "openai",
        "https://api.openai.com/v1",
        "gpt-4",
    )
    assert (claude.dialect, claude.url, claude.max_concurrent) == ("anthropic", "https://api.anthropic.com", 3)
    assert claude.api_key.reveal() == "sk-ant-from-env" and "sk-ant" not in repr(claude)


def test_route_request_falls_back(mock_provider: MockProvider) -> None:
    mock_provider.set_behaviour("gpt-4", status=500)
    endpoints = [
        ModelEndpoint(
            name="gpt-4", url=mock_provider.url + "/v1/chat/completions", api_key=PROVIDER_KEY, max_concurrent=5
        ),
        ModelEndpoint(name="claude-3", url=mock_provider.url + "/v1/messages", api_key=PROVIDER_KEY, max_concurrent=3),
    ]

    async def main() -> tuple[list[dict], list[str], dict]:
        async with ConcurrentRouter(
            endpoints, settings=RouterConfig(backoff={"base": 0.01, "max": 0.02}, health={"enabled": False})
        ) as router:
            results = await asyncio.gather(
                *(
                    router.route_request(f"Explain quantum computing {i}", preferred_model="gpt-4", max_tokens=50)
                    for i in range(8)
                )
            )
            pieces = [p async for p in router.stream_request("Stream it", preferred_model="gpt-4")]
            return list(results), pieces, router.status()

    results, pieces, status = asyncio.run(main())
    for result in results:
        assert result["model"] == "claude-3" and result["upstream_model"] == "claude-3"
        assert len(result["response"].split()) == 20 and result["usage"]["output_tokens"] == 20
        assert result["finish_reason"] == "stop"
    # The preferred endpoint was tried first while its circuit was closed (5 failures open it).
    assert results[0]["attempts"][0]["endpoint"] == "gpt-4" and results[0]["attempts"][0]["status"] == 500
    assert len("".join(pieces).split()) == 20
    assert mock_provider.stats()["max_in_flight"]["claude-3"] <= 3
    assert {e["name"]: e["circuit"] for e in status["endpoints"]}["gpt-4"] == "open"


def test_route_request_raises_when_all_fail(mock_provider: MockProvider) -> None:
    mock_provider.set_behaviour("only", status=400)

    async def main() -> None:
        router = ConcurrentRouter([ModelEndpoint(name="only", url=mock_provider.url + "/v1", api_key=PROVIDER_KEY)])
        try:
            await router.route_request("x")
        finally:
            await router.close()

    with pytest.raises(UpstreamStatus) as info:
        asyncio.run(main())
    assert info.value.status == 400


def test_stream_request_raises_on_a_stream_cut_short(mock_provider: MockProvider) -> None:
    """A stream that ends cleanly before ``[DONE]`` is not a whole answer: the iteration raises."""
    mock_provider.set_behaviour("short", truncate=1)

    async def main() -> list[str]:
        pieces: list[str] = []
        async with ConcurrentRouter(
            [ModelEndpoint(name="short", url=mock_provider.url + "/v1", api_key=PROVIDER_KEY)]
        ) as router:
            async for piece in router.stream_request("Stream it"):
                pieces.append(piece)
        return pieces

    with pytest.raises(UpstreamBroken, match="before its end marker"):
        asyncio.run(main())


#: A script as users write them: one module-level router, ``asyncio.run`` per question.
RUN_PER_CALL = """
import asyncio, json, os, sys

from proxy import ConcurrentRouter, ModelEndpoint

url, runs = sys.argv[1], int(sys.argv[2])
router = ConcurrentRouter([
    ModelEndpoint(name="gpt-4", url=url + "/v1", api_key="sk-test", max_concurrent=2),
    ModelEndpoint(name="claude-3", url=url + "/v1/messages", api_key="sk-test", max_concurrent=2),
])


async def ask(n):
    answer = await router.route_request(f"question {n}", preferred_model="gpt-4")
    streamed = [piece async for piece in router.stream_request(f"stream {n}", preferred_model="claude-3")]
    return answer["model"], bool(answer["response"]), bool(streamed)


fds = []
for n in range(runs):
    assert asyncio.run(ask(n)) == ("gpt-4", True, True)
    fds.append(len(os.listdir("/proc/self/fd")))
asyncio.run(router.close())
print(json.dumps({"fds": fds}))
"""


@pytest.fixture
def mock_process(tmp_path: Path) -> Iterator[str]:
    """``llm-sidecar mock-provider`` on a free port, as its own process: its sockets are not the test's."""
    process, (port,) = start_on_free_ports(
        lambda port: [LLM_SIDECAR, "mock-provider", "--host", "127.0.0.1", "--port", str(port)],
        lambda port: answers(f"http://127.0.0.1:{port}/_mock/stats"),
        tmp_path / "mock.log",
    )
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


def test_one_router_serves_many_event_loops(mock_process: str, tmp_path: Path) -> None:
    """``asyncio.run`` per call with one module-level router: every run is answered, each loop's
    session closes with its loop (no warning), and the open file descriptors do not grow."""
    script = tmp_path / "script.py"
    script.write_text(RUN_PER_CALL)
    done = subprocess.run(
        [sys.executable, "-W", "default::ResourceWarning", str(script), mock_process, "40"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fds = json.loads(done.stdout)["fds"]
    assert len(fds) == 40
    assert max(fds) <= fds[0] + 2, fds  # one more socket (or two) per run before: 40 runs, 40 more
    assert "Unclosed" not in done.stderr and "ResourceWarning" not in done.stderr, done.stderr[-3000:]
