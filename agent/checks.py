"""Health-check runners: one asyncio task per check, with Consul's semantics (agent/checks/check.go).

* ``CheckRunner(spec, report)`` runs an http, tcp, udp, script or ttl check on
  the running loop; every result goes to ``report(check_id, status, output)``.
  Alias checks run in ``checkmgr``; grpc checks are refused (see below).
* Interval checks wait a random stagger within the interval (lib.RandomStagger),
  then run, wait ``interval`` *after* each run ends and run again, so runs of
  one check never overlap (Consul's ``run`` loops).
* Results of http, tcp, udp and script runs pass through ``StatusHandler``
  (success_before_passing, failures_before_warning, failures_before_critical).
  A run the thresholds hold back re-reports the last reported result, so the
  caller hears from every run and its state is what Consul's would be. As in
  Consul, a script that cannot start or times out, a TTL expiry and a TTL
  update bypass the thresholds.
* ``stop()`` cancels the task, kills a running script's process group and
  returns once nothing of the check is left; nothing is reported after it.
* Outputs are already capped Consul's way (see ``_TailBuffer`` and
  ``ttl_update``); the caller must not cut them again, or it cuts the markers.
* grpc needs an HTTP/2 client (``h2``), which proconsul does not depend on:
  ``CheckRunner`` raises ``ValueError`` for kind "grpc".

Everything runs on the event loop's thread; the report callback is called
synchronously from it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import signal
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx


log = logging.getLogger("proconsul.checks")

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"

# check.go: DefaultBufSize, UserAgent; the Accept default is set in CheckHTTP.check.
DEFAULT_BUF_SIZE = 4 * 1024
USER_AGENT = "Consul Health Check"
ACCEPT = "text/plain, text/*, */*"
# check.go: MinInterval. agent.addCheck raises shorter intervals to it.
MIN_INTERVAL = 1.0
# CheckHTTP/CheckTCP/CheckUDP.Start: 10 s unless Timeout > 0; CheckMonitor.check: 30 s for scripts.
DEFAULT_TIMEOUT = 10.0
DEFAULT_SCRIPT_TIMEOUT = 30.0
# Go's http.Client default CheckRedirect stops after 10 redirects.
MAX_REDIRECTS = 10

KINDS = ("http", "tcp", "udp", "ttl", "script")

Report = Callable[[str, str, str], None]


@dataclass
class CheckSpec:
    """A check as the agent runs it (already validated and normalised by the caller)."""

    check_id: str
    name: str
    kind: str  # "http" | "tcp" | "udp" | "ttl" | "script" | "grpc"  (alias checks are run elsewhere)
    service_id: str = ""
    interval: float = 0.0  # seconds
    timeout: float = 10.0  # seconds; 0 means Consul's default (10 s, scripts 30 s)
    ttl: float = 0.0  # seconds, ttl checks
    status: str = "critical"  # initial status
    http: str = ""
    method: str = "GET"
    header: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    tls_skip_verify: bool = False
    tls_server_name: str = ""
    disable_redirects: bool = False
    tcp: str = ""
    udp: str = ""
    grpc: str = ""
    grpc_use_tls: bool = False
    args: list[str] = field(default_factory=list)
    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0
    output_max_size: int = 4096


def random_stagger(interval: float) -> float:
    """lib.RandomStagger: a uniformly random pause in [0, interval) before a check's first run."""
    if interval <= 0:
        return 0.0
    return random.random() * interval


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String ("30s", "500ms", "1m30s", "1h0m0s"), as Consul prints timeouts."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign, u = ("-" if ns < 0 else ""), abs(ns)

    def frac(v: int, unit: int) -> str:
        whole, rest = divmod(v, unit)
        digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
        return f"{whole}.{digits}" if digits else str(whole)

    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{frac(u, 1_000)}µs"
    if u < 1_000_000_000:
        return f"{sign}{frac(u, 1_000_000)}ms"
    h, rest = divmod(u, 3_600_000_000_000)
    m, rest = divmod(rest, 60_000_000_000)
    out = f"{frac(rest, 1_000_000_000)}s"
    if h or m:
        out = f"{m}m{out}"
    if h:
        out = f"{h}h{out}"
    return sign + out


