"""The router: a model group's endpoints, each limited by a semaphore.

Core version: the group's first endpoint takes every call. Selection, fallback,
retries and health come with the router issue behind the same ``attempt`` seam.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import orjson

from proxy.auth import upstream_headers
from proxy.call import Call
from proxy.router.config import EndpointConfig
from proxy.upstream import Upstream, UpstreamResponse

if TYPE_CHECKING:
    from proxy.config import Config


class Endpoint:
    """An endpoint's config plus its live state."""

    __slots__ = ("config", "slots")

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.slots = asyncio.Semaphore(config.max_concurrent)


class Router:
    def __init__(self, config: Config, upstream: Upstream) -> None:
        self.upstream = upstream
        self.groups = {
            name: [Endpoint(e) for e in group.endpoints] for name, group in config.model_groups.items()
        }

    def request_body(self, call: Call, endpoint: EndpointConfig) -> bytes:
        """The original bytes, unless the endpoint knows the model by another name."""
        if endpoint.model is None or endpoint.model == call.model_group:
            return call.body
        return orjson.dumps({**call.payload, "model": endpoint.model})

    @asynccontextmanager
    async def attempt(self, call: Call) -> AsyncIterator[UpstreamResponse]:
        """Yields an open upstream answer; the endpoint's slot is held until the block ends."""
        endpoint = self.groups[call.model_group][0]
        config = endpoint.config
        async with endpoint.slots:
            call.endpoint = config.name
            call.attempts += 1
            url = config.url + call.operation.path
            response = await self.upstream.open(
                url, upstream_headers(call, config), self.request_body(call, config), config.timeouts
            )
            try:
                yield response
            finally:
                response.close()
