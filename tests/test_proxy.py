"""The built-in mTLS proxy end to end: real apps on loopback, a dev agent running managed sidecars, and
`proconsul connect proxy` as its own process. Callers are plain HTTP/TCP clients on the upstream listeners, or
Python's ssl with hand-made certificates against a public listener."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import random
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from conftest import PROCONSUL, AgentProc, eventually, free_ports, start_dev_agent

from proconsul.server import ca

pytestmark = pytest.mark.cluster

BULK = 100 * 1024 * 1024


# ----------------------------------------------------------------- apps


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_App"

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = f"{self.server.name} {self.command} {self.path} {len(body)}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


class _App(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """An HTTP app that counts the connections it accepted."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.connections = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def get_request(self) -> Any:
        conn = super().get_request()
        self.connections += 1
        return conn

    @property
    def port(self) -> int:
        return self.server_address[1]


def _pattern(n: int) -> Iterator[bytes]:
    """``n`` deterministic pseudo-random bytes in 1 MiB chunks."""
    rng = random.Random(7)
    block = rng.randbytes(1 << 20)
    sent = 0
    while sent < n:
        chunk = block[: min(len(block), n - sent)]
        sent += len(chunk)
        yield chunk


class _Bulk:
    """A TCP app that, per connection, sends ``size`` bytes of the pattern (``pause`` seconds between MiBs)."""

    def __init__(self, size: int, pause: float = 0.0) -> None:
        self.size, self.pause = size, pause
        self.sock = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._send, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket) -> None:
        with conn:
            try:
                for chunk in _pattern(self.size):
                    conn.sendall(chunk)
                    if self.pause:
                        time.sleep(self.pause)
            except OSError:
                pass


def _digest(n: int) -> str:
    h = hashlib.sha256()
    for chunk in _pattern(n):
        h.update(chunk)
    return h.hexdigest()


def _read_all(port: int, timeout: float = 60.0, during: Any = None) -> tuple[int, str]:
    """Read one connection to its end: (bytes, sha256); ``during`` runs once after the first MiB."""
    h, total = hashlib.sha256(), 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            h.update(data)
            total += len(data)
            if during is not None and total >= 1 << 20:
                during()
                during = None
    return total, h.hexdigest()


# ----------------------------------------------------------------- the mesh


class Mesh:
    def __init__(self, agent: AgentProc) -> None:
        self.agent = agent
        self.http = agent.http

    def register(self, body: dict[str, Any]) -> None:
        r = self.http.put("/v1/agent/service/register", json=body)
        assert r.status_code == 200, r.text

    def intention(self, source: str, dest: str, action: str | None = None, **extra: Any) -> None:
        params = {"source": source, "destination": dest}
        if action is None:
            assert self.http.delete("/v1/connect/intentions/exact", params=params).status_code == 200
            return
        r = self.http.put("/v1/connect/intentions/exact", params=params, json={"Action": action, **extra})
        assert r.status_code == 200, r.text

    def leaf(self, service: str) -> dict[str, Any]:
        return self.http.get(f"/v1/agent/connect/ca/leaf/{service}").json()

    def roots(self) -> dict[str, Any]:
        return self.http.get("/v1/connect/ca/roots").json()

    def metrics(self) -> dict[str, Any]:
        return self.http.get("/v1/agent/metrics").json()


def _get(port: int, path: str = "/", method: str = "GET") -> httpx.Response:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        return c.request(method, path)


def _reachable(port: int) -> bool:
    try:
        return _get(port, "/ping").status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    agent = start_dev_agent(tmp_path_factory.mktemp("mesh"), "mesh")
    try:
        yield Mesh(agent)
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def pair(mesh: Mesh) -> dict[str, Any]:
    """web -> db over their managed sidecars: db's app, db's public port, web's upstream port."""
    db = _App("db")
    db_public, web_public, upstream = free_ports(3)
    mesh.register({"Name": "db", "Port": db.port, "Connect": {"SidecarService": {"Port": db_public}}})
    mesh.register({"Name": "web", "Port": 1, "Connect": {"SidecarService": {"Port": web_public, "Proxy": {
        "Upstreams": [{"DestinationName": "db", "LocalBindPort": upstream}]}}}})
    eventually(lambda: _reachable(upstream), timeout=30, what="web -> db through the sidecars")
    return {"db": db, "db_public": db_public, "upstream": upstream}


