"""Secrets never reach a log or an error message.

One server and one client agent with ACLs (default deny), the cluster key and
debug logging run through what produces log lines and refusals: a client agent
whose agent token does not exist yet (refused node registration, retried), then
one that does; requests with unknown, anonymous and under-privileged tokens; token,
policy and role writes; a Connect CA configured with our own private key. Then
every log file and every error body is searched for each secret.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import PROCONSUL, Cluster, eventually

pytestmark = pytest.mark.cluster

MGMT = "7a7c6a52-1f0e-4b8e-9a43-6c2f6e1d0b01"
SERVER_AGENT = "0f3c2d2e-8b8a-4a51-b0a3-3a1d9e6c7f02"  # made over the API after the server starts
CLIENT_AGENT = "c1d2e3f4-0000-4abc-8def-111122223333"  # made later: the client is refused until then
UNKNOWN = "deadbeef-dead-4eef-8eef-deadbeefdead"


def _ca_key_and_cert() -> tuple[str, str]:
    """A P-256 key and a self-signed root for it, as Consul's CA config takes them."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Secret Test Root")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return pem_key, cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    key = subprocess.run([PROCONSUL, "keygen"], capture_output=True, text=True, check=True).stdout.strip()
    acl = {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT, "agent": SERVER_AGENT}}
    c = Cluster(tmp_path_factory.mktemp("secrets"), size=1, encrypt=key, log_level="debug", acl=acl)
    c.encrypt_key = key  # type: ignore[attr-defined]
    try:
        c.start()
        yield c
    finally:
        c.close()


def _h(token: str | None) -> dict[str, str]:
    return {"X-Consul-Token": token} if token else {}


def test_no_secret_in_logs_or_errors(cluster: Cluster) -> None:
    server = cluster.servers[0]
    http = server.http
    eventually(lambda: http.get("/v1/acl/token/self", headers=_h(MGMT)).status_code == 200, what="management token")
    secrets = {"management": MGMT, "server agent": SERVER_AGENT, "client agent": CLIENT_AGENT, "unknown": UNKNOWN,
               "cluster key": cluster.encrypt_key}  # type: ignore[attr-defined]
    bodies: list[str] = []  # error answers only

    def call(method: str, path: str, token: str | None, **kw) -> httpx.Response:
        r = http.request(method, path, headers=_h(token), **kw)
        if r.status_code >= 400:  # answers to the management token carry SecretIDs by design
            bodies.append(r.text)
        return r

    # The server's own agent token, made with the SecretID its config names.
    rules = 'node_prefix "" { policy = "write" }\nservice_prefix "" { policy = "read" }'
    p = call("PUT", "/v1/acl/policy", MGMT, json={"Name": "agents", "Rules": rules}).json()
    assert call("PUT", "/v1/acl/token", MGMT, json={"SecretID": SERVER_AGENT, "Policies": [{"ID": p["ID"]}]}).status_code == 200

    # A client whose agent token does not exist: refused, retried, logged.
    client = cluster.add_client("c1", encrypt=cluster.encrypt_key, log_level="debug", node_meta={"tier": "c1"},  # type: ignore[attr-defined]
                                acl={"enabled": True, "default_policy": "deny", "tokens": {"agent": CLIENT_AGENT}})
    client.start()
    eventually(lambda: "node:write" in client.log() or "ACL not found" in client.log(), timeout=20, what="refused registration logged")
    # The leader lists every live member; what the agent's own registration brings (its meta) is refused.
    listed = call("GET", "/v1/catalog/node/c1", MGMT).json() or {"Node": {}}
    assert "tier" not in (listed["Node"].get("Meta") or {})
    assert call("PUT", "/v1/acl/token", MGMT, json={"SecretID": CLIENT_AGENT, "Policies": [{"ID": p["ID"]}]}).status_code == 200
    eventually(lambda: call("GET", "/v1/catalog/node/c1", MGMT).json()["Node"]["Meta"].get("tier") == "c1", timeout=20,
               what="the client's registration lands once its token exists")

    # Refusals of every flavour, on both agents.
    for agent in (server, client):
        for token in (UNKNOWN, None, SERVER_AGENT):
            for method, path in [("PUT", "/v1/kv/secret"), ("GET", "/v1/acl/tokens"), ("PUT", "/v1/agent/service/register"),
                                 ("PUT", "/v1/acl/policy")]:
                r = agent.http.request(method, path, headers=_h(token), json={"Name": "x"})
                bodies.append(r.text)
                assert r.status_code in (400, 403, 404), (method, path, r.status_code, r.text)

        r = agent.http.get("/v1/acl/token/self", headers=_h(UNKNOWN))
        bodies.append(r.text)
        assert r.status_code == 404, r.text

    # Tokens made and read back (their SecretIDs are secrets too), cloned, deleted.
    made = call("PUT", "/v1/acl/token", MGMT, json={"Description": "app", "Policies": [{"ID": p["ID"]}]}).json()
    clone = call("PUT", f"/v1/acl/token/{made['AccessorID']}/clone", MGMT, json={}).json()
    secrets.update({"made token": made["SecretID"], "cloned token": clone["SecretID"]})
    assert call("GET", "/v1/acl/token/self", made["SecretID"]).status_code == 200
    assert call("PUT", "/v1/kv/app", made["SecretID"], content=b"x").status_code == 403
    assert call("DELETE", f"/v1/acl/token/{clone['AccessorID']}", MGMT).status_code == 200
    assert call("GET", "/v1/acl/token/self", clone["SecretID"]).status_code == 404  # deleted: "Supplied token does not exist"

    # A Connect CA with our own key.
    pem_key, pem_cert = _ca_key_and_cert()
    r = call("PUT", "/v1/connect/ca/configuration", MGMT, json={"Provider": "consul", "Config": {"PrivateKey": pem_key, "RootCert": pem_cert}})
    assert r.status_code == 200, r.text
    # Reading the configuration back needs operator:write (it holds the key): operator:read is refused.
    op_read = call("PUT", "/v1/acl/policy", MGMT, json={"Name": "op-read", "Rules": 'operator = "read"'}).json()
    reader = call("PUT", "/v1/acl/token", MGMT, json={"Policies": [{"ID": op_read["ID"]}]}).json()["SecretID"]
    secrets["operator reader"] = reader
    r = call("GET", "/v1/connect/ca/configuration", reader)
    assert r.status_code == 403 and "operator:write" in r.text
    key_body = "".join(pem_key.strip().splitlines()[1:-1])
    secrets.update({"CA key (first line)": key_body[:64], "CA key (last line)": key_body[-40:]})

    client.stop()
    server.stop()
    logs = {a.name: a.log() for a in (server, client)}
    assert "blocked by ACLs" in logs["c1"] and "shutting down" in logs["s1"]  # the logs searched are the real ones
    for what, secret in secrets.items():
        for name, text in logs.items():
            assert secret not in text, f"the {what} secret appears in {name}'s log"
        for body in bodies:
            assert secret not in body, f"the {what} secret appears in an HTTP answer: {body[:200]}"
