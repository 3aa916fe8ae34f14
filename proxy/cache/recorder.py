"""The cache's view of an answer as it passes through the relay.

The relay calls ``feed`` with each run of whole, checked frames as it relays them,
and ``finish`` (a complete answer) or ``abort`` once; a recorder never slows the
relay: ``feed`` only appends frames, storing happens in a background task.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from multidict import CIMultiDict

from proxy.cache.coalesce import Flight
from proxy.cache.entry import Entry
from proxy.errors import ProxyError


class Recorder:
    """Receives what the relay sends; this base records nothing (cache off, or ``no-store``)."""

    @property
    def followed(self) -> bool:
        """Coalesced calls are following the answer as it is recorded."""
        return False

    def feed(self, frames: bytes) -> None:
        """Frames of a streamed answer, whole and checked, on their way to the client."""

    def finish(self, status: int, headers: CIMultiDict[str], usage: dict[str, int], body: bytes | None = None) -> None:
        """The answer is complete: ``body`` for a JSON answer, else what ``feed`` saw."""

    def abort(self, failure: ProxyError | None = None, told: bool = False) -> None:
        """The answer failed part-way (why, when known; ``told``: its last frame, the upstream's
        own error event, says so already); nothing is stored."""


NULL_RECORDER = Recorder()


class EntryRecorder(Recorder):
    """Collects one answer into an ``Entry``, publishing frames to the call's flight as they pass.

    ``done(entry)`` is called once with the complete entry, or with ``None`` when the
    answer failed; it decides about storing.
    """

    __slots__ = ("_done", "_flight", "_frames", "_size", "_limit", "_ttl", "_clock")

    def __init__(
        self,
        done: Callable[[Entry | None], None],
        flight: Flight | None,
        limit: int,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._done = done
        self._flight = flight
        self._frames: list[bytes] | None = []
        self._size = 0
        self._limit = limit
        self._ttl = ttl
        self._clock = clock

    @property
    def followed(self) -> bool:
        return self._flight is not None and self._flight.followers > 0

    def feed(self, frames: bytes) -> None:
        if self._flight is not None:
            self._flight.publish(frames)
        if self._frames is not None:
            self._size += len(frames)
            if self._size > self._limit:
                # Too large to store: stop keeping it, here and (but for followers' untaken frames) in the flight.
                self._frames = None
                if self._flight is not None:
                    self._flight.overflow()
            else:
                self._frames.append(frames)

    def finish(self, status: int, headers: CIMultiDict[str], usage: dict[str, int], body: bytes | None = None) -> None:
        stream = body is None
        if not 200 <= status < 300 or self._frames is None:
            if self._frames is None and 200 <= status < 300 and self._flight is not None:
                self._flight.finish(None)  # complete, only too large to keep: followers' streams end cleanly
            self._done(None)
            return
        if body is None:
            body = b"".join(self._frames)
        content_type = headers.get("Content-Type", "text/event-stream" if stream else "application/json")
        # OpenAI sends its usage chunk only to calls that asked for it (stream_options).
        has_usage = not stream or bool(usage)
        self._done(
            Entry(
                status,
                content_type,
                body,
                stream,
                self._clock(),
                self._ttl,
                usage.get("input_tokens", 0),
                usage.get("output_tokens", 0),
                has_usage,
            )
        )

    def abort(self, failure: ProxyError | None = None, told: bool = False) -> None:
        if self._flight is not None:
            self._flight.cut(failure, told)
        self._done(None)
