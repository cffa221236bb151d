"""Server RPC: length-prefixed JSON frames over TCP, many calls in flight per connection.

Frames are a 4-byte big-endian length and a JSON object. A request is
``{"id", "m": method, "a": args, "h": hops}``; a reply is ``{"id", "r": result}``
or ``{"id", "e": [error class, message]}``. Errors cross as their class name
(``errors.ERRORS``), so the caller raises what the server raised. ``hops``
counts leader forwards and stops a request bouncing between servers that
disagree about who leads.

This port carries only JSON, never pickles; Raft traffic has its own port.

A peer that vanishes without closing (a partition, a host that died) would
leave a call waiting as long as TCP retransmits, about 15 minutes: the
client's connections use keepalives and a TCP user timeout, so unanswered
data or probes drop the connection within ``DEAD_PEER_TIMEOUT`` and every call
on it fails with RPCError, which the caller can retry elsewhere.

TLS (Consul's RPCTLS): a server with a certificate takes TLS and plain TCP on
the same port, told apart by the first byte (a TLS record starts with 0x16; a
frame's length cannot, as frames stop at 256 MiB); with ``verify_incoming`` only
TLS with a client certificate from the CA gets in. Clients dial TLS when
``verify_outgoing`` is set (``RPCPool(ssl=...)``). ``server_only`` methods
(membership) need a peer certificate naming ``server.<dc>.<domain>`` when the
server checks server hostnames, so a client certificate cannot join as a server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import ssl
import struct
import time
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine

from proconsul.server.codec import compact_json
from proconsul.server.errors import ERRORS, PermissionDenied, ProconsulError, RPCError, RPCUnreachable
from proconsul.server.tls import is_server_cert, peer_dns_names

log = logging.getLogger("proconsul.rpc")

MAX_FRAME = 256 * 1024 * 1024
_HEADER = struct.Struct(">I")

Handler = Callable[[str, Any, int], Awaitable[Any]]

TLS_HANDSHAKE_TIMEOUT = 10.0
_TLS_RECORD_HANDSHAKE = 0x16


@dataclass(frozen=True)
class IncomingTLS:
    """How the server port takes TLS: the context, whether plain TCP is refused, and whom server-only calls need."""

    context: ssl.SSLContext
    required: bool = False  # verify_incoming
    server_name: str | None = None  # with verify_incoming and verify_server_hostname: server.<dc>.<domain>


def _frame(obj: Any) -> bytes:
    body = compact_json(obj)
    return _HEADER.pack(len(body)) + body


class _FrameProtocol(asyncio.Protocol):
    """Splits a byte stream into JSON frames."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= 4:
            (size,) = _HEADER.unpack_from(buf)
            if size > MAX_FRAME:
                log.warning("dropping RPC connection: frame of %d bytes exceeds the limit", size)
                self.transport.close()
                return
            if len(buf) < 4 + size:
                return
            body = bytes(buf[4 : 4 + size])
            del buf[: 4 + size]
            try:
                msg = json.loads(body)
            except ValueError:
                log.warning("dropping RPC connection: malformed frame")
                self.transport.close()
                return
            if not isinstance(msg, dict):
                self.transport.close()
                return
            self.frame_received(msg)

    def frame_received(self, msg: dict) -> None:
        raise NotImplementedError

    def send(self, obj: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(obj))


