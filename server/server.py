"""Server: one Raft member — state store, FSM, Raft node, server RPC, leader duties, membership.

The agent calls ``srv.call(method, args)`` in-process; other servers (and, with
the agents issue, client agents) reach the same endpoints over server RPC.
Routing follows Consul's ``forward``: writes and default reads run on the leader
(a follower forwards them over RPC), ``?stale`` reads run wherever they land,
``?consistent`` reads commit a barrier first. While there is no leader a request
is held up to ``rpc_hold_timeout`` before it fails with "No cluster leader".
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from typing import Any, Callable

from proconsul.server import endpoints
from proconsul.server.codec import from_wire, to_wire
from proconsul.server.acl import ACLResolver, masked
from proconsul.server.ca_manager import CAManager
from proconsul.server.config import ServerConfig
from proconsul.server.errors import BadRequest, NoLeaderError, NoPathToDatacenter, NotReadyError, RPCUnreachable
from proconsul.server.fsm import FSM
from proconsul.server.leader import LeaderDuties
from proconsul.server.liveness import Liveness
from proconsul.server.sessions import LockDelays, SessionTimers
from proconsul.server.membership import Membership
from proconsul.server.raft import RaftNode, write_peers
from proconsul.server import tls
from proconsul.server.rpc import IncomingTLS, RPCPool, RPCServer
from proconsul.server.state import StateStore
from proconsul.server.structs import QueryMeta, QueryOptions, QueryReply
from proconsul.server.watch import WatchSet, fire_all

log = logging.getLogger("proconsul.server")

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
# A forwarded request may bounce this many times between servers that disagree about the leader.
MAX_HOPS = 3
# Calls only a server makes (membership and Raft peers): with verify_server_hostname the caller's
# certificate must name server.<dc>.<domain> (Consul's AuthorizeServerConn on server-to-server conns).
SERVER_ONLY_METHODS = frozenset({"Server.Hello", "Server.AddRaftPeer"})


class Server:
    """See the module docstring."""

    def __init__(self, config: ServerConfig) -> None:
        endpoints.load_all()
        self.config = config
        self.state = StateStore()
        self.fsm = FSM(self.state)
        self.raft: RaftNode | None = None
        self.pool, self.rpc = self._rpc_transport(config)
        self.members = Membership(self)
        self.liveness = Liveness(self)
        self.session_timers = SessionTimers(self)
        self.lock_delays = LockDelays()
        self.leader_duties = LeaderDuties(self)
        self.ca_manager = CAManager(self)
        self.acl = ACLResolver(self)  # secret -> token and authorizer, from this server's store
        self.loop: asyncio.AbstractEventLoop | None = None
        # The agent's telemetry registry (proconsul.agent.metrics.Metrics), when an agent hosts this server.
        self.metrics: Any = None
        self._leader_event = asyncio.Event()
        self._consistent_ready = False
        self._tasks: list[asyncio.Task] = []

    def _rpc_transport(self, config: ServerConfig) -> tuple[RPCPool, RPCServer]:
        """Server RPC's client pool and listener, with TLS as tls.internal_rpc says (Consul's tlsutil wrappers)."""
        pc = config.tls_rpc
        if pc is None:
            return RPCPool(), RPCServer(self.handle_rpc)
        name = tls.server_name(config.datacenter, config.domain)
        incoming = tls.incoming_context(pc)
        listen_tls = None
        if incoming is not None:
            authorize = name if pc.verify_incoming and pc.verify_server_hostname else None
            listen_tls = IncomingTLS(incoming, required=pc.verify_incoming, server_name=authorize)
        pool = RPCPool(ssl=tls.outgoing_context(pc), server_name=name if pc.verify_server_hostname else None)
        return pool, RPCServer(self.handle_rpc, listen_tls, SERVER_ONLY_METHODS)

    # ------------------------------------------------------------- lifecycle

    @property
    def raft_dir(self) -> str | None:
        return os.path.join(self.config.data_dir, "raft") if self.config.data_dir else None

    @property
    def peers_file(self) -> str | None:
        return os.path.join(self.raft_dir, "peers.json") if self.raft_dir else None

    async def start(self) -> None:
        """Listen for RPC, then start Raft now (dev, bootstrap, known peers) or once enough servers joined."""
        self.loop = asyncio.get_running_loop()
        loop = self.loop
        # Raft applies on this loop (RaftNode ticks here). Firing a watch only schedules its waiters, so it
        # happens at once: they are woken before the proposer, whose result is settled after the apply.
        self.state.notify = fire_all
        self.state.on_tombstone = lambda index: loop.call_soon(self.leader_duties.hint_tombstone, index)
        self.state.on_lock_delay = lambda keys, delay: loop.call_soon(self.lock_delays.record, keys, delay)
        await self.rpc.start(self.config.bind_addr, self.config.server_port)
        self._tasks.append(asyncio.create_task(self.members.run(), name="membership"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.leader_duties.stop()
        await self.rpc.stop()
        self.pool.close()
        if self.raft is not None:
            self.raft.stop()

    def start_raft(self, peers: list[str]) -> None:
        """Start the Raft node with these voters (raft addresses); persists them for restarts."""
        if self.raft is not None:
            return
        cfg = self.config
        self.raft = RaftNode(
            fsm=self.fsm,
            self_addr=cfg.raft_addr,
            bind_addr=cfg.raft_addr,
            peers=sorted(set(peers) | {cfg.raft_addr}),
            data_dir=self.raft_dir,
            password=cfg.encrypt,
            tuning=cfg.raft,
            listen=not cfg.dev,
        )
        self.raft.on_leadership = self._on_leadership
        self.raft.on_leader = lambda leader: self._leader_event.set()
        self.raft.on_peers = self._on_peers
        self.raft.start(self.loop)
        self._on_peers(self.raft.peers())
        log.info("raft started as %s with voters %s", cfg.raft_addr, ", ".join(self.raft.peers()))

    def _on_peers(self, peers: tuple[str, ...]) -> None:
        if self.peers_file is not None:
            write_peers(self.peers_file, {"peers": list(peers), "servers": [to_wire(s) for s in self.members.servers()]})

    def _on_leadership(self, is_leader: bool) -> None:
        self._leader_event.set()
        if is_leader:
            log.info("cluster leadership acquired")
            self._consistent_ready = False
            self.leader_duties.start()
        else:
            log.info("cluster leadership lost")
            self._consistent_ready = False
            self.leader_duties.stop()

    def mark_consistent_ready(self) -> None:
        """Leader duties call this once their first barrier committed (Consul's establishLeadership)."""
        self._consistent_ready = True

    # ------------------------------------------------------------- routing

    def is_leader(self) -> bool:
        return self.raft is not None and self.raft.is_leader()

    def leader_rpc_addr(self) -> str | None:
        """The leader's server (RPC) address, if a leader is known and we know where it listens."""
        if self.raft is None:
            return None
        leader = self.raft.leader()
        return self.members.rpc_addr(leader) if leader else None

    def check_datacenter(self, dc: str) -> None:
        if dc and dc != self.config.datacenter:
            raise NoPathToDatacenter("No path to datacenter")

    async def forward(self, method: str, args: Any, datacenter: str, hops: int) -> tuple[bool, Any]:
        """Consul's forward for writes: (False, None) when this server is the leader, else the leader's answer."""
        self.check_datacenter(datacenter)
        if self.is_leader():  # the common case, without a coroutine per call
            return False, None
        return await self._forward_to_leader(method, args, hops)

    async def forward_read(self, method: str, args: Any, opts: QueryOptions, hops: int) -> tuple[bool, Any]:
        """Consul's forward for reads: stale reads stay here; others go to the leader, which must be ready."""
        self.check_datacenter(opts.datacenter)
        if opts.stale and opts.consistent:
            raise BadRequest("Cannot specify ?stale with ?consistent, conflicting semantics.")
        if opts.stale or (self._consistent_ready and self.is_leader()):
            return False, None
        done, result = await self._forward_to_leader(method, args, hops)
        if not done:
            await self._wait_consistent_ready()
        return done, result

    async def _forward_to_leader(self, method: str, args: Any, hops: int) -> tuple[bool, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.rpc_hold_timeout
        while True:
            if self.is_leader():
                return False, None
            addr = self.leader_rpc_addr()
            if addr is not None and addr != self.config.rpc_addr:
                if hops >= MAX_HOPS:
                    raise NoLeaderError("No cluster leader")
                try:
                    raw = await self.pool.call(addr, method, to_wire(args), hops + 1)
                    return True, _decode_result(method, raw)
                except (NoLeaderError, RPCUnreachable) as err:
                    # Not proposed anywhere (no leader there, or never reached it): safe to try again.
                    log.debug("forwarding %s to %s: %s", method, addr, err)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoLeaderError("No cluster leader")
            self._leader_event.clear()
            try:
                await asyncio.wait_for(self._leader_event.wait(), min(remaining, 0.2))
            except asyncio.TimeoutError:
                pass

    async def _wait_consistent_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.rpc_hold_timeout
        while not self._consistent_ready:
            if not self.is_leader():
                raise NotReadyError("Not ready to serve consistent reads")
            if loop.time() >= deadline:
                raise NotReadyError("Not ready to serve consistent reads")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------- reads

    def query_meta(self, index: int, opts: QueryOptions) -> QueryMeta:
        raft = self.raft
        known = raft is not None and raft.leader() is not None
        if raft is None or raft.is_leader():
            contact = 0
        else:
            lc = raft.last_contact()
            contact = int(lc * 1000) if lc != float("inf") else 0
        consistency = "stale" if opts.stale else "consistent" if opts.consistent else "leader"
        return QueryMeta(index=max(index, 1), last_contact_ms=contact, known_leader=known, consistency=consistency)

    async def blocking_query(
        self,
        opts: QueryOptions,
        query: Callable[[WatchSet | None], tuple[int, Any]],
        shape: Callable[[Any], Any] = lambda v: v,
        acl_filter: Callable[[Any], tuple[Any, bool]] | None = None,
    ) -> QueryReply:
        """Consul's blockingQuery: run ``query``; with ``?index`` wait until its index passes it, or the jittered wait.

        ``acl_filter(value) -> (value, dropped)`` removes what the caller may not read before ``shape``;
        when it dropped something the reply's meta says so (X-Consul-Results-Filtered-By-ACLs).
        """
        if opts.consistent:
            await self.raft.barrier()
        if not opts.index:
            index, value = query(None)
            return self._query_reply(index, value, opts, shape, acl_filter)
        loop = asyncio.get_running_loop()
        wait = opts.wait if opts.wait > 0 else DEFAULT_WAIT
        wait = min(wait, MAX_WAIT)
        wait += random.random() * wait / 16  # Consul's jitter: spread out the herd of timeouts
        deadline = loop.time() + wait
        while True:
            ws = WatchSet()
            abandon = self.state.abandon_channel
            index, value = query(ws)
            if index > opts.index or abandon.fired:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if not await ws.wait(remaining):
                index, value = query(None)
                break
            if abandon.fired:
                index, value = query(None)
                break
            if opts.consistent:
                await self.raft.barrier()
        return self._query_reply(index, value, opts, shape, acl_filter)

    def _query_reply(self, index: int, value: Any, opts: QueryOptions, shape: Callable, acl_filter: Callable | None) -> QueryReply:
        meta = self.query_meta(index, opts)
        if acl_filter is not None:
            value, filtered = acl_filter(value)
            meta.filtered = masked(opts.token, filtered)
        return QueryReply(meta, shape(value))

    # ------------------------------------------------------------- dispatch

    async def call(self, method: str, args: Any) -> Any:
        """In-process RPC: what the local agent uses."""
        return await endpoints.ENDPOINTS[method].fn(self, args, 0)

    async def handle_rpc(self, method: str, raw_args: Any, hops: int) -> Any:
        """Server RPC entry: decode, run the endpoint, encode."""
        ep = endpoints.ENDPOINTS.get(method)
        if ep is None:
            raise BadRequest(f"unknown RPC method {method!r}")
        try:
            args = from_wire(ep.arg_type, raw_args if raw_args is not None else {})
        except (TypeError, ValueError, KeyError) as err:
            raise BadRequest(f"malformed arguments for {method}: {err}") from None
        return to_wire(await ep.fn(self, args, hops))


def _decode_result(method: str, raw: Any) -> Any:
    result_type = endpoints.ENDPOINTS[method].result_type
    return from_wire(result_type, raw) if result_type is not None else raw
