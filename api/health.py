"""/v1/health: Consul's health endpoints; service health (a hot path) is served by a lean handler."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.api.common import agent_of, is_pretty, query_of, reply_response
from proconsul.api.headers import meta_headers
from proconsul.api.lean import json_reply
from proconsul.api.params import catalog_query
from proconsul.api.reads import READ_PARAMS, SERVICE_PARAMS  # noqa: F401 (the other routers' parameters)
from proconsul.server.errors import BadRequest

router = APIRouter(tags=["health"])

async def _read(request: Request, method: str, name: str, what: str) -> Response:
    if not name:
        raise BadRequest(f"Missing {what}")
    query = catalog_query(name, query_of(request), request.headers)
    reply = await agent_of(request).rpc(method, query)
    return reply_response(json_reply(reply.value if reply.value is not None else [], is_pretty(request), headers=meta_headers(reply.meta)))


@router.get("/v1/health/node/{node}", summary="Every check on a node", openapi_extra={"parameters": READ_PARAMS})
async def health_node(request: Request, node: str) -> Response:
    return await _read(request, "Health.NodeChecks", node, "node name")


@router.get("/v1/health/checks/{service}", summary="Every check of a service's instances", openapi_extra={"parameters": READ_PARAMS})
async def health_checks(request: Request, service: str) -> Response:
    return await _read(request, "Health.ServiceChecks", service, "service name")


@router.get("/v1/health/state/{state}", summary="Checks in one state: passing, warning, critical or any", openapi_extra={"parameters": READ_PARAMS})
async def health_state(request: Request, state: str) -> Response:
    return await _read(request, "Health.ChecksInState", state, "check state")
