"""The sidecar proxy's HTTP/1.1 inbound path: Consul's L7 intentions enforced per request (Envoy's RBAC HTTP filter).

After the mTLS handshake the caller's service is known; for a destination whose
protocol is ``http`` each request on the connection is parsed (h11: SERVER role
toward the caller, CLIENT role toward the local app) and judged by
``decide(method, path, headers)``. An allowed request goes to the app over one
connection per caller connection, dialled on the first allowed request and kept
alive; a denied one is answered ``403 RBAC: access denied`` as Envoy does, its
body read and dropped, so the caller's connection stays usable.

Invariants:

* Requests are served one at a time, in order: pipelined ones wait in h11's
  buffer, which pauses until the current response is done.
* Bodies stream both ways at once (an app that answers while it reads would
  otherwise deadlock against full socket buffers) and every write awaits
  ``drain()``, so memory stays at a read chunk plus the transports' buffers.
* A connection carries another request only when its h11 side finished the
  cycle cleanly (DONE/DONE). Anything else (HTTP/1.0, ``Connection: close``, an
  early answer to an unread body, an aborted exchange) closes the caller's
  connection, or drops the app's one, which is dialled again when needed.
* ``Expect: 100-continue`` is answered by the proxy once the request is allowed
  and the app dialled; a refused request that awaits it gets ``Connection:
  close``, since its client may never send the body.
* A response cut short by the app aborts the caller's connection, so a
  close-delimited body cannot pass as complete.
* Network and protocol errors end the session; ``serve_http`` never raises them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import h11

from proconsul.server.config_entries import WILDCARD
from proconsul.server.intentions import intention_string

log = logging.getLogger("proconsul.proxy.l7")

# (method, request target with its query, headers with lower-cased names) -> (allowed, reason)
Decide = Callable[[str, str, list[tuple[str, str]]], tuple[bool, str]]
OpenApp = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
OnRequest = Callable[[int, float, bool], None]

READ_CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024  # Envoy's max_request_headers_kb defaults to 60; h11's own limit is 16 KiB
DENIED_BODY = b"RBAC: access denied"
UNREACHABLE_BODY = b"upstream connect error"
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection"})
_NETWORK_ERRORS = (OSError, h11.ProtocolError)  # ConnectionError and ssl.SSLError are OSErrors


class _UpstreamError(Exception):
    """The app's side failed: unreachable after dialling, closed, or spoke bad HTTP."""


@dataclass
class _Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h11.Connection


async def serve_http(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    open_app: OpenApp,
    decide: Decide,
    on_request: OnRequest | None = None,
) -> tuple[int, int]:
    """Serves one caller connection, judging every request with ``decide`` (Envoy's HTTP RBAC filter); returns (bytes in, bytes out)."""
    session = _Session(reader, writer, open_app, decide, on_request)
    await session.run()
    return session.received, session.sent


