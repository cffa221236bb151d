"""The Connect CA through the HTTP API of an in-process dev agent: roots, config, leaves, rotation, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest

from catls import certs, tls_handshake, uri_sans, verify_with_cryptography
from conftest import eventually_async, free_ports
from proconsul.server import ca
from proconsul.server.errors import BadRequest

pytestmark = pytest.mark.anyio

ROOTS_FIELDS = ["ActiveRootID", "TrustDomain", "Roots"]
ROOT_FIELDS = [
    "ID", "Name", "SerialNumber", "SigningKeyID", "ExternalTrustDomain", "NotBefore", "NotAfter", "RootCert",
    "IntermediateCerts", "Active", "PrivateKeyType", "PrivateKeyBits", "CreateIndex", "ModifyIndex",
]
LEAF_FIELDS = ["SerialNumber", "CertPEM", "PrivateKeyPEM", "Service", "ServiceURI", "ValidAfter", "ValidBefore", "CreateIndex", "ModifyIndex"]


@contextlib.asynccontextmanager
async def dev_agent(**flags: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Another in-process dev agent (its own CA), for tests that need a config of their own."""
    from proconsul.agent import config
    from proconsul.agent.agent import Agent
    from proconsul.api.app import build_app

    (port,) = free_ports(1)
    cfg = config.build({"dev": True, "port_http": -1, "port_dns": -1, "port_server": port, "node_name": "ca", **flags}, [], [])
    agent = Agent(cfg)
    await agent.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(agent)), base_url="http://agent") as client:
            client.agent = agent  # type: ignore[attr-defined]
            await roots(client)
            yield client
    finally:
        await agent.stop()


async def roots(api: httpx.AsyncClient) -> dict:
    """The roots once the leader has bootstrapped the CA."""
    r = await eventually_async(lambda: api.get("/v1/connect/ca/roots"), want=lambda r: r.status_code == 200)
    return r.json()


async def leaf(api: httpx.AsyncClient, service: str, **params: Any) -> httpx.Response:
    r = await api.get(f"/v1/agent/connect/ca/leaf/{service}", params=params)
    assert r.status_code == 200, r.text
    return r


def active(body: dict) -> dict:
    [root] = [r for r in body["Roots"] if r["Active"]]
    assert root["ID"] == body["ActiveRootID"]
    return root


def root_pems(body: dict) -> list[str]:
    return [r["RootCert"] for r in body["Roots"]]


def secrets_in(text: str) -> bool:
    return "PRIVATE KEY" in text


async def test_roots_have_consuls_shape_and_never_a_key(api):
    body = await roots(api)
    r = await api.get("/v1/connect/ca/roots")
    assert list(body) == ROOTS_FIELDS
    root = active(body)
    assert list(root) == ROOT_FIELDS
    cluster_id = body["TrustDomain"].removesuffix(".consul")
    assert len(cluster_id) == 36 and root["ExternalTrustDomain"] == cluster_id
    cert = ca.parse_cert(root["RootCert"])
    assert root["ID"] == ca.hex_string(cert.fingerprint(ca.hashes.SHA1()))
    assert root["SerialNumber"] == cert.serial_number
    assert root["SigningKeyID"] == ca.hex_string(ca.key_id(cert.public_key()))
    assert (root["Name"], root["PrivateKeyType"], root["PrivateKeyBits"], root["IntermediateCerts"]) == ("Consul CA Primary Cert", "ec", 256, None)
    assert root["NotBefore"] == ca.go_time(cert.not_valid_before_utc) and root["NotAfter"].endswith("Z")
    assert uri_sans(cert) == [f"spiffe://{body['TrustDomain']}"]
    assert int(r.headers["x-consul-index"]) == root["ModifyIndex"]
    assert not secrets_in(r.text)
    agent_view = await api.get("/v1/agent/connect/ca/roots")
    assert agent_view.json() == body and not secrets_in(agent_view.text)
    assert agent_view.headers["x-cache"] in ("HIT", "MISS")


