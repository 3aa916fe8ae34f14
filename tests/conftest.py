"""Fixtures that start real servers on free loopback ports (see ``tests/servers.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.servers import MockProvider, RedisServer, RefusedPort, ServerLoop, Sidecar, default_config, free_port


@pytest.fixture(scope="session")
def server_loop() -> Iterator[ServerLoop]:
    loop = ServerLoop()
    yield loop
    loop.close()


@pytest.fixture
def mock_provider(server_loop: ServerLoop) -> Iterator[MockProvider]:
    provider = MockProvider(server_loop)
    yield provider
    provider.stop()


@pytest.fixture
def replicas(server_loop: ServerLoop) -> Iterator[Callable[[int], list[MockProvider]]]:
    """``replicas(n)``: n mock providers on 127.0.0.2, 127.0.0.3 … at one port, like a Deployment's pods."""
    started: list[MockProvider] = []

    def make(count: int) -> list[MockProvider]:
        port = free_port()
        found = [MockProvider(server_loop, port, host=f"127.0.0.{2 + len(started) + i}") for i in range(count)]
        started.extend(found)
        return found

    yield make
    for provider in started:
        provider.stop()


@pytest.fixture
def refused_port() -> Iterator[RefusedPort]:
    """A port nothing listens on, held for the test (see ``RefusedPort``)."""
    port = RefusedPort()
    yield port
    port.release()


@pytest.fixture
def make_sidecar(server_loop: ServerLoop, mock_provider: MockProvider) -> Iterator[Callable[..., Sidecar]]:
    """``make_sidecar(**overrides)`` or ``make_sidecar(config=dict)``: a sidecar in front of the mock."""
    started: list[Sidecar] = []

    def make(config: dict[str, Any] | None = None, **overrides: Any) -> Sidecar:
        sidecar = Sidecar(server_loop, config or default_config(mock_provider.url, **overrides))
        started.append(sidecar)
        return sidecar

    yield make
    for sidecar in started:
        sidecar.stop()


@pytest.fixture
def sidecar(make_sidecar: Callable[..., Sidecar]) -> Sidecar:
    return make_sidecar()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.kill()


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    """The session's redis-server, emptied and running (a previous test may have killed it)."""
    if redis_server.process is None:
        redis_server.start()
    redis_server.flush()
    return redis_server
