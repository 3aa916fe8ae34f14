"""The two aiohttp applications: the proxy (``127.0.0.1:15180``) and the admin listener (``:15190``).

Each long-lived resource has one ``cleanup_ctx`` generator, so its setup and
teardown sit side by side; app state is typed with ``web.AppKey``. What a config
reload replaces (config, pipeline, probes) lives in one ``Current`` holder, set at
build time, so a started app's state is never changed (see ``proxy/reload.py``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from proxy.cache import build_cache
from proxy.config import Config, ConfigError
from proxy.dialects import ANTHROPIC, OPENAI, Dialect
from proxy.discovery.manager import Discovery
from proxy.errors import NotFound
from proxy.listeners import Listener, in_request, listen_error, proxy_connection_budget, raise_fd_limit
from proxy.pipeline import Pipeline
from proxy.reload import Current, Reloader, log_missing_keys
from proxy.request_body import BODY_TIMEOUT
from proxy.router.health import HealthProber
from proxy.router.router import Router
from proxy.telemetry import Telemetry
from proxy.telemetry.logs import event
from proxy.upstream import Upstream

#: the config the app started with (its listeners); ``CURRENT`` holds the one calls use
CONFIG = web.AppKey("config", Config)
CURRENT = web.AppKey("current", Current)
UPSTREAM = web.AppKey("upstream", Upstream)
RELOADER = web.AppKey("reloader", Reloader)
PROXY_APP = web.AppKey("proxy_app", web.Application)
DRAINING = web.AppKey("draining", asyncio.Event)
#: set once both listeners are bound
LISTENING = web.AppKey("listening", asyncio.Event)


@dataclass
class OwnAddress:
    """The proxy listener's ``…/v1`` base, for calls the sidecar makes through itself (retrieval)."""

    url: str | None = None


OWN_ADDRESS = web.AppKey("own_address", OwnAddress)


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    session = Upstream.new_session()
    app[UPSTREAM] = Upstream(session)
    yield
    await session.close()


async def fleet_ctx(app: web.Application) -> AsyncIterator[None]:
    """The fleet's budgets live on the cache's Redis: with one, this sidecar takes part (nothing
    is sent unless an endpoint has fleet limits)."""
    config = app[CONFIG]
    fleet = None
    if config.cache.backend == "redis":
        from proxy.fleet.budget import Fleet

        fleet = Fleet(config.cache, config.router.fleet)
    app[CURRENT].fleet = fleet
    yield
    if fleet is not None:
        await fleet.close()


async def pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    current = app[CURRENT]
    config = current.config
    router = Router(config, app[UPSTREAM], fleet=current.fleet)
    pipeline = Pipeline(config, router, build_cache(config), Telemetry(config.telemetry))
    current.pipeline = pipeline
    log_missing_keys(config)
    if config.cache.preload is not None:
        await preload_cache(pipeline.cache, config.cache.preload)
    yield
    await current.pipeline.cache.close()  # a reload closes the caches it replaced


async def preload_cache(cache: Any, path: str) -> None:
    """``cache.preload``: warm the cache before the listeners open; a bad file is logged, never fatal."""
    from proxy.cache.transfer import BadLine, preload

    backend = getattr(cache, "backend", None)
    if backend is None:  # backend: none
        return
    started = time.perf_counter()
    try:
        stored, skipped = await preload(backend, path)
    except (OSError, BadLine) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        event("cache preload failed", logging.ERROR, path=path, error=reason)
        return
    event("cache preloaded", path=path, stored=stored, skipped=skipped, seconds=round(time.perf_counter() - started, 3))


async def telemetry_ctx(app: web.Application) -> AsyncIterator[None]:
    """Metrics read the router and cache live; the trace exporter starts and flushes here."""
    pipeline = app[CURRENT].pipeline  # a reload re-binds this same Telemetry to its successors
    telemetry = pipeline.telemetry
    telemetry.bind(pipeline.config.model_groups, pipeline.router, pipeline.cache)
    telemetry.start()
    yield
    await telemetry.close()


