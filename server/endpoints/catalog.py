"""Catalog.* endpoints: Consul's catalog (agent/consul/catalog_endpoint.go).

ACLs as Consul enforces them on the servers: a registration is vetted against
the token (servicePreApply + vetRegisterWithACL), a deregistration too
(vetDeregisterWithACL), and every read is filtered per row (node:read on the
row's node, service:read on its service) after the request's own filters, so
``X-Consul-Results-Filtered-By-ACLs`` only reports rows the token hid. With
ACLs disabled (or a management token) no per-row check runs.
"""

from __future__ import annotations

from typing import Any, Callable

from proconsul.server import shapes
from proconsul.server.acl import Resolved, keep
from proconsul.server.endpoints import endpoint
from proconsul.server.endpoints.kv import propose
from proconsul.server.errors import BadRequest
from proconsul.server.state import HEALTH_STATES
from proconsul.server.structs import CatalogQuery, DeregisterArgs, QueryReply, RegisterArgs

Filter = Callable[[Any], tuple[Any, bool]]


def compile_query_filter(query: CatalogQuery, schema_name: str) -> Callable[[list], list]:
    """The request's ?filter compiled for one result shape (400 on a bad expression); identity when absent."""
    if not query.filter:
        return lambda items: items
    from proconsul.server import filter as bexpr

    predicate = bexpr.compile_filter(query.filter, getattr(bexpr, schema_name))
    return lambda items: [item for item in items if predicate(item)]


def node_meta_ok(meta: dict, wanted: dict[str, str]) -> bool:
    """Consul's ?node-meta=key:value: every pair must match."""
    return all(meta.get(k) == v for k, v in wanted.items())


def tags_ok(tags: tuple, wanted: list[str]) -> bool:
    """Consul's ?tag=...: the instance has every tag asked for (case-insensitively)."""
    have = {t.lower() for t in tags}
    return all(t.lower() in have for t in wanted)


# ---------------------------------------------------------------- ACL helpers


def _identity(value: Any) -> Any:
    return value


def acl_read_plan(caller: Resolved, shape: Callable[[Any], Any], readable: Filter) -> tuple[Callable[[Any], Any], Filter | None]:
    """``(shape, acl_filter)`` for ``blocking_query``: ``readable`` runs on the shaped answer, after the user's filters.

    Consul filters by ACL after ?filter so the filtered header counts only rows the token hid. An
    unrestricted caller gets the plain shape and no filter: no per-row checks with ACLs disabled.
    """
    if caller.unrestricted:
        return shape, None
    return _identity, lambda value: readable(shape(value))


def readable_rows(allowed: Callable[[dict], bool]) -> Filter:
    """A filter keeping the rows of a shaped list that ``allowed`` lets the caller see."""
    return lambda rows: keep(rows, allowed)


def service_node_readable(caller: Resolved, args: CatalogQuery) -> Callable[[str, str], bool]:
    """``(node, service) -> bool`` for instance reads (Consul's filterServiceNodes / filterCheckServiceNodes).

    A connect query also needs service:read on the service asked about; without it Consul answers
    nothing (catalog_endpoint.go ServiceNodes), so every row is dropped.
    """
    authz = caller.authorizer
    if args.connect and not authz.service_read(args.name):
        return lambda node, service: False
    return lambda node, service: authz.node_read(node) and authz.service_read(service)


def check_readable(caller: Resolved) -> Callable[[dict], bool]:
    """Consul's filterHealthChecks: node:read on the check's node, and service:read on its service if it has one."""
    authz = caller.authorizer
    return lambda c: authz.node_read(c["Node"]) and (not c["ServiceName"] or authz.service_read(c["ServiceName"]))


def changes_node(req: Any, node: Any) -> bool:
    """Consul's RegisterRequest.ChangesNode: would this registration rewrite the node's row?"""
    if req.skip_node_update:
        return False
    return (
        req.id != node.id
        or req.address != node.address
        or req.datacenter != node.datacenter
        or dict(req.tagged_addresses) != dict(node.tagged_addresses)
        or dict(req.node_meta) != dict(node.meta)
    )


def vet_register(caller: Resolved, req: Any, node: Any, services: list) -> None:
    """Consul's servicePreApply ACL checks + vetRegisterWithACL; raises 403 (or 400 for an unknown check service).

    service:write on the service (and, for a connect proxy, on its destination); node:write when the
    node is new or its row would change; service:write on an instance being overwritten by ID; checks:
    node-level ones need node:write, service ones service:write on their service.
    """
    authz = caller.authorizer
    svc = req.service
    if svc is not None:
        caller.require(authz.service_write(svc.service), "service", "write", svc.service)
        if svc.kind == "connect-proxy":
            dest = svc.proxy.get("DestinationServiceName") or ""
            caller.require(authz.service_write(dest), "service", "write", dest)
    if node is None or changes_node(req, node):
        caller.require(authz.node_write(req.node), "node", "write", req.node)
    existing = {s.service_id.lower(): s for s in services}
    if svc is not None:
        other = existing.get(svc.id.lower())
        if other is not None:  # overwriting another service's instance is deleting it
            caller.require(authz.service_write(other.service_name), "service", "write", other.service_name)
    for check in req.checks:
        if not check.service_id:
            caller.require(authz.node_write(req.node), "node", "write", req.node)
            continue
        if svc is not None and svc.id.lower() == check.service_id.lower():
            continue  # vetted with the service above
        other = existing.get(check.service_id.lower())
        if other is None:
            raise BadRequest(f"Unknown service ID '{check.service_id}' for check ID '{check.check_id}'")
        caller.require(authz.service_write(other.service_name), "service", "write", other.service_name)


