"""Raft commands: small typed records, never live objects.

On the wire a command is one type byte followed by the JSON of its dataclass
(``encode``/``decode``). Type bytes are part of the log format: never reuse or
renumber one. Everything apply needs that is not a pure function of the log
(IDs, timestamps, generated keys) is filled in by the submitter before encoding.
"""

from __future__ import annotations

import json
from base64 import b64encode as _b64encode
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _str
from typing import Any

from proconsul.server.codec import compact_json, from_wire, to_wire


@dataclass
class KVSRequest:
    """A single KV write, Consul's structs.KVSRequest. ``op`` is one of KV_OPS; ``index`` is the CAS index."""

    op: str
    key: str
    value: bytes | None = None
    flags: int = 0
    index: int = 0
    session: str = ""


KV_OPS = ("set", "cas", "lock", "unlock", "delete", "delete-cas", "delete-tree")


@dataclass
class TxnKVOp:
    """One KV operation inside a transaction, Consul's api.KVTxnOp."""

    verb: str
    key: str
    value: bytes | None = None
    flags: int = 0
    index: int = 0
    session: str = ""


TXN_KV_WRITE_VERBS = frozenset({"set", "cas", "lock", "unlock", "delete", "delete-cas", "delete-tree"})
TXN_KV_VERBS = TXN_KV_WRITE_VERBS | {"get", "get-tree", "check-index", "check-session", "check-not-exists"}


@dataclass
class TxnRequest:
    """An all-or-nothing transaction, Consul's structs.TxnRequest (KV ops for now)."""

    ops: list[TxnKVOp] = field(default_factory=list)


@dataclass
class TombstoneRequest:
    """Reap KV tombstones at or below ``reap_index`` (leader's tombstone GC)."""

    reap_index: int


@dataclass
class RestoreRequest:
    """Replace the whole state with snapshot tables (rows as lists, bytes as base64 via the codec)."""

    tables: dict[str, list[list[Any]]]


@dataclass
class BarrierRequest:
    """No-op entry: once applied, everything committed before it is applied too."""


@dataclass
class NodeService:
    """The service part of a registration, Consul's structs.NodeService."""

    id: str
    service: str
    kind: str = ""
    tags: list[str] = field(default_factory=list)
    address: str = ""
    tagged_addresses: dict[str, dict] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    port: int = 0
    socket_path: str = ""
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    enable_tag_override: bool = False
    proxy: dict[str, Any] = field(default_factory=dict)
    connect: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckRecord:
    """A check in a registration, Consul's structs.HealthCheck (the store fills in service name and tags)."""

    check_id: str
    name: str = ""
    status: str = "critical"
    notes: str = ""
    output: str = ""
    service_id: str = ""
    type: str = ""
    interval: str = ""
    timeout: str = ""
    exposed_port: int = 0
    definition: dict[str, Any] = field(default_factory=dict)


@dataclass
class RegisterRequest:
    """Consul's structs.RegisterRequest: a node, optionally a service, and checks, applied together."""

    node: str
    id: str = ""
    address: str = ""
    datacenter: str = ""
    tagged_addresses: dict[str, str] = field(default_factory=dict)
    node_meta: dict[str, str] = field(default_factory=dict)
    service: NodeService | None = None
    checks: list[CheckRecord] = field(default_factory=list)
    skip_node_update: bool = False


@dataclass
class DeregisterRequest:
    """Consul's structs.DeregisterRequest: a service (and its checks), a check, or the whole node."""

    node: str
    service_id: str = ""
    check_id: str = ""


@dataclass
class MemberUpdateRequest:
    """The leader saw an agent's liveness change (alive, failed, left); ``changed_at`` is the leader's clock."""

    name: str
    id: str
    address: str
    status: str
    role: str = "node"
    datacenter: str = ""
    port: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    changed_at: int = 0


@dataclass
class MemberReapRequest:
    """Forget a member that stayed failed or left past reconnect_timeout."""

    name: str


@dataclass
class SessionRecord:
    """A session as the create command carries it (ID made by the leader); ``lock_delay`` in nanoseconds."""

    id: str
    name: str = ""
    node: str = ""
    lock_delay: int = 15_000_000_000
    behavior: str = "release"
    ttl: str = ""
    node_checks: list[str] = field(default_factory=list)
    service_checks: list[str] = field(default_factory=list)


@dataclass
class SessionRequest:
    """Consul's structs.SessionRequest: create a session, or destroy (invalidate) one."""

    op: str
    session: SessionRecord


