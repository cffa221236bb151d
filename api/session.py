"""/v1/session: Consul's sessions API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.api.common import DC, TOKEN, agent_of, is_pretty, json_response, opts_of, param, query_of, reply_response
from proconsul.api.decode import loads as decode_json, as_duration, as_str, as_strlist, check_unknown, fold
from proconsul.api.headers import meta_headers
from proconsul.api.health import READ_PARAMS
from proconsul.api.lean import json_reply, read_limited
from proconsul.server.commands import SessionRecord
from proconsul.server.errors import BadRequest, NotFound
from proconsul.server.structs import SessionApply, SessionQuery

router = APIRouter(tags=["session"])
_CREATE_FIELDS = {"id", "name", "node", "lockdelay", "behavior", "ttl", "checks", "nodechecks", "servicechecks", "createindex", "modifyindex"}
_SERVICE_CHECK_FIELDS = {"id", "namespace"}


def parse_create(data: Any, default_node: str) -> SessionRecord:
    """The create body: Consul's structs.Session, with its defaults (the agent's node, serfHealth, 15 s lock delay)."""
    if data is None:
        data = {}
    check_unknown(data if isinstance(data, dict) else {}, _CREATE_FIELDS, "session", strict=False)
    f = fold(data, "session")
    lock_delay = f.get("lockdelay")
    delay_ns = 15_000_000_000 if lock_delay is None else int(round(as_duration(lock_delay, "LockDelay") * 1e9))
    if delay_ns < 1000:
        delay_ns *= 1_000_000_000  # Consul's lockDelayMinThreshold: anything under 1000 ns means seconds
    service_checks = []
    for i, item in enumerate(f.get("servicechecks") or []):
        check_unknown(item if isinstance(item, dict) else {}, _SERVICE_CHECK_FIELDS, "ServiceChecks", strict=False)
        service_checks.append(as_str(fold(item, f"ServiceChecks[{i}]").get("id"), f"ServiceChecks[{i}].ID"))
    # Consul pre-fills both lists with serfHealth, decodes the body over them, then fixes up
    # (fixupEmptySessionChecks): "Checks":[] means no checks at all; a lone serfHealth in Checks, or
    # empty NodeChecks, drops Checks.
    node_checks = as_strlist(f["nodechecks"], "NodeChecks") if "nodechecks" in f else ["serfHealth"]
    checks = as_strlist(f["checks"], "Checks") if "checks" in f else ["serfHealth"]
    if not checks:
        node_checks = []
    elif checks == ["serfHealth"] or not node_checks:
        checks = []
    effective = list(dict.fromkeys([*node_checks, *checks]))
    return SessionRecord(
        id="",
        name=as_str(f.get("name"), "Name"),
        node=as_str(f.get("node"), "Node") or default_node,
        lock_delay=delay_ns,
        behavior=as_str(f.get("behavior"), "Behavior"),
        ttl=as_str(f.get("ttl"), "TTL"),
        node_checks=effective,
        service_checks=service_checks,
    )


async def _body(request: Request) -> Any:
    raw = await read_limited(request.stream(), request.headers.get("content-length"), 64 * 1024, lambda n, d: f"Request body too large: {n} bytes")
    if not raw.strip():
        return None
    try:
        return decode_json(raw)
    except ValueError as err:
        raise BadRequest(f"Request decode failed: {err}") from None


_BODY = {"content": {"application/json": {"schema": {"type": "object"}}}}


@router.put("/v1/session/create", summary="Create a session", openapi_extra={"parameters": [DC, TOKEN], "requestBody": _BODY})
async def session_create(request: Request) -> Response:
    agent = agent_of(request)
    rec = parse_create(await _body(request), agent.config.node_name)
    opts = opts_of(request)
    session_id = await agent.rpc("Session.Apply", SessionApply("create", rec, opts.datacenter, opts.token))
    return json_response(request, {"ID": session_id})


@router.put("/v1/session/destroy/{session_id}", summary="Destroy a session, releasing (or deleting) its keys", openapi_extra={"parameters": [DC, TOKEN]})
async def session_destroy(request: Request, session_id: str) -> Response:
    opts = opts_of(request)
    await agent_of(request).rpc("Session.Apply", SessionApply("destroy", SessionRecord(id=session_id), opts.datacenter, opts.token))
    return json_response(request, True)


@router.put("/v1/session/renew/{session_id}", summary="Renew a session's TTL", openapi_extra={"parameters": [DC, TOKEN]})
async def session_renew(request: Request, session_id: str) -> Response:
    result = await agent_of(request).rpc("Session.Renew", SessionQuery(id=session_id, opts=opts_of(request)))
    if result is None:
        raise NotFound(f"Session id '{session_id}' not found")
    return json_response(request, result)


async def _read(request: Request, method: str, query: SessionQuery) -> Response:
    reply = await agent_of(request).rpc(method, query)
    value = reply.value if reply.value is not None else []
    return reply_response(json_reply(value, is_pretty(request), headers=meta_headers(reply.meta)))


@router.get("/v1/session/info/{session_id}", summary="One session (a one-element list, empty when unknown)", openapi_extra={"parameters": READ_PARAMS[:6]})
async def session_info(request: Request, session_id: str) -> Response:
    return await _read(request, "Session.Get", SessionQuery(id=session_id, opts=opts_of(request)))


@router.get("/v1/session/node/{node}", summary="The sessions on a node", openapi_extra={"parameters": READ_PARAMS[:6]})
async def session_node(request: Request, node: str) -> Response:
    return await _read(request, "Session.NodeSessions", SessionQuery(node=node, opts=opts_of(request)))


@router.get("/v1/session/list", summary="Every session", openapi_extra={"parameters": READ_PARAMS[:6]})
async def session_list(request: Request) -> Response:
    return await _read(request, "Session.List", SessionQuery(opts=opts_of(request)))
