"""The errors the proxy answers with.

Each class knows its HTTP status and its error type; the caller's dialect
renders the wire format (``proxy/dialects``), so SDKs raise their usual
exception types.

    ProxyError
    ├── ClientError                 the call itself is wrong; never retried
    │   ├── BadRequest              400 invalid_request_error (malformed JSON, missing model, stream not a boolean)
    │   ├── NotFound                404 not_found_error (unknown model group or path)
    │   ├── RequestTimeout          408 timeout_error (the body did not arrive within keepalive_timeout)
    │   ├── PayloadTooLarge         413 request_too_large
    │   └── UnsupportedMediaType    415 invalid_request_error (a Content-Encoding the sidecar cannot decode)
    ├── Overloaded                  429 rate_limit_error (every endpoint full or cooling down)
    ├── NoEndpointAvailable         503 overloaded_error (every endpoint's circuit is open)
    ├── MissingKey                  500 api_error (the sidecar has no key for the model group)
    └── UpstreamError               a try at one endpoint failed
        ├── UpstreamConnectError    502 api_error (connect refused, DNS, TLS)
        ├── UpstreamTimeout         504 timeout_error (connect, first byte, idle, total)
        ├── UpstreamBroken          502 api_error (the connection died mid-answer)
        ├── SidecarStopping         503 api_error (the drain's time ended mid-answer)
        └── UpstreamStatus          the upstream's own non-2xx status, body passed through

One error type has no class: ``client_stalled``, a client that stopped reading mid-answer
(``proxy/relay.py``); it gets no error response, only a closed connection.

aiohttp client errors become ``UpstreamError`` in ``proxy/upstream.py`` only;
Redis errors never leave ``proxy/cache``.
"""

from __future__ import annotations

#: a call whose client stopped reading its answer; the metrics count it by this name, not as "other"
CLIENT_STALLED = "client_stalled"


class ProxyError(Exception):
    status: int = 500
    type: str = "api_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ClientError(ProxyError):
    status = 400
    type = "invalid_request_error"


class BadRequest(ClientError):
    pass


class NotFound(ClientError):
    status = 404
    type = "not_found_error"


class RequestTimeout(ClientError):
    status = 408
    type = "timeout_error"


class PayloadTooLarge(ClientError):
    status = 413
    type = "request_too_large"


class UnsupportedMediaType(ClientError):
    status = 415


class Overloaded(ProxyError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoEndpointAvailable(ProxyError):
    status = 503
    type = "overloaded_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: seconds until the soonest endpoint may be tried again, when the router knows
        self.retry_after = retry_after


class MissingKey(ProxyError):
    """The model group's key is missing in the sidecar (its variable or file); the call is not
    sent. Answered with ``x-should-retry: false``: the SDKs' retries cannot fix it."""

    status = 500
    type = "api_error"


class UpstreamError(ProxyError):
    status = 502
    type = "api_error"
    #: whether another endpoint may be tried for this failure (router policy may narrow it)
    retryable: bool = True


class UpstreamConnectError(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"


class UpstreamBroken(UpstreamError):
    pass


class SidecarStopping(UpstreamError):
    """The sidecar's drain timeout ended before the answer: the stream is cut with this error."""

    status = 503
    retryable = False


class UpstreamStatus(UpstreamError):
    """The upstream answered with a non-2xx status; its body goes back as it came."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.headers = headers
        self.retryable = status == 429 or status >= 500

    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None
