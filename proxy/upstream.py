"""The one client session, and the only place aiohttp client errors become ``UpstreamError``.

``Upstream.open`` makes one attempt at one endpoint and returns once the answer's
first bytes are in hand (the whole body for a JSON answer), so the router can still
fall back to another endpoint on any failure up to that point.

It is also the only place upstream answers are read, so it is where a credential the
upstream echoes back (some gateways quote the ``Authorization`` header in a 401) is
redacted: from bodies, streams and headers, before the relay, cache, logs or traces see it.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp
import msgspec
from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.endpoint_config import MAX_ANSWER_BYTES, Timeouts
from proxy.errors import (
    SidecarStopping,
    UpstreamBroken,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)

# Response headers that describe this hop only, or that the relay sets itself.
_DROP_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "server",
        "date",
        "set-cookie",
    }
)


def map_client_error(exc: BaseException, phase: str) -> UpstreamError:
    """Translate an aiohttp/asyncio failure during ``phase`` into the proxy's own error."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return UpstreamTimeout(f"upstream timed out ({phase})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(f"cannot connect to upstream ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamBroken(f"upstream answer was cut ({phase})")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError)):
        return UpstreamBroken(f"upstream closed the connection ({phase})")
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamBroken(f"upstream failed ({phase}): {type(exc).__name__}")
    raise TypeError(f"not an upstream failure: {exc!r}") from exc


_CAUGHT = (aiohttp.ClientError, TimeoutError, ConnectionError)

#: How much of a probe's body is read (and dropped) to keep its connection; past it the connection is closed.
PROBE_BODY_BYTES = 64 * 1024


@functools.lru_cache(maxsize=64)
def _connect_timeout(seconds: float) -> aiohttp.ClientTimeout:
    # One per configured value (the object is immutable), not one per attempt.
    return aiohttp.ClientTimeout(total=None, sock_connect=seconds)


def response_headers(headers: CIMultiDictProxy[str], redactor: Redactor | None = None) -> CIMultiDict[str]:
    # Copy whole, then delete: the C copy and a dozen lookups are 4× faster than a filtered rebuild.
    out = CIMultiDict(headers)
    for name in _DROP_RESPONSE_HEADERS:
        if name in out:
            del out[name]
    # One scan of all the values together: an echo in a header is rare.
    if redactor is not None and redactor.keys and redactor.found_in("\n".join(out.values())):
        echoed = [(name, value) for name, value in out.items() if redactor.found_in(value)]
        for name, _ in echoed:
            del out[name]
        for name, value in echoed:
            out.add(name, redactor.text(value))
    return out


REDACTED = "[redacted]"
_REDACTED_BYTES = REDACTED.encode()
#: shorter "credentials" (a local server's "none", "x") are no secret; replacing them would garble answers
_MIN_SECRET = 8


@functools.lru_cache(maxsize=256)
def _secrets(values: tuple[str | None, ...]) -> tuple[tuple[str, ...], tuple[bytes, ...], frozenset[int]]:
    """The credentials in the credential headers' values, as text and bytes, and their bytes' set.

    Worked out once per distinct set of values (the endpoints' keys), not per attempt.
    """
    keys = {value[7:] if value[:7].lower() == "bearer " else value for value in values if value}
    # Longest first: a key that contains another is replaced whole.
    text = tuple(sorted((k for k in keys if len(k) >= _MIN_SECRET), key=len, reverse=True))
    encoded = tuple(k.encode() for k in text)
    return text, encoded, frozenset(b"".join(encoded))