class StatusHandler:
    """Consul's StatusHandler: consecutive-result thresholds before a status is reported."""

    def __init__(self, success_before_passing: int, failures_before_warning: int, failures_before_critical: int) -> None:
        # agent.addCheck: "FailuresBeforeWarning has to default to same value as FailuresBeforeCritical".
        if failures_before_warning == 0:
            failures_before_warning = failures_before_critical
        self.success_before_passing = success_before_passing
        self.failures_before_warning = failures_before_warning
        self.failures_before_critical = failures_before_critical
        # NewStatusHandler starts the counters at the thresholds, so the first result is reported at once.
        self.success_counter = success_before_passing
        self.failures_counter = failures_before_critical

    def update(self, status: str, output: str) -> tuple[str, str] | None:
        """StatusHandler.updateCheck: the (status, output) to report, or None while a threshold holds it back."""
        # Warning counts as a success here, as in Consul.
        if status in (PASSING, WARNING):
            self.success_counter += 1
            self.failures_counter = 0
            if self.success_counter >= self.success_before_passing:
                return status, output
            return None
        self.failures_counter += 1
        self.success_counter = 0
        if self.failures_counter >= self.failures_before_critical:
            return status, output
        if self.failures_counter >= self.failures_before_warning:
            return WARNING, output
        return None


class _TailBuffer:
    """armon/circbuf as Consul uses it: keeps the last ``size`` bytes and counts everything written."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.total = 0
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self.total += len(data)
        self._buf += data
        if len(self._buf) > self.size:
            del self._buf[: len(self._buf) - self.size]

    def text(self) -> str:
        return self._buf.decode("utf-8", errors="replace")

    def script_output(self) -> str:
        """CheckMonitor's truncateAndLogOutput: the tail, with a "Captured" header when bytes were dropped."""
        out = self.text()
        if self.total > self.size:
            out = f"Captured {len(self._buf)} of {self.total} bytes\n...\n{out}"
        return out


def cap_head(output: str, max_size: int) -> str:
    """CheckTTL.SetStatus: keep the first ``max_size`` bytes and say how many there were."""
    raw = output.encode("utf-8")
    if len(raw) <= max_size:
        return output
    head = raw[:max_size].decode("utf-8", errors="replace")
    return f"{head} ... (captured {max_size} of {len(raw)} bytes)"


# ----------------------------------------------------------------- Go-like error texts


def _split_host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def _errno_text(err: OSError) -> str:
    # Go's syscall error strings are glibc's, lower-cased ("connection refused").
    if err.errno:
        return os.strerror(err.errno).lower()
    return str(err) or type(err).__name__


def _dial_error(network: str, addr: str, err: BaseException) -> str:
    """net.Dial's error text: "dial tcp 127.0.0.1:1: connect: connection refused"."""
    if isinstance(err, TimeoutError):
        return f"dial {network} {addr}: i/o timeout"
    if isinstance(err, socket.gaierror):
        return f"dial {network}: lookup {_split_host_port(addr)[0]}: no such host"
    if isinstance(err, OSError):
        return f"dial {network} {addr}: connect: {_errno_text(err)}"
    return f"dial {network} {addr}: {err}"


def _root_cause(err: BaseException) -> BaseException:
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        nxt = err.__cause__ or err.__context__
        if nxt is None:
            break
        err = nxt
    return err


def _exec_error(argv0: str, err: OSError) -> str:
    """os/exec's Start error text."""
    if isinstance(err, FileNotFoundError) and "/" not in argv0:
        return f'exec: "{argv0}": executable file not found in $PATH'
    return f"fork/exec {argv0}: {_errno_text(err)}"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_SSL_CONTEXTS: dict[bool, ssl.SSLContext] = {}


def _ssl_context(verify: bool) -> ssl.SSLContext:
    """One shared context per verify setting (the system roots, like Go); built once, not per check."""
    ctx = _SSL_CONTEXTS.get(verify)
    if ctx is None:
        ctx = ssl.create_default_context()
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _SSL_CONTEXTS[verify] = ctx
    return ctx


# ----------------------------------------------------------------- the runner


