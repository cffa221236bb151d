"""The DNS listeners: UDP and TCP on the agent's dns port; sockets, sizes, truncation and rcodes only.

* Sizes: TCP answers carry every record (up to 64 KiB); UDP answers fit the
  size an EDNS0 query advertises, or 512 bytes and Consul's ``udp_answer_limit``
  records without EDNS. Whenever records are dropped the TC flag is set, so
  resolvers retry over TCP (Consul sets TC only with ``enable_truncate``; we
  always do, so clients never silently get a partial set).
* Names outside our domains go to ``recursors`` (the first that answers within
  ``recursor_timeout``), or get REFUSED when there are none.
* A packet we cannot parse gets FORMERR when its ID is readable and nothing
  otherwise; an internal failure gets SERVFAIL. Nothing a client sends can stop
  the listener.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from typing import Any

from proconsul.dns import wire
from proconsul.dns.resolver import Answer, Resolver
from proconsul.server.errors import ProconsulError

log = logging.getLogger("proconsul.dns")

TCP_MAX = 65535
TCP_IDLE = 10.0


class DNSServer:
    """See the module docstring."""

    def __init__(self, config: Any, resolver: Resolver, metrics: Any = None) -> None:
        self.config = config
        self.resolver = resolver
        self.metrics = metrics
        self._udp: _UDPSocket | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._recursors = [_recursor_addr(r) for r in config.recursors]
        self._ra = bool(self._recursors)  # Consul: recursion is available only with recursors
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._udp = _UDPSocket(self, loop, host, port)
        self._tcp = await loop.create_server(lambda: _TCP(self), host, port, reuse_address=True)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def answer_now(self, data: bytes, tcp: bool) -> bytes | None:
        """The reply when it can be built synchronously from a cached answer (the hot path), else None."""
        q = wire.read_query(data)
        if q is None or q.qclass not in (wire.CLASS_IN, wire.ANY):
            return None
        answer = self.resolver.cached(q)
        if answer is None:
            return None
        if self.metrics is not None:
            self.metrics.incr("dns.query", labels={"cache": "hit"})
        return self.assemble(q, answer, tcp)

    async def handle(self, data: bytes, tcp: bool) -> bytes | None:
        """One query to one reply (None: drop the packet)."""
        q = wire.read_query(data)
        if q is None:
            return await self._slow(data, tcp)
        try:
            if q.qclass not in (wire.CLASS_IN, wire.ANY):
                return wire.reply(q, wire.REFUSED, [], [], [], aa=False)
            answer = await self.resolver.resolve(q)
            if self.metrics is not None:
                self.metrics.incr("dns.query", labels={"cache": "miss"})
        except ProconsulError as err:
            log.warning("dns: %s: %s", ".".join(q.labels), err)
            return wire.reply(q, wire.SERVFAIL, [], [], [], aa=False)
        except Exception:
            log.exception("dns: %s failed", ".".join(q.labels))
            return wire.reply(q, wire.SERVFAIL, [], [], [], aa=False)
        if answer is None:
            return await self._recurse(q, data)
        return self.assemble(q, answer, tcp)

    def assemble(self, q: wire.Query, answer: Answer, tcp: bool) -> bytes:
        """Shuffle, apply the record limits and the size, and pack the reply (TC when anything was left out)."""
        records = list(answer.records)
        if answer.shuffle and len(records) > 1:
            random.shuffle(records)
        limit = self.config.dns.a_record_limit
        if answer.address_records and limit and len(records) > limit:
            records = records[:limit]
        truncated = False
        if tcp:
            max_size = TCP_MAX
        else:
            max_size = q.edns_size or 512
            if not q.edns_size and len(records) > self.config.dns.udp_answer_limit:
                records = records[: self.config.dns.udp_answer_limit]
                truncated = True
        size = 12 + len(q.question) + sum(map(len, answer.authority)) + sum(map(len, answer.additional)) + (11 if q.edns_size else 0)
        answers: list[bytes] = []
        extra: list[bytes] = list(answer.additional)
        for rec, rec_extra in records:
            cost = len(rec) + sum(map(len, rec_extra))
            if size + cost > max_size:
                truncated = True
                break
            size += cost
            answers.append(rec)
            extra.extend(rec_extra)
        return wire.reply(q, answer.rcode, answers, answer.authority, extra, tc=truncated and not tcp, ra=self._ra)

    async def _slow(self, data: bytes, tcp: bool) -> bytes | None:
        """Queries the fast reader declined: parse with dnslib; FORMERR when that fails too."""
        from dnslib import DNSError, DNSRecord, RCODE

        try:
            record = DNSRecord.parse(data)
        except (DNSError, Exception):
            if len(data) >= 2:
                qid = struct.unpack_from(">H", data)[0]
                return struct.pack(">HHHHHH", qid, 0x8000 | wire.FORMERR, 0, 0, 0, 0)
            return None
        if record.header.qr:
            return None  # a response sent to us: never answer those
        reply = record.reply()
        if len(record.questions) != 1 or record.header.opcode != 0:
            reply.header.rcode = RCODE.NOTIMP if record.header.opcode != 0 else RCODE.FORMERR
            return reply.pack()
        # One question after all (e.g. with extra records): retry the fast path on a clean copy.
        clean = DNSRecord(header=record.header, q=record.q)
        clean.header.ar = clean.header.ns = clean.header.an = 0
        retry = wire.read_query(clean.pack())
        if retry is None:
            reply.header.rcode = RCODE.FORMERR
            return reply.pack()
        return await self.handle(clean.pack(), tcp)

    async def _recurse(self, q: wire.Query, data: bytes) -> bytes:
        """Forward a query outside our domains to the recursors; REFUSED when there are none."""
        if not self._recursors:
            return wire.reply(q, wire.REFUSED, [], [], [], aa=False)
        loop = asyncio.get_running_loop()
        for addr in self._recursors:
            try:
                transport, proto = await loop.create_datagram_endpoint(_Forward, remote_addr=addr)
            except OSError as err:
                log.debug("recursor %s: %s", addr, err)
                continue
            try:
                transport.sendto(data)
                return await asyncio.wait_for(proto.answer, self.config.dns.recursor_timeout)
            except (asyncio.TimeoutError, OSError) as err:
                log.debug("recursor %s: %s", addr, err or "timed out")
            finally:
                transport.close()
        return wire.reply(q, wire.SERVFAIL, [], [], [], aa=False)


def _recursor_addr(text: str) -> tuple[str, int]:
    if text.count(":") == 1:
        host, port = text.rsplit(":", 1)
        return host, int(port)
    return text.strip("[]"), 53


class _Forward(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future = asyncio.get_event_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


class _UDPSocket:
    """The UDP listener as a bare non-blocking socket the loop watches: each wake-up reads every datagram waiting
    (up to ``BATCH``) and answers the cached ones on the spot with one ``sendto`` each.

    uvloop's datagram transport costs a callback, an address conversion and a ``sendmsg`` through libuv per
    packet; this is the loop dnsmasq runs, minus its C. A reply the socket has no room for is dropped, as a
    full network would drop it: the client asks again."""

    BATCH = 64

    def __init__(self, server: DNSServer, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.server = server
        self.loop = loop
        self.sock = socket.socket(family, kind, proto)
        try:
            self.sock.bind(addr)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.closed = False
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        recvfrom, sendto, answer_now = self.sock.recvfrom, self.sock.sendto, self.server.answer_now
        for _ in range(self.BATCH):
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. ICMP port unreachable reported for an earlier reply
                log.debug("dns udp: %s", err)
                continue
            try:
                out = answer_now(data, tcp=False)
            except Exception:
                log.exception("dns: unexpected failure")
                continue
            if out is None:
                self.server.spawn(self._answer(data, addr))
                continue
            try:
                sendto(out, addr)
            except OSError as err:
                log.debug("dns udp: reply to %s dropped: %s", addr, err)

    async def _answer(self, data: bytes, addr: Any) -> None:
        try:
            out = await self.server.handle(data, tcp=False)
        except Exception:
            log.exception("dns: unexpected failure")
            return
        if out is not None and not self.closed:
            try:
                self.sock.sendto(out, addr)
            except OSError as err:
                log.debug("dns udp: reply to %s dropped: %s", addr, err)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class _TCP(asyncio.Protocol):
    """DNS over TCP: 2-byte length-prefixed messages, several per connection, closed when idle."""

    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._touch()

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(TCP_IDLE, self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()

    def data_received(self, data: bytes) -> None:
        self._touch()
        self.buf += data
        while len(self.buf) >= 2:
            size = struct.unpack_from(">H", self.buf)[0]
            if len(self.buf) < 2 + size:
                return
            msg = bytes(self.buf[2 : 2 + size])
            del self.buf[: 2 + size]
            self.server.spawn(self._answer(msg))

    async def _answer(self, msg: bytes) -> None:
        try:
            out = await self.server.handle(msg, tcp=True)
        except Exception:
            log.exception("dns: unexpected failure")
            return
        if out is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(struct.pack(">H", len(out)) + out)