class Redactor:
    """Replaces the credentials one attempt sent wherever the upstream's answer echoes them.

    A stream is redacted chunk by chunk; a chunk's tail that could be the start of a key
    cut by the chunk boundary is held back until the next chunk shows whether it is one.
    """

    __slots__ = ("keys", "_text_keys", "_key_bytes", "_held")

    def __init__(self, sent: CIMultiDict[str]) -> None:
        # The credential headers (``proxy.auth.CREDENTIAL_HEADERS``) read one by one: a generator
        # over their names cost as much again, on every attempt.
        get = sent.get
        self._text_keys, self.keys, self._key_bytes = _secrets((get("authorization"), get("x-api-key"), get("api-key")))
        self._held = b""

    def found_in(self, value: str) -> bool:
        for key in self._text_keys:
            if key in value:
                return True
        return False

    def text(self, value: str) -> str:
        for key in self._text_keys:
            value = value.replace(key, REDACTED)
        return value

    def whole(self, data: bytes) -> bytes:
        for key in self.keys:
            if data.partition(key)[1]:  # the cheapest test on Python 3.11: see ``AnswerStream.feed``
                data = data.replace(key, _REDACTED_BYTES)
        return data

    def feed(self, chunk: bytes, last: bool) -> bytes:
        """The redacted bytes of ``chunk`` that can go out now (all of them when ``last``)."""
        if not self.keys:
            return chunk
        data = self.whole(self._held + chunk if self._held else chunk)
        # A held-back tail must end in a byte some key has; an event stream's chunk ends in "\n".
        if last or not data or data[-1] not in self._key_bytes:
            self._held = b""
            return data
        cut = len(data)
        for key in self.keys:
            # Only the last len(key) - 1 bytes can start a key that the next chunk completes.
            start = max(0, len(data) - len(key) + 1)
            first = key[0]
            at = data.rfind(first, start)
            while at >= 0:
                if key.startswith(data[at:]):
                    cut = min(cut, at)
                    break
                at = data.rfind(first, start, at)
        self._held = data[cut:]
        return data[:cut]


class Answer(Protocol):
    """What the relay reads of an opened answer: an ``UpstreamResponse``, or one seen through a
    cross-dialect translation (``proxy.router.translated.TranslatedResponse``)."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> CIMultiDict[str]: ...
    @property
    def is_stream(self) -> bool: ...
    @property
    def body(self) -> bytes: ...
    @property
    def usage(self) -> Any: ...
    @property
    def first_in_hand(self) -> bool: ...
    @property
    def complete(self) -> bool: ...
    @property
    def deadline(self) -> float: ...
    def chunks(self) -> AsyncIterator[bytes]: ...
    def close(self) -> None: ...


class UpstreamResponse:
    """A 2xx upstream answer with its first bytes in hand.

    ``body`` holds a JSON answer whole and ``usage`` its ``usage`` object; an event
    stream yields its chunks from ``chunks()`` as they arrive, each read bounded by
    the idle and total timeouts.
    """

    __slots__ = (
        "status",
        "headers",
        "is_stream",
        "body",
        "usage",
        "_response",
        "_first",
        "_timeouts",
        "_deadline",
        "_redactor",
        "_waiting_since",
        "_watchdog",
        "_watch_at",
    )

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        first: bytes,
        timeouts: Timeouts,
        deadline: float,
        is_stream: bool,
        redactor: Redactor,
    ) -> None:
        self.status = response.status
        self.headers = response_headers(response.headers, redactor)
        self.is_stream = is_stream
        self._redactor = redactor
        if is_stream:
            self.body = b""
            self._first = redactor.feed(first, response.content.at_eof())
            self.usage = None
        else:
            self.body = self._first = redactor.whole(first)
            answer = _json_answer(self.body)
            if isinstance(answer.error, dict) or answer.type == "error":
                # The upstream's error under a 200: passed on as the error it is (a failed attempt,
                # never stored), as its error event ends a stream.
                raise UpstreamStatus(502, self.body, {k.lower(): v for k, v in self.headers.items()})
            self.usage = answer.usage
        self._response = response
        self._timeouts = timeouts
        self._deadline = deadline
        #: when the wait for the next bytes began (event-loop time), ``None`` when not waiting
        self._waiting_since: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_at = 0.0

    async def chunks(self) -> AsyncIterator[bytes]:
        """The stream's chunks not read yet (a second call goes on where the first stopped)."""
        first, self._first = self._first, b""
        if first:
            yield first
        loop = asyncio.get_running_loop()
        content = self._response.content
        redactor = self._redactor
        while True:
            now = loop.time()
            try:
                if now >= self._deadline:
                    raise TimeoutError
                # A slow stream waits for every chunk: one watchdog per stream (``_watch``)
                # bounds the waits, where a timer per wait cost ~30,000 instructions a chunk.
                # Only this await counts as idle; the time the caller takes between chunks
                # does not. (``readany`` returns at once with bytes already buffered: no
                # ``read_nowait`` first, which a slow stream would pay for nothing.)
                self._waiting_since = now
                if self._watchdog is None:
                    self._arm(loop, min(now + self._timeouts.idle, self._deadline))
                try:
                    chunk = await content.readany()
                finally:
                    self._waiting_since = None
            except _CAUGHT as exc:
                # A timeout is named by the clock that ran out; anything else happened mid-stream.
                raise map_client_error(exc, "total" if isinstance(exc, TimeoutError) else "mid-stream") from None
            if not chunk:
                if tail := redactor.feed(b"", True):
                    yield tail
                return
            if chunk := redactor.feed(chunk, content.at_eof()):
                yield chunk

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._watch_at = when
        self._watchdog = loop.call_at(when, self._watch, loop)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """The stream's watchdog: ends the current wait for bytes once it has lasted ``idle``
        (or reached the total deadline), else sleeps until the current or next wait could.

        It ends the wait as ``Upstream.stop`` does, with an error on the stream's reader,
        not by cancelling the reading task: a cancellation from outside (the client gone,
        a drain) stays a cancellation, and the reader raises the same ``UpstreamTimeout``
        as before, named by the clock that ran out.
        """
        self._watchdog = None
        content = self._response.content
        if self._response.closed or content.at_eof() or content.exception() is not None:
            return
        idle, deadline = self._timeouts.idle, self._deadline
        since = self._waiting_since
        if since is not None:
            due = min(since + idle, deadline)
            if due <= self._watch_at:
                phase = "idle between chunks" if since + idle < deadline else "total"
                content.set_exception(map_client_error(TimeoutError(), phase))
                return
        else:
            # A wait that starts from now on cannot end sooner than this.
            now = loop.time()
            due = min(now + idle, deadline) if now < deadline else now + idle
        self._arm(loop, due)

    @property
    def first_in_hand(self) -> bool:
        """The stream's first chunk is already read: ``chunks()`` yields it without waiting."""
        return bool(self._first)

    @property
    def complete(self) -> bool:
        """The whole answer is read: the chunk just yielded was the last."""
        return self._response.content.at_eof()

    @property
    def deadline(self) -> float:
        """When the attempt's ``total`` timeout ends, in event-loop time."""
        return self._deadline

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._response.close()