def vet_deregister(srv: Any, caller: Resolved, req: Any) -> None:
    """Consul's vetDeregisterWithACL: node:write allows anything on the node; else service:write on the
    service (or on a service check's service, node:write for a node check); a whole node needs node:write.

    One departure: an unknown service or check ID is refused like the node (403 node:write) where Consul
    answers "Unknown service ID", which would tell a caller without permission what does not exist.
    """
    authz = caller.authorizer
    if authz.node_write(req.node):
        return
    if req.service_id:
        _, _, services = srv.state.node_services(req.node)
        svc = next((s for s in services if s.service_id.lower() == req.service_id.lower()), None)
        if svc is not None:
            caller.require(authz.service_write(svc.service_name), "service", "write", svc.service_name)
            return
    elif req.check_id:
        _, checks = srv.state.node_checks(req.node)
        check = next((c for c in checks if c.check_id.lower() == req.check_id.lower()), None)
        if check is not None and check.service_id:
            caller.require(authz.service_write(check.service_name), "service", "write", check.service_name)
            return
    raise caller.denied("node", "write", req.node)


# ---------------------------------------------------------------- writes


@endpoint("Catalog.Register", RegisterArgs)
async def catalog_register(srv: Any, args: RegisterArgs, hops: int) -> bool:
    """Register a node, a service and checks in one entry, after Consul's pre-apply and ACL checks."""
    done, result = await srv.forward("Catalog.Register", args, args.datacenter, hops)
    if done:
        return result
    caller = srv.acl.caller(args.token)
    req = args.req
    if not req.node or not req.address:
        raise BadRequest("Must provide node and address")
    if req.service is not None:
        svc = req.service
        if not svc.id and svc.service:
            svc.id = svc.service
        if svc.id and not svc.service:
            raise BadRequest("Must provide service name with ID")
        if svc.address in ("0.0.0.0", "::", "[::]"):
            raise BadRequest("Invalid service address")
        if svc.kind == "connect-proxy":
            if not svc.proxy.get("DestinationServiceName"):
                raise BadRequest("Proxy.DestinationServiceName must be non-empty for Connect proxy services")
            if not svc.port and not svc.socket_path:
                raise BadRequest("Port or SocketPath must be set for a Connect proxy")
    for check in req.checks:
        if not check.check_id and check.name:
            check.check_id = check.name
        if not check.check_id:
            raise BadRequest("Must provide a check ID or name")
        check.status = check.status or "critical"
        if check.status not in HEALTH_STATES:
            raise BadRequest(f'Invalid check status "{check.status}": must be one of passing, warning, critical')
    if not caller.unrestricted:
        # Read outside the Raft apply, as Consul does: the node's rows rarely change under a registration.
        _, node, services = srv.state.node_services(req.node)
        vet_register(caller, req, node, services)
    await propose(srv, req)
    return True


@endpoint("Catalog.Deregister", DeregisterArgs)
async def catalog_deregister(srv: Any, args: DeregisterArgs, hops: int) -> bool:
    """Remove a service, a check or a whole node (Consul's Catalog.Deregister, vetted by vetDeregisterWithACL)."""
    done, result = await srv.forward("Catalog.Deregister", args, args.datacenter, hops)
    if done:
        return result
    caller = srv.acl.caller(args.token)
    if not args.req.node:
        raise BadRequest("Must provide node")
    if not caller.unrestricted:
        vet_deregister(srv, caller, args.req)
    await propose(srv, args.req)
    return True


# ---------------------------------------------------------------- reads


@endpoint("Catalog.ListDatacenters", CatalogQuery)
async def catalog_datacenters(srv: Any, args: CatalogQuery, hops: int) -> list[str]:
    """The datacenters this server can reach: its own (WAN federation is not implemented). No ACL, as in Consul."""
    return [srv.config.datacenter]


