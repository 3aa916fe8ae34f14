"""Every failure gets a defined answer in the caller's dialect, and the proxy keeps serving."""

from __future__ import annotations

import socket
import time

import anthropic
import httpx
import openai
import pytest

from tests.cache.conftest import cache_config
from tests.servers import Sidecar
from tests.telemetry.conftest import Scrape
from tests.waiting import wait_until


def test_malformed_json_and_missing_model(sidecar: Sidecar) -> None:
    response = httpx.post(sidecar.openai_base + "/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = httpx.post(sidecar.anthropic_base + "/v1/messages", json={"messages": []})
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "you must provide a model parameter"},
    }
    with pytest.raises(openai.BadRequestError):
        sidecar.openai().chat.completions.create(model="", messages=[])


def test_unknown_model_group(sidecar: Sidecar) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sidecar.openai().chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "x"}])
    assert "gpt-99" in info.value.message
    with pytest.raises(anthropic.NotFoundError):
        sidecar.anthropic().messages.create(
            model="claude-99", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )


def test_body_over_the_limit(make_sidecar) -> None:
    sidecar = make_sidecar(server={"max_body_bytes": 2048})
    big = "x" * 4096
    with pytest.raises(openai.APIStatusError) as info:
        sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": big}])
    assert info.value.status_code == 413
    with pytest.raises(anthropic.APIStatusError) as info2:
        sidecar.anthropic().messages.create(
            model="claude-sonnet", max_tokens=5, messages=[{"role": "user", "content": big}]
        )
    assert info2.value.status_code == 413
    assert info2.value.body["error"]["type"] == "request_too_large"


def test_upstream_connect_error_is_502(make_sidecar, refused_port) -> None:
    dead = refused_port.url
    sidecar = make_sidecar(
        model_groups={
            "gpt-4o-mini": {"endpoints": [{"name": "dead", "url": dead + "/v1"}]},
            "claude-sonnet": {"endpoints": [{"name": "dead-a", "url": dead, "dialect": "anthropic"}]},
        }
    )
    with pytest.raises(openai.InternalServerError) as info:
        sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502
    with pytest.raises(anthropic.APIStatusError) as info2:
        sidecar.anthropic().messages.create(
            model="claude-sonnet", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert info2.value.status_code == 502


@pytest.mark.parametrize(
    ("timeouts", "behaviour", "stream"),
    [
        ({"first_byte": 0.3}, {"latency_ms": 5000}, False),  # no headers in time
        ({"first_byte": 0.3}, {"ttft_ms": 5000}, True),  # headers, but no first token in time
        ({"total": 0.5}, {"latency_ms": 5000}, False),
    ],
)
def test_upstream_timeouts_are_504(make_sidecar, mock_provider, timeouts, behaviour, stream) -> None:
    mock_provider.set_behaviour("mock-gpt", **behaviour)
    groups = {
        "gpt-4o-mini": {
            "endpoints": [{"name": "slow", "url": mock_provider.url + "/v1", "model": "mock-gpt", "timeouts": timeouts}]
        }
    }
    sidecar = make_sidecar(model_groups=groups)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        sidecar.openai().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=stream
        )
    assert info.value.status_code == 504
    # Cut by the timeout: far sooner than the upstream's 5 s, with room for a loaded machine.
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    ("behaviour", "phase"),
    [({"latency_ms": 5000}, "connect"), ({"ttft_ms": 5000}, "first byte")],
    ids=["no-head", "no-first-token"],
)
def test_a_first_byte_timeout_names_its_phase_in_the_callers_dialect(
    make_sidecar, mock_provider, behaviour, phase
) -> None:
    # The first-byte clock runs from the attempt's start: over the wait for the answer's head
    # (phase "connect"), then over the wait for a stream's first token (phase "first byte").
    quick = {"first_byte": 0.3}
    for model in ("mock-gpt", "mock-claude"):
        mock_provider.set_behaviour(model, **behaviour)
    sidecar = make_sidecar(
        model_groups={
            "gpt-4o-mini": {
                "endpoints": [{"name": "a", "url": mock_provider.url + "/v1", "model": "mock-gpt", "timeouts": quick}]
            },
            "claude-sonnet": {
                "endpoints": [
                    {
                        "name": "b",
                        "url": mock_provider.url,
                        "dialect": "anthropic",
                        "model": "mock-claude",
                        "timeouts": quick,
                    }
                ]
            },
        }
    )
    message = f"upstream timed out ({phase})"
    ask = {"stream": True, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(sidecar.openai_base + "/chat/completions", json={"model": "gpt-4o-mini", **ask}, timeout=10)
    assert response.status_code == 504
    assert response.json() == {"error": {"message": message, "type": "timeout_error", "param": None, "code": None}}
    response = httpx.post(sidecar.anthropic_base + "/v1/messages", json={"model": "claude-sonnet", **ask}, timeout=10)
    assert response.status_code == 504
    assert response.json() == {"type": "error", "error": {"type": "timeout_error", "message": message}}


def test_idle_timeout_mid_stream_ends_with_error_event(make_sidecar, mock_provider) -> None:
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=1000)
    groups = {
        "gpt-4o-mini": {
            "endpoints": [
                {"name": "idle", "url": mock_provider.url + "/v1", "model": "mock-gpt", "timeouts": {"idle": 0.3}}
            ]
        }
    }
    sidecar = make_sidecar(model_groups=groups)
    stream = sidecar.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="idle"):
        list(stream)