class _Answer(msgspec.Struct):
    usage: Any = None
    #: an error object where the answer should be: OpenAI's ``error`` (``null`` in a good Responses
    #: answer), Anthropic's ``type: error``
    error: Any = None
    type: Any = None


_answer = msgspec.json.Decoder(_Answer).decode


def _json_answer(body: bytes) -> _Answer:
    """A 2xx JSON answer's ``usage`` and error fields: an empty or malformed answer is a failed attempt (the
    router may fall back). The answer is checked whole, but only those are built (msgspec skips the rest)."""
    if not body.strip():
        raise UpstreamBroken("upstream answered with an empty body")
    try:
        answer = _answer(body)
    except msgspec.ValidationError:
        raise UpstreamBroken("upstream answer is not a JSON object") from None
    except msgspec.DecodeError:
        raise UpstreamBroken("upstream answer is not JSON") from None
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError:  # msgspec does not check the strings it skips
            raise UpstreamBroken("upstream answer is not JSON") from None
    return answer


def _too_large(limit: int) -> UpstreamBroken:
    return UpstreamBroken(f"upstream answer is larger than max_answer_bytes ({limit} bytes)")


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """A JSON or error answer's whole body, or ``UpstreamBroken`` once it passes ``limit`` bytes
    (a broken or hostile upstream would otherwise fill the pod's memory)."""
    length = response.content_length
    if length is not None and hdrs.CONTENT_ENCODING not in response.headers:
        # The common answer: its length is known before a byte is read (a compressed one is not).
        if length > limit:
            raise _too_large(limit)
        return await response.read()
    chunks = []
    size = 0
    content = response.content
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _is_event_stream(content_type: str) -> bool:
    # The media type without parameters, as ``ClientResponse.content_type`` has it, but without
    # the parameters' dict that property builds on every response (~4,000 instructions).
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