async def test_roots_as_a_pem_chain(api):
    body = await roots(api)
    r = await api.get("/v1/connect/ca/roots", params={"pem": "true"})
    assert r.headers["content-type"] == "application/pem-certificate-chain"
    assert r.text == "".join(x["RootCert"] + "".join(x["IntermediateCerts"] or []) for x in body["Roots"])
    assert (await api.get("/v1/connect/ca/roots", params={"pem": "0"})).json() == body  # what py-consul sends
    r = await api.get("/v1/connect/ca/roots", params={"pem": "maybe"})
    assert (r.status_code, r.text) == (400, "The 'pem' query parameter must be a boolean value")


async def test_configuration_defaults(api):
    await roots(api)
    r = await api.get("/v1/connect/ca/configuration")
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["Provider", "Config", "State", "ForceWithoutCrossSigning", "CreateIndex", "ModifyIndex"]
    assert body["Provider"] == "consul"
    assert body["Config"] == {"LeafCertTTL": "72h", "IntermediateCertTTL": "8760h", "RootCertTTL": "87600h"}


async def test_leaf_certificate(api, tmp_path: Path):
    body = await roots(api)
    before = time.time()
    r = await leaf(api, "web")
    cert = r.json()
    assert list(cert) == LEAF_FIELDS
    assert r.headers["x-cache"] == "MISS" and int(r.headers["x-consul-index"]) == cert["ModifyIndex"] == cert["CreateIndex"]
    uri = f"spiffe://{body['TrustDomain']}/ns/default/dc/dc1/svc/web"
    assert (cert["Service"], cert["ServiceURI"]) == ("web", uri)
    x = certs(cert["CertPEM"])[0]
    assert uri_sans(x) == [uri]
    assert cert["SerialNumber"] == ca.serial_hex(x.serial_number)
    assert cert["ValidAfter"] == ca.go_time(x.not_valid_before_utc) and cert["ValidBefore"] == ca.go_time(x.not_valid_after_utc)
    assert x.not_valid_after_utc - x.not_valid_before_utc == dt.timedelta(hours=72)
    assert before - 61 <= x.not_valid_before_utc.timestamp() <= time.time() - 59  # a minute back, for clock drift
    assert cert["PrivateKeyPEM"].startswith("-----BEGIN EC PRIVATE KEY-----")
    assert verify_with_cryptography(cert["CertPEM"], root_pems(body)) == [uri]
    db = (await leaf(api, "db")).json()
    assert tls_handshake(cert, db, tmp_path, root_pems(body), root_pems(body)) == ([uri], [uri.replace("/web", "/db")])

    again = await leaf(api, "web")
    assert again.headers["x-cache"] == "HIT" and again.json() == cert
    # Blocking: nothing new for this leaf, so the query waits out ?wait and answers the same leaf.
    started = time.monotonic()
    blocked = await leaf(api, "web", index=cert["ModifyIndex"], wait="200ms")
    assert time.monotonic() - started >= 0.19 and blocked.json() == cert


async def test_leaf_request_errors(api):
    await roots(api)
    r = await api.get("/v1/agent/connect/ca/leaf/")
    assert r.status_code == 400 and "Missing service name" in r.text
    r = await api.get("/v1/agent/connect/ca/leaf/web", params={"dc": "elsewhere"})
    assert (r.status_code, r.text) == (500, "No path to datacenter")
    r = await api.get("/v1/agent/connect/ca/leaf/web", params={"index": "x"})
    assert (r.status_code, r.text) == (400, "Invalid index")


