"""Config builders for router tests: endpoints on the mock provider, told apart by model name."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tests.servers import PROVIDER_KEY, MockProvider

#: a policy that keeps tests quick and leaves the background probes out unless asked
QUICK = {
    "queue_timeout": 2.0,
    "deadline": 10.0,
    "backoff": {"base": 0.01, "max": 0.05},
    "health": {"enabled": False},
}


def endpoint(
    mock: MockProvider | str, name: str, model: str | None = None, dialect: str = "openai", **fields: Any
) -> dict[str, Any]:
    base = mock if isinstance(mock, str) else mock.url
    return {
        "name": name,
        "url": base + ("/v1" if dialect == "openai" else ""),
        "dialect": dialect,
        "model": model or name,
        "api_key": PROVIDER_KEY,
        **fields,
    }


def config(mock: MockProvider, groups: dict[str, Any], **router: Any) -> dict[str, Any]:
    return {
        "server": {"port": 0, "admin_port": 0, "admin_host": "127.0.0.1", "drain_timeout": 2},
        "model_groups": groups,
        "router": {**QUICK, **router},
        "telemetry": {"access_log": False},
    }


def gather(count: int, make: Callable[[int], Awaitable[Any]], concurrency: int | None = None) -> list[Any]:
    """Run ``count`` coroutines at a bounded concurrency; results or exceptions, in order."""

    async def main() -> list[Any]:
        gate = asyncio.Semaphore(concurrency or count)

        async def one(i: int) -> Any:
            async with gate:
                return await make(i)

        return await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)

    return asyncio.run(main())
