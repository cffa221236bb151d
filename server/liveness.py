"""Node liveness on the leader: heartbeats in, membership changes out (this replaces Consul's gossip).

Every agent, servers included, sends ``Internal.Heartbeat`` every
``liveness_interval``. The leader keeps the last-seen times in memory only and
proposes a ``MemberUpdateRequest`` only when a node changes state: a heartbeat
from an unknown, failed or left node (or one whose address changed) makes it
alive; silence past ``node_failure_timeout`` makes it failed. A new leader
starts every known-alive node's clock afresh, so a leader change never flaps
anyone. Members failed or left for ``reconnect_timeout`` are reaped (Consul's
serf reaping), which takes a failed node out of the catalog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from proconsul.server.commands import MemberReapRequest, MemberUpdateRequest
from proconsul.server.errors import ProconsulError
from proconsul.server.structs import HeartbeatRequest

log = logging.getLogger("proconsul.liveness")


class Liveness:
    """See the module docstring. Runs only while this server leads."""

    def __init__(self, srv: Any) -> None:
        self.srv = srv
        self._last_seen: dict[str, float] = {}
        self._pending: set[str] = set()
        self._task: asyncio.Task | None = None
        self._started = 0.0

    def start(self) -> None:
        self.stop()
        self._started = time.monotonic()
        _, members = self.srv.state.members()
        self._last_seen = {m.name.lower(): self._started for m in members if m.status == "alive"}
        self._task = asyncio.create_task(self._monitor(), name="liveness")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._pending.clear()

    async def heartbeat(self, req: HeartbeatRequest) -> None:
        """An agent is alive: note it, and make it a member if the cluster does not see it as alive yet."""
        key = req.name.lower()
        self._last_seen[key] = time.monotonic()
        member = self.srv.state.get_member(req.name)
        current = (
            member is not None
            and member.status == "alive"
            and (member.id, member.address, member.port, member.role) == (req.id, req.address, req.port, req.role)
        )
        if current or key in self._pending:
            return
        if member is None or member.status != "alive":
            log.info("member %s is alive (%s)", req.name, req.address)
        await self._propose(
            MemberUpdateRequest(
                name=req.name,
                id=req.id,
                address=req.address,
                status="alive",
                role=req.role,
                datacenter=req.datacenter,
                port=req.port,
                tags=dict(req.tags),
                changed_at=int(time.time()),
            )
        )

    async def set_status(self, name: str, status: str) -> None:
        """Mark a member failed or left (leave, force-leave, or the monitor)."""
        member = self.srv.state.get_member(name)
        if member is None:
            return
        if status == "left":
            self._last_seen.pop(name.lower(), None)
        await self._propose(
            MemberUpdateRequest(
                name=member.name,
                id=member.id,
                address=member.address,
                status=status,
                role=member.role,
                datacenter=member.datacenter,
                port=member.port,
                tags=dict(member.tags),
                changed_at=int(time.time()),
            )
        )

    async def _propose(self, cmd: Any) -> None:
        key = cmd.name.lower() if hasattr(cmd, "name") else ""
        self._pending.add(key)
        try:
            result = await self.srv.raft.apply(cmd)
            if isinstance(result, Exception):
                raise result
        finally:
            self._pending.discard(key)

    async def _monitor(self) -> None:
        cfg = self.srv.config
        last_reap = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, cfg.node_failure_timeout / 4))
            now = time.monotonic()
            _, members = self.srv.state.members()
            for m in members:
                key = m.name.lower()
                if m.status != "alive" or key in self._pending:
                    continue
                if now - self._last_seen.get(key, self._started) > cfg.node_failure_timeout:
                    log.warning("member %s failed: no heartbeat for %.0f s", m.name, cfg.node_failure_timeout)
                    try:
                        await self.set_status(m.name, "failed")
                    except ProconsulError as err:
                        log.warning("marking %s failed: %s", m.name, err)
            if now - last_reap > 60:
                last_reap = now
                await self._reap(members)

    async def _reap(self, members: list) -> None:
        cutoff = time.time() - self.srv.config.reconnect_timeout
        for m in members:
            if m.status in ("failed", "left") and m.changed_at < cutoff:
                log.info("reaping member %s (%s since %d)", m.name, m.status, m.changed_at)
                try:
                    await self._propose(MemberReapRequest(name=m.name))
                except ProconsulError as err:
                    log.warning("reaping %s: %s", m.name, err)
