"""Fixtures for testing against real proconsul agents: reusable by other projects.

* ``AgentProc``: one ``proconsul agent`` subprocess started from a written JSON
  config file, in its own process group, on free loopback ports; ready once
  ``/v1/status/leader`` names a leader and its Raft has applied index 2;
  stopped with SIGINT then SIGKILL, and always reaped.
* ``Cluster``: servers with Raft's verbs — ``leader()``, ``followers()``,
  ``kill(n)``, ``stop(n)``, ``restart(n)``, ``wait_for_leader()``,
  ``wait_applied(index)``.
* ``eventually(fn, timeout)``: poll a fact instead of sleeping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from localcluster import free_ports  # noqa: E402  (scripts/ is not a package; one implementation for tests, benchmarks and local clusters)

T = TypeVar("T")

PROCONSUL = shutil.which("proconsul", path=str(Path(sys.executable).parent)) or shutil.which("proconsul")
_LIVE: set["AgentProc"] = set()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PROCONSUL_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="soak test: set PROCONSUL_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A run that executed no test is a failure, even when everything was skipped.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0:
        return
    ran = sum(len(reporter.stats.get(k, [])) for k in ("passed", "failed", "error"))
    if ran == 0:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED


def eventually(fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Call ``fn`` until it returns something truthy without raising; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = fn()
            if result:
                return result
            last = result
        except Exception as err:  # the fact is not true yet
            last = err
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s{': ' + what if what else ''} (last: {last!r})")
        time.sleep(interval)


@dataclass(eq=False)
class AgentProc:
    """One agent subprocess; see the module docstring."""

    name: str
    workdir: Path
    config: dict[str, Any]
    proc: subprocess.Popen | None = None
    # Where the test reaches it, and a command prefix to run it with (e.g. `ip netns exec NS`).
    host: str = "127.0.0.1"
    wrap: list[str] = field(default_factory=list)
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def http_port(self) -> int:
        return self.config["ports"]["http"]

    @property
    def server_addr(self) -> str:
        return f"{self.host}:{self.config['ports']['server']}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=30.0)
        return self._client

    def start(self, extra_args: list[str] | None = None) -> "AgentProc":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        cfg_path = self.workdir / f"{self.name}.json"
        cfg_path.write_text(json.dumps(self.config, indent=1))
        args = [*self.wrap, PROCONSUL, "agent", "-config-file", str(cfg_path), *(extra_args or [])]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        _LIVE.add(self)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def admin_headers(self) -> dict[str, str]:
        """The token this agent's own config makes all-powerful (ACLs on): initial_management or agent_recovery."""
        tokens = (self.config.get("acl") or {}).get("tokens") or {}
        token = tokens.get("initial_management") or tokens.get("agent_recovery")
        return {"X-Consul-Token": token} if token else {}

    def raft_stats(self) -> dict[str, str]:
        return self.http.get("/v1/agent/self", headers=self.admin_headers).json()["Stats"]["raft"]

    def leader(self) -> str:
        return self.http.get("/v1/status/leader").json()

    def wait_ready(self, timeout: float = 20.0) -> "AgentProc":
        def ready() -> bool:
            if not self.running():
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if not self.config.get("server", False) and "-dev" not in (self.proc.args or []):
                # A client is ready once the servers list it as a live member.
                members = self.http.get("/v1/agent/members", headers=self.admin_headers).json()
                return any(m["Name"] == self.name and m["Status"] == 1 for m in members)
            if (self.config.get("acl") or {}).get("enabled") and not self.admin_headers:
                return bool(self.leader())  # nothing here may read /v1/agent/self yet (bootstrap tests)
            return bool(self.leader()) and int(self.raft_stats().get("applied_index", "0")) >= 2

        eventually(ready, timeout, what=f"{self.name} ready")
        return self

    def signal(self, sig: int) -> None:
        if self.running():
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9 the whole process group and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self._close_client()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT, then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.running():
            self.signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        _LIVE.discard(self)

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def server_config(name: str, ports: list[int], data_dir: Path, join: list[str], expect: int, **extra: Any) -> dict[str, Any]:
    http, dns, server, raft = ports
    return {
        "node_name": name,
        "server": True,
        "bootstrap_expect": expect,
        "data_dir": str(data_dir),
        "bind_addr": "127.0.0.1",
        "client_addr": "127.0.0.1",
        "ports": {"http": http, "dns": dns, "server": server, "raft": raft},
        "retry_join": join,
        **extra,
    }


