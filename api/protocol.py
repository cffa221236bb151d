"""uvicorn's httptools protocol, writing each response with one send.

uvicorn writes a response's head when the app sends ``http.response.start`` and
its body with the next message: two ``send`` syscalls, and on a quiet loopback
two wake-ups of the client, for every small answer. On this 2-core VM a send
that wakes another process costs 100-200 µs, more than the rest of a KV write.
``CoalescingTransport`` keeps what is written during one event-loop turn and
hands it to the real transport at the end of the turn (at once past 64 KiB, and
before a close), so head and body — and pipelined answers — leave together.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

FLUSH_AT = 64 * 1024  # bytes held before writing without waiting for the end of the turn


class CoalescingTransport:
    """A transport that defers writes to the end of the loop turn; everything else is the real one's."""

    __slots__ = ("_transport", "_loop", "_pending", "_size")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._size += len(data)
        if self._size >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Write what is pending (a no-op when nothing is)."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HTTPProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a CoalescingTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
