"""Intention.* endpoints: Consul's intentions (agent/consul/intention_endpoint.go), kept in config entries.

Apply mirrors Consul's computeApplyChanges*: the leader makes a legacy
intention's ID and timestamps, runs the legacy validation (create, update) or
defers to the config entry's (upsert), and turns the request into a mutation
of the destination's ``service-intentions`` entry. The mutation is tried
against the store before it is proposed, so a refused write never reaches the
log; inside the apply the same checks run again where they cannot race.
Check answers as Consul's Intention.Check does: the source's intentions in
precedence order, the first covering the destination decides, L7 intentions
count as deny, and the default policy decides when none matches.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from proconsul.server import config_entries as ce
from proconsul.server import intentions as ix
from proconsul.server.acl import keep
from proconsul.server.commands import IntentionRequest
from proconsul.server.endpoints import endpoint
from proconsul.server.endpoints.kv import propose
from proconsul.server.errors import BadRequest, NotFound, PermissionDenied
from proconsul.server.filter import compile_filter
from proconsul.server.structs import QueryOptions, QueryReply

CONNECT_NOT_ENABLED = "Connect must be enabled in order to use this endpoint"  # consul.ErrConnectNotEnabled
PERMISSION_DENIED = "Permission denied"  # acl.ErrPermissionDenied, bare, as Apply and Get answer


@dataclass
class IntentionApply:
    """Intention.Apply: an operation and the intention in Consul's JSON field names."""

    op: str
    intention: dict[str, Any] = field(default_factory=dict)
    datacenter: str = ""
    token: str = ""


@dataclass
class IntentionQuery:
    """Intention.Get (``id``, or ``exact`` with source and destination), List, Match and Check."""

    id: str = ""
    exact: bool = False
    source: str = ""
    destination: str = ""
    source_type: str = "consul"
    match_type: str = ""
    names: list[str] = field(default_factory=list)
    filter: str = ""
    opts: QueryOptions = field(default_factory=QueryOptions)


def _require_connect(srv: Any) -> None:
    if not getattr(srv.config, "connect_enabled", True):
        raise BadRequest(CONNECT_NOT_ENABLED)


def _new_id(srv: Any) -> str:
    while True:
        candidate = str(uuid.uuid4())
        if srv.state.intention_get(candidate)[1] is None:
            return candidate


def _validate_legacy(ixn: dict[str, Any]) -> None:
    errors = ix.legacy_validate(ixn)
    if errors:
        raise BadRequest(ce.multierror(errors))


def _lookup_by_id(srv: Any, legacy_id: str, missing: str) -> dict[str, Any]:
    if err := ix.uuid_error(legacy_id):
        raise BadRequest(f"Intention lookup failed: failed config entry lookup: {err}")
    _, found = srv.state.intention_get(legacy_id)
    if found is None:
        raise NotFound(missing)
    return found


def _require_write(caller: Any, ixn: dict[str, Any]) -> None:
    """Consul's Intention.CanWrite check in computeApplyChanges*: bare "Permission denied" (acl.ErrPermissionDenied)."""
    if not caller.unrestricted and not ix.can_write(ixn, caller.authorizer):
        raise PermissionDenied(PERMISSION_DENIED)