@dataclass
class EventFireRequest:
    """A user event as the leader made it (Consul's agent.UserEvent: ID chosen, Version set); apply assigns LTime."""

    id: str
    name: str
    payload: bytes | None = None
    node_filter: str = ""
    service_filter: str = ""
    tag_filter: str = ""
    version: int = 1


@dataclass
class PreparedQueryRecord:
    """Consul's structs.PreparedQuery as a command carries it (ID made by the leader); sub-structs in Consul's JSON shape."""

    id: str = ""
    name: str = ""
    session: str = ""
    token: str = ""
    template: dict[str, Any] = field(default_factory=dict)
    service: dict[str, Any] = field(default_factory=dict)
    dns: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedQueryRequest:
    """Consul's structs.PreparedQueryRequest: create, update or delete a prepared query."""

    op: str
    query: PreparedQueryRecord


@dataclass
class CARootRecord:
    """A trusted root as the leader made it (Consul's structs.CARoot); ``signing_key`` is its private key PEM."""

    id: str
    name: str = ""
    serial_number: int = 0
    signing_key_id: str = ""
    external_trust_domain: str = ""
    not_before: str = ""
    not_after: str = ""
    root_cert: str = ""
    intermediate_certs: list[str] | None = None
    signing_key: str = ""
    active: bool = False
    rotated_out_at: int = 0
    private_key_type: str = ""
    private_key_bits: int = 0


@dataclass
class CAConfigRecord:
    """Consul's structs.CAConfiguration as a command carries it (the ClusterID chosen by the leader)."""

    cluster_id: str
    provider: str = "consul"
    config: dict[str, Any] = field(default_factory=dict)
    state: dict[str, str] | None = None
    force_without_cross_signing: bool = False


CA_OPS = ("set-config", "set-roots", "set-roots-config")


@dataclass
class CARequest:
    """Consul's structs.CARequest: set the config, the roots, or both; check-and-set on what the leader read.

    ``index`` is the roots table index the leader read (set-roots, set-roots-config);
    ``config_index`` the config's ModifyIndex (0: there was none).
    """

    op: str
    index: int = 0
    config_index: int = 0
    roots: list[CARootRecord] = field(default_factory=list)
    config: CAConfigRecord | None = None


@dataclass
class CALeafRequest:
    """Consul's structs.CALeafRequest (increment-index): its Raft index becomes a certificate's serial and ModifyIndex."""

    op: str = "increment-index"


CONFIG_ENTRY_OPS = ("upsert", "upsert-cas", "delete", "delete-cas")


@dataclass
class ConfigEntryRequest:
    """Consul's structs.ConfigEntryRequest: ``entry`` normalized (Consul's JSON shape; for deletes just Kind and Name);
    ``cas`` is the ModifyIndex the -cas ops compare (0 for upsert-cas: only if absent)."""

    op: str
    entry: dict[str, Any] = field(default_factory=dict)
    cas: int = 0


INTENTION_OPS = ("create", "update", "upsert", "delete")


@dataclass
class IntentionRequest:
    """Consul's structs.IntentionRequest as the leader rewrites it (IntentionMutation): the source to write,
    its legacy ID and timestamps already made. Deletes name ``legacy_id``, or ``destination`` and ``source``."""

    op: str
    legacy_id: str = ""
    destination: str = ""
    source: str = ""
    value: dict[str, Any] = field(default_factory=dict)


@dataclass
class ACLTokenRecord:
    """Consul's structs.ACLToken as a command carries it: IDs, secret and CreateTime made by the leader;
    policies and roles as IDs (names are resolved on read, so a rename cannot break a link)."""

    accessor_id: str
    secret_id: str
    description: str = ""
    policies: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    service_identities: list[dict[str, Any]] = field(default_factory=list)  # {"ServiceName", "Datacenters"?}
    node_identities: list[dict[str, Any]] = field(default_factory=list)  # {"NodeName", "Datacenter"}
    local: bool = False
    auth_method: str = ""
    expiration_time: str = ""  # RFC 3339; "" never expires
    create_time: str = ""
    hash: str = ""


@dataclass
class ACLPolicyRecord:
    """Consul's structs.ACLPolicy as a command carries it (ID made by the leader, rules already validated)."""

    id: str
    name: str
    description: str = ""
    rules: str = ""
    datacenters: list[str] | None = None
    hash: str = ""


@dataclass
class ACLRoleRecord:
    """Consul's structs.ACLRole as a command carries it; policies as IDs."""

    id: str
    name: str
    description: str = ""
    policies: list[str] = field(default_factory=list)
    service_identities: list[dict[str, Any]] = field(default_factory=list)
    node_identities: list[dict[str, Any]] = field(default_factory=list)
    hash: str = ""


