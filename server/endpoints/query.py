"""PreparedQuery.* endpoints: Consul's prepared queries (agent/consul/prepared_query_endpoint.go).

Writes are validated on the leader (Consul's parseQuery) before they reach Raft;
name uniqueness, the session and the template compile are checked again inside
the write, where they cannot race. Execute runs in the local datacenter only
(there is no WAN federation, so ``Failovers`` is always 0), shuffles its
results as Consul does without network coordinates, and still honours ``near``
the way Consul does without coordinates: the named node, if among the first
ten results, moves to the front.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from proconsul.server import shapes
from proconsul.server.acl import keep, masked
from proconsul.server.commands import PreparedQueryRecord, PreparedQueryRequest
from proconsul.server.durations import parse_duration
from proconsul.server.endpoints import endpoint
from proconsul.server.endpoints.kv import propose
from proconsul.server.errors import BadRequest, NotFound, PermissionDenied
from proconsul.server.structs import QueryMeta, QueryOptions, QueryReply

QUERY_OPS = ("create", "update", "delete")
REDACTED_TOKEN = "<hidden>"  # Consul's aclfilter.RedactedToken
QUERY_NOT_FOUND = "Query not found"  # Consul's structs.ErrQueryNotFound
PERMISSION_DENIED = "Permission denied"  # acl.ErrPermissionDenied, bare, as Get and Explain answer
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")


@dataclass
class QueryApply:
    """PreparedQuery.Apply: create, update or delete, plus routing."""

    op: str
    query: PreparedQueryRecord
    datacenter: str = ""
    token: str = ""


@dataclass
class QuerySpecific:
    """PreparedQuery.Get (one ID) and PreparedQuery.List (``id`` empty)."""

    id: str = ""
    opts: QueryOptions = field(default_factory=QueryOptions)


@dataclass
class QueryExecute:
    """PreparedQuery.Execute / Explain: an ID or name, the caller's options, and the agent asking (Consul's QuerySource)."""

    id_or_name: str
    limit: int = 0
    connect: bool = False
    near: str = ""
    agent_node: str = ""
    agent_segment: str = ""
    opts: QueryOptions = field(default_factory=QueryOptions)


# ---------------------------------------------------------------- validation (Consul's parseQuery)


def _validate_node_meta(meta: dict[str, str] | None) -> None:
    """Consul's structs.ValidateNodeMetadata with the consul- prefix allowed, as parseService calls it."""
    meta = meta or {}
    if len(meta) > 64:
        raise ValueError("Node metadata cannot contain more than 64 key/value pairs")
    for k, v in meta.items():
        problem = ""
        if not k:
            problem = "Key cannot be blank"
        elif not _META_KEY.match(k):
            problem = "Key contains invalid characters"
        elif len(k) > 128:
            problem = "Key is too long (limit: 128 characters)"
        elif len(v) > 512:
            problem = "Value is too long (limit: 512 characters)"
        if problem:
            raise ValueError(f"Couldn't load metadata pair ('{k}', '{v}'): {problem}")


def parse_query(rec: PreparedQueryRecord) -> None:
    """Consul's parseQuery/parseService/parseDNS: raises BadRequest("Invalid prepared query: ...")."""
    try:
        _parse_query(rec)
    except ValueError as err:
        raise BadRequest(f"Invalid prepared query: {err}") from None


def _parse_query(rec: PreparedQueryRecord) -> None:
    if not rec.name and not rec.template.get("Type") and not rec.session:
        raise ValueError("Must be bound to a session")
    if rec.token == REDACTED_TOKEN:
        raise ValueError(
            f"Bad Token '{rec.token}', it looks like a query definition with a redacted token was submitted"
        )
    svc = rec.service
    if not svc.get("Service"):
        raise ValueError("Must provide a Service name to query")
    failover = svc.get("Failover") or {}
    nearest = failover.get("NearestN") or 0
    if nearest < 0:
        raise ValueError(f"Bad NearestN '{nearest}', must be >= 0")
    if (nearest or failover.get("Datacenters")) and failover.get("Targets"):
        raise ValueError("Targets cannot be populated with NearestN or Datacenters")
    _validate_node_meta(svc.get("NodeMeta"))
    ttl = rec.dns.get("TTL") or ""
    if ttl:
        try:
            seconds = parse_duration(ttl)
        except ValueError as err:
            raise ValueError(f"Bad DNS TTL '{ttl}': {err}") from None
        if seconds < 0:
            raise ValueError(f"DNS TTL '{int(seconds * 1e9)}', must be >=0")


# ---------------------------------------------------------------- endpoints


