"""Watch channels: how a blocking query learns that what it read has changed.

A channel is Go's closed-channel idiom reduced to Python: the state store hands
one out with every read that takes a watch set, and fires it once when a commit
changes what that read returned. Firing happens on the thread the store's
``notify`` hook chooses (the event loop, on a server), so waiters are only ever
touched from that one thread.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Iterable


class WatchChannel:
    """One-shot notification: fires at most once, then stays fired."""

    __slots__ = ("fired", "_waiters")

    def __init__(self) -> None:
        self.fired = False
        self._waiters: set[Callable[[], None]] = set()

    def fire(self) -> None:
        """Mark fired and wake every waiter (call on the notify thread)."""
        if self.fired:
            return
        self.fired = True
        waiters, self._waiters = self._waiters, set()
        for wake in waiters:
            wake()

    def add_waiter(self, wake: Callable[[], None]) -> None:
        self._waiters.add(wake)

    def remove_waiter(self, wake: Callable[[], None]) -> None:
        self._waiters.discard(wake)


def fire_all(channels: Iterable[WatchChannel]) -> None:
    """Fire a batch of channels; the store's default notify hook."""
    for ch in channels:
        ch.fire()


class WatchSet:
    """The channels one read touched, as Consul's memdb.WatchSet."""

    __slots__ = ("channels",)

    def __init__(self) -> None:
        self.channels: list[WatchChannel] = []

    def add(self, ch: WatchChannel) -> None:
        self.channels.append(ch)

    async def wait(self, timeout: float) -> bool:
        """Wait until any channel fires (True) or the timeout passes (False)."""
        if any(ch.fired for ch in self.channels):
            return True
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(True)

        for ch in self.channels:
            ch.add_waiter(wake)
        handle = loop.call_later(timeout, lambda: fut.done() or fut.set_result(False))
        try:
            return await fut
        finally:
            handle.cancel()
            for ch in self.channels:
                ch.remove_waiter(wake)
