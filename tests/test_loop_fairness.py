"""Raft shares the event loop with everything else: what keeps a busy loop from costing a leader its term.

* A server starts the RPC calls it receives one per loop turn: a call runs to its first await without
  yielding (a forwarded read of 1,000 health entries: ~70 ms), and sixteen started in one turn kept the loop
  from polling for over a second, so the followers elected another leader (seen in ``python -m bench catalog``).
* A periodic Raft tick first reads what the Raft sockets hold: after a busy stretch the loop runs its timers
  before it polls, and a follower would otherwise judge the leader silent with its heartbeats unread.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from proconsul.server.raft import _LoopPoller
from proconsul.server.rpc import _Admission

pytestmark = pytest.mark.anyio


async def test_calls_received_in_one_turn_start_in_turns_of_their_own():
    loop = asyncio.get_running_loop()
    turn = 0
    running = True

    def count() -> None:  # runs once per loop turn
        nonlocal turn
        turn += 1
        if running:
            loop.call_soon(count)

    loop.call_soon(count)
    await asyncio.sleep(0)
    started: list[int] = []

    async def call() -> None:
        started.append(turn)

    admission = _Admission()
    for _ in range(5):
        admission.start(call())
    while len(started) < 5:
        await asyncio.sleep(0)
    running = False
    assert len(set(started)) == 5 and started == sorted(started), started


async def test_queued_calls_are_dropped_cleanly_on_stop():
    admission = _Admission()
    ran: list[int] = []

    async def call(i: int) -> None:
        ran.append(i)

    for i in range(3):
        admission.start(call(i))
    admission.cancel()  # before any has started: closed, not left "never awaited"
    await asyncio.sleep(0.01)
    assert ran == []
    admission.start(call(9))  # and it still takes calls
    await asyncio.sleep(0.01)
    assert ran == [9]


async def test_a_periodic_tick_reads_what_raft_sockets_hold_first():
    loop = asyncio.get_running_loop()
    poller = _LoopPoller(loop, lambda: None)
    a, b = socket.socketpair()
    a.setblocking(False)
    got: list[bytes] = []
    try:
        poller.subscribe(a.fileno(), lambda fd, event: got.append(a.recv(100)), 1)  # POLL_EVENT_TYPE.READ
        poller.read_waiting()
        assert got == []  # nothing there: nothing read
        b.send(b"heartbeat")
        poller.read_waiting()  # without the loop polling in between
        assert got == [b"heartbeat"]
        poller.unsubscribe(a.fileno())
        b.send(b"late")
        poller.read_waiting()
        assert got == [b"heartbeat"]
    finally:
        poller.unsubscribe(a.fileno())
        a.close()
        b.close()
