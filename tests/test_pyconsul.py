"""py-consul (from PyPI), unchanged, driving KV and txn against a dev agent and a 3-server cluster."""

from __future__ import annotations

import base64
import threading
import time

import consul
import pytest

from conftest import AgentProc, Cluster


def client(agent: AgentProc) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=agent.http_port)


def exercise_kv(c: consul.Consul, prefix: str) -> None:
    assert c.kv.put(f"{prefix}/a", "1") is True
    assert c.kv.put(f"{prefix}/b", b"\x00\xff", flags=7) is True
    index, entry = c.kv.get(f"{prefix}/a")
    assert entry["Value"] == b"1" and int(index) >= entry["ModifyIndex"]
    _, entry = c.kv.get(f"{prefix}/b")
    assert entry["Value"] == b"\x00\xff" and entry["Flags"] == 7
    index, missing = c.kv.get(f"{prefix}/nope")
    assert missing is None and int(index) > 0
    _, entries = c.kv.get(f"{prefix}/", recurse=True)
    assert [e["Key"] for e in entries] == [f"{prefix}/a", f"{prefix}/b"]
    _, keys = c.kv.get(f"{prefix}/", keys=True)
    assert keys == [f"{prefix}/a", f"{prefix}/b"]
    _, entry = c.kv.get(f"{prefix}/a")
    assert c.kv.put(f"{prefix}/a", "2", cas=entry["ModifyIndex"] + 1000) is False
    assert c.kv.put(f"{prefix}/a", "2", cas=entry["ModifyIndex"]) is True
    assert c.kv.put(f"{prefix}/c", "x", cas=0) is True
    assert c.kv.put(f"{prefix}/c", "y", cas=0) is False
    _, entry = c.kv.get(f"{prefix}/c", consistency="consistent")
    assert entry["Value"] == b"x"
    _, entry = c.kv.get(f"{prefix}/c", consistency="stale")
    assert entry is None or entry["Value"] == b"x"
    assert c.kv.delete(f"{prefix}/c", cas=entry["ModifyIndex"] if entry else 1) in (True, False)
    assert c.kv.delete(f"{prefix}/", recurse=True) is True
    assert c.kv.get(f"{prefix}/", recurse=True)[1] is None


def exercise_blocking(c: consul.Consul, prefix: str) -> None:
    c.kv.put(f"{prefix}/watch", "1")
    index, _ = c.kv.get(f"{prefix}/watch")
    got: dict = {}

    def watch() -> None:
        got["index"], got["entry"] = c.kv.get(f"{prefix}/watch", index=index, wait="20s")

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.3)
    c.kv.put(f"{prefix}/watch", "2")
    t.join(10)
    assert not t.is_alive()
    assert got["entry"]["Value"] == b"2" and int(got["index"]) > int(index)


def exercise_txn(c: consul.Consul, prefix: str) -> None:
    def op(verb: str, key: str, value: bytes | None = None, **kw) -> dict:
        body = {"Verb": verb, "Key": key, **kw}
        if value is not None:
            body["Value"] = base64.b64encode(value).decode()
        return {"KV": body}

    result = c.txn.put([op("set", f"{prefix}/t1", b"a"), op("set", f"{prefix}/t2", b"b"), op("get", f"{prefix}/t1")])
    assert result["Errors"] is None and len(result["Results"]) == 3
    assert base64.b64decode(result["Results"][2]["KV"]["Value"]) == b"a"
    with pytest.raises(consul.ConsulException) as err:  # py-consul raises on 409 with Consul's body
        c.txn.put([op("set", f"{prefix}/t3", b"c"), op("check-not-exists", f"{prefix}/t1")])
    assert "409" in str(err.value) and "exists" in str(err.value)
    assert c.kv.get(f"{prefix}/t3")[1] is None


def test_pyconsul_kv_and_txn_against_a_dev_agent(dev_agent: AgentProc):
    c = client(dev_agent)
    exercise_kv(c, "py/dev")
    exercise_blocking(c, "py/dev")
    exercise_txn(c, "py/devtxn")
    assert c.status.leader() == dev_agent.leader()
    assert len(c.status.peers()) == 1


@pytest.mark.cluster
def test_pyconsul_kv_and_txn_against_a_cluster(cluster3: Cluster):
    for i, server in enumerate(cluster3.servers):
        c = client(server)
        exercise_kv(c, f"py/cluster{i}")
        exercise_txn(c, f"py/clustertxn{i}")
        assert c.status.leader() == cluster3.leader().server_addr
        assert sorted(c.status.peers()) == sorted(s.server_addr for s in cluster3.servers)
        config = c.operator.raft_config()
        assert len(config["Servers"]) == 3
    exercise_blocking(client(cluster3.followers()[0]), "py/clusterwatch")


@pytest.mark.parametrize("key", ["ünï/ключ", "per%25cent", "a b", "q?mark", "emoji/🎉", "x%2Fy"])
def test_pyconsul_keys_round_trip_through_real_http(dev_agent: AgentProc, key: str):
    c = client(dev_agent)
    assert c.kv.put(f"rt/{key}", key) is True
    _, entry = c.kv.get(f"rt/{key}")
    assert entry["Key"] == f"rt/{key}" and entry["Value"] == key.encode()
    _, keys = c.kv.get("rt/", keys=True)
    assert f"rt/{key}" in keys


def test_pyconsul_agent_catalog_and_health_against_a_dev_agent(dev_agent: AgentProc):
    c = client(dev_agent)
    ttl = consul.Check.ttl("30s")
    assert c.agent.service.register("pyweb", service_id="pyweb-1", port=8080, tags=["v1"], check=ttl) is True
    assert "pyweb-1" in c.agent.services()
    checks = c.agent.checks()
    [check_id] = [cid for cid, chk in checks.items() if chk["ServiceID"] == "pyweb-1"]
    assert c.agent.check.ttl_pass(check_id, "all good") is True
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        index, nodes = c.health.service("pyweb", passing=True)
        if nodes:
            break
        time.sleep(0.1)
    assert [n["Service"]["ID"] for n in nodes] == ["pyweb-1"]
    _, services = c.catalog.services()
    assert services["pyweb"] == ["v1"]
    _, instances = c.catalog.service("pyweb")
    assert instances[0]["ServicePort"] == 8080
    _, node = c.catalog.node(dev_agent.config["node_name"])
    assert "pyweb-1" in node["Services"]
    _, node_checks = c.health.node(dev_agent.config["node_name"])
    assert {"serfHealth", check_id} <= {ch["CheckID"] for ch in node_checks}
    _, state = c.health.state("passing")
    assert any(ch["CheckID"] == check_id for ch in state)
    assert c.agent.maintenance(True, "py maint") is True
    deadline = time.monotonic() + 10
    while c.health.service("pyweb", passing=True)[1] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c.health.service("pyweb", passing=True)[1] == []  # node maintenance takes every service out
    assert c.agent.maintenance(False) is True
    assert c.agent.self()["Config"]["NodeName"] == dev_agent.config["node_name"]
    assert [m["Name"] for m in c.agent.members()] == [dev_agent.config["node_name"]]
    assert c.agent.service.deregister("pyweb-1") is True
    assert "pyweb-1" not in c.agent.services()
    assert c.catalog.register("ext-node", "10.9.9.9", service={"Service": "ext", "Port": 9}) is True
    assert c.catalog.service("ext")[1][0]["Address"] == "10.9.9.9"
    assert c.catalog.deregister("ext-node") is True
    assert c.catalog.datacenters() == ["dc1"]
