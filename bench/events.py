"""Cluster events: leader failover under write load, and dev agent start-up.

Failover: a 3-server proconsul cluster (the tests' harness: ``proconsul agent``
subprocesses, ``bootstrap_expect`` 3, data dirs on tmpfs). ``WRITERS`` threads
each send ``PUT /v1/kv/load/<n>`` round-robin to the three servers (a follower
forwards to the leader), one at a time, 1 s timeout, 5 ms pause after a
failure. After ``STEADY_S`` of steady load the leader's process group gets
SIGKILL; the figure is the time from the kill to the acknowledgement of the
first write that was sent after the kill and accepted (200 ``true``). The
killed server is then restarted on its data dir and the cluster re-agrees on a
leader before the next round. ``FAILOVERS`` rounds, median.

Start-up: ``proconsul agent -dev`` from ``Popen`` until ``/v1/status/leader``
answers a non-empty address (polled every 10 ms), and until a first
``PUT /v1/kv`` is accepted. ``STARTS`` times, median.

Run: ``python -m bench events``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import TMPFS, PROCONSUL, Procs, free_ports, proconsul_cluster, spread, stop, verdict

WRITERS = 4
STEADY_S = 2.0
FAILOVERS = 3
RECOVERY_LIMIT_S = 30.0
MAX_WRITES = 500_000
STARTS = 5
START_LIMIT_S = 30.0
FAILOVER_TARGET_S, START_TARGET_S = 3.0, 1.0


class Load:
    """Writer threads round-robin over the servers; every attempt is recorded as (sent, done, ok)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.log: list[tuple[float, float, bool]] = []
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(WRITERS)]
        self.deadline = time.monotonic() + FAILOVERS * (STEADY_S + RECOVERY_LIMIT_S + 60)

    def _run(self, i: int) -> None:
        n = i
        clients = [httpx.Client(base_url=u, timeout=httpx.Timeout(1.0, connect=0.5)) for u in self.urls]
        try:
            while not self.halt.is_set() and len(self.log) < MAX_WRITES and time.monotonic() < self.deadline:
                c = clients[n % len(clients)]
                n += 1
                t = time.monotonic()
                try:
                    ok = c.put(f"/v1/kv/load/{n % 1000}", content=b"x" * 64).text.strip() == "true"
                except httpx.HTTPError:
                    ok = False
                self.log.append((t, time.monotonic(), ok))
                if not ok:
                    time.sleep(0.005)
        finally:
            for c in clients:
                c.close()

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(timeout=5)

    def first_ok_sent_after(self, t0: float) -> float | None:
        done = [d for s, d, ok in list(self.log) if ok and s >= t0]
        return min(done) if done else None


def failover(workdir: Path) -> dict[str, Any]:
    cluster = proconsul_cluster(workdir)
    load = None
    try:
        load = Load([s.url for s in cluster.servers]).start()
        rounds = []
        for _ in range(FAILOVERS):
            leader = cluster.wait_for_leader(30)
            time.sleep(STEADY_S)
            before = [x for x in list(load.log) if x[1] > time.monotonic() - 1.0]
            t_kill = time.monotonic()
            leader.kill()
            deadline = t_kill + RECOVERY_LIMIT_S
            first = None
            while first is None and time.monotonic() < deadline:
                time.sleep(0.01)
                first = load.first_ok_sent_after(t_kill)
            new_leader = cluster.wait_for_leader(30)
            after = [x for x in list(load.log) if x[0] >= t_kill]
            rounds.append({
                "killed": leader.name, "new_leader": new_leader.name,
                "recovery_s": (first - t_kill) if first is not None else float("inf"),
                "writes_per_s_before": sum(ok for _, _, ok in before) / 1.0,
                "failed_attempts_until_recovery": sum(1 for s, d, ok in after if not ok and (first is None or d <= first)),
            })
            cluster.restart(leader)
            cluster.wait_for_leader(30)
        return {"rounds": rounds, "recovery_s": spread([r["recovery_s"] for r in rounds]), "total_writes": len(load.log)}
    finally:
        if load is not None:
            load.stop()
        cluster.close()


