"""Server RPC arguments and replies that are not Raft commands.

Requests carry Consul's ``QueryOptions`` (blocking index, wait, consistency) or
a datacenter and token; replies to reads carry ``QueryMeta``. Payloads in replies
are already in Consul's JSON shape, so an agent passes them through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proconsul.server.commands import DeregisterRequest, KVSRequest, RegisterRequest, SessionRecord, TxnRequest


@dataclass
class QueryOptions:
    """Consul's QueryOptions: ``index``/``wait`` block, ``stale``/``consistent`` pick the read mode."""

    datacenter: str = ""
    token: str = ""
    index: int = 0
    wait: float = 0.0
    stale: bool = False
    consistent: bool = False


@dataclass
class QueryMeta:
    """Consul's QueryMeta: what the X-Consul-* headers report."""

    index: int = 1
    last_contact_ms: int = 0
    known_leader: bool = True
    consistency: str = "leader"
    filtered: bool = False  # X-Consul-Results-Filtered-By-ACLs


@dataclass
class QueryReply:
    """A read's result in Consul's JSON shape plus its meta."""

    meta: QueryMeta
    value: Any = None


@dataclass
class KeyRequest:
    """KVS.Get / KVS.List: one key or a prefix."""

    key: str
    opts: QueryOptions = field(default_factory=QueryOptions)


@dataclass
class KeyListRequest:
    """KVS.ListKeys: keys under a prefix, rolled up at ``separator``."""

    prefix: str
    separator: str = ""
    opts: QueryOptions = field(default_factory=QueryOptions)


@dataclass
class KVSApply:
    """KVS.Apply: a write plus its routing (datacenter, token)."""

    req: KVSRequest
    datacenter: str = ""
    token: str = ""


@dataclass
class TxnApply:
    """Txn.Apply / Txn.Read: a transaction plus its routing and read options."""

    req: TxnRequest
    opts: QueryOptions = field(default_factory=QueryOptions)


@dataclass
class DatacenterRequest:
    """Any request that only names a datacenter (status, operator, snapshot)."""

    opts: QueryOptions = field(default_factory=QueryOptions)


@dataclass
class RaftPeerRequest:
    """Operator.RaftRemovePeerByAddress / ByID."""

    address: str = ""
    id: str = ""
    opts: QueryOptions = field(default_factory=QueryOptions)


@dataclass
class SnapshotRestore:
    """Snapshot.Restore: the SQLite file's tables, decoded by the receiving server."""

    data: bytes
    opts: QueryOptions = field(default_factory=QueryOptions)


@dataclass
class ServerInfo:
    """What servers tell each other about themselves (Consul learns this from serf tags)."""

    node: str
    id: str
    datacenter: str
    rpc_addr: str
    raft_addr: str


@dataclass
class HelloRequest:
    """Server.Hello: a server introducing itself and the servers it knows."""

    me: ServerInfo
    known: list[ServerInfo] = field(default_factory=list)


@dataclass
class HelloReply:
    """Who answered, whom it knows, and whether its Raft is already running (and with whom)."""

    me: ServerInfo
    known: list[ServerInfo] = field(default_factory=list)
    raft_started: bool = False
    raft_peers: list[str] = field(default_factory=list)
    leader: str = ""


@dataclass
class AddPeerRequest:
    """Server.AddRaftPeer: ask the leader to add a server to the Raft configuration."""

    raft_addr: str


@dataclass
class CatalogQuery:
    """Every catalog and health read: ``name`` is the service, node or check state the method asks about."""

    name: str = ""
    tags: list[str] = field(default_factory=list)
    passing: bool = False
    connect: bool = False
    node_meta: dict[str, str] = field(default_factory=dict)
    filter: str = ""
    opts: QueryOptions = field(default_factory=QueryOptions)


@dataclass
class RegisterArgs:
    """Catalog.Register: a registration plus its routing."""

    req: RegisterRequest
    datacenter: str = ""
    token: str = ""


@dataclass
class DeregisterArgs:
    """Catalog.Deregister: a deregistration plus its routing."""

    req: DeregisterRequest
    datacenter: str = ""
    token: str = ""


@dataclass
class HeartbeatRequest:
    """Internal.Heartbeat: an agent saying it is alive (this replaces Consul's gossip for liveness)."""

    name: str
    id: str
    address: str
    datacenter: str
    role: str = "node"
    port: int = 0
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class HeartbeatReply:
    """The servers an agent may talk to (their server RPC addresses) and the leader's."""

    servers: list[str] = field(default_factory=list)
    leader: str = ""


@dataclass
class MemberRequest:
    """Internal.Leave / Internal.ForceLeave: one member by name."""

    name: str
    datacenter: str = ""
    token: str = ""


@dataclass
class SessionApply:
    """Session.Apply: create or destroy, plus routing."""

    op: str
    session: SessionRecord
    datacenter: str = ""
    token: str = ""


@dataclass
class SessionQuery:
    """Session.Get / Renew / NodeSessions / List."""

    id: str = ""
    node: str = ""
    opts: QueryOptions = field(default_factory=QueryOptions)
