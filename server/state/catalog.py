"""The catalog part of the state store: nodes, service instances and health checks.

Keys are case-insensitive, as in Consul's memdb indexes (node names, service
IDs, check IDs and service names are lowercased for lookups; rows keep the case
they were registered with).

Indexes and watches follow Consul's per-result scheme so a change to service A
never wakes a watcher of service B:

* table indexes ``nodes``, ``services``, ``checks``;
* ``service.<name>`` moves whenever anything a health or catalog query for that
  service returns changes: an instance, one of its checks, its node's row or one
  of its node's node-level checks. A connect proxy counts for its destination.
* watch keys: ``nodes``, ``services``, ``checks`` (list endpoints),
  ``svc:<name>`` (per service) and ``node:<name>`` (per node).

Secondary indexes (rebuilt on restore, kept by every write with undo): services
by name and by node, checks by node, and checks by (node, service ID) so a
health read gets an instance's checks without scanning its node's (service ID
``""`` holds the node-level checks).

Health reads of a service are memoized until something they return changes:
every such write moves ``service.<name>`` through ``_touch_service`` (which is
what blocking queries rely on too), and that drops the service's memo; a restore
drops them all. A write that rolls back has dropped at most a memo that is still
right, and no read can run inside a write (the lock), so none is left stale.

Writes skip rows that would not change, as Consul's ensure* functions do, so an
agent's periodic full sync does not churn indexes.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple

from proconsul.server.errors import StoreError
from proconsul.server.state.base import MISSING, TableSchema, WriteTxn, restore_slot
from proconsul.server.watch import WatchChannel, WatchSet

_EMPTY: dict = {}
DEFAULT_WEIGHTS = {"Passing": 1, "Warning": 1}
HEALTH_STATES = ("passing", "warning", "critical")


class Node(NamedTuple):
    """A catalog node, Consul's structs.Node."""

    node: str
    id: str = ""
    address: str = ""
    datacenter: str = ""
    tagged_addresses: dict = _EMPTY
    meta: dict = _EMPTY
    create_index: int = 0
    modify_index: int = 0


class ServiceInstance(NamedTuple):
    """A service instance on a node, Consul's structs.ServiceNode without the node fields."""

    node: str
    service_id: str
    service_name: str
    kind: str = ""
    tags: tuple = ()
    address: str = ""
    tagged_addresses: dict = _EMPTY
    meta: dict = _EMPTY
    port: int = 0
    socket_path: str = ""
    weights: dict = DEFAULT_WEIGHTS
    enable_tag_override: bool = False
    proxy: dict = _EMPTY
    connect: dict = _EMPTY
    create_index: int = 0
    modify_index: int = 0

    def names(self) -> set[str]:
        """Lowercased service names whose queries include this instance (a proxy counts for its destination)."""
        names = {self.service_name.lower()}
        dest = self.proxy.get("DestinationServiceName") if self.kind == "connect-proxy" else None
        if dest:
            names.add(dest.lower())
        return names


class HealthCheck(NamedTuple):
    """A health check, Consul's structs.HealthCheck."""

    node: str
    check_id: str
    name: str = ""
    status: str = "critical"
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: tuple = ()
    type: str = ""
    interval: str = ""
    timeout: str = ""
    exposed_port: int = 0
    definition: dict = _EMPTY
    create_index: int = 0
    modify_index: int = 0


def _same(a: NamedTuple | None, b: NamedTuple) -> bool:
    """Equal but for create/modify indexes (the last two fields)."""
    return a is not None and a[:-2] == b[:-2]


