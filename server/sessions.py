"""The clocks around sessions, kept on the servers' event loop (the state store reads no clock).

* ``SessionTimers`` (leader only): a session with a TTL is destroyed once
  2 × TTL passes without a renew (Consul's SessionTTLMultiplier). Timers start
  at creation and on every renew; a new leader starts one for every TTL session
  from its own now, so leadership changes only ever extend a session's life.
* ``LockDelays`` (every server): keys released by an invalidated session cannot
  be locked again until its lock delay passes. The store reports the released
  keys after it applies the invalidation; each server stamps them with its own
  clock, as Consul's per-server lockDelay map does, and the leader consults it
  before proposing an acquire.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from proconsul.server.commands import SessionRecord, SessionRequest
from proconsul.server.errors import ProconsulError

log = logging.getLogger("proconsul.sessions")

TTL_MULTIPLIER = 2


class SessionTimers:
    """See the module docstring."""

    def __init__(self, srv: Any) -> None:
        self.srv = srv
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def start(self) -> None:
        from proconsul.server.durations import parse_duration

        self.stop()
        for session_id, ttl in self.srv.state.session_ids_with_ttl():
            self.reset(session_id, parse_duration(ttl))

    def stop(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def reset(self, session_id: str, ttl: float) -> None:
        """(Re)start a session's timer: it expires at TTL × 2 from now."""
        self.clear(session_id)
        loop = asyncio.get_running_loop()
        self._timers[session_id] = loop.call_later(ttl * TTL_MULTIPLIER, self._expire, session_id)

    def clear(self, session_id: str) -> None:
        handle = self._timers.pop(session_id, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, session_id: str) -> None:
        self._timers.pop(session_id, None)
        asyncio.ensure_future(self._destroy(session_id))

    async def _destroy(self, session_id: str) -> None:
        log.info("session %s expired: its TTL passed twice without a renew", session_id)
        try:
            result = await self.srv.raft.apply(SessionRequest(op="destroy", session=SessionRecord(id=session_id)))
            if isinstance(result, Exception):
                raise result
        except ProconsulError as err:
            log.warning("destroying expired session %s failed, retrying: %s", session_id, err)
            if self.srv.is_leader():
                self._timers[session_id] = asyncio.get_running_loop().call_later(1.0, self._expire, session_id)


class LockDelays:
    """See the module docstring."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def record(self, keys: list[str], delay: float) -> None:
        """Event loop: these keys were released by an invalidation with this lock delay."""
        until = asyncio.get_running_loop().time() + delay
        for key in keys:
            self._until[key] = max(self._until.get(key, 0.0), until)

    def active(self, key: str) -> bool:
        """Whether a lock on ``key`` must be refused now (Consul's KVSLockDelay check)."""
        until = self._until.get(key)
        if until is None:
            return False
        if asyncio.get_running_loop().time() >= until:
            del self._until[key]
            return False
        return True
