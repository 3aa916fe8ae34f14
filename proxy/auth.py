"""Which headers go upstream, and the only place a provider key is revealed."""

from __future__ import annotations

import functools

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.call import Call
from proxy.dialects import DIALECTS
from proxy.endpoint_config import EndpointConfig

# RFC 9110 §7.6.1 hop-by-hop fields, plus what the proxy sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "host",
        "content-length",
        "accept-encoding",
        # the body goes upstream decoded (``proxy/request_body.py``), whatever the client sent
        "content-encoding",
    }
)
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key"})
#: our own control headers are for the sidecar, never for the upstream
CONTROL_PREFIX = "x-llm-sidecar-"
#: sent upstream when the client sent no User-Agent (rather than the HTTP client library's own)
USER_AGENT = "llm-sidecar"


def forwardable(headers: CIMultiDictProxy[str], credentials: bool = True) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones (and those its Connection header names),
    and minus its credential headers unless ``credentials``."""
    # Copy whole, then drop by name: the C copy and a few deletes cost a third of a rebuild
    # header by header, and which names to drop is worked out once per layout of names.
    out = CIMultiDict(headers)
    for name in _not_forwarded(tuple(headers.keys()), headers.get(hdrs.CONNECTION, ""), credentials):
        del out[name]  # (present: the names are its own; ``del`` costs half of ``popall``)
    return out


@functools.lru_cache(maxsize=256)
def _not_forwarded(names: tuple[str, ...], connection: str, credentials: bool) -> tuple[str, ...]:
    """Which of a request's header names stay here (an SDK sends the same names on every call)."""
    named = {h.strip().lower() for h in connection.split(",") if h.strip()}
    drop = HOP_BY_HOP if credentials else HOP_BY_HOP | CREDENTIAL_HEADERS
    lowered = {name.lower() for name in names}
    return tuple(name for name in lowered if name in drop or name in named or name.startswith(CONTROL_PREFIX))


def upstream_headers(call: Call, endpoint: EndpointConfig) -> CIMultiDict[str]:
    """Headers for one attempt: the client's, with the endpoint's credential in place of its own."""
    dialect = DIALECTS[endpoint.dialect or "openai"]  # always set once the config is validated
    # The client's credential goes on only to an endpoint that takes it and speaks its dialect.
    headers = forwardable(call.request.headers, credentials=endpoint.pass_through_key and call.dialect is dialect)
    if endpoint.pass_through_key:
        if call.dialect is not dialect and call.client_key:
            # The client's credential is for its own dialect's provider; restate it in the target's.
            headers.update(dialect.auth_headers(call.client_key))
    elif endpoint.api_key is not None:
        headers.update(dialect.auth_headers(endpoint.api_key.reveal()))
    for name, value in dialect.default_headers().items():
        headers.setdefault(name, value)
    headers["x-request-id"] = call.request_id
    # (Names with capitals as aiohttp's ``istr``, already case-folded: a plain str is folded on every use.)
    headers[hdrs.CONTENT_TYPE] = "application/json"
    if hdrs.USER_AGENT not in headers:
        headers[hdrs.USER_AGENT] = USER_AGENT
    return headers


def probe_headers(endpoint: EndpointConfig) -> dict[str, str]:
    """Headers for an active health probe: the endpoint's own credential, if it has one."""
    dialect = DIALECTS[endpoint.dialect or "openai"]  # always set once the config is validated
    headers = {**dialect.default_headers(), "User-Agent": USER_AGENT}
    if endpoint.api_key is not None:
        headers.update(dialect.auth_headers(endpoint.api_key.reveal()))
    return headers
