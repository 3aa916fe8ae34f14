"""``Slots``: an endpoint's ``max_concurrent``, a first-come-first-served counting semaphore.

Almost every call finds a slot free. ``asyncio.Semaphore`` takes even a free one through
``await acquire()``, a coroutine that checks ``locked()`` (a generator over the waiters)
once more: with the endpoint's own ``acquire`` around it, ~8,600 instructions a call
(callgrind). Here a free slot is taken by a plain call, ``take_free``; only a call that
must queue awaits ``take``.

A slot given back goes straight to the first waiter (its future's result), so a waiter
woken is never overtaken by a call arriving meanwhile, and there is a free count only
while nobody waits.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Slots:
    __slots__ = ("free", "_waiters")

    def __init__(self, limit: int) -> None:
        self.free = limit
        # Only calls not yet given a slot: ``give`` pops the one it serves, a cancelled one leaves.
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_free(self) -> bool:
        """Take a slot when one is free (then nobody waits: see ``give``); never waits."""
        if self.free:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """Take a slot, waiting in line for one when none is free."""
        if self.take_free():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                if waiter in self._waiters:  # still in line (``give`` drops a cancelled one it meets)
                    self._waiters.remove(waiter)
            else:
                self.give()  # given a slot as it was cancelled: pass it on
            raise

    def give(self) -> None:
        """Give a slot back: to the first call in line, else to the free count."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1
