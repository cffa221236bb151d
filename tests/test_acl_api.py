"""/v1/acl against real ACL-enabled dev agents: bootstrap, tokens, policies, roles in Consul's shapes, codes and texts."""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest

from conftest import AgentProc, eventually, start_dev_agent

MGMT = "1c4d5b8e-2a43-4f55-9c1a-8a2d6c0f7e11"
GM_ID = "00000000-0000-0000-0000-000000000001"
ANON_ID = "00000000-0000-0000-0000-000000000002"
ACL_ON = {"acl": {"enabled": True, "default_policy": "deny", "down_policy": "extend-cache", "tokens": {"initial_management": MGMT}}}


@pytest.fixture(scope="module")
def acl_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    agent = start_dev_agent(tmp_path_factory.mktemp("acl"), "acl", ACL_ON)
    eventually(lambda: _get(agent, "/v1/acl/token/self", MGMT)[0] == 200, what="initial management token")
    yield agent
    agent.stop()


def _h(token: str | None) -> dict[str, str]:
    return {"X-Consul-Token": token} if token is not None else {}


def _get(agent: AgentProc, path: str, token: str | None = MGMT, **params: Any) -> tuple[int, Any]:
    r = agent.http.get(path, headers=_h(token), params=params)
    return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text)


def _put(agent: AgentProc, path: str, body: Any = None, token: str | None = MGMT, content: bytes | None = None) -> tuple[int, Any]:
    r = agent.http.put(path, headers=_h(token), json=body, content=content) if content is not None else agent.http.put(path, headers=_h(token), json=body)
    return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text)


def _delete(agent: AgentProc, path: str, token: str | None = MGMT) -> tuple[int, Any]:
    r = agent.http.delete(path, headers=_h(token))
    return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text)


def test_acl_disabled_answers_401(dev_agent):
    for method, path in [("PUT", "/v1/acl/bootstrap"), ("GET", "/v1/acl/tokens"), ("GET", "/v1/acl/token/self"),
                         ("PUT", "/v1/acl/policy"), ("GET", "/v1/acl/roles")]:
        r = dev_agent.http.request(method, path, json={})
        assert (r.status_code, r.text) == (401, "ACL support disabled"), path


def test_bootstrap_once_then_403_with_reset_index(tmp_path):
    agent = start_dev_agent(tmp_path, "boot", {"acl": {"enabled": True, "default_policy": "deny"}})
    try:
        # The builtin policy comes from the leader; bootstrap links it.
        status, got = eventually(lambda: (lambda r: r if r[0] == 200 else None)(_put(agent, "/v1/acl/bootstrap", token=None)))
        assert list(got) == ["ID", "AccessorID", "SecretID", "Description", "Policies", "Local", "CreateTime", "Hash",
                             "CreateIndex", "ModifyIndex"]
        assert got["ID"] == got["SecretID"] and re.fullmatch(r"[0-9a-f-]{36}", got["SecretID"])
        assert got["Description"] == "Bootstrap Token (Global Management)"
        assert got["Policies"] == [{"ID": GM_ID, "Name": "global-management"}] and got["Local"] is False
        status, text = _put(agent, "/v1/acl/bootstrap", token=None)
        assert status == 403 and text == f"Permission denied: ACL bootstrap no longer allowed (reset index: {got['CreateIndex']})"
        # The bootstrap token manages ACLs.
        assert _get(agent, "/v1/acl/token/self", got["SecretID"])[1]["AccessorID"] == got["AccessorID"]
        assert _get(agent, "/v1/acl/tokens", got["SecretID"])[0] == 200
    finally:
        agent.stop()


def test_initial_management_token_used_the_bootstrap(acl_agent):
    status, text = _put(acl_agent, "/v1/acl/bootstrap", token=None)
    assert status == 403 and text.startswith("Permission denied: ACL bootstrap no longer allowed (reset index: ")