def _mutation(srv: Any, caller: Any, args: IntentionApply) -> tuple[IntentionRequest | None, str]:
    """Consul's computeApplyChanges*: the mutation to propose (None: nothing to do) and the reply.

    Each variant checks intention:write on the destination where Consul does: before validation for create,
    upsert and delete by name; on the stored intention for update and delete by ID.
    """
    ixn = dict(args.intention)
    ixn["SourceNS"] = ixn.get("SourceNS") or ce.DEFAULT_NAMESPACE  # FillPartitionAndNamespace
    ixn["DestinationNS"] = ixn.get("DestinationNS") or ce.DEFAULT_NAMESPACE
    op = args.op
    if op == "create":
        _require_write(caller, ixn)
        if ixn.get("ID"):
            raise BadRequest("ID must be empty when creating a new intention")
        ixn["ID"] = _new_id(srv)
        ixn["SourceType"] = ixn.get("SourceType") or "consul"
        _validate_legacy(ixn)
        now = ix.rfc3339_nano()
        value = {**ix.to_source(ixn, legacy=True), "LegacyCreateTime": now, "LegacyUpdateTime": now}
        req = IntentionRequest("create", legacy_id=ixn["ID"], destination=ixn["DestinationName"], source=ixn["SourceName"], value=value)
        return req, ixn["ID"]
    if op == "update":
        legacy_id = ixn.get("ID", "")
        existing = _lookup_by_id(srv, legacy_id, f"Cannot modify non-existent intention: '{legacy_id}'")
        _require_write(caller, existing)
        if existing["DestinationName"] != ixn.get("DestinationName", "") or existing["DestinationNS"] != ixn["DestinationNS"]:
            raise BadRequest("Cannot modify Destination partition/namespace/name for an intention once it exists.")
        ixn["SourceType"] = ixn.get("SourceType") or "consul"
        _validate_legacy(ixn)
        now = ix.rfc3339_nano()
        value = {**ix.to_source(ixn, legacy=True), "LegacyCreateTime": now, "LegacyUpdateTime": now}
        return IntentionRequest("update", legacy_id=legacy_id, value=value), legacy_id
    if op == "upsert":
        if ixn.get("ID"):
            raise BadRequest("ID must not be specified")
        _require_write(caller, ixn)
        _, prev = srv.state.config_entry_get(ce.SERVICE_INTENTIONS, ixn.get("DestinationName", ""))
        if ixn.get("Meta"):
            if prev is None:
                raise BadRequest("Meta must not be specified")
            if (prev.entry.get("Meta") or {}) != ixn["Meta"]:
                raise BadRequest("Meta must not be specified, or should be unchanged during an update.")
            ixn.pop("Meta")
        value = ix.to_source(ixn, legacy=False)
        req = IntentionRequest("upsert", destination=ixn.get("DestinationName", ""), source=ixn.get("SourceName", ""), value=value)
        return req, ""
    if op == "delete":
        legacy_id = ixn.get("ID", "")
        if legacy_id:
            existing = _lookup_by_id(srv, legacy_id, f"Cannot delete non-existent intention: '{legacy_id}'")
            _require_write(caller, existing)
            return IntentionRequest("delete", legacy_id=legacy_id), ""
        _require_write(caller, ixn)
        _, found = srv.state.intention_get_exact(ixn.get("SourceName", ""), ixn.get("DestinationName", ""))
        if found is None:
            return None, ""  # by-name deletions are idempotent
        return IntentionRequest("delete", destination=ixn["DestinationName"], source=ixn["SourceName"]), ""
    raise BadRequest(f"Invalid Intention operation: {op}")


@endpoint("Intention.Apply", IntentionApply)
async def intention_apply(srv: Any, args: IntentionApply, hops: int) -> str:
    """Create (ID made here), update or delete a legacy intention, or upsert/delete one by name; answers the ID ("" by name).

    Needs intention:write on the destination (403 "Permission denied" otherwise, nothing written).
    """
    _require_connect(srv)
    if args.intention.get("SourcePeer"):
        raise BadRequest("SourcePeer field is not supported on this endpoint. Use config entries instead")
    done, result = await srv.forward("Intention.Apply", args, args.datacenter, hops)
    if done:
        return result
    req, reply = _mutation(srv, srv.acl.caller(args.token), args)
    if req is None:
        return reply
    srv.state.intention_mutation_check(req.op, req.legacy_id, req.destination, req.source, req.value)
    await propose(srv, req)
    return reply