class CatalogStore:
    """Consul's catalog semantics; mixed into StateStore (see base.StoreBase for the machinery)."""

    CATALOG_SCHEMA = {
        "nodes": TableSchema(
            (
                ("node", "text"),
                ("id", "text"),
                ("address", "text"),
                ("datacenter", "text"),
                ("tagged_addresses", "json"),
                ("meta", "json"),
                ("create_index", "int"),
                ("modify_index", "int"),
            )
        ),
        "services": TableSchema(
            (
                ("node", "text"),
                ("service_id", "text"),
                ("service_name", "text"),
                ("kind", "text"),
                ("tags", "json"),
                ("address", "text"),
                ("tagged_addresses", "json"),
                ("meta", "json"),
                ("port", "int"),
                ("socket_path", "text"),
                ("weights", "json"),
                ("enable_tag_override", "bool"),
                ("proxy", "json"),
                ("connect", "json"),
                ("create_index", "int"),
                ("modify_index", "int"),
            ),
            pk=2,
        ),
        "checks": TableSchema(
            (
                ("node", "text"),
                ("check_id", "text"),
                ("name", "text"),
                ("status", "text"),
                ("notes", "text"),
                ("output", "text"),
                ("service_id", "text"),
                ("service_name", "text"),
                ("service_tags", "json"),
                ("type", "text"),
                ("interval", "text"),
                ("timeout", "text"),
                ("exposed_port", "int"),
                ("definition", "json"),
                ("create_index", "int"),
                ("modify_index", "int"),
            ),
            pk=2,
        ),
    }

    # Provided by StoreBase.
    _lock: Any
    _index: dict[str, int]
    _max_index: Callable[..., int]
    _set_index_txn: Callable[[WriteTxn, str], None]
    _drop_index_txn: Callable[[WriteTxn, str], None]
    _write: Callable[..., Any]
    _watch: Callable[..., None]
    _invalidate_sessions_txn: Callable[..., None]

    def _catalog_init(self) -> None:
        self._nodes: dict[str, Node] = {}
        self._services: dict[tuple[str, str], ServiceInstance] = {}
        self._checks: dict[tuple[str, str], HealthCheck] = {}
        self._build_catalog_indexes()

    def _build_catalog_indexes(self) -> None:
        self._svc_by_name: dict[str, set[tuple[str, str]]] = {}
        self._svc_by_node: dict[str, set[str]] = {}
        self._chk_by_node: dict[str, set[str]] = {}
        self._chk_by_svc: dict[tuple[str, str], set[str]] = {}
        self._health_rows: dict[tuple[str, bool], list[tuple[Node, ServiceInstance, tuple[HealthCheck, ...]]]] = {}
        for key, svc in self._services.items():
            for name in svc.names():
                self._svc_by_name.setdefault(name, set()).add(key)
            self._svc_by_node.setdefault(key[0], set()).add(key[1])
        for key, check in self._checks.items():
            self._chk_by_node.setdefault(key[0], set()).add(key[1])
            self._chk_by_svc.setdefault((key[0], check.service_id.lower()), set()).add(key[1])

    def _catalog_dump(self) -> dict[str, list[tuple]]:
        def rows(table: dict) -> list[tuple]:
            return [tuple(_plain(v) for v in row) for _, row in sorted(table.items())]

        return {"nodes": rows(self._nodes), "services": rows(self._services), "checks": rows(self._checks)}

    def _catalog_load(self, tables: dict[str, list[tuple]]) -> Callable[[], None]:
        nodes = {r[0].lower(): Node(*r) for r in tables.get("nodes", ())}
        services = {}
        for r in tables.get("services", ()):
            row = ServiceInstance(*r)._replace(tags=tuple(r[4]))
            services[(row.node.lower(), row.service_id.lower())] = row
        checks = {}
        for r in tables.get("checks", ()):
            row = HealthCheck(*r)._replace(service_tags=tuple(r[8]))
            checks[(row.node.lower(), row.check_id.lower())] = row

        def swap() -> None:
            self._nodes, self._services, self._checks = nodes, services, checks
            self._build_catalog_indexes()

        return swap

    def _catalog_abandon(self) -> list[WatchChannel]:
        return []

    def _catalog_fired(self, tx: WriteTxn) -> list[WatchChannel]:
        return []

    # ------------------------------------------------------------- undoable mutations

    def _cat_put(self, tx: WriteTxn, table: dict, key: Any, row: Any) -> None:
        old = table.get(key, MISSING)
        table[key] = row
        tx.undo.append(lambda: restore_slot(table, key, old))

    def _cat_del(self, tx: WriteTxn, table: dict, key: Any) -> None:
        old = table.pop(key)
        tx.undo.append(lambda: restore_slot(table, key, old))

    def _set_add(self, tx: WriteTxn, mapping: dict, key: Any, member: Any) -> None:
        members = mapping.setdefault(key, set())
        if member in members:
            return
        members.add(member)

        def undo() -> None:
            members.discard(member)
            if not members and mapping.get(key) is members:
                del mapping[key]

        tx.undo.append(undo)

    def _set_remove(self, tx: WriteTxn, mapping: dict, key: Any, member: Any) -> None:
        members = mapping.get(key)
        if members is None or member not in members:
            return
        members.discard(member)
        if not members:
            del mapping[key]

        def undo() -> None:
            mapping.setdefault(key, members).add(member)

        tx.undo.append(undo)

    def _touch_service(self, tx: WriteTxn, name: str) -> None:
        """Something a query for service ``name`` (lowercased) returns changed."""
        self._set_index_txn(tx, f"service.{name}")
        tx.watch_keys.add(f"svc:{name}")
        self._health_rows.pop((name, False), None)
        self._health_rows.pop((name, True), None)

    def _touch_node(self, tx: WriteTxn, lnode: str, services_too: bool) -> None:
        tx.watch_keys.add(f"node:{lnode}")
        if services_too:
            for sid in self._svc_by_node.get(lnode, ()):
                for name in self._services[(lnode, sid)].names():
                    self._touch_service(tx, name)

    # ------------------------------------------------------------- writes

    def ensure_node_txn(self, tx: WriteTxn, node: Node) -> None:
        """Create or update a node row; unchanged rows are left alone (Consul's ensureNodeTxn)."""
        lnode = node.node.lower()
        existing = self._nodes.get(lnode)
        if node.id:
            for other in self._nodes.values():
                if other.id and other.id.lower() == node.id.lower() and other.node.lower() != lnode:
                    raise StoreError(
                        f'Error registering node: node ID "{node.id}" for node "{node.node}" '
                        f'aliases existing node "{other.node}"'
                    )
        row = node._replace(
            create_index=existing.create_index if existing else tx.index, modify_index=tx.index
        )
        if _same(existing, row):
            return
        self._cat_put(tx, self._nodes, lnode, row)
        self._set_index_txn(tx, "nodes")
        tx.watch_keys.add("nodes")
        self._touch_node(tx, lnode, services_too=True)

    def ensure_service_txn(self, tx: WriteTxn, svc: ServiceInstance) -> None:
        """Create or update a service instance on an existing node (Consul's ensureServiceTxn)."""
        lnode, lsid = svc.node.lower(), svc.service_id.lower()
        node = self._nodes.get(lnode)
        if node is None:
            raise StoreError("Missing node registration")
        key = (lnode, lsid)
        existing = self._services.get(key)
        row = svc._replace(
            node=node.node,
            create_index=existing.create_index if existing else tx.index,
            modify_index=tx.index,
        )
        if _same(existing, row):
            return
        touched = row.names() | (existing.names() if existing else set())
        if existing is not None:
            for name in existing.names() - row.names():
                self._set_remove(tx, self._svc_by_name, name, key)
        self._cat_put(tx, self._services, key, row)
        for name in row.names():
            self._set_add(tx, self._svc_by_name, name, key)
        self._set_add(tx, self._svc_by_node, lnode, lsid)
        self._set_index_txn(tx, "services")
        tx.watch_keys.add("services")
        for name in touched:
            self._touch_service(tx, name)
        self._touch_node(tx, lnode, services_too=False)
        # Service checks carry the service's name and tags: keep them current.
        if existing is not None and (existing.service_name, existing.tags) != (row.service_name, row.tags):
            for cid in list(self._chk_by_svc.get(key, ())):
                check = self._checks[(lnode, cid)]
                self._put_check_row_txn(
                    tx, check._replace(service_name=row.service_name, service_tags=row.tags, modify_index=tx.index)
                )

    def ensure_check_txn(self, tx: WriteTxn, check: HealthCheck) -> None:
        """Create or update a check; a service check takes its service's name and tags (Consul's ensureCheckTxn)."""
        lnode = check.node.lower()
        node = self._nodes.get(lnode)
        if node is None:
            raise StoreError("Missing node registration")
        if check.status not in HEALTH_STATES:
            raise StoreError(f'Invalid check status "{check.status}": must be one of passing, warning, critical')
        if check.service_id:
            svc = self._services.get((lnode, check.service_id.lower()))
            if svc is None:
                raise StoreError("Missing service registration")
            check = check._replace(service_id=svc.service_id, service_name=svc.service_name, service_tags=svc.tags)
        else:
            check = check._replace(service_name="", service_tags=())
        key = (lnode, check.check_id.lower())
        existing = self._checks.get(key)
        row = check._replace(
            node=node.node,
            create_index=existing.create_index if existing else tx.index,
            modify_index=tx.index,
        )
        if _same(existing, row):
            return
        self._put_check_row_txn(tx, row)
        if row.status == "critical":
            # Consul invalidates sessions bound to a check that goes critical, in the same transaction.
            self._invalidate_sessions_txn(tx, lnode, row.check_id)
        if existing is not None and existing.service_id.lower() != row.service_id.lower():
            # The check left its old owner, which changed too: a service, or (a node-level check) every
            # service on the node.
            self._touch_check_owner(tx, existing)

    def _put_check_row_txn(self, tx: WriteTxn, row: HealthCheck) -> None:
        lnode, lcid = row.node.lower(), row.check_id.lower()
        existing = self._checks.get((lnode, lcid))
        lsid = row.service_id.lower()
        if existing is not None and existing.service_id.lower() != lsid:
            self._set_remove(tx, self._chk_by_svc, (lnode, existing.service_id.lower()), lcid)
        self._cat_put(tx, self._checks, (lnode, lcid), row)
        self._set_add(tx, self._chk_by_node, lnode, lcid)
        self._set_add(tx, self._chk_by_svc, (lnode, lsid), lcid)
        self._set_index_txn(tx, "checks")
        tx.watch_keys.add("checks")
        self._touch_check_owner(tx, row)

    def _touch_check_owner(self, tx: WriteTxn, check: HealthCheck) -> None:
        lnode = check.node.lower()
        if check.service_id:
            svc = self._services.get((lnode, check.service_id.lower()))
            if svc is not None:
                for name in svc.names():
                    self._touch_service(tx, name)
            self._touch_node(tx, lnode, services_too=False)
        else:
            # A node-level check changes the health of every service on the node.
            self._touch_node(tx, lnode, services_too=True)

    def delete_check_txn(self, tx: WriteTxn, node: str, check_id: str) -> None:
        """Remove one check, if present (Consul's deleteCheckTxn)."""
        key = (node.lower(), check_id.lower())
        existing = self._checks.get(key)
        if existing is None:
            return
        self._touch_check_owner(tx, existing)
        self._invalidate_sessions_txn(tx, key[0], existing.check_id)
        self._cat_del(tx, self._checks, key)
        self._set_remove(tx, self._chk_by_node, key[0], key[1])
        self._set_remove(tx, self._chk_by_svc, (key[0], existing.service_id.lower()), key[1])
        self._set_index_txn(tx, "checks")
        tx.watch_keys.add("checks")

    def delete_service_txn(self, tx: WriteTxn, node: str, service_id: str) -> None:
        """Remove a service instance and its checks, if present (Consul's deleteServiceTxn)."""
        lnode, lsid = node.lower(), service_id.lower()
        key = (lnode, lsid)
        existing = self._services.get(key)
        if existing is None:
            return
        for cid in list(self._chk_by_svc.get(key, ())):
            self.delete_check_txn(tx, node, cid)
        for name in existing.names():
            self._touch_service(tx, name)
            self._set_remove(tx, self._svc_by_name, name, key)
            if name not in self._svc_by_name:
                self._drop_index_txn(tx, f"service.{name}")
        self._cat_del(tx, self._services, key)
        self._set_remove(tx, self._svc_by_node, lnode, lsid)
        self._set_index_txn(tx, "services")
        tx.watch_keys.add("services")
        self._touch_node(tx, lnode, services_too=False)

    def delete_node_txn(self, tx: WriteTxn, node: str) -> None:
        """Remove a node with every service and check on it, if present (Consul's deleteNodeTxn)."""
        lnode = node.lower()
        existing = self._nodes.get(lnode)
        if existing is None:
            return
        self._invalidate_sessions_txn(tx, lnode, None)
        for cid in list(self._chk_by_node.get(lnode, ())):
            self.delete_check_txn(tx, node, cid)
        for sid in list(self._svc_by_node.get(lnode, ())):
            self.delete_service_txn(tx, node, sid)
        self._cat_del(tx, self._nodes, lnode)
        self._set_index_txn(tx, "nodes")
        tx.watch_keys.update(("nodes", f"node:{lnode}"))

    def ensure_registration(self, index: int, node: Node | None, service: ServiceInstance | None, checks: Iterable[HealthCheck]) -> None:
        """Consul's catalog register: node (unless None), then service, then checks, all or nothing."""

        def body(tx: WriteTxn) -> None:
            if node is not None:
                self.ensure_node_txn(tx, node)
            if service is not None:
                self.ensure_service_txn(tx, service)
            for check in checks:
                self.ensure_check_txn(tx, check)

        self._write(index, body)

    def delete_node(self, index: int, node: str) -> None:
        self._write(index, lambda tx: self.delete_node_txn(tx, node))

    def delete_service(self, index: int, node: str, service_id: str) -> None:
        self._write(index, lambda tx: self.delete_service_txn(tx, node, service_id))

    def delete_check(self, index: int, node: str, check_id: str) -> None:
        self._write(index, lambda tx: self.delete_check_txn(tx, node, check_id))

    # ------------------------------------------------------------- reads

    def _service_index(self, lname: str) -> int:
        """Consul's maxIndexForService: the service's own entry, else the node and service tables'."""
        return self._index.get(f"service.{lname}") or self._max_index("nodes", "services") or 1

    def get_node(self, node: str) -> Node | None:
        with self._lock:
            return self._nodes.get(node.lower())

    def catalog_nodes(self, ws: WatchSet | None = None) -> tuple[int, list[Node]]:
        """Every node, by name (Consul's Catalog.ListNodes)."""
        with self._lock:
            self._watch(ws, "nodes")
            return self._max_index("nodes") or 1, sorted(self._nodes.values(), key=lambda n: n.node)

    def catalog_services(self, ws: WatchSet | None = None) -> tuple[int, list[tuple[Node, ServiceInstance]]]:
        """Every instance with its node (Consul's Catalog.ListServices groups these by name)."""
        with self._lock:
            self._watch(ws, "services", "nodes")
            rows = [(self._nodes[key[0]], svc) for key, svc in sorted(self._services.items())]
            return self._max_index("services") or 1, rows

    def service_nodes(self, name: str, ws: WatchSet | None = None, connect: bool = False) -> tuple[int, list[tuple[Node, ServiceInstance]]]:
        """Instances of a service with their nodes (Consul's Catalog.ServiceNodes); ``connect``: its proxies and native instances."""
        lname = name.lower()
        with self._lock:
            self._watch(ws, f"svc:{lname}")
            rows = []
            for key in sorted(self._svc_by_name.get(lname, ())):
                svc = self._services[key]
                if not _matches_kind(svc, lname, connect):
                    continue
                rows.append((self._nodes[key[0]], svc))
            return self._service_index(lname), rows

    def node_services(self, node: str, ws: WatchSet | None = None) -> tuple[int, Node | None, list[ServiceInstance]]:
        """A node and its service instances (Consul's Catalog.NodeServices)."""
        lnode = node.lower()
        with self._lock:
            self._watch(ws, f"node:{lnode}")
            services = [self._services[(lnode, sid)] for sid in sorted(self._svc_by_node.get(lnode, ()))]
            return self._max_index("nodes", "services") or 1, self._nodes.get(lnode), services

    def node_checks(self, node: str, ws: WatchSet | None = None) -> tuple[int, list[HealthCheck]]:
        """Every check on a node (Consul's Health.NodeChecks)."""
        lnode = node.lower()
        with self._lock:
            self._watch(ws, f"node:{lnode}")
            checks = [self._checks[(lnode, cid)] for cid in sorted(self._chk_by_node.get(lnode, ()))]
            return self._max_index("checks") or 1, checks

    def service_checks(self, name: str, ws: WatchSet | None = None) -> tuple[int, list[HealthCheck]]:
        """Every check of every instance of a service (Consul's Health.ServiceChecks)."""
        lname = name.lower()
        with self._lock:
            self._watch(ws, f"svc:{lname}")
            checks = []
            for lnode, lsid in sorted(self._svc_by_name.get(lname, ())):
                if self._services[(lnode, lsid)].service_name.lower() != lname:
                    continue
                for cid in sorted(self._chk_by_svc.get((lnode, lsid), ())):
                    checks.append(self._checks[(lnode, cid)])
            return self._service_index(lname), checks

    def checks_in_state(self, state: str, ws: WatchSet | None = None) -> tuple[int, list[HealthCheck]]:
        """Checks in one state, or all for "any" (Consul's Health.ChecksInState)."""
        with self._lock:
            self._watch(ws, "checks")
            checks = [c for _, c in sorted(self._checks.items()) if state == "any" or c.status == state]
            return self._max_index("checks") or 1, checks

    def check_service_nodes(
        self, name: str, ws: WatchSet | None = None, connect: bool = False
    ) -> tuple[int, list[tuple[Node, ServiceInstance, tuple[HealthCheck, ...]]]]:
        """Instances of a service with their node and the checks that decide their health (Consul's Health.ServiceNodes)."""
        lname = name.lower()
        with self._lock:
            self._watch(ws, f"svc:{lname}")
            rows = self._health_rows.get((lname, connect))
            if rows is None:
                rows = self._health_rows[(lname, connect)] = self._check_service_nodes_locked(lname, connect)
            return self._service_index(lname), list(rows)

    def _check_service_nodes_locked(self, lname: str, connect: bool) -> list[tuple[Node, ServiceInstance, tuple[HealthCheck, ...]]]:
        """check_service_nodes' rows, built from the tables (the lock is held)."""
        rows = []
        services, all_checks, nodes, by_svc = self._services, self._checks, self._nodes, self._chk_by_svc
        for key in sorted(self._svc_by_name.get(lname, ())):
            svc = services[key]
            # _matches_kind, inlined: this loop runs once per instance of the hottest read.
            if connect or svc.kind == "connect-proxy":
                if not _matches_kind(svc, lname, connect):
                    continue
            elif svc.service_name.lower() != lname:
                continue
            lnode = key[0]
            # Node-level checks decide every instance's health too; both sets are small.
            node_level, own = by_svc.get((lnode, "")), by_svc.get(key)
            if node_level and own:
                cids = node_level | own
            else:
                cids = node_level or own or ()
            if len(cids) > 1:
                cids = sorted(cids)
            rows.append((nodes[lnode], svc, tuple([all_checks[(lnode, cid)] for cid in cids])))
        return rows

    def catalog_counts(self) -> tuple[int, int, int]:
        """(nodes, service instances, checks), for metrics."""
        with self._lock:
            return len(self._nodes), len(self._services), len(self._checks)


def _matches_kind(svc: ServiceInstance, lname: str, connect: bool) -> bool:
    """Plain queries return the service's own instances; connect queries its proxies and native instances."""
    if not connect:
        return svc.service_name.lower() == lname
    if svc.kind == "connect-proxy":
        return (svc.proxy.get("DestinationServiceName") or "").lower() == lname
    return svc.service_name.lower() == lname and bool(svc.connect.get("Native"))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
