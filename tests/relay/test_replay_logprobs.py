"""Log probabilities survive a stored answer replayed in the other form (stream ⇄ JSON)."""

from __future__ import annotations

from tests.relay.helpers import wait_for

ASK = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "how likely is each word?"}],
    "logprobs": True,
    "top_logprobs": 2,
}


def streamed(sidecar) -> tuple[str, list]:
    stream = sidecar.openai().chat.completions.create(**ASK, stream=True)
    text, logprobs = "", []
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                logprobs += [t.model_dump() for t in choice.logprobs.content]
    return text, logprobs


def whole(sidecar) -> tuple[str, list, str]:
    raw = sidecar.openai().chat.completions.with_raw_response.create(**ASK)
    reply = raw.parse()
    return (
        reply.choices[0].message.content,
        [t.model_dump() for t in reply.choices[0].logprobs.content],
        raw.headers["x-llm-sidecar-cache"],
    )


def test_stream_stored_then_answered_as_json(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar()
    text, logprobs = streamed(sidecar)
    assert len(logprobs) == len(text.split()) and all(len(t["top_logprobs"]) == 2 for t in logprobs)
    assert wait_for(lambda: sidecar.pipeline.cache.stats.stores == 1)
    assert whole(sidecar) == (text, logprobs, "hit")
    assert mock_provider.calls() == 1


def test_json_stored_then_answered_as_a_stream(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar()
    text, logprobs, status = whole(sidecar)
    assert status == "miss" and len(logprobs) == len(text.split())
    assert wait_for(lambda: sidecar.pipeline.cache.stats.stores == 1)
    assert streamed(sidecar) == (text, logprobs)
    assert mock_provider.calls() == 1
