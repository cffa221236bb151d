"""Service mesh data path: direct vs proconsul's two sidecars vs an HAProxy mTLS pair, one run.

The same client and the same backend app on 127.0.0.1, three ways:

* direct: client -> app.
* proconsul: client -> web's sidecar upstream listener (plain TCP) -> mTLS ->
  db's sidecar public listener -> app. Both sidecars are managed built-in
  proxies, each in its own node's agent as in production: db's in a dev
  (server) agent, web's in a client agent joined to it — two processes, one
  asyncio loop each, as HAProxy's pair is two processes. An extra row,
  ``proconsul, 1 agent``, puts both sidecars in the server agent (one loop,
  one core for both ends), the layout this benchmark used to measure.
* haproxy: client -> haproxy #1 (plain frontend, ``ssl verify required`` with a
  client cert to #2) -> haproxy #2 (``ssl crt ... verify required``) -> app.
  Two processes like the two agents, ``nbthread 1`` each. Both meshes use the
  same EC P-256 leaf certificates and root (taken from the proconsul dev
  agent's CA), and both link the system OpenSSL, so key types and ciphers match.

Optional L7 rows: ``service-defaults`` with ``Protocol: http`` for separate
destinations ``dbh`` and ``bulkh`` (written before they are registered, in the
same server agent, so every target can be interleaved in one run) against the HAProxy
pair's ``mode http`` frontends.

Workloads: (a) small requests: wrk (Debian) with 1 and 16 keep-alive
connections GETs a 100-byte body from a third HAProxy (``http-request
return``) for a bounded time: req/s, p50/p99, and the CPU of wrk and of each
proxy, since on 2 cores they compete. (b) bulk: one connection streams
``BULK_BYTES`` (bounded in bytes and time) from a sendfile() sender to a
reader here: MB/s. Targets alternate A B C A B C over the rounds, so the
ratios are paired. The CPU other processes on the box used during each run is
shown too. A proconsul row whose proxies are not there (or fail) prints
``skipped: <reason>`` instead of figures.

Run: ``python -m bench mesh`` (installs wrk and haproxy from Debian when missing).
"""

from __future__ import annotations

import importlib.util
import os
import re
import resource
import shutil
import signal
import socket
import socketserver
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import free_ports  # noqa: E402

DURATION = 4  # seconds per wrk run
ROUNDS = 3
CONNECTIONS = (1, 16)  # keep-alive connections per wrk run, L4 rows
L7_CONNECTIONS = (16,)  # L7 rows run at these only, to keep the whole run under ~4 minutes
BODY = "x" * 100
BULK_BYTES = 1 << 30
BULK_TIME = 6.0  # seconds; a slower path reports the bytes it moved in this time
BULK_FILE = 16 << 20
READY_TIMEOUT = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent

DIRECT, OURS, HAPROXY, OURS_L7, HAPROXY_L7 = "direct", "proconsul", "haproxy", "proconsul L7 (http)", "haproxy L7 (http)"
OURS_ONE = "proconsul, 1 agent"  # both sidecars in one agent process (one loop, one core)
PAIRS = (
    (OURS, DIRECT), (OURS, HAPROXY), (OURS_ONE, HAPROXY), (HAPROXY, DIRECT),
    (OURS_L7, DIRECT), (OURS_L7, HAPROXY_L7), (HAPROXY_L7, DIRECT),
)


@dataclass
class Target:
    """One way from the client to the app: its listening ports and the processes doing the proxying."""

    name: str
    small_port: int
    bulk_port: int
    proxy_pids: list[int] = field(default_factory=list)
    skipped: str | None = None
    tls_port: int = 0  # the db side's mTLS listener for the small requests