class CheckRunner:
    """Runs one check as Consul's CheckHTTP/CheckTCP/CheckUDP/CheckMonitor/CheckTTL would."""

    def __init__(
        self,
        spec: CheckSpec,
        report: Report,
        *,
        stagger: Callable[[float], float] | None = None,
        min_interval: float = MIN_INTERVAL,
    ) -> None:
        if spec.kind == "grpc":
            raise ValueError(
                "grpc checks need an HTTP/2 client (the 'h2' package), which proconsul does not depend on"
            )
        if spec.kind not in KINDS:
            raise ValueError(f"check {spec.check_id!r}: no runner for kind {spec.kind!r}")
        if spec.kind == "script" and not spec.args:
            raise ValueError(f"check {spec.check_id!r}: script check without args")
        self.spec = spec
        self._report = report
        self._stagger = stagger
        self._interval = max(spec.interval, min_interval)
        # CheckHTTP/CheckTTL.Start: OutputMaxSize < 1 means DefaultBufSize.
        self._max = spec.output_max_size if spec.output_max_size >= 1 else DEFAULT_BUF_SIZE
        self._status = StatusHandler(
            spec.success_before_passing, spec.failures_before_warning, spec.failures_before_critical
        )
        self._last: tuple[str, str] | None = None
        self._task: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ttl_timer: asyncio.TimerHandle | None = None
        self._ttl_last_output = ""
        self._started = False
        self._stopped = False

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Schedule the check on the running loop (a TTL check arms its timer and reports nothing yet)."""
        if self._started or self._stopped:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        if self.spec.kind == "ttl":
            # CheckTTL.Start: the timer starts now; the initial status is the caller's.
            self._arm_ttl(loop)
            return
        if self.spec.kind == "http":
            self._client = self._http_client()
        self._task = loop.create_task(self._run(), name=f"check:{self.spec.check_id}")

    async def stop(self) -> None:
        """Cancel the check and kill a running script's process group; nothing is reported afterwards."""
        self._stopped = True
        if self._ttl_timer is not None:
            self._ttl_timer.cancel()
            self._ttl_timer = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            # asyncio.wait, not await task: a cancellation of stop() itself must not be swallowed.
            await asyncio.wait([task])
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def ttl_update(self, status: str, output: str) -> None:
        """CheckTTL.SetStatus: report now (output capped, no thresholds) and restart the TTL timer."""
        if self.spec.kind != "ttl":
            raise ValueError(f"check {self.spec.check_id!r} is not a TTL check")
        if self._stopped:
            return
        output = cap_head(output, self._max)
        self._ttl_last_output = output
        self._emit(status, output)
        if self._started:
            self._arm_ttl(asyncio.get_running_loop())

    # ------------------------------------------------------------- reporting

    def _emit(self, status: str, output: str) -> None:
        if self._stopped:
            return
        self._last = (status, output)
        try:
            self._report(self.spec.check_id, status, output)
        except Exception:
            log.exception("check %s: report failed", self.spec.check_id)

    def _update(self, status: str, output: str) -> None:
        """A run's result through the thresholds; a held-back run repeats what was last reported."""
        result = self._status.update(status, output)
        if result is None:
            log.debug("check %s: %s held back by its thresholds", self.spec.check_id, status)
            result = self._last
        if result is not None:
            self._emit(*result)

    # ------------------------------------------------------------- interval checks

    async def _run(self) -> None:
        stagger = self._stagger or random_stagger  # looked up now, so tests can monkeypatch random_stagger
        await asyncio.sleep(stagger(self._interval))
        check = {"http": self._check_http, "tcp": self._check_tcp, "udp": self._check_udp, "script": self._check_script}[
            self.spec.kind
        ]
        while True:
            try:
                await check()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a bug here must not end the check's task
                log.exception("check %s: run failed", self.spec.check_id)
                self._update(CRITICAL, f"check failed: {err}")
            # Consul's run loop: the next run is scheduled when this one ends.
            await asyncio.sleep(self._interval)

    def _timeout(self) -> float:
        if self.spec.timeout > 0:
            return self.spec.timeout
        return DEFAULT_SCRIPT_TIMEOUT if self.spec.kind == "script" else DEFAULT_TIMEOUT

    # ------------------------------------------------------------- http

    def _http_client(self) -> httpx.AsyncClient:
        import httpx  # here, not at the top: HTTP checks are the only users in an agent

        spec = self.spec
        host = urlsplit(spec.http).hostname or ""
        return httpx.AsyncClient(
            # CheckHTTP.Start: keep-alives off ("to prevent failing checks due to the keepalive interval").
            headers={"User-Agent": USER_AGENT, "Accept": ACCEPT, "Connection": "close"},
            limits=httpx.Limits(max_keepalive_connections=0),
            timeout=httpx.Timeout(self._timeout()),
            verify=_ssl_context(not spec.tls_skip_verify),
            max_redirects=MAX_REDIRECTS,
            # Go's ProxyFromEnvironment: proxies from the environment, never for loopback targets.
            trust_env=not _is_loopback(host),
        )

    async def _check_http(self) -> None:
        import httpx

        spec = self.spec
        method = (spec.method or "GET").upper()
        op = method[:1] + method[1:].lower()  # Go's urlErrorOp: "Get", "Post"
        url = spec.http
        headers: list[tuple[str, str]] = []
        for key, values in spec.header.items():
            for value in values:
                headers.append((key, value))
        # check.go: User-Agent and Accept defaults apply only when the check sets none (Header.Get == "").
        given = {k.lower(): vs[0] if vs else "" for k, vs in spec.header.items()}
        if not given.get("user-agent"):
            headers = [(k, v) for k, v in headers if k.lower() != "user-agent"] + [("User-Agent", USER_AGENT)]
        if not given.get("accept"):
            headers = [(k, v) for k, v in headers if k.lower() != "accept"] + [("Accept", ACCEPT)]
        extensions = {"sni_hostname": spec.tls_server_name} if spec.tls_server_name else {}
        assert self._client is not None
        deadline = asyncio.get_running_loop().time() + self._timeout()
        try:
            request = self._client.build_request(
                method, url, headers=headers, content=spec.body.encode() if spec.body else None, extensions=extensions
            )
            # Go's Client.Timeout covers the whole exchange, redirects and body included.
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True, follow_redirects=not spec.disable_redirects)
        except (TimeoutError, httpx.TimeoutException):
            self._update(CRITICAL, f'{op} "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)')
            return
        except httpx.TooManyRedirects:
            self._update(CRITICAL, f'{op} "{url}": stopped after {MAX_REDIRECTS} redirects')
            return
        except httpx.ConnectError as err:
            cause = _root_cause(err)
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            host = parts.hostname or ""
            addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if isinstance(cause, ssl.SSLError):
                self._update(CRITICAL, f'{op} "{url}": tls: {cause}')
            else:
                self._update(CRITICAL, f'{op} "{url}": {_dial_error("tcp", addr, cause)}')
            return
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as err:
            self._update(CRITICAL, f'{op} "{url}": {err}')
            return
        # CheckHTTP.check: the body goes through a circbuf of OutputMaxSize, which keeps its tail.
        body = _TailBuffer(self._max)
        try:
            async with asyncio.timeout_at(deadline):
                async for chunk in response.aiter_bytes():
                    body.write(chunk)
        except (TimeoutError, httpx.HTTPError) as err:
            # Consul logs a body read error and reports with what it read.
            log.warning("check %s: error while reading body: %s", spec.check_id, err or type(err).__name__)
        finally:
            await response.aclose()
        status_text = f"{response.status_code} {response.reason_phrase}".rstrip()
        result = f"HTTP {method} {url}: {status_text} Output: {body.text()}"
        code = response.status_code
        if 200 <= code <= 299:
            self._update(PASSING, result)
        elif code == 429:  # 429 Too Many Requests (RFC 6585)
            self._update(WARNING, result)
        else:
            self._update(CRITICAL, result)

    # ------------------------------------------------------------- tcp / udp

    async def _check_tcp(self) -> None:
        addr = self.spec.tcp
        try:
            host, port = _split_host_port(addr)
            async with asyncio.timeout(self._timeout()):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError, ValueError) as err:
            self._update(CRITICAL, _dial_error("tcp", addr, err))
            return
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        self._update(PASSING, f"TCP connect {addr}: Success")

    async def _check_udp(self) -> None:
        """CheckUDP: send Consul's (empty) message; a reply or silence is passing, an error (ICMP refusal) critical.

        Consul reads without a deadline and treats "i/o timeout" as passing; we bound the read by the timeout.
        """
        addr = self.spec.udp
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            try:
                host, port = _split_host_port(addr)
                async with asyncio.timeout(self._timeout()):
                    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
                    family, _, proto, _, sockaddr = infos[0]
                    sock = socket.socket(family, socket.SOCK_DGRAM, proto)
                    sock.setblocking(False)
                    await loop.sock_connect(sock, sockaddr)
            except TimeoutError:
                self._update(PASSING, f"UDP connect {addr}: Success")  # CheckUDP: a dial timeout is passing
                return
            except (OSError, ValueError) as err:
                self._update(CRITICAL, _dial_error("udp", addr, err))
                return
            assert sock is not None
            local = "%s:%d" % sock.getsockname()[:2]
            remote = "%s:%d" % sock.getpeername()[:2]
            try:
                sock.send(b"")  # CheckUDP writes c.Message, which the agent never sets
            except OSError as err:
                self._update(CRITICAL, f"write udp {local}->{remote}: write: {_errno_text(err)}")
                return
            try:
                async with asyncio.timeout(self._timeout()):
                    await loop.sock_recv(sock, 1)
            except TimeoutError:
                pass
            except OSError as err:
                self._update(CRITICAL, f"read udp {local}->{remote}: read: {_errno_text(err)}")
                return
            self._update(PASSING, f"UDP connect {addr}: Success")
        finally:
            if sock is not None:
                sock.close()

    # ------------------------------------------------------------- script

    async def _check_script(self) -> None:
        """CheckMonitor.check: exit 0 passing, 1 warning, else critical; stdout+stderr share one tail buffer."""
        args = self.spec.args
        timeout = self._timeout()
        loop = asyncio.get_running_loop()
        out = _TailBuffer(self._max)
        # Our own pipe rather than asyncio's: in 3.11 Process.wait() also waits for its pipes to close,
        # which a process that left the group could hold open forever; a pipe we own we can just close.
        rfd, wfd = os.pipe()
        try:
            # exec.Subprocess (no shell) + SetSysProcAttr (Setpgid) so KillCommandSubtree can kill the group.
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=subprocess.DEVNULL, stdout=wfd, stderr=wfd, process_group=0
            )
        except OSError as err:
            os.close(rfd)
            # Consul notifies directly here, bypassing the thresholds.
            self._emit(CRITICAL, _exec_error(args[0], err))
            return
        finally:
            os.close(wfd)
        self._proc = proc
        rfile = open(rfd, "rb", buffering=0)
        reader = asyncio.StreamReader()
        pipe: asyncio.ReadTransport | None = None
        finished = False
        try:
            pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), rfile)
            try:
                # cmd.Wait waits for the exit and for the output pipe to close; the timeout covers both.
                async with asyncio.timeout(timeout):
                    while chunk := await reader.read(65536):
                        out.write(chunk)
                    await proc.wait()
                finished = True
            except TimeoutError:
                self._kill_group(proc)
                await proc.wait()  # Consul waits too, "so we never start another instance concurrently"
                finished = True
                msg = f"Timed out ({go_duration(timeout)}) running check"
                text = out.script_output()
                if text:
                    msg += "\n\n" + text
                self._emit(CRITICAL, msg)  # direct Notify in Consul: no thresholds
                return
        finally:
            if pipe is not None:
                pipe.close()
            else:
                rfile.close()
            if not finished:  # cancelled by stop(): take the whole group down
                self._kill_group(proc)
                await proc.wait()
            self._proc = None
        text = out.script_output()
        code = proc.returncode
        if code == 0:
            self._update(PASSING, text)
        elif code == 1:
            self._update(WARNING, text)
        else:  # other codes and deaths by signal (Go's ExitStatus() -1)
            self._update(CRITICAL, text)

    @staticmethod
    def _kill_group(proc: asyncio.subprocess.Process) -> None:
        """exec.KillCommandSubtree: SIGKILL to the script's process group."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    # ------------------------------------------------------------- ttl

    def _arm_ttl(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._ttl_timer is not None:
            self._ttl_timer.cancel()
        self._ttl_timer = loop.call_later(self.spec.ttl, self._ttl_expired)

    def _ttl_expired(self) -> None:
        """CheckTTL.run: the TTL passed without an update; critical once, until the next update re-arms it."""
        self._ttl_timer = None
        if self._ttl_last_output:
            output = f"TTL expired (last output before timeout follows): {self._ttl_last_output}"
        else:
            output = "TTL expired"
        self._emit(CRITICAL, output)