@dataclass
class ACLBootstrapRequest:
    """Consul's structs.ACLTokenBootstrapRequest: the first management token, once (or again at ``reset_index``)."""

    token: ACLTokenRecord
    reset_index: int = 0


ACL_OPS = ("set", "delete")


@dataclass
class ACLTokenRequest:
    """Consul's ACLTokenBatchSetRequest / ACLTokenBatchDeleteRequest: ``tokens`` to set or ``ids`` (accessors) to delete."""

    op: str
    tokens: list[ACLTokenRecord] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


@dataclass
class ACLPolicyRequest:
    """Consul's ACLPolicyBatchSetRequest / ACLPolicyBatchDeleteRequest."""

    op: str
    policies: list[ACLPolicyRecord] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


@dataclass
class ACLRoleRequest:
    """Consul's ACLRoleBatchSetRequest / ACLRoleBatchDeleteRequest."""

    op: str
    roles: list[ACLRoleRecord] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


@dataclass
class Batch:
    """Several encoded commands in one log entry, applied in order at that entry's index.

    The leader coalesces writes proposed in the same event-loop turn (see ``RaftNode.apply``),
    so pysyncobj pays its per-entry costs once for all of them. Only commands that tolerate
    sharing a Raft index are batched (BATCHABLE): a leaf certificate's serial, for one, is its
    index. Wire form: the type byte, then each payload as a 4-byte big-endian length and its bytes.
    """

    payloads: list[bytes]


BATCH_TYPE = 21


# type byte -> command class; append only.
COMMAND_TYPES: dict[int, type] = {
    1: KVSRequest,
    2: TxnRequest,
    3: TombstoneRequest,
    4: RestoreRequest,
    5: BarrierRequest,
    6: RegisterRequest,
    7: DeregisterRequest,
    8: MemberUpdateRequest,
    9: MemberReapRequest,
    10: SessionRequest,
    11: EventFireRequest,
    12: PreparedQueryRequest,
    13: CARequest,
    14: CALeafRequest,
    15: ConfigEntryRequest,
    16: IntentionRequest,
    17: ACLBootstrapRequest,
    18: ACLTokenRequest,
    19: ACLPolicyRequest,
    20: ACLRoleRequest,
    BATCH_TYPE: Batch,
}
_TYPE_BYTES: dict[type, bytes] = {cls: bytes([t]) for t, cls in COMMAND_TYPES.items()}


class UnknownCommandError(Exception):
    """A log entry this version cannot decode: applying past it would diverge."""


# Commands that may share a log entry (and so a Raft index) with others: see Batch.
BATCHABLE: frozenset[type] = frozenset({KVSRequest, TxnRequest, RegisterRequest, DeregisterRequest, BarrierRequest})


def encode(cmd: Any) -> bytes:
    """Command to log payload."""
    if type(cmd) is KVSRequest:
        return _encode_kvs(cmd)
    return _TYPE_BYTES[type(cmd)] + compact_json(to_wire(cmd))


_KVS_TYPE = bytes([1])


def _encode_kvs(cmd: KVSRequest) -> bytes:
    # Every KV write is encoded once on its way to the log: formatted directly, byte for byte what the
    # generic path writes (tested), at a fraction of the JSON encoder's cost.
    value = "null" if cmd.value is None else '"' + _b64encode(cmd.value).decode("ascii") + '"'
    return _KVS_TYPE + (
        f'{{"op":{_str(cmd.op)},"key":{_str(cmd.key)},"value":{value},"flags":{cmd.flags},'
        f'"index":{cmd.index},"session":{_str(cmd.session)}}}'
    ).encode()


def encode_batch(payloads: list[bytes]) -> bytes:
    """Encoded commands to one Batch payload."""
    parts = [bytes([BATCH_TYPE])]
    for p in payloads:
        parts.append(len(p).to_bytes(4, "big"))
        parts.append(p)
    return b"".join(parts)


def _decode_batch(payload: bytes) -> Batch:
    out, pos, end = [], 1, len(payload)
    while pos < end:
        n = int.from_bytes(payload[pos : pos + 4], "big")
        out.append(payload[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return Batch(out)


def decode(payload: bytes) -> Any:
    """Log payload to command; raises UnknownCommandError for a type this version does not know."""
    cls = COMMAND_TYPES.get(payload[0]) if payload else None
    if cls is None:
        raise UnknownCommandError(f"unknown command type {payload[:1]!r}")
    if cls is Batch:
        return _decode_batch(payload)
    return from_wire(cls, json.loads(payload[1:]))