@endpoint("PreparedQuery.Apply", QueryApply)
async def query_apply(srv: Any, args: QueryApply, hops: int) -> str:
    """Create (the ID made here, on the leader), update or delete a prepared query; answers its ID.

    query:write on the new and (for update and delete) the stored query's name, as Consul's Apply checks both.
    """
    done, result = await srv.forward("PreparedQuery.Apply", args, args.datacenter, hops)
    if done:
        return result
    rec = args.query
    if args.op not in QUERY_OPS:
        raise BadRequest(f"Unknown prepared query operation: {args.op}")
    if args.op == "create":
        if rec.id:
            raise BadRequest("ID must be empty when creating a new prepared query")
        rec.id = str(uuid.uuid4())
        while srv.state.query_exists(rec.id):
            rec.id = str(uuid.uuid4())
    caller = srv.acl.caller(args.token)
    # Consul's GetACLPrefix: only a named query or a template is guarded by query rules; an unnamed one
    # (bound to a session) can be written by anyone and read only with acl = "write".
    prefix = acl_prefix(rec)
    if prefix is not None:
        caller.require(caller.authorizer.query_write(prefix), "query", "write", prefix)
    if args.op != "create":
        _, existing = srv.state.query_get(rec.id)
        if existing is None:
            raise NotFound(f"Cannot modify non-existent prepared query: '{rec.id}'")
        prefix = acl_prefix(existing)
        if prefix is not None:
            caller.require(caller.authorizer.query_write(prefix), "query", "write", prefix)
    if args.op != "delete":
        parse_query(rec)
    await propose(srv, PreparedQueryRequest(op=args.op, query=rec))
    return rec.id


def acl_prefix(query: Any) -> str | None:
    """Consul's PreparedQuery.GetACLPrefix: the name query rules apply to, None for an unnamed non-template query."""
    if query.name or (query.template or {}).get("Type"):
        return query.name
    return None


def _redact(query: Any, caller: Any) -> Any:
    """Consul's redactPreparedQueryTokens: the stored Token shows as "<hidden>" unless the caller has acl = "write"."""
    if query.token and not caller.authorizer.acl_write():
        return query._replace(token=REDACTED_TOKEN)
    return query


def _may_read(query: Any, caller: Any) -> bool:
    """Consul's filterPreparedQueries: query:read on the name; an unnamed query only for acl = "write"."""
    if caller.authorizer.acl_write():
        return True
    prefix = acl_prefix(query)
    return prefix is not None and caller.authorizer.query_read(prefix)


@endpoint("PreparedQuery.Get", QuerySpecific, QueryReply)
async def query_get(srv: Any, args: QuerySpecific, hops: int) -> QueryReply:
    """One query as a one-element list; 404 "Query not found" at once when it does not exist.

    Whoever has the ID of an unnamed query may read it; a named one needs query:read (else 403). The Token is redacted.
    """
    done, result = await srv.forward_read("PreparedQuery.Get", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)

    def read(ws: Any) -> tuple[int, Any]:
        index, query = srv.state.query_get(args.id, ws)
        if query is None:
            raise NotFound(QUERY_NOT_FOUND)
        return index, query

    acl_filter = None
    if not caller.unrestricted:

        def acl_filter(query: Any) -> tuple[Any, bool]:
            if acl_prefix(query) is not None and not _may_read(query, caller):
                raise PermissionDenied(PERMISSION_DENIED)
            return _redact(query, caller), False

    return await srv.blocking_query(args.opts, read, lambda q: [shapes.prepared_query_json(q)], acl_filter)


