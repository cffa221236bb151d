"""A 3-server cluster of real `proconsul agent` processes on loopback: election, forwarding, consistency modes."""

from __future__ import annotations

import asyncio
import base64
import random
import threading
import time

import httpx
import pytest

from conftest import Cluster, eventually

pytestmark = pytest.mark.cluster


def test_one_leader_and_every_server_agrees(cluster3: Cluster):
    leader = cluster3.wait_for_leader()
    addrs = sorted(s.server_addr for s in cluster3.servers)
    for s in cluster3.servers:
        assert s.http.get("/v1/status/leader").json() == leader.server_addr
        assert sorted(s.http.get("/v1/status/peers").json()) == addrs
    states = sorted(s.raft_stats()["state"] for s in cluster3.servers)
    assert states == ["Follower", "Follower", "Leader"]
    config = leader.http.get("/v1/operator/raft/configuration").json()
    assert sorted(srv["Node"] for srv in config["Servers"]) == ["s1", "s2", "s3"]
    assert [srv["Address"] for srv in config["Servers"] if srv["Leader"]] == [leader.server_addr]


def test_writes_on_followers_reach_the_leader(cluster3: Cluster):
    for i, follower in enumerate(cluster3.followers()):
        r = follower.http.put(f"/v1/kv/fw/{i}", content=f"from {follower.name}".encode())
        assert r.json() is True
    leader = cluster3.leader()
    keys = leader.http.get("/v1/kv/fw/", params={"keys": ""}).json()
    assert keys == ["fw/0", "fw/1"]
    # default reads on a follower are answered by the leader: they see the write at once
    for s in cluster3.servers:
        r = s.http.get("/v1/kv/fw/0")
        assert r.status_code == 200 and r.headers["X-Consul-KnownLeader"] == "true"


def test_consistency_modes_on_a_follower(cluster3: Cluster):
    follower = cluster3.followers()[0]
    follower.http.put("/v1/kv/modes", content=b"x")
    r = follower.http.get("/v1/kv/modes", params={"consistent": ""})
    assert r.status_code == 200 and r.headers["X-Consul-Effective-Consistency"] == "consistent"
    r = eventually(lambda: (lambda r: r if r.status_code == 200 else None)(follower.http.get("/v1/kv/modes", params={"stale": ""})))
    assert r.headers["X-Consul-Effective-Consistency"] == "stale"
    assert int(r.headers["X-Consul-LastContact"]) < 5000
    r = follower.http.get("/v1/kv/modes")
    assert r.headers["X-Consul-LastContact"] == "0"  # answered by the leader


def test_blocking_query_on_a_follower_wakes_on_a_write_elsewhere(cluster3: Cluster):
    follower, leader = cluster3.followers()[0], cluster3.leader()
    leader.http.put("/v1/kv/bq", content=b"1")
    index = int(follower.http.get("/v1/kv/bq").headers["X-Consul-Index"])
    result: dict = {}

    def blocked() -> None:
        r = follower.http.get("/v1/kv/bq", params={"index": str(index), "wait": "20s"})
        result["r"], result["t"] = r, time.monotonic()

    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(0.3)
    assert t.is_alive()
    start = time.monotonic()
    cluster3.followers()[-1].http.put("/v1/kv/bq", content=b"2")
    t.join(10)
    assert not t.is_alive()
    print(f"forwarded blocking query returned {(result['t'] - start) * 1000:.1f} ms after the write began")
    assert int(result["r"].headers["X-Consul-Index"]) > index
    assert base64.b64decode(result["r"].json()[0]["Value"]) == b"2"


def test_txn_through_a_follower(cluster3: Cluster):
    follower = cluster3.followers()[0]
    ops = [{"KV": {"Verb": "set", "Key": f"ftx/{i}", "Value": base64.b64encode(b"v").decode()}} for i in range(5)]
    r = follower.http.put("/v1/txn", json=ops)
    assert r.status_code == 200 and len(r.json()["Results"]) == 5
    r = follower.http.put("/v1/txn", json=[{"KV": {"Verb": "get", "Key": "ftx/3"}}], params={"stale": ""})
    assert r.status_code in (200, 409)  # a stale read may not have it yet; it must not fail otherwise


async def _write_many(urls: list[str], total: int, concurrency: int) -> list[str]:
    """PUT ``total`` distinct keys, spread over the servers, ``concurrency`` at a time; returns acknowledged keys."""
    acked: list[str] = []
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker(n: int) -> None:
            base = urls[n % len(urls)]
            while not queue.empty():
                i = queue.get_nowait()
                key = f"load/{i:05d}"
                r = await client.put(f"{base}/v1/kv/{key}", content=f"value-{i}-{random.random()}".encode())
                if r.status_code == 200 and r.json() is True:
                    acked.append(key)

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return acked


def test_replica_checksums_match_after_concurrent_writes_to_every_server(cluster3: Cluster):
    """Settles whether pysyncobj's unbatched 'truncating already-applied entries' diverges replicas: it must not."""
    urls = [s.url for s in cluster3.servers]
    start = time.monotonic()
    acked = asyncio.run(_write_many(urls, total=3000, concurrency=24))
    elapsed = time.monotonic() - start
    print(f"3000 PUTs from 24 clients to 3 servers: {len(acked) / elapsed:.0f} acknowledged writes/s")
    assert len(acked) == 3000
    leader = cluster3.leader()
    target = int(leader.raft_stats()["applied_index"])
    cluster3.wait_applied(target)

    def checksums() -> set[str] | None:
        sums = [s.http.get("/v1/internal/debug/state-checksum").json() for s in cluster3.servers]
        if len({(c["AppliedIndex"], c["Index"]) for c in sums}) != 1:
            return None
        return {c["Checksum"] for c in sums}

    sums = eventually(checksums, 20, what="all replicas at one applied index")
    assert len(sums) == 1, sums
    truncations = sum(s.log().count("truncating already-applied") for s in cluster3.servers)
    print(f"pysyncobj truncation warnings during the run: {truncations}")
    keys = leader.http.get("/v1/kv/load/", params={"keys": ""}).json()
    assert len(keys) == 3000