class _Admission:
    """Starts the calls a server receives while the loop turn has time left: each may begin while less than
    ``BUDGET`` has passed since the first call of the turn began; later ones wait for a later turn.

    A call runs to its first await without yielding, and a read of a large result does all of its work there
    (1,000 health entries: ~70 ms to shape and encode). Sixteen of them begun in one turn kept the loop from
    polling for over a second, past Raft's election timeout, and the followers elected another leader. Cheap
    calls (forwarded writes, ~0.1 ms) still begin together, so the leader proposes them in one turn and Raft
    commits them as one entry."""

    BUDGET = 0.02  # seconds

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task] = set()
        self._turn_began: float | None = None

    def start(self, call: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(self._admit(call))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _admit(self, call: Coroutine[Any, Any, Any]) -> None:
        try:
            while self._turn_is_spent():
                await asyncio.sleep(0)  # a later turn: the loop polls its sockets and runs its timers first
        except BaseException:
            call.close()  # cancelled before it began
            raise
        await call

    def _turn_is_spent(self) -> bool:
        now = time.perf_counter()
        if self._turn_began is None:
            self._turn_began = now
            asyncio.get_running_loop().call_soon(self._turn_over)  # runs first in the next turn
            return False
        return now - self._turn_began > self.BUDGET

    def _turn_over(self) -> None:
        self._turn_began = None

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()


class _ServerProtocol(_FrameProtocol):
    def __init__(self, handler: Handler, admission: _Admission, server_only: frozenset[str] = frozenset(), server_name: str | None = None) -> None:
        super().__init__()
        self._handler = handler
        self._admission = admission
        self._server_only = server_only
        self._server_name = server_name
        self._peer_names: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._server_name is not None:
            self._peer_names = peer_dns_names(transport.get_extra_info("ssl_object"))

    def frame_received(self, msg: dict) -> None:
        self._admission.start(self._serve(msg))

    async def _serve(self, msg: dict) -> None:
        call_id = msg.get("id")
        try:
            method = msg["m"]
            if not isinstance(method, str):
                raise ProconsulError("malformed RPC request")
            if method in self._server_only and self._server_name is not None:
                if not is_server_cert(self._peer_names, self._server_name):
                    peer = self.transport.get_extra_info("peername") if self.transport else None
                    log.warning("refusing %s from %s: its certificate does not name %s", method, _fmt(peer), self._server_name)
                    raise PermissionDenied(
                        f"AuthorizeServerConn failed certificate validation for certificate with a SAN.DNSName of {self._server_name}"
                    )
            result = await self._handler(method, msg.get("a"), int(msg.get("h", 0)))
            reply = {"id": call_id, "r": result}
        except ProconsulError as err:
            reply = {"id": call_id, "e": [type(err).__name__, str(err)]}
        except (KeyError, TypeError, ValueError) as err:
            reply = {"id": call_id, "e": ["BadRequest", f"malformed RPC request: {err}"]}
        except Exception as err:
            log.exception("RPC %s failed", msg.get("m"))
            reply = {"id": call_id, "e": ["ProconsulError", f"internal error: {err}"]}
        self.send(reply)


class RPCServer:
    """Listens on the server port and hands each call to ``handler(method, args, hops)``."""

    def __init__(self, handler: Handler, tls: IncomingTLS | None = None, server_only: frozenset[str] = frozenset()) -> None:
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set = set()
        self._calls = _Admission()
        self._tls = tls
        self._server_only = server_only
        self._listener: socket.socket | None = None
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()

    def _protocol(self) -> _ServerProtocol:
        return _ServerProtocol(self._handler, self._calls, self._server_only, self._tls.server_name if self._tls else None)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        if self._tls is None:
            self._server = await loop.create_server(self._protocol, host, port, reuse_address=True)
            return
        # TLS and plain TCP share the port, so each connection's first byte is read before asyncio takes it over.
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._listener = sock
        self._spawn(self._accept_loop(sock))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as err:
                log.warning("accepting an RPC connection: %s", err)
                await asyncio.sleep(0.1)
                continue
            self._spawn(self._accept(conn, peer))

    async def _accept(self, conn: socket.socket, peer: Any) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            first = await asyncio.wait_for(_peek(loop, conn), TLS_HANDSHAKE_TIMEOUT)
            if not first:
                conn.close()
                return
            use_tls = first[0] == _TLS_RECORD_HANDSHAKE
            if not use_tls and self._tls.required:
                log.warning("RPC connection from %s refused: Non-TLS connection attempted with VerifyIncoming set", _fmt(peer))
                conn.close()
                return
            transport, _ = await loop.connect_accepted_socket(
                self._protocol,
                conn,
                ssl=self._tls.context if use_tls else None,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if use_tls else None,
            )
            self._transports.add(transport)
        except (OSError, asyncio.TimeoutError) as err:
            log.warning("RPC connection from %s refused: TLS handshake failed: %s", _fmt(peer), str(err) or type(err).__name__)
            conn.close()
        except asyncio.CancelledError:  # stopping mid-handshake
            conn.close()
            raise

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            for transport in list(self._transports):
                transport.close()
            self._transports.clear()
        for task in list(self._tasks):
            task.cancel()
        self._calls.cancel()


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    """The first byte on ``conn``, left in the socket for whoever reads next (b"" when the peer closed)."""
    while True:
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            pass
        ready = loop.create_future()
        loop.add_reader(conn.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(conn.fileno())


def _fmt(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


class _ClientProtocol(_FrameProtocol):
    def __init__(self, on_lost: Callable[[], None]) -> None:
        super().__init__()
        self.pending: dict[int, asyncio.Future] = {}
        self._on_lost = on_lost

    def frame_received(self, msg: dict) -> None:
        fut = self.pending.pop(msg.get("id"), None)
        if fut is None or fut.done():
            return
        if "e" in msg:
            name, text = msg["e"]
            fut.set_exception(ERRORS.get(name, ProconsulError)(text))
        else:
            fut.set_result(msg.get("r"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(RPCError("connection to server lost" + (f": {exc}" if exc else "")))
        self.pending.clear()


# Seconds of silence (unacknowledged data, or keepalive probes) after which a peer counts as gone.
DEAD_PEER_TIMEOUT = 5.0


def detect_dead_peer(sock: Any, timeout: float = DEAD_PEER_TIMEOUT) -> None:
    """Keepalives after a second of idleness, and a TCP user timeout: a silent peer is dropped in ``timeout``."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 1), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", max(1, int(timeout))),
                        ("TCP_USER_TIMEOUT", int(timeout * 1000))):
        if hasattr(socket, name):  # Linux has them all; elsewhere the OS defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class RPCPool:
    """One multiplexed connection per server address, made on first use and remade after a loss."""

    def __init__(self, connect_timeout: float = 2.0, ssl: ssl.SSLContext | None = None, server_name: str | None = None) -> None:
        self._conns: dict[str, _ClientProtocol] = {}
        self._connecting: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._connect_timeout = connect_timeout
        # verify_outgoing: TLS to every server; server_name is what its certificate must name (verify_server_hostname).
        self._ssl = ssl
        self._server_name = server_name

    async def _conn(self, addr: str) -> _ClientProtocol:
        conn = self._conns.get(addr)
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            return conn
        pending = self._connecting.get(addr)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        fut = self._connecting[addr] = loop.create_future()
        try:
            host, port = split_addr(addr)
            proto: _ClientProtocol
            tls: dict[str, Any] = {}
            if self._ssl is not None:
                tls = {"ssl": self._ssl, "server_hostname": self._server_name or host}
            transport, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _ClientProtocol(lambda: self._conns.pop(addr, None)), host, port, **tls),
                self._connect_timeout + (TLS_HANDSHAKE_TIMEOUT if tls else 0),
            )
            sock = transport.get_extra_info("socket")
            if sock is not None:
                detect_dead_peer(sock)
            self._conns[addr] = proto
            fut.set_result(proto)
            return proto
        except (OSError, asyncio.TimeoutError, ValueError) as err:
            exc = RPCUnreachable(f"cannot reach server {addr}: {err or type(err).__name__}")
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise exc from None
        finally:
            self._connecting.pop(addr, None)

    async def call(self, addr: str, method: str, args: Any, hops: int = 0, timeout: float | None = None) -> Any:
        """Call ``method`` on the server at ``addr``; raises the server's error class, or RPCError."""
        conn = await self._conn(addr)
        call_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        conn.pending[call_id] = fut
        conn.send({"id": call_id, "m": method, "a": args, "h": hops})
        try:
            if timeout is None:
                return await fut
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RPCError(f"RPC {method} to {addr} timed out") from None
        finally:
            conn.pending.pop(call_id, None)

    def close(self) -> None:
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.close()
        self._conns.clear()


def split_addr(addr: str) -> tuple[str, int]:
    """'host:port' (IPv6 in brackets) to (host, port); raises ValueError."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {addr!r} is not host:port")
    return host.strip("[]"), int(port)
