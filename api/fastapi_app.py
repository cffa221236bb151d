"""FastAPI hosting Consul's /v1 routes other than the lean ones, with Consul's error answers and one OpenAPI schema.

Imported off the event loop while the agent already serves its lean routes (see ``lean.App``): FastAPI
and the routers' models are most of an agent's start-up time.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from proconsul.agent.version import __version__
from proconsul.api import acl as acl_api
from proconsul.api import agent as agent_api
from proconsul.api import catalog, health, internal, operator, session, snapshot, txn, ui
from proconsul.api import connect_ca as connect_ca_api
from proconsul.api import config_entries as config_entries_api
from proconsul.api import intentions as intentions_api
from proconsul.api import event as event_api
from proconsul.api import query as query_api
from proconsul.api.common import reply_response
from proconsul.api.errors import allow_header, method_not_allowed_body, not_found_body, status_for
from proconsul.api.lean import LeanRoute, Reply, text_reply
from proconsul.server.errors import ProconsulError


ROUTERS = (
    operator.router,
    snapshot.router,
    txn.router,
    agent_api.router,
    catalog.router,
    health.router,
    session.router,
    event_api.router,
    query_api.router,
    internal.router,
    connect_ca_api.router,
    intentions_api.router,
    config_entries_api.router,
    acl_api.router,
)


def build_fastapi(agent: Any, lean: list[LeanRoute]) -> FastAPI:
    """The FastAPI app behind the lean routes; its OpenAPI schema covers both."""
    api = FastAPI(
        title="proconsul",
        version=__version__,
        description="Consul-compatible HTTP API: KV, transactions, status, operator, snapshots.",
        docs_url=None,  # Swagger UI loads from a CDN; the schema itself is served
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    api.state.agent = agent
    for router in ROUTERS:
        api.include_router(router)

    ui.mount(api, agent.config.ui)

    @api.exception_handler(ProconsulError)
    async def domain_error(request: Request, err: ProconsulError) -> Response:
        return reply_response(text_reply(status_for(err), str(err)))

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> Response:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return reply_response(text_reply(400, f"Invalid request: {reasons}"))

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        if err.status_code == 405:
            allow = (err.headers or {}).get("Allow", "")
            header = [(b"allow", allow_header([m.strip() for m in allow.split(",") if m.strip()]).encode())]
            if request.method == "OPTIONS":
                return reply_response(Reply(200, b"", header))
            return reply_response(text_reply(405, method_not_allowed_body(request.method), header))
        if err.status_code == 404:
            return reply_response(text_reply(404, not_found_body(request.url.path)))
        return reply_response(text_reply(err.status_code, str(err.detail)))

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
            for route in lean:
                schema["paths"][route.openapi_path] = route.openapi
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    return api
