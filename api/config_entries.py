"""/v1/config: Consul's config entries API (agent/config_endpoint.go).

``PUT /v1/config`` decodes the body the way Consul's DecodeConfigEntry does —
``Kind`` picks the struct, field names match case-insensitively or by their
snake_case alias, values are weakly typed, and unknown keys are refused — and
answers ``true``/``false`` (``?cas=`` lost). ``DELETE`` answers ``{}``, or the
``Deleted`` boolean with ``?cas=``, as Consul does for backward compatibility.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.api.common import DC, TOKEN, agent_of, is_pretty, json_response, opts_of, param, query_of, reply_response
from proconsul.api.headers import meta_headers
from proconsul.api.health import READ_PARAMS
from proconsul.api.lean import json_reply, read_limited
from proconsul.api.params import first, has, parse_uint
from proconsul.api.decode import loads as decode_json
from proconsul.server import config_entries as ce
from proconsul.server.endpoints.config_entry import ConfigEntryApply, ConfigEntryDelete, ConfigEntryQuery
from proconsul.server.errors import BadRequest, NotFound, StoreError

router = APIRouter(tags=["config"])
MAX_BODY = 1024 * 1024
_CAS = param("cas", "Check-and-set: write only if the entry's ModifyIndex is this (0: only if absent)", {"type": "integer", "minimum": 0})
_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
CONFIG_ENTRY_NOT_FOUND = "Config entry not found"  # agent.ConfigEntryNotFoundErr


def _cas(request: Request) -> int | None:
    q = query_of(request)
    if not has(q, "cas") or first(q, "cas") == "":
        return None
    return parse_uint(first(q, "cas"), "cas")


@router.put("/v1/config", summary="Create or update a config entry", openapi_extra={"parameters": [DC, TOKEN, _CAS], "requestBody": _BODY})
async def config_apply(request: Request) -> Response:
    raw = await read_limited(request.stream(), request.headers.get("content-length"), MAX_BODY, lambda n, d: f"Request body too large: {n} bytes")
    try:
        data = decode_json(raw) if raw.strip() else None
    except ValueError as err:
        raise BadRequest(f"Request decoding failed: {err}") from None
    try:
        entry = ce.decode_entry(data)
    except StoreError as err:
        raise BadRequest(f"Request decoding failed: {err}") from None
    opts = opts_of(request)
    written = await agent_of(request).rpc("ConfigEntry.Apply", ConfigEntryApply(entry, _cas(request), opts.datacenter, opts.token))
    return json_response(request, written)


@router.get("/v1/config/{kind}", summary="Every config entry of a kind", openapi_extra={"parameters": READ_PARAMS[:7]})
async def config_list(request: Request, kind: str) -> Response:
    q = query_of(request)
    reply = await agent_of(request).rpc("ConfigEntry.List", ConfigEntryQuery(kind, filter=first(q, "filter"), opts=opts_of(request)))
    return reply_response(json_reply(reply.value, is_pretty(request), headers=meta_headers(reply.meta)))


@router.get("/v1/config/{kind}/{name}", summary="One config entry", openapi_extra={"parameters": READ_PARAMS[:6]})
async def config_get(request: Request, kind: str, name: str) -> Response:
    reply = await agent_of(request).rpc("ConfigEntry.Get", ConfigEntryQuery(kind, name, opts=opts_of(request)))
    if reply.value is None:
        raise NotFound(f'{CONFIG_ENTRY_NOT_FOUND} for "{kind}" / "{name}"')
    return reply_response(json_reply(reply.value, is_pretty(request), headers=meta_headers(reply.meta)))


@router.delete("/v1/config/{kind}/{name}", summary="Delete a config entry", openapi_extra={"parameters": [DC, TOKEN, _CAS]})
async def config_delete(request: Request, kind: str, name: str) -> Response:
    opts = opts_of(request)
    cas = _cas(request)
    deleted = await agent_of(request).rpc("ConfigEntry.Delete", ConfigEntryDelete(kind, name, cas, opts.datacenter, opts.token))
    result: Any = deleted if cas is not None else {}
    return json_response(request, result)
