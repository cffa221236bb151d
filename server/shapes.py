"""Consul's JSON shapes for catalog and health objects, and the row <-> registration conversions.

Server endpoints answer in these shapes (so a client agent passes them through
untouched) and the agent uses the same functions for its own /v1/agent views.
Field order follows Consul's Go structs; ``omitempty`` fields are left out when
empty, as Go's encoder does. ``HealthEntryCache`` keeps health entries encoded, for
the hot /v1/health/service read.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Hashable, Sequence

from proconsul.server.codec import compact_json
from proconsul.server.commands import CheckRecord, NodeService
from proconsul.server.state import HealthCheck, Member, Node, PreparedQuery, ServiceInstance, Session

# Consul's NodeService.Proxy for a service that is not a proxy (a struct, so never null).
_EMPTY_PROXY = {"Mode": "", "MeshGateway": {}, "Expose": {}}
MEMBER_STATUS_CODES = {"none": 0, "alive": 1, "leaving": 2, "left": 3, "failed": 4}


def service_instance(node: str, ns: NodeService) -> ServiceInstance:
    """A registration's service as a catalog row."""
    return ServiceInstance(
        node=node,
        service_id=ns.id,
        service_name=ns.service,
        kind=ns.kind,
        tags=tuple(ns.tags),
        address=ns.address,
        tagged_addresses=dict(ns.tagged_addresses),
        meta=dict(ns.meta),
        port=ns.port,
        socket_path=ns.socket_path,
        weights=dict(ns.weights),
        enable_tag_override=ns.enable_tag_override,
        proxy=dict(ns.proxy),
        connect=dict(ns.connect),
    )


def node_service(row: ServiceInstance) -> NodeService:
    """A catalog row back as a registration's service (anti-entropy compares these)."""
    return NodeService(
        id=row.service_id,
        service=row.service_name,
        kind=row.kind,
        tags=list(row.tags),
        address=row.address,
        tagged_addresses=dict(row.tagged_addresses),
        meta=dict(row.meta),
        port=row.port,
        socket_path=row.socket_path,
        weights=dict(row.weights),
        enable_tag_override=row.enable_tag_override,
        proxy=dict(row.proxy),
        connect=dict(row.connect),
    )


def health_check(node: str, rec: CheckRecord) -> HealthCheck:
    """A registration's check as a catalog row (service name and tags are the store's to fill)."""
    return HealthCheck(
        node=node,
        check_id=rec.check_id,
        name=rec.name,
        status=rec.status,
        notes=rec.notes,
        output=rec.output,
        service_id=rec.service_id,
        type=rec.type,
        interval=rec.interval,
        timeout=rec.timeout,
        exposed_port=rec.exposed_port,
        definition=dict(rec.definition),
    )


def node_json(n: Node) -> dict[str, Any]:
    """Consul's structs.Node."""
    return {
        "ID": n.id,
        "Node": n.node,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": dict(n.tagged_addresses) or None,
        "Meta": dict(n.meta) or None,
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    }


def _proxy_json(s: ServiceInstance) -> dict[str, Any]:
    return {**_EMPTY_PROXY, **s.proxy} if s.proxy else dict(_EMPTY_PROXY)


def service_json(s: ServiceInstance, datacenter: str = "", indexes: bool = True) -> dict[str, Any]:
    """Consul's NodeService / AgentService: the ``Service`` of a health entry and the values of /v1/agent/services."""
    out: dict[str, Any] = {}
    if s.kind:
        out["Kind"] = s.kind
    out.update(
        {
            "ID": s.service_id,
            "Service": s.service_name,
            "Tags": list(s.tags),
            "Address": s.address,
        }
    )
    if s.tagged_addresses:
        out["TaggedAddresses"] = dict(s.tagged_addresses)
    out["Meta"] = dict(s.meta)
    out["Port"] = s.port
    if s.socket_path:
        out["SocketPath"] = s.socket_path
    out["Weights"] = dict(s.weights)
    out["EnableTagOverride"] = s.enable_tag_override
    out["Proxy"] = _proxy_json(s)
    out["Connect"] = dict(s.connect)
    if datacenter:
        out["Datacenter"] = datacenter
    if indexes:
        out["CreateIndex"] = s.create_index
        out["ModifyIndex"] = s.modify_index
    return out


