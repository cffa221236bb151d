"""Agents under partitions (network namespaces): a client agent cut off from every server keeps
answering DNS from its cache, says so in its log, and resyncs its services once healed; a server
cut off from the others loses leadership and refuses writes with Consul's error."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import dns.message
import dns.query
import dns.rdatatype
import httpx
import pytest

from conftest import AgentProc, eventually
from harness import FaultCluster
from netns import NetLab, unavailable_reason
from proconsul.server.errors import RPCError
from proconsul.server.rpc import RPCPool

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    fc = FaultCluster(tmp_path_factory.mktemp("agent-partition"), servers=3, clients=("client1",))
    if not fc.partitions:
        pytest.skip(f"SKIPPED: partitions need network namespaces: {fc.netns_reason}")
    with fc:
        yield fc


def dns_a(agent: AgentProc, name: str) -> list[str]:
    """A records for ``name`` from the agent's DNS port ([] for NXDOMAIN)."""
    q = dns.message.make_query(name, dns.rdatatype.A)
    resp = dns.query.udp(q, agent.host, port=agent.config["ports"]["dns"], timeout=2)
    return sorted(rr.address for rrset in resp.answer for rr in rrset if rr.rdtype == dns.rdatatype.A)


def catalog_nodes(server: AgentProc, service: str) -> list[str]:
    return [e["Node"] for e in server.http.get(f"/v1/catalog/service/{service}").json()]


def test_partitioned_client_answers_dns_from_cache_logs_it_and_resyncs(cluster: FaultCluster):
    client = cluster.clients[0]
    server = cluster.servers[0]
    assert client.http.put("/v1/agent/service/register", json={"Name": "cached", "Port": 80}).status_code == 200
    eventually(lambda: catalog_nodes(server, "cached") == ["client1"], 10, what="cached in the catalog")
    assert eventually(lambda: dns_a(client, "cached.service.consul"), 10) == [client.host]

    cluster.lab.isolate("client1")
    try:
        eventually(lambda: "lost contact with the servers" in client.log(), 15, what="the client logs the partition")
        warn = next(line for line in client.log().splitlines() if "lost contact with the servers" in line)
        assert "[WARN]" in warn, warn
        # Long enough for the leader to mark the node failed (liveness timeout 4 s in these tests).
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert dns_a(client, "cached.service.consul") == [client.host]
            time.sleep(0.5)
        serf = server.http.get("/v1/health/node/client1").json()
        assert {c["CheckID"]: c["Status"] for c in serf}["serfHealth"] == "critical"
        # Registered during the partition: local at once, in the catalog only after healing.
        assert client.http.put("/v1/agent/service/register", json={"Name": "during", "Port": 81}).status_code == 200
        assert "during" in client.http.get("/v1/agent/services").json()
        assert catalog_nodes(server, "during") == []
    finally:
        cluster.lab.heal()
    eventually(lambda: catalog_nodes(server, "during") == ["client1"], 15, what="anti-entropy synced 'during'")
    eventually(lambda: "in contact with the servers" in client.log().split("lost contact with the servers")[-1], 10)
    eventually(lambda: dns_a(client, "during.service.consul") == [client.host], 10, what="DNS answers the new service")
    eventually(lambda: {c["CheckID"]: c["Status"] for c in server.http.get("/v1/health/node/client1").json()}["serfHealth"] == "passing", 15)


def test_partitioned_leader_steps_down_and_refuses_writes(cluster: FaultCluster):
    old = cluster.wait_for_leader()
    others = [s for s in cluster.servers if s is not old]
    cluster.lab.isolate(old.name, [s.name for s in cluster.servers])
    try:
        eventually(lambda: old.raft_stats()["state"] != "Leader", 5, what="the isolated leader steps down")
        new = eventually(lambda: next((s for s in others if s.raft_stats()["state"] == "Leader"), None), 10, what="a new leader")
        assert new.http.put("/v1/kv/partition/majority", content=b"yes").json() is True
        started = time.monotonic()
        r = old.http.put("/v1/kv/partition/minority", content=b"no", timeout=20)
        held = time.monotonic() - started
        assert (r.status_code, r.text) == (500, "No cluster leader"), (r.status_code, r.text)
        print(f"isolated server refused the write after holding it {held:.1f} s")
        assert old.http.get("/v1/status/leader").json() == ""
    finally:
        cluster.lab.heal()
    eventually(lambda: old.http.get("/v1/kv/partition/majority", params={"stale": ""}).status_code == 200, 15, what="the old leader caught up")
    leader = cluster.wait_for_leader()
    assert leader.http.get("/v1/kv/partition/minority", params={"consistent": ""}).status_code == 404


SILENT_SERVER = """
import socket, sys, time
s = socket.socket()
s.bind((sys.argv[1], 8300))
s.listen()
print("listening", flush=True)
conn, _ = s.accept()
time.sleep(120)  # reads nothing, answers nothing: the kernel still ACKs until the partition
"""


def test_rpc_call_to_a_silently_partitioned_server_fails_within_seconds():
    """Regression: with packets dropped silently (no RST), a pending RPC waited as long as TCP
    retransmits (~15 min), so a partitioned client agent never noticed; now the connection drops
    after DEAD_PEER_TIMEOUT and the call fails with RPCError."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"SKIPPED: needs network namespaces: {reason}")
    with NetLab(["silent"]) as lab:
        ip = lab.ip("silent")
        proc = subprocess.Popen([*lab.wrap("silent"), sys.executable, "-c", SILENT_SERVER, ip], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "listening"

            async def call_then_partition() -> tuple[type, float]:
                pool = RPCPool()
                try:
                    call = asyncio.ensure_future(pool.call(f"{ip}:8300", "Status.Leader", {}))
                    await asyncio.sleep(0.5)  # sent and acknowledged; no answer will come
                    lab.cut_from_test("silent")
                    started = time.monotonic()
                    try:
                        await asyncio.wait_for(call, 20)
                    except Exception as err:
                        return type(err), time.monotonic() - started
                    return type(None), time.monotonic() - started
                finally:
                    pool.close()

            kind, waited = asyncio.run(call_then_partition())
        finally:
            proc.kill()
            proc.wait()
    assert kind is RPCError, f"the call ended with {kind.__name__} after {waited:.1f} s"
    assert waited < 10