async def test_sign_refuses_bad_csrs_and_issues_nothing(api):
    """ConnectCA.Sign is what the agent calls (in-process here, server RPC on a client): BadRequest means 400."""
    from proconsul.api.errors import status_for
    from proconsul.server.endpoints.connect_ca import CASignRequest

    body = await roots(api)
    agent = api.agent
    domain = body["TrustDomain"]
    key, _ = ca.generate_key()
    other, _ = ca.generate_key()
    good = ca.make_csr(key, ca.service_uri(domain, "dc1", "web"))
    lines = good.splitlines()
    forged = "\n".join([*lines[:-2], lines[-2][:-6] + ("AAAAAA" if lines[-2][-6:] != "AAAAAA" else "BBBBBB"), lines[-1]]) + "\n"
    email = ca.x509.CertificateSigningRequestBuilder().subject_name(ca.x509.Name([])).add_extension(
        ca.x509.SubjectAlternativeName([ca.x509.UniformResourceIdentifier(ca.service_uri(domain, "dc1", "web")), ca.x509.RFC822Name("a@b.c")]),
        critical=True,
    ).sign(other, ca.hashes.SHA256()).public_bytes(ca.serialization.Encoding.PEM).decode()
    cases = [
        (CASignRequest(csr="not a csr"), "no PEM-encoded data found"),
        (CASignRequest(csr=body["Roots"][0]["RootCert"]), "first PEM-block should be CERTIFICATE REQUEST type"),
        (CASignRequest(csr=forged), ""),
        (CASignRequest(csr=ca.make_csr(key, "https://web.example.com/")), "SPIFFE ID must have 'spiffe' scheme"),
        (CASignRequest(csr=ca.make_csr(key, f"spiffe://{domain}/web")), "SPIFFE ID is not in the expected format"),
        (CASignRequest(csr=ca.make_csr(key, ca.service_uri("other.consul", "dc1", "web"))), f"SPIFFE ID in CSR from a different trust domain: other.consul, we are {domain}"),
        (CASignRequest(csr=ca.make_csr(key, ca.service_uri(domain, "dc9", "web"))), "SPIFFE ID in CSR from a different datacenter: dc9, we are dc1"),
        (CASignRequest(csr=ca.make_csr(key, ca.service_uri(domain, "dc1", "web", namespace="team"))), 'namespace "team"'),
        (CASignRequest(csr=good, service="db"), 'SPIFFE ID in CSR is for service "web", but the request is for "db"'),
        (CASignRequest(csr=email), "CSR SAN does not allow specifying email addresses"),
        (CASignRequest(csr=ca.make_csr(key, f"spiffe://{domain}")), "SPIFFE ID in CSR must be a service ID"),
    ]
    leaf_index = agent.server.state._index.get("ca-leaf")
    for args, message in cases:
        with pytest.raises(BadRequest) as err:
            await agent.rpc("ConnectCA.Sign", args)
        assert message in str(err.value)
        assert status_for(err.value) == 400
    assert agent.server.state._index.get("ca-leaf") == leaf_index  # no serial was spent on a refused CSR
    issued = await agent.rpc("ConnectCA.Sign", CASignRequest(csr=good, service="web"))
    assert issued["Service"] == "web" and "PrivateKeyPEM" not in issued
    assert verify_with_cryptography(issued["CertPEM"], root_pems(body))


BAD_CONFIGS = [
    ({"Provider": "consul", "Config": {"PrivateKeyType": "dsa"}}, "error configuring provider: private key type must be either 'ec' or 'rsa'"),
    ({"Provider": "consul", "Config": {"PrivateKeyType": "rsa", "PrivateKeyBits": 1024}}, "error configuring provider: RSA key length must be 2048 or 4096 bits"),
    ({"Provider": "consul", "Config": {"PrivateKeyBits": 255}}, "error configuring provider: EC key length must be one of (224, 256, 384, 521) bits"),
    ({"Provider": "consul", "Config": {"LeafCertTTL": "three days"}}, "error configuring provider: error decoding config: error decoding 'LeafCertTTL': time: invalid duration \"three days\""),
    ({"Provider": "consul", "Config": {"LeafCertTTL": "10m"}}, "error configuring provider: leaf cert TTL must be greater or equal than 1h0m0s"),
    ({"Provider": "consul", "Config": {"RootCert": "-----BEGIN CERTIFICATE-----"}}, "error configuring provider: must provide a private key when providing a root cert"),
    ({"Provider": "consul", "Config": {"PrivateKey": "not a key"}}, "error configuring provider: no PEM-encoded data found"),
    ({"Provider": "consul", "Config": {"Colour": "blue"}}, 'error configuring provider: error decoding config: unknown key "Colour"'),
    ({"Provider": "vault", "Config": {}}, 'could not initialize provider: CA provider "vault" is not available here; only "consul" is'),
    ({"Provider": "", "Config": {}}, 'could not initialize provider: unknown CA provider ""'),
    ({"Provider": "consul", "Config": {}, "State": {"x": "y"}}, "Provider State is read-only. It must be omitted or identical to the current value"),
    ({"Provider": "consul", "Config": "72h"}, "Request decode failed: Config: expected an object"),
    ({"Provider": "consul", "Bogus": 1}, 'Request decode failed: json: unknown field "Bogus"'),
]


