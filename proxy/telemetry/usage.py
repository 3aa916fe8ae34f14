"""Token counts read off the answers, JSON and streamed, in both dialects.

Where the counts are:

- OpenAI JSON answers: ``usage.prompt_tokens`` / ``completion_tokens``
  (Responses API and embeddings: ``input_tokens`` / ``output_tokens``, ``prompt_tokens``);
- OpenAI streams: the last chunk when ``stream_options.include_usage`` is set,
  ``response.completed`` for the Responses API;
- Anthropic: ``usage`` in the JSON answer; in a stream, ``message_start`` carries
  the input count and ``message_delta`` the (cumulative) output count.

The tee must cost little: it never parses a frame's JSON unless the bytes hold a
``"usage": {`` object. JSON escaping guarantees that text inside a string (a prompt
or an answer that mentions "usage") can never produce that byte sequence, so the
pattern only ever matches a real key. Only the usage object is decoded, not the
frame around it.
"""

from __future__ import annotations

import re

import orjson

# One level of nesting covers the ``*_details`` and ``cache_creation`` sub-objects. Written
# as runs of ``[^{}]*`` (not one character per repetition), it matches the same text ~3× faster.
_USAGE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})')
_INPUT_KEYS = ("input_tokens", "prompt_tokens")
_OUTPUT_KEYS = ("output_tokens", "completion_tokens")
# Anthropic counts cached prompt tokens apart from ``input_tokens``; they are input all the same.
_CACHED_INPUT_KEYS = ("cache_read_input_tokens", "cache_creation_input_tokens")
#: a line longer than this (no SSE stream has one) is dropped rather than buffered
_MAX_LINE = 4 * 1024 * 1024


def merge_usage(usage: dict[str, int], found: bytes) -> None:
    """Update ``usage`` from one ``usage`` object's bytes; later counts replace earlier ones."""
    try:
        data = orjson.loads(found)
    except orjson.JSONDecodeError:
        return
    for key in _INPUT_KEYS:
        value = data.get(key)
        if isinstance(value, int):
            usage["input_tokens"] = value + sum(
                v for k in _CACHED_INPUT_KEYS if isinstance(v := data.get(k), int)
            )
            break
    for key in _OUTPUT_KEYS:
        value = data.get(key)
        if isinstance(value, int):
            usage["output_tokens"] = value
            break


def read_usage(body: bytes, usage: dict[str, int]) -> None:
    """Token counts from a whole answer (JSON, or a replayed stream)."""
    for match in _USAGE.finditer(body):
        merge_usage(usage, match.group(1))


class UsageTee:
    """Fed every streamed chunk; keeps only the unfinished last line between chunks.

    SSE ``data:`` lines of both providers hold one JSON document each, so a usage
    object never spans two lines: a line is looked at once it is complete.
    """

    __slots__ = ("usage", "_rest")

    def __init__(self, usage: dict[str, int]) -> None:
        self.usage = usage
        self._rest = b""

    def feed(self, chunk: bytes) -> None:
        data = self._rest + chunk if self._rest else chunk
        end = data.rfind(b"\n") + 1
        self._rest = data[end:] if len(data) - end <= _MAX_LINE else b""
        if b'"usage"' in data:
            for match in _USAGE.finditer(data, 0, end):
                merge_usage(self.usage, match.group(1))
