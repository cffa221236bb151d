"""Jepsen-style runs against real ``proconsul agent`` servers: clients, a nemesis, and the report.

* ``FaultCluster``: the servers of docker-compose.yml's topology (more of them for a
  5-server run), started from deploy/'s config files through scripts/localcluster.py,
  each in its own network namespace (``netns.NetLab``) so the nemesis can partition
  them; without namespaces (not root) they run on loopback and partitions are skipped.
* ``KVClient``: writes, CAS (``?cas=`` after a ``?consistent`` read), ``?consistent``,
  default and ``?stale`` reads on a few keys, plus unique-key writes for the
  lost-write check; every operation goes into a ``History``.
* ``LockClient``: sessions with a TTL (renewed), ``?acquire`` / ``?release`` on one
  key, and ``?consistent`` reads of it while holding.
* ``Nemesis``: one fault after another, each healed before the next.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from conftest import AgentProc, eventually
from linearizability import ABSENT, Acquisition, History, LockRead, Op
from netns import NetLab, unavailable_reason

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import localcluster  # noqa: E402  (scripts/ is not a package)

# Timings for tests: sessions may have a TTL of seconds, and nodes fail within seconds.
TEST_OVERRIDES = {"session_ttl_min": "1s", "liveness": {"interval": "500ms", "timeout": "4s"}}
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=1.0)  # longer than the servers' 7 s hold for a leader


def no_keepalive_client() -> httpx.Client:
    # A fresh connection per request: a refused connect then certainly sent nothing.
    return httpx.Client(timeout=HTTP_TIMEOUT, limits=httpx.Limits(max_keepalive_connections=0))


class FaultCluster:
    """See the module docstring."""

    def __init__(self, workdir: Path, servers: int = 3, clients: tuple[str, ...] = (), overrides: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        reason = unavailable_reason()
        self.netns_reason = reason
        names = [f"server{i}" for i in range(1, servers + 1)] + list(clients)
        self.lab = NetLab(names) if not reason else None
        if reason:
            warnings.warn(f"network namespaces unavailable ({reason}): partitions are SKIPPED, servers run on loopback")
            print(f"\n!!! network namespaces unavailable ({reason}): partition steps are SKIPPED !!!\n", flush=True)
        lab = self.lab

        def host_of(name: str) -> str:
            return lab.ip(name) if lab is not None and name in lab.hosts else "127.0.0.1"

        plans = localcluster.plan(workdir, host_of=host_of, remap_ports=self.lab is None, servers=servers, overrides={**TEST_OVERRIDES, **(overrides or {})})
        by_name = {p.name: p for p in plans}
        self.servers = [self._proc(by_name[n]) for n in names[:servers]]
        self.clients = []
        for n in clients:
            plan = by_name[n]
            plan.config["services"] = []  # the demo apps do not run here
            self.clients.append(self._proc(plan))

    def _proc(self, plan: localcluster.NodePlan) -> AgentProc:
        wrap = self.lab.wrap(plan.name) if self.lab else []
        return AgentProc(plan.name, self.workdir, plan.config, host=plan.host, wrap=wrap)

    @property
    def partitions(self) -> bool:
        return self.lab is not None

    def __enter__(self) -> "FaultCluster":
        if self.lab is not None:
            self.lab.__enter__()
        try:
            for s in self.servers:
                s.start()
            for s in self.servers:
                s.wait_ready(60)
            self.wait_for_leader(30)
            for c in self.clients:
                c.start()
            for c in self.clients:
                c.wait_ready(30)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for agent in [*self.clients, *self.servers]:
            if agent.proc is not None and agent.running():
                agent.signal(18)  # SIGCONT: a stopped process cannot handle SIGINT
            agent.stop(timeout=5)
        if self.lab is not None:
            self.lab.teardown()

    # ------------------------------------------------------------- Raft's verbs

    def running(self) -> list[AgentProc]:
        return [s for s in self.servers if s.running()]

    def leader_of(self, s: AgentProc) -> str:
        return httpx.get(f"{s.url}/v1/status/leader", timeout=2).json()

    def current_leader(self) -> AgentProc | None:
        """The server that most running servers name as leader, if it is running."""
        votes: dict[str, int] = {}
        for s in self.running():
            try:
                addr = self.leader_of(s)
            except (httpx.HTTPError, ValueError):
                continue
            if addr:
                votes[addr] = votes.get(addr, 0) + 1
        for addr, _ in sorted(votes.items(), key=lambda kv: -kv[1]):
            for s in self.running():
                if s.server_addr == addr:
                    return s
        return None

    def wait_for_leader(self, timeout: float = 30.0) -> AgentProc:
        def agreed() -> AgentProc | None:
            names = {self.leader_of(s) for s in self.running()}
            if len(names) != 1 or "" in names:
                return None
            return next((s for s in self.running() if s.server_addr in names), None)

        return eventually(agreed, timeout, 0.1, what="one agreed leader")


# ----------------------------------------------------------------- clients


def _decode_value(entry: dict) -> Any:
    raw = entry.get("Value")
    return base64.b64decode(raw).decode() if raw else ""


class Worker(threading.Thread):
    """A client thread that runs until ``stop`` is set; never raises."""

    def __init__(self, name: str, cluster: FaultCluster, stop: threading.Event, seed: int) -> None:
        super().__init__(name=name, daemon=True)
        self.cluster = cluster
        self.stop_event = stop
        self.rng = random.Random(seed)
        self.http = no_keepalive_client()
        self.error: BaseException | None = None

    def target(self) -> AgentProc:
        return self.rng.choice(self.cluster.servers)

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.one()
                time.sleep(self.rng.random() * 0.01)
        except BaseException as err:  # reported by the test, not lost in a thread
            self.error = err
        finally:
            self.http.close()

    def one(self) -> None:
        raise NotImplementedError

    def request(self, method: str, server: AgentProc, path: str, **kw: Any) -> tuple[str, httpx.Response | None, str]:
        """("ok", response, "") when answered; ("fail", None, why) when certainly not sent; ("unknown", None, why)."""
        try:
            resp = self.http.request(method, f"{server.url}{path}", **kw)
        except httpx.ConnectError as err:
            time.sleep(0.05)  # that server is down: do not spin on it
            return "fail", None, f"connect: {err}"
        except httpx.ConnectTimeout as err:
            return "fail", None, f"connect timeout: {err}"
        except httpx.HTTPError as err:
            return "unknown", None, f"{type(err).__name__}: {err}"
        return "ok", resp, ""


# A 500 whose write certainly did not happen: the servers say so (nothing was proposed to Raft).
NOT_PROPOSED = ("No cluster leader",)


class KVClient(Worker):
    """Register operations on ``keys`` and unique-key writes under ``set_prefix``; see the module docstring."""

    def __init__(self, name: str, cluster: FaultCluster, stop: threading.Event, seed: int, history: History, keys: list[str], set_prefix: str) -> None:
        super().__init__(name, cluster, stop, seed)
        self.history = history
        self.keys = keys
        self.set_prefix = set_prefix
        self.seq = 0
        self.added: dict[str, str] = {}  # unique key -> outcome

    def value(self) -> str:
        self.seq += 1
        return f"{self.name}-{self.seq}"

    def one(self) -> None:
        kind = self.rng.choices(["write", "cas", "read", "default", "stale", "add"], [25, 25, 25, 8, 8, 9])[0]
        key = self.rng.choice(self.keys)
        if kind == "write":
            self.write(key, self.value())
        elif kind == "cas":
            current = self.read(key, "consistent")
            if current is not None:
                value, index = current
                self.cas(key, value, index, self.value())
        elif kind == "read":
            self.read(key, "consistent")
        elif kind in ("default", "stale"):
            self.read(key, kind)
        else:
            self.add()

    def read(self, key: str, mode: str) -> tuple[Any, int] | None:
        """One read, recorded; (value, ModifyIndex) when it answered (ABSENT, 0 for a missing key)."""
        op = self.history.invoke(self.name, "read", key, mode=mode)
        params = {"consistent": ""} if mode == "consistent" else {"stale": ""} if mode == "stale" else {}
        outcome, resp, why = self.request("GET", self.target(), f"/v1/kv/{key}", params=params)
        if outcome != "ok":
            History.fail(op, why)  # a read that did not answer changed nothing
            return None
        if resp.status_code == 404:
            History.ok(op, ABSENT)
            return ABSENT, 0
        if resp.status_code != 200:
            History.fail(op, f"{resp.status_code} {resp.text.strip()}")
            return None
        entry = resp.json()[0]
        History.ok(op, _decode_value(entry))
        return op.value, entry["ModifyIndex"]

    def _write(self, op: Op, key: str, params: dict, value: str) -> None:
        outcome, resp, why = self.request("PUT", self.target(), f"/v1/kv/{key}", params=params, content=value.encode())
        if outcome == "fail":
            History.fail(op, why)
        elif outcome == "unknown":
            History.unknown(op, why)
        elif resp.status_code == 200:
            History.ok(op, result=resp.json())
        elif 400 <= resp.status_code < 500 or resp.text.strip() in NOT_PROPOSED:
            History.fail(op, f"{resp.status_code} {resp.text.strip()}")
        else:
            History.unknown(op, f"{resp.status_code} {resp.text.strip()}")

    def write(self, key: str, value: str) -> None:
        self._write(self.history.invoke(self.name, "write", key, value=value), key, {}, value)

    def cas(self, key: str, expected: Any, index: int, value: str) -> None:
        op = self.history.invoke(self.name, "cas", key, value=value, expected=expected)
        self._write(op, key, {"cas": str(index)}, value)

    def add(self) -> None:
        key = f"{self.set_prefix}{self.value()}"
        outcome, resp, why = self.request("PUT", self.target(), f"/v1/kv/{key}", content=b"1")
        if outcome == "ok" and resp.status_code == 200:
            outcome = "ok"
        elif outcome == "ok":
            outcome = "fail" if (400 <= resp.status_code < 500 or resp.text.strip() in NOT_PROPOSED) else "unknown"
        self.added[key] = outcome


@dataclass
class LockLog:
    acquisitions: list[Acquisition] = field(default_factory=list)
    reads: list[LockRead] = field(default_factory=list)
    sessions_created: int = 0
    sessions_lost: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, r: LockRead) -> None:
        with self.lock:
            self.reads.append(r)


class LockClient(Worker):
    """Contends for ``key`` with a TTL session; see the module docstring."""

    TTL = 3.0
    RENEW_EVERY = 0.75

    def __init__(self, name: str, cluster: FaultCluster, stop: threading.Event, seed: int, log: LockLog, key: str) -> None:
        super().__init__(name, cluster, stop, seed)
        self.log = log
        self.key = key
        self.session = ""
        self.valid_until = 0.0
        self.last_renew = 0.0
        self.holding: Acquisition | None = None
        self.n = 0

    def ensure_session(self) -> bool:
        if self.session:
            return True
        body = {"Name": self.name, "TTL": f"{self.TTL:g}s", "LockDelay": "1s", "Checks": [], "Behavior": "release"}
        started = time.monotonic()
        outcome, resp, _ = self.request("PUT", self.target(), "/v1/session/create", json=body)
        if outcome == "ok" and resp.status_code == 200:
            self.session = resp.json()["ID"]
            self.valid_until = started + self.TTL
            self.last_renew = started
            with self.log.lock:
                self.log.sessions_created += 1
            return True
        return False

    def renew(self) -> None:
        if not self.session or time.monotonic() - self.last_renew < self.RENEW_EVERY:
            return
        started = time.monotonic()
        outcome, resp, _ = self.request("PUT", self.target(), f"/v1/session/renew/{self.session}")
        self.last_renew = started
        if outcome == "ok" and resp.status_code == 200:
            self.valid_until = started + self.TTL
        elif outcome == "ok" and resp.status_code == 404:
            self.session = ""  # invalidated (its TTL passed twice): a new one next round
            with self.log.lock:
                self.log.sessions_lost += 1
        if self.holding is not None:
            self.holding.session_valid_until = self.valid_until

    def one(self) -> None:
        if not self.ensure_session():
            time.sleep(0.1)
            return
        self.renew()
        self.n += 1
        a = Acquisition(self.name, self.session, f"{self.name}-{self.n}", time.monotonic(), session_valid_until=self.valid_until)
        with self.log.lock:
            self.log.acquisitions.append(a)
        outcome, resp, why = self.request("PUT", self.target(), f"/v1/kv/{self.key}", params={"acquire": self.session}, content=a.token.encode())
        if outcome == "ok" and resp.status_code == 200:
            a.outcome = "ok" if resp.json() is True else "fail"
        elif outcome == "fail" or (outcome == "ok" and (400 <= resp.status_code < 500 or resp.text.strip() in NOT_PROPOSED)):
            a.outcome = "fail"
        if a.outcome != "unknown":
            a.complete = time.monotonic()
        if a.outcome == "fail":
            time.sleep(0.05 + self.rng.random() * 0.1)
            return
        if a.outcome == "ok":
            self.holding = a
            until = time.monotonic() + 0.2 + self.rng.random() * 0.6
            while time.monotonic() < until and not self.stop_event.is_set():
                self.renew()
                observe_lock(self, self.log, self.key)
                time.sleep(0.05)
            self.holding = None
        # Held, or perhaps held (unknown): release, and stop acting as holder from now on.
        a.released = time.monotonic()
        self.request("PUT", self.target(), f"/v1/kv/{self.key}", params={"release": self.session})
        time.sleep(0.05 + self.rng.random() * 0.1)


def observe_lock(worker: Worker, log: LockLog, key: str) -> None:
    """One ``?consistent`` read of the lock key, recorded when it answered."""
    started = time.monotonic()
    outcome, resp, _ = worker.request("GET", worker.target(), f"/v1/kv/{key}", params={"consistent": ""})
    if outcome == "ok" and resp.status_code in (200, 404):
        entry = resp.json()[0] if resp.status_code == 200 else {}
        log.read(LockRead(started, time.monotonic(), entry.get("Session", ""), _decode_value(entry) if entry else ""))


class Observer(Worker):
    """``?consistent`` reads of the lock key, all the time."""

    def __init__(self, name: str, cluster: FaultCluster, stop: threading.Event, seed: int, log: LockLog, key: str) -> None:
        super().__init__(name, cluster, stop, seed)
        self.log = log
        self.key = key

    def one(self) -> None:
        observe_lock(self, self.log, self.key)
        time.sleep(0.03)


# ----------------------------------------------------------------- the nemesis


@dataclass
class Event:
    what: str
    start: float
    end: float = 0.0
    note: str = ""


class Nemesis:
    """Faults in turn, each held for ``hold`` seconds, healed, then ``recover`` seconds of quiet."""

    def __init__(self, cluster: FaultCluster, hold: float, recover: float, seed: int) -> None:
        self.cluster = cluster
        self.hold = hold
        self.recover = recover
        self.rng = random.Random(seed)
        self.events: list[Event] = []

    def steps(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("kill -9 and restart a random server", self.kill_random),
            ("kill -9 the leader, restart it", self.kill_leader),
            ("SIGSTOP the leader past the election timeout, SIGCONT", self.pause_leader),
            ("isolate a random server", self.isolate_random),
            ("isolate the leader", self.isolate_leader),
            ("kill -9 every server, restart them all at once", self.restart_all),
        ]

    def run(self, cycles: int = 1) -> None:
        for _ in range(cycles):
            for what, fn in self.steps():
                ev = Event(what, time.monotonic())
                try:
                    ev.note = fn()
                finally:
                    self.heal()
                    ev.end = time.monotonic()
                    self.events.append(ev)
                print(f"nemesis: {what}: {ev.note} ({ev.end - ev.start:.1f} s)", flush=True)
                time.sleep(self.recover)
                self._settle()

    def _settle(self) -> None:
        try:
            self.cluster.wait_for_leader(30)
        except AssertionError as err:
            print(f"nemesis: no agreed leader after healing: {err}", flush=True)

    def leader(self) -> AgentProc:
        return self.cluster.current_leader() or self.cluster.wait_for_leader(30)

    def heal(self) -> None:
        if self.cluster.lab is not None:
            self.cluster.lab.heal()
        for s in self.cluster.servers:
            if s.running():
                s.signal(18)  # SIGCONT
            else:
                s.start()
        for s in self.cluster.servers:
            s.wait_ready(60)

    def kill_random(self) -> str:
        return self._kill_and_restart(self.rng.choice(self.cluster.servers))

    def kill_leader(self) -> str:
        return self._kill_and_restart(self.leader())

    def _kill_and_restart(self, s: AgentProc) -> str:
        s.kill()
        time.sleep(self.hold)
        s.start()
        return s.name

    def pause_leader(self) -> str:
        s = self.leader()
        s.signal(19)  # SIGSTOP
        time.sleep(self.hold)  # >> the 0.3-0.8 s election timeout
        s.signal(18)
        return s.name

    def isolate_random(self) -> str:
        return self._isolate("a server", lambda: self.rng.choice(self.cluster.servers))

    def isolate_leader(self) -> str:
        return self._isolate("the leader", self.leader)

    def _isolate(self, what: str, choose: Callable[[], AgentProc]) -> str:
        if self.cluster.lab is None:
            print(f"nemesis: SKIPPED isolating {what}: no network namespaces", flush=True)
            return "skipped"
        s = choose()
        self.cluster.lab.isolate(s.name, [o.name for o in self.cluster.servers])
        time.sleep(self.hold)
        return s.name

    def restart_all(self) -> str:
        for s in self.cluster.servers:
            s.kill()
        for s in self.cluster.servers:
            s.start()
        return ", ".join(s.name for s in self.cluster.servers)


def dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
