"""Server-sent events: splitting a byte stream into frames, and writing frames."""

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


class FrameSplitter:
    """Cuts arbitrary chunks into whole SSE frames (each ending in a blank line)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        *frames, self._buffer = self._buffer.split(b"\n\n")
        return [frame + b"\n\n" for frame in frames if frame.strip()]

    def rest(self) -> bytes:
        """What is left after the last frame (a stream that was cut mid-frame)."""
        return self._buffer


def parse_frame(frame: bytes) -> tuple[str | None, bytes]:
    """The frame's ``event`` name and its ``data`` (multi-line data joined by newlines)."""
    event = None
    data: list[bytes] = []
    for line in frame.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode()
    return event, b"\n".join(data)


def iter_frames(body: bytes) -> Iterator[bytes]:
    splitter = FrameSplitter()
    yield from splitter.feed(body)
    if splitter.rest().strip():
        yield splitter.rest() + b"\n\n"
