"""Resources under a mixed load: no growth in open fds or threads, bounded memory, on every agent.

A 3-server cluster and one client agent take a mixed load — KV writes and
reads, transactions, catalog registrations and deregistrations, agent services
with TTL checks, health and catalog queries, blocking queries on KV and health,
sessions with locks (some left to expire by TTL), and DNS over UDP and TCP —
while a sampler reads every agent's open fds (/proc/PID/fd), threads
(/proc/PID/status Threads) and RSS (VmRSS). Everything the load writes lives on
a bounded set of keys, nodes and services, so a store that keeps what it is
told to keep does not grow either.

The warm-up lasts ``warmup`` seconds, or until every server has compacted its
in-memory Raft log once if that comes later (but within the first 60% of the
run): before that, memory grows with the log by design. After it, the samples
split into quarters; for each process:

* fds: the last quarter's median is at most the first quarter's + ``fd_slack``
* threads: the last quarter's median is at most the first quarter's + ``thread_slack``
* RSS: the last quarter's median is at most ``rss_ratio`` x the first quarter's

(the bounds are ``SHORT``'s and ``LONG``'s below), and at most 1% of the operations failed.

The short run is part of the suite; ``PROCONSUL_SLOW=1`` adds the 10-minute one
(``PROCONSUL_SOAK_SECONDS`` changes its length). Both print their figures.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dns.exception
import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from conftest import AgentProc, Cluster


@dataclass(frozen=True)
class Bounds:
    seconds: float
    interval: float  # between samples
    warmup: float
    fd_slack: int
    thread_slack: int
    rss_ratio: float


SHORT = Bounds(seconds=30, interval=1.0, warmup=8, fd_slack=12, thread_slack=4, rss_ratio=1.5)
LONG = Bounds(seconds=float(os.environ.get("PROCONSUL_SOAK_SECONDS", 600)), interval=5.0, warmup=60,
              fd_slack=6, thread_slack=2, rss_ratio=1.2)


def sample(pid: int) -> tuple[int, int, int]:
    """(open fds, threads, RSS bytes) of a process, from /proc."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024
    return fds, threads, rss