class _Session:
    """One caller connection and, once a request is allowed, its app connection."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        open_app: OpenApp, decide: Decide, on_request: OnRequest | None,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.open_app, self.decide, self.on_request = open_app, decide, on_request
        self.client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.app: _Upstream | None = None
        self.received = 0
        self.sent = 0
        self.status = 0  # the status of the response head last sent to the caller
        self.switched = False

    async def run(self) -> None:
        try:
            while await self._cycle():
                self.client.start_next_cycle()
        except h11.RemoteProtocolError as err:
            await self._bad_request(err)
        except (*_NETWORK_ERRORS, _UpstreamError) as err:
            log.debug("l7: connection ended: %r", err)
        finally:
            self._drop_app()
            if self.client.our_state is h11.SEND_BODY:
                self.writer.transport.abort()  # a response cut short must not look complete
            else:
                self.writer.close()

    async def _cycle(self) -> bool:
        """One request and its response; True if the caller's connection may carry another."""
        event = await self._client_event()
        if not isinstance(event, h11.Request):
            return False
        start = time.monotonic()
        self.status = 0
        method = event.method.decode("ascii")
        target = event.target.decode("latin-1")
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers]
        allowed, reason = self.decide(method, target, headers)
        try:
            if allowed:
                await self._forward(event)
            else:
                log.debug("l7: denied %s %s: %s", method, target, reason)
                await self._refuse(403, DENIED_BODY, event.method == b"HEAD")
        finally:
            # An exchange cut short is reported too, with the status the caller saw.
            if self.on_request is not None and self.status:
                self.on_request(self.status, time.monotonic() - start, allowed)
        if self.switched:
            await self._tunnel()
            return False
        return self.client.our_state is h11.DONE and self.client.their_state is h11.DONE

    async def _forward(self, request: h11.Request) -> None:
        """Sends an allowed request to the app and relays its answer; 503 if the app cannot be reached or fails before answering."""
        try:
            app = await self._app()
        except Exception as err:  # whatever the dialler raises, the caller gets Envoy's 503
            log.warning("l7: cannot reach the local app: %r", err)
            await self._refuse(503, UNREACHABLE_BODY, request.method == b"HEAD")
            return
        if self.client.they_are_waiting_for_100_continue:
            await self._send_client(h11.InformationalResponse(status_code=100, headers=[]))
        head = h11.Request(method=request.method, target=request.target, headers=_request_headers(request.headers))
        first = self.client.next_event()
        try:
            if isinstance(first, h11.EndOfMessage):
                await self._send_app(app, head, first)
                await self._relay(app)
            else:
                await self._send_app(app, head)
                await self._stream(app, None if first is h11.NEED_DATA else first)
        except _UpstreamError as err:
            log.warning("l7: local app failed on %s %s: %s", request.method.decode(), request.target.decode("latin-1"), err)
            self._drop_app()
            if self.client.our_state is not h11.SEND_RESPONSE:
                raise  # the response has started: the caller's connection is aborted
            await self._refuse(503, UNREACHABLE_BODY, request.method == b"HEAD", discard=False)
            return
        if not self.switched:
            self._recycle_app()

    async def _stream(self, app: _Upstream, first: h11.Data | None) -> None:
        """Uploads the request body while relaying the response, so an app that answers as it reads cannot deadlock."""
        upload = asyncio.ensure_future(self._upload(app, first))
        relay = asyncio.ensure_future(self._relay(app))
        try:
            done, _ = await asyncio.wait((upload, relay), return_when=asyncio.FIRST_COMPLETED)
            if relay not in done:
                upload.result()  # raises on the caller's bad body; else the whole body is with the app
            await relay
        finally:
            # An answer before the whole body leaves the upload unfinished: both h11 sides then refuse reuse.
            upload.cancel()
            relay.cancel()
            await asyncio.gather(upload, relay, return_exceptions=True)

    async def _upload(self, app: _Upstream, event: h11.Data | h11.EndOfMessage | None) -> None:
        """Streams the caller's request body to the app; stops quietly if the app stops taking it (the relay sees why)."""
        while True:
            if event is None:
                event = await self._client_event()
            try:
                await self._send_app(app, event)
            except _UpstreamError:
                return
            if isinstance(event, h11.EndOfMessage):
                return
            event = None

    async def _relay(self, app: _Upstream) -> None:
        """Copies the app's response (1xx included) to the caller; notes a protocol switch for the tunnel."""
        while True:
            event = await self._app_event(app)
            if isinstance(event, (h11.InformationalResponse, h11.Response)):
                head = type(event)(
                    status_code=event.status_code, reason=event.reason,
                    headers=_response_headers(event.headers, event.status_code),
                )
                await self._send_client(head)
                if self.client.our_state is h11.SWITCHED_PROTOCOL:
                    self.status, self.switched = event.status_code, True
                    return
                if isinstance(event, h11.Response):
                    self.status = event.status_code
            elif isinstance(event, h11.Data):
                await self._send_client(event)
            elif isinstance(event, h11.EndOfMessage):
                # Trailers need chunked framing toward the caller, which HTTP/1.0 lacks.
                trailers = event.headers if self.client.their_http_version == b"1.1" else []
                await self._send_client(h11.EndOfMessage(headers=trailers))
                return
            else:
                raise _UpstreamError("connection closed before the response")

    async def _refuse(self, status: int, body: bytes, head_only: bool, discard: bool = True) -> None:
        """Answers the caller without the app (403, 503), keeping the connection when its request was read whole."""
        close = self.client.they_are_waiting_for_100_continue
        if discard and not close:
            while self.client.their_state is h11.SEND_BODY:
                await self._client_event()
        close = close or self.client.their_state is not h11.DONE
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        self.status = status
        if head_only:  # the headers a GET would get, no body (h11 refuses one)
            body = b""
        await self._send_client(h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage())

    async def _bad_request(self, err: h11.RemoteProtocolError) -> None:
        """Answers a request h11 cannot parse with its status hint (400, 431, 501) and closes, as h11 advises."""
        log.debug("l7: bad request: %s", err)
        if self.client.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = err.error_status_hint
        body = HTTPStatus(status).phrase.encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        try:
            await self._send_client(h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage())
        except _NETWORK_ERRORS:
            return
        if self.on_request is not None:
            self.on_request(status, 0.0, False)

    async def _tunnel(self) -> None:
        """After a protocol switch (101, CONNECT), copies raw bytes both ways until the sides close, as Envoy's upgrade support does."""
        assert self.app is not None
        to_app, caller_closed = self.client.trailing_data
        to_caller, app_closed = self.app.conn.trailing_data
        tasks = {
            asyncio.ensure_future(self._pipe(self.reader, self.app.writer, to_app, caller_closed, from_caller=True)),
            asyncio.ensure_future(self._pipe(self.app.reader, self.writer, to_caller, app_closed, from_caller=False)),
        }
        try:
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                # A side that closed ends the tunnel unless its EOF could be passed on (no half-close over TLS).
                if any(t.exception() is not None or not t.result() for t in done):
                    break
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, eof: bool, from_caller: bool) -> bool:
        """Copies reader to writer until EOF; True if the EOF was passed on as a half-close."""
        while True:
            if data:
                if not from_caller:
                    self.sent += len(data)
                writer.write(data)
                await writer.drain()
            if eof:
                break
            data = await reader.read(READ_CHUNK)
            if from_caller:
                self.received += len(data)
            eof = not data
        if writer.can_write_eof():
            writer.write_eof()
            return True
        return False

    async def _client_event(self) -> Any:
        """The caller's next h11 event, reading as needed; h11.RemoteProtocolError on bad HTTP."""
        while True:
            event = self.client.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ_CHUNK)
            self.received += len(data)
            self.client.receive_data(data)

    async def _send_client(self, *events: Any) -> None:
        data = b"".join([self.client.send(e) or b"" for e in events])
        self.sent += len(data)
        self.writer.write(data)
        await self.writer.drain()

    async def _app(self) -> _Upstream:
        """The app connection, dialled on first use and again after the app closed it."""
        if self.app is not None and self.app.reader.at_eof():  # the app closed an idle keep-alive connection
            self._drop_app()
        if self.app is None:
            reader, writer = await self.open_app()
            self.app = _Upstream(reader, writer, h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD))
        return self.app

    async def _app_event(self, app: _Upstream) -> Any:
        try:
            while True:
                event = app.conn.next_event()
                if event is not h11.NEED_DATA:
                    return event
                app.conn.receive_data(await app.reader.read(READ_CHUNK))
        except (OSError, h11.ProtocolError) as err:
            raise _UpstreamError(str(err) or repr(err)) from None

    async def _send_app(self, app: _Upstream, *events: Any) -> None:
        try:
            data = b"".join([app.conn.send(e) or b"" for e in events])
            app.writer.write(data)
            await app.writer.drain()
        except (OSError, h11.ProtocolError) as err:
            raise _UpstreamError(str(err) or repr(err)) from None

    def _recycle_app(self) -> None:
        """Keeps the app connection for the next request if its exchange ended cleanly, else drops it."""
        assert self.app is not None
        if self.app.conn.our_state is h11.DONE and self.app.conn.their_state is h11.DONE:
            self.app.conn.start_next_cycle()
        else:
            self._drop_app()

    def _drop_app(self) -> None:
        if self.app is not None:
            self.app.writer.close()
            self.app = None


