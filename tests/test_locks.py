"""Locks with real processes on a 3-server cluster: py-consul leader election among three competitors,
a semaphore of 2 among 5 `proconsul lock -n 2` contenders, and a lock held across a Raft leader change."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import consul
import pytest

from conftest import PROCONSUL, Cluster, eventually

pytestmark = pytest.mark.cluster

# Sessions may use a 1 s TTL here (Consul's session_ttl_min, lowered) so expiries take seconds, not 20 s.
FAST = {"session_ttl_min": "1s", "liveness": {"interval": "300ms", "timeout": "3s"}}

# Each contender binds its session to its own 2 s TTL check (as Patroni-style users do): when the
# contender dies, the check goes critical and that invalidates the session, releasing the lock.
CONTENDER = textwrap.dedent(
    """
    import json, os, sys, time
    import consul
    port, key, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    c = consul.Consul(port=port)
    check_id = f"contender-{os.getpid()}"
    c.agent.check.register(check_id, check=consul.Check.ttl("2s"), check_id=check_id)
    c.agent.check.ttl_pass(check_id)
    while True:  # until anti-entropy has put the passing check in the catalog
        try:
            sid = c.session.create(name=f"elect-{os.getpid()}", checks=[check_id], lock_delay=1)
            break
        except consul.ConsulException:
            c.agent.check.ttl_pass(check_id)
            time.sleep(0.1)

    def note(event):
        with open(log, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "event": event, "t": time.time(), "session": sid}) + "\\n")

    note("ready")
    holding = False
    while True:
        c.agent.check.ttl_pass(check_id)
        if not holding:
            if c.kv.put(key, str(os.getpid()), acquire=sid):
                holding = True
                note("acquired")
        else:
            _, entry = c.kv.get(key, consistency="consistent")
            if entry is None or entry.get("Session") != sid:
                holding = False
                note("lost")
        time.sleep(0.1)
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("locks"), **FAST)
    try:
        c.start()
        yield c
    finally:
        c.close()


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_leader_election_with_three_competing_processes(cluster: Cluster, tmp_path: Path):
    key, log = "election/leader", tmp_path / "events.jsonl"
    script = tmp_path / "contender.py"
    script.write_text(CONTENDER)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(s.http_port), key, str(log)], start_new_session=True)
        for s in cluster.servers
    ]
    killed: dict[int, float] = {}
    try:
        eventually(lambda: sum(e["event"] == "ready" for e in events(log)) == 3, 20, what="three contenders ready")
        for round_ in range(2):
            holder = eventually(lambda: [e for e in events(log) if e["event"] == "acquired" and e["pid"] not in killed], 15)
            assert len(holder) == 1, holder  # exactly one live holder
            pid = holder[0]["pid"]
            # The lock key names the holder, read through a consistent read.
            _, entry = consul.Consul(port=cluster.servers[round_].http_port).kv.get(key, consistency="consistent")
            assert entry["Session"] == holder[0]["session"] and entry["Value"] == str(pid).encode()
            time.sleep(0.5)
            os.killpg(pid, signal.SIGKILL)
            killed[pid] = time.time()
        survivor = eventually(lambda: [e for e in events(log) if e["event"] == "acquired" and e["pid"] not in killed], 15)
        assert len(survivor) == 1
        acquisitions = [e for e in events(log) if e["event"] == "acquired"]
        assert len(acquisitions) == 3 and len({e["pid"] for e in acquisitions}) == 3
        for prev, nxt in zip(acquisitions, acquisitions[1:]):
            gap = nxt["t"] - killed[prev["pid"]]
            print(f"failover after the holder's kill -9: {gap:.2f} s (check TTL 2 s + lock delay 1 s)")
            assert nxt["t"] > killed[prev["pid"]]  # never two holders: the next one won only after the kill
        assert not [e for e in events(log) if e["event"] == "lost"]  # no live holder ever lost the lock
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_semaphore_of_two_among_five_contenders(cluster: Cluster, tmp_path: Path):
    log = tmp_path / "slots.log"
    child = f"echo start $$ $(date +%s.%N) >> {log}; sleep 0.6; echo end $$ $(date +%s.%N) >> {log}"
    env = {**os.environ, "CONSUL_HTTP_ADDR": f"127.0.0.1:{cluster.servers[1].http_port}"}
    procs = [
        subprocess.Popen([PROCONSUL, "lock", "-n", "2", "sem/jobs", child], env=env, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(5)
    ]
    try:
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    points = []
    for line in log.read_text().splitlines():
        kind, _, ts = line.split()
        points.append((float(ts), 1 if kind == "start" else -1))
    assert sum(1 for _, d in points if d == 1) == 5
    running, peak = 0, 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        running += delta
        peak = max(peak, running)
    assert peak == 2, f"at most 2 may hold the semaphore, saw {peak}"
    _, entries = consul.Consul(port=cluster.servers[0].http_port).kv.get("sem/jobs/", recurse=True)
    lock = json.loads([e for e in entries if e["Key"] == "sem/jobs/.lock"][0]["Value"])
    assert lock == {"Limit": 2, "Holders": {}}


def test_session_timers_survive_a_raft_leader_change(cluster: Cluster):
    """A renewed session outlives the change; an abandoned one is still expired by the new leader's timer."""
    follower = cluster.followers()[0]
    kept = follower.http.put("/v1/session/create", json={"TTL": "1s", "LockDelay": "0s", "Checks": []}).json()["ID"]
    abandoned = follower.http.put("/v1/session/create", json={"TTL": "1s", "Checks": []}).json()["ID"]
    c = consul.Consul(port=follower.http_port)
    assert c.kv.put("steady/lock", "me", acquire=kept) is True
    old_leader = cluster.leader()
    assert old_leader is not follower
    old_leader.kill()
    killed = time.monotonic()
    while time.monotonic() - killed < 6:  # keep renewing through the election, as a real holder would
        try:
            c.session.renew(kept)
        except consul.ConsulException:
            pass
        time.sleep(0.25)
    cluster.wait_for_leader()
    _, entry = c.kv.get("steady/lock", consistency="consistent")
    assert entry["Session"] == kept
    _, info = c.session.info(abandoned, consistency="consistent")
    assert info is None  # the new leader started a timer for it and expired it
    assert c.kv.put("steady/lock", "me", release=kept) is True
    c.session.destroy(kept)
    old_leader.start()
    old_leader.wait_ready(30)