@dataclass
class Load:
    """The mixed load: worker threads, each with its own HTTP clients, until ``stop`` is set."""

    agents: list[AgentProc]
    client: AgentProc
    stop: threading.Event = field(default_factory=threading.Event)
    ops: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, op: str, error: str | None) -> None:
        with self.lock:
            self.ops[op] = self.ops.get(op, 0) + 1
            if error is not None:
                key = f"{op}: {error}"
                self.errors[key] = self.errors.get(key, 0) + 1

    def run(self, name: str, step: Callable[[random.Random, dict[str, httpx.Client]], tuple[str, str | None]], pause: float) -> None:
        rng = random.Random(name)
        clients = {a.name: httpx.Client(base_url=a.url, timeout=15) for a in self.agents}
        try:
            while not self.stop.is_set():
                try:
                    op, error = step(rng, clients)
                except (httpx.HTTPError, dns.exception.DNSException, OSError) as err:
                    op, error = name, repr(err)[:120]
                self.count(op, error)
                self.stop.wait(pause)
        finally:
            for c in clients.values():
                c.close()

    # ------------------------------------------------------------ steps

    def mixed(self, rng: random.Random, clients: dict[str, httpx.Client]) -> tuple[str, bool]:
        http = clients[rng.choice(self.agents).name]
        roll = rng.random()
        if roll < 0.25:
            r = http.put(f"/v1/kv/soak/k{rng.randrange(64)}", content=rng.randbytes(rng.randint(10, 2000)))
            return "kv put", expect(r)
        if roll < 0.40:
            r = http.get(f"/v1/kv/soak/k{rng.randrange(64)}", params={"stale": ""} if rng.random() < 0.5 else {})
            return "kv get", expect(r, 200, 404)
        if roll < 0.45:
            r = http.get("/v1/kv/soak/", params={"keys": "", "separator": "/"})
            return "kv keys", expect(r, 200, 404)
        if roll < 0.50:
            ops = [{"KV": {"Verb": "set", "Key": f"soak/t{rng.randrange(8)}", "Value": "eA=="}}, {"KV": {"Verb": "get-tree", "Key": "soak/t"}}]
            return "txn", expect(http.put("/v1/txn", json=ops))
        if roll < 0.60:
            n, s = rng.randrange(20), rng.randrange(5)
            body = {"Node": f"ext{n}", "Address": f"127.0.1.{n}", "Service": {"ID": f"svc{s}", "Service": "web", "Port": 8000 + s},
                    "Check": {"CheckID": f"chk{s}", "ServiceID": f"svc{s}", "Name": "c", "Status": rng.choice(["passing", "passing", "critical"])}}
            return "catalog register", expect(http.put("/v1/catalog/register", json=body))
        if roll < 0.63:
            body = {"Node": f"ext{rng.randrange(20)}", "ServiceID": f"svc{rng.randrange(5)}"}
            return "catalog deregister", expect(http.put("/v1/catalog/deregister", json=body))
        if roll < 0.68:
            c = clients[self.client.name]
            sid = f"api{rng.randrange(10)}"
            if rng.random() < 0.7:
                body = {"Name": "api", "ID": sid, "Port": 9000, "Check": {"TTL": "30s", "Status": "passing"}}
                return "agent register", expect(c.put("/v1/agent/service/register", json=body))
            return "agent deregister", expect(c.put(f"/v1/agent/service/deregister/{sid}"), 200, 404)
        if roll < 0.80:
            r = http.get(f"/v1/health/service/{rng.choice(['web', 'api'])}", params={"passing": ""})
            return "health", expect(r)
        if roll < 0.85:
            return "catalog services", expect(http.get("/v1/catalog/services"))
        return self.session(rng, http)

    def session(self, rng: random.Random, http: httpx.Client) -> tuple[str, str | None]:
        """Create a session, take and release a lock with it, destroy it (one in ten is left to expire)."""
        r = http.put("/v1/session/create", json={"TTL": "10s", "LockDelay": "0s", "Behavior": "release"})
        if r.status_code != 200:
            return "session", expect(r)
        sid = r.json()["ID"]
        key = f"/v1/kv/soak/lock{rng.randrange(4)}"
        steps = [lambda: http.put(key, params={"acquire": sid}, content=b"held")]
        if rng.random() < 0.9:
            steps += [lambda: http.put(key, params={"release": sid}), lambda: http.put(f"/v1/session/destroy/{sid}")]
        for step in steps:
            if (error := expect(step())) is not None:
                return "session", error
        return "session", None

    def blocking(self, rng: random.Random, clients: dict[str, httpx.Client]) -> tuple[str, bool]:
        http = clients[rng.choice(self.agents).name]
        path = rng.choice(["/v1/kv/soak/k1", "/v1/health/service/web"])
        first = http.get(path)
        index = first.headers.get("X-Consul-Index", "0")
        r = http.get(path, params={"index": index, "wait": "2s"})
        return "blocking", expect(r, 200, 404)

    def resolve(self, rng: random.Random, clients: dict[str, httpx.Client]) -> tuple[str, bool]:
        agent = rng.choice(self.agents)
        name = rng.choice(["web.service.consul", "api.service.consul", "ext3.node.consul", "nosuch.service.consul", "web.connect.consul"])
        q = dns.message.make_query(name, rng.choice(["A", "SRV"]))
        port = agent.config["ports"]["dns"]
        if rng.random() < 0.2:
            r = dns.query.tcp(q, "127.0.0.1", port=port, timeout=5)
        else:
            r = dns.query.udp(q, "127.0.0.1", port=port, timeout=5)
        return "dns", None if r.rcode() in (0, 3) else dns.rcode.to_text(r.rcode())


def expect(r: httpx.Response, *codes: int) -> str | None:
    """None when the status is one of ``codes`` (200 by default), else the status and the start of the body."""
    return None if r.status_code in (codes or (200,)) else f"{r.status_code} {r.text[:80]}"


