"""The built-in mTLS proxy: one service's public (inbound) listener and its upstream listeners.

Inbound: a TLS listener on the proxy's public port that requires a client
certificate chaining to the CA roots, reads the caller's SPIFFE ID, asks the
intentions (``Source.authorize``) and pipes to the local app — byte for byte for
L4 services, request by request through an ``l7.Relay`` when the service's
protocol is http. Upstreams: a plain listener per upstream on 127.0.0.1; each
connection picks a passing instance of the destination's proxies (round robin
from a random start, the next one on a connect failure), dials it over mTLS with
this service's leaf and checks the server's SPIFFE ID names the destination.
An http upstream is piped byte for byte too (the destination's inbound side
judges and rewrites requests); an ``l7.Observer`` watching a copy of the bytes
counts its requests, and a caller that cannot be connected gets a 503.

Certificates: one SSLContext per (leaf, roots) pair, rebuilt when either
changes. The listener keeps its socket; its SNI callback hands each new
handshake the current context, so a renewed leaf or a rotated root applies to
new connections while established ones keep theirs. Upstream dials take the
current client context.

Piping copies through asyncio protocols, not streams: each side writes what it
reads straight into the other's transport and stops reading while the other's
write buffer is full. The L4 pipe never parses what it carries. TLS cannot carry
a half-close, so an EOF on either side closes the connection once what was read
has been written.

Everything the proxy needs from the agent comes through a ``Source``
(``proxy_source``): the managed proxies call into their agent, the standalone
``proconsul connect proxy`` talks to the agent's HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable


log = logging.getLogger("proconsul.proxy")

HIGH_WATER = 256 * 1024  # bytes buffered toward one side before its source stops reading
DIAL_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 10.0
RETRY_MAX = 5.0
HTTP_PROTOCOLS = ("http",)  # parsed per request (HTTP/1.1); http2 and grpc are piped, decided per connection
LINGER = 2.0  # seconds an upstream caller refused with a 503 has to finish sending its request


@dataclass(frozen=True)
class Upstream:
    """Consul's Upstream: a local listener for one destination service."""

    destination: str
    bind_port: int
    bind_address: str = "127.0.0.1"
    datacenter: str = ""

    @property
    def label(self) -> str:
        return f"upstream:{self.destination}"


@dataclass(frozen=True)
class ProxySpec:
    """What one proxy does: ``service`` is the identity it holds (its leaf) and the destination of its inbound side."""

    id: str
    service: str
    public_address: str = ""
    public_port: int = 0  # 0: no inbound listener (an upstream-only standalone proxy)
    local_address: str = "127.0.0.1"
    local_port: int = 0
    upstreams: tuple[Upstream, ...] = ()
    protocol: str = ""  # Proxy.Config.protocol; "" looks it up (service-defaults, proxy-defaults, tcp)


@dataclass
class Stats:
    """One listener's counters; plain attributes on the hot path, flushed into the agent's metrics."""

    labels: dict[str, str]
    accepted: int = 0
    denied: int = 0
    failed: int = 0
    bytes_in: int = 0  # read from the downstream side (the caller)
    bytes_out: int = 0  # written to the downstream side
    active: int = 0
    requests: dict[int, int] = field(default_factory=dict)  # L7: status -> count since the last flush
    # L7: route -> seconds of each request since the last flush (floats, which the cyclic GC does not track)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    _flushed: dict[str, int] = field(default_factory=dict)

    def request_done(self, status: int, seconds: float, route: str) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1
        samples = self.latencies.get(route)
        if samples is None:
            self.latencies[route] = [seconds]
        elif len(samples) < 10_000:
            samples.append(seconds)

    def flush(self, metrics: Any) -> None:
        for name in ("accepted", "denied", "failed"):
            self._delta(metrics, f"proxy.connections.{name}", name)
        self._delta(metrics, "proxy.bytes.in", "bytes_in")
        self._delta(metrics, "proxy.bytes.out", "bytes_out")
        metrics.set_gauge("proxy.connections.active", self.active, self.labels)
        requests, self.requests = self.requests, {}
        for status, n in requests.items():
            metrics.incr("proxy.http.requests", n, {**self.labels, "code": str(status)})
        latencies, self.latencies = self.latencies, {}
        for route, samples in latencies.items():
            labels = {**self.labels, "route": route}
            for seconds in samples:
                metrics.observe_histogram("proxy.http.request_duration", seconds, labels)

    def _delta(self, metrics: Any, name: str, attr: str) -> None:
        value = getattr(self, attr)
        delta = value - self._flushed.get(attr, 0)
        self._flushed[attr] = value
        metrics.incr(name, delta, self.labels)