def agent_service_json(s: ServiceInstance, datacenter: str) -> dict[str, Any]:
    """Consul's api.AgentService: the values of /v1/agent/services (no raft indexes; Proxy and Connect only when set)."""
    out: dict[str, Any] = {}
    if s.kind:
        out["Kind"] = s.kind
    out.update({"ID": s.service_id, "Service": s.service_name, "Tags": list(s.tags), "Meta": dict(s.meta), "Port": s.port, "Address": s.address})
    if s.socket_path:
        out["SocketPath"] = s.socket_path
    if s.tagged_addresses:
        out["TaggedAddresses"] = dict(s.tagged_addresses)
    out["Weights"] = dict(s.weights)
    out["EnableTagOverride"] = s.enable_tag_override
    if s.kind:
        out["Proxy"] = _proxy_json(s)
    connect = {k: v for k, v in s.connect.items() if k != "SidecarService"}
    if connect.get("Native"):
        out["Connect"] = connect
    out["Datacenter"] = datacenter
    return out


def service_node_json(n: Node, s: ServiceInstance) -> dict[str, Any]:
    """Consul's structs.ServiceNode: /v1/catalog/service/<name> entries."""
    return {
        "ID": n.id,
        "Node": n.node,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": dict(n.tagged_addresses) or None,
        "NodeMeta": dict(n.meta) or None,
        "ServiceKind": s.kind,
        "ServiceID": s.service_id,
        "ServiceName": s.service_name,
        "ServiceTags": list(s.tags),
        "ServiceAddress": s.address,
        "ServiceTaggedAddresses": dict(s.tagged_addresses) or None,
        "ServiceWeights": dict(s.weights),
        "ServiceMeta": dict(s.meta),
        "ServicePort": s.port,
        "ServiceSocketPath": s.socket_path,
        "ServiceEnableTagOverride": s.enable_tag_override,
        "ServiceProxy": _proxy_json(s),
        "ServiceConnect": dict(s.connect),
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    }


def check_json(c: HealthCheck) -> dict[str, Any]:
    """Consul's structs.HealthCheck."""
    return {
        "Node": c.node,
        "CheckID": c.check_id,
        "Name": c.name,
        "Status": c.status,
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": c.service_name,
        "ServiceTags": list(c.service_tags),
        "Type": c.type,
        "Interval": c.interval,
        "Timeout": c.timeout,
        "ExposedPort": c.exposed_port,
        "Definition": dict(c.definition),
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    }


def health_entry_json(n: Node, s: ServiceInstance, checks: Sequence[HealthCheck]) -> dict[str, Any]:
    """Consul's structs.CheckServiceNode: /v1/health/service/<name> entries."""
    return {"Node": node_json(n), "Service": service_json(s), "Checks": [check_json(c) for c in checks]}


class EncodedJSON:
    """A reply value already encoded as compact JSON (the HTTP layer's non-pretty form), sent as is.

    Not bytes and not a dataclass, so a stray one fails loudly in json.dumps rather than crossing
    server RPC in some other shape.
    """

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body


HealthRow = tuple[Node, ServiceInstance, Sequence[HealthCheck]]  # a row of the store's check_service_nodes


