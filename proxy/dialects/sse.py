"""Server-sent events: splitting a byte stream into frames, and writing frames.

A line may end in ``\\n``, ``\\r\\n`` or ``\\r`` (the SSE grammar allows all three), and a
network chunk may end anywhere, between the ``\\r`` and ``\\n`` of one line end too.
Frames come out with their line ends made ``\\n``, each ending in a blank line.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson


def format_frame(data: object, event: str | None = None) -> bytes:
    """One SSE frame; ``data`` that is not bytes or str is JSON-encoded."""
    if isinstance(data, bytes):
        payload = data
    elif isinstance(data, str):
        payload = data.encode()
    else:
        payload = orjson.dumps(data)
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + payload + b"\n\n"


def split_frames(rest: bytes, chunk: bytes) -> tuple[bytes, bytes]:
    """``rest`` (what an earlier call left) and the next ``chunk`` → (whole frames, the new rest).

    The whole frames are the bytes up to and with the last blank line, line ends made
    ``\n``; the rest waits for the next chunk.
    """
    data = rest + chunk if rest else chunk
    if data.partition(b"\r")[1]:  # not ``in`` or ``find``: see ``AnswerStream.feed``
        # A ``\r`` at the very end may be the first half of a ``\r\n``: it waits for the next chunk.
        held = data.endswith(b"\r")
        if held:
            data = data[:-1]
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if held:
            data += b"\r"
    if data[-2:] == b"\n\n":
        return data, b""  # the chunk ends where a frame does: the common case
    end = data.rfind(b"\n\n") + 2
    if end < 2:
        return b"", data
    return data[:end], data[end:]


def last_frame(rest: bytes) -> bytes:
    """What ``split_frames`` left when the stream ended: a last frame that lacks its blank line."""
    rest = rest.replace(b"\r", b"\n")
    return rest.rstrip(b"\n") + b"\n\n" if rest.strip() else b""


class FrameSplitter:
    """Cuts arbitrary chunks into whole SSE frames (each ending in a blank line)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        whole, self._buffer = split_frames(self._buffer, chunk)
        return [frame + b"\n\n" for frame in whole.split(b"\n\n") if frame.strip()]

    def close(self) -> list[bytes]:
        """The stream ended: a last frame that lacks its blank line, if there is one."""
        frame, self._buffer = last_frame(self._buffer), b""
        return [frame] if frame else []

    def rest(self) -> bytes:
        """What is left after the last frame (a stream that was cut mid-frame)."""
        return self._buffer


def parse_frame(frame: bytes) -> tuple[str | None, bytes]:
    """The frame's ``event`` name and its ``data`` (multi-line data joined by newlines)."""
    if frame.startswith(b"data: ") and frame.find(b"\n") == len(frame) - 2:
        return None, frame[6:-2]  # the common frame: one data line (a third of the general cost)
    event = None
    data: list[bytes] = []
    for line in frame.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode(errors="replace")
    return event, b"\n".join(data)


def iter_frames(body: bytes) -> Iterator[bytes]:
    splitter = FrameSplitter()
    yield from splitter.feed(body)
    yield from splitter.close()