async def test_bad_configuration_is_400_and_changes_nothing(api):
    await roots(api)
    before_roots = (await api.get("/v1/connect/ca/roots")).json()
    before_config = (await api.get("/v1/connect/ca/configuration")).json()
    mismatched_key, _ = ca.generate_key()
    other_root, _ = ca.generate_key()
    root_pem = ca.generate_root(other_root, "x", 1, 87600 * 3600.0)
    cases = [
        *BAD_CONFIGS,
        ({"Provider": "consul", "Config": {"PrivateKey": ca.key_pem(mismatched_key), "RootCert": root_pem}}, "error configuring provider: RootCert does not match PrivateKey"),
    ]
    for payload, message in cases:
        r = await api.put("/v1/connect/ca/configuration", json=payload)
        assert (r.status_code, r.text) == (400, message) or (r.status_code == 400 and r.text.startswith(message)), (payload, r.text)
    r = await api.put("/v1/connect/ca/configuration", content=b"{not json")
    assert r.status_code == 400 and r.text.startswith("Request decode failed")
    assert (await api.get("/v1/connect/ca/roots")).json() == before_roots
    assert (await api.get("/v1/connect/ca/configuration")).json() == before_config


async def test_ttl_change_keeps_the_root(api):
    body = await roots(api)
    config = (await api.get("/v1/connect/ca/configuration")).json()
    r = await api.put("/v1/connect/ca/configuration", json={"Provider": "consul", "Config": {**config["Config"], "LeafCertTTL": "24h"}})
    assert (r.status_code, r.text) == (200, "")
    after = (await api.get("/v1/connect/ca/configuration")).json()
    assert after["Config"]["LeafCertTTL"] == "24h" and after["ModifyIndex"] > config["ModifyIndex"]
    assert after["CreateIndex"] == config["CreateIndex"]
    assert (await roots(api))["ActiveRootID"] == body["ActiveRootID"]
    # The same config again is a no-op (Consul compares Provider and Config).
    r = await api.put("/v1/connect/ca/configuration", json={"Provider": "consul", "Config": after["Config"]})
    assert r.status_code == 200 and (await api.get("/v1/connect/ca/configuration")).json()["ModifyIndex"] == after["ModifyIndex"]
    fresh = (await leaf(api, "ttl-check")).json()
    x = certs(fresh["CertPEM"])[0]
    assert x.not_valid_after_utc - x.not_valid_before_utc == dt.timedelta(hours=24)
    await api.put("/v1/connect/ca/configuration", json={"Provider": "consul", "Config": config["Config"]})


