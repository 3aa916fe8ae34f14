"""``Slots``: first come, first served, and a slot never lost to a cancelled waiter."""

from __future__ import annotations

import asyncio

from proxy.router.slots import Slots


async def test_free_slots_are_taken_without_waiting_then_calls_queue_in_order() -> None:
    slots = Slots(2)
    assert slots.take_free() and slots.take_free()
    assert not slots.take_free()
    served: list[int] = []

    async def waiter(i: int) -> None:
        await slots.take()
        served.append(i)

    tasks = [asyncio.ensure_future(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)  # all three in line
    for _ in range(3):
        slots.give()
    await asyncio.gather(*tasks)
    assert served == [0, 1, 2]
    assert not slots.take_free()  # the three hold the two slots given and the one freed


async def test_a_waiter_cancelled_in_line_leaves_it() -> None:
    slots = Slots(1)
    assert slots.take_free()
    gone = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    slots.give()
    assert slots.take_free()  # the slot came back to the free count, not to the waiter that left


async def test_a_waiter_given_a_slot_as_it_is_cancelled_passes_it_on() -> None:
    slots = Slots(1)
    assert slots.take_free()
    first = asyncio.ensure_future(slots.take())
    second = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)
    slots.give()  # to ``first``...
    first.cancel()  # ...which is cancelled before it runs again
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    await asyncio.wait_for(second, 1)  # the slot went on to the next in line
    assert not slots.take_free()


async def test_a_waiter_cancelled_before_a_give_reaches_it_is_skipped() -> None:
    slots = Slots(1)
    assert slots.take_free()
    gone = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)
    gone.cancel()  # cancelled, but not yet run again when the slot comes back
    slots.give()
    await asyncio.gather(gone, return_exceptions=True)
    assert slots.take_free()
    assert not slots.take_free()
