"""Active health: one background task per endpoint GETs a cheap URL at an interval.

The URL is the endpoint's ``probe_url``, by default its models list, so a probe never
costs a billed completion. Any HTTP answer below 500 means "reachable" (a 401 is a
key problem the calls themselves will report); connect errors, timeouts and 5xx count
as failures. ``unhealthy_after`` failures in a row mark the endpoint unhealthy and the
router skips it; ``healthy_after`` good probes bring it back. Started and stopped by
one ``cleanup_ctx`` in ``proxy/server.py`` (or by ``ConcurrentRouter``).
"""

from __future__ import annotations

import asyncio
import random
import time

from proxy.auth import probe_headers
from proxy.errors import UpstreamError
from proxy.router.config import HealthConfig
from proxy.router.endpoint import Endpoint
from proxy.telemetry.logs import event
from proxy.upstream import Upstream


class HealthProber:
    def __init__(self, endpoints: list[Endpoint], upstream: Upstream, config: HealthConfig) -> None:
        self.endpoints = endpoints
        self.upstream = upstream
        self.config = config
        self._tasks: dict[Endpoint, asyncio.Task[None]] = {}
        self._started = False

    def start(self) -> None:
        self._started = True
        self.watch(self.endpoints)

    def watch(self, endpoints: list[Endpoint]) -> None:
        """Probe these too (endpoints discovery added); nothing before ``start`` or when disabled."""
        if not self._started or not self.config.enabled:
            return
        for endpoint in endpoints:
            if endpoint not in self._tasks:
                name = f"probe:{endpoint.group}/{endpoint.name}"
                self._tasks[endpoint] = asyncio.create_task(self._loop(endpoint), name=name)

    def forget(self, endpoints: list[Endpoint]) -> None:
        """Stop probing these (discovery no longer lists them)."""
        for endpoint in endpoints:
            task = self._tasks.pop(endpoint, None)
            if task is not None:
                task.cancel()

    async def stop(self) -> None:
        self._started = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def probe(self, endpoint: Endpoint) -> bool:
        """One probe; records its verdict on the endpoint and returns whether it succeeded."""
        config = endpoint.config
        assert config.probe_url is not None
        try:
            status = await self.upstream.probe(config.probe_url, probe_headers(config), self.config.timeout)
            ok = status < 500
            error = None if ok else f"status_{status}"
        except UpstreamError as exc:
            ok, error = False, type(exc).__name__
        except Exception as exc:  # a probe that cannot even be sent is a failed probe, not a dead task
            ok, error = False, type(exc).__name__
        self.record(endpoint, ok, error)
        return ok

    def record(self, endpoint: Endpoint, ok: bool, error: str | None = None) -> None:
        endpoint.last_probe_at = time.monotonic()
        if ok:
            endpoint.probe_successes += 1
            endpoint.probe_failures = 0
            if endpoint.healthy is not True and endpoint.probe_successes >= self.config.healthy_after:
                self._mark(endpoint, True)
        else:
            endpoint.last_error = error
            endpoint.probe_failures += 1
            endpoint.probe_successes = 0
            if endpoint.healthy is not False and endpoint.probe_failures >= self.config.unhealthy_after:
                self._mark(endpoint, False)

    @staticmethod
    def _mark(endpoint: Endpoint, healthy: bool) -> None:
        was = endpoint.healthy
        endpoint.healthy = healthy
        if was is not None or not healthy:
            event(
                "endpoint health",
                group=endpoint.group,
                endpoint=endpoint.name,
                health="healthy" if healthy else "unhealthy",
            )

    async def _loop(self, endpoint: Endpoint) -> None:
        # Spread the probes of many endpoints over the interval instead of firing them together.
        await asyncio.sleep(random.uniform(0, min(1.0, self.config.interval)))
        while True:
            await self.probe(endpoint)
            await asyncio.sleep(self.config.interval * random.uniform(0.9, 1.1))
