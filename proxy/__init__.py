"""llm-sidecar: an LLM egress proxy for Kubernetes pods, and its library face.

One call flows through named steps (``pipeline.Pipeline.handle``):

    server.py     the aiohttp apps: proxy routes per dialect, admin /healthz /readyz /metrics
    pipeline.py   read → cache → coalesce → route → relay, in one screen
    call.py       the Call object every step reads and fills in
    cache/        lookup, recording, coalescing; memory and Redis backends
    router/       model groups of endpoints: semaphores, selection (zones, balance), fallback, health
    discovery/    endpoints found at run time: a Service's EndpointSlices, or DNS
    upstream.py   the one client session; aiohttp errors become proxy errors here only
    relay.py      stream the answer to the client as it arrives, teed into the cache
    dialects/     OpenAI and Anthropic wire formats, SSE, cross-dialect translation
    telemetry/    metrics, traces and logs, recorded once per call
"""

from __future__ import annotations

from proxy.lazy import lazy_exports

# The library face: name -> module that defines it. Imported on first use, so the
# sidecar process loads only what it runs.
_EXPORTS = {
    "DistributedCacheDecorator": "proxy.cache.decorator",
    "AsyncRAGGenerator": "proxy.rag",
    "ConcurrentRouter": "proxy.router.library",
    "ModelEndpoint": "proxy.router.endpoint",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
