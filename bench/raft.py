"""Raft configuration, chosen by measurement.

Part 1 — the Raft layer alone: three in-process RaftNodes on loopback, commits
of 64-byte KV sets at 1 and 16 concurrent proposers, pysyncobj's defaults
(batched appends every 0.1 s) against ours (unbatched), interleaved A B A B.

Part 2 — the truncation question: under unbatched load pysyncobj logs CRITICAL
"truncating already-applied log entries … may have diverged". A probe on every
follower compares each truncated entry with the entry that replaces it, and the
replicas' state checksums are compared at the end.

Part 3 — end to end: a 3-server proconsul cluster (real processes), one client,
PUT latency to the leader and through a follower (forwarded over server RPC).

Every load is bounded in count and time; everything listens on 127.0.0.1.
Run: ``python -m bench raft`` (``make bench`` runs every benchmark).
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pysyncobj import SyncObj

from proconsul.server.commands import KVSRequest
from proconsul.server.fsm import FSM
from proconsul.server.raft import RaftNode, RaftTuning
from proconsul.server.state import StateStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import Cluster, free_ports  # noqa: E402  (the tests' process harness)

PYSYNCOBJ_DEFAULTS = RaftTuning(batch_appends=True, heartbeat=0.1, election_min=0.4, election_max=1.4)
OURS = RaftTuning()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


async def raft_round(tuning: RaftTuning, commits: int, concurrency: int, time_limit: float = 60.0) -> dict[str, Any]:
    """One 3-node cluster, ``commits`` proposals to the leader from ``concurrency`` proposers."""
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    stores = [StateStore() for _ in addrs]
    nodes = [
        RaftNode(fsm=FSM(st), self_addr=a, bind_addr=a, peers=addrs, data_dir=None, password=None, tuning=tuning)
        for st, a in zip(stores, addrs)
    ]
    loop = asyncio.get_running_loop()
    for n in nodes:
        n.start(loop)
    try:
        deadline = time.monotonic() + 10
        while not any(n.is_leader() for n in nodes):
            assert time.monotonic() < deadline, "no leader"
            await asyncio.sleep(0.02)
        leader = next(n for n in nodes if n.is_leader())
        await leader.barrier()
        todo = iter(range(commits))
        latencies: list[float] = []
        stop_at = time.monotonic() + time_limit

        async def proposer() -> None:
            for i in todo:
                if time.monotonic() > stop_at:
                    return
                t = time.perf_counter()
                await leader.apply(KVSRequest(op="set", key=f"k{i % 1000}", value=os.urandom(64)))
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(proposer() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        target = leader.applied_index()
        while min(n.applied_index() for n in nodes) < target:
            await asyncio.sleep(0.02)
        return {
            "commits_per_s": len(latencies) / elapsed,
            "p50_ms": pct(latencies, 0.5) * 1000,
            "p99_ms": pct(latencies, 0.99) * 1000,
            "replicas_identical": len({st.checksum()[1] for st in stores}) == 1,
        }
    finally:
        for n in nodes:
            n.stop()


def part1(reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for concurrency, commits in ((1, 300), (16, 3000)):
        runs: dict[str, list[dict]] = {"pysyncobj defaults": [], "proconsul": []}
        for _ in range(reps):  # interleaved: A B A B
            runs["pysyncobj defaults"].append(asyncio.run(raft_round(PYSYNCOBJ_DEFAULTS, commits, concurrency)))
            runs["proconsul"].append(asyncio.run(raft_round(OURS, commits, concurrency)))
        for name, rs in runs.items():
            out[f"{name} @{concurrency}"] = {
                k: statistics.median(r[k] for r in rs) for k in ("commits_per_s", "p50_ms", "p99_ms")
            } | {"replicas_identical": all(r["replicas_identical"] for r in rs)}
    return out


class _TruncationProbe:
    """Wraps pysyncobj's message handler on followers to compare truncated entries with their replacements."""

    def __init__(self) -> None:
        self.stats = {"overlapping_appends": 0, "entries_compared": 0, "mismatched": 0, "applied_entries_truncated": 0}
        self._orig = SyncObj._SyncObj__onMessageReceived

    def __enter__(self) -> "_TruncationProbe":
        orig, stats = self._orig, self.stats

        def probe(sync: Any, node: Any, message: dict) -> None:
            if message.get("type") != "append_entries" or "prevLogIdx" not in message or message.get("transmission"):
                return orig(sync, node, message)
            prev = message["prevLogIdx"]
            log = sync._SyncObj__raftLog
            first = log[0][1]
            before = {e[1]: (e[0], e[2]) for e in log[prev + 1 - first :]} if prev >= first else {}
            applied = sync.raftLastApplied
            orig(sync, node, message)
            if not before:
                return
            log = sync._SyncObj__raftLog
            after = {e[1]: (e[0], e[2]) for e in log[max(prev + 1 - log[0][1], 0) :]}
            stats["overlapping_appends"] += 1
            for idx, entry in before.items():
                if idx in after:
                    stats["entries_compared"] += 1
                    stats["mismatched"] += after[idx] != entry
                if idx <= applied:
                    stats["applied_entries_truncated"] += 1

        SyncObj._SyncObj__onMessageReceived = probe
        return self

    def __exit__(self, *exc: Any) -> None:
        SyncObj._SyncObj__onMessageReceived = self._orig