@dataclass
class Procs:
    """Every process this benchmark started, stopped by PID in ``finally``."""

    started: list[subprocess.Popen] = field(default_factory=list)

    def start(self, cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except ProcessLookupError:
                proc.wait()
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def ensure_tools() -> None:
    """apt-get install wrk and haproxy when they are missing (we run as root)."""
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("haproxy", "haproxy")) if not shutil.which(tool)]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, capture_output=True)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of a running process, all threads (/proc/<pid>/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def others_cpu(ours: set[int]) -> dict[int, float]:
    """CPU seconds so far of every process on the box but ours: a run they load is a noisy run."""
    return {int(d): sum(cpu_seconds(int(d))) for d in os.listdir("/proc") if d.isdigit() and int(d) not in ours}


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")
            time.sleep(0.05)


# --- the bulk sender: its own process, ``python -m bench.mesh bulk-sender PORT FILE``


class _BulkHandler(socketserver.BaseRequestHandler):
    """Reads one HTTP request ``GET /bulk/<n>``, answers n bytes with Content-Length and closes."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(65536)
            if not chunk:
                return
            head += chunk
        m = re.match(rb"GET /bulk/(\d+) ", head)
        n = min(int(m.group(1)), 8 * BULK_BYTES) if m else 0
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % n)
        sock.settimeout(None)  # blocking: os.sendfile on a socket with a timeout (non-blocking) would stop at EAGAIN
        fd, size, sent = self.server.fd, self.server.size, 0  # type: ignore[attr-defined]
        try:
            while sent < n:
                sent += os.sendfile(sock.fileno(), fd, sent % size, min(size - sent % size, n - sent))
        except OSError:
            pass  # the reader gave up at its time limit


def bulk_sender(port: int, path: str) -> None:
    """Serve ``GET /bulk/<n>`` from a file with sendfile(), one thread per connection."""
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), _BulkHandler)
    server.daemon_threads = True
    server.fd = os.open(path, os.O_RDONLY)  # type: ignore[attr-defined]
    server.size = os.fstat(server.fd).st_size  # type: ignore[attr-defined]
    server.serve_forever()


# --- clients


def fetch_bulk(port: int, n: int, time_limit: float) -> dict[str, float]:
    """GET n bytes over one new connection; bytes and seconds from the request to the last byte (or the time limit)."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    start, cpu = time.perf_counter(), time.process_time()
    deadline = start + time_limit
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /bulk/%d HTTP/1.1\r\nHost: bulk\r\n\r\n" % n)
        head = b""
        while b"\r\n\r\n" not in head:
            got = sock.recv_into(view)
            if not got:
                raise RuntimeError(f"connection closed before the response header ({head[:80]!r})")
            head += bytes(view[:got])
            if b"\r\n\r\n" not in head[:65536] and len(head) > 65536:
                raise RuntimeError("no response header")
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            raise RuntimeError(f"answer {status.decode(errors='replace')!r}")
        body = len(head) - head.index(b"\r\n\r\n") - 4
        while body < n and time.perf_counter() < deadline:
            got = sock.recv_into(view)
            if not got:
                break
            body += got
    elapsed = time.perf_counter() - start
    return {"bytes": body, "seconds": elapsed, "client_cpu": time.process_time() - cpu}


def answers(port: int, bulk_port: int) -> str | None:
    """None when both a small GET and a small bulk GET through these ports get the app's answer, else why not."""
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
        if r.status_code != 200 or r.text != BODY:
            return f"GET / answered {r.status_code} {r.text[:60]!r}"
        got = fetch_bulk(bulk_port, 16, 2)["bytes"]
        if got != 16:
            return f"bulk GET of 16 bytes gave {got}"
        return None
    except (httpx.HTTPError, OSError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(port: int, connections: int) -> dict[str, float]:
    """One wrk run: req/s, p50/p99 latency in ms, errors, and wrk's own CPU in cores."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{DURATION}s", "--latency", "--timeout", "5s", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=DURATION + 30,
    ).stdout
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"wrk printed no Requests/sec: {out[-200:]!r}")
    lat = {q: float(v) * _UNITS[u] for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockerr = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sockerr.groups())) if sockerr else 0)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": lat.get("50", float("nan")),
        "p99_ms": lat.get("99", float("nan")),
        "requests": float(total.group(1)) if total else 0.0,
        "errors": float(errors),
        "wrk_cpu": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall,
    }


def measured(fn: Any, pids: dict[str, list[int]], ours: set[int]) -> dict[str, float]:
    """Run fn() and add the CPU (in cores over its wall time, and the kernel's part) of each named group of processes, and of the others."""

    def sample() -> dict[str, tuple[float, float]]:
        return {k: (sum(sum(cpu_seconds(p)) for p in ps), sum(cpu_seconds(p)[1] for p in ps)) for k, ps in pids.items()}

    before, others = sample(), others_cpu(ours)
    t = time.perf_counter()
    r = fn()
    wall = time.perf_counter() - t
    after, others_after = sample(), others_cpu(ours)
    r["others_cpu"] = sum(v - others[p] for p, v in others_after.items() if p in others) / wall
    for k in pids:
        r[f"{k}_cpu"] = (after[k][0] - before[k][0]) / wall
        r[f"{k}_sys"] = (after[k][1] - before[k][1]) / wall
    return r


def negotiated(port: int, workdir: Path) -> str:
    """TLS version and cipher a db-side listener picks for an OpenSSL client holding web's certificate."""
    ctx = ssl.create_default_context(cafile=str(workdir / "ca.pem"))
    ctx.check_hostname = False  # the leaves name SPIFFE IDs, not hosts
    ctx.load_cert_chain(str(workdir / "web.pem"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            return f"{tls.version()} {tls.cipher()[0]}"
    except (OSError, ssl.SSLError) as e:
        return f"n/a ({e})"


# --- the servers


def write_certs(workdir: Path, agent_http: int | None) -> str:
    """ca.pem, web.pem and db.pem (cert + key) for the HAProxy pair: from the agent's CA, else made here."""
    if agent_http is not None:
        try:
            base = f"http://127.0.0.1:{agent_http}"
            roots = httpx.get(f"{base}/v1/agent/connect/ca/roots", timeout=10).json()
            root = next(r for r in roots["Roots"] if r["Active"])
            (workdir / "ca.pem").write_text(root["RootCert"] + "".join(root.get("IntermediateCerts") or []))
            for svc in ("web", "db"):
                leaf = httpx.get(f"{base}/v1/agent/connect/ca/leaf/{svc}", timeout=10).json()
                (workdir / f"{svc}.pem").write_text(leaf["CertPEM"] + leaf["PrivateKeyPEM"])
            return "EC P-256 leaves from proconsul's Connect CA"
        except (httpx.HTTPError, KeyError, StopIteration, ValueError):
            pass
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        out = cert.public_bytes(serialization.Encoding.PEM)
        if key is not None:
            out += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return out

    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    )
    (workdir / "ca.pem").write_bytes(pem(ca))
    for svc in ("web", "db"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, svc)])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1)).sign(ca_key, hashes.SHA256())
        )
        (workdir / f"{svc}.pem").write_bytes(pem(cert, key))
    return "EC P-256 certificates made here (the agent's CA did not answer)"


