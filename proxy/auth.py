"""Which headers go upstream, and the only place a provider key is revealed."""

from __future__ import annotations

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


def forwardable(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones (and those its Connection header names)."""
    named = {h.strip().lower() for h in headers.get("Connection", "").split(",") if h.strip()}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower.startswith(CONTROL_PREFIX):
            continue
        out.add(name, value)
    return out


def upstream_headers(call: Call, endpoint: EndpointConfig) -> CIMultiDict[str]:
    """Headers for one attempt: the client's, with the endpoint's credential in place of its own."""
    headers = forwardable(call.request.headers)
    dialect = DIALECTS[endpoint.dialect or "openai"]  # always set once the config is validated
    if endpoint.pass_through_key:
        if call.dialect is not dialect:
            # The client's credential is for its own dialect's provider; restate it in the target's.
            for name in CREDENTIAL_HEADERS:
                headers.popall(name, None)
            if call.client_key:
                headers.update(dialect.auth_headers(call.client_key))
    else:
        for name in CREDENTIAL_HEADERS:
            headers.popall(name, None)
        if endpoint.api_key is not None:
            headers.update(dialect.auth_headers(endpoint.api_key.reveal()))
    for name, value in dialect.default_headers().items():
        headers.setdefault(name, value)
    headers["x-request-id"] = call.request_id
    headers["Content-Type"] = "application/json"
    if "User-Agent" not in headers:
        headers["User-Agent"] = USER_AGENT
    return headers


def probe_headers(endpoint: EndpointConfig) -> dict[str, str]:
    """Headers for an active health probe: the endpoint's own credential, if it has one."""
    dialect = DIALECTS[endpoint.dialect or "openai"]  # always set once the config is validated
    headers = {**dialect.default_headers(), "User-Agent": USER_AGENT}
    if endpoint.api_key is not None:
        headers.update(dialect.auth_headers(endpoint.api_key.reveal()))
    return headers
