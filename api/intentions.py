"""/v1/connect/intentions and /v1/agent/connect/authorize: Consul's intentions API (agent/intentions_endpoint.go).

Bodies decode as Consul's structs.Intention (field names case-insensitive,
unknown fields refused, read-only fields such as ID, Precedence, CreatedAt and
the Raft indexes accepted so an intention read with GET can be sent back).
``source``/``destination``/``name`` parameters take Consul's ``[[partition/]namespace/]name``
forms; only the default namespace and partition exist here.

Status codes: user errors are 400 and unknown intentions 404, where Consul
answers 500 for many of the errors its RPC layer returns (validation, unknown
IDs on update and delete); the texts are Consul's.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.agent.intentions import authorize
from proconsul.api.common import DC, TOKEN, agent_of, is_pretty, json_response, opts_of, param, query_of, reply_response
from proconsul.api.decode import loads as decode_json, as_int, as_str, as_strmap, check_unknown, fold
from proconsul.api.errors import allow_header, method_not_allowed_body
from proconsul.api.headers import meta_headers
from proconsul.api.health import READ_PARAMS
from proconsul.api.lean import json_reply, read_limited, text_reply
from proconsul.server import config_entries as ce
from proconsul.server.endpoints.intention import IntentionApply, IntentionQuery
from proconsul.server.errors import BadRequest, StoreError

router = APIRouter(tags=["connect"])
MAX_BODY = 1024 * 1024
_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
_SRC_DST = [param("source", "Source service ([namespace/]name, or *)"), param("destination", "Destination service ([namespace/]name, or *)")]
_RESERVED = ("exact", "match", "check")  # paths under /v1/connect/intentions/ that are not IDs

_FIELDS = {
    "id", "description", "sourcens", "sourcename", "destinationns", "destinationname", "sourcepartition",
    "destinationpartition", "sourcepeer", "sourcesamenessgroup", "sourcetype", "action", "permissions", "jwt",
    "defaultaddr", "defaultport", "meta", "precedence", "createdat", "updatedat", "hash", "createindex", "modifyindex",
}
_STR_FIELDS = {
    "id": "ID", "description": "Description", "sourcens": "SourceNS", "sourcename": "SourceName",
    "destinationns": "DestinationNS", "destinationname": "DestinationName", "sourcepartition": "SourcePartition",
    "destinationpartition": "DestinationPartition", "sourcepeer": "SourcePeer", "sourcesamenessgroup": "SourceSamenessGroup",
    "sourcetype": "SourceType", "action": "Action", "defaultaddr": "DefaultAddr",
}


def parse_intention(data: Any, err: str) -> dict[str, Any]:
    """A body as Consul's structs.Intention, to the fields Intention.Apply reads (Consul's JSON names)."""
    if data is None:
        raise BadRequest(f"{err}: EOF")  # an empty body, as Go's json decoder reports it
    if not isinstance(data, dict):
        raise BadRequest(f"{err}: json: cannot unmarshal {_json_kind(data)} into Go value of type structs.Intention")
    check_unknown(data, _FIELDS, "intention", strict=False)
    f = fold(data, "intention", err)
    out: dict[str, Any] = {}
    for key, name in _STR_FIELDS.items():
        value = as_str(f.get(key), name, err)
        if value:
            out[name] = value
    as_int(f.get("defaultport"), "DefaultPort", lo=-(2**63), err=err)
    as_int(f.get("precedence"), "Precedence", lo=-(2**63), err=err)
    meta = as_strmap(f.get("meta"), "Meta", err)
    if meta:
        out["Meta"] = meta
    if f.get("permissions") is not None:
        try:
            perms = ce.decode_permissions(f["permissions"])
        except StoreError as e:
            raise BadRequest(f"{err}: {e}") from None
        if perms:
            out["Permissions"] = perms
    if f.get("jwt") is not None:
        raise BadRequest("JWT requirements are not supported by proconsul")
    return out


def _json_kind(v: Any) -> str:
    return {list: "array", str: "string", bool: "bool", int: "number", float: "number"}.get(type(v), "value")


def _check_tenancy(ixn: dict[str, Any]) -> None:
    """Consul's HTTP-side checks: no partitions on the legacy endpoints, no namespace but default."""
    for side in ("Destination", "Source"):
        part = ixn.get(f"{side}Partition", "")
        if part and part != "default":
            raise BadRequest(f"Cannot specify a {side.lower()} partition with this endpoint")
    for field in ("SourceNS", "DestinationNS"):
        ns = ixn.get(field, "")
        if ns and ns.lower() != "default":
            raise BadRequest(f"Invalid {field}({ns}): Namespaces is a Consul Enterprise feature")


