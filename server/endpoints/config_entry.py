"""ConfigEntry.* endpoints: Consul's config entries (agent/consul/config_endpoint.go).

Apply normalizes and validates on the leader, before Raft, as Consul does; the
store runs the same checks again inside the write (with the graph checks that
need the other entries), so a log entry can never store a bad entry. Kinds
Consul has but proconsul does not implement are refused on write and read as
absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proconsul.server import config_entries as ce
from proconsul.server.acl import keep
from proconsul.server.commands import ConfigEntryRequest
from proconsul.server.endpoints import endpoint
from proconsul.server.endpoints.kv import propose
from proconsul.server.errors import BadRequest
from proconsul.server.filter import BOOL, INT, STRING, ListOf, MapOf, Struct, compile_filter
from proconsul.server.structs import QueryOptions, QueryReply


@dataclass
class ConfigEntryApply:
    """ConfigEntry.Apply: a decoded (not yet normalized) entry; ``cas`` set for upsert-cas."""

    entry: dict[str, Any]
    cas: int | None = None
    datacenter: str = ""
    token: str = ""


@dataclass
class ConfigEntryDelete:
    """ConfigEntry.Delete: one entry by kind and name; ``cas`` set for delete-cas."""

    kind: str
    name: str
    cas: int | None = None
    datacenter: str = ""
    token: str = ""


@dataclass
class ConfigEntryQuery:
    """ConfigEntry.Get (``name`` set) and ConfigEntry.List."""

    kind: str
    name: str = ""
    filter: str = ""
    opts: QueryOptions = field(default_factory=QueryOptions)


# Filterable fields per kind (top-level scalars and maps of each entry's JSON).
_COMMON = {"Kind": STRING, "Name": STRING, "Meta": MapOf(STRING), "Mode": STRING, "MutualTLSMode": STRING,
           "MeshGateway": Struct({"Mode": STRING}), "TransparentProxy": Struct({"OutboundListenerPort": INT, "DialedDirectly": BOOL})}
FILTER_SCHEMAS = {
    ce.SERVICE_DEFAULTS: Struct({**_COMMON, "Protocol": STRING, "ExternalSNI": STRING, "MaxInboundConnections": INT,
                                 "LocalConnectTimeoutMs": INT, "LocalRequestTimeoutMs": INT, "BalanceInboundConnections": STRING}),
    ce.PROXY_DEFAULTS: Struct({**_COMMON, "Config": MapOf(STRING)}),
    ce.SERVICE_INTENTIONS: Struct({"Kind": STRING, "Name": STRING, "Meta": MapOf(STRING), "Sources": ListOf(Struct({
        "Name": STRING, "Action": STRING, "Precedence": INT, "LegacyID": STRING, "Type": STRING, "Description": STRING,
    }))}),
}


def _require(caller: Any, kind: str, name: str, write: bool) -> None:
    """Consul's CanRead / CanWrite for one entry: 403 naming the permission it lacks."""
    if caller.unrestricted or ce.acl_allows(caller.authorizer, kind, name, write):
        return
    resource, level, named = ce.acl_rule(kind, write)  # type: ignore[misc]
    raise caller.denied(resource, level, name if named else "")


def _known_kind(kind: str) -> bool:
    """True for a kind proconsul stores; False for another Consul kind (nothing of it can exist); else 400."""
    if kind in ce.KINDS:
        return True
    if kind in ce.OTHER_CONSUL_KINDS:
        return False
    raise BadRequest(ce.kind_error(kind))


@endpoint("ConfigEntry.Apply", ConfigEntryApply)
async def config_entry_apply(srv: Any, args: ConfigEntryApply, hops: int) -> bool:
    """Upsert (or check-and-set) an entry (after validation, the kind's write permission); answers whether it was written."""
    done, result = await srv.forward("ConfigEntry.Apply", args, args.datacenter, hops)
    if done:
        return result
    kind = args.entry.get("Kind", "")
    if kind not in ce.KINDS:
        raise BadRequest(ce.kind_error(kind))
    caller = srv.acl.caller(args.token)
    entry = ce.prepare(args.entry)
    _require(caller, kind, entry.get("Name", ""), write=True)
    op = "upsert-cas" if args.cas is not None else "upsert"
    return await propose(srv, ConfigEntryRequest(op=op, entry=entry, cas=args.cas or 0))


@endpoint("ConfigEntry.Delete", ConfigEntryDelete)
async def config_entry_delete(srv: Any, args: ConfigEntryDelete, hops: int) -> bool:
    """Delete an entry (missing is fine; the kind's write permission); with ``cas``, only at that ModifyIndex.
    Answers whether it was deleted."""
    done, result = await srv.forward("ConfigEntry.Delete", args, args.datacenter, hops)
    if done:
        return result
    if not _known_kind(args.kind):
        return args.cas is None
    name = args.name
    if args.kind == ce.PROXY_DEFAULTS:
        name = ce.normalize({"Kind": args.kind, "Name": name})["Name"]
    _require(srv.acl.caller(args.token), args.kind, name, write=True)
    op = "delete-cas" if args.cas is not None else "delete"
    return await propose(srv, ConfigEntryRequest(op=op, entry={"Kind": args.kind, "Name": name}, cas=args.cas or 0))


@endpoint("ConfigEntry.Get", ConfigEntryQuery, QueryReply)
async def config_entry_get(srv: Any, args: ConfigEntryQuery, hops: int) -> QueryReply:
    """One entry in Consul's JSON shape, or None when it does not exist; 403 without the kind's read permission."""
    done, result = await srv.forward_read("ConfigEntry.Get", args, args.opts, hops)
    if done:
        return result
    if not _known_kind(args.kind):
        return QueryReply(srv.query_meta(srv.state.max_index(), args.opts), None)
    _require(srv.acl.caller(args.opts.token), args.kind, args.name, write=False)
    return await srv.blocking_query(
        args.opts, lambda ws: srv.state.config_entry_get(args.kind, args.name, ws), lambda row: row.json() if row else None
    )


@endpoint("ConfigEntry.List", ConfigEntryQuery, QueryReply)
async def config_entry_list(srv: Any, args: ConfigEntryQuery, hops: int) -> QueryReply:
    """Every entry of a kind the caller may read, by name, optionally filtered."""
    done, result = await srv.forward_read("ConfigEntry.List", args, args.opts, hops)
    if done:
        return result
    if not _known_kind(args.kind):
        return QueryReply(srv.query_meta(srv.state.max_index(), args.opts), [])
    matches = compile_filter(args.filter, FILTER_SCHEMAS[args.kind]) if args.filter else None
    caller = srv.acl.caller(args.opts.token)
    readable = None
    if not caller.unrestricted and ce.acl_rule(args.kind, write=False) is not None:
        # ACLs filter before the user's filter, so an expression cannot probe what the token may not read.

        def readable(rows: list) -> tuple[list, bool]:
            return keep(rows, lambda r: ce.acl_allows(caller.authorizer, r.kind, r.entry.get("Name", ""), False))

    def shape(rows: list) -> list[dict[str, Any]]:
        items = [r.json() for r in rows]
        return [i for i in items if matches(i)] if matches is not None else items

    return await srv.blocking_query(args.opts, lambda ws: srv.state.config_entry_list(args.kind, ws), shape, readable)