# ----------------------------------------------------------------- L4


def test_allowed_then_denied_then_allowed(mesh: Mesh, pair: dict[str, Any]):
    up = pair["upstream"]
    r = _get(up, "/hello")
    assert r.text == "db GET /hello 0"

    mesh.intention("web", "db", "deny")
    denied_at = time.monotonic()
    eventually(lambda: not _reachable(up), timeout=5, what="the deny applies to new connections")
    took = time.monotonic() - denied_at
    print(f"\ndeny intention written -> new connections refused: {took * 1000:.0f} ms")
    assert took < 3.0  # a blocking query away (~10 ms here); the slack is for a loaded CI machine
    before = pair["db"].connections
    with pytest.raises(httpx.HTTPError):
        _get(up, "/after-deny")
    assert pair["db"].connections == before  # refused before the app saw anything
    log = mesh.agent.log()
    assert "denied connection from web to db: Matched L4 intention: default/web => default/db" in log

    mesh.intention("web", "db")
    eventually(lambda: _reachable(up), timeout=5, what="allowed again")


def test_the_l4_pipe_never_parses(monkeypatch: pytest.MonkeyPatch):
    """The regression guard of the L4 hot path: the pipe copies what it reads, HTTP or not, without a parser."""
    import asyncio

    import httptools

    from proconsul.agent.proxy import Stats, _Conn

    def refuse(*args: Any) -> None:
        raise AssertionError("the L4 pipe made an HTTP parser")

    monkeypatch.setattr(httptools, "HttpRequestParser", refuse)
    monkeypatch.setattr(httptools, "HttpResponseParser", refuse)
    payload = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 50 + bytes(range(256)) * 64

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
            writer.close()

        app = await asyncio.start_server(echo, "127.0.0.1", 0)
        stats = Stats({})

        def accept() -> Any:  # as Proxy._accept_inbound and _inbound_l4 wire it, minus TLS and intentions
            conn = _Conn(stats)

            async def dial() -> None:
                _, up = await loop.create_connection(lambda: conn.side(False), "127.0.0.1", app.sockets[0].getsockname()[1])
                conn.attach(up)

            conn.down.on_made = lambda: asyncio.ensure_future(dial())
            return conn.down

        pipe = await loop.create_server(accept, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", pipe.sockets[0].getsockname()[1])
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        assert (stats.accepted, stats.bytes_in, stats.bytes_out) == (1, len(payload), len(payload))
        pipe.close()
        app.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def _tls_to(port: int, cert_pem: str | None, key_pem: str | None, trusts: list[str], workdir: Path) -> bytes:
    """mTLS to a public listener with the given client certificate (None: none); what a GET brings back."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata="\n".join(trusts))
    if cert_pem is not None:
        path = workdir / f"client-{random.randrange(1 << 30)}.pem"
        path.write_text(cert_pem.rstrip("\n") + "\n" + key_pem)
        ctx.load_cert_chain(str(path))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"GET /tls HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n")
                out = b""
                while True:
                    data = tls.recv(65536)
                    if not data:
                        return out
                    out += data
        except (ssl.SSLError, ConnectionError):
            return b""


def _forged_leaf(root_key: Any, root_pem: str, uri: str, now: dt.datetime | None = None, ttl: float = 3600) -> tuple[str, str]:
    key, key_pem = ca.generate_key()
    info = ca.check_csr(ca.make_csr(key, uri))
    return ca.sign_leaf(info, ca.parse_cert(root_pem), root_key, random.randrange(1, 1 << 60), ttl, now=now), key_pem


def test_only_callers_with_a_valid_certificate_for_an_allowed_service_get_in(mesh: Mesh, pair: dict[str, Any], tmp_path: Path):
    port, app = pair["db_public"], pair["db"]
    roots = [r["RootCert"] for r in mesh.roots()["Roots"]]
    domain = mesh.roots()["TrustDomain"]
    mesh.intention("*", "db", "deny")
    mesh.intention("web", "db", "allow")
    try:
        web = mesh.leaf("web")
        eventually(lambda: b"db GET /tls" in _tls_to(port, web["CertPEM"], web["PrivateKeyPEM"], roots, tmp_path), what="web's own leaf")
        before = app.connections

        assert _tls_to(port, None, None, roots, tmp_path) == b""  # no client certificate

        other = mesh.leaf("other")  # a genuine leaf, but for a service the intentions deny
        assert _tls_to(port, other["CertPEM"], other["PrivateKeyPEM"], roots, tmp_path) == b""
        assert "denied connection from other to db" in mesh.agent.log()

        foreign_key, _ = ca.generate_key()
        foreign_root = ca.generate_root(foreign_key, "00000000-0000-0000-0000-000000000000", 1, 3600)
        cert, key = _forged_leaf(foreign_key, foreign_root, ca.service_uri(domain, "dc1", "web"))
        assert _tls_to(port, cert, key, roots, tmp_path) == b""  # web's SPIFFE ID, but from another CA

        assert app.connections == before  # none of them reached the app
    finally:
        mesh.intention("*", "db")
        mesh.intention("web", "db")


def test_many_passing_instances_share_the_load_and_bad_ones_are_skipped(mesh: Mesh, pair: dict[str, Any]):
    apps = [_App("lb-a"), _App("lb-b")]
    publics = free_ports(3)
    (upstream,) = free_ports(1)
    for app, public in zip(apps, publics):
        mesh.register({"Name": "lb", "ID": app.name, "Port": app.port, "Connect": {"SidecarService": {"Port": public}}})
    # A proxy instance that is registered and passing but not listening: dials to it fail over to the others.
    mesh.register({"Name": "lb-dead-proxy", "Kind": "connect-proxy", "Port": publics[2], "Proxy": {"DestinationServiceName": "lb"}})
    # And one that answers mTLS as another service (db's listener): the caller must not take it for lb.
    mesh.register({"Name": "lb-imposter", "Kind": "connect-proxy", "Port": pair["db_public"], "Proxy": {"DestinationServiceName": "lb"}})
    mesh.register({"Name": "lbc", "Port": 1, "Connect": {"SidecarService": {"Port": free_ports(1)[0], "Proxy": {
        "Upstreams": [{"DestinationName": "lb", "LocalBindPort": upstream}]}}}})
    eventually(lambda: _reachable(upstream), timeout=30, what="lbc -> lb")
    eventually(lambda: len(mesh.http.get("/v1/health/connect/lb", params={"passing": ""}).json()) == 4, what="four lb proxies")
    seen = [_get(upstream, "/who").text.split()[0] for _ in range(30)]
    assert set(seen) == {"lb-a", "lb-b"}  # every request answered; both instances used
    assert min(seen.count("lb-a"), seen.count("lb-b")) >= 5
    assert "presents ['spiffe://" in mesh.agent.log() and "svc/db'], not lb" in mesh.agent.log()


# ----------------------------------------------------------------- L7


def test_l7_intention_allows_get_api_and_denies_the_rest(mesh: Mesh):
    app = _App("api")
    public, upstream = free_ports(2)
    r = mesh.http.put("/v1/config", json={"Kind": "service-defaults", "Name": "api", "Protocol": "http"})
    assert r.status_code == 200, r.text
    r = mesh.http.put("/v1/config", json={"Kind": "service-intentions", "Name": "api", "Sources": [
        {"Name": "apic", "Permissions": [
            {"Action": "allow", "HTTP": {"PathPrefix": "/api/", "Methods": ["GET"]}},
            {"Action": "deny", "HTTP": {"PathPrefix": "/"}},  # the rest (else the default policy, allow here, decides)
        ]},
    ]})
    assert r.status_code == 200, r.text
    mesh.register({"Name": "api", "Port": app.port, "Connect": {"SidecarService": {"Port": public}}})
    mesh.register({"Name": "apic", "Port": 1, "Connect": {"SidecarService": {"Port": free_ports(1)[0], "Proxy": {
        "Upstreams": [{"DestinationName": "api", "LocalBindPort": upstream}]}}}})

    def up() -> bool:
        try:
            return _get(upstream, "/api/ping").status_code == 200
        except httpx.HTTPError:
            return False

    eventually(up, timeout=30, what="apic -> api")
    before = app.connections
    with httpx.Client(base_url=f"http://127.0.0.1:{upstream}", timeout=10) as c:
        assert c.get("/api/items?x=1").text == "api GET /api/items?x=1 0"
        denied = c.get("/admin")
        assert (denied.status_code, denied.text) == (403, "RBAC: access denied")
        assert c.post("/api/items", content=b"abc").status_code == 403  # the method is not allowed
        assert c.get("/api/again").status_code == 200  # the same connection, still usable
    assert app.connections == before + 1
    assert "denied POST /api/items from apic to api" in mesh.agent.log()

    # A change to the intention applies to the next request.
    r = mesh.http.put("/v1/config", json={"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "apic", "Action": "deny"}]})
    assert r.status_code == 200, r.text
    eventually(lambda: _get(upstream, "/api/x").status_code == 403, timeout=5, what="the deny reaches the L7 proxy")

    def counted() -> set[tuple[str, str, str]]:
        return {(c["Name"], c["Labels"].get("proxy"), c["Labels"].get("code")) for c in mesh.metrics()["Counters"]}

    eventually(lambda: ("consul.proxy.http.requests", "api-sidecar-proxy", "403") in counted(), what="L7 metrics (flushed each second)")
    assert ("consul.proxy.http.requests", "apic-sidecar-proxy", "200") in counted()  # per upstream, too
    # Latencies: a histogram per inbound route and per upstream (Samples in the JSON, buckets in Prometheus text).
    routes = {h["Labels"].get("route") for h in mesh.metrics()["Samples"] if h["Name"] == "consul.proxy.http.request_duration"}
    assert {"inbound", "denied", "api"} <= routes
    text = mesh.http.get("/v1/agent/metrics", params={"format": "prometheus"}).text
    assert 'consul_proxy_http_request_duration_bucket{le="' in text or "consul_proxy_http_request_duration_bucket{" in text


def test_an_http_upstream_without_a_reachable_instance_answers_503(mesh: Mesh):
    upstream = free_ports(1)[0]
    r = mesh.http.put("/v1/config", json={"Kind": "service-defaults", "Name": "nowhere", "Protocol": "http"})
    assert r.status_code == 200, r.text
    mesh.register({"Name": "nowherec", "Port": 1, "Connect": {"SidecarService": {"Port": free_ports(1)[0], "Proxy": {
        "Upstreams": [{"DestinationName": "nowhere", "LocalBindPort": upstream}]}}}})

    def answer() -> httpx.Response | None:
        try:
            return _get(upstream, "/x")
        except httpx.HTTPError:
            return None  # not listening yet, or still taken for a TCP upstream (closed without an answer)

    r = eventually(answer, timeout=30, what="the HTTP upstream's own answer")
    assert (r.status_code, r.text, r.headers["connection"]) == (503, "upstream connect error", "close")


# ----------------------------------------------------------------- streams and rotation


def test_a_100mb_stream_is_byte_identical(mesh: Mesh):
    bulk = _Bulk(BULK)
    public, upstream = free_ports(2)
    mesh.register({"Name": "bulk", "Port": bulk.port, "Connect": {"SidecarService": {"Port": public}}})
    mesh.register({"Name": "bulkc", "Port": 1, "Connect": {"SidecarService": {"Port": free_ports(1)[0], "Proxy": {
        "Upstreams": [{"DestinationName": "bulk", "LocalBindPort": upstream}]}}}})
    eventually(lambda: mesh.http.get("/v1/health/connect/bulk", params={"passing": ""}).json(), timeout=30, what="bulk's proxy")
    eventually(lambda: _read_all(upstream)[0] == BULK, timeout=60, interval=0.5, what="one whole transfer")
    assert _read_all(upstream) == (BULK, _digest(BULK))


def test_ca_rotation_during_a_live_stream(mesh: Mesh, tmp_path: Path):
    size = 8 << 20
    slow = _Bulk(size, pause=0.25)  # 8 MiB over ~2 s
    public, upstream = free_ports(2)
    mesh.register({"Name": "slow", "Port": slow.port, "Connect": {"SidecarService": {"Port": public}}})
    mesh.register({"Name": "slowc", "Port": 1, "Connect": {"SidecarService": {"Port": free_ports(1)[0], "Proxy": {
        "Upstreams": [{"DestinationName": "slow", "LocalBindPort": upstream}]}}}})
    eventually(lambda: mesh.http.get("/v1/health/connect/slow", params={"passing": ""}).json(), timeout=30, what="slow's proxy")
    old_active = mesh.roots()["ActiveRootID"]

    # Our own root, supplied through the CA configuration: it rotates the CA, and we hold its key.
    root_key, root_key_pem = ca.generate_key()
    root_pem = ca.generate_root(root_key, "11111111-2222-3333-4444-555555555555", 99, 24 * 3600)

    def rotate() -> None:
        config = mesh.http.get("/v1/connect/ca/configuration").json()
        body = {"Provider": "consul", "Config": {**config["Config"], "PrivateKey": root_key_pem, "RootCert": root_pem}}
        r = mesh.http.put("/v1/connect/ca/configuration", json=body)
        assert r.status_code == 200, r.text

    def stream() -> tuple[int, str]:
        try:
            return _read_all(upstream, during=rotate)
        except OSError:
            return 0, ""

    assert eventually(stream, timeout=30, interval=0.5, what="the stream that lived through the rotation") == (size, _digest(size))
    roots = mesh.roots()
    assert roots["ActiveRootID"] != old_active and len(roots["Roots"]) == 2

    # The running proxies moved to the new root: db's public listener now presents a leaf it signed.
    new_root = [r["RootCert"] for r in roots["Roots"] if r["Active"]][0]

    def presents_new_leaf() -> bool:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", public), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
        from cryptography import x509

        return x509.load_der_x509_certificate(der).issuer == ca.parse_cert(new_root).subject

    eventually(presents_new_leaf, timeout=10, what="the proxy took its re-issued leaf")
    assert _read_all(upstream) == (size, _digest(size))  # and new connections work end to end

    # Leaves we sign with the new root's key: in date they get in, expired they do not.
    domain = roots["TrustDomain"]
    trusts = [r["RootCert"] for r in roots["Roots"]]
    cert, key = _forged_leaf(root_key, root_pem, ca.service_uri(domain, "dc1", "slowc"))
    assert len(_tls_to(public, cert, key, trusts, tmp_path)) == size  # slow is raw TCP: the whole stream
    past = ca.now_utc() - dt.timedelta(hours=3)
    cert, key = _forged_leaf(root_key, root_pem, ca.service_uri(domain, "dc1", "slowc"), now=past, ttl=3600)
    assert _tls_to(public, cert, key, trusts, tmp_path) == b""


# ----------------------------------------------------------------- observability, supervision, the CLI


def test_metrics_per_proxy_and_upstream(mesh: Mesh, pair: dict[str, Any]):
    _get(pair["upstream"], "/count")

    def counters() -> set[tuple[str, str, str]]:
        return {(c["Name"], c["Labels"].get("proxy"), c["Labels"].get("listener")) for c in mesh.metrics()["Counters"]}

    # Flushed into the agent's metrics once a second: wait for the upstream's bytes to show.
    eventually(lambda: ("consul.proxy.bytes.in", "web-sidecar-proxy", "upstream:db") in counters(), what="flushed proxy metrics")
    data = mesh.metrics()
    counters = {(c["Name"], c["Labels"].get("proxy"), c["Labels"].get("listener")) for c in data["Counters"]}
    assert ("consul.proxy.connections.accepted", "db-sidecar-proxy", "inbound") in counters
    assert ("consul.proxy.connections.accepted", "web-sidecar-proxy", "upstream:db") in counters
    assert ("consul.proxy.bytes.in", "web-sidecar-proxy", "upstream:db") in counters
    gauges = {(g["Name"], g["Labels"].get("proxy")) for g in data["Gauges"]}
    assert ("consul.proxy.connections.active", "db-sidecar-proxy") in gauges
    text = mesh.http.get("/v1/agent/metrics", params={"format": "prometheus"}).text
    assert 'consul_proxy_connections_accepted{listener="inbound",proxy="db-sidecar-proxy"}' in text


def test_a_proxy_that_cannot_start_is_started_again(mesh: Mesh):
    app = _App("late")
    public, upstream = free_ports(2)
    blocker = socket.create_server(("127.0.0.1", upstream))  # the upstream port is taken: the proxy cannot start
    mesh.register({"Name": "late", "Port": app.port, "Connect": {"SidecarService": {"Port": public}}})
    mesh.register({"Name": "latec", "Port": 1, "Connect": {"SidecarService": {"Port": free_ports(1)[0], "Proxy": {
        "Upstreams": [{"DestinationName": "late", "LocalBindPort": upstream}]}}}})
    eventually(lambda: "proxy latec-sidecar-proxy failed to start" in mesh.agent.log(), timeout=30, what="the failed start")
    blocker.close()
    eventually(lambda: _reachable(upstream), timeout=30, what="the proxy, started again")


def _proxy_cli(agent: AgentProc, *args: str) -> subprocess.Popen:
    return subprocess.Popen([PROCONSUL, "connect", "proxy", "-http-addr", f"127.0.0.1:{agent.http_port}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()


def test_standalone_proxy_for_flags_and_for_a_registered_sidecar(mesh: Mesh, pair: dict[str, Any]):
    (upstream,) = free_ports(1)
    p = _proxy_cli(mesh.agent, "-service", "cli", "-upstream", f"db:{upstream}")
    try:
        eventually(lambda: _reachable(upstream), timeout=30, what="the -service proxy")
        assert _get(upstream, "/cli").text == "db GET /cli 0"
    finally:
        _stop(p)
    assert p.returncode == 0  # SIGTERM is a clean stop

    app = _App("hand")
    public, upstream = free_ports(2)
    mesh.register({"Name": "hand", "Port": app.port, "Connect": {"SidecarService": {"Port": public, "Proxy": {"Config": {"managed": False}}}}})
    mesh.register({"Name": "handc", "Port": 1, "Connect": {"SidecarService": {"Port": free_ports(1)[0], "Proxy": {
        "Upstreams": [{"DestinationName": "hand", "LocalBindPort": upstream}]}}}})
    # handc's managed proxy listens on the upstream port, but nobody runs hand's proxy yet: no answer through it.
    eventually(lambda: socket.create_connection(("127.0.0.1", upstream), timeout=1).close() or True, timeout=30, what="handc's upstream listener")
    assert not _reachable(upstream)
    p = _proxy_cli(mesh.agent, "-sidecar-for", "hand")
    try:
        eventually(lambda: _reachable(upstream), timeout=30, what="the -sidecar-for proxy")
    finally:
        _stop(p)


@pytest.mark.parametrize(
    "args, message",
    [
        (["-sidecar-for", "nosuch"], "No sidecar proxy registered for nosuch"),
        (["-service", "x"], "nothing to proxy: give -upstream and/or -listen"),
        (["-service", "x", "-upstream", "db"], "-upstream: 'db' is not <destination>:<local port>"),
        (["-service", "x", "-listen", "127.0.0.1:1"], "-service-addr is required with -listen"),
    ],
)
def test_standalone_proxy_errors(mesh: Mesh, args: list[str], message: str):
    p = _proxy_cli(mesh.agent, *args)
    try:
        assert p.wait(30) == 1
        err = p.stderr.read().decode()
        assert message in err and "Traceback" not in err
    finally:
        _stop(p)