@endpoint("Intention.Get", IntentionQuery, QueryReply)
async def intention_get(srv: Any, args: IntentionQuery, hops: int) -> QueryReply:
    """One intention by legacy ID or by exact source and destination; NotFound("Intention not found") otherwise;
    403 "Permission denied" without intention:read on either end."""
    _require_connect(srv)
    done, result = await srv.forward_read("Intention.Get", args, args.opts, hops)
    if done:
        return result
    if args.exact:
        missing = [f"{f} is missing" for f, v in (("SourceName", args.source), ("DestinationName", args.destination)) if not v]
        if missing:
            raise BadRequest(ce.multierror(missing))
    elif err := ix.uuid_error(args.id):
        raise BadRequest(f"failed config entry lookup: {err}")
    caller = srv.acl.caller(args.opts.token)

    def read(ws: Any) -> tuple[int, Any]:
        if args.exact:
            index, found = srv.state.intention_get_exact(args.source, args.destination, ws)
        else:
            index, found = srv.state.intention_get(args.id, ws)
        if found is None:
            raise NotFound(ix.INTENTION_NOT_FOUND)
        if not caller.unrestricted and not ix.can_read(found, caller.authorizer):
            raise PermissionDenied(PERMISSION_DENIED)
        return index, found

    return await srv.blocking_query(args.opts, read)


@endpoint("Intention.List", IntentionQuery, QueryReply)
async def intention_list(srv: Any, args: IntentionQuery, hops: int) -> QueryReply:
    """Every intention the caller may read (intention:read on either end), highest precedence first, optionally filtered."""
    _require_connect(srv)
    done, result = await srv.forward_read("Intention.List", args, args.opts, hops)
    if done:
        return result
    matches = compile_filter(args.filter, ix.FILTER_SCHEMA) if args.filter else None
    caller = srv.acl.caller(args.opts.token)
    # ACLs filter before the user's filter, so an expression cannot probe what the token may not read.
    readable = None if caller.unrestricted else lambda items: keep(items, lambda i: ix.can_read(i, caller.authorizer))
    return await srv.blocking_query(
        args.opts,
        lambda ws: srv.state.intention_list(ws),
        lambda items: [i for i in items if matches is None or matches(i)],
        readable,
    )


@endpoint("Intention.Match", IntentionQuery, QueryReply)
async def intention_match(srv: Any, args: IntentionQuery, hops: int) -> QueryReply:
    """For each name, the intentions with it (or ``*``) as source or destination, in evaluation order;
    intention:read on every name asked (403 otherwise)."""
    _require_connect(srv)
    done, result = await srv.forward_read("Intention.Match", args, args.opts, hops)
    if done:
        return result
    if args.match_type not in ("source", "destination"):
        raise BadRequest(f"invalid intention match type: {args.match_type}")
    caller = srv.acl.caller(args.opts.token)
    for name in args.names:
        if name:
            caller.require(caller.authorizer.intention_read(name), "intention", "read", name)
    return await srv.blocking_query(args.opts, lambda ws: srv.state.intention_match(args.match_type, args.names, ws))


@endpoint("Intention.Check", IntentionQuery, QueryReply)
async def intention_check(srv: Any, args: IntentionQuery, hops: int) -> QueryReply:
    """Would ``source`` be allowed to connect to ``destination``? (L7 intentions count as deny; service:read on the destination.)"""
    _require_connect(srv)
    done, result = await srv.forward_read("Intention.Check", args, args.opts, hops)
    if done:
        return result
    if args.source_type != "consul":
        raise BadRequest(f'unsupported SourceType: "{args.source_type}"')
    if args.destination:
        # Only service:read, not intention:read: the answer says allowed or not and nothing about the intentions.
        caller = srv.acl.caller(args.opts.token)
        caller.require(caller.authorizer.service_read(args.destination), "service", "read", args.destination)
    if args.opts.consistent:
        await srv.raft.barrier()
    index, matches = srv.state.intention_match_one("source", args.source)
    allowed, matched = ix.decide(matches, args.destination, "destination", allow_permissions=False)
    if matched is None:
        cfg = srv.config
        allowed = ix.default_allow(cfg.acl_enabled, cfg.acl_default_policy, cfg.default_intention_policy)
    return QueryReply(srv.query_meta(index, args.opts), {"Allowed": allowed})
