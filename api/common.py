"""Helpers shared by the FastAPI-served routers: query access, replies, the agent."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.responses import Response

from proconsul.api.lean import Reply, dump_json
from proconsul.api.headers import JSON
from proconsul.api.params import CONSISTENT, DC, STALE, TOKEN, param, query_options  # noqa: F401 (the routers' parameters)
from proconsul.server.structs import QueryOptions


def query_of(request: Request) -> dict[str, list[str]]:
    """The query string as name -> values, like the lean handlers see it."""
    out: dict[str, list[str]] = {}
    for k, v in request.query_params.multi_items():
        out.setdefault(k, []).append(v)
    return out


def agent_of(request: Request) -> Any:
    return request.app.state.agent


def opts_of(request: Request) -> QueryOptions:
    return query_options(query_of(request), request.headers)


def is_pretty(request: Request) -> bool:
    return agent_of(request).config.dev or "pretty" in request.query_params


def json_response(request: Request, obj: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    return reply_response(Reply(status, dump_json(obj, is_pretty(request)), [JSON, *(headers or [])]))


def reply_response(reply: Reply) -> Response:
    resp = Response(content=reply.body, status_code=reply.status)
    for k, v in reply.headers:
        resp.headers.append(k.decode("latin-1"), v.decode("latin-1"))
    return resp
