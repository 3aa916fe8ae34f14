"""In-process coalescing: one ``Flight`` per cache key while its leader calls upstream.

The leader's recorder publishes its SSE frames as they pass, so a streaming
follower writes the leader's frames to its own client as they arrive (fan-out),
not only at the end; a non-streaming follower waits for the finished ``Entry``.

A flight ends once: ``finish(entry)`` or ``fail(error)``. ``error`` is kept only
when it would be the same for every identical call (the upstream rejected the
request itself); a follower then answers with it. Any other failure leaves
``error`` empty and the followers elect a new leader among themselves instead of
failing with the first.

A streamed answer that grows past ``max_entry_bytes`` will not be stored: the recorder
calls ``overflow()``, after which no call joins the flight (each goes upstream itself)
and the flight keeps only the frames its attached followers have not taken yet, so a
long stream is not held whole while it passes.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable

from proxy.cache.entry import Entry
from proxy.dialects.sse import iter_frames
from proxy.errors import ClientError, ProxyError, UpstreamBroken, UpstreamStatus


def shared_failure(error: BaseException | None) -> ProxyError | None:
    """The error itself when every identical call would get it too, else ``None``."""
    if isinstance(error, ClientError):
        return error
    if isinstance(error, UpstreamStatus) and not error.retryable:
        return error
    return None


class Flight:
    __slots__ = (
        "stream",
        "has_usage",
        "frames",
        "base",
        "joinable",
        "completed",
        "readers",
        "entry",
        "error",
        "cut_by",
        "told",
        "done",
        "followers",
        "_changed",
    )

    def __init__(self, stream: bool, has_usage: bool) -> None:
        #: the leader streams, so frames arrive as it reads them
        self.stream = stream
        #: the leader's stream carries OpenAI's usage chunk
        self.has_usage = has_usage
        #: the leader's frames so far, in runs of whole frames as they were relayed
        self.frames: list[bytes] = []
        #: how many runs were dropped from the front of ``frames`` (taken by every follower)
        self.base = 0
        #: new calls may still follow it: false once the answer is too large to store (``overflow``)
        self.joinable = True
        #: the answer ended complete (with ``entry``, or without one when it was too large to keep)
        self.completed = False
        #: each attached follower's position: the runs it has taken so far
        self.readers: weakref.WeakKeyDictionary[Following, int] = weakref.WeakKeyDictionary()
        self.entry: Entry | None = None
        self.error: ProxyError | None = None
        #: why the leader's stream broke part-way, and whether its last frame (the upstream's
        #: own error event) says so already
        self.cut_by: ProxyError | None = None
        self.told = False
        self.done = False
        self.followers = 0
        self._changed: asyncio.Event | None = None

    def publish(self, frames: bytes) -> None:
        self.frames.append(frames)
        if not self.joinable:
            self.trim()
        if self._changed is not None:
            self._wake()

    def overflow(self) -> None:
        """The answer is too large to store: no new follower, and only untaken frames kept.
        Calls still waiting to join (for the first frame, or for the whole answer) go alone."""
        self.joinable = False
        self.trim()
        self._wake()

    def trim(self) -> None:
        """Drop the runs every attached follower has taken (all of them when none is attached)."""
        upto = min(self.readers.values(), default=self.base + len(self.frames))
        if upto > self.base:
            del self.frames[: upto - self.base]
            self.base = upto

    @property
    def held(self) -> int:
        """The bytes of frames the flight keeps now."""
        return sum(len(run) for run in self.frames)

    def finish(self, entry: Entry | None) -> None:
        """The answer ended complete; ``entry`` is ``None`` when it was too large to keep."""
        if not self.done:
            self.entry = entry
            self.completed = True
            self.done = True
            self._wake()

    def cut(self, failure: ProxyError | None, told: bool) -> None:
        """The leader's stream broke after frames went out (before ``fail`` ends the flight)."""
        self.cut_by, self.told = failure, told

    def fail(self, error: BaseException | None) -> None:
        if not self.done:
            self.error = shared_failure(error)
            self.done = True
            self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def changed(self, seen: int) -> None:
        """Return once there are more than ``seen`` runs of frames, or the flight is done."""
        while self.base + len(self.frames) <= seen and not self.done:
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    async def ended(self) -> None:
        """Return once the flight is done, or no longer joinable."""
        while not self.done and self.joinable:
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()


class Following:
    """A follower's view of the leader's stream: its frames as they arrive, then how it ended.

    The cache hands this to the pipeline; the relay writes it to the follower's client.
    """

    __slots__ = ("flight", "skip", "__weakref__")

    def __init__(self, flight: Flight, skip: Callable[[bytes], bool] | None) -> None:
        self.flight = flight
        #: frames this follower does not get (OpenAI's usage chunk it did not ask for)
        self.skip = skip
        # Attached from here (before ``batches`` starts), so no frame it has not taken is dropped;
        # held weakly: a follower dropped before it read (its client gone) does not pin them.
        flight.readers[self] = flight.base

    async def batches(self) -> AsyncIterator[bytes]:
        """The leader's frames, joined per wake-up, from the first to the last."""
        flight, skip = self.flight, self.skip
        flight.followers += 1
        try:
            sent = flight.readers.get(self, flight.base)
            while True:
                runs = flight.frames[sent - flight.base :]
                sent += len(runs)
                flight.readers[self] = sent
                if not flight.joinable:
                    flight.trim()
                data = b"".join(runs)
                if skip is not None and data:
                    data = b"".join(f for f in iter_frames(data) if not skip(f))
                if data:
                    yield data
                if flight.done and sent == flight.base + len(flight.frames):
                    return
                await flight.changed(sent)
        finally:
            flight.followers -= 1
            flight.readers.pop(self, None)

    @property
    def failure(self) -> ProxyError | None:
        """Why the leader's answer did not complete (once ``batches`` is over); None if it did."""
        if self.flight.completed:
            return None
        return self.flight.error or self.flight.cut_by or UpstreamBroken("upstream answer was cut (coalesced call)")