HAPROXY_GLOBAL = """global
  nbthread 1
  maxconn 4096
defaults
  timeout connect 5s
  timeout client 30s
  timeout server 30s
"""


def start_haproxy(procs: Procs, workdir: Path, name: str, body: str, ports: list[int]) -> int:
    """Check and start one haproxy in the foreground; its PID once all its ports listen."""
    cfg = workdir / f"{name}.cfg"
    cfg.write_text(HAPROXY_GLOBAL + body)
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy config {name}: {check.stdout}{check.stderr}")
    proc = procs.start(["haproxy", "-db", "-f", str(cfg)], workdir / f"{name}.log")
    for port in ports:
        wait_port(port)
    return proc.pid


def start_haproxy_pair(procs: Procs, workdir: Path, app: int, bulk: int) -> tuple[Target, Target]:
    """haproxy #1 (web's side: plain in, mTLS out) and #2 (db's side: mTLS in, plain to the app), L4 and L7 frontends."""
    front = free_ports(4)  # small tcp, bulk tcp, small http, bulk http on #1
    back = free_ports(4)  # the same on #2
    app_ports = (app, bulk, app, bulk)
    modes = ("tcp", "tcp", "http", "http")
    client = server = ""
    for i, (mode, f, b, a) in enumerate(zip(modes, front, back, app_ports)):
        client += (
            f"frontend f{i}\n  mode {mode}\n  bind 127.0.0.1:{f}\n  default_backend b{i}\n"
            f"backend b{i}\n  mode {mode}\n  server s 127.0.0.1:{b} ssl verify required ca-file {workdir}/ca.pem crt {workdir}/web.pem\n"
        )
        server += (
            f"frontend f{i}\n  mode {mode}\n  bind 127.0.0.1:{b} ssl crt {workdir}/db.pem ca-file {workdir}/ca.pem verify required\n  default_backend b{i}\n"
            f"backend b{i}\n  mode {mode}\n  server app 127.0.0.1:{a}\n"
        )
    pid2 = start_haproxy(procs, workdir, "haproxy-db", server, back)
    pid1 = start_haproxy(procs, workdir, "haproxy-web", client, front)
    pair = [pid1, pid2]
    return Target(HAPROXY, front[0], front[1], pair, tls_port=back[0]), Target(HAPROXY_L7, front[2], front[3], pair, tls_port=back[2])


