"""Token counts read from answers: every dialect, JSON and streamed, however the chunks fall."""

from __future__ import annotations

import orjson
import pytest

from proxy.dialects.sse import format_frame
from proxy.dialects.stream import AnswerStream, FrameRule, anthropic_messages, openai_choices, openai_responses
from proxy.dialects.usage import answer_usage
from proxy.mock_provider import (
    Answer,
    anthropic_events,
    anthropic_message,
    openai_chat,
    openai_chat_chunks,
    openai_response,
    openai_response_events,
)

ANSWER = Answer(
    model="m",
    words=["a", "usage", "word", '"usage": {"input_tokens": 999}'],
    input_tokens=7,
    truncated=False,
    tool=None,
)


def streamed(frames: list[bytes], cut: int, rule: FrameRule = anthropic_messages) -> dict[str, int]:
    """Feed the stream in pieces of ``cut`` bytes."""
    body = b"".join(frames)
    usage: dict[str, int] = {}
    stream = AnswerStream(rule, usage)
    for start in range(0, len(body), cut):
        stream.feed(body[start : start + cut])
    stream.close()
    assert stream.fault is None
    return usage


@pytest.mark.parametrize("cut", [1, 2, 7, 64, 100_000])
@pytest.mark.parametrize(
    ("frames", "rule"),
    [
        pytest.param(lambda: openai_chat_chunks(ANSWER, include_usage=True), openai_choices, id="openai-chat"),
        pytest.param(lambda: anthropic_events(ANSWER), anthropic_messages, id="anthropic"),
        pytest.param(lambda: openai_response_events(ANSWER), openai_responses, id="openai-responses"),
    ],
)
def test_stream_usage_whatever_the_chunking(frames, rule, cut: int) -> None:
    assert streamed(frames(), cut, rule) == {"input_tokens": 7, "output_tokens": 4}


def test_stream_without_usage_has_none() -> None:
    assert streamed(openai_chat_chunks(ANSWER, include_usage=False), 50, openai_choices) == {}


def test_usage_null_frames_and_text_mentioning_usage_are_skipped() -> None:
    """OpenAI sends ``"usage":null`` on every chunk with include_usage; answer text is escaped JSON."""
    frames = [
        format_frame({"choices": [{"delta": {"content": '"usage": {"output_tokens": 5}'}}], "usage": None}),
        format_frame({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
        b"data: [DONE]\n\n",
    ]
    assert streamed(frames, 3, openai_choices) == {"input_tokens": 3, "output_tokens": 2}


def test_crlf_stream() -> None:
    frames = [f.replace(b"\n", b"\r\n") for f in anthropic_events(ANSWER)]
    assert streamed(frames, 5) == {"input_tokens": 7, "output_tokens": 4}


def test_anthropic_cached_input_counts_as_input() -> None:
    frames = [
        format_frame(
            {
                "type": "message_start",
                "message": {
                    "usage": {
                        "input_tokens": 10,
                        "cache_read_input_tokens": 100,
                        "cache_creation_input_tokens": 5,
                        "output_tokens": 1,
                        "cache_creation": {"ephemeral_5m_input_tokens": 5},
                    }
                },
            },
            event="message_start",
        ),
        format_frame({"type": "message_delta", "usage": {"output_tokens": 42}}, event="message_delta"),
    ]
    assert streamed(frames, 11) == {"input_tokens": 115, "output_tokens": 42}


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(lambda: openai_chat(ANSWER), id="openai-chat"),
        pytest.param(lambda: anthropic_message(ANSWER), id="anthropic"),
        pytest.param(lambda: openai_response(ANSWER, "resp_1"), id="openai-responses"),
    ],
)
def test_json_usage(document) -> None:
    assert answer_usage(orjson.loads(orjson.dumps(document()))) == {"input_tokens": 7, "output_tokens": 4}


def test_embeddings_usage_has_input_only() -> None:
    assert answer_usage({"data": [], "usage": {"prompt_tokens": 6, "total_tokens": 6}}) == {"input_tokens": 6}


def test_garbage_is_ignored() -> None:
    assert answer_usage({"usage": {"prompt_tokens": "many"}}) == {}
    assert answer_usage({"usage": None}) == answer_usage([1]) == {}
    usage: dict[str, int] = {}
    stream = AnswerStream(openai_choices, usage)
    assert stream.feed(b"no newline at all " * 1000) == b""
    assert stream.feed(b'\n\ndata: {"usage": {,}}\n\n') == b"no newline at all " * 1000 + b"\n\n"
    assert stream.feed(b'\n\ndata: {"usage": {"prompt_tokens": 1}}\n\n') == b""  # after a malformed frame: nothing
    assert usage == {} and stream.fault is not None