def soak(workdir: Path, bounds: Bounds) -> dict[str, Any]:
    """Run the load for ``bounds.seconds`` while sampling; the figures per agent."""
    cluster = Cluster(workdir)
    client = cluster.add_client("c1")
    try:
        cluster.start()
        client.start().wait_ready()
        agents = [*cluster.servers, client]
        load = Load(agents, client)
        workers = [
            threading.Thread(target=load.run, args=(f"mixed{i}", load.mixed, 0.005), daemon=True) for i in range(4)
        ] + [
            threading.Thread(target=load.run, args=(f"blocking{i}", load.blocking, 0.0), daemon=True) for i in range(2)
        ] + [threading.Thread(target=load.run, args=("dns", load.resolve, 0.002), daemon=True)]
        samples: dict[str, list[tuple[float, int, int, int]]] = {a.name: [] for a in agents}
        # Each server's in-memory Raft log grows until it compacts (raft_snapshot_threshold entries);
        # the warm-up lasts until every server has compacted once, so memory is measured at its steady state.
        log_peak = {s.name: 0 for s in cluster.servers}
        compacted: set[str] = set()
        warmup = None
        start = time.monotonic()
        for w in workers:
            w.start()
        try:
            while (elapsed := time.monotonic() - start) < bounds.seconds:
                for a in agents:
                    assert a.running(), f"{a.name} died under load:\n{a.log()[-3000:]}"
                    samples[a.name].append((elapsed, *sample(a.proc.pid)))
                for s in cluster.servers:
                    log_len = int(s.raft_stats()["log_len"])
                    if log_len < log_peak[s.name]:
                        compacted.add(s.name)
                    log_peak[s.name] = max(log_peak[s.name], log_len)
                if warmup is None and len(compacted) == len(cluster.servers):
                    warmup = max(elapsed, bounds.warmup)
                time.sleep(bounds.interval)
        finally:
            load.stop.set()
            for w in workers:
                w.join(30)
        assert cluster.leader().http.put("/v1/kv/soak/after", content=b"ok").json() is True
        for a in agents:
            assert "Traceback" not in a.log(), a.log()[-3000:]
        warmup = warmup if warmup is not None and warmup < bounds.seconds * 0.6 else bounds.warmup
        return {"bounds": bounds.__dict__, "warmup": round(warmup), "raft_log_peak": log_peak, "ops": load.ops,
                "errors": load.errors, "agents": summarize(samples, warmup)}
    finally:
        cluster.close()


def summarize(samples: dict[str, list[tuple[float, int, int, int]]], warmup: float) -> dict[str, Any]:
    """Per agent: first- and last-quarter medians (after warm-up) and the whole range, of fds, threads and RSS."""
    out = {}
    for name, rows in samples.items():
        rows = [r for r in rows if r[0] >= warmup]
        quarter = max(len(rows) // 4, 1)
        first, last = rows[:quarter], rows[-quarter:]
        fig = {}
        for i, what in ((1, "fds"), (2, "threads"), (3, "rss_mib")):
            scale = 1 / 2**20 if what == "rss_mib" else 1
            fig[what] = {
                "first": round(statistics.median(r[i] for r in first) * scale, 1),
                "last": round(statistics.median(r[i] for r in last) * scale, 1),
                "min": round(min(r[i] for r in rows) * scale, 1),
                "max": round(max(r[i] for r in rows) * scale, 1),
            }
        step = max(len(rows) // 10, 1)  # RSS through the run, for reading a trend by eye
        fig["rss_mib_series"] = [round(r[3] / 2**20, 1) for r in rows[::step]]
        out[name] = {"samples": len(rows), **fig}
    return out


def check(report: dict[str, Any], bounds: Bounds) -> None:
    print(json.dumps({k: v for k, v in report.items() if k != "agents"}))
    for name, fig in report["agents"].items():
        print(name, json.dumps(fig))
    total = sum(report["ops"].values())
    assert total > bounds.seconds * 20, report["ops"]  # the load really ran
    assert sum(report["errors"].values()) <= total // 100, report["errors"]
    for name, fig in report["agents"].items():
        assert fig["samples"] >= 4, (name, fig)
        assert fig["fds"]["last"] <= fig["fds"]["first"] + bounds.fd_slack, (name, "fds grew", fig["fds"])
        assert fig["threads"]["last"] <= fig["threads"]["first"] + bounds.thread_slack, (name, "threads grew", fig["threads"])
        assert fig["rss_mib"]["last"] <= fig["rss_mib"]["first"] * bounds.rss_ratio, (name, "memory grew", fig["rss_mib"])


@pytest.mark.cluster
def test_resources_stay_flat_under_a_short_mixed_load(tmp_path: Path):
    check(soak(tmp_path, SHORT), SHORT)


@pytest.mark.slow
@pytest.mark.cluster
def test_resources_stay_flat_under_a_ten_minute_mixed_load(tmp_path: Path):
    check(soak(tmp_path, LONG), LONG)