def _one_endpoint(make_sidecar, mock_provider, timeouts: dict[str, float]) -> Sidecar:
    endpoint = {"name": "slow", "url": mock_provider.url + "/v1", "model": "mock-gpt", "timeouts": timeouts}
    return make_sidecar(model_groups={"gpt-4o-mini": {"endpoints": [endpoint]}})


def test_idle_clock_starts_again_with_every_chunk(make_sidecar, mock_provider) -> None:
    # 12 chunks 150 ms apart: the stream lasts ~1.7 s, far past the 0.5 s idle, but no gap reaches it.
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=150, chunks=12)
    sidecar = _one_endpoint(make_sidecar, mock_provider, {"idle": 0.5})
    stream = sidecar.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
    )
    words = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(words) == 12


@pytest.mark.parametrize(
    ("chunk_delay_ms", "idle"),
    [(200, 1.0), (5000, 10.0)],
    ids=["chunks-within-idle", "deadline-mid-wait"],
)
def test_total_timeout_mid_stream_ends_with_error_event(make_sidecar, mock_provider, chunk_delay_ms, idle) -> None:
    # The whole answer would take 4 s or more; the total timeout cuts it, between chunks
    # that keep coming within the idle timeout, or in the middle of a long wait for one.
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=chunk_delay_ms, chunks=20)
    sidecar = _one_endpoint(make_sidecar, mock_provider, {"idle": idle, "total": 0.8})
    stream = sidecar.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received = []
    started = time.monotonic()
    with pytest.raises(openai.APIError, match=r"timed out \(total\)"):
        for chunk in stream:
            received.append(chunk)
    assert 1 <= len(received) < 20
    assert time.monotonic() - started < 3.0


def test_a_client_that_stops_reading_is_not_an_idle_upstream(make_sidecar, mock_provider) -> None:
    """The idle timeout bounds waits for the upstream's bytes only: time the relay spends
    blocked writing to a client that reads slowly is not the upstream's idleness."""
    # ~600 kB at once: more than the sockets and the write buffers hold, so the relay's
    # writes block while the client does not read.
    mock_provider.set_behaviour("mock-gpt", chunks=20000)
    sidecar = _one_endpoint(make_sidecar, mock_provider, {"idle": 0.3})
    body = b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", sidecar.servers.port))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        # Not reading while the relay is held up, for three idle timeouts: the call must still be in
        # flight at the sidecar all that time (else the buffers took it all and nothing was tested).
        held_from = time.monotonic()

        def held_up_past_the_idle_timeout() -> bool:
            metrics = Scrape(httpx.get(sidecar.admin_url + "/metrics", timeout=5).text)
            assert metrics.value("llm_sidecar_calls_in_flight") == 1, "the call ended while unread"
            return time.monotonic() - held_from > 3 * 0.3

        wait_until(held_up_past_the_idle_timeout, what="the relay held up by the client for 3 idle timeouts")
        data = bytearray()
        while piece := sock.recv(65536):
            data += piece
    assert data.rstrip(b"\r\n0").endswith(b"data: [DONE]") and b"timed out" not in data


