"""What is a same call: the whole request but a short deny-list splits the key; what cannot be keyed is a 400."""

from __future__ import annotations

import anthropic
import httpx
import openai
import orjson
import pytest

from proxy.cache.keys import NOT_THE_ANSWER, request_key
from tests.servers import MockProvider, Sidecar

STATUS = "x-llm-sidecar-cache"
MESSAGES = [{"role": "user", "content": "same call?"}]


def test_embeddings_input_type_splits_the_key(cached_sidecar, mock_provider: MockProvider) -> None:
    client = cached_sidecar().openai()
    query = client.embeddings.with_raw_response.create(
        model="gpt-4o-mini", input="llamas", extra_body={"input_type": "query"}
    )
    document = client.embeddings.with_raw_response.create(
        model="gpt-4o-mini", input="llamas", extra_body={"input_type": "document"}
    )
    assert document.headers[STATUS] == "miss"
    assert query.parse().data[0].embedding != document.parse().data[0].embedding  # the upstream's answers differ
    again = client.embeddings.with_raw_response.create(
        model="gpt-4o-mini", input="llamas", extra_body={"input_type": "document"}
    )
    assert again.headers[STATUS] == "hit"
    assert again.parse().data[0].embedding == document.parse().data[0].embedding
    assert mock_provider.calls() == 2


def test_a_field_nobody_listed_splits_the_key(cached_sidecar, mock_provider: MockProvider) -> None:
    sidecar = cached_sidecar()
    client = sidecar.openai()
    for knob, status in ((1, "miss"), (2, "miss"), (1, "hit")):
        reply = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_body={"provider_knob_of_tomorrow": {"level": knob}}
        )
        assert reply.headers[STATUS] == status
    nested = anthropic.Anthropic(base_url=sidecar.anthropic_base, api_key="sk-ant-x", max_retries=0)
    for budget, status in ((1024, "miss"), (2048, "miss")):
        reply = nested.messages.with_raw_response.create(
            model="claude-sonnet",
            max_tokens=20,
            messages=MESSAGES,
            extra_body={"context_management": {"budget": budget}},
        )
        assert reply.headers[STATUS] == status
    assert mock_provider.calls() == 4


def test_what_cannot_change_the_answer_does_not_split_it(cached_sidecar, mock_provider: MockProvider) -> None:
    client = cached_sidecar().openai()
    first = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=0)
    reply = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        temperature=0.0,
        user="someone-else",
        store=True,
        metadata={"team": "b"},
        service_tier="auto",
        extra_body={"safety_identifier": "h", "prompt_cache_key": "k"},
    )
    assert reply.headers[STATUS] == "hit"
    assert reply.parse().choices[0].message.content == first.choices[0].message.content
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == first.choices[0].message.content
    assert mock_provider.calls() == 1


def test_the_deny_list_is_short_and_named() -> None:
    assert NOT_THE_ANSWER == {
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "stream",
        "stream_options",
    }
    base = {"model": "m", "messages": MESSAGES}
    assert request_key("t", "s", {**base, "temperature": 0}) == request_key("t", "s", {**base, "temperature": 0.0})
    assert request_key("t", "s", {**base, "seed": 2.0**60}) != request_key("t", "s", {**base, "seed": 2.0**60 + 2**8})


def _post(sidecar: Sidecar, dialect: str, body: bytes) -> httpx.Response:
    url = sidecar.openai_base + "/chat/completions" if dialect == "openai" else sidecar.anthropic_base + "/v1/messages"
    return httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=10)


def _body(dialect: str, extra: bytes) -> bytes:
    model = b"gpt-4o-mini" if dialect == "openai" else b"claude-sonnet"
    return (
        b'{"model": "' + model + b'", "max_tokens": 20, "messages": [{"role": "user", "content": "n"}], ' + extra + b"}"
    )


def _nested(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


UNKEYABLE = {
    "seed 2^64": b'"seed": 18446744073709551616',
    "seed -2^63-1": b'"seed": -9223372036854775809',
    "a nested big integer": b'"tools": [{"type": "function", "function": {"name": "f", "parameters": '
    b'{"type": "integer", "maximum": 123456789012345678901234567890}}}]',
    "a big integer beside e+ in text": b'"stop": ["1e+5 C++"], "seed": 18446744073709551616',
    "nesting 300 deep": b'"metadata": ' + _nested(300),
    "nesting 255 deep": b'"response_format": ' + _nested(254),
}


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "not-cached"])
@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("case", sorted(UNKEYABLE))
def test_what_cannot_be_keyed_or_written_back_is_400_before_any_upstream_call(
    cached_sidecar, make_sidecar, mock_provider: MockProvider, cached: bool, dialect: str, case: str
) -> None:
    sidecar = cached_sidecar() if cached else make_sidecar()
    response = _post(sidecar, dialect, _body(dialect, UNKEYABLE[case]))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert (body["type"] == "error") if dialect == "anthropic" else ("param" in body["error"])
    assert mock_provider.calls() == 0


def test_near_the_limits_still_works(cached_sidecar, mock_provider: MockProvider) -> None:
    sidecar = cached_sidecar()
    for extra in (
        b'"seed": 18446744073709551615',
        b'"seed": -9223372036854775808',
        b'"metadata": ' + _nested(200),
        b'"top_p": 1e-20, "temperature": 1.0e+0, "x_scale": 1e+300',
        b'"messages_note": "C++ and e+10 in text"',
        b'"x_big": 1E+20, "x_plain": 123456789012345678.5',
    ):
        response = _post(sidecar, "openai", _body("openai", extra))
        assert response.status_code == 200, (extra[:40], response.text)
    assert mock_provider.calls() == 6


def test_the_sdks_see_the_400(cached_sidecar, mock_provider: MockProvider) -> None:
    sidecar = cached_sidecar()
    with pytest.raises(openai.BadRequestError) as info:
        sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, seed=2**64)
    assert "64-bit" in info.value.message
    with pytest.raises(anthropic.BadRequestError):
        sidecar.anthropic().messages.create(
            model="claude-sonnet", max_tokens=5, messages=MESSAGES, metadata=orjson.loads(_nested(260))
        )
    assert mock_provider.calls() == 0
