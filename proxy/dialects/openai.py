"""The OpenAI wire format: ``{"error": {...}}`` errors, ``Authorization: Bearer``."""

from __future__ import annotations

import orjson
from aiohttp import hdrs
from multidict import CIMultiDictProxy

from proxy.dialects.base import Operation
from proxy.dialects.sse import format_frame
from proxy.dialects.stream import openai_choices, openai_responses
from proxy.errors import ProxyError

_CODES = {413: "request_too_large", 429: "rate_limit_exceeded"}


class OpenAIDialect:
    name = "openai"
    prefix = "/v1"
    operations = {
        op.path: op
        for op in (
            Operation("/chat/completions", events=openai_choices),
            Operation("/completions", events=openai_choices),
            Operation("/embeddings"),
            Operation("/responses", events=openai_responses),
        )
    }

    def _error(self, error: ProxyError) -> dict:
        return {
            "error": {
                "message": error.message,
                "type": error.type,
                "param": error.param,
                # A 404 about the model is OpenAI's model_not_found; an unknown path has no code.
                "code": "model_not_found"
                if error.status == 404 and error.param == "model"
                else _CODES.get(error.status),
            }
        }

    def error_body(self, error: ProxyError) -> bytes:
        return orjson.dumps(self._error(error))

    def stream_error_frame(self, error: ProxyError) -> bytes:
        # The SDK's stream reader raises APIError on a data frame holding "error".
        return format_frame(self._error(error))

    def auth_headers(self, key: str) -> dict[str, str]:
        return {hdrs.AUTHORIZATION: f"Bearer {key}"}

    def client_credential(self, headers: CIMultiDictProxy[str]) -> str | None:
        value = headers.get(hdrs.AUTHORIZATION, "")
        return value[7:] if value[:7].lower() == "bearer " else None

    def default_headers(self) -> dict[str, str]:
        return {}


OPENAI = OpenAIDialect()
