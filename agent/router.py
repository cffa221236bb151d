"""A client agent's way to the servers: which server to call, and failing over (Consul's router / servers manager).

The list starts from ``-retry-join`` and is replaced by what the servers report
in every heartbeat reply. Calls go to the current server and move on when it
cannot be reached. A call that broke after it was sent is retried elsewhere only
when it is a read: a write's outcome is then unknown. A server that failed a
call goes to the end of the list (Consul's NotifyFailedServer), so the next call
tries another one first.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from proconsul.server.codec import from_wire, to_wire
from proconsul.server.endpoints import ENDPOINTS, load_all
from proconsul.server.errors import NoLeaderError, RPCError, RPCUnreachable
from proconsul.server.rpc import RPCPool
from proconsul.server.structs import QueryReply

log = logging.getLogger("proconsul.router")


class ServerRouter:
    """See the module docstring."""

    def __init__(self, seeds: list[str], pool: RPCPool | None = None) -> None:
        load_all()
        self.pool = pool or RPCPool()
        self._seeds = list(seeds)
        self._servers = list(seeds)
        random.shuffle(self._servers)
        self.healthy = False

    def servers(self) -> list[str]:
        return list(self._servers)

    def update(self, servers: list[str]) -> None:
        """Adopt the servers a server reported, keeping the one we use first."""
        if not servers or set(servers) == set(self._servers):
            return
        current = self._servers[0] if self._servers else None
        fresh = list(servers)
        random.shuffle(fresh)
        if current in fresh:
            fresh.remove(current)
            fresh.insert(0, current)
        self._servers = fresh

    def add(self, addr: str) -> None:
        """A server named by /v1/agent/join or -retry-join."""
        if addr not in self._servers:
            self._servers.append(addr)
        if addr not in self._seeds:
            self._seeds.append(addr)

    async def call(self, method: str, args: Any, timeout: float | None = None) -> Any:
        """Call a server endpoint over RPC, failing over between servers; raises RPCError when none answers."""
        ep = ENDPOINTS[method]
        is_read = ep.result_type is QueryReply
        wire = to_wire(args)
        candidates = self._servers or self._seeds
        if not candidates:
            raise RPCError("No known Consul servers")
        last: Exception | None = None
        for attempt, addr in enumerate(list(candidates)):
            try:
                raw = await self.pool.call(addr, method, wire, timeout=timeout)
            except RPCUnreachable as err:
                last = err
            except RPCError as err:
                self._demote(addr)
                if not is_read:
                    raise
                last = err
            except NoLeaderError:
                raise
            else:
                if attempt:
                    self._prefer(addr)
                self.healthy = True
                return from_wire(ep.result_type, raw) if ep.result_type is not None else raw
            log.debug("server %s failed for %s: %s", addr, method, last)
        self.healthy = False
        raise RPCError(f"No known Consul servers reachable (last error: {last})")

    def _demote(self, addr: str) -> None:
        if addr in self._servers and len(self._servers) > 1:
            self._servers.remove(addr)
            self._servers.append(addr)

    def _prefer(self, addr: str) -> None:
        if addr in self._servers:
            self._servers.remove(addr)
            self._servers.insert(0, addr)
