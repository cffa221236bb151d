"""The web UI: static files shipped in the package (api/webui/), served at /ui/ as Consul's agent does.

The files are plain HTML, CSS and ES modules (no build step, nothing from a CDN),
read once when the app is built. They need no token, like Consul's UI: every
datum they show comes through the /v1 API with the user's own token. Routes are
left out of the OpenAPI schema and the route table, so neither the schema nor the
ACL route walk sees them. With the UI off, ``/`` keeps a plain-text answer and
``/ui/`` is a 404, as in Consul.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from starlette.responses import Response

from proconsul.api.common import reply_response
from proconsul.api.errors import not_found_body
from proconsul.api.lean import Reply, text_reply

PREFIX = "/ui/"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Pages load only their own files; nothing inline, nothing from elsewhere.
_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
]
DISABLED = "proconsul agent: UI disabled. To enable, set ui_config.enabled=true in the agent configuration (or start it with -ui) and restart."


def ui_files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, content type) of every file in the package's webui folder."""
    root = resources.files("proconsul.api.webui")
    out: dict[str, tuple[bytes, str]] = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            out[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return out


def _redirect(location: str) -> Response:
    return reply_response(Reply(301, b"", [(b"location", location.encode())]))


def mount(api: FastAPI, enabled: bool) -> None:
    """``/`` (redirect to the UI, or a plain answer when it is off) and, when on, ``/ui`` and ``/ui/<file>``."""

    @api.get("/", include_in_schema=False)
    async def root() -> Response:
        return _redirect(PREFIX) if enabled else reply_response(text_reply(200, DISABLED))

    if not enabled:
        return
    files = ui_files()

    @api.api_route("/ui", methods=["GET", "HEAD"], include_in_schema=False)
    async def ui_bare() -> Response:
        return _redirect(PREFIX)

    @api.api_route("/ui/{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def ui_file(name: str) -> Response:
        found = files.get(name or "index.html")
        if found is None:
            return reply_response(text_reply(404, not_found_body(PREFIX + name)))
        body, ctype = found
        return reply_response(Reply(200, body, [(b"content-type", ctype.encode()), *_HEADERS]))
