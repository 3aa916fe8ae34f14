"""The router: a model group's endpoints, each limited by a semaphore, with fallback and health.

    config.py      the ``router`` section and the endpoint/model-group fields
    endpoint.py    ``ModelEndpoint`` (the library's endpoint) and ``Endpoint`` (live state)
    selection.py   the order in which a call tries endpoints (pure)
    circuit.py     passive health: the circuit breaker per endpoint
    cooldown.py    ``Retry-After`` and rate-limit reset headers → a rest time
    health.py      active health: background probes of a cheap URL
    translated.py  an answer read through a cross-dialect translation
    router.py      ``Router.attempt(call)``: slots, fallback, retries (the pipeline's seam)
    library.py     ``ConcurrentRouter``: the same router as a library, from a prompt
"""

from __future__ import annotations

from proxy.lazy import lazy_exports

# Loaded on first use: ``proxy.upstream`` and ``proxy.auth`` import ``router.config``,
# and an eager import here would run back into them half-initialised.
_EXPORTS = {
    "PREFER_HEADER": "proxy.router.router",
    "Router": "proxy.router.router",
    "Endpoint": "proxy.router.endpoint",
    "ModelEndpoint": "proxy.router.endpoint",
    "ConcurrentRouter": "proxy.router.library",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
