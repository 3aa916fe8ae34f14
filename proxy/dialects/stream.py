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

import msgspec

from proxy.dialects.sse import last_frame, parse_frame, split_frames
from proxy.dialects.usage import merge_usage

#: what ends a run of frames: nothing (all read), the end marker, the upstream's error, a malformed frame
FRAMES, END, ERROR, MALFORMED = 0, 1, 2, 3

#: reads the data of a run of frames in order (``b""`` for one without data), adding token
#: counts to ``usage``; returns where it stopped and why (``len(datas), FRAMES`` if it did not)
FrameRule = Callable[[list[bytes], dict[str, int]], tuple[int, int]]

# Each frame is checked whole (JSON syntax, an object at the top), but only the fields a
# rule reads become Python objects: the rest is skipped by msgspec's parser, which checks it
# as it goes. That is a third of the cost of building every frame with ``orjson.loads``.
# msgspec does not check the UTF-8 of strings it skips, so ``_read`` does.
_UNSET: Any = msgspec.UNSET


class _ChatChunk(msgspec.Struct, gc=False):  # (no cycles: not tracked by the collector)
    usage: Any = None
    error: Any = _UNSET  # any ``error`` key, even ``null``, is the upstream's error event


class _Event(msgspec.Struct, gc=False):
    """A Responses API or Anthropic event."""

    type: Any = None
    response: Any = None
    message: Any = None
    usage: Any = None


_NOT_JSON = (msgspec.DecodeError, UnicodeDecodeError)  # a ValidationError (not an object) is a DecodeError


def _read(decode: Callable[[bytes], Any], data: bytes) -> Any:
    """The frame's fields, or None when it is not one JSON object in valid UTF-8."""
    try:
        frame = decode(data)
        if not data.isascii():
            data.decode()
    except _NOT_JSON:
        return None
    return frame


_chat_chunk = msgspec.json.Decoder(_ChatChunk).decode
_event = msgspec.json.Decoder(_Event).decode


def _usage(container: Any) -> Any:
    return container.get("usage") if type(container) is dict else None


def openai_choices(datas: list[bytes], usage: dict[str, int]) -> tuple[int, int]:
    """``/chat/completions`` and ``/completions`` chunks, ended by ``[DONE]``."""
    for index, data in enumerate(datas):
        if not data:
            continue
        if data == b"[DONE]":
            return index, END
        try:  # ``_read``, inline: this is the loop every streamed chat answer goes through
            chunk = _chat_chunk(data)
            if not data.isascii():
                data.decode()
        except _NOT_JSON:
            return index, MALFORMED
        if chunk.error is not _UNSET:
            return index, ERROR
        if chunk.usage:
            merge_usage(usage, chunk.usage)
    return len(datas), FRAMES


def openai_responses(datas: list[bytes], usage: dict[str, int]) -> tuple[int, int]:
    """Responses API events, ended by ``response.completed``."""
    for index, data in enumerate(datas):
        if not data:
            continue
        event = _read(_event, data)
        if event is None:
            return index, MALFORMED
        kind = event.type
        if kind in ("response.completed", "response.incomplete"):
            merge_usage(usage, _usage(event.response))
            return index, END
        if kind in ("response.failed", "error"):
            return index, ERROR
    return len(datas), FRAMES


def anthropic_messages(datas: list[bytes], usage: dict[str, int]) -> tuple[int, int]:
    """Messages API events, ended by ``message_stop``."""
    for index, data in enumerate(datas):
        if not data:
            continue
        event = _read(_event, data)
        if event is None:
            return index, MALFORMED
        kind = event.type
        if kind == "message_start":
            merge_usage(usage, _usage(event.message))
        elif kind == "message_delta":
            merge_usage(usage, event.usage)
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
        # (``partition``, not ``find`` or ``in``: on Python 3.11 ``find`` parses its arguments from
        # a format string and ``in`` first tries the needle as an int; both cost ~5× more)
        if self._rest or chunk[-2:] != b"\n\n" or chunk.partition(b"\r")[1]:
            chunk, self._rest = split_frames(self._rest, chunk)
            if not chunk:
                return chunk
        # (else the chunk ends where a frame does, as most do: it is its own whole frames)
        return self._check(chunk)

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
        datas: list[bytes] = []
        if whole[:6] == b"data: ":
            line, _, rest = whole.partition(b"\n")
            if rest == b"\n":
                datas = [line[6:]]  # one frame of one ``data:`` line: the common chunk
            else:
                # Every frame one ``data:`` line, split in one go; any other line (a comment,
                # an ``event:``, a blank line) leaves a newline in a piece: the general way.
                # (One memchr over the joined pieces: ``bytes in bytes`` first tries the
                # argument as an int and formats a TypeError, ~2,000 instructions a test.)
                datas = whole[6:-2].split(b"\n\ndata: ")
                if b"".join(datas).find(b"\n") >= 0:
                    datas = []
        if not datas:
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
        # Where frame ``index`` ends: ``data: `` and a blank line around each data, or each frame and its
        # blank line. (Summed in C: a whole stream in one chunk has a frame list as long as the answer.)
        kept = index + 1
        if frames is None:
            return whole[: sum(map(len, datas[:kept])) + 8 * kept]
        return whole[: sum(map(len, frames[:kept])) + 2 * kept]
