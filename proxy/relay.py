"""Relay: the upstream answer goes back to the client as it arrives, teed into the cache recorder.

Once ``prepare()`` has sent the status line, nothing can fall back any more: an
upstream failure after that ends the stream with one error event in the caller's
dialect, so the SDK raises instead of hanging.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from proxy.cache.recorder import Recorder
from proxy.call import Call
from proxy.errors import UpstreamError
from proxy.telemetry.usage import UsageTee, read_usage
from proxy.upstream import UpstreamResponse

#: seconds past the total timeout that the last words (an error event, the end) may take to send
_WRITE_GRACE = 5.0


async def relay(call: Call, upstream: UpstreamResponse, recorder: Recorder) -> web.StreamResponse:
    headers = upstream.headers
    headers["x-request-id"] = call.request_id
    headers.update(call.response_headers)
    call.status = upstream.status
    if not upstream.is_stream:
        call.first_byte_at = time.perf_counter()
        read_usage(upstream.body, call.usage)
        recorder.finish(upstream.status, headers, upstream.body)
        return web.Response(status=upstream.status, body=upstream.body, headers=headers)

    response = web.StreamResponse(status=upstream.status, headers=headers)
    if upstream.first_in_hand:
        # Nothing waits between prepare() and the first write, so the status line and the
        # headers go out with the first chunk in one send, not two (aiohttp's ``Response``
        # buffers its headers the same way; older aiohttp ignores the attribute).
        response._send_headers_immediately = False
    await response.prepare(call.request)
    usage = UsageTee(call.usage)
    # A chunk read together with the upstream's end is the last: it goes out in one write
    # with the end marker, at once (a short stream is then a single send, headers included).
    tail = b""
    settled = False  # the recorder heard how the answer ended
    # Reads are bounded by the upstream timeouts; this bounds the writes too: a client that
    # stops reading must not hold the endpoint's slot past the attempt's total timeout.
    try:
        async with asyncio.timeout_at(upstream.deadline + _WRITE_GRACE):
            try:
                async for chunk in upstream.chunks():
                    if call.first_byte_at is None:
                        call.first_byte_at = time.perf_counter()
                    if upstream.complete:
                        tail = chunk
                    else:
                        await response.write(chunk)
                    recorder.feed(chunk)
                    usage.feed(chunk)
            except UpstreamError as error:
                call.error_type = error.type
                recorder.abort()
                tail += call.dialect.stream_error_frame(error)
            else:
                recorder.finish(upstream.status, headers)
            settled = True
            await response.write_eof(tail)
    except TimeoutError:
        call.error_type = "client_stalled"
        if not settled:
            recorder.abort()
        if call.request.transport is not None:
            call.request.transport.abort()
    return response