def _dialect_handler(dialect: Dialect, operation_path: str):
    operation = dialect.operations[operation_path]

    async def handle(request: web.Request) -> web.StreamResponse:
        # Read once: the call finishes on this pipeline even if a reload swaps in another.
        return await request.app[CURRENT].pipeline.handle(request, dialect, operation)

    return handle


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the configured model groups, in OpenAI's list format."""
    created = int(time.time())
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "llm-sidecar"}
        for name in request.app[CURRENT].config.model_groups
    ]
    return web.json_response({"object": "list", "data": data}, dumps=lambda o: orjson.dumps(o).decode())


async def not_found(dialect: Dialect | None, request: web.Request) -> web.Response:
    """404 in the caller's dialect; a path an SDK sends when its base URL lacks the sidecar's prefix
    (the usual slip: the provider's own Anthropic URL has no path) names the base URL to set."""
    path, hint = request.path, ""
    if "anthropic-version" in request.headers:  # the Anthropic SDK sends it on every call
        if dialect is not ANTHROPIC and path in ANTHROPIC.operations:
            hint = f"; set the Anthropic SDK's base URL to http://{request.host}{ANTHROPIC.prefix}"
        dialect = ANTHROPIC
    elif dialect is None:
        if path in OPENAI.operations:
            hint = f"; set the OpenAI SDK's base URL to http://{request.host}{OPENAI.prefix}"
        dialect = OPENAI
    error = NotFound(f"no such API path: {request.method} {path}{hint}")
    return web.Response(status=404, body=dialect.error_body(error), content_type="application/json")


def build_app(
    config: Config, config_path: str | Path | None = None, server_overrides: dict[str, Any] | None = None
) -> web.Application:
    """The proxy app; with ``config_path``, it reloads that file when it changes (``proxy/reload.py``),
    applying ``server_overrides`` (``serve --port``) to each version of it."""
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[CONFIG] = config
    app[BODY_TIMEOUT] = config.server.keepalive_timeout
    app[CURRENT] = Current(config)
    app[DRAINING] = asyncio.Event()
    app[LISTENING] = asyncio.Event()
    app.cleanup_ctx.extend([upstream_ctx, fleet_ctx, pipeline_ctx, telemetry_ctx, health_ctx, discovery_ctx])
    for dialect in (OPENAI, ANTHROPIC):
        for path in dialect.operations:
            app.router.add_post(dialect.prefix + path, _dialect_handler(dialect, path))
    app.router.add_get("/v1/models", list_models)
    if config.retrieval.corpora:
        # Only a sidecar with corpora loads the retrieval machinery.
        from proxy.rag.service import handle_retrieve, retriever_ctx

        address = app[OWN_ADDRESS] = OwnAddress()
        app.cleanup_ctx.append(retriever_ctx(config.retrieval, own_url=lambda: address.url))
        app.router.add_post("/v1/retrieve", handle_retrieve)
    app.router.add_route("*", "/v1/{tail:.*}", partial(not_found, OPENAI))
    app.router.add_route("*", "/anthropic/{tail:.*}", partial(not_found, ANTHROPIC))
    app.router.add_route("*", "/{tail:.*}", partial(not_found, None))
    if config_path is not None:
        app.cleanup_ctx.append(
            reload_ctx(config_path, server_overrides or {})
        )  # last: stops first, before what it swaps
    return app


def reload_ctx(path: str | Path, server_overrides: dict[str, Any]) -> Callable[[web.Application], AsyncIterator[None]]:
    """Watches the config file for the app's lifetime; ``app[RELOADER].request()`` reloads now."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        reloader = app[RELOADER] = Reloader(path, app[CURRENT], app[UPSTREAM], server_overrides)
        await reloader.start()
        yield
        await reloader.stop()

    return context


async def health_ctx(app: web.Application) -> AsyncIterator[None]:
    """Active health probes of every endpoint, for the app's lifetime."""
    current = app[CURRENT]
    router = current.pipeline.router
    current.prober = HealthProber(list(router.endpoints()), router.upstream, current.config.router.health)
    current.prober.start()
    yield
    await current.prober.stop()  # a reload stops the probes it replaced


