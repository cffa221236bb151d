"""py-consul (from PyPI), unchanged: its ACL token, policy and role calls against an ACL-enabled dev agent."""

from __future__ import annotations

from typing import Iterator

import consul
import pytest

from conftest import AgentProc, eventually, start_dev_agent

MGMT = "9a7c3e21-4b6d-4f80-a2c5-3e4f5a6b7c8d"
GM_ID = "00000000-0000-0000-0000-000000000001"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    a = start_dev_agent(tmp_path_factory.mktemp("pyacl"), "pyacl",
                        {"acl": {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT}}})
    c = consul.Consul(host="127.0.0.1", port=a.http_port, token=MGMT)
    eventually(lambda: c.acl.token.read_self(), what="initial management token")
    yield a
    a.stop()


def client(agent: AgentProc, token: str | None = MGMT) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=agent.http_port, token=token)


def test_acl_disabled_raises_acl_disabled(dev_agent):
    with pytest.raises(consul.ACLDisabled):
        client(dev_agent).acl.token.list()


def test_bootstrap_after_initial_management_is_denied(agent):
    with pytest.raises(consul.ACLPermissionDenied, match="ACL bootstrap no longer allowed"):
        client(agent, None).acl.bootstrap()


def test_policies(agent):
    acl = client(agent).acl
    p = acl.policy.create("py-kv", description="kv for py", rules={"key_prefix": {"py/": {"policy": "write"}}})
    assert (p["Name"], p["Description"]) == ("py-kv", "kv for py") and '"py/"' in p["Rules"]
    assert acl.policy.read(p["ID"])["Name"] == "py-kv"
    assert "py-kv" in {x["Name"] for x in acl.policy.list()}
    up = acl.policy.update(p["ID"], "py-kv2", description="renamed", rules={"key_prefix": {"py/": {"policy": "read"}}})
    assert (up["ID"], up["Name"], up["Description"]) == (p["ID"], "py-kv2", "renamed")
    assert acl.policy.delete(p["ID"]) is True
    assert acl.policy.read(p["ID"]) is None  # 404: py-consul answers None
    with pytest.raises(consul.ConsulException, match="no Name is set"):
        acl.policy.create("")


def test_roles(agent):
    acl = client(agent).acl
    p = acl.policy.create("py-role-pol", rules={"node_prefix": {"": {"policy": "read"}}})
    r = acl.role.create("py-role", description="a role", policies_name=["py-role-pol"], service_identities=[{"ServiceName": "py-web"}],
                        node_identities=[{"NodeName": "py-node", "Datacenter": "dc1"}])
    assert r["Policies"] == [{"ID": p["ID"], "Name": "py-role-pol"}] and r["ServiceIdentities"] == [{"ServiceName": "py-web"}]
    assert acl.role.read(r["ID"])["Name"] == "py-role"
    assert acl.role.read_by_name("py-role")["ID"] == r["ID"]
    assert [x["ID"] for x in acl.role.list(policy=p["ID"])] == [r["ID"]]
    up = acl.role.update(r["ID"], "py-role", description="changed", policies_id=[p["ID"]])
    assert up["Description"] == "changed" and "ServiceIdentities" not in up
    assert acl.role.delete(r["ID"]) is True
    assert acl.role.read(r["ID"]) is None
    acl.policy.delete(p["ID"])


def test_tokens(agent):
    acl = client(agent).acl
    me = acl.token.read_self()
    assert me["SecretID"] == MGMT and me["Policies"] == [{"ID": GM_ID, "Name": "global-management"}]
    p = acl.policy.create("py-tok-pol", rules={"acl": "read"})
    r = acl.role.create("py-tok-role", policies_id=[p["ID"]])
    t = acl.token.create(description="py token", policies_name=["py-tok-pol"], roles_id=[r["ID"]], node_identities=["py-node:dc1"],
                         service_identities=[{"ServiceName": "py-api"}], expiration_ttl="2h")
    assert t["Description"] == "py token" and t["Roles"] == [{"ID": r["ID"], "Name": "py-tok-role"}]
    assert t["NodeIdentities"] == [{"NodeName": "py-node", "Datacenter": "dc1"}] and "ExpirationTime" in t
    assert acl.token.read(t["AccessorID"]) == t
    assert acl.token.read_self(token=t["SecretID"])["AccessorID"] == t["AccessorID"]
    assert {x["AccessorID"] for x in acl.token.list(policy=p["ID"])} == {t["AccessorID"]}
    assert {x["AccessorID"] for x in acl.token.list(role=r["ID"])} == {t["AccessorID"]}
    assert {x["AccessorID"] for x in acl.token.list(servicename="py-api")} == {t["AccessorID"]}
    # The token may read ACLs (acl = "read") but not write them; it sees secrets hidden.
    reader = client(agent, t["SecretID"]).acl
    assert {x["SecretID"] for x in reader.token.list()} == {"<hidden>"}
    with pytest.raises(consul.ACLPermissionDenied, match="lacks permission 'acl:write'"):
        reader.policy.create("py-denied")
    up = acl.token.update(t["AccessorID"], description="updated", policies_id=[p["ID"]])
    assert up["Description"] == "updated" and up["SecretID"] == t["SecretID"] and "Roles" not in up
    cl = acl.token.clone(t["AccessorID"], description="py clone")
    assert cl["Description"] == "py clone" and cl["Policies"] == up["Policies"] and cl["AccessorID"] != t["AccessorID"]
    own = acl.token.create(accessor_id="1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b", secret_id="2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d")
    assert (own["AccessorID"], own["SecretID"]) == ("1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b", "2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d")
    for x in (t, cl, own):
        assert acl.token.delete(x["AccessorID"]) is True
    assert acl.token.read(t["AccessorID"]) is None
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        client(agent, t["SecretID"]).acl.token.list()
    acl.role.delete(r["ID"])
    acl.policy.delete(p["ID"])
