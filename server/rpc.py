"""Server RPC: length-prefixed JSON frames over TCP, many calls in flight per connection.

Frames are a 4-byte big-endian length and a JSON object. A request is
``{"id", "m": method, "a": args, "h": hops}``; a reply is ``{"id", "r": result}``
or ``{"id", "e": [error class, message]}``. Errors cross as their class name
(``errors.ERRORS``), so the caller raises what the server raised. ``hops``
counts leader forwards and stops a request bouncing between servers that
disagree about who leads.

This port carries only JSON, never pickles; Raft traffic has its own port.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import struct
from typing import Any, Awaitable, Callable

from proconsul.server.errors import ERRORS, ProconsulError, RPCError, RPCUnreachable

log = logging.getLogger("proconsul.rpc")

MAX_FRAME = 256 * 1024 * 1024
_HEADER = struct.Struct(">I")

Handler = Callable[[str, Any, int], Awaitable[Any]]


def _frame(obj: Any) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
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


class _ServerProtocol(_FrameProtocol):
    def __init__(self, handler: Handler, tasks: set) -> None:
        super().__init__()
        self._handler = handler
        self._tasks = tasks

    def frame_received(self, msg: dict) -> None:
        task = asyncio.ensure_future(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: dict) -> None:
        call_id = msg.get("id")
        try:
            method = msg["m"]
            if not isinstance(method, str):
                raise ProconsulError("malformed RPC request")
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

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set = set()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerProtocol(self._handler, self._tasks), host, port, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            self._server = None


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
                fut.set_exception(RPCError("connection to server lost"))
        self.pending.clear()


class RPCPool:
    """One multiplexed connection per server address, made on first use and remade after a loss."""

    def __init__(self, connect_timeout: float = 2.0) -> None:
        self._conns: dict[str, _ClientProtocol] = {}
        self._connecting: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._connect_timeout = connect_timeout

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
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _ClientProtocol(lambda: self._conns.pop(addr, None)), host, port),
                self._connect_timeout,
            )
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