def parse_target(text: str, what: str, allow_peer: bool = False) -> str:
    """parseIntentionStringComponent: ``[[partition/]namespace/]name`` to the name (only the default tenancy exists)."""
    if text.startswith("peer:"):
        if not allow_peer:
            raise BadRequest(f"{what} {json.dumps(text)} is invalid: cannot specify a peer here")
        raise BadRequest(f"{what} {json.dumps(text)} is invalid: cluster peering is not supported by proconsul")
    parts = text.split("/")
    if len(parts) > 3:
        raise BadRequest(f"{what} {json.dumps(text)} is invalid: input can contain at most two '/'")
    name = parts[-1]
    ns = parts[-2] if len(parts) >= 2 else ""
    ap = parts[0] if len(parts) == 3 else ""
    if ap and ap != "default":
        raise BadRequest(f"Invalid {what} partition {json.dumps(ap)}: Partitions is a Consul Enterprise feature")
    if ns and ns.lower() != "default":
        raise BadRequest(f"Invalid {what} namespace {json.dumps(ns)}: Namespaces is a Consul Enterprise feature")
    return name


async def _body(request: Request) -> Any:
    raw = await read_limited(request.stream(), request.headers.get("content-length"), MAX_BODY, lambda n, d: f"Request body too large: {n} bytes")
    if not raw.strip():
        return None
    try:
        return decode_json(raw)
    except ValueError as err:
        raise BadRequest(f"Request decode failed: {err}") from None


def _one(q: dict[str, list[str]], name: str, nonempty: bool = False) -> str:
    values = q.get(name)
    if not values or len(values) != 1 or (nonempty and not values[0]):
        raise BadRequest(f"required query parameter '{name}' not set")
    return values[0]


def _method_not_allowed(request: Request, allowed: list[str]) -> Response:
    header = [(b"allow", allow_header(allowed).encode())]
    return reply_response(text_reply(405, method_not_allowed_body(request.method), header))


async def _apply(request: Request, op: str, ixn: dict[str, Any]) -> str:
    opts = opts_of(request)
    return await agent_of(request).rpc("Intention.Apply", IntentionApply(op, ixn, opts.datacenter, opts.token))


async def _read(request: Request, method: str, args: IntentionQuery, shape: Any = None) -> Response:
    reply = await agent_of(request).rpc(method, args)
    value = shape(reply.value) if shape is not None else reply.value
    return reply_response(json_reply(value, is_pretty(request), headers=meta_headers(reply.meta)))


@router.get("/v1/connect/intentions", summary="Every intention, highest precedence first", openapi_extra={"parameters": READ_PARAMS[:7]})
async def intention_list(request: Request) -> Response:
    q = query_of(request)
    return await _read(request, "Intention.List", IntentionQuery(filter=(q.get("filter") or [""])[0], opts=opts_of(request)))


@router.post("/v1/connect/intentions", summary="Create an intention (legacy, ID-based)", openapi_extra={"parameters": [DC, TOKEN], "requestBody": _BODY})
async def intention_create(request: Request) -> Response:
    data = await _body(request)
    ixn = parse_intention(data, "Failed to decode request body")
    _check_tenancy(ixn)
    return json_response(request, {"ID": await _apply(request, "create", ixn)})


def _exact_args(request: Request) -> tuple[str, str]:
    q = query_of(request)
    source = parse_target(_one(q, "source", nonempty=True), "source")
    destination = parse_target(_one(q, "destination", nonempty=True), "destination")
    return source, destination


@router.get("/v1/connect/intentions/exact", summary="The intention from source to destination", openapi_extra={"parameters": [*READ_PARAMS[:6], *_SRC_DST]})
async def intention_get_exact(request: Request) -> Response:
    q = query_of(request)
    source = parse_target(_one(q, "source"), "source", allow_peer=True)
    destination = parse_target(_one(q, "destination"), "destination")
    args = IntentionQuery(exact=True, source=source, destination=destination, opts=opts_of(request))
    return await _read(request, "Intention.Get", args)


@router.put("/v1/connect/intentions/exact", summary="Create or replace the intention from source to destination", openapi_extra={"parameters": [DC, TOKEN, *_SRC_DST], "requestBody": _BODY})
async def intention_put_exact(request: Request) -> Response:
    source, destination = _exact_args(request)
    data = await _body(request)
    ixn = parse_intention(data, "Request decode failed")
    ixn.pop("ID", None)  # explicitly cleared: the identity comes from the URL
    for key in ("SourceNS", "DestinationNS", "SourcePartition", "DestinationPartition"):
        ixn.pop(key, None)
    ixn.update(SourceName=source, DestinationName=destination)
    await _apply(request, "upsert", ixn)
    return json_response(request, True)


