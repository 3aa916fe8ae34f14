"""``Entry``: one stored answer, and its byte encoding.

An entry keeps the answer in the form it passed through: the JSON body of a
non-streaming call, or the SSE frames of a streamed one, byte for byte. The
other form is derived on replay (``proxy/dialects/forms.py``).

Encoding: a 4-byte length, a small JSON header, then the body as it came; the
whole is packed by ``compression.pack`` (compressed above the threshold).
"""

from __future__ import annotations

import struct
import sys
import time
from dataclasses import dataclass, field

import orjson

from proxy.cache.compression import RAW, CorruptValue, pack, unpack

_LENGTH = struct.Struct(">I")


@dataclass(slots=True)
class Entry:
    status: int
    content_type: str
    #: the JSON body, or the SSE frames joined
    body: bytes
    stream: bool
    #: wall-clock seconds when the answer was complete (shared across pods, so not monotonic)
    created: float
    #: seconds the entry is fresh
    ttl: float
    input_tokens: int = 0
    output_tokens: int = 0
    #: a streamed OpenAI answer that carries the usage chunk (``stream_options.include_usage``)
    has_usage: bool = True
    #: bytes of its encoding when an in-process tier keeps the entry itself (``keepable``)
    size: int = field(default=0, compare=False, repr=False)

    def age(self, now: float | None = None) -> float:
        # Not max(0.0, ...): the builtin costs five times the comparison, twice on every hit.
        age = (time.time() if now is None else now) - self.created
        return age if age > 0.0 else 0.0

    def fresh(self, now: float, max_age: float | None = None) -> bool:
        age = self.age(now)
        return age < self.ttl and (max_age is None or age <= max_age)

    def encode(self, compress_threshold: int) -> bytes:
        header = orjson.dumps(
            [
                self.status,
                self.content_type,
                self.stream,
                self.created,
                self.ttl,
                self.input_tokens,
                self.output_tokens,
                self.has_usage,
            ]
        )
        return pack(_LENGTH.pack(len(header)) + header + self.body, compress_threshold)

    def keepable(self, value: bytes) -> Entry | bytes:
        """What an in-process tier keeps for ``value`` (this entry's encoding): the entry itself
        when the value is stored raw, so a hit decodes nothing; a compressed value stays packed,
        so the tier's bound keeps counting (and holding) compressed bytes."""
        if value[:1] != RAW:
            return value
        # The encoding's bytes (the body is nearly all of it) plus what the object and its
        # fields take beyond them (its floats and ints, the content type): counted high, never low.
        self.size = len(value) + sys.getsizeof(self) + sys.getsizeof(self.content_type) + 2 * 32
        return self

    @classmethod
    def decode(cls, value: bytes) -> Entry:
        data = unpack(value)
        try:
            (length,) = _LENGTH.unpack_from(data)
            status, content_type, stream, created, ttl, tin, tout, has_usage = orjson.loads(data[4 : 4 + length])
        except (struct.error, orjson.JSONDecodeError, ValueError, TypeError) as exc:
            raise CorruptValue(f"bad entry header: {exc}") from None
        return cls(status, content_type, bytes(data[4 + length :]), stream, created, ttl, tin, tout, has_usage)


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__
class Stored:
    """A stored answer in the form the call asks for: what the cache hands the pipeline
    (the relay writes it to the client)."""

    entry: Entry
    body: bytes
    #: the cache status the answer goes out with: hit, coalesced or stale
    status: str
    #: seconds since the answer was made (the ``Age`` header)
    age: int