def test_builtin_objects(acl_agent):
    status, me = _get(acl_agent, "/v1/acl/token/self")
    assert status == 200 and me["SecretID"] == MGMT and me["Description"] == "Initial Management Token"
    assert me["Policies"] == [{"ID": GM_ID, "Name": "global-management"}]
    status, anon = _get(acl_agent, f"/v1/acl/token/{ANON_ID}")
    assert (anon["AccessorID"], anon["SecretID"], anon["Description"]) == (ANON_ID, "anonymous", "Anonymous Token")
    assert "Policies" not in anon
    status, gm = _get(acl_agent, f"/v1/acl/policy/{GM_ID}")
    assert list(gm) == ["ID", "Name", "Description", "Rules", "Datacenters", "Hash", "CreateIndex", "ModifyIndex"]
    assert gm["Name"] == "global-management" and 'acl = "write"' in gm["Rules"] and gm["Datacenters"] is None
    assert _get(acl_agent, "/v1/acl/policy/name/global-management")[1]["ID"] == GM_ID
    # Both tokens in the list; the token header forms Consul takes all work.
    r = acl_agent.http.get("/v1/acl/tokens", headers={"Authorization": f"Bearer {MGMT}"})
    assert {ANON_ID, me["AccessorID"]} <= {t["AccessorID"] for t in r.json()}
    assert acl_agent.http.get("/v1/acl/tokens", params={"token": MGMT}).status_code == 200
    # Self with no token is the anonymous token (Consul reads it by its secret).
    assert _get(acl_agent, "/v1/acl/token/self", None)[1]["AccessorID"] == ANON_ID


def test_policy_crud(acl_agent):
    status, p = _put(acl_agent, "/v1/acl/policy", {"name": "kv-read", "Description": "read kv", "rules": 'key_prefix "" { policy = "read" }',
                                                    "Datacenters": ["dc1"]})
    assert status == 200, p
    assert list(p) == ["ID", "Name", "Description", "Rules", "Datacenters", "Hash", "CreateIndex", "ModifyIndex"]
    assert (p["Name"], p["Description"], p["Datacenters"]) == ("kv-read", "read kv", ["dc1"])
    assert _get(acl_agent, f"/v1/acl/policy/{p['ID']}")[1] == p
    assert _get(acl_agent, "/v1/acl/policy/name/KV-READ")[1]["ID"] == p["ID"]  # names match case-insensitively
    status, up = _put(acl_agent, f"/v1/acl/policy/{p['ID']}", {"Name": "kv-read2", "Rules": p["Rules"]})
    assert status == 200 and up["Name"] == "kv-read2" and up["CreateIndex"] == p["CreateIndex"] and up["ModifyIndex"] > p["ModifyIndex"]
    assert up["Datacenters"] is None and up["Description"] == ""
    status, listed = _get(acl_agent, "/v1/acl/policies")
    stub = next(x for x in listed if x["ID"] == p["ID"])
    assert list(stub) == ["ID", "Name", "Description", "Datacenters", "Hash", "CreateIndex", "ModifyIndex"]
    assert _delete(acl_agent, f"/v1/acl/policy/{p['ID']}") == (200, True)
    assert _get(acl_agent, f"/v1/acl/policy/{p['ID']}") == (404, "Requested policy does not exist: ACL not found")
    assert _get(acl_agent, "/v1/acl/policy/name/kv-read2") == (404, "Requested policy does not exist: ACL not found")
    assert _delete(acl_agent, f"/v1/acl/policy/{p['ID']}") == (404, "Cannot find policy to delete")