def _request_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """The caller's headers as sent to the app: hop-by-hop ones dropped (kept for an upgrade), one framing, no Expect."""
    names = {n for n, _ in headers}
    out = [
        (n, v) for n, v in headers
        if n != b"expect"
        and not (n == b"content-length" and b"transfer-encoding" in names)  # chunked wins (RFC 9112 6.3); never both
        and not (n in _HOP_BY_HOP and b"upgrade" not in names)
    ]
    if b"host" not in names:  # HTTP/1.0 callers may omit it; h11 requires it on HTTP/1.1
        out.append((b"host", b"localhost"))
    return out


def _response_headers(headers: Any, status: int) -> list[tuple[bytes, bytes]]:
    """The app's response headers as sent to the caller: the app's keep-alive choices are not the caller's."""
    names = {n for n, _ in headers}
    return [
        (n, v) for n, v in headers
        if not (n == b"content-length" and b"transfer-encoding" in names)
        and not (n in _HOP_BY_HOP and status != 101)
    ]


def decide_request(
    matches: list[dict], source: str, default_allow: bool,
    method: str, path: str, headers: list[tuple[str, str]],
) -> tuple[bool, str]:
    """Consul's L7 decision for one request: the first intention covering ``source`` decides, by its Action (L4) or its first matching permission (L7)."""
    for ixn in matches:
        if ixn.get("SourceName") not in (source, WILDCARD):
            continue
        perms = ixn.get("Permissions") or []
        if not perms:
            return ixn.get("Action") == "allow", f"Matched L4 intention: {intention_string(ixn)}"
        for i, perm in enumerate(perms):
            if permission_matches(perm, method, path, headers):
                return perm.get("Action") == "allow", f"Matched L7 intention: {intention_string(ixn)} (permission {i})"
        return default_allow, f"Default behavior: no permission of L7 intention {intention_string(ixn)} matched"
    return default_allow, "Default behavior"


