"""Lean ASGI handling for the hot paths, and the top-level ASGI app.

FastAPI costs ~65 µs of CPU per request in routing and validation (DESIGN.md,
"Performance facts"); the hot endpoints (KV now; health/service, catalog/service
and check updates later) are plain ASGI handlers instead. ``App`` sends a
request to the first lean route whose prefix matches and everything else to
FastAPI, which still hosts the app and publishes the OpenAPI schema for both
(lean routes contribute their path items through ``LeanRoute.openapi``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs

from proconsul.server.codec import compact_json
from proconsul.api.errors import allow_header, method_not_allowed_body, status_for
from proconsul.api.headers import COMMON, JSON, TEXT
from proconsul.server.errors import ProconsulError, TooLarge

log = logging.getLogger("proconsul.http")

Headers = list[tuple[bytes, bytes]]
MAX_BODY = 4 * 1024 * 1024  # the largest body any non-snapshot endpoint takes (catalog, queries)
MAX_SNAPSHOT = 256 * 1024 * 1024  # what PUT /v1/snapshot takes


class LeanRequest:
    """The parts of an ASGI request a handler needs, parsed on demand."""

    __slots__ = ("scope", "_receive", "_body", "method", "path", "_query", "_headers")

    def __init__(self, scope: dict, receive: Callable[[], Awaitable[dict]], body: bytes | None = None) -> None:
        self.scope = scope
        self._receive = receive
        self._body = body  # the whole body when the server already has it (HTTPProtocol's lean path)
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self._query: dict[str, list[str]] | None = None
        self._headers: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_query(self.scope["query_string"])
        return self._query

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.scope["headers"]}
        return self._headers

    async def body(self, limit: int, too_large: Callable[[int, bool], str]) -> bytes:
        """The whole body, refused past ``limit`` (see ``read_limited``)."""
        body = self._body
        if body is None:
            return await read_limited(self._chunks(), self.headers.get("content-length"), limit, too_large)
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise TooLarge(too_large(int(declared), True))
        if len(body) > limit:
            raise TooLarge(too_large(len(body), False))
        return body

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return


def parse_query(qs: bytes) -> dict[str, list[str]]:
    """A query string as parse_qs(keep_blank_values=True) reads it; plain ones (no escapes) without it."""
    if not qs:
        return {}
    text = qs.decode("latin-1")
    if "%" in text or "+" in text or ";" in text:
        return parse_qs(text, keep_blank_values=True)
    out: dict[str, list[str]] = {}
    for part in text.split("&"):
        if part:
            name, _, value = part.partition("=")
            out.setdefault(name, []).append(value)
    return out


async def read_limited(
    chunks: AsyncIterator[bytes], declared: str | None, limit: int, too_large: Callable[[int, bool], str]
) -> bytes:
    """A request body, with TooLarge (413) before reading when Content-Length exceeds ``limit``, or
    as soon as a body without one does. ``too_large(size, declared)`` words the refusal."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(too_large(int(declared), True))
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise TooLarge(too_large(len(body), False))
    return bytes(body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: Headers = field(default_factory=list)


def dump_json(obj: Any, pretty: bool) -> bytes:
    """Consul's marshalJSON: compact, or 4-space indented with a trailing newline."""
    if pretty:
        return json.dumps(obj, indent=4).encode() + b"\n"
    return compact_json(obj)


def json_reply(obj: Any, pretty: bool, status: int = 200, headers: Headers | None = None) -> Reply:
    return Reply(status, dump_json(obj, pretty), [JSON, *(headers or [])])


def text_reply(status: int, text: str | bytes, headers: Headers | None = None) -> Reply:
    body = text.encode() if isinstance(text, str) else text
    return Reply(status, body, [TEXT, *(headers or [])] if body else list(headers or []))


async def send_reply(send: Callable[[dict], Awaitable[None]], reply: Reply, common: Headers = COMMON) -> None:
    headers = [*common, *reply.headers, (b"content-length", str(len(reply.body)).encode())]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


@dataclass
class LeanRoute:
    """A route served without FastAPI: every path under ``prefix`` (or ``prefix`` alone when ``exact``)."""

    prefix: str
    methods: tuple[str, ...]
    handler: Callable[[LeanRequest], Awaitable[Reply]]
    openapi_path: str
    openapi: dict[str, Any]
    exact: bool = False  # the path is ``prefix`` itself, not anything under it

    def matches(self, path: str) -> bool:
        return path == self.prefix if self.exact else path.startswith(self.prefix)

    async def reply(self, scope: dict, receive: Callable, body: bytes | None = None) -> Reply:
        """The answer to one request (errors become Consul's status codes, never an exception)."""
        req = LeanRequest(scope, receive, body)
        if req.method == "OPTIONS":
            return Reply(200, b"", [(b"allow", allow_header(self.methods).encode())])
        if req.method not in self.methods:
            return text_reply(405, method_not_allowed_body(req.method), [(b"allow", allow_header(self.methods).encode())])
        try:
            return await self.handler(req)
        except ProconsulError as err:
            return text_reply(status_for(err), str(err))
        except Exception:
            log.exception("%s %s failed", req.method, req.path)
            return text_reply(500, "An unexpected error occurred")

    async def __call__(self, scope: dict, receive: Callable, send: Callable, common: Headers = COMMON) -> None:
        await send_reply(send, await self.reply(scope, receive), common)


_TOKEN_HEADERS = (b"x-consul-token", b"authorization")


def with_default_token(scope: dict, token: str) -> dict:
    """The request as Consul's agent sees it: without a token of its own, it carries acl.tokens.default."""
    if not token or b"token=" in scope["query_string"] or any(k in _TOKEN_HEADERS for k, _ in scope["headers"]):
        return scope
    return {**scope, "headers": [*scope["headers"], (b"x-consul-token", token.encode("latin-1"))]}


class App:
    """The ASGI app uvicorn serves: lean routes first, FastAPI for the rest, Consul's common headers on all.

    FastAPI, its routers and their models take most of an agent's start-up, so ``load_fastapi`` runs on
    a thread of its own from the start: lean routes (KV, health and catalog reads, status) answer at
    once, and a request for anything else waits until FastAPI is there (a few hundred ms at most).
    """

    def __init__(
        self, load_fastapi: Callable[[], Any], lean_routes: list[LeanRoute], metrics: Any = None, common: Headers = COMMON,
        max_body: int = MAX_BODY, large_bodies: dict[str, int] | None = None,
        default_token: Callable[[], str] | None = None,
    ) -> None:
        self.lean = [(r.prefix, r) for r in lean_routes]
        self.metrics = metrics
        self.common = common
        self.max_body = max_body  # any request declaring more is refused before routing
        self.large_bodies = large_bodies or {}  # path -> its own, larger limit (snapshot restore)
        self.default_token = default_token  # with ACLs on: acl.tokens.default, for requests that carry none
        self._labels: dict[tuple[str, str], tuple] = {}  # (method, route) -> its metric labels, sorted
        self._fastapi: Any = None
        self._load_error: BaseException | None = None
        self._loaded = threading.Event()
        threading.Thread(target=self._load, args=(load_fastapi,), name="http-api-load", daemon=True).start()

    def _load(self, load_fastapi: Callable[[], Any]) -> None:
        try:
            self._fastapi = load_fastapi()
        except BaseException as err:  # every non-lean request will answer 500 and say why in the log
            self._load_error = err
            log.exception("loading the HTTP API failed")
        finally:
            self._loaded.set()

    @property
    def fastapi_app(self) -> Any:
        """The FastAPI app, waiting for it to load (for the schema and tests; requests never block the loop)."""
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error
        return self._fastapi

    @fastapi_app.setter
    def fastapi_app(self, value: Any) -> None:
        self._loaded.wait()
        self._fastapi = value

    async def loaded(self) -> None:
        """Return once FastAPI's part has loaded (or failed to), without blocking the loop."""
        if not self._loaded.is_set():
            await asyncio.get_running_loop().run_in_executor(None, self._loaded.wait)

    async def _api(self) -> Any:
        await self.loaded()
        if self._load_error is not None:
            raise self._load_error
        return self._fastapi

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await (await self._api())(scope, receive, send)
            return
        route = self.lean_route(scope["path"])
        if route is not None:
            await send_reply(send, await self.lean_reply(route, scope, receive), self.common)
            return
        started = time.perf_counter()
        if self.default_token is not None:
            scope = with_default_token(scope, self.default_token())
        route_name = None
        try:
            refusal = self._too_large(scope)
            if refusal is not None:
                await send_reply(send, text_reply(413, refusal), self.common)
                return

            async def send_with_common_headers(message: dict) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*self.common, *message.get("headers", [])]}
                await send(message)

            await (await self._api())(scope, receive, send_with_common_headers)
            matched = scope.get("route")
            route_name = getattr(matched, "path", None) or "unmatched"
        finally:
            if route_name is not None:
                self._observe(scope["method"], route_name, started)

    def lean_route(self, path: str) -> LeanRoute | None:
        """The lean route that serves ``path``, if one does."""
        for _, route in self.lean:
            if route.matches(path):
                return route
        return None

    async def lean_reply(self, route: LeanRoute, scope: dict, receive: Callable, body: bytes | None = None) -> Reply:
        """A lean route's answer, with the default token and the request metric (what ``__call__`` sends);
        ``body``: the whole request body, when the caller already has it."""
        started = time.perf_counter()
        if self.default_token is not None:
            scope = with_default_token(scope, self.default_token())
        try:
            return await route.reply(scope, receive, body)
        finally:
            self._observe(scope["method"], route.openapi_path, started)

    def _observe(self, method: str, route_name: str, started: float) -> None:
        if self.metrics is not None:
            # Consul's consul.api.http sample, labelled by method and route pattern (not the raw path).
            labels = self._labels.get((method, route_name))
            if labels is None:
                labels = self._labels[(method, route_name)] = (("method", method), ("path", route_name))
            self.metrics.observe("api.http", (time.perf_counter() - started) * 1000.0, labels)

    def _too_large(self, scope: dict) -> str | None:
        """The refusal for a request whose declared body is past the limit (bodies that declare no length
        are bounded by each endpoint as it reads them)."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                limit = self.large_bodies.get(scope["path"], self.max_body)
                if value.isdigit() and int(value) > limit:
                    return f"Request body too large: {int(value)} bytes, max {limit}"
                return None
        return None
