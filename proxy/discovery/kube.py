"""A Service's ready pods, from its EndpointSlices: list, then watch, over plain HTTP.

The sidecar talks to the API server with its own aiohttp client rather than the
``kubernetes`` package: the sidecar image stays small (that package is the injector's),
and the watch is a coroutine like everything else in the sidecar. What it speaks is the
API's documented list/watch protocol:

1. ``GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices?labelSelector=
   kubernetes.io/service-name=SVC``: every slice and the list's ``resourceVersion``.
2. The same with ``watch=1&resourceVersion=RV&allowWatchBookmarks=true``: one JSON
   event per line (``ADDED``, ``MODIFIED``, ``DELETED``, ``BOOKMARK``, ``ERROR``); each
   carries a newer ``resourceVersion`` to resume from when the server ends the watch.
3. ``410 Gone`` (as the answer, or as an ``ERROR`` event): the version is too old to
   resume from, so list again. Every ``resync`` seconds it lists again anyway.

Credentials are the pod's service account (token re-read for each request, since the
kubelet rotates it); the API server is ``KUBERNETES_SERVICE_HOST``/``_PORT``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.discovery.config import DiscoverConfig
from proxy.discovery.sources import Address
from proxy.telemetry.logs import event

#: where the kubelet mounts the service account; another directory for a sidecar run elsewhere
SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICEACCOUNT_ENV = "LLM_SIDECAR_SERVICEACCOUNT_DIR"
#: seconds the server keeps one watch open (it may end it sooner); resumed from the last version
WATCH_SECONDS = 240
#: an EndpointSlice holds up to 1000 endpoints; one watch event is one line of JSON
MAX_EVENT_BYTES = 8 * 1024 * 1024


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class ApiError(Exception):
    """The API server answered with an error (RBAC, a bad request): retried with backoff."""


class KubeApi:
    """The in-cluster API server: its URL, the service account's token and CA, the pod's namespace."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ApiError("KUBERNETES_SERVICE_HOST is not set: discover.service works in a pod")
        self.url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        self.dir = Path(env.get(SERVICEACCOUNT_ENV) or SERVICEACCOUNT_DIR)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.dir / "ca.crt"))

    def headers(self) -> dict[str, str]:
        token = (self.dir / "token").read_text().strip()
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def namespace(self) -> str:
        return (self.dir / "namespace").read_text().strip()


