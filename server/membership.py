"""Server membership: how servers find each other and bootstrap Raft (the part of Consul's serf LAN pool servers need).

Servers exchange ``Server.Hello`` over server RPC with every ``-retry-join``
address and every server they know, learning each other's node name, ID and
server and raft addresses. Raft starts:

* at once, with the persisted voters, when the data dir says Raft ran before;
* at once, alone, for ``-dev``, ``-bootstrap`` or ``-bootstrap-expect 1``;
* when ``-bootstrap-expect N`` servers (this one included) know each other —
  all start with the same voter set, so they elect one leader;
* when a server answers that its Raft already runs: this server joins that
  cluster and asks the leader to add it (pysyncobj dynamic membership).

A running server that a leader's answer does not list as a voter asks to be
added again, as Consul's leader re-adds a live server (remove-peer is for dead
ones; a live server leaves with ``leave``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from proconsul.server.codec import from_wire, to_wire
from proconsul.server.errors import ProconsulError
from proconsul.server.raft import read_peers
from proconsul.server.structs import AddPeerRequest, HelloReply, HelloRequest, ServerInfo

log = logging.getLogger("proconsul.membership")

JOIN_INTERVAL = 0.5
REFRESH_INTERVAL = 5.0


class Membership:
    """See the module docstring."""

    def __init__(self, srv: Any) -> None:
        self.srv = srv
        cfg = srv.config
        self.me = ServerInfo(
            node=cfg.node_name, id=cfg.node_id, datacenter=cfg.datacenter, rpc_addr=cfg.rpc_addr, raft_addr=cfg.raft_addr
        )
        self._known: dict[str, ServerInfo] = {self.me.raft_addr: self.me}
        self._last_add_request = 0.0
        self._waiting_logged = 0.0

    # ------------------------------------------------------------- lookups

    def servers(self) -> list[ServerInfo]:
        return sorted(self._known.values(), key=lambda s: s.raft_addr)

    def info(self, raft_addr: str) -> ServerInfo | None:
        return self._known.get(raft_addr)

    def rpc_addr(self, raft_addr: str) -> str | None:
        info = self._known.get(raft_addr)
        return info.rpc_addr if info else None

    def raft_addr_for(self, *, address: str = "", node_id: str = "", voters: tuple[str, ...] = ()) -> str | None:
        """The voter named by server address, raft address or node ID."""
        for raft_addr in voters:
            info = self._known.get(raft_addr)
            if address and (address == raft_addr or (info and info.rpc_addr == address)):
                return raft_addr
            if node_id and info and info.id == node_id:
                return raft_addr
        return None

    def merge(self, infos: list[ServerInfo]) -> None:
        for info in infos:
            if info.datacenter != self.me.datacenter:
                continue
            if info.raft_addr == self.me.raft_addr:
                continue
            self._known[info.raft_addr] = info

    # ------------------------------------------------------------- hello

    def handle_hello(self, req: HelloRequest) -> HelloReply:
        self.merge([req.me, *req.known])
        raft = self.srv.raft
        return HelloReply(
            me=self.me,
            known=self.servers(),
            raft_started=raft is not None,
            raft_peers=list(raft.peers()) if raft is not None else [],
            leader=(raft.leader() or "") if raft is not None else "",
        )

    async def _hello(self, addr: str) -> HelloReply | None:
        req = HelloRequest(me=self.me, known=self.servers())
        try:
            raw = await self.srv.pool.call(addr, "Server.Hello", to_wire(req), timeout=2.0)
        except ProconsulError as err:
            log.debug("hello to %s: %s", addr, err)
            return None
        reply = from_wire(HelloReply, raw)
        if reply.me.datacenter != self.me.datacenter:
            log.warning("ignoring server %s at %s: it is in datacenter %s", reply.me.node, addr, reply.me.datacenter)
            return None
        self.merge([reply.me, *reply.known])
        return reply

    # ------------------------------------------------------------- join loop

    async def run(self) -> None:
        srv, cfg = self.srv, self.srv.config
        saved = read_peers(srv.peers_file) if srv.peers_file else None
        if saved:
            self.merge([from_wire(ServerInfo, s) for s in saved.get("servers", [])])
            srv.start_raft(saved["peers"])
        elif cfg.dev or cfg.bootstrap or cfg.bootstrap_expect == 1:
            srv.start_raft([])
        while True:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("membership round failed")
            settled = srv.raft is not None and srv.raft.leader() is not None
            await asyncio.sleep(REFRESH_INTERVAL if settled else JOIN_INTERVAL)

    async def _round(self) -> None:
        srv, cfg = self.srv, self.srv.config
        targets = set(cfg.retry_join) | {s.rpc_addr for s in self._known.values()}
        targets.discard(self.me.rpc_addr)
        if not targets:
            return
        replies = [r for r in await asyncio.gather(*(self._hello(a) for a in sorted(targets))) if r is not None]
        running = [r for r in replies if r.raft_started]
        if srv.raft is None:
            if running:
                self._join_existing(max(running, key=lambda r: bool(r.leader)))
            elif cfg.bootstrap_expect and len(self._known) >= cfg.bootstrap_expect:
                log.info("bootstrapping: %d servers found (bootstrap-expect %d)", len(self._known), cfg.bootstrap_expect)
                srv.start_raft(list(self._known))
            elif time.monotonic() - self._waiting_logged > 10:
                self._waiting_logged = time.monotonic()
                log.info(
                    "waiting for servers: %d known, bootstrap-expect %d, retry-join %s",
                    len(self._known), cfg.bootstrap_expect, ", ".join(cfg.retry_join) or "(none)",
                )
            return
        for reply in running:
            if reply.leader and reply.leader in reply.raft_peers and self.me.raft_addr not in reply.raft_peers:
                await self._request_add(reply.me.rpc_addr)
                break

    def _join_existing(self, reply: HelloReply) -> None:
        log.info("joining the running cluster of %s (voters %s)", reply.me.node, ", ".join(reply.raft_peers))
        self.srv.start_raft(reply.raft_peers)

    async def _request_add(self, via: str) -> None:
        now = time.monotonic()
        if now - self._last_add_request < 2.0:
            return
        self._last_add_request = now
        try:
            await self.srv.pool.call(via, "Server.AddRaftPeer", to_wire(AddPeerRequest(self.me.raft_addr)), timeout=10.0)
            log.info("added to the Raft configuration as %s", self.me.raft_addr)
        except ProconsulError as err:
            log.info("asking to join the Raft configuration via %s: %s", via, err)