def dev_start(procs: Procs, workdir: Path) -> dict[str, float]:
    http, server = free_ports(2)
    url = f"http://127.0.0.1:{http}"
    t0 = time.monotonic()
    proc = procs.start([PROCONSUL, "agent", "-dev", "-http-port", str(http), "-server-port", str(server), "-dns-port", "-1", "-log-level", "warn"], workdir / "dev.log")
    leader_s = write_s = None
    try:
        with httpx.Client(base_url=url, timeout=0.5) as c:
            while time.monotonic() - t0 < START_LIMIT_S and proc.poll() is None:
                try:
                    if leader_s is None and c.get("/v1/status/leader").json():
                        leader_s = time.monotonic() - t0
                    if leader_s is not None and c.put("/v1/kv/started", content=b"1").text.strip() == "true":
                        write_s = time.monotonic() - t0
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.01)
    finally:
        stop(proc)
    return {"leader_s": leader_s if leader_s is not None else float("inf"), "first_write_s": write_s if write_s is not None else float("inf")}


def main(argv: list[str]) -> dict[str, Any]:
    procs = Procs()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="proconsul-bench-events-", dir=TMPFS) as tmp:
        workdir = Path(tmp)
        try:
            results["failover"] = failover(workdir / "cluster")
            starts = [dev_start(procs, workdir) for _ in range(STARTS)]
            # python start-up alone, for scale: the interpreter plus importing the agent
            t = time.monotonic()
            subprocess.run([PROCONSUL, "--help"], capture_output=True, timeout=60)
            results["dev_start"] = {
                "runs": starts, "leader_s": spread([s["leader_s"] for s in starts]), "first_write_s": spread([s["first_write_s"] for s in starts]),
                "cli_help_s": time.monotonic() - t,
            }
        finally:
            procs.stop_all()
    f, d = results["failover"]["recovery_s"]["median"], results["dev_start"]["leader_s"]["median"]
    results["targets"] = [
        {"row": "leader kill -9 -> first accepted write", "value_s": f, "target_s": FAILOVER_TARGET_S, "verdict": verdict(f, FAILOVER_TARGET_S, higher_is_better=False)},
        {"row": "agent -dev start -> /v1/status/leader", "value_s": d, "target_s": START_TARGET_S, "verdict": verdict(d, START_TARGET_S, higher_is_better=False)},
    ]
    report(results)
    return results


def report(results: dict[str, Any]) -> None:
    f, d = results["failover"], results["dev_start"]
    print(f"Cluster events on {os.cpu_count()} cores")
    print(f"  failover: 3-server cluster, {WRITERS} writer threads round-robin over the servers, leader SIGKILLed after {STEADY_S:.0f}s, {FAILOVERS} rounds")
    print(f"  {'killed':<8}{'new leader':<12}{'recovery s':>11}{'writes/s before':>17}{'failed attempts':>17}")
    for r in f["rounds"]:
        print(f"  {r['killed']:<8}{r['new_leader']:<12}{r['recovery_s']:>11.2f}{r['writes_per_s_before']:>17.0f}{r['failed_attempts_until_recovery']:>17}")
    rs = f["recovery_s"]
    print(f"  recovery median {rs['median']:.2f}s [{rs['min']:.2f}-{rs['max']:.2f}]")
    print(f"  dev agent start ({STARTS} runs): " + ", ".join(f"{r['leader_s']:.2f}" for r in d["runs"]) + " s to a leader; first write "
          + ", ".join(f"{r['first_write_s']:.2f}" for r in d["runs"]) + f" s; `proconsul --help` alone {d['cli_help_s']:.2f}s")
    print("  targets:")
    for t in results["targets"]:
        print(f"    {t['row']:<40}{t['value_s']:>7.2f} s  target < {t['target_s']:.0f} s  {t['verdict']}")
