"""A single-reader mailbox that wakes its reader once per burst, not once per item.

Events reach a request in bursts: one pub/sub message per worker step carries a token for every
stream, and a stream that falls behind finds several of its tokens waiting. `asyncio.Queue` hands
them over one `get()` at a time, and `asyncio.wait_for(queue.get(), t)` costs a task, a future and
a timer per item. Here the writer appends without ceremony, the reader waits once (one future, one
timer) and then takes everything queued, so the reader's cost per item falls as bursts grow.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def drain(self) -> list[T]:
        """Everything queued, oldest first; the inbox is empty afterwards."""
        items = list(self._items)
        self._items.clear()
        return items

    def clear(self) -> None:
        self._items.clear()

    async def wait(self, timeout: float) -> bool:
        """Until an item is queued or `timeout` seconds pass; True when items are waiting.

        One reader at a time: a second concurrent `wait` would take over the wake-up."""
        if self._items:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if self._waiter is waiter:
                self._waiter = None
        return bool(self._items)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
