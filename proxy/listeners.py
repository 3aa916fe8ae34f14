"""The bounds every listener (proxy, admin, webhook) puts on its clients.

- **Request head size**: a request line or header field over 8 KiB, or more than 64
  header fields, is refused by aiohttp's parser with a 400.
- **Idle and header timeout**: aiohttp arms the keep-alive timer when a connection opens
  too, so a connection that has not sent a whole request head by then is closed; a
  slow-loris holds a connection no longer than ``keepalive_timeout``. A request's body
  has as long again once its head is in, then gets a 408 (``request_body.read_body``, the webhook's
  ``_mutate``).
- **Connection cap**: past the cap, the oldest connection that is not in the middle of a
  request (an idle keep-alive, or one still trickling its head) is closed to make room,
  so a flood of idle connections cannot lock out the kubelet's probes; if every
  connection is busy, the new one is closed at once. Either way the cap bounds the file
  descriptors a listener holds.
- **TLS** (the webhook): a handshake not finished within 5 s is dropped, so connections that
  never handshake (and are not yet connections the cap can see) free their descriptors soon.
- **File descriptors**: at start-up the soft ``RLIMIT_NOFILE`` is raised to the hard
  limit; the proxy's cap is then clamped so that its calls (each a client and an
  upstream connection), the admin listener's cap and a reserve (Redis, probes, files)
  fit in it. The admin port can never take what the proxy path needs.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import ssl
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.telemetry.logs import event

if TYPE_CHECKING:
    from proxy.config import ConfigError

#: aiohttp handler limits shared by every listener
HEAD_LIMITS: dict[str, Any] = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 64}
#: descriptors kept for what is not a client connection: Redis, probes, logs, the config file
RESERVED_FDS = 64
#: seconds a TLS client gets to finish its handshake (asyncio's default is 60)
TLS_HANDSHAKE_TIMEOUT = 5.0


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


def proxy_connection_budget(fd_limit: int, admin_connections: int) -> int:
    """How many proxy connections fit: each may hold an upstream connection as well."""
    return max(1, (fd_limit - admin_connections - RESERVED_FDS) // 2)


class ConnectionCap:
    """Installed on an aiohttp ``web.Server``: every new connection passes ``connection_made``."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server = server
        self.limit = limit
        #: connections closed to keep the cap: idle ones evicted, new ones refused
        self.evicted = 0
        self.refused = 0
        self._made = server.connection_made
        # aiohttp has no hook for a new connection: this wraps the server's own method.
        server.connection_made = self.connection_made  # type: ignore[method-assign]

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        if len(self.server._connections) >= self.limit and not self._evict_one():
            self.refused += 1
            transport.abort()  # connection_lost follows; aiohttp forgets the handler
            return
        self._made(handler, transport)

    def _evict_one(self) -> bool:
        for handler in self.server.connections:  # oldest first
            if not in_request(handler):
                handler.force_close()
                self.evicted += 1
                return True
        return False


def in_request(handler: Any) -> bool:
    """The connection is handling a request now (not idle, not still sending its head)."""
    # aiohttp has no public flag for it; should the private one go, every connection counts as busy.
    return getattr(handler, "_request_in_progress", True)


class Listener(web.AppRunner):
    """An ``AppRunner`` with the head limits, the keep-alive/header timeout and a connection cap."""

    def __init__(self, app: web.Application, *, max_connections: int, keepalive_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=keepalive_timeout, **HEAD_LIMITS, **kwargs)
        self.max_connections = max_connections
        self.cap: ConnectionCap | None = None

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        self.cap = ConnectionCap(server, self.max_connections)
        return server


def listen_error(host: str, port: int, setting: str, exc: OSError) -> ConfigError:
    """A port that cannot be taken, in one line naming what sets it (no traceback)."""
    from proxy.config import ConfigError  # only here: the webhook does without the config's imports

    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return ConfigError(f"cannot listen on {host}:{port}: {reason}; change {setting} or stop what holds the port")


async def _run(
    app: web.Application,
    host: str,
    port: int,
    setting: str,
    ssl_context: ssl.SSLContext | None,
    max_connections: int,
    keepalive_timeout: float,
    shutdown_timeout: float,
) -> None:
    runner = Listener(
        app,
        max_connections=max_connections,
        keepalive_timeout=keepalive_timeout,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    # Not a TCPSite: it cannot bound the TLS handshake. A connection accepted but never
    # handshaking is no connection yet for the cap; the timeout bounds how long it holds a descriptor.
    protocols = runner.server
    assert protocols is not None  # setup() made it
    try:
        server = await loop.create_server(
            protocols, host, port, ssl=ssl_context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if ssl_context else None
        )
    except OSError as exc:
        await runner.cleanup()
        raise listen_error(host, port, setting, exc) from None
    # The port bound (``--port 0`` takes any free one): what answers there is this process.
    event("listening", address=f"{host}:{server.sockets[0].getsockname()[1]}", max_connections=max_connections)
    try:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        server.close()
        await runner.cleanup()


def run_app(
    app: web.Application,
    *,
    host: str,
    port: int,
    setting: str,
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int = 256,
    keepalive_timeout: float = 15.0,
    shutdown_timeout: float = 5.0,
) -> None:
    """``web.run_app`` with the listener bounds, until SIGTERM or SIGINT; ``setting`` sets the port."""
    raise_fd_limit()
    asyncio.run(_run(app, host, port, setting, ssl_context, max_connections, keepalive_timeout, shutdown_timeout))