def test_role_crud(acl_agent):
    _, pol = _put(acl_agent, "/v1/acl/policy", {"Name": "role-pol", "Rules": 'node_prefix "" { policy = "read" }'})
    status, role = _put(acl_agent, "/v1/acl/role", {"Name": "web-role", "Description": "web", "Policies": [{"Name": "role-pol"}, {"ID": pol["ID"]}],
                                                     "ServiceIdentities": [{"ServiceName": "web"}], "NodeIdentities": [{"NodeName": "n1", "Datacenter": "dc1"}]})
    assert status == 200, role
    assert list(role) == ["ID", "Name", "Description", "Policies", "ServiceIdentities", "NodeIdentities", "Hash", "CreateIndex", "ModifyIndex"]
    assert role["Policies"] == [{"ID": pol["ID"], "Name": "role-pol"}]  # linked by name and ID: one link
    assert role["ServiceIdentities"] == [{"ServiceName": "web"}] and role["NodeIdentities"] == [{"NodeName": "n1", "Datacenter": "dc1"}]
    assert _get(acl_agent, f"/v1/acl/role/{role['ID']}")[1] == role
    assert _get(acl_agent, "/v1/acl/role/name/web-role")[1]["ID"] == role["ID"]
    assert [r["ID"] for r in _get(acl_agent, "/v1/acl/roles", policy=pol["ID"])[1]] == [role["ID"]]
    assert _get(acl_agent, "/v1/acl/roles", policy=GM_ID)[1] == []
    status, up = _put(acl_agent, f"/v1/acl/role/{role['ID']}", {"Name": "web-role", "Description": "changed"})
    assert status == 200 and up["Description"] == "changed" and "Policies" not in up
    # A deleted policy's link disappears from what reads show.
    _put(acl_agent, f"/v1/acl/role/{role['ID']}", {"Name": "web-role", "Policies": [{"ID": pol["ID"]}]})
    _delete(acl_agent, f"/v1/acl/policy/{pol['ID']}")
    assert "Policies" not in _get(acl_agent, f"/v1/acl/role/{role['ID']}")[1]
    assert _delete(acl_agent, f"/v1/acl/role/{role['ID']}") == (200, True)
    assert _get(acl_agent, f"/v1/acl/role/{role['ID']}") == (404, "Requested role does not exist: ACL not found")
    assert _delete(acl_agent, f"/v1/acl/role/{role['ID']}") == (404, "Cannot find role to delete")


