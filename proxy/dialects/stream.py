"""A streamed answer read in its dialect: whole frames, each checked, and where it ends.

An answer is complete only once its dialect's end marker has passed:

=========================  ==========================================================
OpenAI chat, completions   ``data: [DONE]``
OpenAI Responses           ``response.completed`` (or ``response.incomplete``)
Anthropic messages         ``message_stop``
=========================  ==========================================================

Every frame's data must be a JSON object (``[DONE]`` aside). A stream that closes
before its end marker, or holds a frame that is not JSON, is broken: the relay ends
the client's stream with an error event and stores nothing. An error event from the
upstream itself (``{"error": ...}``, Anthropic's ``error``, ``response.failed``) is
passed on as the last frame; the answer is not complete either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from proxy.dialects.sse import last_frame, parse_frame, split_frames
from proxy.dialects.usage import merge_usage

#: what a frame means for the stream: nothing special, the end marker, or the upstream's own error
FRAME, END, ERROR = 0, 1, 2

#: reads one frame's data, adds any token counts to ``usage``; raises ``ValueError`` if malformed
FrameRule = Callable[[bytes, dict[str, int]], int]


def _object(data: bytes) -> dict[str, Any]:
    document = orjson.loads(data)  # orjson.JSONDecodeError is a ValueError
    if not isinstance(document, dict):
        raise ValueError("an event's data is not a JSON object")
    return document


def openai_choices(data: bytes, usage: dict[str, int]) -> int:
    """``/chat/completions`` and ``/completions`` chunks, ended by ``[DONE]``."""
    if data == b"[DONE]":
        return END
    document = _object(data)
    if "error" in document:
        return ERROR
    found = document.get("usage")
    if found:
        merge_usage(usage, found)
    return FRAME


def openai_responses(data: bytes, usage: dict[str, int]) -> int:
    """Responses API events, ended by ``response.completed``."""
    document = _object(data)
    kind = document.get("type")
    if kind in ("response.completed", "response.incomplete"):
        merge_usage(usage, (document.get("response") or {}).get("usage"))
        return END
    if kind in ("response.failed", "error"):
        return ERROR
    return FRAME


def anthropic_messages(data: bytes, usage: dict[str, int]) -> int:
    """Messages API events, ended by ``message_stop``."""
    document = _object(data)
    kind = document.get("type")
    if kind == "message_start":
        merge_usage(usage, (document.get("message") or {}).get("usage"))
    elif kind == "message_delta":
        merge_usage(usage, document.get("usage"))
    elif kind == "message_stop":
        return END
    elif kind == "error":
        return ERROR
    return FRAME


def no_stream(data: bytes, usage: dict[str, int]) -> int:
    """An operation whose answers never stream (embeddings, token counts)."""
    raise ValueError("this operation's answers do not stream")


class AnswerStream:
    """Fed an answer's chunks as they arrive; gives back the whole frames in them, each checked.

    ``feed`` returns bytes: the frames the chunk completes (line ends made ``\n``), ready to
    write. ``ended``: the end marker has passed, the answer is complete. ``fault``: why the
    answer is not (a malformed frame, the upstream's error event). Nothing after the end
    marker or a fault is given back.
    """

    __slots__ = ("_rest", "_rule", "usage", "ended", "fault", "upstream_error")

    def __init__(self, rule: FrameRule, usage: dict[str, int]) -> None:
        self._rest = b""
        self._rule = rule
        self.usage = usage
        self.ended = False
        self.fault: str | None = None
        #: the fault is the upstream's own error event, already passed on to the client
        self.upstream_error = False

    def feed(self, chunk: bytes) -> bytes:
        if self.ended or self.fault is not None:
            return b""
        whole, self._rest = split_frames(self._rest, chunk)
        return self._check(whole) if whole else whole

    def close(self) -> bytes:
        """The upstream closed the stream: a last frame that lacked its blank line."""
        if self.ended or self.fault is not None:
            return b""
        frame, self._rest = last_frame(self._rest), b""
        return self._check(frame) if frame else frame

    @property
    def failure(self) -> str | None:
        """Why the answer is not complete; ``None`` once it is."""
        if self.ended:
            return None
        return self.fault or "the upstream closed the stream before its end marker"

    def _check(self, whole: bytes) -> bytes:
        """``whole``, or the part of it up to the frame that ends the stream (with it, or not if malformed)."""
        rule, usage = self._rule, self.usage
        start = 0
        for frame in whole.split(b"\n\n")[:-1]:
            end = start + len(frame) + 2
            if frame.startswith(b"data: ") and b"\n" not in frame:
                data = frame[6:]  # the common frame: one data line
            else:
                data = parse_frame(frame)[1]
                if not data:
                    start = end
                    continue  # a comment, a keep-alive, or a blank line
            try:
                kind = rule(data, usage)
            except (ValueError, AttributeError, TypeError):  # not JSON, or not the dialect's shapes
                self.fault = "the upstream sent a malformed event"
                return whole[:start]
            if kind != FRAME:
                if kind == END:
                    self.ended = True
                else:
                    self.fault = "the upstream ended the stream with an error event"
                    self.upstream_error = True
                return whole[:end]
            start = end
        return whole