class _CountCritical(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "truncating already-applied" in record.getMessage():
            self.count += 1


def part2() -> dict[str, Any]:
    counter = _CountCritical()
    logging.getLogger("pysyncobj").addHandler(counter)
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    try:
        with _TruncationProbe() as probe:
            rounds = [asyncio.run(raft_round(OURS, 20000, concurrency)) for concurrency in (16, 64)]
    finally:
        logging.getLogger("pysyncobj").removeHandler(counter)
    return {
        "critical_messages": counter.count,
        **probe.stats,
        "replicas_identical": all(r["replicas_identical"] for r in rounds),
    }


def part3(requests: int = 400) -> dict[str, Any]:
    import httpx

    with tempfile.TemporaryDirectory(prefix="proconsul-bench-") as tmp:
        cluster = Cluster(Path(tmp))
        try:
            cluster.start()
            leader = cluster.leader()
            follower = cluster.followers()[0]
            out = {}
            for name, target in (("PUT to the leader", leader), ("PUT through a follower", follower)):
                with httpx.Client(base_url=target.url) as client:
                    for i in range(20):
                        client.put(f"/v1/kv/warm/{i}", content=b"x")
                    lat = []
                    for i in range(requests):
                        t = time.perf_counter()
                        r = client.put(f"/v1/kv/bench/{i % 1000}", content=os.urandom(64))
                        lat.append(time.perf_counter() - t)
                        assert r.status_code == 200
                out[name] = {"p50_ms": pct(lat, 0.5) * 1000, "p99_ms": pct(lat, 0.99) * 1000}
            return out
        finally:
            cluster.close()


def main(argv: list[str]) -> dict[str, Any]:
    reps = 3
    print("Part 1: Raft layer, 3 in-process nodes, 64-byte KV sets (medians of %d interleaved runs)" % reps)
    p1 = part1(reps)
    print(f"  {'config':<28}{'commits/s':>12}{'p50 ms':>10}{'p99 ms':>10}  identical")
    for name, r in p1.items():
        print(f"  {name:<28}{r['commits_per_s']:>12.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}  {r['replicas_identical']}")
    for c in (1, 16):
        a, b = p1[f"proconsul @{c}"], p1[f"pysyncobj defaults @{c}"]
        print(f"  ratio @{c}: {a['commits_per_s'] / b['commits_per_s']:.1f}x commits/s, p50 {b['p50_ms'] / a['p50_ms']:.0f}x lower")
    print("Part 2: truncation probe, unbatched, 20000 commits at 16 and 64 proposers")
    p2 = part2()
    for k, v in p2.items():
        print(f"  {k:<28}{v}")
    print("Part 3: 3-server proconsul cluster (processes), one HTTP client, 64-byte PUTs")
    p3 = part3()
    for name, r in p3.items():
        print(f"  {name:<28}p50 {r['p50_ms']:.2f} ms   p99 {r['p99_ms']:.2f} ms")
    return {"raft_layer": p1, "truncation": p2, "http": p3}