@router.delete("/v1/connect/intentions/exact", summary="Delete the intention from source to destination", openapi_extra={"parameters": [DC, TOKEN, *_SRC_DST]})
async def intention_delete_exact(request: Request) -> Response:
    source, destination = _exact_args(request)
    await _apply(request, "delete", {"SourceName": source, "DestinationName": destination})
    return json_response(request, True)


@router.get("/v1/connect/intentions/match", summary="Intentions matching each name as source or destination, in evaluation order",
            openapi_extra={"parameters": [*READ_PARAMS[:6], param("by", "source or destination"), param("name", "A service name; repeatable")]})
async def intention_match(request: Request) -> Response:
    q = query_of(request)
    by = q.get("by")
    if not by or len(by) != 1:
        raise BadRequest("required query parameter 'by' not set")
    if by[0] not in ("source", "destination"):
        raise BadRequest("'by' parameter must be one of 'source' or 'destination'")
    names = q.get("name")
    if not names:
        raise BadRequest("required query parameter 'name' not set")
    entries = []
    for n in names:
        entries.append(parse_target(n, "name"))
    args = IntentionQuery(match_type=by[0], names=entries, opts=opts_of(request))
    # Keyed by the names as given; Consul sends null for a name nothing matches.
    return await _read(request, "Intention.Match", args, lambda matches: {n: (m or None) for n, m in zip(names, matches)})


@router.get("/v1/connect/intentions/check", summary="Would source be allowed to connect to destination?",
            openapi_extra={"parameters": [*READ_PARAMS[:4], *_SRC_DST, param("source-type", "consul (the only type)")]})
async def intention_check(request: Request) -> Response:
    q = query_of(request)
    source_type = (q.get("source-type") or ["consul"])[0]
    source = _one(q, "source")
    destination = _one(q, "destination")
    if source_type == "consul":
        source = parse_target(source, "source")
    destination = parse_target(destination, "destination")
    args = IntentionQuery(source=source, destination=destination, source_type=source_type, opts=opts_of(request))
    return await _read(request, "Intention.Check", args)


@router.get("/v1/connect/intentions/{intention_id}", summary="One intention by ID (legacy)", openapi_extra={"parameters": READ_PARAMS[:6]})
async def intention_get(request: Request, intention_id: str) -> Response:
    return await _read(request, "Intention.Get", IntentionQuery(id=intention_id, opts=opts_of(request)))


@router.put("/v1/connect/intentions/{intention_id}", summary="Update an intention by ID (legacy)", openapi_extra={"parameters": [DC, TOKEN], "requestBody": _BODY})
async def intention_update(request: Request, intention_id: str) -> Response:
    if intention_id in _RESERVED[1:]:
        return _method_not_allowed(request, ["GET"])
    data = await _body(request)
    ixn = parse_intention(data, "Request decode failed")
    _check_tenancy(ixn)
    ixn["ID"] = intention_id
    return json_response(request, {"ID": await _apply(request, "update", ixn)})


@router.delete("/v1/connect/intentions/{intention_id}", summary="Delete an intention by ID (legacy)", openapi_extra={"parameters": [DC, TOKEN]})
async def intention_delete(request: Request, intention_id: str) -> Response:
    if intention_id in _RESERVED[1:]:
        return _method_not_allowed(request, ["GET"])
    await _apply(request, "delete", {"ID": intention_id})
    return json_response(request, True)


_AUTHORIZE_FIELDS = {"target", "clientcerturi", "clientcertserial"}


# Consul registers POST only; py-consul's agent.connect.authorize sends PUT, so both are taken.
@router.put("/v1/agent/connect/authorize", operation_id="agent_connect_authorize_put", summary="As POST (py-consul sends PUT)",
            openapi_extra={"parameters": [TOKEN], "requestBody": _BODY})
@router.post("/v1/agent/connect/authorize", summary="May the client certificate's service connect to Target? (from the agent's intentions cache)",
             openapi_extra={"parameters": [TOKEN], "requestBody": _BODY})
async def agent_connect_authorize(request: Request) -> Response:
    data = await _body(request)
    if data is None:
        raise BadRequest("Request decode failed: EOF")
    if not isinstance(data, dict):
        raise BadRequest(f"Request decode failed: json: cannot unmarshal {_json_kind(data)} into Go value of type structs.ConnectAuthorizeRequest")
    check_unknown(data, _AUTHORIZE_FIELDS, "authorize", strict=False)
    f = fold(data, "authorize")
    target = as_str(f.get("target"), "Target")
    uri = as_str(f.get("clientcerturi"), "ClientCertURI")
    as_str(f.get("clientcertserial"), "ClientCertSerial")
    # The caller's token needs service:write on the target (Consul's AgentConnectAuthorize).
    result, hit = await authorize(agent_of(request), target, uri, opts_of(request).token)
    return json_response(request, result, headers=[(b"x-cache", b"HIT" if hit else b"MISS")])
