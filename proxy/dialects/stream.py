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

#: what ends a run of frames: nothing (all read), the end marker, the upstream's error, a malformed frame
FRAMES, END, ERROR, MALFORMED = 0, 1, 2, 3

#: reads the data of a run of frames in order (``b""`` for one without data), adding token
#: counts to ``usage``; returns where it stopped and why (``len(datas), FRAMES`` if it did not)
FrameRule = Callable[[list[bytes], dict[str, int]], tuple[int, int]]

_loads = orjson.loads


def _usage(container: Any) -> Any:
    return container.get("usage") if type(container) is dict else None


def openai_choices(datas: list[bytes], usage: dict[str, int]) -> tuple[int, int]:
    """``/chat/completions`` and ``/completions`` chunks, ended by ``[DONE]``."""
    for index, data in enumerate(datas):
        if not data:
            continue
        if data == b"[DONE]":
            return index, END
        try:
            document = _loads(data)
        except ValueError:
            return index, MALFORMED
        if type(document) is not dict:
            return index, MALFORMED
        if "error" in document:
            return index, ERROR
        found = document.get("usage")
        if found:
            merge_usage(usage, found)
    return len(datas), FRAMES


def openai_responses(datas: list[bytes], usage: dict[str, int]) -> tuple[int, int]:
    """Responses API events, ended by ``response.completed``."""
    for index, data in enumerate(datas):
        if not data:
            continue
        try:
            document = _loads(data)
        except ValueError:
            return index, MALFORMED
        if type(document) is not dict:
            return index, MALFORMED
        kind = document.get("type")
        if kind in ("response.completed", "response.incomplete"):
            merge_usage(usage, _usage(document.get("response")))
            return index, END
        if kind in ("response.failed", "error"):
            return index, ERROR
    return len(datas), FRAMES


def anthropic_messages(datas: list[bytes], usage: dict[str, int]) -> tuple[int, int]:
    """Messages API events, ended by ``message_stop``."""
    for index, data in enumerate(datas):
        if not data:
            continue
        try:
            document = _loads(data)
        except ValueError:
            return index, MALFORMED
        if type(document) is not dict:
            return index, MALFORMED
        kind = document.get("type")
        if kind == "message_start":
            merge_usage(usage, _usage(document.get("message")))
        elif kind == "message_delta":
            merge_usage(usage, document.get("usage"))
        elif kind == "message_stop":
            return index, END
        elif kind == "error":
            return index, ERROR
    return len(datas), FRAMES


def no_stream(datas: list[bytes], usage: dict[str, int]) -> tuple[int, int]:
    """An operation whose answers never stream (embeddings, token counts)."""
    return next((i for i, data in enumerate(datas) if data), len(datas)), MALFORMED


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
        """``whole``, or the part of it up to the frame that ends the stream (with it; without a malformed one)."""
        frames: list[bytes] | None = None
        if whole[:6] == b"data: " and whole.find(b"\n") == len(whole) - 2:
            datas = [whole[6:-2]]  # one frame of one ``data:`` line: the common chunk
        elif whole[:6] == b"data: " and whole.count(b"\n") == 2 * whole.count(b"\n\ndata: ") + 2:
            # Every frame one ``data:`` line (any other line, a comment or a blank line adds
            # newlines the separators do not account for): split in one go.
            datas = whole[6:-2].split(b"\n\ndata: ")
        else:
            frames = whole.split(b"\n\n")
            frames.pop()  # what follows the last blank line: nothing
            datas = [parse_frame(frame)[1] for frame in frames]
        index, kind = self._rule(datas, self.usage)
        if kind == FRAMES:
            return whole
        if kind == END:
            self.ended = True
        elif kind == ERROR:
            self.fault = "the upstream ended the stream with an error event"
            self.upstream_error = True
        else:
            self.fault = "the upstream sent a malformed event"
            index -= 1  # the malformed frame itself does not go out
        # Where frame ``index`` ends: ``data: `` and a blank line around each data, or each frame and its blank line.
        sizes = [len(data) + 8 for data in datas] if frames is None else [len(frame) + 2 for frame in frames]
        return whole[: sum(sizes[: index + 1])]
