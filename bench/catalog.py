"""Catalog at scale: 1,000 nodes x 10 service instances in a 3-server proconsul cluster, then health reads.

Registration: ``PUT /v1/catalog/register``, one instance (with one passing
service check) per request, ``REG_CONCURRENCY`` concurrent httpx clients
against the leader. Service ``s0`` gets an instance on every node (1,000
instances); each node's other 9 instances are spread over ``s1``..``s99``.

Reads of ``/v1/health/service/s0?passing`` (1,000 entries), three ways,
interleaved A B C over the rounds: the leader (default mode), a follower
(default mode, forwarded to the leader over server RPC) and a follower with
``?stale`` (served from its own store). For each: p50/p99 of sequential
requests on one keep-alive connection, and wrk req/s at 16 connections.

Memory: the leader's RSS before and after the registrations (after the cluster
is idle again), reported per 10,000 instances; the followers' too.

Run: ``python -m bench catalog``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    TMPFS, ensure_apt, pct, proconsul_cluster, rss_mb, summarize_runs, verdict, wait_idle, wrk_lua,
)

NODES = 1000
PER_NODE = 10
OTHER_SERVICES = 99
REG_CONCURRENCY = 32
REG_TIME_LIMIT = 150.0  # seconds for all registrations
ROUNDS = 3
SEQ_PER_ROUND = 60  # sequential requests per target per round
SEQ_TIME_LIMIT = 20.0  # seconds per target per round
WRK_DURATION = 4
WRK_CONNECTIONS = 16
P50_TARGET_MS, P50_GOAL_MS = 20.0, 5.0

GET_LUA = """local path = "{path}"
request = function() return wrk.format("GET", path) end
"""


def registrations() -> list[dict[str, Any]]:
    """The 10,000 register bodies: s0 on every node, the other 9 per node over s1..s99."""
    out = []
    for n in range(NODES):
        node, addr = f"node-{n}", f"10.{n // 250}.{n % 250}.1"
        names = ["s0"] + [f"s{1 + (n * 9 + j) % OTHER_SERVICES}" for j in range(PER_NODE - 1)]
        for j, name in enumerate(names):
            sid = f"{name}-{n}-{j}"
            out.append({
                "Node": node, "Address": addr,
                "Service": {"ID": sid, "Service": name, "Port": 8000 + j, "Tags": ["bench"]},
                "Check": {"CheckID": f"service:{sid}", "Name": f"{sid} alive", "Status": "passing", "ServiceID": sid},
            })
    return out


async def register_all(url: str, bodies: list[dict[str, Any]]) -> dict[str, float]:
    """PUT every body, REG_CONCURRENCY at a time, within REG_TIME_LIMIT; returns counts and rate."""
    todo = iter(bodies)
    done, failed = 0, 0
    deadline = time.monotonic() + REG_TIME_LIMIT

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done, failed
        for body in todo:
            if time.monotonic() > deadline:
                return
            r = await client.put("/v1/catalog/register", json=body)
            if r.status_code == 200:
                done += 1
            else:
                failed += 1

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=REG_CONCURRENCY, max_keepalive_connections=REG_CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(REG_CONCURRENCY)))
    elapsed = time.perf_counter() - start
    return {"registered": done, "failed": failed, "seconds": elapsed, "per_s": done / elapsed}


def sequential(url: str, path: str) -> list[float]:
    """Latencies (ms) of SEQ_PER_ROUND sequential GETs on one keep-alive connection, bounded in time."""
    lat = []
    deadline = time.monotonic() + SEQ_TIME_LIMIT
    with httpx.Client(base_url=url, timeout=30) as c:
        c.get(path)  # connect outside the measurement
        for _ in range(SEQ_PER_ROUND):
            if time.monotonic() > deadline:
                break
            t = time.perf_counter()
            r = c.get(path)
            lat.append((time.perf_counter() - t) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"GET {path} answered {r.status_code}: {r.text[:200]}")
    return lat


def main(argv: list[str]) -> dict[str, Any]:
    ensure_apt({"wrk": "wrk"})
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="proconsul-bench-catalog-", dir=TMPFS) as tmp:
        workdir = Path(tmp)
        cluster = None
        try:
            cluster = proconsul_cluster(workdir)
            leader = cluster.leader()
            follower = cluster.followers()[0]
            bodies = registrations()
            wait_idle(leader.proc.pid)
            rss_before = {s.name: rss_mb(s.proc.pid) for s in cluster.servers}
            reg = asyncio.run(register_all(leader.url, bodies))
            for s in cluster.servers:
                wait_idle(s.proc.pid)
            rss_after = {s.name: rss_mb(s.proc.pid) for s in cluster.servers}
            instances = reg["registered"]
            # The reads go to whoever leads now: an election during the registrations would otherwise turn the
            # "leader" rows into forwarded reads (and is worth knowing about).
            registered_through = leader.name
            leader = cluster.leader()
            follower = cluster.followers()[0]
            entries = leader.http.get("/v1/health/service/s0?passing").json()
            body_bytes = len(leader.http.get("/v1/health/service/s0?passing").content)
            results["setup"] = {
                "cluster": "3 servers (proconsul agent -server processes), bootstrap_expect 3",
                "leader": leader.name, "follower": follower.name, "registration": reg,
                "registered_through": registered_through, "leader_changed_during_registration": leader.name != registered_through,
                "s0_passing_entries": len(entries), "response_bytes": body_bytes,
                "catalog_services": len(leader.http.get("/v1/catalog/services").json()),
            }
            results["memory"] = {
                "rss_mb_before": rss_before, "rss_mb_after": rss_after, "instances": instances,
                "leader_mb_per_10k_instances": (rss_after[leader.name] - rss_before[leader.name]) / max(instances, 1) * 10000,
                "follower_mb_per_10k_instances": (rss_after[follower.name] - rss_before[follower.name]) / max(instances, 1) * 10000,
            }
            targets = {
                "leader, default": (leader.url, "/v1/health/service/s0?passing"),
                "follower, default (forwarded)": (follower.url, "/v1/health/service/s0?passing"),
                "follower, ?stale": (follower.url, "/v1/health/service/s0?passing&stale"),
            }
            scripts = {}
            for i, (name, (_, path)) in enumerate(targets.items()):
                scripts[name] = workdir / f"get{i}.lua"
                scripts[name].write_text(GET_LUA.format(path=path))
            lat: dict[str, list[float]] = {n: [] for n in targets}
            wrks: dict[str, list[dict]] = {n: [] for n in targets}
            for _ in range(ROUNDS):  # A B C A B C
                for name, (url, path) in targets.items():
                    lat[name] += sequential(url, path)
                for name, (url, _) in targets.items():
                    wrks[name].append(wrk_lua(url, WRK_CONNECTIONS, WRK_DURATION, scripts[name], timeout="10s"))
            results["reads"] = {
                name: {
                    "sequential_requests": len(lat[name]),
                    "p50_ms": pct(lat[name], 0.5), "p99_ms": pct(lat[name], 0.99), "max_ms": max(lat[name]),
                    "wrk": summarize_runs(wrks[name]),
                    "wrk_rps_per_round": [r["rps"] for r in wrks[name]],
                }
                for name in targets
            }
            p50 = results["reads"]["leader, default"]["p50_ms"]
            results["targets"] = [
                {"row": "p50 leader, default", "value_ms": p50, "target_ms": P50_TARGET_MS, "verdict": verdict(p50, P50_TARGET_MS, higher_is_better=False)},
                {"row": "p50 leader, default (goal)", "value_ms": p50, "target_ms": P50_GOAL_MS, "verdict": verdict(p50, P50_GOAL_MS, higher_is_better=False)},
            ]
        finally:
            if cluster is not None:
                cluster.close()
    report(results)
    return results


def report(results: dict[str, Any]) -> None:
    s, m = results["setup"], results["memory"]
    reg = s["registration"]
    print(f"Catalog at scale: {s['cluster']}, leader {s['leader']}, data dirs on tmpfs, {os.cpu_count()} cores")
    if s.get("leader_changed_during_registration"):
        print(f"  an election during the registrations: they went through {s['registered_through']}, the reads to {s['leader']}")
    print(f"  registered {reg['registered']:.0f} instances ({reg['failed']:.0f} failed) on {NODES} nodes via PUT /v1/catalog/register,"
          f" {REG_CONCURRENCY} concurrent: {reg['seconds']:.1f}s, {reg['per_s']:.0f}/s; {s['catalog_services']} services")
    print(f"  /v1/health/service/s0?passing: {s['s0_passing_entries']} entries, {s['response_bytes'] / 1024:.0f} KiB")
    print(f"  leader RSS {m['rss_mb_before'][s['leader']]:.0f} -> {m['rss_mb_after'][s['leader']]:.0f} MB: {m['leader_mb_per_10k_instances']:.0f} MB per 10,000 instances"
          f" (follower {m['follower_mb_per_10k_instances']:.0f} MB)")
    print(f"  reads: sequential on one connection ({SEQ_PER_ROUND} x {ROUNDS} rounds) and wrk -t1 -c{WRK_CONNECTIONS} {WRK_DURATION}s x {ROUNDS}, interleaved")
    print(f"  {'target':<32}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'wrk req/s':>11}  {'[min-max]':<12}{'wrk p50':>8}{'wrk p99':>8}{'wrk cpu':>8}")
    for name, r in results["reads"].items():
        w = r["wrk"]
        print(f"  {name:<32}{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['max_ms']:>8.1f}{w['rps']:>11.1f}  {'[%.0f-%.0f]' % (w['rps_min'], w['rps_max']):<12}"
              f"{w['p50_ms']:>8.0f}{w['p99_ms']:>8.0f}{w['wrk_cpu']:>8.2f}")
    print("  targets:")
    for t in results["targets"]:
        print(f"    {t['row']:<32}{t['value_ms']:>8.1f} ms  target < {t['target_ms']:.0f} ms  {t['verdict']}")