def start_agent(procs: Procs, workdir: Path, name: str, join: int | None = None) -> tuple[int, int, int]:
    """A proconsul agent on free ports: a dev agent (server), or a client agent joined to the server port ``join``.

    Its PID, HTTP port and server port, once it has a leader (and, for a client, once it is a live member)."""
    http, server, dns = free_ports(3)
    cmd = [str(Path(sys.executable).parent / "proconsul"), "agent", "-node", name, "-http-port", str(http), "-dns-port", str(dns), "-log-level", "warn"]
    if join is None:
        cmd += ["-dev", "-server-port", str(server)]
    else:
        cmd += ["-retry-join", f"127.0.0.1:{join}", "-data-dir", str(workdir / name)]
    proc = procs.start(cmd, workdir / f"{name}.log")
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{http}/v1/status/leader", timeout=1).json():
                members = httpx.get(f"http://127.0.0.1:{http}/v1/agent/members", timeout=1).json()
                if any(m["Name"] == name and m["Status"] == 1 for m in members):
                    return proc.pid, http, server
        except (httpx.HTTPError, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"proconsul agent {name} did not start (see {workdir}/{name}.log)")
        time.sleep(0.1)


def _register(http: int, body: dict[str, Any]) -> None:
    httpx.put(f"http://127.0.0.1:{http}/v1/agent/service/register", json=body, timeout=10).raise_for_status()


