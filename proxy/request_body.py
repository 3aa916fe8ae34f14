"""A request body as the sidecar reads it: decoded from its ``Content-Encoding``, within the size
limit, and only if the sidecar can write it back as it came.

The server reads bodies raw (aiohttp's own decoding answers unknown codings with a
plain-text 400 before the call reaches a handler), so a coding is decoded here and
its errors are the caller's, in its dialect:

- ``gzip``, ``deflate`` (zlib or raw), ``br`` and ``zstd`` are decoded; the body is then
  forwarded plain, without the header;
- any other coding, or a list of codings, is a 415 naming the ones supported;
- a body that decodes to more than ``max_body_bytes`` is a 413, found while
  decoding (a small "zip bomb" is never expanded past the limit); a corrupt one a 400.

A parsed body must also write back unchanged, since the cache key, a changed model
name and a cross-dialect translation all re-encode it: nesting deeper than orjson
writes (254 levels) and integers outside 64 bits (which orjson reads as floats,
rounded) are a 400, before any upstream call.
"""

from __future__ import annotations

import asyncio
import io
import json
import zlib
from collections.abc import Callable
from typing import Any

import brotli  # aiohttp loads it anyway (its own response decoding)
import orjson
from aiohttp import web

from proxy.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType

#: seconds a request's body has once its head is in (``server.keepalive_timeout``, as long as the head had)
BODY_TIMEOUT = web.AppKey("body_timeout", float)

_CHUNK = 64 * 1024


async def read_body(request: web.Request) -> bytes:
    """The raw body: a 413 past the app's size limit, a 408 if it has not come within ``BODY_TIMEOUT``.

    The head's timeout is over once the head is in: a body that stops coming would hold the
    connection (busy, so never evicted past the cap) for good.
    """
    try:
        if request.content.is_eof():  # the whole body came with the head: nothing to wait for
            return await request.read()
        timeout = request.app.get(BODY_TIMEOUT, 60.0)  # 60: the setting's default, for an app built elsewhere
        try:
            async with asyncio.timeout(timeout):
                return await request.read()
        except TimeoutError:
            raise RequestTimeout(f"request body not received within {timeout:g} s (server.keepalive_timeout)") from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body is larger than the limit of {request.client_max_size} bytes") from None


def _zlib(data: bytes, limit: int, wbits: int) -> bytes:
    decoder = zlib.decompressobj(wbits)
    out = bytearray()
    pending = data
    while pending and not decoder.eof:
        out += decoder.decompress(pending, _CHUNK)
        pending = decoder.unconsumed_tail
        if len(out) > limit:
            raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes once decoded")
    if not decoder.eof:
        raise BadRequest("request body ends before its compressed stream does")
    return bytes(out)


def _gzip(data: bytes, limit: int) -> bytes:
    return _zlib(data, limit, 16 + zlib.MAX_WBITS)


def _deflate(data: bytes, limit: int) -> bytes:
    # RFC 9110 means zlib-wrapped deflate; some clients send it raw. The first byte tells.
    return _zlib(data, limit, zlib.MAX_WBITS if data[:1] and data[0] & 0x0F == 8 else -zlib.MAX_WBITS)


def _zstd(data: bytes, limit: int) -> bytes:
    import zstandard  # here, not at the top: only a process sent zstd bodies loads the codec (~0.3 MB)

    out = bytearray()
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
        while chunk := reader.read(_CHUNK):
            out += chunk
            if len(out) > limit:
                raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes once decoded")
    except zstandard.ZstdError as exc:
        raise BadRequest(f"request body cannot be decoded as zstd: {exc}") from None
    return bytes(out)


def _br(data: bytes, limit: int) -> bytes:
    # The output buffer limit keeps a bomb from expanding past the limit in one call.
    decoder = brotli.Decompressor()
    out = bytearray(decoder.process(data, output_buffer_limit=_CHUNK))
    while not decoder.is_finished() and not decoder.can_accept_more_data():
        if len(out) > limit:
            raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes once decoded")
        out += decoder.process(b"", output_buffer_limit=_CHUNK)
    if len(out) > limit:
        raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes once decoded")
    if not decoder.is_finished():
        raise BadRequest("request body ends before its compressed stream does")
    return bytes(out)


DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _br,
    "zstd": _zstd,
}
_ERRORS = (zlib.error, brotli.error)  # zstd's are turned into a 400 in _zstd

_SUPPORTED = ", ".join(sorted(DECODERS))


def decode(body: bytes, coding: str | None, limit: int) -> bytes:
    """``body`` without its ``Content-Encoding`` ``coding``; at most ``limit`` bytes."""
    if coding is None:
        return body
    name = coding.strip().lower()
    if name in ("", "identity"):
        return body
    decoder = DECODERS.get(name)
    if decoder is None:
        raise UnsupportedMediaType(
            f"Content-Encoding {coding[:40]!r} is not supported; send the body plain "
            f"or encoded with one of: {_SUPPORTED}"
        )
    try:
        return decoder(body, limit)
    except _ERRORS as exc:
        raise BadRequest(f"request body cannot be decoded as {name}: {exc}") from None


def check_writable(payload: Any, body: bytes) -> None:
    """A 400 unless ``payload`` (parsed from ``body``) writes back as JSON unchanged."""
    try:
        written = orjson.dumps(payload)
    except orjson.JSONEncodeError:
        raise BadRequest("the request nests deeper than 254 levels") from None
    # An integer beyond 64 bits was read as a float of 1.8e19 or more, and every float
    # from 1e16 up is written with an exponent ("e+19"), so it adds an "e+" the body did
    # not have (text keeps its own). Only then is the body read again, by a parser that
    # sees the integers as written; a float spelled "1E+20" or "1e20" costs that too.
    if written.partition(b"e+")[1] and written.count(b"e+") > body.count(b"e+"):  # (see AnswerStream.feed)
        try:
            json.loads(body, parse_int=_int64)
        except ValueError:  # more digits than Python converts
            raise BadRequest("the request holds an integer too long to read") from None


def _int64(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**64:
        raise BadRequest(f"the integer {text[:30]}{'…' if len(text) > 30 else ''} is outside the 64-bit range")
    return value
