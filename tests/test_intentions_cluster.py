"""Intentions on a real 3-server cluster with a client agent: writes through any server, authorize on the client
follows them within a second (its cache is kept fresh by blocking queries), and a server restart loses nothing."""

from __future__ import annotations

import statistics
import time
from typing import Iterator

import pytest

from conftest import AgentProc, Cluster, eventually

pytestmark = pytest.mark.cluster

URI = "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/{}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, AgentProc]]:
    c = Cluster(tmp_path_factory.mktemp("intentions"))
    client = c.add_client("ixn-client")
    try:
        c.start()
        client.start().wait_ready()
        yield c, client
    finally:
        c.close()


def authorize(agent: AgentProc, target: str, source: str) -> dict:
    r = agent.http.post("/v1/agent/connect/authorize", json={"Target": target, "ClientCertURI": URI.format(source)})
    assert r.status_code == 200, r.text
    return r.json()


def upsert(agent: AgentProc, source: str, destination: str, action: str) -> None:
    r = agent.http.put("/v1/connect/intentions/exact", params={"source": source, "destination": destination}, json={"Action": action})
    assert (r.status_code, r.json()) == (200, True), r.text


def test_client_authorize_follows_writes_within_a_second(cluster):
    c, client = cluster
    servers = c.servers
    upsert(servers[1], "cl-web", "cl-db", "allow")
    assert eventually(lambda: authorize(client, "cl-db", "cl-web")["Authorized"], timeout=5)
    timings = []
    for i in range(6):
        action = "deny" if i % 2 == 0 else "allow"
        writer = servers[i % 3]  # the leader and the followers (which forward) in turn
        started = time.monotonic()
        upsert(writer, "cl-web", "cl-db", action)
        eventually(lambda: authorize(client, "cl-db", "cl-web")["Authorized"] is (action == "allow"), timeout=1.0, interval=0.002,
                   what=f"authorize on the client shows {action}")
        timings.append(time.monotonic() - started)
    assert max(timings) < 1.0
    print(f"\nwrite -> client authorize flips: median {statistics.median(timings) * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms")
    # Every server answers check, and so does the client (forwarded).
    for agent in (*servers, client):
        assert agent.http.get("/v1/connect/intentions/check", params={"source": "cl-web", "destination": "cl-db"}).json() == {"Allowed": True}


def test_wildcard_and_legacy_intentions_reach_the_client(cluster):
    c, client = cluster
    leader = c.leader()
    r = leader.http.post("/v1/connect/intentions", json={"SourceName": "*", "DestinationName": "cl-api", "Action": "deny"})
    ixn_id = r.json()["ID"]
    # The client's cache reads stale from any server: wait (briefly) for the change, not for any answer.
    result = eventually(lambda: (lambda r: r if not r["Authorized"] else None)(authorize(client, "cl-api", "cl-anyone")), timeout=2)
    assert result == {"Authorized": False, "Reason": f"Matched L4 intention: default/* => default/cl-api (ID: {ixn_id}, Precedence: 8, Action: DENY)"}
    for follower in c.followers():
        got = eventually(lambda: follower.http.get(f"/v1/connect/intentions/{ixn_id}", params={"stale": ""}).json(), timeout=5)
        assert got["ID"] == ixn_id
    assert leader.http.delete(f"/v1/connect/intentions/{ixn_id}").json() is True
    assert eventually(lambda: authorize(client, "cl-api", "cl-anyone")["Reason"] == "Default behavior configured by ACLs", timeout=1.0, interval=0.005)


def test_intentions_survive_a_server_restart(cluster):
    c, client = cluster
    upsert(c.leader(), "rs-web", "rs-db", "deny")
    follower = c.followers()[0]
    c.restart(follower)
    got = eventually(lambda: follower.http.get("/v1/connect/intentions/exact", params={"source": "rs-web", "destination": "rs-db", "stale": ""}).json(), timeout=10)
    assert got["Action"] == "deny"
    assert authorize(client, "rs-db", "rs-web")["Authorized"] is False