def test_upstream_error_status_passes_through(sidecar: Sidecar, mock_provider) -> None:
    mock_provider.set_behaviour("mock-gpt", status=429, retry_after=7)
    with pytest.raises(openai.RateLimitError) as info:
        sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.message.endswith("mock error 429")
    mock_provider.set_behaviour("mock-claude", status=529)
    with pytest.raises(anthropic.APIStatusError) as info2:
        sidecar.anthropic().messages.create(
            model="claude-sonnet", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert info2.value.status_code == 529


def test_upstream_dies_mid_stream(sidecar: Sidecar, mock_provider) -> None:
    mock_provider.set_behaviour("mock-gpt", cut_after=5)
    stream = sidecar.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError, match="cut|closed"):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 5  # the role chunk and four words, then the error event
    mock_provider.set_behaviour("mock-claude", cut_after=4)
    with pytest.raises(anthropic.APIStatusError):
        with sidecar.anthropic().messages.stream(
            model="claude-sonnet", max_tokens=50, messages=[{"role": "user", "content": "x"}]
        ) as s:
            list(s.text_stream)
    # ... and the proxy keeps serving.
    mock_provider.set_behaviour("mock-gpt")
    assert sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])


def test_client_disconnect_cancels_upstream(sidecar: Sidecar, mock_provider) -> None:
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=200, chunks=50)
    body = b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
    with socket.create_connection(("127.0.0.1", sidecar.servers.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and mock_provider.stats()["in_flight"].get("mock-gpt"):
        time.sleep(0.05)
    # The mock would stream for 10 s; the upstream request was cancelled at once.
    assert mock_provider.stats()["in_flight"]["mock-gpt"] == 0


def test_unknown_path_in_dialect_format(sidecar: Sidecar) -> None:
    assert httpx.get(sidecar.openai_base + "/fine_tuning/jobs").json()["error"]["type"] == "not_found_error"
    assert httpx.post(sidecar.anthropic_base + "/v1/complete", json={}).json()["type"] == "error"


def test_an_unknown_path_is_not_an_unknown_model(sidecar: Sidecar) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sidecar.openai().fine_tuning.jobs.list()
    assert info.value.code is None and "no such API path" in info.value.message
    with pytest.raises(openai.NotFoundError) as model:
        sidecar.openai().chat.completions.create(model="no-such-group", messages=[{"role": "user", "content": "x"}])
    assert model.value.code == "model_not_found"


def test_an_upstream_that_closes_mid_stream_is_reported_as_such(sidecar: Sidecar, mock_provider) -> None:
    mock_provider.set_behaviour("mock-gpt", cut_after=3)
    stream = sidecar.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError) as info:
        list(stream)
    assert "mid-stream" in info.value.message and "idle" not in info.value.message


def test_upstream_error_keeps_the_sidecars_request_id(sidecar: Sidecar, mock_provider) -> None:
    mock_provider.set_behaviour("mock-gpt", status=500)
    response = httpx.post(
        sidecar.openai_base + "/chat/completions",
        headers={"x-request-id": "ours-1"},
        json={"model": "gpt-4o-mini", "messages": []},
    )
    assert response.status_code == 500 and response.headers["x-request-id"] == "ours-1"


def test_upstream_redirect_is_502_and_never_reaches_the_client(sidecar: Sidecar, mock_provider) -> None:
    mock_provider.set_behaviour("mock-gpt", status=307)
    with pytest.raises(openai.InternalServerError) as info:
        sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and "redirect" in info.value.message
    assert "location" not in info.value.response.headers


def test_malformed_call_to_a_translated_endpoint_is_400(make_sidecar, mock_provider) -> None:
    groups = {
        "gpt-4o-mini": {
            "endpoints": [
                {
                    "name": "claude",
                    "url": mock_provider.url,
                    "dialect": "anthropic",
                    "model": "mock-claude",
                    "api_key": "k",
                }
            ]
        }
    }
    sidecar = make_sidecar(model_groups=groups)
    for body in ({"messages": ["hi"]}, {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}):
        response = httpx.post(sidecar.openai_base + "/chat/completions", json={"model": "gpt-4o-mini", **body})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert mock_provider.calls() == 0


def test_an_unexpected_failure_still_answers_in_the_dialect(sidecar: Sidecar, monkeypatch) -> None:
    import proxy.pipeline

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(proxy.pipeline, "relay", broken)
    response = httpx.post(
        sidecar.anthropic_base + "/v1/messages",
        json={"model": "claude-sonnet", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 500
    assert response.json() == {
        "type": "error",
        "error": {"type": "api_error", "message": "the sidecar failed to handle this call"},
    }
    monkeypatch.undo()
    assert (
        sidecar.anthropic()
        .messages.create(model="claude-sonnet", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        .content
    )


def test_a_client_that_stops_reading_frees_the_slot_after_the_total_timeout(make_sidecar, mock_provider) -> None:
    groups = {
        "gpt-4o-mini": {
            "endpoints": [
                {
                    "name": "m",
                    "url": mock_provider.url + "/v1",
                    "model": "mock-gpt",
                    "max_concurrent": 1,
                    # Long enough for the mock to make its 60,000 frames and send the first on a loaded machine.
                    "timeouts": {"total": 4.0},
                }
            ]
        }
    }
    sidecar = make_sidecar(model_groups=groups)
    mock_provider.set_behaviour("mock-gpt", chunks=60000)  # ~14 MB of frames: more than the socket buffers hold
    body = b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", sidecar.servers.port))
        stalled.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert stalled.recv(64).startswith(b"HTTP/1.1 200")
        # ...and reads no more. The endpoint's one slot must come free once the total timeout
        # (4 s) and the grace for last words (5 s) have passed, while this socket stays open.
        mock_provider.set_behaviour("mock-gpt")
        deadline = time.monotonic() + 30
        while True:
            status = httpx.get(sidecar.admin_url + "/status").json()
            if status["groups"]["gpt-4o-mini"]["endpoints"][0]["in_flight"] == 0:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        reply = sidecar.openai().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "y"}]
        )
        assert reply.choices[0].message.content
    # The errors counter names it, as the access line does; it was counted as "other".
    errors = "llm_sidecar_call_errors_total"

    def counted() -> Scrape | None:
        metrics = Scrape(httpx.get(sidecar.admin_url + "/metrics", timeout=5).text)
        return metrics if metrics.value(errors) else None

    metrics = wait_until(counted, interval=0.1, what="the stalled call counted")
    assert metrics.value(errors, model_group="gpt-4o-mini", error_type="client_stalled") == 1
    assert metrics.value(errors) == 1


def test_an_sdk_given_the_sidecar_without_its_prefix_is_told_the_base_url(sidecar: Sidecar) -> None:
    # The two usual slips: OPENAI_BASE_URL without /v1, and ANTHROPIC_BASE_URL without /anthropic
    # (the provider's own has no path). Each SDK gets its own error shape and the URL to set.
    root = sidecar.openai_base.removesuffix("/v1")
    with pytest.raises(openai.NotFoundError) as info:
        openai.OpenAI(base_url=root, api_key="x", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["type"] == "not_found_error" and f"{root}/v1" in info.value.message
    with pytest.raises(anthropic.NotFoundError) as sent:
        anthropic.Anthropic(base_url=root, api_key="x", max_retries=0).messages.create(
            model="claude-sonnet", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    error = sent.value.body
    assert error["type"] == "error" and error["error"]["type"] == "not_found_error"
    assert f"{root}/anthropic" in error["error"]["message"]
    # Any other path outside both prefixes is a 404 in JSON too, not aiohttp's text.
    answer = httpx.get(root + "/healthz")
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("stream", ["yes", 1, 0, "true", [], {}])
def test_a_stream_that_is_not_a_boolean_is_a_400_in_the_callers_dialect(make_sidecar, mock_provider, stream) -> None:
    # A provider refuses such a body; the sidecar did not look, and answered it as not streaming
    # (from the cache too). null stays "not streaming", as OpenAI takes it.
    sidecar = make_sidecar(config=cache_config(mock_provider.url))
    ask = {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    for model, base, path in (
        ("gpt-4o-mini", sidecar.openai_base, "/chat/completions"),
        ("claude-sonnet", sidecar.anthropic_base, "/v1/messages"),
    ):
        primed = httpx.post(base + path, json={"model": model, **ask, "stream": None})
        assert primed.status_code == 200, primed.text
    calls = mock_provider.calls()
    response = httpx.post(
        sidecar.openai_base + "/chat/completions", json={"model": "gpt-4o-mini", **ask, "stream": stream}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "stream")
    assert "true, false or null" in error["message"]
    response = httpx.post(
        sidecar.anthropic_base + "/v1/messages", json={"model": "claude-sonnet", **ask, "stream": stream}
    )
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "stream" in response.json()["error"]["message"]
    assert mock_provider.calls() == calls