def test_token_crud_clone_and_list_filters(acl_agent):
    _, pol = _put(acl_agent, "/v1/acl/policy", {"Name": "tok-pol", "Rules": 'service_prefix "" { policy = "read" }'})
    _, role = _put(acl_agent, "/v1/acl/role", {"Name": "tok-role", "Policies": [{"ID": pol["ID"]}]})
    body = {"Description": "api token", "Policies": [{"Name": "tok-pol"}], "Roles": [{"ID": role["ID"]}],
            "ServiceIdentities": [{"ServiceName": "api", "Datacenters": ["dc1"]}], "NodeIdentities": [{"NodeName": "n1", "Datacenter": "dc1"}],
            "ExpirationTTL": "1h"}
    status, tok = _put(acl_agent, "/v1/acl/token", body)
    assert status == 200, tok
    assert list(tok) == ["AccessorID", "SecretID", "Description", "Policies", "Roles", "ServiceIdentities", "NodeIdentities", "Local",
                         "ExpirationTime", "CreateTime", "Hash", "CreateIndex", "ModifyIndex"]
    assert tok["Policies"] == [{"ID": pol["ID"], "Name": "tok-pol"}] and tok["Roles"] == [{"ID": role["ID"], "Name": "tok-role"}]
    assert tok["ServiceIdentities"] == [{"ServiceName": "api", "Datacenters": ["dc1"]}]
    assert tok["ExpirationTime"] > tok["CreateTime"]
    assert _get(acl_agent, f"/v1/acl/token/{tok['AccessorID']}")[1] == tok
    assert _get(acl_agent, "/v1/acl/token/self", tok["SecretID"])[1] == tok  # any valid token reads itself
    # Update: AccessorID from the URL; the secret and expiry stay.
    status, up = _put(acl_agent, f"/v1/acl/token/{tok['AccessorID']}", {"Description": "renamed", "Policies": [{"ID": pol["ID"]}]})
    assert status == 200 and up["Description"] == "renamed" and up["SecretID"] == tok["SecretID"] and "Roles" not in up
    assert up["ExpirationTime"] == tok["ExpirationTime"] and up["CreateTime"] == tok["CreateTime"]
    # Explicit accessor and secret.
    acc, sec = "5b0f2c1e-7d3a-4b8e-9f60-1a2b3c4d5e6f", "6c1a3d2f-8e4b-4c9f-a071-2b3c4d5e6f70"
    status, mine = _put(acl_agent, "/v1/acl/token", {"AccessorID": acc, "SecretID": sec, "ServiceIdentities": [{"ServiceName": "db"}]})
    assert status == 200 and (mine["AccessorID"], mine["SecretID"]) == (acc, sec)
    # Clone: same links, new IDs, new description when given.
    status, cl = _put(acl_agent, f"/v1/acl/token/{tok['AccessorID']}/clone", {"Description": "the clone"})
    assert status == 200 and cl["AccessorID"] != tok["AccessorID"] and cl["SecretID"] != tok["SecretID"]
    assert (cl["Description"], cl["Policies"], cl["ExpirationTime"]) == ("the clone", up["Policies"], tok["ExpirationTime"])
    # List filters.
    ids = lambda **f: {t["AccessorID"] for t in _get(acl_agent, "/v1/acl/tokens", **f)[1]}  # noqa: E731
    assert ids(policy=pol["ID"]) == {tok["AccessorID"], cl["AccessorID"]}
    assert ids(servicename="db") == {acc}
    assert ids(authmethod="kube") == set()
    _put(acl_agent, f"/v1/acl/token/{acc}", {"Roles": [{"Name": "tok-role"}], "ServiceIdentities": [{"ServiceName": "db"}]})
    assert ids(role=role["ID"]) == {acc}
    assert _get(acl_agent, "/v1/acl/tokens", policy=pol["ID"], role=role["ID"]) == (
        400, "can only filter by one of policy, role, serviceName, or authMethod at once")
    listed = {t["AccessorID"]: t for t in _get(acl_agent, "/v1/acl/tokens")[1]}
    assert listed[acc]["SecretID"] == sec  # a management caller sees secrets
    # Delete.
    for t in (tok["AccessorID"], cl["AccessorID"], acc):
        assert _delete(acl_agent, f"/v1/acl/token/{t}") == (200, True)
    assert _get(acl_agent, f"/v1/acl/token/{acc}") == (404, "Requested token does not exist: ACL not found")
    assert _delete(acl_agent, f"/v1/acl/token/{acc}") == (404, "Cannot find token to delete")
    assert _get(acl_agent, "/v1/acl/token/self", sec) == (404, "Supplied token does not exist")  # Consul's text for self


