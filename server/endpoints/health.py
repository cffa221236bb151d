"""Health.* endpoints: Consul's health API (agent/consul/health_endpoint.go).

Every read is filtered by ACL per row after the request's own filters (see
``proconsul.server.endpoints.catalog``): a check needs node:read on its node and
service:read on its service (Consul's filterHealthChecks); an instance needs
node:read and service:read (filterCheckServiceNodes).

Health.ServiceNodes is the hot read (every DNS lookup, load balancer and sidecar
polls it). An in-process caller that sends compact JSON on (the HTTP layer,
without ?pretty) asks with ``EncodedCatalogQuery`` and, unless a ?filter is
given, gets ``shapes.EncodedJSON``: the entries come from a per-server
``shapes.HealthEntryCache``, so an unchanged instance is not shaped or encoded
again. The bytes are exactly what encoding the plain answer would give; request
filters and the per-row ACL check run on the store's rows, in the same order as
on the plain path. Over server RPC the marker does not survive (the wire carries
a plain CatalogQuery), so remote callers always get plain values.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, fields
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


@dataclass
class EncodedCatalogQuery(CatalogQuery):
    """A CatalogQuery from an in-process caller that takes Health.ServiceNodes' answer as ``shapes.EncodedJSON``
    (indented as ``?pretty`` asks when ``pretty``)."""

    pretty: bool = False

    @classmethod
    def of(cls, query: CatalogQuery, pretty: bool = False) -> "EncodedCatalogQuery":
        """The same query, marked."""
        return cls(**{f.name: getattr(query, f.name) for f in fields(CatalogQuery)}, pretty=pretty)


_ENTRY_CACHES: "weakref.WeakKeyDictionary[Any, shapes.HealthEntryCache]" = weakref.WeakKeyDictionary()


def entry_cache(srv: Any) -> shapes.HealthEntryCache:
    """The server's cache of encoded health entries (made on first use)."""
    cache = _ENTRY_CACHES.get(srv)
    if cache is None:
        cache = _ENTRY_CACHES[srv] = shapes.HealthEntryCache()
    return cache


@endpoint("Health.ServiceNodes", CatalogQuery, QueryReply)
async def health_service_nodes(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """Instances of a service with their node and checks; ``passing`` keeps those whose every check passes."""
    done, result = await srv.forward_read("Health.ServiceNodes", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    select = _instance_selector(args)
    if isinstance(args, EncodedCatalogQuery) and not args.filter:
        shape, acl_filter = _encoded_plan(srv, caller, args, select)
    else:
        keep = compile_query_filter(args, "SERVICE_ENTRY")

        def shape(rows: list) -> list:
            return keep([shapes.health_entry_json(node, svc, checks) for node, svc, checks in select(rows)])

        acl_filter = None
        if not caller.unrestricted:
            allowed = service_node_readable(caller, args)
            shape, acl_filter = acl_read_plan(caller, shape, readable_rows(lambda e: allowed(e["Node"]["Node"], e["Service"]["Service"])))
    return await srv.blocking_query(
        args.opts, lambda ws: srv.state.check_service_nodes(args.name, ws, connect=args.connect), shape, acl_filter
    )


def _instance_selector(args: CatalogQuery) -> Callable[[list], list]:
    """The request's ?tag, ?node-meta and ?passing as a filter over the store's (node, service, checks) rows."""
    tags, node_meta, passing = args.tags, args.node_meta, args.passing
    if not (tags or node_meta or passing):
        return lambda rows: rows

    def select(rows: list) -> list:
        out = []
        for row in rows:
            node, svc, checks = row
            if tags and not tags_ok(svc.tags, tags):
                continue
            if node_meta and not node_meta_ok(node.meta, node_meta):
                continue
            if passing and any(c.status != "passing" for c in checks):
                continue
            out.append(row)
        return out

    return select


def _encoded_plan(srv: Any, caller: Resolved, args: EncodedCatalogQuery, select: Callable[[list], list]) -> tuple[Callable[[Any], Any], Any]:
    """(shape, acl_filter) answering ``shapes.EncodedJSON`` from the entry cache; no ?filter here.

    As on the plain path the ACL check runs after the request's filters, so the filtered header
    only reports rows the token hid; it looks at the rows' node and service names, which are what
    the plain path reads back from the shaped entries.
    """
    cache, group, pretty = entry_cache(srv), (args.name.lower(), args.connect), args.pretty
    if caller.unrestricted:
        return (lambda rows: cache.encode(group, rows, select(rows), pretty)), None
    allowed = service_node_readable(caller, args)

    def acl_filter(rows: list) -> tuple[tuple[list, list], bool]:
        chosen = select(rows)
        kept = [row for row in chosen if allowed(row[0].node, row[1].service_name)]
        return (rows, kept), len(kept) != len(chosen)

    return (lambda value: cache.encode(group, *value, pretty)), acl_filter


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
