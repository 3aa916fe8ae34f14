"""An upstream answer seen through a cross-dialect ``Translation``: the relay reads it like any other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy.dialects.translate import Translation, TranslationError
from proxy.errors import UpstreamBroken
from proxy.upstream import UpstreamResponse


class TranslatedResponse:
    """An ``Answer``, as the relay reads one (status, headers, is_stream, body, chunks, close).

    A JSON answer is translated here, before the relay starts, so an unreadable answer
    is still a failed attempt the router can fall back from.
    """

    __slots__ = ("status", "headers", "is_stream", "body", "usage", "_inner", "_stream")

    def __init__(self, inner: UpstreamResponse, translation: Translation, payload: dict[str, Any]) -> None:
        self._inner = inner
        self.status = inner.status
        self.headers = inner.headers
        self.is_stream = inner.is_stream
        self._stream = translation.stream(payload) if inner.is_stream else None
        try:
            self.body = b"" if inner.is_stream else translation.response(inner.body)
        except TranslationError as error:
            raise UpstreamBroken(f"cannot translate the upstream answer: {error}") from None
        self.usage = None if inner.is_stream else orjson.loads(self.body).get("usage")

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._stream is not None
        try:
            async for chunk in self._inner.chunks():
                if out := self._stream.feed(chunk):
                    yield out
        except TranslationError as error:
            raise UpstreamBroken(f"cannot translate the upstream stream: {error}") from None
        # No closing frames are made up here: the caller's end marker comes only from the
        # endpoint's own, so a stream cut short stays cut short (and the relay says so).

    # The translator may hold the first bytes until a frame is whole: the relay must not
    # wait for a first chunk with the headers.
    first_in_hand = False

    @property
    def complete(self) -> bool:
        """The endpoint's answer is read to its end (nothing is added after it)."""
        return self._inner.complete

    @property
    def deadline(self) -> float:
        return self._inner.deadline

    def close(self) -> None:
        self._inner.close()
