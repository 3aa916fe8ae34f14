"""aiohttp client errors become proxy errors in one place, and none slips through."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from proxy import errors
from proxy.endpoint_config import Timeouts
from proxy.upstream import Upstream, map_client_error
from tests.waiting import wait_until


def _instances() -> list[BaseException]:
    """One instance of every public aiohttp client error class."""
    connection_key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, None, None, None, None)
    samples: list[BaseException] = []
    for name, cls in inspect.getmembers(aiohttp, inspect.isclass):
        if not issubclass(cls, aiohttp.ClientError):
            continue
        for args in ((connection_key, OSError(111, "refused")), (), ("message",), (None, ()), (b"a", b"b", "h", 1)):
            try:
                samples.append(cls(*args))
                break
            except Exception:
                continue
        else:
            pytest.fail(f"cannot build {name} for the test")
    return samples


@pytest.mark.parametrize("exc", _instances(), ids=lambda e: type(e).__name__)
def test_every_aiohttp_client_error_is_mapped(exc: BaseException) -> None:
    mapped = map_client_error(exc, "connect")
    assert isinstance(mapped, errors.UpstreamError)
    assert mapped.status in (502, 504)


def test_timeouts_are_504() -> None:
    assert isinstance(map_client_error(TimeoutError(), "first byte"), errors.UpstreamTimeout)
    assert map_client_error(TimeoutError(), "first byte").message == "upstream timed out (first byte)"


def test_anything_else_is_a_bug_not_an_upstream_error() -> None:
    with pytest.raises(TypeError):
        map_client_error(ValueError("x"), "connect")


def test_error_tree_statuses_and_types() -> None:
    for cls in (
        errors.BadRequest,
        errors.NotFound,
        errors.PayloadTooLarge,
        errors.Overloaded,
        errors.NoEndpointAvailable,
        errors.UpstreamConnectError,
        errors.UpstreamTimeout,
        errors.UpstreamBroken,
    ):
        error = cls("x")
        assert 400 <= error.status < 600 and error.type.endswith(("_error", "_large"))
        # Every class appears in the tree drawn in the module docstring.
        assert cls.__name__ in errors.__doc__


# ---------------------------------------------------------------- an upstream that echoes the key


def test_a_401_that_echoes_the_key_reaches_the_client_redacted(sidecar, mock_provider) -> None:
    import httpx

    from tests.servers import PROVIDER_KEY

    for model, path, group in (
        ("mock-gpt", "/chat/completions", "gpt-4o-mini"),
        ("mock-claude", "/v1/messages", "claude-sonnet"),
    ):
        mock_provider.set_behaviour(model, status=401, echo_key=1)
        base = sidecar.openai_base if model == "mock-gpt" else sidecar.anthropic_base
        response = httpx.post(
            base + path, json={"model": group, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        )
        assert response.status_code == 401
        assert PROVIDER_KEY not in response.text and PROVIDER_KEY not in str(response.headers)
        assert "invalid key [redacted]" in response.text
        assert response.headers["x-echo-key"] == "[redacted]"


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_that_echoes_the_key_reaches_the_client_redacted(sidecar, mock_provider, stream) -> None:
    import httpx

    from tests.servers import PROVIDER_KEY

    mock_provider.set_behaviour("mock-gpt", echo_key=1, chunks=3)
    # The mock writes a streamed key in two halves 50 ms apart: the sidecar reads it in two chunks.
    body = {"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(sidecar.openai_base + "/chat/completions", json=body)
    assert response.status_code == 200
    assert PROVIDER_KEY not in response.text
    assert PROVIDER_KEY[:8] not in response.text  # not even the half before the cut
    assert "[redacted]" in response.text
    if stream:
        words = sidecar.openai().chat.completions.create(**body)
        text = "".join(c.choices[0].delta.content or "" for c in words if c.choices)
        assert text.startswith("[redacted] ")


def test_redaction_holds_for_a_key_cut_at_any_byte() -> None:
    from multidict import CIMultiDict

    from proxy.upstream import Redactor

    key = "sk-a-key-0123456789"
    data = f'data: {{"text": "sk-a {key} sk-a-k"}}\n\n'.encode()
    for cut in range(len(data) + 1):
        for sent in ({"Authorization": f"Bearer {key}"}, {"x-api-key": key}):
            redactor = Redactor(CIMultiDict(sent))
            out = redactor.feed(data[:cut], False) + redactor.feed(data[cut:], False) + redactor.feed(b"", True)
            assert out == data.replace(key.encode(), b"[redacted]"), cut


def test_every_credential_header_that_can_go_upstream_is_redacted_from_the_answer() -> None:
    """The redactor reads the credential headers by name: the same names ``proxy.auth`` treats as credentials."""
    from multidict import CIMultiDict

    from proxy.auth import CREDENTIAL_HEADERS
    from proxy.upstream import Redactor

    key = "sk-a-key-0123456789"
    for name in CREDENTIAL_HEADERS:
        for spelled in (name, name.upper()):
            redactor = Redactor(CIMultiDict({spelled: key if name != "authorization" else f"Bearer {key}"}))
            assert redactor.whole(f"echo {key}".encode()) == b"echo [redacted]", spelled


# ---------------------------------------------------------------- which answers are streams

_CONTENT_TYPES = [
    "text/event-stream",
    "text/event-stream; charset=utf-8",
    "Text/Event-Stream;charset=UTF-8",
    " text/event-stream ",
    "text/event-streams",
    "text/event-stream-x; a=b",
    "application/json",
    "application/json; charset=utf-8",
    "",
]


@pytest.mark.parametrize("content_type", _CONTENT_TYPES)
async def test_an_answer_is_a_stream_when_aiohttp_names_its_media_type_an_event_stream(content_type: str) -> None:
    from aiohttp import web
    from aiohttp.helpers import parse_content_type

    from tests.servers import free_port

    expected = bool(content_type) and parse_content_type(content_type)[0] == "text/event-stream"

    async def answer(request: web.Request) -> web.Response:
        body = b"data: {}\n\n" if expected else b'{"usage": null}'
        return web.Response(body=body, headers={"Content-Type": content_type} if content_type else {})

    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    upstream = Upstream(Upstream.new_session())
    try:
        response = await upstream.open(
            f"http://127.0.0.1:{port}/", CIMultiDict({"Content-Type": "application/json"}), b"{}", Timeouts()
        )
        assert response.is_stream is expected
        response.close()
    finally:
        await upstream.session.close()
        await runner.cleanup()


# ---------------------------------------------------------------- the first-byte clock among other cancellations

_HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-test-first-byte"}
_ASK = b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "x"}]}'
_FIRST_BYTE = 0.5


async def _attempt_raced_by(
    mock_provider, cancel: Callable[[Upstream, asyncio.Task[Any]], None] | None, before: bool
) -> tuple[BaseException | str, int, int]:
    """An attempt at an upstream that never answers, whose first-byte timer and ``cancel`` (a
    cancellation from elsewhere) come due in one event-loop turn, ``cancel`` just before the timer
    or just after it. What the attempt ended with, its task's count of cancellations left, and
    how many attempts the ``Upstream`` still holds as opening."""
    mock_provider.set_behaviour("mock-gpt", latency_ms=60_000)
    loop = asyncio.get_running_loop()
    upstream = Upstream(Upstream.new_session())
    try:
        started = loop.time()
        task = asyncio.create_task(
            upstream.open(
                mock_provider.url + "/v1/chat/completions",
                CIMultiDict(_HEADERS),
                _ASK,
                Timeouts(first_byte=_FIRST_BYTE),
            )
        )
        await asyncio.sleep(0)  # the attempt began: its timer is due _FIRST_BYTE s after a moment in [started, now]
        now = loop.time()
        if cancel is not None:
            at = started + _FIRST_BYTE - 0.1 if before else now + _FIRST_BYTE + 0.1
            loop.call_at(at, cancel, upstream, task)
        # Block the loop (on purpose, on the clock) until both are due: the next turn then runs
        # them one after the other, in the order of their times, before the attempt's task resumes.
        wait_until(lambda: loop.time() >= now + _FIRST_BYTE + 0.2, timeout=5, what="both due")
        await asyncio.wait([task])
        ended: BaseException | str = "cancelled" if task.cancelled() else task.exception()  # type: ignore[assignment]
        return ended, task.cancelling(), len(upstream._opening)
    finally:
        await upstream.session.close()


async def test_a_first_byte_timeout_alone_is_an_upstream_timeout(mock_provider) -> None:
    ended, cancelling, opening = await _attempt_raced_by(mock_provider, None, before=False)
    assert isinstance(ended, errors.UpstreamTimeout) and ended.message == "upstream timed out (connect)"
    assert (cancelling, opening) == (0, 0)  # the timer's own cancellation is taken back


@pytest.mark.parametrize("before", [True, False], ids=["just-before-the-timer", "just-after-the-timer"])
async def test_a_cancellation_in_the_timers_turn_stays_a_cancellation(mock_provider, before) -> None:
    """The client gone as the first-byte timeout fires: the call ends as a cancelled one, not an
    upstream timeout (which the router would count against the endpoint and fall back from)."""
    ended, cancelling, opening = await _attempt_raced_by(mock_provider, lambda _, task: task.cancel(), before)
    assert (ended, cancelling, opening) == ("cancelled", 1, 0)


@pytest.mark.parametrize("before", [True, False], ids=["just-before-the-timer", "just-after-the-timer"])
async def test_a_stop_in_the_timers_turn_is_the_stop(mock_provider, before) -> None:
    ended, cancelling, opening = await _attempt_raced_by(mock_provider, lambda up, _: up.stop("draining"), before)
    assert isinstance(ended, errors.SidecarStopping), ended
    assert (cancelling, opening) == (0, 0)


async def test_the_first_byte_clock_ends_with_its_attempt(mock_provider, refused_port) -> None:
    """However an attempt ends (timed out, refused, an error status, answered), its first-byte
    clock ends with it: the task goes on past that deadline (the router's next attempt, the
    relay reading the stream) and is not cut by a clock left behind."""
    upstream = Upstream(Upstream.new_session())
    timeouts = Timeouts(first_byte=0.3)
    url = mock_provider.url + "/v1/chat/completions"
    try:
        mock_provider.set_behaviour("mock-gpt", latency_ms=5000)
        with pytest.raises(errors.UpstreamTimeout):
            await upstream.open(url, CIMultiDict(_HEADERS), _ASK, timeouts)
        with pytest.raises(errors.UpstreamConnectError):
            await upstream.open(refused_port.url + "/v1/chat/completions", CIMultiDict(_HEADERS), _ASK, timeouts)
        mock_provider.set_behaviour("mock-gpt", status=500)
        with pytest.raises(errors.UpstreamStatus):
            await upstream.open(url, CIMultiDict(_HEADERS), _ASK, timeouts)
        # 8 chunks 100 ms apart: read for twice the first-byte timeout after the answer's first bytes.
        mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=100, chunks=8)
        streamed = _ASK.replace(b'"model"', b'"stream": true, "model"')
        answer = await upstream.open(url, CIMultiDict(_HEADERS), streamed, timeouts)
        try:
            body = b"".join([chunk async for chunk in answer.chunks()])
        finally:
            answer.close()
        assert body.rstrip().endswith(b"data: [DONE]")
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        assert not upstream._opening
    finally:
        await upstream.session.close()
