"""The `proconsul` CLI against a real dev agent: output, exit codes, one-line errors."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import PROCONSUL, AgentProc


def run(agent: AgentProc | None, *args: str, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.endswith("_HTTP_ADDR")}
    if agent is not None:
        environ["CONSUL_HTTP_ADDR"] = f"127.0.0.1:{agent.http_port}"
    environ.update(env or {})
    return subprocess.run([PROCONSUL, *args], input=stdin, capture_output=True, env=environ, timeout=30)


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


def fails(p: subprocess.CompletedProcess, message: str) -> None:
    err = p.stderr.decode()
    assert p.returncode == 1, (p.returncode, err)
    assert err.strip().splitlines() == [message], err
    assert b"Traceback" not in p.stderr


def test_version():
    assert ok(run(None, "version")).startswith("proconsul v")


def test_kv_put_get_delete(dev_agent):
    assert ok(run(dev_agent, "kv", "put", "cli/a", "hello")) == "Success! Data written to: cli/a\n"
    assert ok(run(dev_agent, "kv", "get", "cli/a")) == "hello\n"
    assert ok(run(dev_agent, "kv", "get", "/cli/a")) == "hello\n"  # leading slash stripped, as Consul does
    assert ok(run(dev_agent, "kv", "get", "-base64", "cli/a")) == "aGVsbG8=\n"
    detailed = ok(run(dev_agent, "kv", "get", "-detailed", "cli/a"))
    assert "Key              cli/a" in detailed and "Session          -" in detailed
    assert ok(run(dev_agent, "kv", "delete", "cli/a")) == "Success! Deleted key: cli/a\n"
    fails(run(dev_agent, "kv", "get", "cli/a"), "Error! No key exists at: cli/a")


def test_kv_put_sources_and_flags(dev_agent, tmp_path: Path):
    f = tmp_path / "value.bin"
    f.write_bytes(b"from a file")
    ok(run(dev_agent, "kv", "put", "cli/file", f"@{f}"))
    assert ok(run(dev_agent, "kv", "get", "cli/file")) == "from a file\n"
    ok(run(dev_agent, "kv", "put", "cli/stdin", "-", stdin=b"from stdin"))
    assert ok(run(dev_agent, "kv", "get", "cli/stdin")) == "from stdin\n"
    ok(run(dev_agent, "kv", "put", "-base64", "cli/b64", "aGk="))
    assert ok(run(dev_agent, "kv", "get", "cli/b64")) == "hi\n"
    ok(run(dev_agent, "kv", "put", "-flags=42", "cli/flags", "x"))
    assert "Flags            42" in ok(run(dev_agent, "kv", "get", "-detailed", "cli/flags"))
    fails(run(dev_agent, "kv", "put", "cli/missing", f"@{tmp_path}/nope"), f"Failed to read file: No such file or directory: {tmp_path}/nope")


def test_kv_cas(dev_agent):
    ok(run(dev_agent, "kv", "put", "-cas", "cli/cas", "1"))
    fails(run(dev_agent, "kv", "put", "-cas", "cli/cas", "2"), "Error! Did not write to cli/cas: CAS performed with index=0 and key already exists.")
    entry = json.loads(run(dev_agent, "kv", "get", "-detailed", "cli/cas").stdout.decode().split("ModifyIndex")[1].split()[0])
    fails(run(dev_agent, "kv", "put", "-cas", "-modify-index", str(entry + 100), "cli/cas", "3"), "Error! Did not write to cli/cas: CAS failed")
    ok(run(dev_agent, "kv", "put", "-cas", f"-modify-index={entry}", "cli/cas", "3"))
    assert ok(run(dev_agent, "kv", "get", "cli/cas")) == "3\n"
    fails(run(dev_agent, "kv", "delete", "-cas", "-modify-index", str(entry), "cli/cas"), "Error! Did not delete key cli/cas: CAS failed")


def test_kv_recurse_and_keys(dev_agent):
    for k in ("cli/tree/a", "cli/tree/b/c"):
        ok(run(dev_agent, "kv", "put", k, k.upper()))
    assert ok(run(dev_agent, "kv", "get", "-recurse", "cli/tree/")) == "cli/tree/a:CLI/TREE/A\ncli/tree/b/c:CLI/TREE/B/C\n"
    assert ok(run(dev_agent, "kv", "get", "-keys", "cli/tree/")) == "cli/tree/a\ncli/tree/b/\n"
    assert ok(run(dev_agent, "kv", "delete", "-recurse", "cli/tree/")) == "Success! Deleted keys with prefix: cli/tree/\n"
    assert ok(run(dev_agent, "kv", "get", "-recurse", "cli/tree/")) == ""


def test_http_addr_sources(dev_agent):
    ok(run(dev_agent, "kv", "put", "cli/addr", "x"))
    addr = f"127.0.0.1:{dev_agent.http_port}"
    assert ok(run(None, "kv", "get", "-http-addr", addr, "cli/addr")) == "x\n"
    assert ok(run(None, "kv", "get", "--http-addr", f"http://{addr}", "cli/addr")) == "x\n"
    assert ok(run(None, "kv", "get", "cli/addr", env={"PROCONSUL_HTTP_ADDR": addr})) == "x\n"
    p = run(None, "kv", "get", "cli/addr", env={"CONSUL_HTTP_ADDR": "127.0.0.1:1"})
    assert p.returncode == 1 and p.stderr.decode().startswith("cannot reach the agent at http://127.0.0.1:1")
    assert len(p.stderr.decode().strip().splitlines()) == 1


def test_errors_are_one_line(dev_agent):
    fails(run(dev_agent, "kv", "get"), "Error! Missing KEY argument")
    fails(run(dev_agent, "kv", "put"), "Error! Missing KEY argument")
    fails(run(dev_agent, "kv", "delete", "-modify-index", "3", "k"), "Cannot specify -modify-index without -cas!")
    fails(run(dev_agent, "kv", "put", "-base64", "k", "!!"), "Error! Cannot base 64 decode data: Only base64 data is allowed")
    fails(run(dev_agent, "kv", "get", "-datacenter", "nowhere", "k"), "Unexpected response code: 500 (No path to datacenter)")
    p = run(dev_agent, "kv", "frobnicate")
    assert p.returncode == 1 and len(p.stderr.decode().strip().splitlines()) == 1 and b"Traceback" not in p.stderr
    p = run(dev_agent, "nosuchcommand")
    assert p.returncode == 1 and b"Traceback" not in p.stderr


def test_snapshot_save_inspect_restore(dev_agent, tmp_path: Path):
    ok(run(dev_agent, "kv", "put", "cli/snap", "before"))
    path = tmp_path / "backup.snap"
    out = ok(run(dev_agent, "snapshot", "save", str(path)))
    assert out.startswith("Saved and verified snapshot to index ")
    with sqlite3.connect(path) as db:
        assert ("cli/snap", b"before") in db.execute("select key, value from kvs").fetchall()
    assert "kvs" in ok(run(None, "snapshot", "inspect", str(path)))
    ok(run(dev_agent, "kv", "put", "cli/snap", "after"))
    assert ok(run(dev_agent, "snapshot", "restore", str(path))) == "Restored snapshot\n"
    assert ok(run(dev_agent, "kv", "get", "cli/snap")) == "before\n"
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"nope")
    p = run(dev_agent, "snapshot", "restore", str(garbage))
    assert p.returncode == 1 and "Error restoring snapshot" in p.stderr.decode() and b"Traceback" not in p.stderr
    assert ok(run(dev_agent, "kv", "get", "cli/snap")) == "before\n"


def test_operator_raft_list_peers(dev_agent):
    out = ok(run(dev_agent, "operator", "raft", "list-peers"))
    header, row = out.strip().splitlines()
    assert header.split()[:4] == ["Node", "ID", "Address", "State"]
    assert "leader" in row and "dev" in row
    fails(run(dev_agent, "operator", "raft", "remove-peer"), "Error removing peer: an address or id is required for the peer to remove")


@pytest.mark.parametrize(
    "config,with_data_dir,fragment",
    [
        ('{"bogus_key": 1}', True, "invalid config key bogus_key"),
        ('{"ports": {"http": "eighty"}}', True, "ports.http: expected an integer"),
        ("{not json", True, "invalid JSON at line 1"),
        ('{"ports": {"http": 9000, "server": 9000}}', True, "are both 9000"),
        ('{"server": true}', False, "data_dir cannot be empty"),
        ('{"retry_join": ["nohost"]}', True, "is not host:port"),
    ],
)
def test_bad_config_files_stop_the_agent_with_one_line(tmp_path: Path, config: str, with_data_dir: bool, fragment: str):
    f = tmp_path / "bad.json"
    f.write_text(config)
    args = ["agent", "-server", "-config-file", str(f)]
    if with_data_dir:
        args += ["-data-dir", str(tmp_path / "d")]
    p = run(None, *args)
    err = p.stderr.decode()
    assert p.returncode == 1 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert "Traceback" not in err


def test_catalog_and_services_commands(dev_agent, tmp_path: Path):
    defn = tmp_path / "svc.json"
    defn.write_text(json.dumps({"service": {"name": "clisvc", "port": 7000, "tags": ["a"]}}))
    assert ok(run(dev_agent, "services", "register", str(defn))) == "Registered service: clisvc\n"
    assert ok(run(dev_agent, "services", "register", "-name", "flagsvc", "-port", "7001", "-tag", "b", "-meta", "k=v")) == "Registered service: flagsvc\n"
    services = ok(run(dev_agent, "catalog", "services", "-tags"))
    assert "clisvc" in services and "flagsvc" in services
    assert ok(run(dev_agent, "catalog", "datacenters")) == "dc1\n"
    nodes = ok(run(dev_agent, "catalog", "nodes"))
    assert nodes.splitlines()[0].split() == ["Node", "ID", "Address", "DC"] and dev_agent.config["node_name"] in nodes
    assert dev_agent.config["node_name"] in ok(run(dev_agent, "catalog", "nodes", "-service", "clisvc"))
    assert ok(run(dev_agent, "services", "deregister", str(defn))) == "Deregistered service: clisvc\n"
    assert ok(run(dev_agent, "services", "deregister", "-id", "flagsvc")) == "Deregistered service: flagsvc\n"
    p = run(dev_agent, "services", "deregister", "-id", "flagsvc")
    assert p.returncode == 1 and b"Unknown service ID" in p.stderr and b"Traceback" not in p.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"service": {"port": 1}}))
    fails(run(dev_agent, "services", "register", str(bad)), "Error parsing service definition: Missing service name")


def test_join_reload_and_members(dev_agent):
    p = run(dev_agent, "join", "127.0.0.1:1")
    assert p.returncode == 1 and b"Error joining address '127.0.0.1:1'" in p.stderr
    assert ok(run(dev_agent, "reload")) == "Configuration reload triggered\n"
    out = ok(run(dev_agent, "members"))
    assert out.splitlines()[0].split()[:3] == ["Node", "Address", "Status"] and "alive" in out


@pytest.mark.parametrize("limit", ["1", "2"])
def test_lock_waiting_for_a_held_lock_stops_at_once_on_a_signal(dev_agent, tmp_path: Path, limit: str):
    """Consul's lock gives up acquiring on SIGINT/SIGTERM; ours waited for its blocking read (up to 15 s) first.
    Now it exits 1 within a couple of seconds, and its session is gone (the holder's stays)."""
    import signal
    import time

    from conftest import eventually

    env = {k: v for k, v in os.environ.items() if not k.endswith("_HTTP_ADDR")}
    env["CONSUL_HTTP_ADDR"] = f"127.0.0.1:{dev_agent.http_port}"
    prefix = f"cli/lock-signal-{limit}"

    def sessions() -> list[str]:
        return [s["Name"] for s in dev_agent.http.get("/v1/session/list").json() if prefix in s["Name"]]

    def holding() -> int:
        """How many hold the lock (0 or 1) or semaphore slots, from its .lock key."""
        resp = dev_agent.http.get(f"/v1/kv/{prefix}/.lock")
        if resp.status_code != 200:
            return 0
        entry = resp.json()[0]
        if limit == "1":
            return 1 if entry.get("Session") else 0
        return len(json.loads(base64.b64decode(entry["Value"]))["Holders"])

    def lock(*child: str) -> subprocess.Popen:
        return subprocess.Popen([PROCONSUL, "lock", "-n", limit, prefix, *child], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    holders = [lock("sleep", "60") for _ in range(int(limit))]
    waiter = None
    try:
        eventually(lambda: holding() == int(limit), what="the holders holding")
        waiter = lock("true")
        eventually(lambda: len(sessions()) == int(limit) + 1, what="the waiter's session")
        # No outside sign shows the waiter inside its blocking read (what the old code could not leave); its
        # first, non-blocking read takes a few ms, so half a second puts it there.
        time.sleep(0.5)
        started = time.monotonic()
        waiter.send_signal(signal.SIGTERM)
        assert waiter.wait(timeout=10) == 1
        assert time.monotonic() - started < 5  # the blocking read it was in lasts 15 s
        err = waiter.stderr.read().decode()
        assert err.strip() == "Shutdown triggered or timeout during lock acquisition" and "Traceback" not in err
        assert len(sessions()) == int(limit)
        for p in holders:  # a signal while holding goes to the child; its end releases the lock
            p.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=10) for p in holders] == [0] * len(holders)
        assert sessions() == []
    finally:
        for p in [*holders, *([waiter] if waiter else [])]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
            p.stderr.close()
