"""The sidecar proxy's HTTP/1.1 paths: Consul's L7 intentions enforced per request on the inbound side (Envoy's
RBAC HTTP filter), and the upstream side's requests observed for metrics.

Inbound, ``Relay``: after the mTLS handshake the caller's service is known; for a destination whose protocol is
``http`` every request on the connection is parsed once, by httptools (llhttp, in C), and judged by
``decide(method, path, headers)``. An allowed request goes to the app over one connection per caller connection,
dialled on the first allowed request and kept alive; a denied one is answered ``403 RBAC: access denied`` as Envoy
does, its body read and dropped, so the caller's connection stays usable. Decisions are remembered per caller
(``Decisions``) while the intentions stay the same. Request heads are rebuilt from the parsed fields (the
hop-by-hop headers are each connection's own); a response passes byte for byte when its head is whole in the
app's first read, final, framed and free of hop-by-hop headers, else its head is rebuilt too. Bodies pass as they
arrive, re-framed only when chunked and rebuilt.

Upstream, ``Observer``: the local app's connection is piped byte for byte like an L4 one, since the
destination's inbound side does the HTTP work; a copy of each direction feeds a parser that only notes each
response's status and how long it took, for the per-upstream request metrics. When it loses track (a switch to
another protocol, bytes it cannot parse) it stops watching; the bytes flow on regardless.

Invariants of ``Relay``:

* Requests are served one at a time, in order: pipelined ones are parsed as they arrive and queue up, and the
  caller is paused while one waits, so memory stays at about what one read brought.
* Bodies stream both ways at once (an app that answers while it reads would otherwise deadlock) and each side
  stops reading while the other's write buffer is full.
* What one read of a side produces for the other side goes out in one write (one TLS record toward the caller).
* A connection carries another request only when its exchange finished cleanly: the request read whole and the
  response complete. Anything else (HTTP/1.0, ``Connection: close``, an early answer to an unread body, an
  aborted exchange) closes the caller's connection, or drops the app's one, which is dialled again when needed.
* ``Expect: 100-continue`` is answered by the proxy once the request is allowed and the app dialled; a refused
  request that awaits it gets ``Connection: close``, since its client may never send the body.
* A response cut short by the app aborts the caller's connection, so a close-delimited body cannot pass as
  complete.
* Network and protocol errors end the session; the protocol callbacks never raise.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import re
import time
from http import HTTPStatus
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, Iterable, Iterator
from urllib.parse import urlsplit

import httptools

from proconsul.server.config_entries import WILDCARD
from proconsul.server.intentions import intention_string

log = logging.getLogger("proconsul.proxy.l7")

Headers = Iterable[tuple[str, str]]  # lower-cased names; iterated only when a permission reads them
# (method, request target with its query, headers) -> (allowed, reason)
Decide = Callable[[str, str, Headers], tuple[bool, str]]
# dial(protocol_factory) -> (transport, protocol) of a new connection to the app
Dial = Callable[[Callable[[], asyncio.Protocol]], Awaitable[tuple[asyncio.BaseTransport, Any]]]
OnRequest = Callable[[int, float, bool], None]  # status, seconds, allowed
OnClose = Callable[[int, int], None]  # bytes read from the caller, bytes written to it

MAX_HEAD = 64 * 1024  # Envoy's max_request_headers_kb defaults to 60
HIGH_WATER = 256 * 1024  # bytes buffered toward one side before the other stops reading (as the L4 pipe)
DENIED_BODY = b"RBAC: access denied"
UNREACHABLE_BODY = b"upstream connect error"
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection"})
_HOP_BY_HOP_HEADER = re.compile(rb"\n(?:connection|keep-alive|proxy-connection):", re.IGNORECASE)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}

# An exchange's states.
_NEW, _DIALLING, _FORWARDING, _REFUSING = range(4)
# Why the caller is not being read (bits).
_APP_FULL, _BACKLOG, _START, _UPGRADE = 1, 2, 4, 8
# How a response body is framed toward the caller.
_AS_IS, _CHUNKED = 0, 1


def plain_response(status: int, body: bytes, close: bool, head_only: bool = False) -> bytes:
    """An answer the proxy gives itself (403, 503, 400), text/plain; ``head_only``: the headers a GET would get (HEAD)."""
    head = b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s\r\n" % (
        status, HTTPStatus(status).phrase.encode(), len(body), b"connection: close\r\n" if close else b"")
    return head if head_only else head + body


class _BadRequest(Exception):
    """Raised in a parser callback: the request is refused with ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _NoBody(Exception):
    """Raised in a response callback: the message ends at its head (an answer to HEAD), so the parser stops."""


