"""Query parameters shared by every endpoint: dc, token, index, wait, stale, consistent, pretty.

Error texts are Consul's (agent/http.go parseWait / parseConsistency).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from proconsul.server.durations import parse_duration
from proconsul.server.errors import BadRequest
from proconsul.server.structs import QueryOptions

Query = Mapping[str, Sequence[str]]

def parse_uint(text: str, what: str) -> int:
    """A uint64 parameter, with a clear 400 when it is not one."""
    try:
        value = int(text, 10)
    except ValueError:
        raise BadRequest(f"Invalid {what}: {text!r} is not an unsigned integer") from None
    if value < 0 or value >= 2**64:
        raise BadRequest(f"Invalid {what}: {text!r} is out of range")
    return value


def parse_bool(text: str) -> bool | None:
    """Go's strconv.ParseBool: 1 t T TRUE true True / 0 f F FALSE false False; None otherwise."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def first(query: Query, name: str, default: str = "") -> str:
    values = query.get(name)
    return values[0] if values else default


def has(query: Query, name: str) -> bool:
    return name in query


def token_from(query: Query, headers: Mapping[str, str]) -> str:
    """The ACL token: X-Consul-Token, then Authorization: Bearer, then ?token (Consul's order)."""
    token = headers.get("x-consul-token", "")
    if not token:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
    return token or first(query, "token")


def query_options(query: Query, headers: Mapping[str, str]) -> QueryOptions:
    """Consul's s.parse: dc, token, consistency, wait, index — with Consul's 400 messages."""
    opts = QueryOptions(datacenter=first(query, "dc"), token=token_from(query, headers))
    opts.stale = has(query, "stale")
    opts.consistent = has(query, "consistent")
    if opts.stale and opts.consistent:
        raise BadRequest("Cannot specify ?stale with ?consistent, conflicting semantics.")
    if has(query, "max_stale"):
        try:
            if parse_duration(first(query, "max_stale")) > 0:
                opts.stale = True
        except ValueError:
            raise BadRequest(f'Invalid max_stale value "{first(query, "max_stale")}"') from None
    if has(query, "leader"):
        opts.stale = opts.consistent = False
    wait = first(query, "wait")
    if wait:
        try:
            opts.wait = parse_duration(wait)
        except ValueError:
            raise BadRequest("Invalid wait time") from None
        if opts.wait < 0:
            raise BadRequest("Invalid wait time")
    index = first(query, "index")
    if index:
        try:
            opts.index = int(index, 10)
            if not 0 <= opts.index < 2**64:
                raise ValueError
        except ValueError:
            raise BadRequest("Invalid index") from None
    return opts


def node_meta(query: Query) -> dict[str, str]:
    """Consul's repeatable ?node-meta=key:value filter."""
    out: dict[str, str] = {}
    for item in query.get("node-meta", []):
        key, _, value = item.partition(":")
        out[key] = value
    return out


def catalog_query(name: str, query: Query, headers: Mapping[str, str]) -> "CatalogQuery":
    """The query options every catalog and health read takes: tag, node-meta, passing, filter, and s.parse's."""
    from proconsul.server.structs import CatalogQuery

    passing = False
    if has(query, "passing"):
        raw = first(query, "passing")
        passing = True if raw == "" else parse_bool(raw)
        if passing is None:
            raise BadRequest("Invalid value for ?passing")
    return CatalogQuery(
        name=name,
        tags=list(query.get("tag", [])),
        passing=passing,
        node_meta=node_meta(query),
        filter=first(query, "filter"),
        opts=query_options(query, headers),
    )


def param(name: str, description: str, schema: dict | None = None) -> dict:
    """An OpenAPI query parameter (the handlers parse query strings themselves, with Consul's messages)."""
    return {"name": name, "in": "query", "required": False, "schema": schema or {"type": "string"}, "description": description}


DC = param("dc", "Datacenter (only the agent's own)")
TOKEN = param("token", "ACL token")
STALE = param("stale", "Any server may answer", {"type": "boolean"})
CONSISTENT = param("consistent", "The leader answers after a Raft barrier", {"type": "boolean"})