class Upstream:
    """Owns the process's one ``ClientSession``."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        #: streamed answers being read now, so a drain can end them (a closed one drops out by itself)
        self._streams: weakref.WeakSet[aiohttp.ClientResponse] = weakref.WeakSet()
        #: attempts waiting for an answer's head, so a drain can end them too; the value says
        #: whether the attempt's first-byte timer has cancelled it (``_first_byte_due``)
        self._opening: dict[asyncio.Task[Any], bool] = {}
        self._stopped: str | None = None

    def stop(self, reason: str) -> None:
        """End every attempt under way with ``SidecarStopping(reason)``: one waiting for its
        answer's head raises it at once (the caller gets an error in its dialect), a stream
        being read at its next read (the client gets an error event)."""
        self._stopped = reason
        for task in list(self._opening):
            task.cancel()
        for response in list(self._streams):
            if not response.closed and not response.content.at_eof():
                response.content.set_exception(SidecarStopping(reason))

    def _first_byte_due(self, task: asyncio.Task[Any]) -> None:
        """An attempt's first-byte timeout ran out: ``open`` sees its task cancelled, marked as by this."""
        self._opening[task] = True
        task.cancel()

    @classmethod
    def new_session(cls) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            # No cookies between calls of different apps or tenants.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            # No skip_auto_headers: with it, aiohttp rebuilds a header set for every request
            # (~20,000 instructions, 2 % of a JSON miss); ``proxy.auth`` sets the User-Agent
            # instead of aiohttp's own.
        )

    async def probe(self, url: str, headers: dict[str, str], timeout: float) -> int:
        """A health probe: GET ``url`` and return the status.

        Only the status counts. A small body (a models list) is read and dropped so the connection
        is kept for the next probe; past ``PROBE_BODY_BYTES`` the connection is closed instead, so
        a probe URL serving a huge or endless body is neither buffered nor read until the timeout.
        """
        try:
            async with asyncio.timeout(timeout):
                async with self.session.get(url, headers=headers, allow_redirects=False) as response:
                    seen = 0
                    while seen <= PROBE_BODY_BYTES:
                        chunk = await response.content.read(PROBE_BODY_BYTES)
                        if not chunk:
                            break
                        seen += len(chunk)
                    else:
                        response.close()
                    return response.status
        except _CAUGHT as exc:
            raise map_client_error(exc, "probe") from None

    async def open(
        self,
        url: str,
        headers: CIMultiDict[str],
        body: bytes,
        timeouts: Timeouts,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> UpstreamResponse:
        """One attempt; a JSON or error answer over ``max_bytes`` is ``UpstreamBroken`` (closed, never read whole)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeouts.total
        response: aiohttp.ClientResponse | None = None
        redactor = Redactor(headers)
        phase = "connect"
        if self._stopped is not None:
            raise SidecarStopping(self._stopped)
        task: asyncio.Task[Any] = asyncio.current_task()  # type: ignore[assignment]  # called in a task
        # The first-byte timeout as one timer that cancels the task, set once and cancelled once:
        # ``asyncio.timeout`` did the same with a Timeout object, two coroutines and a reschedule
        # per attempt. Like it, a firing is told apart from other cancellations by their count.
        cancelled_before = task.cancelling()
        timer = loop.call_at(min(now + timeouts.first_byte, deadline), self._first_byte_due, task)
        opening = self._opening
        opening[task] = False
        try:
            response = await self.session.post(
                url,
                data=body,
                headers=headers,
                timeout=_connect_timeout(timeouts.connect),
                allow_redirects=False,
            )
            phase = "first byte"
            is_stream = _is_event_stream(response.headers.get(hdrs.CONTENT_TYPE, ""))
            if response.status >= 300 or not is_stream:
                first = await _read_bounded(response, max_bytes)
            else:
                first = await response.content.readany()
                if not first:
                    raise UpstreamBroken("upstream answered with an empty stream")
        except BaseException as exc:
            timer.cancel()
            if response is not None:
                response.close()
            # The timer's own cancellation is taken back whatever the attempt ended with.
            timed_out = opening.pop(task) and task.uncancel() <= cancelled_before
            if isinstance(exc, asyncio.CancelledError):
                if timed_out:  # the timer cancelled the task, and nothing else did
                    raise map_client_error(TimeoutError(), phase) from None
                # ``stop()`` cancelled it (and nothing else did): an error, not a vanished call.
                if self._stopped is not None and task.uncancel() == 0:
                    raise SidecarStopping(self._stopped) from None
                raise
            if isinstance(exc, _CAUGHT):
                raise map_client_error(exc, phase) from None
            raise
        timer.cancel()
        if opening.pop(task):  # it fired, but the cancellation was swallowed on the way: take it back
            task.uncancel()
        if response.status >= 300:
            response.release()
            if response.status < 400:
                # Never hand a redirect to the client: its SDK would follow it past the sidecar.
                raise UpstreamBroken(f"upstream answered a redirect ({response.status}); check the endpoint url")
            raise UpstreamStatus(
                response.status,
                redactor.whole(first),
                {k.lower(): v for k, v in response_headers(response.headers, redactor).items()},
            )
        try:
            answer = UpstreamResponse(response, first, timeouts, deadline, is_stream, redactor)
        except UpstreamError:
            response.close()
            raise
        if is_stream:
            self._streams.add(response)
        return answer