class _Rebuild(Exception):
    """Raised in a response callback: the response cannot pass as it is after all; its head is rebuilt."""


class _OutOfStep(Exception):
    """Raised in a response callback: the app sent a response nobody asked for behind the one it owed."""


class _Exchange:
    """One request on the caller's connection, and what became of it (class attributes: the defaults)."""

    method = b""
    http10 = False
    keep_alive = True
    upgrade = False  # an Upgrade header: the hop-by-hop headers go to the app
    expect = False  # waiting for 100-continue (until body bytes arrive)
    chunked = False
    has_host = False
    buffered = 0  # bytes of ``body``
    complete = False  # the whole request was read
    trailers: list[tuple[bytes, bytes]] | None = None  # set once the head is done: a chunked body's trailers
    state = _NEW
    allowed = False
    refusal = (0, b"")  # the answer the proxy gives itself (403, 503)
    status = 0  # of the final response head sent to the caller
    error = 0  # the request could not be parsed: the status to answer
    sent_all = False  # the whole request went to the app
    close = False  # the caller's connection ends after this exchange

    def __init__(self, target: bytes) -> None:
        self.target = target
        self.headers: list[tuple[bytes, bytes]] = []  # names lower-cased
        self.body: list[bytes] = []  # read, not yet sent on
        self.started = time.monotonic()


class _TextHeaders:
    """A request's headers as ``decide`` takes them, decoded only if a permission reads them."""

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((n.decode("latin-1"), v.decode("latin-1")) for n, v in self.raw)


