"""A streamed answer checked frame by frame: each dialect's end marker, malformed frames,
the upstream's own error event."""

from __future__ import annotations

import pytest

from proxy.dialects.sse import format_frame
from proxy.dialects.stream import AnswerStream, anthropic_messages, openai_choices, openai_responses
from proxy.mock_provider import Answer, anthropic_events, openai_chat_chunks, openai_response_events

ANSWER = Answer(model="m", words=["one", "two", "three"], input_tokens=3, truncated=False, tool=None)

STREAMS = [
    pytest.param(
        openai_choices,
        lambda: openai_chat_chunks(ANSWER, include_usage=True),
        format_frame({"error": {"message": "overloaded", "type": "server_error"}}),
        id="openai-chat",
    ),
    pytest.param(
        openai_responses,
        lambda: openai_response_events(ANSWER),
        format_frame({"type": "response.failed", "response": {}}, event="response.failed"),
        id="openai-responses",
    ),
    pytest.param(
        anthropic_messages,
        lambda: anthropic_events(ANSWER),
        format_frame({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, event="error"),
        id="anthropic",
    ),
]


def read(rule, body: bytes, cut: int = 7) -> tuple[AnswerStream, bytes]:
    """Fed in pieces of ``cut`` bytes: the stream, and all it gave back."""
    stream = AnswerStream(rule, {})
    out = b"".join(stream.feed(body[i : i + cut]) for i in range(0, len(body), cut))
    return stream, out + stream.close()


@pytest.mark.parametrize(("rule", "frames", "error"), STREAMS)
def test_complete_only_after_the_end_marker(rule, frames, error) -> None:
    whole = frames()
    stream, out = read(rule, b"".join(whole))
    assert stream.ended and stream.failure is None and out == b"".join(whole)
    assert stream.usage == {"input_tokens": 3, "output_tokens": 3}
    stream, out = read(rule, b"".join(whole[:-1]))
    assert not stream.ended and stream.failure == "the upstream closed the stream before its end marker"
    assert out == b"".join(whole[:-1])


# In pieces of 7 bytes, and in one chunk: a stream that nginx or a fast upstream sends whole,
# whose frames after the one that ends it are cut from the same chunk.
CUTS = pytest.mark.parametrize("cut", [7, 1 << 20], ids=["pieces", "one-chunk"])


@CUTS
@pytest.mark.parametrize(("rule", "frames", "error"), STREAMS)
def test_nothing_after_the_end_marker_goes_out(rule, frames, error, cut) -> None:
    whole = frames()
    stream, out = read(rule, b"".join(whole) + whole[1], cut)
    assert stream.ended and out == b"".join(whole)


@CUTS
@pytest.mark.parametrize(("rule", "frames", "error"), STREAMS)
def test_a_malformed_frame_stops_the_stream_before_it(rule, frames, error, cut) -> None:
    whole = frames()
    bad = whole[2][:-7] + b"\n\n"
    stream, out = read(rule, b"".join([*whole[:2], bad, *whole[3:]]), cut)
    assert out == b"".join(whole[:2]) and not stream.ended
    assert stream.failure == "the upstream sent a malformed event" and not stream.upstream_error


@CUTS
@pytest.mark.parametrize(("rule", "frames", "error"), STREAMS)
def test_the_upstreams_error_event_is_the_last_frame(rule, frames, error, cut) -> None:
    whole = frames()
    stream, out = read(rule, b"".join([*whole[:2], error, *whole[2:]]), cut)
    assert out == b"".join([*whole[:2], error]) and not stream.ended and stream.upstream_error
    assert stream.failure == "the upstream ended the stream with an error event"


def test_comments_and_keep_alives_pass() -> None:
    body = b": keep-alive\n\n" + b"".join(openai_chat_chunks(ANSWER, include_usage=False))
    stream, out = read(openai_choices, body)
    assert stream.ended and out == body


# Frames that are not one JSON object, each broken where a fast reader might look past:
# inside a field no rule reads, in a string's UTF-8, at the top level.
BROKEN_DATA = [
    pytest.param(b'{"choices": [{"delta": {"content": "a"}, "index": 0,]}', id="syntax-inside-an-unread-field"),
    pytest.param(b'{"choices": [{"delta": {"content": "caf\xc3"}}]}', id="bad-utf8-in-an-unread-string"),
    pytest.param(b'{"choices": [{"delta": {"content": "\\ud800"}}]}', id="lone-surrogate-escape"),
    pytest.param(b'[{"choices": []}]', id="an-array-not-an-object"),
    pytest.param(b'"text"', id="a-string-not-an-object"),
    pytest.param(b'{"choices": []} {"choices": []}', id="two-objects-in-one-frame"),
    pytest.param(b'{"choices": [', id="cut-short"),
]


@pytest.mark.parametrize("data", BROKEN_DATA)
@pytest.mark.parametrize(("rule", "frames", "error"), STREAMS)
@pytest.mark.parametrize("position", [1, -2], ids=["early", "just-before-the-end"])
def test_a_frame_that_is_not_one_json_object_is_malformed_anywhere(rule, frames, error, data, position) -> None:
    """Read in one chunk and byte by byte: the frame is caught, nothing from it on goes out, the answer is broken."""
    whole = frames()
    at = position % len(whole)
    broken = [*whole[:at], b"data: " + data + b"\n\n", *whole[at:]]
    for cut in (len(b"".join(broken)), 1):
        stream, out = read(rule, b"".join(broken), cut)
        assert out == b"".join(whole[:at]) and not stream.ended
        assert stream.failure == "the upstream sent a malformed event"
