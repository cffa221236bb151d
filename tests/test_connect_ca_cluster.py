"""The Connect CA with real processes: py-consul and the CLI against a dev agent, and a 3-server cluster
with a client agent (leaves signed on the leader over server RPC, rotation from a follower, leader failover)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Iterator

import consul
import consul.exceptions
import pytest

from catls import certs, tls_handshake, verify_with_cryptography
from conftest import AgentProc, Cluster, eventually, start_dev_agent
from proconsul.server import ca
from test_cli import fails, ok, run


@pytest.fixture(scope="module")
def ca_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    """A dev agent of this module's own: these tests rotate its CA."""
    agent = start_dev_agent(tmp_path_factory.mktemp("ca-dev"), "ca-dev")
    eventually(lambda: agent.http.get("/v1/connect/ca/roots").status_code == 200, what="CA bootstrapped")
    yield agent
    agent.stop()


def active_root(body: dict) -> dict:
    return next(r for r in body["Roots"] if r["ID"] == body["ActiveRootID"])


def test_py_consul_connect_ca(ca_dev: AgentProc):
    c = consul.Consul(host="127.0.0.1", port=ca_dev.http_port)
    roots = c.connect.ca.roots()
    assert roots["ActiveRootID"] == active_root(roots)["ID"] and roots["TrustDomain"].endswith(".consul")
    config = c.connect.ca.configuration()
    assert config["Provider"] == "consul" and config["Config"]["LeafCertTTL"] == "72h"
    assert c.connect.ca.update_configuration("consul", {**config["Config"], "PrivateKeyType": "rsa", "PrivateKeyBits": 2048}) is True
    after = c.connect.ca.roots()
    assert after["ActiveRootID"] != roots["ActiveRootID"] and active_root(after)["PrivateKeyType"] == "rsa"
    assert c.connect.ca.configuration()["Config"]["PrivateKeyType"] == "rsa"
    with pytest.raises(consul.exceptions.BadRequest, match="RSA key length must be 2048 or 4096 bits"):
        c.connect.ca.update_configuration("consul", {"PrivateKeyType": "rsa", "PrivateKeyBits": 1536})
    assert c.connect.ca.roots() == after


def test_cli_connect_ca(ca_dev: AgentProc, tmp_path: Path):
    shown = ok(run(ca_dev, "connect", "ca", "get-config"))
    config = json.loads(shown)
    assert shown.startswith('{\n\t"Provider": "consul",') and list(config)[:2] == ["Provider", "Config"]
    before = ca_dev.http.get("/v1/connect/ca/roots").json()["ActiveRootID"]
    f = tmp_path / "ca.json"
    f.write_text(json.dumps({"Provider": "consul", "Config": {"LeafCertTTL": "24h", "PrivateKeyType": "ec", "PrivateKeyBits": 384}}))
    assert ok(run(ca_dev, "connect", "ca", "set-config", "-config-file", str(f))) == "Configuration updated!\n"
    assert json.loads(ok(run(ca_dev, "connect", "ca", "get-config")))["Config"]["LeafCertTTL"] == "24h"
    assert ca_dev.http.get("/v1/connect/ca/roots").json()["ActiveRootID"] != before
    fails(run(ca_dev, "connect", "ca", "set-config"), "The -config-file flag is required")
    fails(run(ca_dev, "connect", "ca", "set-config", "-config-file", str(tmp_path / "nope.json")), f"Error reading config file: No such file or directory: {tmp_path / 'nope.json'}")
    f.write_text("{nope")
    p = run(ca_dev, "connect", "ca", "set-config", "-config-file", str(f))
    assert p.returncode == 1 and p.stderr.decode().startswith("Error parsing config file: ")
    f.write_text(json.dumps({"Provider": "consul", "Config": {"PrivateKeyType": "dsa"}}))
    fails(
        run(ca_dev, "connect", "ca", "set-config", "-config-file", str(f)),
        "Error setting CA configuration: Unexpected response code: 400 (error configuring provider: private key type must be either 'ec' or 'rsa')",
    )
    p = run(ca_dev, "connect")
    assert p.returncode == 1 and b"Traceback" not in p.stderr


