"""The CLI's HTTP client: the CLI speaks only HTTP, to the local agent, like Consul's.

Errors become ``APIError`` with Consul's wording ("Unexpected response code:
500 (No cluster leader)"), so a command prints one line and exits non-zero.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import httpx  # imported where used: ~50-100 ms an agent's start need not pay

DEFAULT_ADDR = "127.0.0.1:8500"


class APIError(Exception):
    """An HTTP call failed; the message is what the user sees."""


def resolve_addr(flag: str | None) -> str:
    """-http-addr, else PROCONSUL_HTTP_ADDR, else CONSUL_HTTP_ADDR, else 127.0.0.1:8500; as a base URL."""
    addr = flag or os.environ.get("PROCONSUL_HTTP_ADDR") or os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDR
    if addr.startswith("unix://"):
        raise APIError(f"unix sockets are not supported: {addr}")
    if "://" not in addr:
        ssl_on = _env("HTTP_SSL").lower() in ("1", "true", "yes")
        addr = ("https://" if ssl_on else "http://") + addr
    return addr.rstrip("/")


def _env(name: str) -> str:
    """PROCONSUL_<name>, else CONSUL_<name>, else ""."""
    return os.environ.get(f"PROCONSUL_{name}") or os.environ.get(f"CONSUL_{name}") or ""


def tls_verify() -> Any:
    """What httpx verifies an https:// agent with: Consul's CONSUL_CACERT / CONSUL_CAPATH, CONSUL_CLIENT_CERT and
    CONSUL_CLIENT_KEY (a client certificate for verify_incoming), CONSUL_HTTP_SSL_VERIFY=false."""
    import ssl

    if _env("HTTP_SSL_VERIFY").lower() in ("0", "false", "no"):
        return False
    cafile, capath = _env("CACERT"), _env("CAPATH")
    cert, key = _env("CLIENT_CERT"), _env("CLIENT_KEY")
    if not (cafile or capath or cert):
        return True
    try:
        ctx = ssl.create_default_context(cafile=cafile or None, capath=capath or None)
        if cert:
            ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as err:
        raise APIError(f"Error loading TLS files for the HTTPS client: {err}") from None
    return ctx


class Client:
    """Just the calls the CLI makes."""

    def __init__(self, addr: str | None = None, token: str | None = None, datacenter: str | None = None) -> None:
        self.base = resolve_addr(addr)
        token = token or os.environ.get("PROCONSUL_HTTP_TOKEN") or os.environ.get("CONSUL_HTTP_TOKEN")
        self._headers = {"X-Consul-Token": token} if token else {}
        self._dc = datacenter
        import httpx

        verify = tls_verify() if self.base.startswith("https://") else True
        self._http = httpx.Client(timeout=httpx.Timeout(30.0, read=None), verify=verify)

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        """One call; a status outside ``ok`` (or no answer) raises APIError."""
        import httpx

        params = {k: v for k, v in (params or {}).items() if v is not None and v is not False}
        params = {k: ("" if v is True else v) for k, v in params.items()}
        if self._dc:
            params.setdefault("dc", self._dc)
        try:
            resp = self._http.request(method, self.base + path, params=params, content=content, headers=self._headers)
        except httpx.HTTPError as err:
            raise APIError(f"cannot reach the agent at {self.base}: {err}") from None
        if resp.status_code not in ok:
            body = resp.text.strip()
            raise APIError(f"Unexpected response code: {resp.status_code} ({body})")
        return resp

    @staticmethod
    def kv_path(key: str) -> str:
        return "/v1/kv/" + quote(key, safe="/")

    def kv_get(self, key: str, **params: Any) -> tuple[httpx.Response, Any]:
        """GET /v1/kv/<key>: (response, decoded JSON or None on 404)."""
        resp = self.request("GET", self.kv_path(key), params, ok=(200, 404))
        return resp, (resp.json() if resp.status_code == 200 else None)

    def kv_put(self, key: str, value: bytes, **params: Any) -> bool:
        return self.request("PUT", self.kv_path(key), params, content=value).json()

    def kv_delete(self, key: str, **params: Any) -> bool:
        return self.request("DELETE", self.kv_path(key), params).json()
