"""Cache fixtures: sidecars with a cache policy, and a Redis Cluster of three masters."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.servers import PROVIDER_KEY, MockProvider, RedisServer, Sidecar, default_config, free_port


def cache_config(mock_url: str, cache: dict[str, Any] | None = None, pass_through: bool = False,
                 **policy: Any) -> dict[str, Any]:
    """The default two model groups, both with the cache policy ``policy`` (``mode: always`` unless given)."""
    policy = {"mode": "always", **policy}
    key: dict[str, Any] = {"pass_through_key": True} if pass_through else {"api_key": PROVIDER_KEY}
    groups = {
        "gpt-4o-mini": {"endpoints": [{"name": "mock-openai", "url": f"{mock_url}/v1", "dialect": "openai",
                                       "model": "mock-gpt", **key}], "cache": policy},
        "claude-sonnet": {"endpoints": [{"name": "mock-anthropic", "url": mock_url, "dialect": "anthropic",
                                         "model": "mock-claude", **key}], "cache": policy},
    }
    return default_config(mock_url, model_groups=groups, cache=cache or {"backend": "memory"})


@pytest.fixture
def cached_sidecar(make_sidecar: Callable[..., Sidecar], mock_provider: MockProvider) -> Callable[..., Sidecar]:
    """``cached_sidecar(cache={...}, **policy)``: a sidecar whose model groups cache by ``policy``."""

    def make(cache: dict[str, Any] | None = None, pass_through: bool = False, **policy: Any) -> Sidecar:
        return make_sidecar(config=cache_config(mock_provider.url, cache, pass_through, **policy))

    return make


def cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too (ephemeral ports are too high)."""
    for _ in range(200):
        port = random.randint(20000, 30000)
        try:
            with socket.socket() as client_port, socket.socket() as bus_port:
                client_port.bind(("127.0.0.1", port))
                bus_port.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisCluster:
    """Three masters (no replicas) on free loopback ports, slots assigned by ``redis-cli --cluster create``."""

    def __init__(self, size: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        for _ in range(size):
            port = cluster_port()
            self.nodes.append(RedisServer(port, "--cluster-enabled", "yes", "--cluster-config-file",
                                          f"nodes-{port}.conf", "--cluster-node-timeout", "2000"))
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create", *addresses,
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=30)
        self.url = f"redis://127.0.0.1:{self.nodes[0].port}/0"
        self._wait_ok()

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            out = subprocess.run(["redis-cli", "-p", str(self.nodes[0].port), "cluster", "info"],
                                 capture_output=True, text=True, timeout=5).stdout
            if "cluster_state:ok" in out:
                return
            time.sleep(0.1)
        raise RuntimeError("the test Redis Cluster did not become ready")

    def keys_per_node(self) -> list[int]:
        counts = []
        for node in self.nodes:
            out = subprocess.run(["redis-cli", "-p", str(node.port), "dbsize"], capture_output=True, text=True,
                                 timeout=5).stdout
            counts.append(int(out.strip() or 0))
        return counts

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed")
    cluster = RedisCluster()
    yield cluster
    cluster.stop()


def redis_cache(url: str, **extra: Any) -> dict[str, Any]:
    return {"backend": "redis", "redis_url": url, "operation_timeout": 0.2, "breaker_cooldown": 0.3, **extra}