@pytest.mark.cluster
def test_cluster_leaves_rotation_and_failover(tmp_path: Path):
    cluster = Cluster(tmp_path)
    try:
        cluster.start()
        client = cluster.add_client("c1")
        client.start().wait_ready()
        leader = cluster.leader()
        follower = cluster.followers()[0]

        def roots_everywhere() -> dict:
            bodies = [s.http.get("/v1/connect/ca/roots", params={"stale": ""}).json() for s in cluster.servers]
            assert all(b == bodies[0] for b in bodies) and bodies[0]["Roots"]
            return bodies[0]

        roots = eventually(roots_everywhere, what="one CA replicated to every server")
        trust = roots["TrustDomain"]
        assert client.http.get("/v1/agent/connect/ca/roots").json()["ActiveRootID"] == roots["ActiveRootID"]

        # Leaves from the client agent: its key and CSR, signed on the leader (client -> server -> leader).
        timings = []
        leaves = {}
        for name in ("web", "db", "api", "cache", "queue"):
            started = time.perf_counter()
            r = client.http.get(f"/v1/agent/connect/ca/leaf/{name}")
            timings.append(time.perf_counter() - started)
            assert r.status_code == 200, r.text
            leaves[name] = r.json()
            uri = f"spiffe://{trust}/ns/default/dc/dc1/svc/{name}"
            assert verify_with_cryptography(leaves[name]["CertPEM"], [x["RootCert"] for x in roots["Roots"]]) == [uri]
        started = time.perf_counter()
        for _ in range(20):
            assert client.http.get("/v1/agent/connect/ca/leaf/web").headers["x-cache"] == "HIT"
        cached = (time.perf_counter() - started) / 20
        print(f"\nleaf from a client agent, first request (key, CSR, RPC, Raft serial, signature): median {statistics.median(timings) * 1000:.1f} ms; cached {cached * 1000:.2f} ms")
        assert tls_handshake(leaves["web"], leaves["db"], tmp_path, [roots["Roots"][0]["RootCert"]], [roots["Roots"][0]["RootCert"]])

        # Rotate through a follower's HTTP API: forwarded to the leader, replicated, and the client moves.
        started = time.monotonic()
        r = follower.http.put("/v1/connect/ca/configuration", json={"Provider": "consul", "Config": {"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}})
        assert (r.status_code, r.text) == (200, "")
        # Stale reads: a follower may apply the rotation a moment after the leader answered.
        new = eventually(lambda: (lambda b: b if b["ActiveRootID"] != roots["ActiveRootID"] else None)(roots_everywhere()), what="the rotation everywhere")
        assert len(new["Roots"]) == 2
        new_key = active_root(new)["SigningKeyID"]

        def moved(name: str, index: int) -> dict:
            body = client.http.get(f"/v1/agent/connect/ca/leaf/{name}", params={"index": index, "wait": "10s"}).json()
            assert ca.authority_key_id(certs(body["CertPEM"])[0]) == new_key
            return body

        fresh = {name: eventually(lambda n=name: moved(n, leaves[n]["ModifyIndex"]), 20, what=f"{name} re-issued") for name in leaves}
        elapsed = time.monotonic() - started
        print(f"rotation (via a follower) to a client agent holding 5 re-issued leaves: {elapsed * 1000:.0f} ms")
        pems = [x["RootCert"] for x in new["Roots"]]
        for name in leaves:
            assert verify_with_cryptography(leaves[name]["CertPEM"], pems)  # old leaves keep verifying
            assert verify_with_cryptography(fresh[name]["CertPEM"], [roots["Roots"][0]["RootCert"]])  # via the cross-signed cert

        # Kill the leader: the next one keeps the CA (no second bootstrap) and signs.
        cluster.kill(leader)
        survivor = cluster.wait_for_leader(20)
        after = eventually(lambda: survivor.http.get("/v1/connect/ca/roots").json(), what="roots from the new leader")
        assert after["ActiveRootID"] == new["ActiveRootID"] and after["TrustDomain"] == trust
        def signed() -> object:
            r = client.http.get("/v1/agent/connect/ca/leaf/after-failover")
            return r if r.status_code == 200 else None

        r = eventually(signed, 20, what="a leaf after failover")
        assert verify_with_cryptography(r.json()["CertPEM"], pems)
    finally:
        cluster.close()
