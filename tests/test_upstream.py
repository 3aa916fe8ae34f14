"""aiohttp client errors become proxy errors in one place, and none slips through."""

from __future__ import annotations

import inspect

import aiohttp
import pytest

from proxy import errors
from proxy.upstream import map_client_error


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