def test_authorization_on_acl_endpoints(acl_agent):
    anon = "Permission denied: anonymous token lacks permission 'acl:read'. The anonymous token is used implicitly when a request does not specify a token."
    assert _get(acl_agent, "/v1/acl/tokens", None) == (403, anon)
    assert _get(acl_agent, "/v1/acl/policies", "0f0e0d0c-0b0a-4909-8807-060504030201") == (403, "ACL not found")
    _, pol = _put(acl_agent, "/v1/acl/policy", {"Name": "acl-reader", "Rules": 'acl = "read"'})
    _, reader = _put(acl_agent, "/v1/acl/token", {"Policies": [{"ID": pol["ID"]}]})
    status, listed = _get(acl_agent, "/v1/acl/tokens", reader["SecretID"])
    assert status == 200 and {t["SecretID"] for t in listed} == {"<hidden>"}  # acl:read without acl:write: secrets redacted
    assert _get(acl_agent, f"/v1/acl/token/{reader['AccessorID']}", reader["SecretID"])[1]["SecretID"] == "<hidden>"
    assert _get(acl_agent, "/v1/acl/token/self", reader["SecretID"])[1]["SecretID"] == reader["SecretID"]
    status, text = _put(acl_agent, "/v1/acl/policy", {"Name": "nope", "Rules": ""}, reader["SecretID"])
    assert (status, text) == (403, f"Permission denied: token with AccessorID '{reader['AccessorID']}' lacks permission 'acl:write'")
    # A token with no ACL rule may still read itself, and nothing else.
    _, plain = _put(acl_agent, "/v1/acl/token", {"ServiceIdentities": [{"ServiceName": "web"}]})
    assert _get(acl_agent, "/v1/acl/token/self", plain["SecretID"])[0] == 200
    assert _get(acl_agent, "/v1/acl/roles", plain["SecretID"])[0] == 403
    # Updating a token's policies changes what it may do at once (the resolver cache follows the ACL index).
    _, writer = _put(acl_agent, "/v1/acl/policy", {"Name": "acl-writer", "Rules": 'acl = "write"'})
    _put(acl_agent, f"/v1/acl/token/{reader['AccessorID']}", {"Policies": [{"ID": writer["ID"]}]})
    assert _put(acl_agent, "/v1/acl/policy", {"Name": "made-by-writer"}, reader["SecretID"])[0] == 200
    assert _delete(acl_agent, f"/v1/acl/token/{reader['AccessorID']}", reader["SecretID"]) == (
        400, "Deletion of the request's authorization token is not permitted")


