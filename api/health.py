"""/v1/health: Consul's health endpoints; service health (a hot path) is served by a lean handler."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.api.common import CONSISTENT, DC, STALE, TOKEN, agent_of, is_pretty, param, query_of, reply_response
from proconsul.api.headers import JSON, meta_headers
from proconsul.api.lean import LeanRequest, LeanRoute, Reply, json_reply
from proconsul.api.params import catalog_query
from proconsul.server.endpoints.health import EncodedCatalogQuery
from proconsul.server.errors import BadRequest
from proconsul.server.shapes import EncodedJSON

router = APIRouter(tags=["health"])

READ_PARAMS = [
    DC, TOKEN, STALE, CONSISTENT,
    param("index", "Blocking query: wait for an index greater than this", {"type": "integer", "minimum": 0}),
    param("wait", "Blocking query: maximum wait, a Go duration"),
    param("filter", "Filter expression (Consul's filtering language)"),
    param("node-meta", "key:value the node's metadata must have; repeatable"),
]
SERVICE_PARAMS = [
    *READ_PARAMS,
    param("tag", "A tag the instance must have; repeatable"),
    param("passing", "Only instances whose every check passes", {"type": "boolean"}),
    param("near", "Accepted and ignored (no network coordinates)"),
]


def read_route(
    agent: Any, prefix: str, method: str, what: str, openapi_path: str, summary: str, params: list,
    connect: bool = False, encoded: bool = False,
) -> LeanRoute:
    """A lean GET route for one catalog or health read keyed by the path's last segment.

    ``encoded``: the endpoint can answer compact JSON ready to send (see EncodedCatalogQuery); asked
    for unless the reply is to be pretty. A forwarded read still comes back as plain values.
    """
    pretty_always = agent.config.dev

    async def handle(req: LeanRequest) -> Reply:
        name = req.path[len(prefix) :]
        if not name:
            raise BadRequest(f"Missing {what}")
        q = req.query
        pretty = pretty_always or "pretty" in q
        query = catalog_query(name, q, req.headers)
        query.connect = connect
        if encoded and not pretty:
            query = EncodedCatalogQuery.of(query)
        reply = await agent.rpc(method, query)
        if isinstance(reply.value, EncodedJSON):
            return Reply(200, reply.value.body, [JSON, *meta_headers(reply.meta)])
        return json_reply(reply.value if reply.value is not None else [], pretty, headers=meta_headers(reply.meta))

    name_param = {"name": what.split()[-1], "in": "path", "required": True, "schema": {"type": "string"}}
    doc = {"get": {"summary": summary, "operationId": method.replace(".", "_"), "parameters": [name_param, *params], "responses": {"200": {"description": "OK"}, "400": {"description": "Bad request"}}}}
    return LeanRoute(prefix, ("GET",), handle, openapi_path, doc)


def lean_routes(agent: Any) -> list[LeanRoute]:
    return [
        read_route(agent, "/v1/health/service/", "Health.ServiceNodes", "service name", "/v1/health/service/{service}",
                   "Healthy (or all) instances of a service with their node and checks", SERVICE_PARAMS, encoded=True),
        read_route(agent, "/v1/health/connect/", "Health.ServiceNodes", "service name", "/v1/health/connect/{service}",
                   "Connect-capable instances (sidecar proxies, native) of a service", SERVICE_PARAMS, connect=True, encoded=True),
    ]


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
