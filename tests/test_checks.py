"""Check runners against real local servers, sockets and processes (agent/checks.py)."""

from __future__ import annotations

import asyncio
import datetime
import http
import os
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from proconsul.agent import checks
from proconsul.agent.checks import CheckRunner, CheckSpec, StatusHandler, go_duration

pytestmark = pytest.mark.anyio

PY = sys.executable


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def eventually(fn: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or fn}")
        await asyncio.sleep(0.01)


class Reports(list):
    """The report callback: collects (status, output) and lets a test wait for the n-th."""

    def __call__(self, check_id: str, status: str, output: str) -> None:
        self.append((status, output))

    async def wait(self, n: int = 1, timeout: float = 5.0) -> tuple[str, str]:
        await eventually(lambda: len(self) >= n, timeout, f"{n} reports, have {list(self)}")
        return self[n - 1]


@pytest.fixture
async def run():
    """run(spec) starts a runner with no stagger and no minimum interval; all are stopped at teardown."""
    made: list[CheckRunner] = []

    def start(spec: CheckSpec, **kw: Any) -> tuple[CheckRunner, Reports]:
        reports = Reports()
        kw.setdefault("stagger", lambda interval: 0.0)
        kw.setdefault("min_interval", 0.0)
        runner = CheckRunner(spec, reports, **kw)
        made.append(runner)
        runner.start()
        return runner, reports

    yield start
    for runner in made:
        await runner.stop()


def spec(kind: str, **kw: Any) -> CheckSpec:
    kw.setdefault("interval", 10.0)
    return CheckSpec(check_id="chk", name="chk", kind=kind, **kw)


