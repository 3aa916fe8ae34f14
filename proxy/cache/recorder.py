"""The cache's view of an answer as it passes through the relay."""

from __future__ import annotations

from multidict import CIMultiDict


class Recorder:
    """Receives what the relay sends; this base records nothing (cache off, or ``no-store``)."""

    def feed(self, chunk: bytes) -> None:
        """A chunk of a streamed answer was sent to the client."""

    def finish(self, status: int, headers: CIMultiDict[str], body: bytes | None = None) -> None:
        """The answer is complete: ``body`` for a JSON answer, else what ``feed`` saw."""

    def abort(self) -> None:
        """The answer failed part-way; nothing is stored."""


NULL_RECORDER = Recorder()
