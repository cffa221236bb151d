"""Leader duties: what only the current leader does, started and stopped with leadership.

Timers here live in memory and reset on every election; what they decide is
proposed as a command and re-checked inside apply. Now: the first barrier
(after which default-mode reads are safe on this leader), tombstone reaping
(Consul's TombstoneGC: tombstones live ``tombstone_ttl``, reaped in batches
every ``tombstone_granularity``), node liveness (``liveness.Liveness``) and
session TTL timers (``sessions.SessionTimers``), the Connect CA's bootstrap
and root pruning (``ca_manager.CAManager.leader_loop``), and ACL initialization
(``acl.initialize_acls``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from proconsul.server.acl import acl_leader_loop
from proconsul.server.commands import TombstoneRequest
from proconsul.server.errors import ProconsulError

log = logging.getLogger("proconsul.leader")


class LeaderDuties:
    """See the module docstring."""

    def __init__(self, srv: Any) -> None:
        self.srv = srv
        self._tasks: list[asyncio.Task] = []
        self._hints: collections.deque[tuple[float, int]] = collections.deque()
        self.active = False

    def start(self) -> None:
        self.stop()
        self.active = True
        self.srv.liveness.start()
        self.srv.session_timers.start()
        self._tasks = [
            asyncio.create_task(self._establish(), name="leader-establish"),
            asyncio.create_task(self._reap_tombstones(), name="leader-tombstones"),
        ]

    def stop(self) -> None:
        self.active = False
        self.srv.liveness.stop()
        self.srv.session_timers.stop()
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        self._hints.clear()

    async def _establish(self) -> None:
        """Commit a barrier so this leader has applied all its predecessors committed (Consul's establishLeadership)."""
        srv = self.srv
        while self.active:
            try:
                await srv.raft.barrier()
                break
            except ProconsulError as err:
                log.debug("leadership barrier: %s", err)
                await asyncio.sleep(0.05)
        if not self.active:
            return
        srv.mark_consistent_ready()
        # Connect CA: bootstrap the root on first leadership, then prune rotated-out roots (Consul's CAManager).
        self._tasks.append(asyncio.create_task(srv.ca_manager.leader_loop(), name="leader-ca"))
        if srv.config.acl_enabled:
            # ACLs: the builtin policy, the anonymous token and the initial management token (Consul's initializeACLs).
            self._tasks.append(asyncio.create_task(acl_leader_loop(srv, lambda: self.active), name="leader-acl"))
        # Tombstones written under earlier leaders: start their clock now, as Consul does.
        indexes = srv.state.tombstone_indexes()
        if indexes:
            self.hint_tombstone(indexes[-1])

    def hint_tombstone(self, index: int) -> None:
        """The store made tombstones at ``index``: reap them once the TTL has passed."""
        if self.active:
            self._hints.append((time.monotonic(), index))

    async def _reap_tombstones(self) -> None:
        cfg = self.srv.config
        while self.active:
            await asyncio.sleep(cfg.tombstone_granularity)
            cutoff = time.monotonic() - cfg.tombstone_ttl
            reap = 0
            while self._hints and self._hints[0][0] <= cutoff:
                reap = max(reap, self._hints.popleft()[1])
            if not reap:
                continue
            try:
                await self.srv.raft.apply(TombstoneRequest(reap_index=reap))
            except ProconsulError as err:
                log.warning("tombstone reap at %d failed, will retry: %s", reap, err)
                self._hints.appendleft((cutoff, reap))
