"""The lean read routes (hot paths), and what they need, kept free of FastAPI.

An agent answers these before FastAPI has been imported (it loads in the background at start, see
``lean.App``): service health and catalog reads, KV (``api/kv.py``), and the status endpoints that
health checks and start-up scripts poll.
"""

from __future__ import annotations

from typing import Any

from proconsul.api.headers import JSON, meta_headers
from proconsul.api.lean import LeanRequest, LeanRoute, Reply, json_reply
from proconsul.api.params import CONSISTENT, DC, STALE, TOKEN, catalog_query, param, query_options
from proconsul.server.endpoints.health import EncodedCatalogQuery
from proconsul.server.errors import BadRequest
from proconsul.server.shapes import EncodedJSON
from proconsul.server.structs import DatacenterRequest

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

    ``encoded``: the endpoint can answer JSON ready to send, compact or pretty (see EncodedCatalogQuery).
    A forwarded read still comes back as plain values.
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
        if encoded:
            query = EncodedCatalogQuery.of(query, pretty)
        reply = await agent.rpc(method, query)
        if isinstance(reply.value, EncodedJSON):
            return Reply(200, reply.value.body, [JSON, *meta_headers(reply.meta)])
        return json_reply(reply.value if reply.value is not None else [], pretty, headers=meta_headers(reply.meta))

    name_param = {"name": what.split()[-1], "in": "path", "required": True, "schema": {"type": "string"}}
    doc = {"get": {"summary": summary, "operationId": method.replace(".", "_"), "parameters": [name_param, *params], "responses": {"200": {"description": "OK"}, "400": {"description": "Bad request"}}}}
    return LeanRoute(prefix, ("GET",), handle, openapi_path, doc)


def health_routes(agent: Any) -> list[LeanRoute]:
    """/v1/health/service/<s> and /v1/health/connect/<s>."""
    return [
        read_route(agent, "/v1/health/service/", "Health.ServiceNodes", "service name", "/v1/health/service/{service}",
                   "Healthy (or all) instances of a service with their node and checks", SERVICE_PARAMS, encoded=True),
        read_route(agent, "/v1/health/connect/", "Health.ServiceNodes", "service name", "/v1/health/connect/{service}",
                   "Connect-capable instances (sidecar proxies, native) of a service", SERVICE_PARAMS, connect=True, encoded=True),
    ]


def catalog_routes(agent: Any) -> list[LeanRoute]:
    """/v1/catalog/service/<s> and /v1/catalog/connect/<s>."""
    return [
        read_route(agent, "/v1/catalog/service/", "Catalog.ServiceNodes", "service name", "/v1/catalog/service/{service}",
                   "Instances of a service", SERVICE_PARAMS),
        read_route(agent, "/v1/catalog/connect/", "Catalog.ServiceNodes", "service name", "/v1/catalog/connect/{service}",
                   "Connect-capable instances of a service", SERVICE_PARAMS, connect=True),
    ]


def status_routes(agent: Any) -> list[LeanRoute]:
    """/v1/status/leader and /v1/status/peers: the Raft leader's and voters' server addresses."""
    pretty_always = agent.config.dev

    def route(path: str, method: str, summary: str) -> LeanRoute:
        async def handle(req: LeanRequest) -> Reply:
            value = await agent.rpc(method, DatacenterRequest(query_options(req.query, req.headers)))
            return json_reply(value, pretty_always or "pretty" in req.query)

        doc = {"get": {"summary": summary, "operationId": method.replace(".", "_"), "parameters": [DC], "responses": {"200": {"description": "OK"}}}}
        return LeanRoute(path, ("GET",), handle, path, doc, exact=True)

    return [
        route("/v1/status/leader", "Status.Leader", "The Raft leader's server address"),
        route("/v1/status/peers", "Status.Peers", "Server addresses of the Raft voters"),
    ]
