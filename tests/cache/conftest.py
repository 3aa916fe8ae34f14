"""Cache fixtures: sidecars with a cache policy, a Redis Cluster of three masters, a Sentinel deployment."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.cache.memory import MemoryBackend
from tests.servers import PROVIDER_KEY, MockProvider, RedisServer, Sidecar, default_config
from tests.waiting import Clock, wait_until


def cache_config(
    mock_url: str, cache: dict[str, Any] | None = None, pass_through: bool = False, **policy: Any
) -> dict[str, Any]:
    """The default two model groups, both with the cache policy ``policy`` (``mode: always`` unless given)."""
    policy = {"mode": "always", **policy}
    key: dict[str, Any] = {"pass_through_key": True} if pass_through else {"api_key": PROVIDER_KEY}
    groups = {
        "gpt-4o-mini": {
            "endpoints": [
                {"name": "mock-openai", "url": f"{mock_url}/v1", "dialect": "openai", "model": "mock-gpt", **key}
            ],
            "cache": policy,
        },
        "claude-sonnet": {
            "endpoints": [
                {"name": "mock-anthropic", "url": mock_url, "dialect": "anthropic", "model": "mock-claude", **key}
            ],
            "cache": policy,
        },
    }
    return default_config(mock_url, model_groups=groups, cache=cache or {"backend": "memory"})


@pytest.fixture
def cached_sidecar(make_sidecar: Callable[..., Sidecar], mock_provider: MockProvider) -> Callable[..., Sidecar]:
    """``cached_sidecar(cache={...}, clock=None, router=None, **policy)``: a sidecar whose model groups cache
    by ``policy`` (and route by ``router``); its cache tells time by ``clock`` when one is given."""

    def make(
        cache: dict[str, Any] | None = None,
        pass_through: bool = False,
        clock: Clock | None = None,
        router: dict[str, Any] | None = None,
        **policy: Any,
    ) -> Sidecar:
        config = cache_config(mock_provider.url, cache, pass_through, **policy)
        if router is not None:
            config["router"] = router
        sidecar = make_sidecar(config=config)
        if clock is not None:
            response_cache = sidecar.pipeline.cache
            response_cache.clock = clock
            for tier in (response_cache.backend, response_cache.local):
                if isinstance(tier, MemoryBackend):
                    tier.clock = clock
        return sidecar

    return make


@pytest.fixture
def clock() -> Clock:
    return Clock()


def stored(sidecar: Sidecar, count: int = 1) -> None:
    """Until ``count`` answers are stored: the store runs in the background once an answer is complete."""
    cache = sidecar.pipeline.cache
    wait_until(lambda: cache.stats.stores >= count, what=f"{count} stored answers")


def settled(sidecar: Sidecar) -> None:
    """Until no call is in flight and nothing is being stored: what was not stored by now never will be."""
    cache = sidecar.pipeline.cache
    wait_until(lambda: not cache.flights and not cache._tasks, what="the cache to settle")


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
            self.nodes.append(
                RedisServer(
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--cluster-node-timeout",
                    "2000",
                )
            )
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.url = f"redis://127.0.0.1:{self.nodes[0].port}/0"
        self._wait_ok()

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["redis-cli", "-p", str(self.nodes[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            if "cluster_state:ok" in out:
                return
            time.sleep(0.1)
        raise RuntimeError("the test Redis Cluster did not become ready")

    def keys_per_node(self) -> list[int]:
        counts = []
        for node in self.nodes:
            out = subprocess.run(
                ["redis-cli", "-p", str(node.port), "dbsize"], capture_output=True, text=True, timeout=5
            ).stdout
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


class SentinelServer(RedisServer):
    """``redis-server sentinel.conf --sentinel`` on a free loopback port, monitoring ``master_port``.

    The conf is written once, in the server's own directory: Sentinel rewrites it (known
    replicas, other Sentinels, the current master), and a restart picks that up.
    """

    def __init__(self, master_port: int, service_name: str, quorum: int) -> None:
        self.master_port = master_port
        self.service_name = service_name
        self.quorum = quorum
        super().__init__()

    def command(self) -> list[str]:
        conf = Path(self.dir) / "sentinel.conf"
        if not conf.exists():
            conf.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                "sentinel resolve-hostnames no\n"
                f"sentinel monitor {self.service_name} 127.0.0.1 {self.master_port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.service_name} 400\n"
                f"sentinel failover-timeout {self.service_name} 2000\n"
                f"sentinel parallel-syncs {self.service_name} 1\n"
            )
        return [self.binary, str(conf), "--sentinel"]

    def master(self) -> dict[str, Any]:
        """``SENTINEL MASTER <name>`` as this Sentinel sees it."""
        with redis.Redis(port=self.port, socket_timeout=2, decode_responses=True) as client:
            return client.sentinel_master(self.service_name)

    def replicas(self) -> list[dict[str, Any]]:
        with redis.Redis(port=self.port, socket_timeout=2, decode_responses=True) as client:
            return client.sentinel_slaves(self.service_name)


class NotSettled(RuntimeError):
    """The Sentinels do not agree on one master (a failover is under way)."""


class RedisSentinel:
    """A master, one replica (``--replicaof``) and three Sentinels (quorum 2), all on loopback.

    Sentinel may promote the replica (a test kills the master): ``master()`` is whichever
    server the Sentinels name now, ``restore()`` restarts a killed server and waits until
    the Sentinels count it as a healthy replica again.
    """

    service_name = "sidecar-test"
    #: a replica's full sync starts at once (Redis 7 waits 5 s for more replicas by default)
    server_args = ("--repl-diskless-sync-delay", "0")

    def __init__(self, sentinels: int = 3) -> None:
        self.servers: dict[int, RedisServer] = {}
        self.sentinels: list[SentinelServer] = []
        try:
            master = RedisServer(None, *self.server_args)
            self.servers[master.port] = master
            replica = RedisServer(None, *self.server_args, "--replicaof", "127.0.0.1", str(master.port))
            self.servers[replica.port] = replica
            for _ in range(sentinels):
                self.sentinels.append(SentinelServer(master.port, self.service_name, sentinels // 2 + 1))
            self.wait(
                lambda: all(self._healthy(s, master.port, replicas=1) for s in self.sentinels),
                "the Sentinels did not see the master, its replica and each other",
            )
        except BaseException:
            self.stop()
            raise
        self.addresses = [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def _healthy(self, sentinel: SentinelServer, master_port: int, replicas: int) -> bool:
        state = sentinel.master()
        if int(state["port"]) != master_port or state["flags"] != "master":
            return False
        if int(state["num-other-sentinels"]) != len(self.sentinels) - 1:
            return False
        known = {int(r["port"]) for r in sentinel.replicas() if r["flags"] == "slave"}
        return len(known) >= replicas and all(self._replicating(port, master_port) for port in known)

    @staticmethod
    def _replicating(port: int, master_port: int) -> bool:
        with redis.Redis(port=port, socket_timeout=2) as client:
            info = client.info("replication")
        return info.get("master_port") == master_port and info.get("master_link_status") == "up"

    @staticmethod
    def wait(condition: Callable[[], bool], message: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except (redis.RedisError, OSError, NotSettled):
                pass
            time.sleep(0.05)
        raise RuntimeError(message)

    def master_port(self) -> int:
        """The master's port as the Sentinels agree on it now."""
        states = [s.master() for s in self.sentinels]
        ports = {int(state["port"]) for state in states}
        if len(ports) != 1 or any(state["flags"] != "master" for state in states):
            raise NotSettled(f"no master all Sentinels agree on (yet): {states}")
        return ports.pop()

    def master(self) -> RedisServer:
        return self.servers[self.master_port()]

    def cache(self, **extra: Any) -> dict[str, Any]:
        """A sidecar's ``cache:`` section for this deployment."""
        return {
            "backend": "redis",
            "redis_mode": "sentinel",
            "redis_sentinels": self.addresses,
            "redis_service_name": self.service_name,
            "operation_timeout": 0.2,
            "breaker_cooldown": 0.3,
            **extra,
        }

    def restore(self) -> None:
        """Restart any killed server as a replica of the current master; wait until all is healthy.

        (Left to itself, Sentinel turns a returning old master into a replica only after
        it has reported itself master for a while: seconds this suite does not need to spend.)
        """
        master_port = self.master_port()
        for server in self.servers.values():
            if server.process is None:
                server.extra_args = (*self.server_args, "--replicaof", "127.0.0.1", str(master_port))
                server.start()
        self.wait(
            lambda: all(self._healthy(s, master_port, replicas=len(self.servers) - 1) for s in self.sentinels),
            "the Sentinel deployment did not recover",
        )

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
        for server in self.servers.values():
            server.kill()


@pytest.fixture(scope="session")
def redis_sentinel_deployment() -> Iterator[RedisSentinel]:
    deployment = RedisSentinel()
    yield deployment
    deployment.stop()


@pytest.fixture
def redis_sentinel(redis_sentinel_deployment: RedisSentinel) -> RedisSentinel:
    """The session's Sentinel deployment, healthy (a previous test may have failed over) and emptied."""
    redis_sentinel_deployment.restore()
    redis_sentinel_deployment.master().flush()
    return redis_sentinel_deployment