def register_mesh(db_agent: tuple[int, int], web_agent: tuple[int, int], app: int, bulk: int) -> tuple[Target, Target, Target]:
    """The sidecar pairs; each agent is ``(pid, http port)``; wait until every pair answers.

    db/bulk (tcp) and dbh/bulkh (http) sidecars run in ``db_agent``; web (upstreams db, bulk) and webh
    (upstreams dbh, bulkh) in ``web_agent``, as they would on two nodes; web1 (upstreams db, bulk) in
    ``db_agent``, for the row with both sidecars in one process. Every sidecar gets an explicit free
    port: the default range (21000+) may be taken by other agents on the box."""
    (db_pid, db_http), (web_pid, web_http) = db_agent, web_agent
    up = free_ports(6)  # the upstream listeners: web's db and bulk, webh's dbh and bulkh, web1's db and bulk
    side = free_ports(7)  # the sidecars' own ports
    for name in ("dbh", "bulkh"):  # before the services, so the proxies start as L7
        httpx.put(f"http://127.0.0.1:{db_http}/v1/config", json={"Kind": "service-defaults", "Name": name, "Protocol": "http"}, timeout=10).raise_for_status()
    for (name, port), sp in zip((("db", app), ("bulk", bulk), ("dbh", app), ("bulkh", bulk)), side):
        _register(db_http, {"Name": name, "Port": port, "Connect": {"SidecarService": {"Port": sp}}})
    for http, name, dests, sp in (
        (web_http, "web", (("db", up[0]), ("bulk", up[1])), side[4]),
        (web_http, "webh", (("dbh", up[2]), ("bulkh", up[3])), side[5]),
        (db_http, "web1", (("db", up[4]), ("bulk", up[5])), side[6]),
    ):
        upstreams = [{"DestinationName": d, "LocalBindPort": p} for d, p in dests]
        _register(http, {"Name": name, "Port": app, "Connect": {"SidecarService": {"Port": sp, "Proxy": {"Upstreams": upstreams}}}})
    targets = (
        Target(OURS, up[0], up[1], [web_pid, db_pid], tls_port=side[0]),
        Target(OURS_L7, up[2], up[3], [web_pid, db_pid], tls_port=side[2]),
        Target(OURS_ONE, up[4], up[5], [db_pid], tls_port=side[0]),
    )
    has_proxy = importlib.util.find_spec("proconsul.agent.proxy") is not None
    deadline = time.monotonic() + READY_TIMEOUT
    pending = list(targets)
    while pending:
        for t in list(pending):
            why = answers(t.small_port, t.bulk_port)
            if why is None:
                pending.remove(t)
                t.skipped = None
            else:
                t.skipped = why
        if pending and time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for t in pending:
        what = "managed proxies not available" if not has_proxy else "no answer through the sidecars"
        note = "; proconsul.agent.proxy does not exist" if not has_proxy else ""
        t.skipped = f"{what} (waited {READY_TIMEOUT:.0f}s; last try: {t.skipped}{note})"
    return targets


# --- the measurement


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """Medians of every figure over the rounds, with the min and max of the headline one."""
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    key = "rps" if "rps" in out else "mb_s"
    out[f"{key}_min"] = min(r[key] for r in runs)
    out[f"{key}_max"] = max(r[key] for r in runs)
    out["others_cpu_max"] = max(r["others_cpu"] for r in runs)
    return out


