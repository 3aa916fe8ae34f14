"""The Anthropic wire format: ``{"type": "error", ...}`` errors, ``x-api-key``."""

from __future__ import annotations

import orjson
from aiohttp import hdrs
from multidict import CIMultiDictProxy

from proxy.dialects.base import Operation
from proxy.dialects.sse import format_frame
from proxy.dialects.stream import anthropic_messages
from proxy.errors import ProxyError

API_VERSION = "2023-06-01"


class AnthropicDialect:
    name = "anthropic"
    prefix = "/anthropic"
    operations = {
        op.path: op
        for op in (
            Operation("/v1/messages", events=anthropic_messages),
            Operation("/v1/messages/count_tokens", cacheable=False),
        )
    }

    def _error(self, error: ProxyError) -> dict:
        return {"type": "error", "error": {"type": error.type, "message": error.message}}

    def error_body(self, error: ProxyError) -> bytes:
        return orjson.dumps(self._error(error))

    def stream_error_frame(self, error: ProxyError) -> bytes:
        # The SDK raises on an ``error`` event in the stream.
        return format_frame(self._error(error), event="error")

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def client_credential(self, headers: CIMultiDictProxy[str]) -> str | None:
        if "x-api-key" in headers:
            return headers["x-api-key"]
        value = headers.get(hdrs.AUTHORIZATION, "")
        return value[7:] if value[:7].lower() == "bearer " else None

    def default_headers(self) -> dict[str, str]:
        return {"anthropic-version": API_VERSION}


ANTHROPIC = AnthropicDialect()