@endpoint("PreparedQuery.List", QuerySpecific, QueryReply)
async def query_list(srv: Any, args: QuerySpecific, hops: int) -> QueryReply:
    """Every query the caller may read (query:read on its name), Tokens redacted."""
    done, result = await srv.forward_read("PreparedQuery.List", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    acl_filter = None
    if not caller.unrestricted:

        def acl_filter(queries: list) -> tuple[list, bool]:
            kept, dropped = keep(queries, lambda q: _may_read(q, caller))
            return [_redact(q, caller) for q in kept], dropped

    return await srv.blocking_query(
        args.opts, lambda ws: srv.state.query_list(ws), lambda qs: [shapes.prepared_query_json(q) for q in qs], acl_filter
    )


async def _resolve(srv: Any, args: QueryExecute) -> Any:
    if args.opts.consistent:
        await srv.raft.barrier()
    _, query = srv.state.query_resolve(args.id_or_name, args.agent_segment)
    if query is None:
        raise NotFound(QUERY_NOT_FOUND)
    return query


def _meta_fields(meta: QueryMeta) -> dict[str, Any]:
    """Consul flattens the reply's QueryMeta into execute and explain bodies (LastContact in nanoseconds)."""
    return {
        "Index": 0,
        "LastContact": meta.last_contact_ms * 1_000_000,
        "KnownLeader": meta.known_leader,
        "ConsistencyLevel": meta.consistency,
        "NotModified": False,
        "Backend": 0,
        "ResultsFilteredByACLs": False,
    }


@endpoint("PreparedQuery.Explain", QueryExecute, QueryReply)
async def query_explain(srv: Any, args: QueryExecute, hops: int) -> QueryReply:
    """The query a name resolves to, rendered if it is a template (Consul's PreparedQuery.Explain); 403 unless readable."""
    done, result = await srv.forward_read("PreparedQuery.Explain", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    query = await _resolve(srv, args)
    if not caller.unrestricted:
        if not _may_read(query, caller):
            raise PermissionDenied(PERMISSION_DENIED)
        query = _redact(query, caller)
    meta = srv.query_meta(0, args.opts)
    return QueryReply(meta, {"Query": shapes.prepared_query_json(query), **_meta_fields(meta)})


def _tags_ok(have: tuple, wanted: list[str]) -> bool:
    """Consul's tagFilter: every plain tag present and no "!tag" present, case-insensitively."""
    tags = {t.lower() for t in have}
    for tag in wanted:
        tag = tag.lower()
        if tag.startswith("!"):
            if tag[1:] in tags:
                return False
        elif tag not in tags:
            return False
    return True


def _meta_ok(meta: dict, wanted: dict | None) -> bool:
    return all(meta.get(k) == v for k, v in (wanted or {}).items())


def execute_rows(query: Any, rows: list, args: QueryExecute) -> list:
    """Filter, shuffle, put ``near`` first and cap check-service-node rows as Consul's Execute does."""
    svc = query.service
    ignore = set(svc.get("IgnoreCheckIDs") or ())
    only_passing = bool(svc.get("OnlyPassing"))
    kept = []
    for node, inst, checks in rows:
        # Consul's FilterIgnore: any critical check (or, with OnlyPassing, any non-passing one) drops the instance.
        if any(
            c.check_id not in ignore and (c.status == "critical" or (only_passing and c.status != "passing"))
            for c in checks
        ):
            continue
        if not _meta_ok(node.meta, svc.get("NodeMeta")) or not _meta_ok(inst.meta, svc.get("ServiceMeta")):
            continue
        if svc.get("Tags") and not _tags_ok(inst.tags, svc["Tags"]):
            continue
        kept.append((node, inst, checks))
    random.shuffle(kept)
    near = args.near or svc.get("Near") or ""
    if near == "_agent":
        near = args.agent_node
    elif near == "_ip":
        near = ""  # Consul needs the caller's address for this; without it no node is preferred
    if near:
        for i, (node, _, _) in enumerate(kept[:10]):
            if node.node.lower() == near.lower():
                kept[0], kept[i] = kept[i], kept[0]
                break
    if args.limit > 0:
        kept = kept[: args.limit]
    return kept


@endpoint("PreparedQuery.Execute", QueryExecute, QueryReply)
async def query_execute(srv: Any, args: QueryExecute, hops: int) -> QueryReply:
    """Run a query in this datacenter: Consul's PreparedQueryExecuteResponse with its QueryMeta flattened in.

    The nodes are filtered (node:read and service:read) with the query's Token if it has one, else the caller's.
    """
    done, result = await srv.forward_read("PreparedQuery.Execute", args, args.opts, hops)
    if done:
        return result
    query = await _resolve(srv, args)
    svc = query.service
    rows: list = []
    if not svc.get("Peer"):  # no cluster peering here: a peer's services are never found
        _, rows = srv.state.check_service_nodes(svc["Service"], connect=bool(svc.get("Connect")) or args.connect)
    # Consul filters the results with the query's own Token when it has one, else the caller's.
    caller = srv.acl.caller(query.token or args.opts.token)
    filtered = False
    if not caller.unrestricted:
        authz = caller.authorizer
        rows, filtered = keep(rows, lambda r: authz.node_read(r[0].node) and authz.service_read(r[1].service_name))
        filtered = masked(args.opts.token, filtered)
    nodes = [shapes.health_entry_json(n, s, c) for n, s, c in execute_rows(query, rows, args)]
    meta = srv.query_meta(0, args.opts)
    meta.filtered = filtered
    body = {
        "Service": svc["Service"],
        "Nodes": nodes,
        "DNS": {"TTL": query.dns.get("TTL", "")},
        "Datacenter": srv.config.datacenter,
        "PeerName": "",
        "Failovers": 0,
        **_meta_fields(meta),
    }
    body["ResultsFilteredByACLs"] = filtered
    return QueryReply(meta, body)
