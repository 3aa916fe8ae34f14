"""Compression of stored values above a size threshold.

A stored value starts with one byte that says how the rest is packed, so entries
written by a sidecar with another threshold (or without zstandard) still read back.
"""

from __future__ import annotations

import zlib

try:
    import zstandard
except ImportError:  # zlib is always there; zstd is faster and smaller
    zstandard = None  # type: ignore[assignment]  # the optional module is None when missing

_ERRORS: tuple[type[Exception], ...] = (zlib.error, ValueError) + ((zstandard.ZstdError,) if zstandard else ())

RAW = b"r"
ZSTD = b"z"
ZLIB = b"l"


class CorruptValue(Exception):
    """A stored value cannot be unpacked; the cache treats it as a miss."""


def pack(data: bytes, threshold: int) -> bytes:
    if len(data) <= threshold:
        return RAW + data
    if zstandard is not None:
        return ZSTD + zstandard.compress(data, 3)
    return ZLIB + zlib.compress(data, 6)


def unpack(value: bytes) -> bytes | memoryview:
    """The packed data; a view into ``value`` when it was stored raw (no copy)."""
    kind, data = value[:1], memoryview(value)[1:]
    try:
        if kind == RAW:
            return data
        if kind == ZSTD and zstandard is not None:
            return zstandard.decompress(data)
        if kind == ZLIB:
            return zlib.decompress(data)
    except _ERRORS as exc:
        raise CorruptValue(str(exc)) from None
    raise CorruptValue(f"unknown packing {kind!r}")
