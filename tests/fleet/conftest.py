"""Fleet fixtures: sidecar processes sharing one real redis-server, and a closed-loop load of SDK clients."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.cache.conftest import redis_cluster  # noqa: F401  (the cache tests' real Redis Cluster, for the budget's)
from tests.servers import SidecarProcess, default_config


def fleet_config(mock_url: str, redis_url: str, limits: dict[str, Any], **router: Any) -> dict[str, Any]:
    """``gpt-4o-mini`` (mock model ``mock-gpt``) with fleet ``limits``, not cached, on the Redis at ``redis_url``."""
    (endpoint,) = default_config(mock_url)["model_groups"]["gpt-4o-mini"]["endpoints"]
    groups = {"gpt-4o-mini": {"endpoints": [{**endpoint, "fleet": limits}], "cache": {"mode": "off"}}}
    config = default_config(
        mock_url,
        model_groups=groups,
        cache={"backend": "redis", "redis_url": redis_url, "breaker_cooldown": 0.5},
        router={"health": {"enabled": False}, **router},
    )
    config["telemetry"] = {"log_level": "info"}
    return config


@pytest.fixture
def sidecar_processes(tmp_path: Path) -> Iterator[Callable[[dict[str, Any], int], list[SidecarProcess]]]:
    """``sidecar_processes(config, n)``: ``n`` ``llm-sidecar serve`` processes on ``config``, ready."""
    started: list[SidecarProcess] = []

    def start(config: dict[str, Any], count: int) -> list[SidecarProcess]:
        for _ in range(count):
            started.append(SidecarProcess(config, tmp_path))
        return started[-count:]

    yield start
    for sidecar in started:
        sidecar.stop()


@dataclass
class Load:
    """What a closed-loop load got, per sidecar: answers by status."""

    statuses: dict[int, Counter[int]] = field(default_factory=dict)

    def ok(self, index: int) -> int:
        return self.statuses.get(index, Counter())[200]

    def failed(self) -> int:
        return sum(n for counter in self.statuses.values() for status, n in counter.items() if status != 200)


async def closed_loop(
    urls: list[str],
    workers: int,
    seconds: float,
    model: str = "gpt-4o-mini",
    stop: asyncio.Event | None = None,
    load: Load | None = None,
    **create: Any,
) -> Load:
    """``workers`` SDK clients per sidecar, each sending its next call as soon as the last one ends,
    for ``seconds`` (or until ``stop``); each makes one call at least. ``load``, if given, is filled
    as answers come (a caller may read it mid-run). ``create``: more arguments of each call."""
    load = load or Load()
    for i in range(len(urls)):
        load.statuses.setdefault(i, Counter())
    end = time.monotonic() + seconds

    async def worker(index: int, client: openai.AsyncOpenAI) -> None:
        while True:
            try:
                await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "go"}], **create
                )
                load.statuses[index][200] += 1
            except openai.APIStatusError as error:
                load.statuses[index][error.status_code] += 1
            except openai.APIConnectionError:
                load.statuses[index][0] += 1
            if time.monotonic() >= end or (stop is not None and stop.is_set()):
                return

    clients = [openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-client", max_retries=0, timeout=60) for url in urls]
    try:
        await asyncio.gather(*(worker(i, client) for i, client in enumerate(clients) for _ in range(workers)))
    finally:
        for client in clients:
            await client.close()
    return load


def jain(shares: list[float]) -> float:
    """Jain's fairness index: 1 when every share is equal, 1/n when one takes everything."""
    return sum(shares) ** 2 / (len(shares) * sum(s * s for s in shares)) if any(shares) else 0.0
