"""The members part of the state store: the cluster's agents and their liveness (Consul's serf member list).

Only the leader writes here, and only when a node changes state (alive, failed,
left), so liveness costs Raft nothing while nothing changes. Each update keeps
the catalog in step in the same entry, as Consul's leader reconcile does:

* alive  — the node is registered (its agent-synced meta and tagged addresses
  kept), its ``serfHealth`` check passes, and a server gets the ``consul``
  service on its server port;
* failed — ``serfHealth`` goes critical, so every service on the node leaves
  ``?passing``;
* left   — the node and everything on it leave the catalog.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from proconsul.server.state.base import MISSING, TableSchema, WriteTxn, restore_slot
from proconsul.server.state.catalog import HealthCheck, Node, ServiceInstance
from proconsul.server.watch import WatchChannel, WatchSet

SERF_CHECK_ID = "serfHealth"
SERF_CHECK_NAME = "Serf Health Status"
SERF_ALIVE_OUTPUT = "Agent alive and reachable"
SERF_FAILED_OUTPUT = "Agent not live or unreachable"
MEMBER_STATUSES = ("alive", "failed", "left")


def tagged_addresses(address: str) -> dict[str, str]:
    """The tagged addresses an agent registers its node with (Consul's lan/wan, v4 forms)."""
    return {"lan": address, "lan_ipv4": address, "wan": address, "wan_ipv4": address}


class Member(NamedTuple):
    """One agent as the cluster knows it; ``changed_at`` (unix seconds) is filled in by the leader."""

    name: str
    id: str = ""
    address: str = ""
    port: int = 0
    status: str = "alive"
    role: str = "node"
    datacenter: str = ""
    tags: dict = {}
    changed_at: int = 0
    create_index: int = 0
    modify_index: int = 0


class MembersStore:
    """Mixed into StateStore (see base.StoreBase for the machinery)."""

    MEMBERS_SCHEMA = {
        "members": TableSchema(
            (
                ("name", "text"),
                ("id", "text"),
                ("address", "text"),
                ("port", "int"),
                ("status", "text"),
                ("role", "text"),
                ("datacenter", "text"),
                ("tags", "json"),
                ("changed_at", "int"),
                ("create_index", "int"),
                ("modify_index", "int"),
            )
        )
    }

    # Provided by StoreBase and the catalog part.
    _lock: Any
    _nodes: dict[str, Node]
    _max_index: Callable[..., int]
    _set_index_txn: Callable[[WriteTxn, str], None]
    _write: Callable[..., Any]
    _watch: Callable[..., None]
    ensure_node_txn: Callable[..., None]
    ensure_service_txn: Callable[..., None]
    ensure_check_txn: Callable[..., None]
    delete_node_txn: Callable[..., None]

    def _members_init(self) -> None:
        self._members: dict[str, Member] = {}

    def _members_dump(self) -> dict[str, list[tuple]]:
        return {"members": [tuple(m) for _, m in sorted(self._members.items())]}

    def _members_load(self, tables: dict[str, list[tuple]]) -> Callable[[], None]:
        members = {r[0].lower(): Member(*r) for r in tables.get("members", ())}

        def swap() -> None:
            self._members = members

        return swap

    def _members_abandon(self) -> list[WatchChannel]:
        return []

    def _members_fired(self, tx: WriteTxn) -> list[WatchChannel]:
        return []

    def member_update(self, index: int, member: Member, server_port: int = 0) -> None:
        """Record a liveness change and apply it to the catalog (see the module docstring)."""

        def body(tx: WriteTxn) -> None:
            key = member.name.lower()
            existing = self._members.get(key, MISSING)
            row = member._replace(
                create_index=existing.create_index if existing is not MISSING else tx.index, modify_index=tx.index
            )
            self._members[key] = row
            tx.undo.append(lambda: restore_slot(self._members, key, existing))
            self._set_index_txn(tx, "members")
            tx.watch_keys.add("members")
            if member.status == "left":
                self.delete_node_txn(tx, member.name)
                return
            current = self._nodes.get(key)
            self.ensure_node_txn(
                tx,
                Node(
                    node=member.name,
                    id=member.id,
                    address=member.address,
                    datacenter=member.datacenter,
                    tagged_addresses=current.tagged_addresses if current else tagged_addresses(member.address),
                    meta=current.meta if current else {},
                ),
            )
            alive = member.status == "alive"
            self.ensure_check_txn(
                tx,
                HealthCheck(
                    node=member.name,
                    check_id=SERF_CHECK_ID,
                    name=SERF_CHECK_NAME,
                    status="passing" if alive else "critical",
                    output=SERF_ALIVE_OUTPUT if alive else SERF_FAILED_OUTPUT,
                ),
            )
            if member.role == "consul" and server_port:
                self.ensure_service_txn(
                    tx,
                    ServiceInstance(
                        node=member.name,
                        service_id="consul",
                        service_name="consul",
                        port=server_port,
                        meta={"raft_version": "3", "serf_protocol_current": "2", "version": member.tags.get("build", "")},
                    ),
                )

        self._write(index, body)

    def member_reap(self, index: int, name: str) -> None:
        """Forget a member (reaped after reconnect_timeout); a failed one leaves the catalog too."""

        def body(tx: WriteTxn) -> None:
            key = name.lower()
            existing = self._members.get(key)
            if existing is None:
                return
            del self._members[key]
            tx.undo.append(lambda: restore_slot(self._members, key, existing))
            self._set_index_txn(tx, "members")
            tx.watch_keys.add("members")
            self.delete_node_txn(tx, name)

        self._write(index, body)

    def members(self, ws: WatchSet | None = None) -> tuple[int, list[Member]]:
        """Every member, by name."""
        with self._lock:
            self._watch(ws, "members")
            return self._max_index("members") or 1, [m for _, m in sorted(self._members.items())]

    def get_member(self, name: str) -> Member | None:
        with self._lock:
            return self._members.get(name.lower())