async def test_rotation_cross_signs_and_moves_the_agent(api, tmp_path: Path):
    old = await roots(api)
    old_root = active(old)
    old_leaf = (await leaf(api, "web")).json()
    old_db = (await leaf(api, "db")).json()
    issued = api.agent.leafcerts.issued
    cached = await api.get("/v1/agent/connect/ca/roots")
    watcher = asyncio.ensure_future(api.get("/v1/agent/connect/ca/roots", params={"index": cached.headers["x-consul-index"], "wait": "10s"}))
    await asyncio.sleep(0.1)
    assert not watcher.done()  # blocks: nothing changed yet

    started = time.monotonic()
    r = await api.put("/v1/connect/ca/configuration", json={"Provider": "consul", "Config": {"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}})
    assert (r.status_code, r.text) == (200, "")
    new = await roots(api)
    woken = await asyncio.wait_for(watcher, 5)
    assert woken.json()["ActiveRootID"] == new["ActiveRootID"] and time.monotonic() - started < 5
    assert int(woken.headers["x-consul-index"]) > int(cached.headers["x-consul-index"])
    new_root = active(new)
    assert new_root["ID"] != old_root["ID"] and new["TrustDomain"] == old["TrustDomain"]
    assert (new_root["PrivateKeyType"], new_root["PrivateKeyBits"]) == ("rsa", 2048)
    listed = {x["ID"]: x for x in new["Roots"]}
    assert set(listed) == {old_root["ID"], new_root["ID"]} and listed[old_root["ID"]]["Active"] is False
    [xc] = new_root["IntermediateCerts"]
    xcert = ca.parse_cert(xc)
    assert xcert.subject == ca.parse_cert(new_root["RootCert"]).subject
    assert xcert.issuer == ca.parse_cert(old_root["RootCert"]).subject

    # The agent re-issues its cached leaves from the new root without being asked.
    def moved(resp: httpx.Response) -> bool:
        return ca.authority_key_id(certs(resp.json()["CertPEM"])[0]) == new_root["SigningKeyID"]

    web = await eventually_async(lambda: api.get("/v1/agent/connect/ca/leaf/web", params={"index": old_leaf["ModifyIndex"], "wait": "5s"}), want=moved)
    elapsed = time.monotonic() - started
    await eventually_async(lambda: asyncio.sleep(0, api.agent.leafcerts.issued), want=lambda n: n >= issued + 2)
    new_leaf, new_db = web.json(), (await leaf(api, "db")).json()
    assert moved(await leaf(api, "db"))
    assert new_leaf["ModifyIndex"] > old_leaf["ModifyIndex"]
    print(f"\nrotation to the agent's re-issued leaves: {elapsed * 1000:.0f} ms")

    uri = f"spiffe://{new['TrustDomain']}/ns/default/dc/dc1/svc/web"
    assert verify_with_cryptography(old_leaf["CertPEM"], root_pems(new)) == [uri]  # old leaves still verify
    assert verify_with_cryptography(new_leaf["CertPEM"], root_pems(new)) == [uri]
    assert verify_with_cryptography(new_leaf["CertPEM"], [old_root["RootCert"]]) == [uri]  # via the cross-signed cert
    assert new_leaf["CertPEM"].endswith(xc)
    # A new leaf talks to an old one; and to a peer that only knows the old root.
    assert tls_handshake(new_leaf, old_db, tmp_path, root_pems(new), root_pems(new))[0] == [uri]
    assert tls_handshake(new_leaf, new_db, tmp_path, root_pems(new), [old_root["RootCert"]])[0] == [uri]

    # A non-blocking read re-checks against the active root too (Consul's MustRevalidate).
    r = await leaf(api, "web")
    assert moved(r)


async def test_supplied_key_and_root_become_the_active_root(api):
    body = await roots(api)
    cluster_id = body["TrustDomain"].removesuffix(".consul")
    key, key_pem = ca.generate_key("ec", 384)
    root_pem = ca.generate_root(key, cluster_id, 99, 87600 * 3600.0)
    r = await api.put("/v1/connect/ca/configuration", json={"Provider": "consul", "Config": {"PrivateKey": key_pem, "RootCert": root_pem}})
    assert (r.status_code, r.text) == (200, "")
    after = await roots(api)
    root = active(after)
    assert root["ID"] == ca.root_info(root_pem).id and root["RootCert"] == root_pem
    assert (root["PrivateKeyType"], root["PrivateKeyBits"], root["SerialNumber"]) == ("ec", 384, 99)
    assert len(after["Roots"]) == len(body["Roots"]) + 1
    assert not secrets_in((await api.get("/v1/connect/ca/roots")).text)
    cert = await eventually_async(lambda: leaf(api, "web"), want=lambda r: ca.authority_key_id(certs(r.json()["CertPEM"])[0]) == root["SigningKeyID"])
    assert verify_with_cryptography(cert.json()["CertPEM"], [root_pem])
    # Only a key: Consul makes a root for it.
    key2, key2_pem = ca.generate_key()
    r = await api.put("/v1/connect/ca/configuration", json={"Provider": "consul", "Config": {"PrivateKey": key2_pem}})
    assert r.status_code == 200, r.text
    made = active(await roots(api))
    assert made["SigningKeyID"] == ca.hex_string(ca.key_id(key2.public_key()))


async def test_pruning_drops_rotated_out_roots(api):
    body = await roots(api)
    manager = api.agent.server.ca_manager
    assert await manager.prune() is False  # everything is recent
    state = api.agent.server.state
    rotated = [r for r in state.ca_roots()[1] if not r.active]
    assert rotated
    # Pretend the rotations happened long ago (a test-only poke at the store; apply would carry it).
    state._ca_roots = tuple(r._replace(rotated_out_at=1 if not r.active else 0) for r in state._ca_roots)
    assert await manager.prune() is True
    after = await roots(api)
    assert [r["ID"] for r in after["Roots"]] == [body["ActiveRootID"]]


async def test_initial_config_from_agent_config_and_short_leaves_renew_at_half_life():
    async with dev_agent(connect_ca_config={"PrivateKeyType": "rsa", "PrivateKeyBits": 2048, "LeafCertTTL": "64s", "SkipValidate": True}) as api:
        root = active(await roots(api))
        assert (root["PrivateKeyType"], root["PrivateKeyBits"]) == ("rsa", 2048)
        config = (await api.get("/v1/connect/ca/configuration")).json()["Config"]
        assert config["LeafCertTTL"] == "64s" and config["RootCertTTL"] == "87600h"
        first = (await leaf(api, "web")).json()
        # Valid for 64 s from a minute ago: ~4 s left, so re-issued ~2 s after issue, unasked.
        started = time.monotonic()
        r = await api.get("/v1/agent/connect/ca/leaf/web", params={"index": first["ModifyIndex"], "wait": "10s"})
        renewed = r.json()
        assert renewed["SerialNumber"] != first["SerialNumber"]
        assert 1.0 < time.monotonic() - started < 6.0


async def test_connect_disabled():
    async with contextlib.AsyncExitStack() as stack:
        from proconsul.agent import config
        from proconsul.agent.agent import Agent
        from proconsul.api.app import build_app

        (port,) = free_ports(1)
        cfg = config.build({"dev": True, "port_http": -1, "port_dns": -1, "port_server": port, "node_name": "off", "connect_enabled": False}, [], [])
        agent = Agent(cfg)
        await agent.start()
        stack.push_async_callback(agent.stop)
        client = await stack.enter_async_context(httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(agent)), base_url="http://a"))
        await eventually_async(lambda: asyncio.sleep(0, agent.server.is_leader()))
        await asyncio.sleep(0.2)
        for method, path in [("GET", "/v1/connect/ca/roots"), ("GET", "/v1/connect/ca/configuration"), ("GET", "/v1/agent/connect/ca/leaf/web")]:
            r = await client.request(method, path)
            assert (r.status_code, r.text) == (500, "Connect must be enabled in order to use this endpoint"), path
        assert agent.server.state.ca_active_root() is None


def test_agent_config_connect_block(tmp_path: Path):
    import json

    from proconsul.agent import config

    f = tmp_path / "c.json"
    f.write_text(json.dumps({"connect": {"enabled": True, "ca_provider": "consul", "ca_config": {"leaf_cert_ttl": "24h", "private_key_type": "rsa", "private_key_bits": 4096}}}))
    cfg = config.build({"dev": True}, [str(f)], [])
    assert cfg.connect_ca_config == {"LeafCertTTL": "24h", "PrivateKeyType": "rsa", "PrivateKeyBits": 4096}
    sc = cfg.server_config()
    assert (sc.connect_enabled, sc.ca_provider, sc.ca_config["PrivateKeyBits"]) == (True, "consul", 4096)
    for bad, message in [
        ({"connect": {"ca_config": {"private_key_bits": 1000}}}, "EC key length must be one of"),
        ({"connect": {"ca_config": {"leaf_cert_ttl": "soon"}}}, "invalid duration"),
        ({"connect": {"ca_config": {"colour": "blue"}}}, "invalid config key connect.ca_config.colour"),
        ({"connect": {"ca_provider": "vault"}}, 'unknown CA provider "vault"'),
        ({"connect": {"enabled": "yes"}}, "connect.enabled: expected true or false"),
        ({"connect": {"mesh": 1}}, "invalid config key connect.mesh"),
    ]:
        f.write_text(json.dumps(bad))
        with pytest.raises(config.ConfigError, match=message.replace("(", r"\(")):
            config.build({"dev": True}, [str(f)], [])


async def test_a_restore_without_a_ca_gets_a_new_one():
    from proconsul.server.commands import RestoreRequest
    from proconsul.server.snapshot import tables_to_wire

    async with dev_agent() as api:
        before = await roots(api)
        srv = api.agent.server
        tables = {name: rows for name, rows in srv.state.dump().items() if not name.startswith("ca_")}
        await srv.raft.apply(RestoreRequest(tables=tables_to_wire(tables)))
        after = await eventually_async(lambda: api.get("/v1/connect/ca/roots"), want=lambda r: r.status_code == 200 and r.json()["ActiveRootID"] != before["ActiveRootID"])
        assert after.json()["TrustDomain"] != before["TrustDomain"] and len(after.json()["Roots"]) == 1
