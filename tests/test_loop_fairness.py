"""Raft shares the event loop with everything else: what keeps a busy loop from costing a leader its term.

* A server begins the RPC calls it receives while the loop turn has time left, the rest in later turns: a
  call runs to its first await without yielding (a forwarded read of 1,000 health entries: ~70 ms), and sixteen
  begun in one turn kept the loop from polling for over a second, so the followers elected another leader (seen
  in ``python -m bench catalog``). Cheap calls still begin together (forwarded writes share a Raft entry).
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


def _turn_counter(loop: asyncio.AbstractEventLoop) -> tuple[list[int], list[bool]]:
    """[turn number], kept current by a callback that runs once per loop turn while [True]."""
    turn, running = [0], [True]

    def count() -> None:
        turn[0] += 1
        if running[0]:
            loop.call_soon(count)

    loop.call_soon(count)
    return turn, running


async def _started_turns(work: float, n: int = 5) -> list[int]:
    """The loop turn in which each of ``n`` calls received together began; each holds the loop ``work`` seconds."""
    import time

    turn, running = _turn_counter(asyncio.get_running_loop())
    await asyncio.sleep(0)
    started: list[int] = []

    async def call() -> None:
        started.append(turn[0])
        time.sleep(work)  # a read encoding a large result: no await until it is done

    admission = _Admission()
    for _ in range(n):
        admission.start(call())
    while len(started) < n:
        await asyncio.sleep(0)
    running[0] = False
    return started


async def test_heavy_calls_received_together_begin_in_turns_of_their_own():
    started = await _started_turns(work=_Admission.BUDGET * 1.5)
    assert len(set(started)) == 5 and started == sorted(started), started


async def test_cheap_calls_received_together_begin_in_one_turn():
    """Forwarded writes begin together, so the leader proposes them in one turn (one Raft entry)."""
    started = await _started_turns(work=0.0)
    assert len(set(started)) == 1, started


async def test_calls_not_yet_begun_are_dropped_cleanly_on_stop():
    import time

    admission = _Admission()
    ran: list[int] = []

    async def call(i: int) -> None:
        ran.append(i)
        time.sleep(_Admission.BUDGET * 1.5)

    for i in range(3):
        admission.start(call(i))
    await asyncio.sleep(0)  # the first begins (and spends the turn); the others wait for a later one
    admission.cancel()  # closed, not left "never awaited"
    await asyncio.sleep(0.01)
    assert ran == [0]
    admission.start(call(9))  # and it still takes calls
    await asyncio.sleep(0.05)
    assert ran == [0, 9]


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
