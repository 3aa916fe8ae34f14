"""What every dialect (wire format) provides to the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from multidict import CIMultiDictProxy

from proxy.dialects.stream import FrameRule, no_stream
from proxy.errors import ProxyError


@dataclass(frozen=True, slots=True)
class Operation:
    """One API operation a dialect exposes, e.g. OpenAI's ``/chat/completions``."""

    path: str
    #: answers may be stored in the response cache
    cacheable: bool = True
    #: the call names a model group in its ``model`` field
    routed: bool = True
    #: reads one frame of a streamed answer (``proxy.dialects.stream``): its end marker, usage, faults
    events: FrameRule = no_stream


class Dialect(Protocol):
    name: str
    #: the path prefix the proxy serves this dialect under (``/v1``, ``/anthropic``)
    prefix: str
    operations: dict[str, Operation]

    def error_body(self, error: ProxyError) -> bytes: ...

    def stream_error_frame(self, error: ProxyError) -> bytes: ...

    def auth_headers(self, key: str) -> dict[str, str]: ...

    def client_credential(self, headers: CIMultiDictProxy[str]) -> str | None: ...

    def default_headers(self) -> dict[str, str]: ...