def permission_matches(perm: dict, method: str, path: str, headers: list[tuple[str, str]]) -> bool:
    """IntentionPermission as Envoy's RBAC applies it: every condition of its HTTP block holds; paths without the query."""
    http = perm.get("HTTP")
    if not http:
        return True
    url_path = _url_path(path)
    if http.get("PathExact") and url_path != http["PathExact"]:
        return False
    if http.get("PathPrefix") and not url_path.startswith(http["PathPrefix"]):
        return False
    if http.get("PathRegex") and not _full_match(http["PathRegex"], url_path):
        return False
    if http.get("Methods") and method not in http["Methods"]:
        return False
    return all(_header_matches(rule, method, path, headers) for rule in http.get("Header") or [])


def _header_matches(rule: dict[str, Any], method: str, path: str, headers: list[tuple[str, str]]) -> bool:
    """IntentionHTTPHeaderPermission as Envoy's HeaderMatcher: an absent header fails every rule but an inverted Present."""
    # Consul's converter takes the first criterion set, in this order, and skips a rule with none.
    kind = next((k for k in ("Exact", "Regex", "Prefix", "Suffix", "Present") if rule.get(k)), None)
    if kind is None:
        return True
    inverted = bool(rule.get("Invert"))
    value = _header_value(rule.get("Name", "").lower(), method, path, headers)
    if value is None:
        return kind == "Present" and inverted
    expected = rule[kind]
    if kind == "Exact":
        matched = value == expected
    elif kind == "Regex":
        matched = _full_match(expected, value)
    elif kind == "Prefix":
        matched = value.startswith(expected)
    elif kind == "Suffix":
        matched = value.endswith(expected)
    else:
        matched = True
    return matched != inverted


def _header_value(name: str, method: str, path: str, headers: list[tuple[str, str]]) -> str | None:
    """A header's values joined with "," as Envoy does, or None if absent; Envoy's pseudo-headers too."""
    if name == ":method":
        return method
    if name == ":path":
        return path
    if name == ":authority":
        name = "host"
    values = [v for n, v in headers if n.lower() == name]
    return ",".join(values) if values else None


def _url_path(target: str) -> str:
    """The request target's path without query or fragment, as Envoy's RBAC url_path matcher sees it."""
    if not target.startswith("/") and "://" in target:  # absolute-form, as sent to proxies
        return urlsplit(target).path or "/"
    return target.split("?", 1)[0].split("#", 1)[0]


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        log.warning("l7: invalid regex in intention permission: %r", pattern)
        return None


def _full_match(pattern: str, value: str) -> bool:
    """Envoy's safe_regex: the whole value must match (RE2 syntax is, for Consul's uses, a subset of Python's)."""
    compiled = _regex(pattern)
    return compiled is not None and compiled.fullmatch(value) is not None