class Relay(asyncio.Protocol):
    """The caller's side of one inbound HTTP/1.1 connection (see the module docstring).

    ``decide`` may come later, through ``start``: the caller is not read until then. ``on_made`` runs once the
    connection is up (after the TLS handshake, on a TLS listener); ``on_close(received, sent)`` once it is gone."""

    def __init__(self, dial: Dial, decide: Decide | None = None, on_request: OnRequest | None = None,
                 on_close: OnClose | None = None) -> None:
        self.dial, self.decide, self.on_request, self.on_close = dial, decide, on_request, on_close
        self.on_made: Callable[[], None] | None = None
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(SimpleNamespace(
            on_url=self._on_url, on_header=self._on_header, on_headers_complete=self._on_head,
            on_body=self._on_body, on_message_complete=self._on_done,
        ))
        self.queue: collections.deque[_Exchange] = collections.deque()  # parsed heads, the first one being served
        self.parsing: _Exchange | None = None  # the request being parsed, from its URL to its end
        self.in_head = True  # the parser is between requests or inside a head
        self.head_bytes = 0  # bytes of the unfinished head read so far
        self.heads = 0  # heads parsed on this connection
        self.broken = False  # the caller spoke bad HTTP: nothing more is parsed
        self.app: _App | None = None
        self.dialling: asyncio.Future | None = None
        # The app's responses, parsed by one of two parsers (new ones per app connection and after an answer to
        # HEAD): one that rebuilds the head, one that only follows a response passed on as it is (``_passes``).
        self.rparser: Any = None
        self.rpass_parser: Any = None
        self.rfirst = False  # the app's next bytes begin the response
        self.rpass = False  # this response goes to the caller as it is
        self.rheaders: list[tuple[bytes, bytes]] = []
        self.rtrailers: list[tuple[bytes, bytes]] | None = None
        self.rmode = _AS_IS
        self.rinfo = False  # the message being parsed is a 1xx
        self.reof = False  # the response body ends when the app closes
        self.rdone = False
        self.rkeep = False  # the app keeps its connection after this response
        self.out: list[bytes] = []  # toward the caller, written once per event
        self.pauses = 0
        self.app_paused = False
        self.received = 0
        self.sent = 0
        self.caller_eof = False
        self.app_eof = False
        self.upgrade_buf: list[bytes] | None = None  # caller bytes behind an upgrade request's head, until the app answers
        self.tunnel = False
        self.closed = False

    # -- the caller's transport

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER)
        if self.decide is None:
            self._pause(_START)
        if self.on_made is not None:
            self.on_made()

    def start(self, decide: Decide) -> None:
        """Begin judging requests with ``decide``."""
        self.decide = decide
        self._resume(_START)
        self._guarded(self._pump)

    def close(self) -> None:
        """End the session: the caller's connection after what is buffered for it, the app's at once."""
        if not self.closed:
            self.closed = True
            self._flush()
            if self.transport is not None:
                self.transport.close()
            self._drop_app()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.tunnel:
            if self.app is not None:
                self.app.transport.write(data)
        elif self.upgrade_buf is not None:
            self.upgrade_buf.append(data)
        elif not self.broken:
            try:
                self._feed(data)
                self._pump()
            except Exception:  # noqa: BLE001 (a bug must not reach the loop's handler for every read)
                log.exception("l7: connection failed")
                self._abort()

    def eof_received(self) -> bool:
        self.caller_eof = True
        if self.tunnel:
            app = self.app
            if app is not None and not self.app_eof and app.transport.can_write_eof():
                app.transport.write_eof()  # passed on as a half-close; the app's answer may follow
                return self.transport.can_write_eof()  # over TLS the caller's side closes regardless
            self.close()
            return False
        if not self.queue or not self.queue[0].complete:
            self.close()  # between requests, or in the middle of one that will never be whole
            return False
        return self.transport.can_write_eof()  # the answers still due go out first (a partial one after them is dropped)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._drop_app()
        if self.dialling is not None:
            self.dialling.cancel()
        if self.on_close is not None:
            self.on_close(self.received, self.sent)
            self.on_close = None

    def pause_writing(self) -> None:
        if self.app is not None and not self.app_paused:
            self.app_paused = True
            self.app.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.app is not None and self.app_paused:
            self.app_paused = False
            self.app.transport.resume_reading()

    def _pause(self, why: int) -> None:
        if not self.pauses and self.transport is not None:
            self.transport.pause_reading()
        self.pauses |= why

    def _resume(self, why: int) -> None:
        if self.pauses & why:
            self.pauses &= ~why
            if not self.pauses and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def _abort(self) -> None:
        """Drop the caller's connection without flushing: what was sent of a response must not look complete."""
        self.closed = True
        self.out.clear()
        if self.transport is not None:
            self.transport.abort()
        self._drop_app()

    def _flush(self) -> None:
        if self.out:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            self.sent += len(data)
            self.transport.write(data)

    # -- requests: the parser's callbacks record, _pump acts

    def _feed(self, data: bytes) -> None:
        heads = self.heads
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as up:
            # The rest belongs to the protocol the request asks for, if the app agrees to switch.
            self.upgrade_buf = [data[up.args[0]:]]
            self._pause(_UPGRADE)
            return
        except httptools.HttpParserError as err:
            self._bad_request(err)
            return
        if self.in_head:  # a head is unfinished: bound it (httptools gathers a header's pieces before calling back)
            self.head_bytes = self.head_bytes + len(data) if heads == self.heads else 0
            if self.head_bytes > MAX_HEAD:
                self._bad_request(_BadRequest(431, f"request head over {MAX_HEAD} bytes"))

    def _on_url(self, url: bytes) -> None:
        ex = self.parsing
        if ex is None:
            self.parsing = _Exchange(url)
        else:
            ex.target += url

    def _on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        if ex.trailers is None:
            ex.headers.append((name.lower(), value))
        else:
            ex.trailers.append((name, value))

    def _on_head(self) -> None:
        ex, parser = self.parsing, self.parser
        ex.method = parser.get_method()
        ex.trailers = []
        said_connection = False
        for name, value in ex.headers:
            if name == b"host":
                ex.has_host = True
            elif name == b"connection":
                said_connection = True
            elif name == b"transfer-encoding":
                ex.chunked = value.lower().endswith(b"chunked")  # llhttp refuses any other final coding
            elif name == b"expect":
                ex.expect = value.lower() == b"100-continue"
            elif name == b"upgrade":
                ex.upgrade = True
        keep_alive = parser.should_keep_alive()
        if not (keep_alive and ex.has_host and not said_connection):  # else plainly HTTP/1.1: no version to look up
            ex.http10 = parser.get_http_version() != "1.1"
        ex.keep_alive = keep_alive and not ex.http10  # HTTP/1.0 keep-alive is not offered
        self.in_head = False
        self.head_bytes = 0
        self.heads += 1
        self.queue.append(ex)
        if not ex.has_host and not ex.http10:
            raise _BadRequest(400, "Missing Host header")  # RFC 9112 3.2; answered when its turn comes

    def _on_body(self, data: bytes) -> None:
        ex = self.parsing
        ex.expect = False  # the client went ahead without waiting for 100-continue
        if ex.state is not _REFUSING:
            ex.body.append(data)
            ex.buffered += len(data)

    def _on_done(self) -> None:
        self.parsing.complete = True
        self.parsing = None
        self.in_head = True

    def _bad_request(self, err: Exception) -> None:
        """The caller's bytes are not HTTP we take: answer the request at fault, in its turn, and read no more."""
        cause = err if isinstance(err, _BadRequest) else err.__context__
        if isinstance(cause, _BadRequest):
            status, reason = cause.status, str(cause)
        else:
            status = 501 if "Transfer-Encoding" in str(err) else 400
            reason = str(err)
        log.debug("l7: bad request: %s", reason)
        ex = self.parsing or _Exchange(b"")
        self.parsing = None
        self.broken = True
        ex.error = status
        if not self.queue or self.queue[-1] is not ex:
            self.queue.append(ex)

    def _pump(self) -> None:
        """Move the exchange at the head of the queue on as far as it can go now; the next ones after it."""
        queue = self.queue
        while queue and not self.closed:
            ex = queue[0]
            state = ex.state
            if ex.error:
                self._answer_bad_request(ex)
                break
            if state is _FORWARDING:
                if ex.body or (ex.complete and not ex.sent_all):
                    self._send_body(ex)
                if not self.rdone:
                    break
                self._finish(ex)
            elif state is _NEW:
                if self.decide is None:
                    break
                self._judge(ex)
            elif state is _REFUSING:
                ex.body.clear()
                ex.buffered = 0
                if not (ex.complete or ex.close):
                    break
                self._refuse(ex)
            else:  # _DIALLING
                break
        if self.closed:
            return
        if self.out:
            self._flush()
        if self.upgrade_buf is not None and not queue:  # the app declined the switch: the bytes are HTTP after all
            buffered, self.upgrade_buf = self.upgrade_buf, None
            self._resume(_UPGRADE)
            for data in buffered:
                if self.broken or self.upgrade_buf is not None:
                    break
                self._feed(data)
            self._pump()
            return
        backlog = len(queue) > 1 or bool(queue and queue[0].state is not _FORWARDING and queue[0].buffered > HIGH_WATER)
        if backlog is not bool(self.pauses & _BACKLOG):
            if backlog:
                self._pause(_BACKLOG)
            else:
                self._resume(_BACKLOG)
        if self.caller_eof and not self.tunnel and (not queue or not queue[0].complete):
            self.close()

    def _judge(self, ex: _Exchange) -> None:
        allowed, reason = self.decide(ex.method.decode("ascii"), ex.target.decode("latin-1"), _TextHeaders(ex.headers))
        ex.allowed = allowed
        if not allowed:
            log.debug("l7: denied %s %s: %s", ex.method.decode("ascii"), ex.target.decode("latin-1"), reason)
            self._start_refusal(ex, 403, DENIED_BODY)
        elif ex.method == b"CONNECT":  # no route takes it: Envoy's 404 without a connect_matcher, which Consul sets none of
            self._start_refusal(ex, 404, b"")
        elif self.app is not None:
            self._send_head(ex)
        else:
            ex.state = _DIALLING
            self.dialling = asyncio.ensure_future(self._connect(ex))

    async def _connect(self, ex: _Exchange) -> None:
        try:
            transport, app = await self.dial(lambda: _App(self))
            if app.lost:
                raise ConnectionError("closed at once")
        except asyncio.CancelledError:
            return
        except Exception as err:  # noqa: BLE001 (whatever the dialler raises, the caller gets Envoy's 503)
            log.warning("l7: cannot reach the local app: %r", err)
            if ex.state is _DIALLING:
                self._start_refusal(ex, 503, UNREACHABLE_BODY)
        else:
            if self.closed:
                transport.close()
                return
            self.app, self.app_eof = app, False
            if ex.state is _DIALLING:
                self._send_head(ex)
        finally:
            self.dialling = None
        self._guarded(self._pump)

    def _guarded(self, step: Callable[..., Any], *args: Any) -> Any:
        """Runs one step of the session outside the parser's callbacks; a failure (a bug) ends the session, not the loop."""
        try:
            return step(*args)
        except Exception:  # noqa: BLE001
            log.exception("l7: connection failed")
            self._abort()
            return False

    def _send_head(self, ex: _Exchange) -> None:
        """The request's head, and what body is at hand, to the app in one write; 100 Continue to a caller awaiting it."""
        if ex.expect and not ex.complete:
            self.out.append(_CONTINUE)
        parts = [ex.method, b" ", ex.target, b" HTTP/1.1\r\n"]
        keep_hop = ex.upgrade
        for name, value in ex.headers:
            if name == b"expect" or (name in _HOP_BY_HOP and not keep_hop):
                continue
            parts += (name, b": ", value, b"\r\n")
        if not ex.has_host:  # HTTP/1.0 callers may omit it; HTTP/1.1 toward the app requires it
            parts.append(b"host: localhost\r\n")
        parts.append(b"\r\n")
        ex.state = _FORWARDING
        self.rheaders, self.rtrailers = [], None
        self.rinfo = self.reof = self.rdone = self.rkeep = False
        self.rfirst = True
        if ex.body or ex.chunked or not ex.complete:
            self._send_body(ex, parts)
        else:  # the usual GET: the head is all
            ex.sent_all = True
            self.app.transport.write(b"".join(parts))

    def _send_body(self, ex: _Exchange, parts: list[bytes] | None = None) -> None:
        parts = parts if parts is not None else []
        if ex.body:
            data = ex.body[0] if len(ex.body) == 1 else b"".join(ex.body)
            ex.body.clear()
            ex.buffered = 0
            parts += (b"%x\r\n" % len(data), data, b"\r\n") if ex.chunked else (data,)
        if ex.complete and not ex.sent_all:
            ex.sent_all = True
            if ex.chunked:
                parts += (b"0\r\n", *(b"%s: %s\r\n" % t for t in ex.trailers or ()), b"\r\n")
        if parts and self.app is not None:
            self.app.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def _start_refusal(self, ex: _Exchange, status: int, body: bytes) -> None:
        ex.state = _REFUSING
        ex.refusal = (status, body)
        if ex.expect and not ex.complete:
            ex.close = True  # its client may never send the body: answer now and end the connection

    def _refuse(self, ex: _Exchange) -> None:
        """The proxy's own answer (403, 503), once the request was read whole or when the connection ends anyway."""
        status, body = ex.refusal
        ex.close = ex.close or not ex.complete
        self._answer(ex, status, body)
        self._finish(ex)

    def _answer(self, ex: _Exchange, status: int, body: bytes) -> None:
        self.out.append(plain_response(status, body, ex.close or not ex.keep_alive, head_only=ex.method == b"HEAD"))
        ex.status = status

    def _answer_bad_request(self, ex: _Exchange) -> None:
        """Answers a request that could not be parsed with its status (400, 431, 501) and closes, unless its response has begun."""
        if ex.status:  # the app's answer is under way: it cannot be completed
            self._abort()
            return
        self._drop_app()
        ex.close = True
        ex.method = b""
        self._answer(ex, ex.error, HTTPStatus(ex.error).phrase.encode())
        if self.on_request is not None:
            self.on_request(ex.error, 0.0, False)
        self.close()

    def _finish(self, ex: _Exchange) -> None:
        """Ends the exchange at the head of the queue: report it, keep or drop the app's connection, maybe close."""
        self.queue.popleft()
        if self.on_request is not None and ex.status:
            # An exchange cut short is reported too, with the status the caller saw.
            self.on_request(ex.status, time.monotonic() - ex.started, ex.allowed)
        if ex.state is _FORWARDING and not (ex.sent_all and self.rdone and self.rkeep):
            self._drop_app()
        if ex.close or not ex.keep_alive or not ex.complete:
            self.close()

    # -- the app's side

    def _app_data(self, app: _App, data: bytes) -> None:
        if app is not self.app:
            return
        if self.tunnel:
            self.sent += len(data)
            self.transport.write(data)
            return
        ex = self.queue[0] if self.queue else None
        if ex is None or ex.state is not _FORWARDING or self.rdone:
            log.debug("l7: the app sent %d bytes nobody asked for", len(data))
            self._drop_app()
            return
        if self.rfirst:
            self.rfirst = False
            self.rpass = self._passes(ex, data)
        try:
            if self.rpass:
                if self.rpass_parser is None:
                    self.rpass_parser = httptools.HttpResponseParser(SimpleNamespace(
                        on_headers_complete=self._on_pass_head, on_message_complete=self._on_pass_done,
                    ))
                try:
                    self.rpass_parser.feed_data(data)
                except httptools.HttpParserCallbackError as err:
                    if not isinstance(err.__context__, _Rebuild):
                        raise
                    self.rpass, self.rpass_parser = False, None  # nothing of it went on: the other parser starts over
            if self.rpass:
                self.out.append(data)
            else:
                if self.rparser is None:
                    self.rparser = httptools.HttpResponseParser(SimpleNamespace(
                        on_header=self._on_rheader, on_headers_complete=self._on_rhead,
                        on_body=self._on_rbody, on_message_complete=self._on_rdone,
                    ))
                self.rparser.feed_data(data)
        except httptools.HttpParserUpgrade as up:
            self._switch(ex, data[up.args[0]:])
            return
        except httptools.HttpParserError as err:
            if isinstance(err.__context__, _NoBody):
                self.rparser = None  # it stopped mid-stream: a fresh one for the next response
            elif isinstance(err.__context__, _OutOfStep):
                log.warning("l7: the app answered more than it was asked on %s %s", ex.method.decode("ascii"), ex.target.decode("latin-1"))
                self._abort()
                return
            else:
                self._app_failed(ex, f"bad HTTP from the app: {err}")
                return
        self._pump()

    @staticmethod
    def _passes(ex: _Exchange, data: bytes) -> bool:
        """Whether the response that ``data`` begins may go to the caller byte for byte: its head is all there, it
        is final, and no hop-by-hop header in it is the app's own business. (Whether it is framed for a keep-alive
        caller, only the parser knows: ``_on_pass_head`` sends it back to be rebuilt if not.)"""
        if ex.http10 or not ex.keep_alive or ex.close or ex.method == b"HEAD":
            return False
        end = data.find(b"\r\n\r\n")
        if end < 0 or not data.startswith(b"HTTP/1.1 ") or data[9:10] == b"1":  # a 1xx or 101 comes first
            return False
        return _HOP_BY_HOP_HEADER.search(data, 0, end) is None

    def _on_pass_head(self) -> None:
        if self.rdone:
            raise _OutOfStep
        if not self.rpass_parser.should_keep_alive():  # delimited by the close, or the app closes after it
            raise _Rebuild
        self.queue[0].status = self.rpass_parser.get_status_code()
        self.rkeep = True

    def _on_pass_done(self) -> None:
        self.rdone = True
        self.rkeep = self.rkeep and self.rpass_parser.should_keep_alive()

    def _app_gone(self, app: _App, eof: bool) -> bool:
        """The app closed its side (``eof``) or the connection is gone; True keeps a half-closed tunnel open."""
        if app is not self.app:
            return False
        if self.tunnel:
            self.app_eof = True
            if eof and not self.caller_eof and self.transport.can_write_eof():
                self.transport.write_eof()  # passed on as a half-close; the caller may go on sending
                return True
            self.close()
            return False
        ex = self.queue[0] if self.queue else None
        if ex is None or ex.state is not _FORWARDING or self.rdone:
            self._drop_app()  # an idle keep-alive connection the app closed: dial again when needed
            return False
        if self.reof and ex.status:  # a close-delimited body ends here
            if self.rmode is _CHUNKED:
                self.out.append(b"0\r\n\r\n")
            self.rdone, self.rkeep = True, False
            self._pump()
            return False
        self._app_failed(ex, "connection closed before the response" if not ex.status else "connection closed mid-response")
        return False

    def _app_failed(self, ex: _Exchange, why: str) -> None:
        log.warning("l7: local app failed on %s %s: %s", ex.method.decode("ascii"), ex.target.decode("latin-1"), why)
        self._drop_app()
        if ex.status:  # the response has begun: the caller's connection is aborted
            self._abort()
            return
        self._start_refusal(ex, 503, UNREACHABLE_BODY)
        ex.close = ex.close or not ex.complete  # its body is not read on: the connection cannot go on
        self._pump()

    def _drop_app(self) -> None:
        app, self.app = self.app, None
        self.rparser = self.rpass_parser = None
        self.app_paused = False
        if app is not None and app.transport is not None:
            app.transport.close()

    def _on_rheader(self, name: bytes, value: bytes) -> None:
        if self.rtrailers is None:
            self.rheaders.append((name.lower(), value))
        else:
            self.rtrailers.append((name, value))

    def _on_rhead(self) -> None:
        if self.rdone:
            raise _OutOfStep
        ex, parser = self.queue[0], self.rparser
        status = parser.get_status_code()
        headers, self.rheaders = self.rheaders, []
        if status < 200 and status != 101:  # informational (103): passed on to HTTP/1.1 callers; the final one follows
            self.rinfo = True
            if not ex.http10:
                self.out.append(self._response_head(status, headers, keep_hop=False))
            return
        ex.status = status
        self.rtrailers = []
        self.rkeep = parser.should_keep_alive()
        if status == 101:  # llhttp raises HttpParserUpgrade once the head is done
            self.out.append(self._response_head(status, headers, keep_hop=True))
            return
        framed = chunked = False
        for name, value in headers:
            if name == b"content-length":
                framed = True
            elif name == b"transfer-encoding":
                chunked = True
        no_body = ex.method == b"HEAD" or status in (204, 304)
        self.reof = not (framed or chunked or no_body)
        close = ex.close or not ex.keep_alive
        if ex.http10:  # no chunked framing for HTTP/1.0: the body as is, delimited by the close
            self.rmode = _AS_IS
            if chunked or self.reof:
                close = True
        else:
            self.rmode = _CHUNKED if (chunked or self.reof) and not no_body else _AS_IS
        ex.close = close
        self.out.append(self._response_head(status, headers, keep_hop=False, chunked=self.rmode is _CHUNKED, close=close))
        if ex.method == b"HEAD":  # llhttp would wait for the body its Content-Length announces
            self.rdone = True
            raise _NoBody

    def _response_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_hop: bool,
                       chunked: bool = False, close: bool = False) -> bytes:
        """The app's response head as sent to the caller: its keep-alive choices and framing are not the caller's.

        The status line is the proxy's own, with the standard reason phrase, as Envoy writes it."""
        parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
        for name, value in headers:
            if name == b"transfer-encoding" or (name in _HOP_BY_HOP and not keep_hop):
                continue
            parts += (name, b": ", value, b"\r\n")
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        if close:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _on_rbody(self, data: bytes) -> None:
        if self.rmode is _CHUNKED:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def _on_rdone(self) -> None:
        if self.rinfo:
            self.rinfo = False
            return
        if self.queue[0].status == 101:
            return  # the switch follows (HttpParserUpgrade)
        if self.rmode is _CHUNKED:
            self.out += (b"0\r\n", *(b"%s: %s\r\n" % t for t in self.rtrailers or ()), b"\r\n")
        self.rdone = True
        self.rkeep = self.rkeep and self.rparser.should_keep_alive()

    def _switch(self, ex: _Exchange, rest: bytes) -> None:
        """The app switched protocols (101): from here on bytes pass unchanged both ways, as Envoy's upgrade support does."""
        if not ex.upgrade:
            self._app_failed(ex, "101 to a request that asked for no upgrade")
            return
        self.tunnel = True
        self.queue.clear()
        if self.on_request is not None:
            self.on_request(101, time.monotonic() - ex.started, True)
        if rest:
            self.out.append(rest)
        self._flush()
        buffered, self.upgrade_buf = self.upgrade_buf or [], None
        for data in buffered:
            if data:
                self.app.transport.write(data)
        self._resume(_UPGRADE)
        self._resume(_BACKLOG)
        if self.caller_eof:  # the caller closed its side while the app was answering
            if self.app.transport.can_write_eof():
                self.app.transport.write_eof()
            else:
                self.close()