class EndpointSliceWatch:
    """Keeps ``publish`` told of the Service's ready addresses, until cancelled."""

    def __init__(self, config: DiscoverConfig, api: KubeApi, publish: Callable[[list[Address]], None]) -> None:
        assert config.service is not None
        self.config = config
        self.api = api
        self.publish = publish
        self.namespace = config.namespace or api.namespace()
        self.path = f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"
        self.selector = f"kubernetes.io/service-name={config.service}"
        #: the slices by name, as last listed or watched
        self.slices: dict[str, dict[str, Any]] = {}
        self._published: list[Address] | None = None

    async def run(self) -> None:
        failures = 0
        connector = aiohttp.TCPConnector(ssl=self.api.ssl_context(), limit=2)
        # A watch event is one line, read whole: the reader's buffer must hold the largest.
        async with aiohttp.ClientSession(
            self.api.url, connector=connector, read_bufsize=MAX_EVENT_BYTES // 2
        ) as session:
            while True:
                try:
                    version = await self.list(session)
                    failures = 0
                    listed = time.monotonic()
                    while (left := self.config.resync - (time.monotonic() - listed)) > 0:
                        version = await self.watch(session, version, min(left, WATCH_SECONDS))
                except Gone:
                    event("discovery: resourceVersion expired, listing again", service=self.config.service)
                except (aiohttp.ClientError, TimeoutError, OSError, ApiError, ValueError) as exc:
                    failures += 1
                    delay = min(30.0, 0.5 * 2**failures) * random.uniform(0.5, 1.0)
                    event(
                        "discovery: the API server failed; the last addresses stay",
                        logging.WARNING,
                        service=self.config.service,
                        namespace=self.namespace,
                        error=str(exc) if isinstance(exc, ApiError) else type(exc).__name__,
                        retry_in_s=round(delay, 2),
                    )
                    await asyncio.sleep(delay)

    async def list(self, session: aiohttp.ClientSession) -> str:
        """Every slice of the Service; the list's resourceVersion to watch from."""
        params = {"labelSelector": self.selector}
        timeout = aiohttp.ClientTimeout(total=30)
        async with session.get(self.path, params=params, headers=self.api.headers(), timeout=timeout) as response:
            await _check(response)
            body = orjson.loads(await response.read())
        self.slices = {item["metadata"]["name"]: item for item in body.get("items") or ()}
        self._changed()
        return str(body["metadata"]["resourceVersion"])

    async def watch(self, session: aiohttp.ClientSession, version: str, seconds: float) -> str:
        """Apply the watch's events until the server ends it; the version to resume from."""
        params = {
            "labelSelector": self.selector,
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(max(1, int(seconds))),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=seconds + 30)
        async with session.get(self.path, params=params, headers=self.api.headers(), timeout=timeout) as response:
            await _check(response)
            async for line in response.content:
                if not line.strip():
                    continue
                change = orjson.loads(line)
                kind, item = change.get("type"), change.get("object") or {}
                if kind == "ERROR":
                    if item.get("code") == 410:
                        raise Gone()
                    raise ApiError(f"watch error {item.get('code')}: {item.get('reason')}")
                version = str(item.get("metadata", {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                name = item["metadata"]["name"]
                if kind == "DELETED":
                    self.slices.pop(name, None)
                else:
                    self.slices[name] = item
                self._changed()
        return version

    def _changed(self) -> None:
        addresses = sorted({a for item in self.slices.values() for a in ready_addresses(item, self.config.port)})
        if addresses != self._published:
            ports = _ports(self.slices.values())
            if not addresses and ports and self.config.port is not None and str(self.config.port) not in ports:
                # Slices, but none with the port asked for: say which ones there are.
                event(
                    "discovery: the Service's EndpointSlices have no such port",
                    logging.WARNING,
                    service=self.config.service,
                    port=self.config.port,
                    ports=sorted(ports),
                )
            self._published = addresses
            self.publish(addresses)


def ready_addresses(item: Mapping[str, Any], port: str | int | None) -> list[Address]:
    """The ready endpoints of one EndpointSlice, at the slice's port named (or numbered) ``port``."""
    ports = [p for p in item.get("ports") or () if p.get("port") is not None]
    if port is None:
        number = ports[0]["port"] if len(ports) == 1 else None
    else:
        number = next((p["port"] for p in ports if port in (p.get("name"), p.get("port"))), None)
    if number is None:
        return []
    found = []
    for endpoint in item.get("endpoints") or ():
        # ``ready`` unset means ready (the API's rule); a terminating pod is not ready.
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue
        hints = tuple(z["name"] for z in ((endpoint.get("hints") or {}).get("forZones") or ()) if z.get("name"))
        for host in endpoint.get("addresses") or ():
            found.append(Address(host, int(number), endpoint.get("zone"), hints))
    return found


def _ports(items: Iterable[Mapping[str, Any]]) -> set[str]:
    """The ports the slices have, by name and by number."""
    return {str(p[k]) for item in items for p in item.get("ports") or () for k in ("name", "port") if p.get(k)}


async def _check(response: aiohttp.ClientResponse) -> None:
    if response.status == 410:
        raise Gone()
    if response.status != 200:
        try:
            reason = orjson.loads(await response.read()).get("message", "")
        except (orjson.JSONDecodeError, AttributeError):
            reason = ""
        hint = (
            " (does the chart grant the endpointslices RBAC? see docs/kubernetes.md)"
            if response.status in (401, 403)
            else ""
        )
        raise ApiError(f"{response.status} {reason}{hint}".strip())
