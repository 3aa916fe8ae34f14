"""Compression of stored values above a size threshold.

A stored value starts with one byte that says how the rest is packed, so entries
written by a sidecar with another threshold still read back.
"""

from __future__ import annotations

import threading
from typing import Any

RAW = b"r"
ZSTD = b"z"


class CorruptValue(Exception):
    """A stored value cannot be unpacked; the cache treats it as a miss."""


def pack(data: bytes, threshold: int) -> bytes:
    if len(data) <= threshold:
        return RAW + data
    # Here, not at the top: a process whose answers all stay under the threshold never loads the codec.
    import zstandard

    return ZSTD + zstandard.compress(data, 3)


def unpack(value: bytes) -> bytes | memoryview:
    """The packed data; a view into ``value`` when it was stored raw (no copy)."""
    kind, data = value[:1], memoryview(value)[1:]
    if kind == RAW:
        return data
    if kind == ZSTD:
        import zstandard

        try:
            return _decompressor().decompress(data)
        except (zstandard.ZstdError, ValueError) as exc:
            raise CorruptValue(str(exc)) from None
    raise CorruptValue(f"unknown packing {kind!r}")


_THREAD = threading.local()


def _decompressor() -> Any:
    """This thread's decompressor: making one per value (``zstandard.decompress``) costs a hit more
    than the decompression; one is not safe to share between threads (the decorator runs in many)."""
    try:
        return _THREAD.decompressor
    except AttributeError:
        import zstandard

        decompressor = _THREAD.decompressor = zstandard.ZstdDecompressor()
        return decompressor
