"""/v1/query: Consul's prepared queries (agent/prepared_query_endpoint.go).

Bodies decode as Consul's structs.PreparedQuery: field names case-insensitive,
unknown fields refused, output fields (ID, CreateIndex, ModifyIndex) accepted so
a query read with GET can be sent back with PUT.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.api.common import DC, TOKEN, agent_of, is_pretty, json_response, opts_of, param, query_of, reply_response
from proconsul.api.decode import loads as decode_json, as_bool, as_int, as_str, as_strlist, as_strmap, check_unknown, fold
from proconsul.api.headers import meta_headers
from proconsul.api.health import READ_PARAMS
from proconsul.api.lean import json_reply, read_limited
from proconsul.api.params import first, parse_bool
from proconsul.server.commands import PreparedQueryRecord
from proconsul.server.endpoints.query import QueryApply, QueryExecute, QuerySpecific
from proconsul.server.errors import BadRequest

router = APIRouter(tags=["query"])
MAX_BODY = 4 * 1024 * 1024
_INT_MIN = -(2**63)

_QUERY_FIELDS = {"id", "name", "session", "token", "template", "service", "dns", "createindex", "modifyindex"}
_SERVICE_FIELDS = {
    "service", "samenessgroup", "failover", "onlypassing", "ignorecheckids", "near", "tags", "nodemeta",
    "servicemeta", "connect", "peer",
}
_FAILOVER_FIELDS = {"nearestn", "datacenters", "targets"}
_TARGET_FIELDS = {"peer", "datacenter"}
_TEMPLATE_FIELDS = {"type", "regexp", "removeemptytags"}
_DNS_FIELDS = {"ttl"}


def _struct(data: Any, known: set[str], what: str) -> dict[str, Any]:
    """One nested struct: null is the zero value, as Go decodes it; unknown fields refused."""
    if data is None:
        return {}
    f = fold(data, what)
    check_unknown(data, known, what, strict=False)
    return f


def _strlist_or_none(v: Any, what: str) -> list[str] | None:
    return None if v is None else as_strlist(v, what)


def _strmap_or_none(v: Any, what: str) -> dict[str, str] | None:
    return None if v is None else as_strmap(v, what)


def _connect(v: Any) -> bool:
    """ServiceQuery.Connect is a bool in Consul; {"Enabled": bool} is accepted too."""
    if isinstance(v, dict):
        return as_bool(_struct(v, {"enabled"}, "Service.Connect").get("enabled"), "Service.Connect.Enabled")
    return as_bool(v, "Service.Connect")


def parse_query_body(data: Any) -> PreparedQueryRecord:
    """A create or update body as Consul's structs.PreparedQuery, sub-structs normalised to Consul's JSON shape."""
    f = _struct(data, _QUERY_FIELDS, "query")
    s = _struct(f.get("service"), _SERVICE_FIELDS, "Service")
    fo = _struct(s.get("failover"), _FAILOVER_FIELDS, "Service.Failover")
    targets = None
    if fo.get("targets") is not None:
        if not isinstance(fo["targets"], list):
            raise BadRequest("Request decode failed: Service.Failover.Targets: expected a list")
        targets = []
        for i, raw in enumerate(fo["targets"]):
            t = _struct(raw, _TARGET_FIELDS, f"Service.Failover.Targets[{i}]")
            targets.append({"Peer": as_str(t.get("peer"), "Peer"), "Datacenter": as_str(t.get("datacenter"), "Datacenter")})
    t = _struct(f.get("template"), _TEMPLATE_FIELDS, "Template")
    d = _struct(f.get("dns"), _DNS_FIELDS, "DNS")
    return PreparedQueryRecord(
        id=as_str(f.get("id"), "ID"),
        name=as_str(f.get("name"), "Name"),
        session=as_str(f.get("session"), "Session"),
        token=as_str(f.get("token"), "Token"),
        template={
            "Type": as_str(t.get("type"), "Template.Type"),
            "Regexp": as_str(t.get("regexp"), "Template.Regexp"),
            "RemoveEmptyTags": as_bool(t.get("removeemptytags"), "Template.RemoveEmptyTags"),
        },
        service={
            "Service": as_str(s.get("service"), "Service.Service"),
            "SamenessGroup": as_str(s.get("samenessgroup"), "Service.SamenessGroup"),
            "Failover": {
                "NearestN": as_int(fo.get("nearestn"), "Service.Failover.NearestN", lo=_INT_MIN),
                "Datacenters": _strlist_or_none(fo.get("datacenters"), "Service.Failover.Datacenters"),
                "Targets": targets,
            },
            "OnlyPassing": as_bool(s.get("onlypassing"), "Service.OnlyPassing"),
            "IgnoreCheckIDs": _strlist_or_none(s.get("ignorecheckids"), "Service.IgnoreCheckIDs"),
            "Near": as_str(s.get("near"), "Service.Near"),
            "Tags": _strlist_or_none(s.get("tags"), "Service.Tags"),
            "NodeMeta": _strmap_or_none(s.get("nodemeta"), "Service.NodeMeta"),
            "ServiceMeta": _strmap_or_none(s.get("servicemeta"), "Service.ServiceMeta"),
            "Connect": _connect(s.get("connect")),
            "Peer": as_str(s.get("peer"), "Service.Peer"),
        },
        dns={"TTL": as_str(d.get("ttl"), "DNS.TTL")},
    )


async def _body(request: Request) -> Any:
    raw = await read_limited(request.stream(), request.headers.get("content-length"), MAX_BODY, lambda n, d: f"Request body too large: {n} bytes")
    if not raw.strip():
        return None
    try:
        return decode_json(raw)
    except ValueError as err:
        raise BadRequest(f"Request decode failed: {err}") from None


_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
_EXEC_PARAMS = [
    *READ_PARAMS[:6],
    param("near", "Node to sort near; without network coordinates only moves that node first ('_agent': this agent)"),
    param("limit", "At most this many nodes", {"type": "integer"}),
    param("connect", "Only Connect-capable instances (proxies and native)", {"type": "boolean"}),
]


@router.post("/v1/query", summary="Create a prepared query", openapi_extra={"parameters": [DC, TOKEN], "requestBody": _BODY})
async def query_create(request: Request) -> Response:
    data = await _body(request)
    if data is None:
        raise BadRequest("Request decode failed: EOF")
    rec = parse_query_body(data)
    opts = opts_of(request)
    query_id = await agent_of(request).rpc("PreparedQuery.Apply", QueryApply("create", rec, opts.datacenter, opts.token))
    return json_response(request, {"ID": query_id})


async def _read(request: Request, method: str, args: Any) -> Response:
    reply = await agent_of(request).rpc(method, args)
    value = reply.value if reply.value is not None else []
    return reply_response(json_reply(value, is_pretty(request), headers=meta_headers(reply.meta)))


@router.get("/v1/query", summary="Every prepared query", openapi_extra={"parameters": READ_PARAMS[:6]})
async def query_list(request: Request) -> Response:
    return await _read(request, "PreparedQuery.List", QuerySpecific(opts=opts_of(request)))


@router.get("/v1/query/{query_id}", summary="One prepared query (a one-element list)", openapi_extra={"parameters": READ_PARAMS[:6]})
async def query_get(request: Request, query_id: str) -> Response:
    return await _read(request, "PreparedQuery.Get", QuerySpecific(id=query_id, opts=opts_of(request)))


@router.put("/v1/query/{query_id}", summary="Replace a prepared query", openapi_extra={"parameters": [DC, TOKEN], "requestBody": _BODY})
async def query_update(request: Request, query_id: str) -> Response:
    data = await _body(request)
    rec = parse_query_body(data) if data is not None else PreparedQueryRecord()
    rec.id = query_id  # the ID comes from the URL, not the body (Consul's preparedQueryUpdate)
    opts = opts_of(request)
    await agent_of(request).rpc("PreparedQuery.Apply", QueryApply("update", rec, opts.datacenter, opts.token))
    return Response(status_code=200)


@router.delete("/v1/query/{query_id}", summary="Delete a prepared query", openapi_extra={"parameters": [DC, TOKEN]})
async def query_delete(request: Request, query_id: str) -> Response:
    opts = opts_of(request)
    await agent_of(request).rpc("PreparedQuery.Apply", QueryApply("delete", PreparedQueryRecord(id=query_id), opts.datacenter, opts.token))
    return Response(status_code=200)


def _execute_args(request: Request, id_or_name: str) -> QueryExecute:
    """Consul's parseSource, parse, parseLimit and connect, with its messages."""
    q = query_of(request)
    agent = agent_of(request)
    args = QueryExecute(id_or_name, near=first(q, "near"), agent_node=agent.config.node_name, opts=opts_of(request))
    limit = first(q, "limit")
    if limit:
        try:
            args.limit = int(limit, 10)
        except ValueError:
            raise BadRequest(f'Bad limit: strconv.Atoi: parsing "{limit}": invalid syntax') from None
    connect = first(q, "connect")
    if connect:
        value = parse_bool(connect)
        if value is None:
            raise BadRequest(f"Error parsing 'connect' value: strconv.ParseBool: parsing \"{connect}\": invalid syntax")
        args.connect = value
    return args


@router.get("/v1/query/{query_id}/execute", summary="Run a prepared query (by ID or name)", openapi_extra={"parameters": _EXEC_PARAMS})
async def query_execute(request: Request, query_id: str) -> Response:
    return await _read(request, "PreparedQuery.Execute", _execute_args(request, query_id))


@router.get("/v1/query/{query_id}/explain", summary="The query a name resolves to, rendered", openapi_extra={"parameters": _EXEC_PARAMS})
async def query_explain(request: Request, query_id: str) -> Response:
    return await _read(request, "PreparedQuery.Explain", _execute_args(request, query_id))
