"""Catalog.* endpoints: Consul's catalog (agent/consul/catalog_endpoint.go)."""

from __future__ import annotations

from typing import Any, Callable

from proconsul.server import shapes
from proconsul.server.endpoints import endpoint
from proconsul.server.endpoints.kv import propose
from proconsul.server.errors import BadRequest
from proconsul.server.state import HEALTH_STATES
from proconsul.server.structs import CatalogQuery, DeregisterArgs, QueryReply, RegisterArgs


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


@endpoint("Catalog.Register", RegisterArgs)
async def catalog_register(srv: Any, args: RegisterArgs, hops: int) -> bool:
    """Register a node, a service and checks in one entry, after Consul's pre-apply checks."""
    done, result = await srv.forward("Catalog.Register", args, args.datacenter, hops)
    if done:
        return result
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
    await propose(srv, req)
    return True


@endpoint("Catalog.Deregister", DeregisterArgs)
async def catalog_deregister(srv: Any, args: DeregisterArgs, hops: int) -> bool:
    """Remove a service, a check or a whole node."""
    done, result = await srv.forward("Catalog.Deregister", args, args.datacenter, hops)
    if done:
        return result
    if not args.req.node:
        raise BadRequest("Must provide node")
    await propose(srv, args.req)
    return True


@endpoint("Catalog.ListDatacenters", CatalogQuery)
async def catalog_datacenters(srv: Any, args: CatalogQuery, hops: int) -> list[str]:
    """The datacenters this server can reach: its own (WAN federation is not implemented)."""
    return [srv.config.datacenter]


@endpoint("Catalog.ListNodes", CatalogQuery, QueryReply)
async def catalog_nodes(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    done, result = await srv.forward_read("Catalog.ListNodes", args, args.opts, hops)
    if done:
        return result
    keep = compile_query_filter(args, "NODE")

    def shape(nodes: list) -> list:
        return keep([shapes.node_json(n) for n in nodes if node_meta_ok(n.meta, args.node_meta)])

    return await srv.blocking_query(args.opts, lambda ws: srv.state.catalog_nodes(ws), shape)


@endpoint("Catalog.ListServices", CatalogQuery, QueryReply)
async def catalog_services(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """Service names with the union of their instances' tags (Consul's map name -> tags)."""
    done, result = await srv.forward_read("Catalog.ListServices", args, args.opts, hops)
    if done:
        return result

    def shape(rows: list) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        for node, svc in rows:
            if node_meta_ok(node.meta, args.node_meta):
                out.setdefault(svc.service_name, set()).update(svc.tags)
        return {name: sorted(tags) for name, tags in sorted(out.items())}

    return await srv.blocking_query(args.opts, lambda ws: srv.state.catalog_services(ws), shape)


@endpoint("Catalog.ServiceNodes", CatalogQuery, QueryReply)
async def catalog_service_nodes(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """Instances of a service (``connect``: its proxies and native instances), Consul's ServiceNode shape."""
    done, result = await srv.forward_read("Catalog.ServiceNodes", args, args.opts, hops)
    if done:
        return result
    keep = compile_query_filter(args, "SERVICE_NODE")

    def shape(rows: list) -> list:
        return keep(
            [
                shapes.service_node_json(node, svc)
                for node, svc in rows
                if tags_ok(svc.tags, args.tags) and node_meta_ok(node.meta, args.node_meta)
            ]
        )

    return await srv.blocking_query(
        args.opts, lambda ws: srv.state.service_nodes(args.name, ws, connect=args.connect), shape
    )


@endpoint("Catalog.NodeServices", CatalogQuery, QueryReply)
async def catalog_node_services(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """/v1/catalog/node/<n>: {Node, Services: {id: service}}, or None for an unknown node."""
    done, result = await srv.forward_read("Catalog.NodeServices", args, args.opts, hops)
    if done:
        return result
    keep = compile_query_filter(args, "AGENT_SERVICE")

    def shape(found: tuple) -> dict | None:
        node, services = found
        if node is None:
            return None
        listed = keep([shapes.service_json(s) for s in services])
        return {"Node": shapes.node_json(node), "Services": {s["ID"]: s for s in listed}}

    return await srv.blocking_query(args.opts, lambda ws: _node_services(srv, args.name, ws), shape)


@endpoint("Catalog.NodeServiceList", CatalogQuery, QueryReply)
async def catalog_node_service_list(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """/v1/catalog/node-services/<n>: {Node, Services: [service]}, or None for an unknown node."""
    done, result = await srv.forward_read("Catalog.NodeServiceList", args, args.opts, hops)
    if done:
        return result
    keep = compile_query_filter(args, "NODE_SERVICES")

    def shape(found: tuple) -> dict:
        node, services = found
        if node is None:
            return {"Node": None, "Services": None}
        return {"Node": shapes.node_json(node), "Services": keep([shapes.service_json(s) for s in services])}

    return await srv.blocking_query(args.opts, lambda ws: _node_services(srv, args.name, ws), shape)


def _node_services(srv: Any, name: str, ws: Any) -> tuple[int, tuple]:
    index, node, services = srv.state.node_services(name, ws)
    return index, (node, services)