async def discovery_ctx(app: web.Application) -> AsyncIterator[None]:
    """The discovery watches (``proxy/discovery/``) for the app's lifetime; reloads re-follow them."""
    current = app[CURRENT]
    current.discovery = Discovery(lambda: (current.pipeline.router, current.prober))
    current.discovery.follow(current.config.discovering())
    yield
    await current.discovery.stop()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the sidecar's own state only (config loaded, listeners up, not draining).

    Never the upstreams' health: one model group's failing endpoints would take the pod
    out of its Service (and keep a native sidecar's app from starting) while the app and
    its other calls work. Upstream health is in ``/status``, the metrics and the dashboard.
    """
    proxy_app = request.app[PROXY_APP]
    upstream = proxy_app.get(UPSTREAM)
    checks = {
        "config": proxy_app[CURRENT].pipeline is not None,
        "listeners": proxy_app[LISTENING].is_set(),
        "upstream_session": upstream is not None and not upstream.session.closed,
        "not_draining": not proxy_app[DRAINING].is_set(),
    }
    ready = all(checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def status(request: web.Request) -> web.Response:
    """``GET /status``: every endpoint's health, in-flight calls, cool-down and circuit state."""
    pipeline = request.app[PROXY_APP][CURRENT].pipeline
    body = pipeline.router.status() if pipeline is not None else {"groups": {}}
    return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the proxy app's registry (the router and cache are read now)."""
    pipeline = request.app[PROXY_APP][CURRENT].pipeline  # reloads keep its one Telemetry
    body, content_type = pipeline.telemetry.exposition()
    response = web.Response(body=body)
    # Set whole: aiohttp's content_type argument would drop the format's version parameter.
    response.headers["Content-Type"] = content_type
    return response


def build_admin_app(proxy_app: web.Application) -> web.Application:
    admin = web.Application()
    admin[PROXY_APP] = proxy_app
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/status", status)
    admin.router.add_get("/metrics", metrics)
    return admin


#: seconds an admin connection may stay idle: the kubelet and Prometheus reconnect at will
ADMIN_KEEPALIVE = 10.0
#: the end of a drain kept for the last words: error events to cut streams, then closing
LAST_WORDS = 1.0
#: ``container`` (set by the injector where the sidecar is a plain container, not a native
#: sidecar): the app is stopped at the same moment, so a drain keeps serving it until idle
MODE_ENV = "LLM_SIDECAR_MODE"
#: seconds without any app connection after which a plain-container drain stops serving
IDLE_WINDOW = 5.0


#: what sets the proxy's and the admin listener's ports for ``serve`` (a busy port's error names it)
SERVE_SETTINGS = ("server.port (or serve --port)", "server.admin_port (or serve --admin-port)")


class Servers:
    """The proxy and admin listeners, started and drained together."""

    def __init__(
        self, config: Config, config_path: str | Path | None = None, server_overrides: dict[str, Any] | None = None
    ) -> None:
        self.config = config
        self.app = build_app(config, config_path, server_overrides)
        self.admin = build_admin_app(self.app)
        server = config.server
        self.fd_limit = raise_fd_limit()
        budget = proxy_connection_budget(self.fd_limit, server.admin_max_connections)
        self.max_connections = min(server.max_connections, budget)
        # handler_cancellation: a client that disconnects cancels its call at once,
        # which closes the upstream request and frees the endpoint's slot. Bodies are
        # read raw and decoded by the pipeline (``proxy/request_body.py``). The drain
        # keeps its own clock (``stop``); aiohttp's shutdown only gets the last words.
        self._runner = Listener(
            self.app,
            max_connections=self.max_connections,
            keepalive_timeout=server.keepalive_timeout,
            handler_cancellation=True,
            access_log=None,
            auto_decompress=False,
            shutdown_timeout=LAST_WORDS / 4,
        )
        self._admin_runner = Listener(
            self.admin,
            max_connections=server.admin_max_connections,
            keepalive_timeout=ADMIN_KEEPALIVE,
            access_log=None,
            shutdown_timeout=LAST_WORDS / 4,
        )
        self.port = server.port
        self.admin_port = server.admin_port

    async def start(self, settings: tuple[str, str] = SERVE_SETTINGS) -> None:
        """Listen; a busy port is an error naming ``settings``, what sets the proxy's and the admin's port."""
        server = self.config.server
        await self._runner.setup()
        await self._admin_runner.setup()
        try:
            await _listen(self._runner, server.host, server.port, settings[0], backlog=1024)
            await _listen(self._admin_runner, server.admin_host, server.admin_port, settings[1])
        except ConfigError:
            await self._runner.cleanup()
            await self._admin_runner.cleanup()
            raise
        self.app[LISTENING].set()
        # Port 0 in the config means "any free port" (tests); report the real ones.
        self.port = self._runner.addresses[0][1]
        self.admin_port = self._admin_runner.addresses[0][1]
        if OWN_ADDRESS in self.app:
            host = "127.0.0.1" if server.host in ("", "0.0.0.0", "::") else server.host
            self.app[OWN_ADDRESS].url = f"http://{host}:{self.port}/v1"
        # The descriptor budget: the limit in force and the caps that fit in it.
        event(
            "listening",
            proxy=f"{server.host}:{self.port}",
            admin=f"{server.admin_host}:{self.admin_port}",
            fd_limit=self.fd_limit,
            proxy_max_connections=self.max_connections,
            admin_max_connections=server.admin_max_connections,
        )
        if self.max_connections < server.max_connections:
            event(
                "server.max_connections lowered to fit the file descriptor limit",
                logging.WARNING,
                configured=server.max_connections,
                fd_limit=self.fd_limit,
            )

    def request_reload(self) -> None:
        """Reload soon (SIGHUP): the watcher runs it, one reload at a time."""
        if RELOADER in self.app:
            self.app[RELOADER].request()

    async def stop(self) -> None:
        """Drain, all of it within ``server.drain_timeout``.

        Readiness turns 503 at once. A plain container (``LLM_SIDECAR_MODE=container``)
        keeps serving until the app has had no connection open for ``IDLE_WINDOW`` (its own
        shutdown calls still work); a native sidecar is stopped only after the app, so it
        stops accepting at once. In-flight calls then finish; a stream still open when the
        drain's time is up ends with an error event in its dialect.
        """
        loop = asyncio.get_running_loop()
        timeout = self.config.server.drain_timeout
        deadline = loop.time() + timeout
        last_words = min(LAST_WORDS, timeout / 4)
        cut_at = deadline - last_words
        self.app[DRAINING].set()
        server = self._runner.server
        if server is not None:
            if os.environ.get(MODE_ENV) == "container":
                await _until_idle(server, cut_at)
            for site in list(self._runner.sites):
                await site.stop()
            server.pre_shutdown()  # idle keep-alive connections close now, busy ones after their call
            while any(map(in_request, server.connections)) and loop.time() < cut_at:
                await asyncio.sleep(0.05)
            if UPSTREAM in self.app:
                self.app[UPSTREAM].stop(
                    f"the sidecar is shutting down: its drain timeout ({timeout:g} s) ended before the answer"
                )
                # The calls it ended answer now with an error in their dialect; give them a moment.
                while any(map(in_request, server.connections)) and loop.time() < deadline - last_words / 2:
                    await asyncio.sleep(0.02)
        await self._runner.cleanup()
        await self._admin_runner.cleanup()
        event("stopped")


async def _listen(runner: web.AppRunner, host: str, port: int, setting: str, backlog: int = 128) -> None:
    site = web.TCPSite(runner, host, port, backlog=backlog)
    try:
        await site.start()
    except OSError as exc:
        raise listen_error(host, port, setting, exc) from None


async def _until_idle(server: web.Server, deadline: float) -> None:
    """Until no client connection has been open for ``IDLE_WINDOW`` seconds, or ``deadline``."""
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    while (now := loop.time()) < deadline:
        if server.connections:
            idle_since = now
        elif now - idle_since >= IDLE_WINDOW:
            return
        await asyncio.sleep(0.05)


async def serve(
    config: Config, config_path: str | Path | None = None, server_overrides: dict[str, Any] | None = None
) -> None:
    """Run until SIGTERM or SIGINT; with ``config_path``, reload it on change and on SIGHUP."""
    servers = Servers(config, config_path, server_overrides)
    await servers.start()
    # Start-up built what lives as long as the process (modules, config, apps: ~50k
    # objects). Frozen, it is no longer walked by the full collections, which otherwise
    # paused the loop ~50 ms every few thousand calls. Calls leave almost no cyclic
    # garbage, so the young generation waits for 10,000 net allocations instead of 700:
    # under load that took ~10-30 µs of collections per call.
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, servers.request_reload)
    await stop.wait()
    event("draining", timeout_s=config.server.drain_timeout)
    await servers.stop()