def test_bad_input_gets_consuls_texts(acl_agent):
    put = lambda path, body: _put(acl_agent, path, body)  # noqa: E731
    assert _put(acl_agent, "/v1/acl/token", content=b"") == (400, "Token decoding failed: EOF")
    assert _put(acl_agent, "/v1/acl/token", content=b"{nope")[0] == 400
    assert put("/v1/acl/token", {"Bogus": 1}) == (400, 'Token decoding failed: json: unknown field "Bogus"')
    assert put("/v1/acl/policy", {"Bogus": 1}) == (400, 'Policy decoding failed: json: unknown field "Bogus"')
    assert put("/v1/acl/role", {"Name": 7})[0] == 400
    assert put("/v1/acl/policy", {"Description": "x"}) == (400, "Invalid Policy: no Name is set")
    assert put("/v1/acl/policy", {"Name": "bad name!"}) == (400, "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed")
    assert put("/v1/acl/policy", {"Name": "global-management"}) == (400, 'Invalid Policy: A Policy with Name "global-management" already exists')
    assert put("/v1/acl/policy", {"ID": GM_ID, "Name": "x"}) == (400, "Cannot specify the ID when creating a new policy")
    assert put(f"/v1/acl/policy/{GM_ID}", {"Name": "global-management", "Rules": 'acl = "read"'}) == (
        400, "Changing the Rules for the builtin global-management policy is not permitted")
    assert _delete(acl_agent, f"/v1/acl/policy/{GM_ID}") == (400, "Delete operation not permitted on the builtin global-management policy")
    assert put("/v1/acl/policy/not-a-uuid", {"Name": "x"}) == (400, "Policy ID invalid UUID")
    assert put("/v1/acl/role", {"Description": "x"}) == (400, "Invalid Role: no Name is set")
    assert put("/v1/acl/role", {"Name": "r", "Policies": [{"Name": "missing"}]}) == (400, 'No such ACL policy with name "missing"')
    assert put("/v1/acl/token", {"Policies": [{"Name": "missing"}]}) == (400, 'No such ACL policy with name "missing"')
    assert put("/v1/acl/token", {"Roles": [{"ID": "3e0b6f51-52b2-4c5f-9f4e-2f5f5d6a7b8c"}]}) == (
        400, 'No such ACL role with ID "3e0b6f51-52b2-4c5f-9f4e-2f5f5d6a7b8c"')
    assert put("/v1/acl/token", {"AccessorID": "xyz"}) == (400, "Invalid Token: AccessorID is not a valid UUID")
    assert put("/v1/acl/token", {"AccessorID": ANON_ID}) == (400, "Invalid Token: AccessorID is already in use")
    assert put("/v1/acl/token", {"SecretID": MGMT}) == (400, "Invalid Token: SecretID is already in use")
    assert put("/v1/acl/token", {"AccessorID": "00000000-0000-0000-0000-000000000099"}) == (
        400, 'Invalid Token: UUIDs with the prefix "00000000-0000-0000-0000-0000000000" are reserved')
    assert put("/v1/acl/token", {"ExpirationTTL": "48h"}) == (400, "ExpirationTime cannot be more than 24h0m0s in the future (was 48h0m0s)")
    assert put("/v1/acl/token", {"ExpirationTTL": "10s"}) == (400, "ExpirationTime cannot be less than 1m0s in the future (was 10s)")
    assert put("/v1/acl/token", {"ExpirationTTL": "1h", "ExpirationTime": "2099-01-01T00:00:00Z"}) == (
        400, "Token Expiration TTL and Expiration Time cannot both be set")
    assert put("/v1/acl/token", {"ServiceIdentities": [{"ServiceName": "Bad Name"}]}) == (
        400, "Service identity \"Bad Name\" has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed")
    assert put("/v1/acl/token", {"NodeIdentities": [{"NodeName": "n1"}]}) == (400, "Node identity is missing the datacenter field on this token")
    _, tok = put("/v1/acl/token", {"Description": "x"})
    assert put(f"/v1/acl/token/{tok['AccessorID']}", {"AccessorID": ANON_ID}) == (400, "Token Accessor ID in URL and payload do not match")
    assert put(f"/v1/acl/token/{tok['AccessorID']}", {"SecretID": "7d2b4e3a-9f5c-4d0a-b182-3c4d5e6f7081"}) == (
        400, "Changing a tokens SecretID is not permitted")
    assert put(f"/v1/acl/token/{tok['AccessorID']}", {"ExpirationTTL": "1h"}) == (400, f"Cannot change expiration time of {tok['AccessorID']}")
    assert put("/v1/acl/token/8e3c5f4b-0a6d-4e1b-8293-4d5e6f708192", {}) == (400, 'Cannot find token "8e3c5f4b-0a6d-4e1b-8293-4d5e6f708192"')
    assert _delete(acl_agent, f"/v1/acl/token/{ANON_ID}") == (400, "Delete operation not permitted on the anonymous token")
    assert _delete(acl_agent, "/v1/acl/token/xyz") == (400, "Accessor ID is missing or an invalid UUID")
    assert _put(acl_agent, "/v1/acl/token/8e3c5f4b-0a6d-4e1b-8293-4d5e6f708192/clone", {}) == (403, "ACL not found")
    r = acl_agent.http.post("/v1/acl/token", headers=_h(MGMT), json={})
    assert (r.status_code, r.text) == (405, "method POST not allowed")


def test_bad_rules_are_400(acl_agent):
    status, text = _put(acl_agent, "/v1/acl/policy", {"Name": "broken", "Rules": 'key_prefix "" { policy = "sometimes" }'})
    assert status == 400 and text.startswith("Invalid key_prefix policy: "), text
    status, text = _put(acl_agent, "/v1/acl/policy", {"Name": "broken", "Rules": "{nope"})
    assert status == 400 and text.startswith("Failed to parse ACL rules: "), text
    # JSON rules (py-consul sends rules as JSON) parse as HCL's JSON form does.
    status, p = _put(acl_agent, "/v1/acl/policy", {"Name": "json-rules", "Rules": '{"key_prefix": {"app/": {"policy": "write"}}}'})
    assert status == 200, p
    assert _get(acl_agent, "/v1/acl/policies", None)[0] == 403