class HealthEntryCache:
    """Encoded CheckServiceNode entries, reused while the rows they were encoded from are unchanged.

    Store rows are immutable and every write that changes one puts a new object in its place (a write
    that changes nothing keeps the old one), so an entry is valid while its node and service rows are
    the very objects it was built from and its checks the same rows (compared element by element, which
    is identity first); a restore builds new rows, so it misses everything.
    Entries are grouped by the read they serve (a service name, plain or connect); a read drops its
    group's entries for instances it no longer returns, and the least recently read groups go once
    the cache holds more than ``max_entries`` entries. One event loop uses it: no lock.
    """

    def __init__(self, max_entries: int = 32768) -> None:
        self.max_entries = max_entries
        self.builds = 0  # entries encoded so far, in either form (tests count them to see the cache hit)
        self._groups: OrderedDict[Hashable, dict[tuple[str, str], list[Any]]] = OrderedDict()  # [node, svc, checks, compact, pretty] (None: not yet)
        self._size = 0

    def encode(self, group: Hashable, rows: list[HealthRow], chosen: list[HealthRow], pretty: bool = False) -> EncodedJSON:
        """The JSON list of ``chosen``'s entries (``chosen`` is a sublist of ``rows``, everything the read returned);
        ``pretty``: as Consul's ``?pretty`` (and dev mode) writes it, 4-space indents and a final newline."""
        entries = self._groups.pop(group, None)
        if entries is None:
            entries = {}
        self._size -= len(entries)
        parts = [b"["]
        form = 4 if pretty else 3  # each form is encoded when first asked for
        for node, svc, checks in chosen:
            key = (node.node, svc.service_id)
            hit = entries.get(key)
            if hit is None or hit[0] is not node or hit[1] is not svc or hit[2] != checks:
                hit = entries[key] = [node, svc, checks, None, None]
            if hit[form] is None:
                entry = health_entry_json(node, svc, checks)
                # Pretty: the entry as an element of an indented list, every line 4 spaces in.
                hit[form] = b"\n    " + json.dumps(entry, indent=4).replace("\n", "\n    ").encode() if pretty else compact_json(entry)
                self.builds += 1
            parts += (hit[form], b",")
        if len(entries) > len(rows):
            # Only instances the read once returned get entries: more entries than rows means some are gone.
            live = {(node.node, svc.service_id) for node, svc, _ in rows}
            entries = {key: hit for key, hit in entries.items() if key in live}
        self._groups[group] = entries
        self._size += len(entries)
        while self._size > self.max_entries and len(self._groups) > 1:
            _, dropped = self._groups.popitem(last=False)
            self._size -= len(dropped)
        if len(parts) > 1:
            parts[-1] = b"\n]\n" if pretty else b"]"  # the last comma
        else:
            parts.append(b"]\n" if pretty else b"]")
        return EncodedJSON(b"".join(parts))  # one copy of the body


def member_json(m: Member) -> dict[str, Any]:
    """Consul's api.AgentMember (serf's view; Status 1 alive, 3 left, 4 failed)."""
    return {
        "Name": m.name,
        "Addr": m.address,
        "Port": m.port,
        "Tags": dict(m.tags),
        "Status": MEMBER_STATUS_CODES.get(m.status, 0),
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }


def session_json(s: Session) -> dict[str, Any]:
    """Consul's structs.Session (LockDelay in nanoseconds, as Go's time.Duration encodes)."""
    return {
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": s.lock_delay,
        "Behavior": s.behavior,
        "TTL": s.ttl,
        "NodeChecks": list(s.node_checks),
        "ServiceChecks": [{"ID": c, "Namespace": ""} for c in s.service_checks] or None,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    }


def prepared_query_json(q: PreparedQuery) -> dict[str, Any]:
    """Consul's structs.PreparedQuery (Go field order; nil slices and maps are null)."""
    svc, failover = q.service, q.service.get("Failover") or {}
    return {
        "ID": q.id,
        "Name": q.name,
        "Session": q.session,
        "Token": q.token,
        "Template": {
            "Type": q.template.get("Type", ""),
            "Regexp": q.template.get("Regexp", ""),
            "RemoveEmptyTags": bool(q.template.get("RemoveEmptyTags")),
        },
        "Service": {
            "Service": svc.get("Service", ""),
            "SamenessGroup": svc.get("SamenessGroup", ""),
            "Failover": {
                "NearestN": failover.get("NearestN", 0),
                "Datacenters": failover.get("Datacenters"),
                "Targets": failover.get("Targets"),
            },
            "OnlyPassing": bool(svc.get("OnlyPassing")),
            "IgnoreCheckIDs": svc.get("IgnoreCheckIDs"),
            "Near": svc.get("Near", ""),
            "Tags": svc.get("Tags"),
            "NodeMeta": svc.get("NodeMeta"),
            "ServiceMeta": svc.get("ServiceMeta"),
            "Connect": bool(svc.get("Connect")),
            "Peer": svc.get("Peer", ""),
        },
        "DNS": {"TTL": q.dns.get("TTL", "")},
        "CreateIndex": q.create_index,
        "ModifyIndex": q.modify_index,
    }
