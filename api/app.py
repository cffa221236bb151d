"""The HTTP API an agent serves: lean handlers for the hot paths, FastAPI for the rest (loaded in the background)."""

from __future__ import annotations

from typing import Any

from proconsul.api import reads
from proconsul.api.headers import common_headers
from proconsul.api.kv import kv_route
from proconsul.api.lean import MAX_BODY, MAX_SNAPSHOT, App, LeanRoute

def route_table(app: App) -> list[tuple[str, frozenset[str]]]:
    """(path, methods) of every documented route the app serves, FastAPI's and lean ones.

    Tests walk this table (405s, the OpenAPI schema, later ACLs), so a new route
    cannot slip past them: add routers to fastapi_app.ROUTERS and lean routes to build_app.
    """
    from fastapi.routing import APIRoute

    from proconsul.api.fastapi_app import ROUTERS

    methods: dict[str, set[str]] = {}
    for router in ROUTERS:
        for r in router.routes:
            if isinstance(r, APIRoute) and r.include_in_schema:
                methods.setdefault(r.path, set()).update(r.methods)
    for _, route in app.lean:
        methods.setdefault(route.openapi_path, set()).update(route.methods)
    return [(path, frozenset(m)) for path, m in methods.items()]


def build_app(agent: Any) -> App:
    """The ASGI app an agent serves on its HTTP port; FastAPI's part starts loading now, off the loop."""
    lean: list[LeanRoute] = [
        kv_route(agent), *reads.health_routes(agent), *reads.catalog_routes(agent), *reads.status_routes(agent),
    ]

    def load_fastapi() -> Any:
        from proconsul.api.fastapi_app import build_fastapi

        return build_fastapi(agent, lean)

    cfg = agent.config
    common = common_headers(cfg.acl_default_policy if cfg.acl_enabled else "allow")
    max_body = max(MAX_BODY, cfg.kv_max_value_size, cfg.txn_max_req_len)
    default_token = (lambda: agent.config.acl_token_default) if cfg.acl_enabled else None
    return App(load_fastapi, lean, getattr(agent, "metrics", None), common, max_body, {"/v1/snapshot": MAX_SNAPSHOT}, default_token)
