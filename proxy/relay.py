"""Relay: every answer to the client; the upstream's goes back as it arrives, checked, teed into the recorder.

A streamed answer goes out in whole frames, each checked in the caller's dialect
(``proxy.dialects.stream``). Once ``prepare()`` has sent the status line, nothing can
fall back any more: a stream that fails after that (the upstream's error, a cut, a
malformed frame, a close before the end marker) ends with one error event in the
caller's dialect, never a made-up end marker, so the SDK raises instead of taking a
partial answer for a whole one; the router counts it against the endpoint and nothing
is stored. A complete answer is handed to the recorder before its last frames are
written, so a client that hangs up as soon as it reads the end marker loses nothing.

This module is the one place that writes to the client: the upstream's answer
(``relay``), a stored one (``send_stored``), a leader's stream to a coalesced
follower (``send_following``) and the proxy's own errors (``send_error``). The cache
and the coalescer only hand over data.
"""

from __future__ import annotations

import asyncio
import math
import time

from aiohttp import web
from multidict import CIMultiDict

from proxy.cache.coalesce import Following
from proxy.cache.directives import STATUS_HEADER
from proxy.cache.entry import Stored
from proxy.cache.recorder import Recorder
from proxy.call import Call
from proxy.dialects.stream import AnswerStream
from proxy.dialects.usage import merge_usage
from proxy.errors import (
    CLIENT_STALLED,
    MissingKey,
    NoEndpointAvailable,
    Overloaded,
    ProxyError,
    UpstreamBroken,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from proxy.upstream import Answer

#: seconds past the total timeout that the last words (an error event, the end) may take to send
_WRITE_GRACE = 5.0


async def relay(call: Call, upstream: Answer, recorder: Recorder) -> web.StreamResponse:
    headers = upstream.headers
    headers["x-request-id"] = call.request_id
    if call.response_headers:  # (most calls add none: ``update`` with nothing costs ~800 instructions)
        headers.update(call.response_headers)
    call.status = upstream.status
    if not upstream.is_stream:
        call.first_byte_at = time.perf_counter()
        merge_usage(call.usage, upstream.usage)
        recorder.finish(upstream.status, headers, call.usage, upstream.body)
        call.outcome = "upstream"
        return web.Response(status=upstream.status, body=upstream.body, headers=headers)

    response = web.StreamResponse(status=upstream.status, headers=headers)
    if upstream.first_in_hand:
        # Nothing waits between prepare() and the first write, so the status line and the
        # headers go out with the first chunk in one send, not two (aiohttp's ``Response``
        # buffers its headers the same way; older aiohttp ignores the attribute).
        response._send_headers_immediately = False
    await response.prepare(call.request)
    answer = AnswerStream(call.operation.events, call.usage)
    chunks = upstream.chunks()
    # The frames that end the answer go out in one write with the end of the response.
    tail = b""
    settled = False  # the recorder heard how the answer ended
    # Reads are bounded by the upstream timeouts; this bounds the writes too: a client that
    # stops reading must not hold the endpoint's slot past the attempt's total timeout.
    try:
        async with asyncio.timeout_at(upstream.deadline + _WRITE_GRACE):
            failure: UpstreamError | None = None
            try:
                async for chunk in chunks:
                    if call.first_byte_at is None:
                        call.first_byte_at = time.perf_counter()
                    frames = answer.feed(chunk)
                    if frames:
                        recorder.feed(frames)
                        if answer.ended or answer.fault is not None:
                            tail = frames
                            break
                        await response.write(frames)
                    elif answer.fault is not None:
                        break
                else:
                    if frames := answer.close():
                        recorder.feed(frames)
                        tail = frames
            except UpstreamError as error:
                failure = error
            if failure is None and answer.failure is not None:
                failure = UpstreamBroken(answer.failure)
            if failure is None:
                recorder.finish(upstream.status, headers, call.usage)
                call.outcome = "upstream"
            else:
                recorder.abort(failure, told=answer.upstream_error)
                call.outcome = "error"
                call.error_type = failure.type
                call.upstream_failure = failure
                if not answer.upstream_error:  # the upstream's own error event already went out
                    tail += call.dialect.stream_error_frame(failure)
            settled = True
            if failure is None and not upstream.complete:
                # The end marker came before the upstream's end: the client gets it at once,
                # and the upstream is read to its end so its connection can serve another call.
                await response.write(tail)
                tail = b""
                try:
                    async for _ in chunks:
                        pass
                except UpstreamError:
                    pass  # the answer is whole; only the connection is lost
            await response.write_eof(tail)
    except (ConnectionResetError, asyncio.CancelledError) as exc:
        # The client left (aiohttp cancels the handler, or a write found the connection
        # closed): before the end, nothing is stored unless coalesced calls follow this one,
        # which get the rest of the answer; after the end, nothing is lost.
        cancelled = isinstance(exc, asyncio.CancelledError)
        if not settled:
            call.outcome = "cancelled"  # the client's choice (a "stop generating"), not a failure
            if recorder.followed:
                await _read_on(call, upstream, answer, recorder, headers)
            else:
                recorder.abort()
        if cancelled:
            raise
    except TimeoutError:
        call.error_type = CLIENT_STALLED
        if not settled:
            recorder.abort()
        if call.request.transport is not None:
            call.request.transport.abort()
    return response


async def _read_on(
    call: Call, upstream: Answer, answer: AnswerStream, recorder: Recorder, headers: CIMultiDict[str]
) -> None:
    """The rest of the upstream's stream, checked, into the recorder only: its client is gone.

    Bounded by the attempt's deadline, and by the drain (which cuts the upstream's stream).
    """
    failure: UpstreamError | None = None
    try:
        async with asyncio.timeout_at(upstream.deadline):
            async for chunk in upstream.chunks():  # from where the client's loop stopped
                if frames := answer.feed(chunk):
                    recorder.feed(frames)
                if answer.ended or answer.fault is not None:
                    break
            else:
                if frames := answer.close():
                    recorder.feed(frames)
    except UpstreamError as error:
        failure = error
    except TimeoutError:
        failure = UpstreamTimeout("upstream timed out (total)")
    if failure is None and answer.failure is not None:
        failure = UpstreamBroken(answer.failure)
    if failure is None:
        recorder.finish(upstream.status, headers, call.usage)
    else:
        recorder.abort(failure, told=answer.upstream_error)
        call.upstream_failure = failure


def send_stored(call: Call, stored: Stored) -> web.Response:
    """A stored answer (a hit, a coalesced call's finished answer, a stale one), whole."""
    entry = stored.entry
    call.status = entry.status
    call.first_byte_at = time.perf_counter()
    content_type = "text/event-stream" if call.stream else ("application/json" if entry.stream else entry.content_type)
    headers = {
        **call.response_headers,
        "Content-Type": content_type,
        "x-request-id": call.request_id,
        STATUS_HEADER: stored.status,
        "Age": str(stored.age),
    }
    if call.stream:
        headers["Cache-Control"] = "no-cache"
    return web.Response(status=entry.status, body=stored.body, headers=headers)


async def send_following(call: Call, following: Following) -> web.StreamResponse:
    """The leader's frames, to a coalesced follower's client as they arrive; its end, or an error event."""
    call.status = 200
    response = web.StreamResponse(
        status=200,
        headers={
            **call.response_headers,
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "x-request-id": call.request_id,
            STATUS_HEADER: "coalesced",
            "Age": "0",
        },
    )
    await response.prepare(call.request)
    try:
        async for data in following.batches():
            if call.first_byte_at is None:
                call.first_byte_at = time.perf_counter()
            await response.write(data)
        # The leader's answer was checked as it passed; if it broke, this copy ends the same way.
        failure = following.failure
        tail = b""
        if failure is not None:
            call.error_type = failure.type
            if not following.flight.told:  # else the upstream's own error event already went out
                tail = call.dialect.stream_error_frame(failure)
        await response.write_eof(tail)
    except (ConnectionResetError, asyncio.CancelledError) as exc:
        call.outcome = "cancelled"  # its client left; the leader reads on for the others
        if isinstance(exc, asyncio.CancelledError):
            raise
    return response


def send_error(call: Call, error: ProxyError) -> web.Response:
    """An error before any byte of an answer went out, in the caller's dialect."""
    call.outcome = "error"
    call.status = error.status
    call.error_type = error.type
    if isinstance(error, UpstreamStatus):
        # The upstream's own error goes back as it came, so the SDK sees the real cause;
        # the request id stays ours, the one the access line carries.
        headers = {**error.headers, **call.response_headers, "x-request-id": call.request_id}
        return web.Response(status=error.status, body=error.body, headers=headers)
    headers = {**call.response_headers, "x-request-id": call.request_id}
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    elif isinstance(error, NoEndpointAvailable) and error.retry_after is not None:
        # Rounded up: an SDK retrying sooner would find the circuit still open.
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    elif isinstance(error, MissingKey):
        headers["x-should-retry"] = "false"  # the OpenAI and Anthropic SDKs skip their retries
    headers["Content-Type"] = "application/json"
    return web.Response(status=error.status, body=call.dialect.error_body(error), headers=headers)