class _App(asyncio.Protocol):
    """The app's side of a relayed connection: everything goes to the relay."""

    __slots__ = ("relay", "transport", "lost")

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: Any = None
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        try:
            self.relay._app_data(self, data)
        except Exception:  # noqa: BLE001 (a bug must not reach the loop's handler for every read)
            log.exception("l7: connection failed")
            self.relay._abort()

    def eof_received(self) -> bool:
        return self.relay._guarded(self.relay._app_gone, self, True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay._guarded(self.relay._app_gone, self, False)

    def pause_writing(self) -> None:
        if self.relay.app is self:
            self.relay._pause(_APP_FULL)

    def resume_writing(self) -> None:
        if self.relay.app is self:
            self.relay._resume(_APP_FULL)


class _Stop(Exception):
    """Raised in an Observer's response callback: the response ends at its head, or the protocol switched."""


class Observer:
    """Notes the status and duration of each HTTP/1.1 exchange on a connection whose bytes pass unchanged.

    ``request_data`` and ``response_data`` take a copy of each direction's bytes, ``closed`` the end of the
    connection (which ends a close-delimited response); ``on_request(status, seconds)`` runs per response."""

    __slots__ = ("on_request", "requests", "responses", "due", "status", "watching", "requests_watched")

    def __init__(self, on_request: Callable[[int, float], None]) -> None:
        self.on_request = on_request
        self.requests = httptools.HttpRequestParser(SimpleNamespace(on_headers_complete=self._request))
        self.responses = self._response_parser()
        self.due: collections.deque[tuple[float, bool]] = collections.deque()  # (start, answered by a head only)
        self.status = 0  # of the response being parsed
        self.watching = True
        self.requests_watched = True  # until a request switches protocols

    def _response_parser(self) -> Any:
        return httptools.HttpResponseParser(SimpleNamespace(on_headers_complete=self._response, on_message_complete=self._done))

    def request_data(self, data: bytes) -> None:
        if self.watching and self.requests_watched:
            try:
                self.requests.feed_data(data)
            except httptools.HttpParserUpgrade:
                self.requests_watched = False  # its response is still noted; what follows is not HTTP
            except httptools.HttpParserError:
                self.watching = False

    def response_data(self, data: bytes) -> None:
        if not self.watching:
            return
        try:
            self.responses.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.watching = False
        except httptools.HttpParserError as err:
            if isinstance(err.__context__, _Stop) and self.watching:
                self.responses = self._response_parser()  # it stopped mid-stream: a fresh one for the next response
            else:
                self.watching = False

    def closed(self) -> None:
        """The connection ended: a response that was being read to the close is done."""
        if self.watching and self.status:
            self._done()
        self.watching = False

    def _request(self) -> None:
        self.due.append((time.monotonic(), self.requests.get_method() == b"HEAD"))

    def _response(self) -> None:
        status = self.responses.get_status_code()
        if status < 200 and status != 101:
            return  # informational: the final response follows
        if not self.due:
            self.watching = False  # an answer to no request: out of step
            raise _Stop
        self.status = status
        if status == 101 or self.due[0][1]:  # no body follows (llhttp would wait for one after HEAD)
            self._done()
            if status == 101:
                self.watching = False
            raise _Stop

    def _done(self) -> None:
        if self.status:
            start, _ = self.due.popleft()
            self.on_request(self.status, time.monotonic() - start)
            self.status = 0


class Decisions:
    """``decide_request`` for one caller's service, remembered per (method, request target): a keep-alive caller
    mostly repeats itself. The memory lasts while the intentions are the same objects (a change replaces them)
    and holds nothing when a permission reads headers, whose values vary per request. ``on_deny(method, path,
    reason)`` hears of every refusal, remembered or not."""

    LIMIT = 1024  # remembered decisions, at most

    def __init__(self, view: Callable[[], tuple[list[dict], bool]], source: str,
                 on_deny: Callable[[str, str, str], None] | None = None) -> None:
        self.view, self.source, self.on_deny = view, source, on_deny
        self.matches: list[dict] | None = None
        self.default_allow = False
        self.memo: dict[tuple[str, str], tuple[bool, str]] = {}
        self.remembers = False

    def __call__(self, method: str, path: str, headers: Headers) -> tuple[bool, str]:
        matches, default_allow = self.view()
        if matches is not self.matches or default_allow != self.default_allow:
            self.matches, self.default_allow, self.memo = matches, default_allow, {}
            self.remembers = not any(
                (perm.get("HTTP") or {}).get("Header") for ixn in matches for perm in ixn.get("Permissions") or ()
            )
        decision = self.memo.get((method, path))
        if decision is None:
            decision = decide_request(matches, self.source, default_allow, method, path, headers)
            if self.remembers and len(self.memo) < self.LIMIT:
                self.memo[(method, path)] = decision
        if not decision[0] and self.on_deny is not None:
            self.on_deny(method, path, decision[1])
        return decision


def decide_request(
    matches: list[dict], source: str, default_allow: bool,
    method: str, path: str, headers: Headers,
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


def permission_matches(perm: dict, method: str, path: str, headers: Headers) -> bool:
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


def _header_matches(rule: dict[str, Any], method: str, path: str, headers: Headers) -> bool:
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


def _header_value(name: str, method: str, path: str, headers: Headers) -> str | None:
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