# ------------------------------------------------------------------ TLS


def _spiffe_uris(peercert: dict[str, Any] | None) -> list[str]:
    return [v for k, v in (peercert or {}).get("subjectAltName", ()) if k == "URI"]


class _SSLObject(ssl.SSLObject):
    """An ``ssl.SSLObject`` whose ``read``, ``write`` and ``pending`` are the C methods themselves.

    uvloop's SSL transport looks these three up once per connection and calls them for every TLS
    record; ``ssl.SSLObject`` wraps each in a Python method that only forwards its arguments."""

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> "_SSLObject":
        self = super()._create(*args, **kwargs)  # type: ignore[misc]
        raw = self._sslobj
        self.read, self.write, self.pending = raw.read, raw.write, raw.pending
        return self


def _fast_sslobject(ctx: ssl.SSLContext) -> None:
    """Let ``ctx`` hand out ``_SSLObject``s, where this Python's ``ssl`` module has the internals it relies on."""
    if callable(getattr(ssl.SSLObject, "_create", None)):
        ctx.sslobject_class = _SSLObject


def _context(side: int, cert_pem: str, key_pem: str, roots: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(side)
    _fast_sslobject(ctx)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if side == ssl.PROTOCOL_TLS_CLIENT:
        ctx.check_hostname = False  # identity is the SPIFFE URI, checked after the handshake
    ctx.verify_mode = ssl.CERT_REQUIRED
    # load_cert_chain reads files only: a private file, gone as soon as it is read.
    fd, path = tempfile.mkstemp(prefix="proconsul-leaf-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(cert_pem.rstrip("\n") + "\n" + key_pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
    ctx.load_verify_locations(cadata="\n".join(r.rstrip("\n") for r in roots) + "\n")
    return ctx


class Certs:
    """The current leaf and roots as server and client SSLContexts."""

    def __init__(self) -> None:
        self.server: ssl.SSLContext | None = None
        self.client: ssl.SSLContext | None = None
        self.trust_domain = ""
        self.leaf: dict[str, Any] | None = None
        self.roots: dict[str, Any] | None = None
        self.ready = asyncio.Event()
        self.generation = 0

    def update(self, leaf: dict[str, Any] | None = None, roots: dict[str, Any] | None = None) -> None:
        self.leaf = leaf or self.leaf
        self.roots = roots or self.roots
        if self.leaf is None or self.roots is None:
            return
        pems = [r["RootCert"] for r in self.roots.get("Roots") or []]
        for r in self.roots.get("Roots") or []:
            pems.extend(r.get("IntermediateCerts") or [])
        cert, key = self.leaf["CertPEM"], self.leaf["PrivateKeyPEM"]
        self.server = _context(ssl.PROTOCOL_TLS_SERVER, cert, key, pems)
        self.server.sni_callback = self._swap
        self.client = _context(ssl.PROTOCOL_TLS_CLIENT, cert, key, pems)
        self.trust_domain = self.roots.get("TrustDomain", "")
        self.generation += 1
        self.ready.set()

    def _swap(self, sslobj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        """SNI callback (OpenSSL runs it on every ClientHello, SNI or not): hand the handshake the current context."""
        if self.server is not None and sslobj.context is not self.server:
            sslobj.context = self.server


# ------------------------------------------------------------------ piping


class _Conn:
    """Two sides of one proxied connection, closed together; counted in ``stats`` from the accepted side's
    ``connection_made`` (after the TLS handshake, on a TLS listener) until it closes.

    With an ``observer`` (an http upstream) each side also hands it a copy of what it reads."""

    __slots__ = ("stats", "down", "up", "closed", "counted", "observer")

    def __init__(self, stats: Stats, observer: Any = None) -> None:
        self.stats = stats
        self.observer = observer
        self.down = self.side(True)
        self.up: _Side | None = None
        self.closed = False
        self.counted = False

    def side(self, downstream: bool) -> _Side:
        """A new side of this connection: the accepted one, or a dialled candidate."""
        if self.observer is None:
            return _Side(self, downstream)
        return _ObservedSide(self, downstream, self.observer.request_data if downstream else self.observer.response_data)

    def count(self) -> None:
        self.counted = True
        self.stats.accepted += 1
        self.stats.active += 1

    def attach(self, up: _Side) -> None:
        """Join the dialled side to the accepted one and hand over what the accepted side read meanwhile."""
        down = self.down
        self.up, up.peer, down.peer = up, down, up
        if self.closed or up.transport is None:
            self.close()
            return
        for side in (down, up):
            pending, side.pending = side.pending or [], []
            for data in pending:
                side.peer.transport.write(data)  # type: ignore[union-attr]
        for side in (down, up):
            if side.transport is not None:
                side.transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.counted:
            self.stats.active -= 1
        if self.observer is not None:
            self.observer.closed()
        self.down.close()
        if self.up is not None:
            self.up.close()

    def refuse(self, response: bytes) -> None:
        """Answers the accepted side with ``response`` instead of piping, then closes once it has stopped sending
        (its EOF, or ``LINGER`` seconds): closing on a request still arriving would reset the answer away."""
        transport = self.down.transport
        if self.closed or transport is None or not transport.can_write_eof():
            self.close()
            return
        self.down.pending = None  # what it sends now is dropped
        transport.write(response)
        transport.write_eof()
        transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER, self.close)


class _Side(asyncio.Protocol):
    """One transport of a piped connection: what it reads is written to its peer's transport."""

    __slots__ = ("conn", "downstream", "transport", "peer", "pending", "on_made")

    def __init__(self, conn: _Conn, downstream: bool) -> None:
        self.conn = conn
        self.downstream = downstream
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        # Read before the peer was attached (uvloop reads before pause takes); None: dropped (a refused caller).
        self.pending: list[bytes] | None = []
        self.on_made: Callable[[], None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER)
        if self.peer is None:
            transport.pause_reading()
        if self.downstream:
            self.conn.count()
        if self.on_made is not None:
            self.on_made()

    def data_received(self, data: bytes) -> None:
        if self.downstream:
            self.conn.stats.bytes_in += len(data)
        else:
            self.conn.stats.bytes_out += len(data)
        peer = self.peer
        if peer is None or peer.transport is None:
            if self.pending is not None:
                self.pending.append(data)
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.conn.close()  # no half-close across TLS: close both once written
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.downstream or self.conn.up is self:  # not a dialled candidate that was turned down
            self.conn.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered first


class _ObservedSide(_Side):
    """A side of an http upstream's pipe: what it reads goes on unchanged, and to the observer."""

    __slots__ = ("observe",)

    def __init__(self, conn: _Conn, downstream: bool, observe: Callable[[bytes], None]) -> None:
        super().__init__(conn, downstream)
        self.observe = observe

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.observe(data)


# ------------------------------------------------------------------ the proxy


class Proxy:
    """See the module docstring. ``start`` waits for the first leaf and roots, then listens; ``stop`` stops listening
    (established connections run on until either end closes them)."""

    def __init__(self, spec: ProxySpec, source: Any, metrics: Any = None) -> None:
        self.spec = spec
        self.source = source
        self.metrics = metrics
        self.certs = Certs()
        self.protocol = spec.protocol or "tcp"
        self.inbound = Stats({"proxy": spec.id, "listener": "inbound"})
        self.upstream_stats = {u.destination: Stats({"proxy": spec.id, "listener": u.label}) for u in spec.upstreams}
        self.instances: dict[str, list[tuple[str, int]]] = {u.destination: [] for u in spec.upstreams}
        self.upstream_protocols: dict[str, str] = {u.destination: "tcp" for u in spec.upstreams}
        self._rr = {u.destination: random.randrange(1 << 16) for u in spec.upstreams}
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: list[asyncio.Task] = []
        self._conn_tasks: set[asyncio.Future] = set()
        self._ready: dict[str, asyncio.Event] = {}
        self.public_port = spec.public_port
        self.upstream_ports: dict[str, int] = {}

    # -- lifecycle

    async def start(self, timeout: float = 30.0) -> None:
        spec = self.spec
        self._watch("leaf", lambda i: self.source.leaf(spec.service, i), lambda v: self.certs.update(leaf=v))
        self._watch("roots", self.source.roots, lambda v: self.certs.update(roots=v))
        if spec.public_port and not spec.protocol:
            self._watch("protocol", lambda i: self.source.protocol(spec.service, i), self._set_protocol)
        for u in spec.upstreams:
            d = u.destination
            self._watch(f"instances:{d}", lambda i, d=d: self.source.connect_instances(d, i), lambda v, d=d: self.instances.__setitem__(d, v))
            self._watch(f"protocol:{d}", lambda i, d=d: self.source.protocol(d, i), lambda v, d=d: self.upstream_protocols.__setitem__(d, v))
        if self.metrics is not None:
            self._tasks.append(asyncio.create_task(self._flush_metrics(), name=f"proxy-metrics-{spec.id}"))
        try:
            await asyncio.wait_for(self.certs.ready.wait(), timeout)
            if "protocol" in self._ready:
                await asyncio.wait_for(self._ready["protocol"].wait(), timeout)
        except asyncio.TimeoutError:
            await self.stop()
            raise RuntimeError(f"proxy {spec.id}: no leaf certificate for {spec.service} within {timeout:.0f}s") from None
        loop = asyncio.get_running_loop()
        try:
            if spec.public_port:
                server = await loop.create_server(
                    self._accept_inbound, spec.public_address or "127.0.0.1", spec.public_port,
                    ssl=self.certs.server, ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                )
                self._servers.append(server)
                self.public_port = server.sockets[0].getsockname()[1]
            for u in spec.upstreams:
                stats = self.upstream_stats[u.destination]
                server = await loop.create_server(
                    lambda u=u, stats=stats: self._accept_upstream(u, stats), u.bind_address or "127.0.0.1", u.bind_port
                )
                self._servers.append(server)
                self.upstream_ports[u.destination] = server.sockets[0].getsockname()[1]
        except OSError:
            await self.stop()
            raise
        log.info(
            "proxy %s for %s: inbound %s, upstreams %s", spec.id, spec.service,
            f"{spec.public_address or '127.0.0.1'}:{self.public_port} -> {spec.local_address}:{spec.local_port} ({self.protocol})" if spec.public_port else "none",
            ", ".join(f"{u.bind_address}:{self.upstream_ports[u.destination]} -> {u.destination}" for u in spec.upstreams) or "none",
        )

    async def wait_failed(self) -> None:
        """Return when one of the proxy's own tasks has ended (they run until stopped, so this means a failure)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.Event().wait()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        if self.metrics is not None:
            self._flush_all()

    def _watch(self, what: str, fetch: Callable[[int], Awaitable[tuple[int, Any]]], apply: Callable[[Any], None]) -> None:
        ready = self._ready[what] = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._watch_loop(what, fetch, apply, ready), name=f"proxy-{self.spec.id}-{what}"))

    async def _watch_loop(self, what: str, fetch: Callable[[int], Awaitable[tuple[int, Any]]], apply: Callable[[Any], None], ready: asyncio.Event) -> None:
        """A blocking-query loop: apply each new value; on errors keep the last one and retry with backoff."""
        index, last, backoff = 0, None, 0.2
        while True:
            try:
                new_index, value = await fetch(index)
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 (the agent may be restarting: keep the last value, retry)
                log.warning("proxy %s: watching %s failed, retrying in %.1fs: %s", self.spec.id, what, backoff, err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX)
                continue
            if not ready.is_set() or value != last:
                try:
                    apply(value)
                except Exception as err:  # noqa: BLE001 (a bad certificate: keep the old one)
                    log.error("proxy %s: applying %s failed: %s", self.spec.id, what, err)
                last = value
                ready.set()
            if new_index < index:
                new_index = 0  # the index went backwards (a restore): read again without blocking
            index = new_index

    def _set_protocol(self, protocol: str) -> None:
        if protocol != self.protocol:
            log.info("proxy %s: %s now speaks %s", self.spec.id, self.spec.service, protocol)
        self.protocol = protocol

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._flush_all()

    def _flush_all(self) -> None:
        self.inbound.flush(self.metrics)
        for stats in self.upstream_stats.values():
            stats.flush(self.metrics)

    # -- inbound

    def _accept_inbound(self) -> asyncio.BaseProtocol:
        if self.protocol in HTTP_PROTOCOLS:
            return self._inbound_relay()
        conn = _Conn(self.inbound)
        conn.down.on_made = lambda: self._spawn(self._inbound_l4(conn))
        return conn.down

    def _spawn(self, coro: Any) -> None:
        """A per-connection task, referenced until done (the loop keeps only weak references)."""
        task = asyncio.ensure_future(coro)
        self._conn_tasks.add(task)
        task.add_done_callback(self._conn_tasks.discard)

    def _caller(self, transport: Any) -> tuple[str, str] | None:
        """(SPIFFE URI, service name) of the verified client certificate, or None (logged and counted as denied)."""
        from proconsul.agent.intentions import parse_service_uri

        uris = _spiffe_uris(transport.get_extra_info("peercert"))
        peer = transport.get_extra_info("peername")
        for uri in uris:
            try:
                svc = parse_service_uri(uri)
            except Exception:  # noqa: BLE001 (not a service identity)
                continue
            return uri, svc.service
        log.warning("proxy %s: refused %s: its certificate names no service (%s)", self.spec.id, peer, uris or "no URI SAN")
        self.inbound.denied += 1
        return None

    async def _inbound_l4(self, conn: _Conn) -> None:
        spec, stats = self.spec, self.inbound
        transport = conn.down.transport
        if transport is None:
            conn.close()
            return
        caller = self._caller(transport)
        if caller is None:
            conn.close()
            return
        uri, source = caller
        try:
            allowed, reason = await self.source.authorize(spec.service, uri)
        except Exception as err:  # noqa: BLE001 (fail closed)
            allowed, reason = False, f"authorization failed: {err}"
        if not allowed:
            stats.denied += 1
            log.warning("proxy %s: denied connection from %s to %s: %s", spec.id, source, spec.service, reason)
            conn.close()
            return
        try:
            _, up = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(lambda: conn.side(False), spec.local_address, spec.local_port),
                DIAL_TIMEOUT,
            )
        except (OSError, asyncio.TimeoutError) as err:
            stats.failed += 1
            log.warning("proxy %s: cannot reach %s at %s:%d: %s", spec.id, spec.service, spec.local_address, spec.local_port, err)
            conn.close()
            return
        conn.attach(up)

    def _inbound_relay(self) -> asyncio.BaseProtocol:
        """An HTTP caller's side, counted from its handshake on; it is read once the caller is known and the intentions are at hand."""
        from proconsul.agent import l7

        stats = self.inbound

        def made() -> None:
            stats.accepted += 1
            stats.active += 1
            self._spawn(self._inbound_http(relay))

        def closed(received: int, sent: int) -> None:
            stats.bytes_in += received
            stats.bytes_out += sent
            stats.active -= 1

        def done(status: int, seconds: float, allowed: bool) -> None:
            stats.request_done(status, seconds, "inbound" if allowed else "denied")

        relay = l7.Relay(self._dial_app, on_request=done, on_close=closed)
        relay.on_made = made
        return relay

    async def _inbound_http(self, relay: Any) -> None:
        from proconsul.agent import l7

        spec = self.spec
        caller = self._caller(relay.transport)
        if caller is None:
            relay.close()
            return
        _, source = caller
        try:
            view = await self.source.intentions(spec.service)
        except Exception as err:  # noqa: BLE001 (fail closed)
            log.warning("proxy %s: no intentions for %s, refusing %s: %s", spec.id, spec.service, source, err)
            relay.close()
            return

        def denied(method: str, path: str, reason: str) -> None:
            log.warning("proxy %s: denied %s %s from %s to %s: %s", spec.id, method, path, source, spec.service, reason)

        relay.start(l7.Decisions(view, source, denied))

    async def _dial_app(self, factory: Callable[[], asyncio.Protocol]) -> tuple[asyncio.BaseTransport, Any]:
        """A connection to the local app, for the L7 relay."""
        spec = self.spec
        try:
            return await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(factory, spec.local_address, spec.local_port), DIAL_TIMEOUT,
            )
        except (OSError, asyncio.TimeoutError):
            self.inbound.failed += 1
            raise

    # -- upstreams

    def _accept_upstream(self, u: Upstream, stats: Stats) -> asyncio.BaseProtocol:
        observer = None
        if self.upstream_protocols.get(u.destination) in HTTP_PROTOCOLS:
            from proconsul.agent.l7 import Observer

            observer = Observer(functools.partial(stats.request_done, route=u.destination))
        conn = _Conn(stats, observer)
        conn.down.on_made = lambda: self._spawn(self._upstream_l4(u, conn))
        return conn.down

    def _candidates(self, dest: str) -> list[tuple[str, int]]:
        """Every passing instance once, starting at the next one in turn."""
        instances = self.instances.get(dest) or []
        if not instances:
            return []
        start = self._rr[dest] % len(instances)
        self._rr[dest] += 1
        return instances[start:] + instances[:start]

    async def _dial(self, u: Upstream, factory: Callable[[], Any]) -> tuple[Any, Any]:
        """mTLS to the first instance that answers and proves to be ``u.destination``."""
        from proconsul.agent.intentions import parse_service_uri

        loop = asyncio.get_running_loop()
        errors = []
        for host, port in self._candidates(u.destination):
            ctx = self.certs.client
            try:
                transport, protocol = await asyncio.wait_for(
                    loop.create_connection(factory, host, port, ssl=ctx, server_hostname=u.destination, ssl_handshake_timeout=HANDSHAKE_TIMEOUT),
                    DIAL_TIMEOUT,
                )
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as err:
                errors.append(f"{host}:{port}: {err or type(err).__name__}")
                continue
            uris = _spiffe_uris(transport.get_extra_info("peercert"))
            names = set()
            for uri in uris:
                with contextlib.suppress(Exception):
                    svc = parse_service_uri(uri)
                    if uri.startswith(f"spiffe://{self.certs.trust_domain}/"):
                        names.add(svc.service)
            if u.destination in names:
                return transport, protocol
            transport.abort()
            errors.append(f"{host}:{port}: presents {uris or 'no SPIFFE ID'}, not {u.destination}")
            log.warning("proxy %s: upstream %s: refused %s", self.spec.id, u.destination, errors[-1])
        raise ConnectionError("; ".join(errors) or f"no passing instance of {u.destination}")

    async def _upstream_l4(self, u: Upstream, conn: _Conn) -> None:
        try:
            _, up = await self._dial(u, lambda: conn.side(False))
        except ConnectionError as err:
            conn.stats.failed += 1
            log.warning("proxy %s: upstream %s: %s", self.spec.id, u.destination, err)
            if conn.observer is not None:  # an HTTP caller gets Envoy's answer rather than a bare close
                from proconsul.agent.l7 import UNREACHABLE_BODY, plain_response

                conn.refuse(plain_response(503, UNREACHABLE_BODY, close=True))
            else:
                conn.close()
            return
        conn.attach(up)
