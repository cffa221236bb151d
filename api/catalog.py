"""/v1/catalog: Consul's catalog endpoints; catalog/service (a hot path) is served by a lean handler."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.agent.structs import parse_service
from proconsul.api.decode import loads as decode_json, as_str, as_strmap, check_unknown, fold
from proconsul.api.common import DC, TOKEN, agent_of, is_pretty, json_response, opts_of, query_of, reply_response
from proconsul.api.headers import meta_headers
from proconsul.api.reads import READ_PARAMS, SERVICE_PARAMS
from proconsul.api.lean import json_reply, read_limited
from proconsul.api.params import catalog_query
from proconsul.server.commands import CheckRecord, DeregisterRequest, RegisterRequest
from proconsul.server.errors import BadRequest
from proconsul.server.structs import CatalogQuery, DeregisterArgs, RegisterArgs

router = APIRouter(tags=["catalog"])
MAX_BODY = 4 * 1024 * 1024


async def _body(request: Request) -> Any:
    raw = await read_limited(request.stream(), request.headers.get("content-length"), MAX_BODY, lambda n, d: f"Request body too large: {n} bytes")
    try:
        return decode_json(raw) if raw else None
    except ValueError as err:
        raise BadRequest(f"Request decode failed: {err}") from None


_REGISTER_FIELDS = {
    "datacenter", "id", "node", "address", "taggedaddresses", "nodemeta", "service", "check", "checks",
    "skipnodeupdate", "token",
}
_CATALOG_CHECK_FIELDS = {
    "node", "checkid", "name", "status", "notes", "output", "serviceid", "servicename", "servicetags", "type",
    "interval", "timeout", "exposedport", "definition", "createindex", "modifyindex",
}
_DEREGISTER_FIELDS = {"datacenter", "node", "serviceid", "checkid", "token", "address"}


def parse_catalog_check(data: Any, node: str) -> CheckRecord:
    """A check in a catalog registration: Consul's structs.HealthCheck."""
    if isinstance(data, dict):
        check_unknown(data, _CATALOG_CHECK_FIELDS, "Check", strict=False)
    f = fold(data, "Check")
    definition = f.get("definition") or {}
    if not isinstance(definition, dict):
        raise BadRequest("Request decode failed: Check.Definition: expected an object")
    check_node = as_str(f.get("node"), "Check.Node")
    if check_node and check_node.lower() != node.lower():
        raise BadRequest(f'Check node "{check_node}" does not match the registration\'s node "{node}"')
    return CheckRecord(
        check_id=as_str(f.get("checkid") or f.get("id"), "Check.CheckID"),
        name=as_str(f.get("name"), "Check.Name"),
        status=as_str(f.get("status"), "Check.Status"),
        notes=as_str(f.get("notes"), "Check.Notes"),
        output=as_str(f.get("output"), "Check.Output"),
        service_id=as_str(f.get("serviceid"), "Check.ServiceID"),
        type=as_str(f.get("type"), "Check.Type"),
        interval=as_str(f.get("interval"), "Check.Interval"),
        timeout=as_str(f.get("timeout"), "Check.Timeout"),
        definition=dict(definition),
    )


def parse_register(data: Any) -> RegisterRequest:
    """PUT /v1/catalog/register's body (Consul's structs.RegisterRequest)."""
    f = fold(data, "registration")
    check_unknown(data, _REGISTER_FIELDS, "registration", strict=False)
    node = as_str(f.get("node"), "Node")
    req = RegisterRequest(
        node=node,
        id=as_str(f.get("id"), "ID"),
        address=as_str(f.get("address"), "Address"),
        datacenter=as_str(f.get("datacenter"), "Datacenter"),
        tagged_addresses=as_strmap(f.get("taggedaddresses"), "TaggedAddresses"),
        node_meta=as_strmap(f.get("nodemeta"), "NodeMeta"),
        skip_node_update=bool(f.get("skipnodeupdate")),
    )
    if f.get("service") is not None:
        svc = fold(f["service"], "Service")
        if not svc.get("service") and not svc.get("name") and svc.get("id"):
            raise BadRequest("Must provide service name with ID")
        if not svc.get("service") and not svc.get("name"):
            raise BadRequest("Must provide service name")
        req.service = parse_service({k: v for k, v in f["service"].items() if k.lower() not in ("check", "checks")}).service
    checks = []
    if f.get("check") is not None:
        checks.append(f["check"])
    if f.get("checks") is not None:
        if not isinstance(f["checks"], list):
            raise BadRequest("Request decode failed: Checks: expected a list")
        checks.extend(f["checks"])
    req.checks = [parse_catalog_check(c, node) for c in checks]
    return req


@router.put("/v1/catalog/register", summary="Register a node, service and checks directly in the catalog",
            openapi_extra={"parameters": [DC, TOKEN], "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}})
async def catalog_register(request: Request) -> Response:
    data = await _body(request)
    if data is None:
        raise BadRequest("Request decode failed: empty body")
    req = parse_register(data)
    opts = opts_of(request)
    await agent_of(request).rpc("Catalog.Register", RegisterArgs(req, opts.datacenter or req.datacenter, opts.token))
    return json_response(request, True)


@router.put("/v1/catalog/deregister", summary="Remove a node, a service or a check from the catalog",
            openapi_extra={"parameters": [DC, TOKEN], "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}})
async def catalog_deregister(request: Request) -> Response:
    data = await _body(request)
    if data is None:
        raise BadRequest("Request decode failed: empty body")
    f = fold(data, "deregistration")
    check_unknown(data, _DEREGISTER_FIELDS, "deregistration", strict=False)
    req = DeregisterRequest(
        node=as_str(f.get("node"), "Node"),
        service_id=as_str(f.get("serviceid"), "ServiceID"),
        check_id=as_str(f.get("checkid"), "CheckID"),
    )
    opts = opts_of(request)
    await agent_of(request).rpc("Catalog.Deregister", DeregisterArgs(req, opts.datacenter or as_str(f.get("datacenter"), "Datacenter"), opts.token))
    return json_response(request, True)


@router.get("/v1/catalog/datacenters", summary="Known datacenters")
async def catalog_datacenters(request: Request) -> Response:
    return json_response(request, await agent_of(request).rpc("Catalog.ListDatacenters", CatalogQuery()))


async def _read(request: Request, method: str, name: str = "", empty: Any = None) -> Response:
    query = catalog_query(name, query_of(request), request.headers)
    reply = await agent_of(request).rpc(method, query)
    value = reply.value if reply.value is not None else empty
    return reply_response(json_reply(value, is_pretty(request), headers=meta_headers(reply.meta)))


@router.get("/v1/catalog/nodes", summary="Every node", openapi_extra={"parameters": [*READ_PARAMS, SERVICE_PARAMS[-1]]})
async def catalog_nodes(request: Request) -> Response:
    return await _read(request, "Catalog.ListNodes", empty=[])


@router.get("/v1/catalog/services", summary="Service names with their tags", openapi_extra={"parameters": READ_PARAMS})
async def catalog_services(request: Request) -> Response:
    return await _read(request, "Catalog.ListServices", empty={})


@router.get("/v1/catalog/node/{node}", summary="A node and its services (map by ID)", openapi_extra={"parameters": READ_PARAMS})
async def catalog_node(request: Request, node: str) -> Response:
    return await _read(request, "Catalog.NodeServices", node)


@router.get("/v1/catalog/node-services/{node}", summary="A node and its services (list)", openapi_extra={"parameters": READ_PARAMS})
async def catalog_node_services(request: Request, node: str) -> Response:
    return await _read(request, "Catalog.NodeServiceList", node)