# ----------------------------------------------------------------- a tiny HTTP server


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class HTTPServer:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.seq: list[int] = []
        self.sni: list[str | None] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()
        self.scheme = "http"

    async def start(self, ssl_ctx: ssl.SSLContext | None = None) -> "HTTPServer":
        if ssl_ctx is not None:
            self.scheme = "https"
            ssl_ctx.sni_callback = lambda sslobj, name, ctx: self.sni.append(name)
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ssl_ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers)
        await self._server.wait_closed()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
            length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
            body = await reader.readexactly(length) if length else b""
            self.requests.append(Seen(method, path, headers, body))  # type: ignore[arg-type]
            code, extra, payload = 200, "", b"ok"
            if path.startswith("/status/"):
                code = int(path.rsplit("/", 1)[1])
                payload = f"body {code}".encode()
            elif path == "/seq":
                code = self.seq.pop(0)
                payload = f"seq {code} #{len(self.requests)}".encode()
            elif path == "/slow":
                await reader.read(1)  # until the client gives up
                return
            elif path.startswith("/redirect/"):
                n = int(path.rsplit("/", 1)[1])
                if n:
                    code, extra, payload = 302, f"Location: /redirect/{n - 1}\r\n", b"moved"
                else:
                    payload = b"landed"
            elif path == "/loop":
                code, extra, payload = 302, "Location: /loop\r\n", b"again"
            elif path == "/big":
                payload = b"a" * 5000 + b"b" * 5000
            reason = http.HTTPStatus(code).phrase if code in http.HTTPStatus._value2member_map_ else "Whatever"
            writer.write(
                f"HTTP/1.1 {code} {reason}\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n{extra}\r\n".encode()
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()


@pytest.fixture
async def web():
    srv = await HTTPServer().start()
    yield srv
    await srv.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- http


@pytest.mark.parametrize(
    "code,status,reason",
    [(200, "passing", "OK"), (204, "passing", "No Content"), (429, "warning", "Too Many Requests"),
     (500, "critical", "Internal Server Error"), (404, "critical", "Not Found"), (301, "critical", "Moved Permanently")],
)
async def test_http_status_maps_and_output_is_consuls(run, web, code, status, reason):
    url = web.url(f"/status/{code}")
    _, reports = run(spec("http", http=url, disable_redirects=True))
    body = "" if code == 204 else f"body {code}"
    assert await reports.wait() == (status, f"HTTP GET {url}: {code} {reason} Output: {body}")


async def test_http_connection_refused_is_critical(run):
    port = free_port()
    url = f"http://127.0.0.1:{port}/health"
    _, reports = run(spec("http", http=url))
    assert await reports.wait() == ("critical", f'Get "{url}": dial tcp 127.0.0.1:{port}: connect: connection refused')


async def test_http_timeout_is_critical(run, web):
    url = web.url("/slow")
    started = time.monotonic()
    _, reports = run(spec("http", http=url, method="POST", timeout=0.3))
    status, output = await reports.wait()
    assert (status, output) == (
        "critical",
        f'Post "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)',
    )
    assert time.monotonic() - started < 2


async def test_http_sends_method_headers_body_and_consul_defaults(run, web):
    header = {"X-Multi": ["one", "two"], "Authorization": ["Bearer t"]}
    _, reports = run(spec("http", http=web.url("/"), method="PUT", header=header, body='{"ping": 1}'))
    assert (await reports.wait())[0] == "passing"
    req = web.requests[0]
    assert (req.method, req.path, req.body) == ("PUT", "/", b'{"ping": 1}')
    assert req.header("X-Multi") == ["one", "two"]
    assert req.header("Authorization") == ["Bearer t"]
    assert req.header("User-Agent") == ["Consul Health Check"]
    assert req.header("Accept") == ["text/plain, text/*, */*"]


async def test_http_check_headers_override_defaults_and_host(run, web):
    header = {"User-Agent": ["probe/1"], "Accept": ["application/json"], "Host": ["svc.example"]}
    _, reports = run(spec("http", http=web.url("/"), header=header))
    await reports.wait()
    req = web.requests[0]
    assert req.method == "GET" and req.body == b""
    assert req.header("User-Agent") == ["probe/1"]
    assert req.header("Accept") == ["application/json"]
    assert req.header("Host") == ["svc.example"]


async def test_http_follows_redirects(run, web):
    url = web.url("/redirect/3")
    _, reports = run(spec("http", http=url))
    assert await reports.wait() == ("passing", f"HTTP GET {url}: 200 OK Output: landed")
    assert [r.path for r in web.requests] == ["/redirect/3", "/redirect/2", "/redirect/1", "/redirect/0"]


async def test_http_stops_after_ten_redirects(run, web):
    url = web.url("/loop")
    _, reports = run(spec("http", http=url))
    assert await reports.wait() == ("critical", f'Get "{url}": stopped after 10 redirects')
    assert len(web.requests) == 11


async def test_http_redirects_disabled_reports_the_redirect(run, web):
    url = web.url("/redirect/1")
    _, reports = run(spec("http", http=url, disable_redirects=True))
    assert await reports.wait() == ("critical", f"HTTP GET {url}: 302 Found Output: moved")
    assert len(web.requests) == 1


async def test_http_body_capped_keeps_the_tail(run, web):
    url = web.url("/big")
    _, reports = run(spec("http", http=url, output_max_size=100))
    assert await reports.wait() == ("passing", f"HTTP GET {url}: 200 OK Output: {'b' * 100}")


async def test_http_runs_every_interval_and_reports_every_run(run, web):
    web.seq = [200, 200, 500]
    _, reports = run(spec("http", http=web.url("/seq"), interval=0.05))
    await reports.wait(3)
    assert [s for s, _ in reports[:3]] == ["passing", "passing", "critical"]


def _self_signed(tmp: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svc.internal")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("svc.internal")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "k.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return ctx


async def test_https_verifies_unless_skip_verify_and_sends_server_name(run, tmp_path):
    srv = await HTTPServer().start(_self_signed(tmp_path))
    try:
        url = srv.url("/status/200")
        _, strict = run(spec("http", http=url))
        status, output = await strict.wait()
        assert status == "critical" and output.startswith(f'Get "{url}": tls: ') and "CERTIFICATE_VERIFY_FAILED" in output
        _, relaxed = run(spec("http", http=url, tls_skip_verify=True, tls_server_name="svc.internal"))
        assert await relaxed.wait() == ("passing", f"HTTP GET {url}: 200 OK Output: body 200")
        assert srv.sni[-1] == "svc.internal"
    finally:
        await srv.close()


# ----------------------------------------------------------------- tcp / udp


async def test_tcp_up_and_down(run):
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    addr = "127.0.0.1:%d" % server.sockets[0].getsockname()[1]
    try:
        _, up = run(spec("tcp", tcp=addr))
        assert await up.wait() == ("passing", f"TCP connect {addr}: Success")
    finally:
        server.close()
        await server.wait_closed()
    _, down = run(spec("tcp", tcp=addr))
    assert await down.wait() == ("critical", f"dial tcp {addr}: connect: connection refused")


async def test_udp_reply_or_silence_passes_refusal_fails(run):
    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):  # type: ignore[override]
            self.transport = transport

        def datagram_received(self, data, addr):  # type: ignore[override]
            self.transport.sendto(b"pong", addr)

    echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        echo_addr = "127.0.0.1:%d" % echo.get_extra_info("sockname")[1]
        silent_addr = "127.0.0.1:%d" % silent.getsockname()[1]
        _, a = run(spec("udp", udp=echo_addr))
        _, b = run(spec("udp", udp=silent_addr, timeout=0.2))
        assert await a.wait() == ("passing", f"UDP connect {echo_addr}: Success")
        assert await b.wait() == ("passing", f"UDP connect {silent_addr}: Success")
    finally:
        echo.close()
        silent.close()
    closed = "127.0.0.1:%d" % free_port()
    _, c = run(spec("udp", udp=closed, timeout=2))
    status, output = await c.wait()
    assert status == "critical" and output.startswith("read udp 127.0.0.1:") and output.endswith(
        f"->{closed}: read: connection refused"
    )


# ----------------------------------------------------------------- ttl


async def test_ttl_expires_to_critical_once_and_updates_restart_it(run):
    runner, reports = run(spec("ttl", interval=0, ttl=0.2, status="passing"))
    await asyncio.sleep(0.05)
    assert reports == []  # the initial status is the caller's
    assert await reports.wait(1) == ("critical", "TTL expired")
    await asyncio.sleep(0.3)
    assert len(reports) == 1  # no new expiry until an update re-arms the timer
    runner.ttl_update("passing", "all good")
    assert reports[-1] == ("passing", "all good")
    for _ in range(4):  # updates inside the TTL keep it alive
        await asyncio.sleep(0.1)
        runner.ttl_update("warning", "still here")
    assert [s for s, _ in reports[2:]] == ["warning"] * 4
    assert await reports.wait(7) == ("critical", "TTL expired (last output before timeout follows): still here")


async def test_ttl_update_caps_output_at_the_head(run):
    runner, reports = run(spec("ttl", interval=0, ttl=5, output_max_size=10))
    runner.ttl_update("passing", "0123456789abcdef")
    assert reports == [("passing", "0123456789 ... (captured 10 of 16 bytes)")]
    runner.ttl_update("passing", "short")
    assert reports[-1] == ("passing", "short")


async def test_ttl_update_on_other_kinds_is_refused(run, web):
    runner, _ = run(spec("http", http=web.url("/")))
    with pytest.raises(ValueError):
        runner.ttl_update("passing", "")


# ----------------------------------------------------------------- script


@pytest.mark.parametrize("code,status", [(0, "passing"), (1, "warning"), (2, "critical"), (-9, "critical")])
async def test_script_exit_codes_and_combined_output(run, code, status):
    prog = (
        "import os, signal, sys; print('out', flush=True); print('err', file=sys.stderr, flush=True);"
        + (f"sys.exit({code})" if code >= 0 else "os.kill(os.getpid(), signal.SIGKILL)")
    )
    _, reports = run(spec("script", args=[PY, "-c", prog]))
    assert await reports.wait() == (status, "out\nerr\n")


async def test_script_output_capped_keeps_tail_with_captured_header(run):
    prog = "import sys; sys.stdout.write('a' * 5000); sys.stdout.flush(); sys.stderr.write('tail-from-stderr')"
    _, reports = run(spec("script", args=[PY, "-c", prog], output_max_size=100))
    status, output = await reports.wait()
    assert status == "passing"
    assert output == "Captured 100 of 5016 bytes\n...\n" + "a" * 84 + "tail-from-stderr"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


GRANDPARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(str(child.pid))
print("started", flush=True)
time.sleep(60)
"""


async def test_script_timeout_kills_the_process_group(run, tmp_path):
    pidfile = tmp_path / "grandchild"
    _, reports = run(spec("script", args=[PY, "-c", GRANDPARENT, str(pidfile)], timeout=1.0))
    assert await reports.wait(timeout=10) == ("critical", "Timed out (1s) running check\n\nstarted\n")
    grandchild = int(pidfile.read_text())
    await eventually(lambda: not _alive(grandchild), 3, "grandchild gone")


async def test_script_that_cannot_start_is_critical(run, tmp_path):
    _, a = run(spec("script", args=["proconsul-no-such-command"]))
    _, b = run(spec("script", args=[str(tmp_path / "missing")]))
    assert await a.wait() == ("critical", 'exec: "proconsul-no-such-command": executable file not found in $PATH')
    assert await b.wait() == ("critical", f"fork/exec {tmp_path / 'missing'}: no such file or directory")


# ----------------------------------------------------------------- thresholds

P, W, C = "passing", "warning", "critical"


@pytest.mark.parametrize(
    "sbp,fbw,fbc,results,reported",
    [
        (0, 0, 0, [P, C, W, C, P], [P, C, W, C, P]),
        # the counters start at the thresholds: the first result is always reported
        (3, 0, 3, [C], [C]),
        (3, 0, 3, [P], [P]),
        (2, 0, 0, [C, P, P, P, C], [C, None, P, P, C]),
        (2, 0, 0, [C, W, W], [C, None, W]),  # warning counts as a success
        (0, 0, 3, [P, C, C, C, C, P], [P, None, None, C, C, P]),  # warning threshold defaults to critical's
        (0, 1, 3, [P, C, C, C, P], [P, W, W, C, P]),
        (0, 2, 3, [P, C, C, C], [P, None, W, C]),
        (0, 5, 2, [P, C, C, C], [P, None, C, C]),  # critical wins when it is reached first
        (2, 1, 2, [P, C, P, C, C, P, P], [P, W, None, W, C, None, P]),  # a success resets the failures
        (0, 2, 0, [P, C], [P, C]),
    ],
)
def test_status_handler_matches_consul(sbp, fbw, fbc, results, reported):
    handler = StatusHandler(sbp, fbw, fbc)
    got = []
    for i, status in enumerate(results):
        out = handler.update(status, f"run {i}")
        got.append(None if out is None else out[0])
        if out is not None:
            assert out[1] == f"run {i}"
    assert got == reported


async def test_held_back_runs_repeat_the_last_report(run, web):
    web.seq = [500, 200, 200, 500, 500]
    url = web.url("/seq")
    _, reports = run(
        spec("http", http=url, interval=0.02, success_before_passing=2, failures_before_warning=1, failures_before_critical=2)
    )
    await reports.wait(5)
    assert [s for s, _ in reports[:5]] == ["critical", "critical", "passing", "warning", "critical"]
    assert reports[1] == reports[0]  # the held-back success repeats the critical result, output and all
    assert reports[3][1] == f"HTTP GET {url}: 500 Internal Server Error Output: seq 500 #4"


async def test_script_timeout_bypasses_thresholds(run):
    _, reports = run(spec("script", args=[PY, "-c", "import time; time.sleep(30)"], timeout=0.5, failures_before_critical=5))
    assert await reports.wait(timeout=5) == ("critical", "Timed out (500ms) running check")


# ----------------------------------------------------------------- scheduling


async def test_first_run_waits_the_stagger(run, web, monkeypatch):
    asked: list[float] = []

    def stagger(interval: float) -> float:
        asked.append(interval)
        return 0.3

    monkeypatch.setattr(checks, "random_stagger", stagger)
    started = time.monotonic()
    _, reports = run(spec("http", http=web.url("/"), interval=7.0), stagger=None)
    await reports.wait()
    assert asked == [7.0]
    assert time.monotonic() - started >= 0.29


def test_random_stagger_is_within_the_interval():
    values = [checks.random_stagger(2.0) for _ in range(200)]
    assert all(0 <= v < 2.0 for v in values) and max(values) > 1.0
    assert checks.random_stagger(0) == 0


async def test_interval_is_raised_to_the_minimum(run, web):
    _, reports = run(spec("http", http=web.url("/"), interval=0.01), min_interval=1.0)
    await reports.wait()
    await asyncio.sleep(0.3)
    assert len(reports) == 1


def test_grpc_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="grpc checks need"):
        CheckRunner(spec("grpc", grpc="127.0.0.1:50051"), Reports())


def test_go_duration():
    assert [go_duration(s) for s in (30, 0.5, 1.5, 90, 3600, 0.0001, 0, 1.25e-7)] == [
        "30s", "500ms", "1.5s", "1m30s", "1h0m0s", "100µs", "0s", "125ns"
    ]


# ----------------------------------------------------------------- stop


def _other_tasks() -> set[asyncio.Task]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def test_stop_during_http_request_reports_nothing(run, web):
    before = _other_tasks()
    runner, reports = run(spec("http", http=web.url("/slow"), timeout=5))
    await eventually(lambda: web.requests, what="request sent")
    await runner.stop()
    assert _other_tasks() - before <= web._handlers  # only the server's side of the request may linger
    await asyncio.sleep(0.1)
    assert reports == []


async def test_stop_kills_a_running_script_and_reports_nothing(run, tmp_path):
    pidfile = tmp_path / "grandchild"
    before = _other_tasks()
    runner, reports = run(spec("script", args=[PY, "-c", GRANDPARENT, str(pidfile)], timeout=30))
    await eventually(lambda: pidfile.exists() and pidfile.read_text(), what="script started")
    child = runner._proc.pid  # type: ignore[union-attr]
    grandchild = int(pidfile.read_text())
    await runner.stop()
    assert not _alive(child)
    await eventually(lambda: not _alive(grandchild), 3, "grandchild gone")
    assert _other_tasks() - before == set()
    await asyncio.sleep(0.1)
    assert reports == []


async def test_stop_ttl_reports_nothing_afterwards(run):
    runner, reports = run(spec("ttl", interval=0, ttl=0.1))
    await runner.stop()
    runner.ttl_update("passing", "late")
    await asyncio.sleep(0.2)
    assert reports == []


async def test_stop_between_runs_and_twice(run, web):
    runner, reports = run(spec("http", http=web.url("/"), interval=0.05))
    await reports.wait(2)
    await runner.stop()
    n = len(reports)
    await asyncio.sleep(0.15)
    assert len(reports) == n
    await runner.stop()


ESCAPEE = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
open(sys.argv[1], "w").write(str(child.pid))
"""


async def test_script_output_held_open_by_an_escaped_process_times_out(run, tmp_path):
    # cmd.Wait waits for the output pipe; a process outside the group keeps it open past the timeout.
    pidfile = tmp_path / "escapee"
    _, reports = run(spec("script", args=[PY, "-c", ESCAPEE, str(pidfile)], timeout=0.5))
    try:
        assert await reports.wait(timeout=3) == ("critical", "Timed out (500ms) running check")
    finally:
        os.kill(int(pidfile.read_text()), 9)
