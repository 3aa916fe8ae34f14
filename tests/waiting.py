"""Waiting on a condition with a deadline, instead of sleeping a fixed time and hoping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: generous: the suite runs on a shared, loaded machine; a condition that holds returns at once
TIMEOUT = 15.0


def wait_until(condition: Callable[[], T], timeout: float = TIMEOUT, interval: float = 0.01, what: str = "") -> T:
    """``condition()``'s first truthy value; ``AssertionError`` if none comes within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if result := condition():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what or condition}")
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], T | Awaitable[T]], timeout: float = TIMEOUT, interval: float = 0.01, what: str = ""
) -> T:
    """``wait_until`` for a test running on an event loop: the loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        result: Any = condition()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what or condition}")
        await asyncio.sleep(interval)


class Clock:
    """A clock the test moves: ``clock()`` is the time now, ``clock.advance(s)`` lets ``s`` seconds pass.

    For code that takes a clock (the response cache, the memory backend), so that tests of
    expiry move time instead of sleeping through it.
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
