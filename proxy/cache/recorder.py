"""The cache's view of an answer as it passes through the relay.

The relay calls ``feed`` after each chunk has been written to the client, and
``finish`` or ``abort`` once; a recorder never slows the relay: ``feed`` only
splits frames and appends them, storing happens in a background task.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from multidict import CIMultiDict

from proxy.cache.coalesce import Flight
from proxy.cache.entry import Entry
from proxy.dialects.sse import FrameSplitter


class Recorder:
    """Receives what the relay sends; this base records nothing (cache off, or ``no-store``)."""

    def feed(self, chunk: bytes) -> None:
        """A chunk of a streamed answer was sent to the client."""

    def finish(self, status: int, headers: CIMultiDict[str], body: bytes | None = None) -> None:
        """The answer is complete: ``body`` for a JSON answer, else what ``feed`` saw."""

    def abort(self) -> None:
        """The answer failed part-way; nothing is stored."""


NULL_RECORDER = Recorder()


class EntryRecorder(Recorder):
    """Collects one answer into an ``Entry``, publishing frames to the call's flight as they pass.

    ``done(entry)`` is called once with the complete entry, or with ``None`` when the
    answer failed; it decides about storing.
    """

    __slots__ = ("_done", "_flight", "_splitter", "_frames", "_size", "_limit", "_ttl")

    def __init__(self, done: Callable[[Entry | None], None], flight: Flight | None, limit: int, ttl: float) -> None:
        self._done = done
        self._flight = flight
        self._splitter = FrameSplitter()
        self._frames: list[bytes] | None = []
        self._size = 0
        self._limit = limit
        self._ttl = ttl

    def feed(self, chunk: bytes) -> None:
        frames = self._splitter.feed(chunk)
        if not frames:
            return
        self._size += len(chunk)
        if self._flight is not None:
            self._flight.publish(frames)
        elif self._size > self._limit:
            self._frames = None  # too large to store, and nobody follows: stop keeping it
        if self._frames is not None:
            self._frames.extend(frames)

    def finish(self, status: int, headers: CIMultiDict[str], body: bytes | None = None) -> None:
        stream = body is None
        if not 200 <= status < 300 or self._frames is None:
            self._done(None)
            return
        if body is None:
            rest = self._splitter.rest()
            body = b"".join(self._frames) + (rest if rest.strip() else b"")
        content_type = headers.get("Content-Type", "text/event-stream" if stream else "application/json")
        # OpenAI sends its usage chunk only to calls that asked for it (stream_options).
        has_usage = not stream or b'"usage":{' in body
        self._done(Entry(status, content_type, body, stream, time.time(), self._ttl, has_usage=has_usage))

    def abort(self) -> None:
        self._done(None)