class Cluster:
    """A set of server agents with Raft's verbs (see the module docstring)."""

    def __init__(self, workdir: Path, size: int = 3, **extra: Any) -> None:
        self.workdir = workdir
        ports = free_ports(4 * size)
        self.servers: list[AgentProc] = []
        self.clients: list[AgentProc] = []
        addrs = [f"127.0.0.1:{ports[4 * i + 2]}" for i in range(size)]
        for i in range(size):
            name = f"s{i + 1}"
            join = [a for j, a in enumerate(addrs) if j != i]
            cfg = server_config(name, ports[4 * i : 4 * i + 4], workdir / name, join, size, **extra)
            self.servers.append(AgentProc(name, workdir, cfg))

    def add_client(self, name: str, **extra: Any) -> AgentProc:
        """A client agent joined to every server (started by the caller)."""
        http, dns = free_ports(2)
        cfg = {
            "node_name": name,
            "data_dir": str(self.workdir / name),
            "bind_addr": "127.0.0.1",
            "client_addr": "127.0.0.1",
            "ports": {"http": http, "dns": dns},
            "retry_join": [s.server_addr for s in self.servers],
            **extra,
        }
        client = AgentProc(name, self.workdir, cfg)
        self.clients.append(client)
        return client

    def start(self, timeout: float = 30.0) -> "Cluster":
        for s in self.servers:
            s.start()
        for s in self.servers:
            s.wait_ready(timeout)
        self.wait_for_leader()
        return self

    def running(self) -> list[AgentProc]:
        return [s for s in self.servers if s.running()]

    def wait_for_leader(self, timeout: float = 15.0) -> AgentProc:
        """Every running server names the same leader, and that leader is running."""

        def agreed() -> AgentProc | None:
            names = {s.leader() for s in self.running()}
            if len(names) != 1 or "" in names:
                return None
            (addr,) = names
            for s in self.running():
                if s.server_addr == addr:
                    return s
            return None

        return eventually(agreed, timeout, what="one agreed leader")

    def leader(self) -> AgentProc:
        return self.wait_for_leader()

    def followers(self) -> list[AgentProc]:
        leader = self.leader()
        return [s for s in self.running() if s is not leader]

    def wait_applied(self, index: int, timeout: float = 15.0) -> None:
        for s in self.running():
            eventually(lambda: int(s.raft_stats()["applied_index"]) >= index, timeout, what=f"{s.name} applied {index}")

    def kill(self, server: AgentProc) -> None:
        server.kill()

    def stop(self, server: AgentProc) -> None:
        server.stop()

    def restart(self, server: AgentProc, timeout: float = 30.0) -> AgentProc:
        server.stop()
        server.start()
        return server.wait_ready(timeout)

    def close(self) -> None:
        for s in [*self.clients, *self.servers]:
            s.stop()


@pytest.fixture(scope="session", autouse=True)
def _reap_everything() -> Iterator[None]:
    yield
    for agent in list(_LIVE):
        agent.stop(timeout=3)


def start_dev_agent(workdir: Path, name: str = "dev", extra: dict[str, Any] | None = None) -> AgentProc:
    http, server = free_ports(2)
    cfg = {"node_name": name, "ports": {"http": http, "server": server, "dns": -1}, **(extra or {})}
    return AgentProc(name, workdir, cfg).start(["-dev"]).wait_ready()


@pytest.fixture(scope="session")
def dev_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    """One dev agent shared by the tests that only read and write through HTTP."""
    agent = start_dev_agent(tmp_path_factory.mktemp("dev"))
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-server cluster shared by a module's non-destructive tests."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster3"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


# ----------------------------------------------------------------- in-process API tests


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def api(anyio_backend: str) -> Any:
    """An in-process dev agent (no HTTP port) and an httpx client on its ASGI app."""
    from proconsul.agent import config
    from proconsul.agent.agent import Agent
    from proconsul.api.app import build_app

    (server_port,) = free_ports(1)
    flags = {
        "dev": True,
        "port_http": -1,
        "port_dns": -1,
        "port_server": server_port,
        "node_name": "api",
        # Fast reaping so deregister_critical_service_after can be tested in seconds.
        "check_reap_interval": 0.2,
        "check_deregister_interval_min": 0.5,
        "session_ttl_min": 1.0,
    }
    cfg = config.build(flags, [], [])
    agent = Agent(cfg)
    await agent.start()
    import anyio

    with anyio.fail_after(10):
        while not agent.server.is_leader() or not agent.server._consistent_ready:
            await anyio.sleep(0.02)
    transport = httpx.ASGITransport(app=build_app(agent))
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        client.agent = agent  # type: ignore[attr-defined]
        yield client
    await agent.stop()


async def eventually_async(fn: Callable[[], Any], want: Any = bool, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Await ``fn()`` until ``want`` holds (a value to equal, or a predicate); fail after ``timeout``."""
    import anyio

    check = want if callable(want) else (lambda v: v == want)
    last: Any = None
    with anyio.move_on_after(timeout):
        while True:
            last = await fn()
            if check(last):
                return last or True
            await anyio.sleep(interval)
    raise AssertionError(f"not true within {timeout}s (last: {last!r})")