def ratios(rows: dict[str, dict], keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Ratios of the medians for each pair in PAIRS whose rows both ran."""
    out = {}
    for a, b in PAIRS:
        if "skipped" in rows.get(a, {"skipped": 1}) or "skipped" in rows.get(b, {"skipped": 1}):
            continue
        out[f"{a} / {b}"] = {k: rows[a][k] / rows[b][k] for k in keys if rows[b][k]}
    return out


def run_small(targets: list[Target], pids: dict[str, int], ours: set[int], connections: int) -> dict[str, Any]:
    """wrk against each target in turn, ROUNDS times; a target with >1% errors is dropped with the reason."""
    runs: dict[str, list[dict]] = {t.name: [] for t in targets}
    for _ in range(ROUNDS):  # A B C A B C
        for t in targets:
            if t.skipped:
                continue
            try:
                r = measured(lambda: wrk(t.small_port, connections), {"proxy": t.proxy_pids, "app": [pids["app"]]}, ours)
                if r["errors"] > 0.01 * max(r["requests"], 1):
                    raise RuntimeError(f"{r['errors']:.0f} errors in {r['requests']:.0f} requests")
                runs[t.name].append(r)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                t.skipped = f"failed: {e}"
    return {t.name: {"skipped": t.skipped} if t.skipped else summarize(runs[t.name]) for t in targets}


def run_bulk(targets: list[Target], pids: dict[str, int], ours: set[int]) -> dict[str, Any]:
    """One bulk GET per target in turn, ROUNDS times; a stream cut short before the time limit drops the target."""
    runs: dict[str, list[dict]] = {t.name: [] for t in targets}
    for _ in range(ROUNDS):
        for t in targets:
            if t.skipped:
                continue
            try:
                r = measured(lambda: fetch_bulk(t.bulk_port, BULK_BYTES, BULK_TIME), {"proxy": t.proxy_pids, "sender": [pids["bulk"]]}, ours)
                if r["bytes"] < BULK_BYTES and r["seconds"] < BULK_TIME:
                    raise RuntimeError(f"connection closed after {r['bytes']:.0f} of {BULK_BYTES} bytes")
                r["mb_s"] = r["bytes"] / r["seconds"] / 1e6
                r["client_cpu"] /= r["seconds"]
                runs[t.name].append(r)
            except (RuntimeError, OSError) as e:
                t.skipped = f"failed: {type(e).__name__}: {e}"
    return {t.name: {"skipped": t.skipped} if t.skipped else summarize(runs[t.name]) for t in targets}


def main(argv: list[str]) -> dict[str, Any]:
    """Start everything, measure small requests then bulk, stop what was started, print and return the figures."""
    ensure_tools()
    procs = Procs()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="proconsul-bench-mesh-") as tmp:
        workdir = Path(tmp)
        try:
            app, bulk = free_ports(2)
            (workdir / "bulk.bin").write_bytes(os.urandom(BULK_FILE))
            pids = {"bulk": procs.start([sys.executable, "-m", "bench.mesh", "bulk-sender", str(bulk), str(workdir / "bulk.bin")], workdir / "bulk.log", cwd=REPO).pid}
            pids["app"] = start_haproxy(
                procs, workdir, "app",
                f"frontend app\n  mode http\n  bind 127.0.0.1:{app}\n  http-request return status 200 content-type text/plain string {BODY}\n",
                [app],
            )
            wait_port(bulk)
            direct = Target(DIRECT, app, bulk)
            try:
                db_pid, db_http, db_server = start_agent(procs, workdir, "db-node")
                web_pid, web_http, _ = start_agent(procs, workdir, "web-node", join=db_server)
                agent_error = None
            except RuntimeError as e:
                db_http, agent_error = None, str(e)
            certs = write_certs(workdir, db_http)
            hap, hap_l7 = start_haproxy_pair(procs, workdir, app, bulk)
            if agent_error is None:
                ours, ours_l7, ours_one = register_mesh((db_pid, db_http), (web_pid, web_http), app, bulk)
            else:
                ours, ours_l7, ours_one = (Target(n, 0, 0, skipped=agent_error) for n in (OURS, OURS_L7, OURS_ONE))
            for t in (direct, hap, hap_l7):
                if (why := answers(t.small_port, t.bulk_port)) is not None:
                    raise RuntimeError(f"{t.name}: {why}")
            l4 = [direct, ours, ours_one, hap]
            l7 = [ours_l7, hap_l7]
            mine = {p.pid for p in procs.started} | {os.getpid()}
            results["setup"] = {
                "certs": certs,
                "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0].split(" - ")[0],
                "cores": os.cpu_count(),
                "tls": {t.name: negotiated(t.tls_port, workdir) for t in (ours, hap) if t.tls_port},
                "proconsul_skipped": ours.skipped,
                "proconsul_one_agent_skipped": ours_one.skipped,
                "proconsul_l7_skipped": ours_l7.skipped,
            }
            results["small"] = {}
            for c in sorted(set(CONNECTIONS) | set(L7_CONNECTIONS)):
                targets = (l4 if c in CONNECTIONS else [direct]) + (l7 if c in L7_CONNECTIONS else [])
                rows = run_small(targets, pids, mine, c)
                results["small"][f"{c} connection{'s' if c > 1 else ''}"] = rows | {"ratios": ratios(rows, ("rps", "p50_ms", "p99_ms"))}
            rows = run_bulk(l4 + l7, pids, mine)
            results["bulk"] = rows | {"ratios": ratios(rows, ("mb_s",))}
        finally:
            procs.stop_all()
    report(results)
    return results


def _fmt_skip(name: str, row: dict) -> str | None:
    return f"  {name:<21}skipped: {row['skipped']}" if "skipped" in row else None


def report(results: dict[str, Any]) -> None:
    """The tables: one per connection count for small requests, one for bulk, each followed by its ratios."""
    s = results["setup"]
    print(f"Service mesh data path on 127.0.0.1, {s['cores']} cores; mTLS with {s['certs']}.")
    print("  proconsul: web's sidecar in a client agent, db's in a server agent (two processes, one asyncio loop each);")
    print(f"             '{OURS_ONE}': both sidecars in the server agent (one loop, one core).")
    print(f"  haproxy:   {s['haproxy']}, two processes (web's side, db's side), nbthread 1 each; app = a third haproxy.")
    print("  db side's TLS for an OpenSSL client: " + "; ".join(f"{k}: {v}" for k, v in s["tls"].items()))
    print(f"Small requests: wrk -t1, GET of a {len(BODY)}-byte body, {DURATION}s per run, {ROUNDS} interleaved rounds")
    print("  (median [min-max] req/s; p50/p99 ms medians; CPU in cores: wrk, the proxies (of which kernel), proxy CPU per request, the app, other processes)")
    for conns, rows in results["small"].items():
        print(f"  {conns}")
        print(f"  {'target':<21}{'req/s':>9}  {'[min-max]':<17}{'p50 ms':>8}{'p99 ms':>8}{'wrk':>6}{'proxy':>7}{'(sys)':>7}{'µs/req':>7}{'app':>6}{'other':>7}")
        for name, r in rows.items():
            if name == "ratios":
                continue
            print(_fmt_skip(name, r) or (
                f"  {name:<21}{r['rps']:>9.0f}  {'[%.0f-%.0f]' % (r['rps_min'], r['rps_max']):<17}{r['p50_ms']:>8.3f}{r['p99_ms']:>8.3f}"
                f"{r['wrk_cpu']:>6.2f}{r['proxy_cpu']:>7.2f}{r['proxy_sys']:>7.2f}{r['proxy_cpu'] / r['rps'] * 1e6:>7.0f}{r['app_cpu']:>6.2f}{r['others_cpu']:>7.2f}"
            ))
        for pair, q in rows["ratios"].items():
            print(f"    {pair:<40} req/s {q.get('rps', float('nan')):.2f}x   p50 {q.get('p50_ms', float('nan')):.2f}x   p99 {q.get('p99_ms', float('nan')):.2f}x")
    print(f"Bulk: one connection, {BULK_BYTES >> 20} MiB from a sendfile() sender (bounded at {BULK_TIME:.0f}s), {ROUNDS} interleaved rounds")
    print(f"  {'target':<21}{'MB/s':>9}  {'[min-max]':<17}{'reader':>7}{'proxy':>7}{'(sys)':>7}{'sender':>7}{'other':>7}  (CPU in cores)")
    for name, r in results["bulk"].items():
        if name == "ratios":
            continue
        print(_fmt_skip(name, r) or (
            f"  {name:<21}{r['mb_s']:>9.0f}  {'[%.0f-%.0f]' % (r['mb_s_min'], r['mb_s_max']):<17}"
            f"{r['client_cpu']:>7.2f}{r['proxy_cpu']:>7.2f}{r['proxy_sys']:>7.2f}{r['sender_cpu']:>7.2f}{r['others_cpu']:>7.2f}"
        ))
    for pair, q in results["bulk"]["ratios"].items():
        print(f"    {pair:<40} MB/s {q['mb_s']:.2f}x")
    rows = [r for t in (*results["small"].values(), results["bulk"]) for n, r in t.items() if n != "ratios" and "skipped" not in r]
    busiest = max((r["others_cpu_max"] for r in rows), default=0.0)
    if busiest > 0.1:
        print(f"  note: other processes on the box used up to {busiest:.2f} cores during a run ('other' column: medians); that run is noisy")


if __name__ == "__main__" and sys.argv[1:2] == ["bulk-sender"]:
    bulk_sender(int(sys.argv[2]), sys.argv[3])
