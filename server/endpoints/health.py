"""Health.* endpoints: Consul's health API (agent/consul/health_endpoint.go).

Every read is filtered by ACL per row after the request's own filters (see
``proconsul.server.endpoints.catalog``): a check needs node:read on its node and
service:read on its service (Consul's filterHealthChecks); an instance needs
node:read and service:read (filterCheckServiceNodes).
"""

from __future__ import annotations

from typing import Any, Callable

from proconsul.server import shapes
from proconsul.server.acl import Resolved
from proconsul.server.endpoints import endpoint
from proconsul.server.endpoints.catalog import (
    acl_read_plan,
    check_readable,
    compile_query_filter,
    node_meta_ok,
    readable_rows,
    service_node_readable,
    tags_ok,
)
from proconsul.server.errors import BadRequest
from proconsul.server.state import HEALTH_STATES
from proconsul.server.structs import CatalogQuery, QueryReply


@endpoint("Health.NodeChecks", CatalogQuery, QueryReply)
async def health_node_checks(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """Every check on a node."""
    done, result = await srv.forward_read("Health.NodeChecks", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    keep = compile_query_filter(args, "HEALTH_CHECK")
    shape, acl_filter = _checks_plan(caller, lambda cs: keep([shapes.check_json(c) for c in cs]))
    return await srv.blocking_query(args.opts, lambda ws: srv.state.node_checks(args.name, ws), shape, acl_filter)


@endpoint("Health.ServiceChecks", CatalogQuery, QueryReply)
async def health_service_checks(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """Every check of every instance of a service."""
    done, result = await srv.forward_read("Health.ServiceChecks", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    shape, acl_filter = _checks_plan(caller, _checks_shape(srv, args))
    return await srv.blocking_query(args.opts, lambda ws: srv.state.service_checks(args.name, ws), shape, acl_filter)


@endpoint("Health.ChecksInState", CatalogQuery, QueryReply)
async def health_checks_in_state(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """Checks in one state (passing, warning, critical) or all ("any")."""
    if args.name not in (*HEALTH_STATES, "any"):
        raise BadRequest(f'Invalid state "{args.name}": must be one of any, passing, warning, critical')
    done, result = await srv.forward_read("Health.ChecksInState", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    shape, acl_filter = _checks_plan(caller, _checks_shape(srv, args))
    return await srv.blocking_query(args.opts, lambda ws: srv.state.checks_in_state(args.name, ws), shape, acl_filter)


@endpoint("Health.ServiceNodes", CatalogQuery, QueryReply)
async def health_service_nodes(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """Instances of a service with their node and checks; ``passing`` keeps those whose every check passes."""
    done, result = await srv.forward_read("Health.ServiceNodes", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    keep = compile_query_filter(args, "SERVICE_ENTRY")

    def shape(rows: list) -> list:
        out = []
        for node, svc, checks in rows:
            if args.tags and not tags_ok(svc.tags, args.tags):
                continue
            if args.node_meta and not node_meta_ok(node.meta, args.node_meta):
                continue
            if args.passing and any(c.status != "passing" for c in checks):
                continue
            out.append(shapes.health_entry_json(node, svc, checks))
        return keep(out)

    acl_filter = None
    if not caller.unrestricted:
        allowed = service_node_readable(caller, args)
        shape, acl_filter = acl_read_plan(caller, shape, readable_rows(lambda e: allowed(e["Node"]["Node"], e["Service"]["Service"])))
    return await srv.blocking_query(
        args.opts, lambda ws: srv.state.check_service_nodes(args.name, ws, connect=args.connect), shape, acl_filter
    )


def _checks_plan(caller: Resolved, shape: Callable[[list], list]) -> tuple[Callable[[Any], Any], Any]:
    """(shape, acl_filter) for a list of checks (Consul's filterHealthChecks)."""
    if caller.unrestricted:
        return shape, None
    return acl_read_plan(caller, shape, readable_rows(check_readable(caller)))


def _checks_shape(srv: Any, args: CatalogQuery) -> Callable[[list], list]:
    """Checks as Consul's JSON, kept by ?node-meta (of the check's node) and ?filter."""
    keep = compile_query_filter(args, "HEALTH_CHECK")

    def shape(checks: list) -> list:
        if args.node_meta:
            checks = [c for c in checks if node_meta_ok(_node_meta(srv, c.node), args.node_meta)]
        return keep([shapes.check_json(c) for c in checks])

    return shape


def _node_meta(srv: Any, name: str) -> dict:
    node = srv.state.get_node(name)
    return node.meta if node is not None else {}