@endpoint("Catalog.ListNodes", CatalogQuery, QueryReply)
async def catalog_nodes(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """Every node, filtered by node:read (Consul's filterNodes)."""
    done, result = await srv.forward_read("Catalog.ListNodes", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    keep_filtered = compile_query_filter(args, "NODE")

    def shape(nodes: list) -> list:
        return keep_filtered([shapes.node_json(n) for n in nodes if node_meta_ok(n.meta, args.node_meta)])

    authz = caller.authorizer
    shape, acl_filter = acl_read_plan(caller, shape, readable_rows(lambda n: authz.node_read(n["Node"])))
    return await srv.blocking_query(args.opts, lambda ws: srv.state.catalog_nodes(ws), shape, acl_filter)


@endpoint("Catalog.ListServices", CatalogQuery, QueryReply)
async def catalog_services(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """Service names with the union of their instances' tags (Consul's map name -> tags), filtered by service:read."""
    done, result = await srv.forward_read("Catalog.ListServices", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)

    def shape(rows: list) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        for node, svc in rows:
            if node_meta_ok(node.meta, args.node_meta):
                out.setdefault(svc.service_name, set()).update(svc.tags)
        return {name: sorted(tags) for name, tags in sorted(out.items())}

    authz = caller.authorizer

    def readable(services: dict[str, list[str]]) -> tuple[dict[str, list[str]], bool]:
        # Consul's filterServices: service:read on the name only (the instances' nodes are not checked).
        kept = {name: tags for name, tags in services.items() if authz.service_read(name)}
        return kept, len(kept) != len(services)

    shape, acl_filter = acl_read_plan(caller, shape, readable)
    return await srv.blocking_query(args.opts, lambda ws: srv.state.catalog_services(ws), shape, acl_filter)


@endpoint("Catalog.ServiceNodes", CatalogQuery, QueryReply)
async def catalog_service_nodes(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """Instances of a service (``connect``: its proxies and native instances), Consul's ServiceNode shape."""
    done, result = await srv.forward_read("Catalog.ServiceNodes", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    keep_filtered = compile_query_filter(args, "SERVICE_NODE")

    def shape(rows: list) -> list:
        return keep_filtered(
            [
                shapes.service_node_json(node, svc)
                for node, svc in rows
                if tags_ok(svc.tags, args.tags) and node_meta_ok(node.meta, args.node_meta)
            ]
        )

    acl_filter = None
    if not caller.unrestricted:
        allowed = service_node_readable(caller, args)
        shape, acl_filter = acl_read_plan(caller, shape, readable_rows(lambda s: allowed(s["Node"], s["ServiceName"])))
    return await srv.blocking_query(
        args.opts, lambda ws: srv.state.service_nodes(args.name, ws, connect=args.connect), shape, acl_filter
    )


@endpoint("Catalog.NodeServices", CatalogQuery, QueryReply)
async def catalog_node_services(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """/v1/catalog/node/<n>: {Node, Services: {id: service}}, or None for an unknown (or unreadable) node."""
    done, result = await srv.forward_read("Catalog.NodeServices", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    keep_filtered = compile_query_filter(args, "AGENT_SERVICE")

    def shape(found: tuple) -> dict | None:
        node, services = found
        if node is None:
            return None
        listed = keep_filtered([shapes.service_json(s) for s in services])
        return {"Node": shapes.node_json(node), "Services": {s["ID"]: s for s in listed}}

    authz = caller.authorizer

    def readable(found: dict | None) -> tuple[dict | None, bool]:
        # Consul's filterNodeServices: no node:read hides the whole answer (null); services need service:read.
        if found is None:
            return None, False
        if not authz.node_read(found["Node"]["Node"]):
            return None, True
        services = {sid: s for sid, s in found["Services"].items() if authz.service_read(s["Service"])}
        return {"Node": found["Node"], "Services": services}, len(services) != len(found["Services"])

    shape, acl_filter = acl_read_plan(caller, shape, readable)
    return await srv.blocking_query(args.opts, lambda ws: _node_services(srv, args.name, ws), shape, acl_filter)


@endpoint("Catalog.NodeServiceList", CatalogQuery, QueryReply)
async def catalog_node_service_list(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """/v1/catalog/node-services/<n>: {Node, Services: [service]}; Node and Services null for an unknown (or unreadable) node."""
    done, result = await srv.forward_read("Catalog.NodeServiceList", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    keep_filtered = compile_query_filter(args, "NODE_SERVICES")

    def shape(found: tuple) -> dict:
        node, services = found
        if node is None:
            return {"Node": None, "Services": None}
        return {"Node": shapes.node_json(node), "Services": keep_filtered([shapes.service_json(s) for s in services])}

    authz = caller.authorizer

    def readable(found: dict) -> tuple[dict, bool]:
        # Consul's filterNodeServiceList: no node:read empties the answer; services need service:read.
        if found["Node"] is None:
            return found, False
        if not authz.node_read(found["Node"]["Node"]):
            return {"Node": None, "Services": None}, True
        services, dropped = keep(found["Services"], lambda s: authz.service_read(s["Service"]))
        return {"Node": found["Node"], "Services": services}, dropped

    shape, acl_filter = acl_read_plan(caller, shape, readable)
    return await srv.blocking_query(args.opts, lambda ws: _node_services(srv, args.name, ws), shape, acl_filter)


def _node_services(srv: Any, name: str, ws: Any) -> tuple[int, tuple]:
    index, node, services = srv.state.node_services(name, ws)
    return index, (node, services)
