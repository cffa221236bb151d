"""Every route the app registers, under ``default_policy = deny``, with four tokens.

The route list comes from the app itself (``route_table(build_app(agent))``), and
each route must have a row in ``CASES`` saying what it needs: a new route without
a row fails ``test_every_route_has_an_acl_case``, and a row whose endpoint does not
enforce what the row says fails ``test_route_enforces_its_acl``.

Kinds (what each token must see):

* ``open``  — no ACL (status, datacenters, CA roots): nobody gets 403.
* ``read``  — a read: anonymous and the narrow token are refused (403) or get a
  filtered answer — the narrow token is told so (``X-Consul-Results-Filtered-By-ACLs:
  true``), anonymous is not (Consul masks it) and must see less than management;
  the read-only and management tokens are served, unfiltered.
* ``write`` — a write (or a read that needs write, like a leaf certificate):
  anonymous, read-only and narrow are refused with 403 "Permission denied" (or,
  in a transaction, 409 with "Permission denied" per op); management is not.
* ``bootstrap`` — ``initial_management`` already bootstrapped: 403 for everyone.

The narrow token writes only objects named ``narrow``; every sample names others,
so it must be refused like anonymous, and ``test_narrow_token_reaches_its_own``
shows it does reach its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_ports

pytestmark = pytest.mark.anyio

MGMT = "5b1d7c1e-93a0-4c52-8a0b-2a1f6f0d6a11"
NODE = "aclnode"

READ_RULES = """
acl = "read"
operator = "read"
mesh = "read"
agent_prefix "" { policy = "read" }
event_prefix "" { policy = "read" }
key_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
query_prefix "" { policy = "read" }
service_prefix "" {
  policy = "read"
  intentions = "read"
}
session_prefix "" { policy = "read" }
"""

NARROW_RULES = """
key_prefix "narrow/" { policy = "write" }
service "narrow" {
  policy = "write"
  intentions = "write"
}
node "narrow" { policy = "write" }
session "narrow" { policy = "write" }
event "narrow" { policy = "write" }
query "narrow" { policy = "write" }
"""


@dataclass(frozen=True)
class Case:
    kind: str
    url: str
    body: Any = None
    mgmt: bool = True  # False: too destructive to run with a token that may (agent leave)


def _svc(name: str) -> dict[str, Any]:
    return {"Name": name, "Port": 80}


# (method, route) -> what it needs and a request that exercises it.
CASES: dict[tuple[str, str], Case] = {
    # ---- ACL objects
    ("PUT", "/v1/acl/bootstrap"): Case("bootstrap", "/v1/acl/bootstrap"),
    ("GET", "/v1/acl/policies"): Case("read", "/v1/acl/policies"),
    ("PUT", "/v1/acl/policy"): Case("write", "/v1/acl/policy", {"Name": "p-new", "Rules": ""}),
    ("GET", "/v1/acl/policy/name/{name}"): Case("read", "/v1/acl/policy/name/global-management"),
    ("GET", "/v1/acl/policy/{policy_id}"): Case("read", "/v1/acl/policy/00000000-0000-0000-0000-000000000001"),
    ("PUT", "/v1/acl/policy/{policy_id}"): Case("write", "/v1/acl/policy/{spare_policy}", {"Name": "spare", "Rules": ""}),
    ("DELETE", "/v1/acl/policy/{policy_id}"): Case("write", "/v1/acl/policy/{doomed_policy}"),
    ("PUT", "/v1/acl/role"): Case("write", "/v1/acl/role", {"Name": "r-new"}),
    ("GET", "/v1/acl/role/name/{name}"): Case("read", "/v1/acl/role/name/spare-role"),
    ("GET", "/v1/acl/role/{role_id}"): Case("read", "/v1/acl/role/{spare_role}"),
    ("PUT", "/v1/acl/role/{role_id}"): Case("write", "/v1/acl/role/{spare_role}", {"Name": "spare-role"}),
    ("DELETE", "/v1/acl/role/{role_id}"): Case("write", "/v1/acl/role/{doomed_role}"),
    ("GET", "/v1/acl/roles"): Case("read", "/v1/acl/roles"),
    ("PUT", "/v1/acl/token"): Case("write", "/v1/acl/token", {"Description": "new"}),
    ("GET", "/v1/acl/token/{accessor_id}"): Case("read", "/v1/acl/token/{spare_token}"),
    ("PUT", "/v1/acl/token/{accessor_id}"): Case("write", "/v1/acl/token/{spare_token}", {"Description": "spare"}),
    ("DELETE", "/v1/acl/token/{accessor_id}"): Case("write", "/v1/acl/token/{doomed_token}"),
    ("PUT", "/v1/acl/token/{accessor_id}/clone"): Case("write", "/v1/acl/token/{spare_token}/clone", {}),
    ("GET", "/v1/acl/tokens"): Case("read", "/v1/acl/tokens"),
    # ---- the agent
    ("PUT", "/v1/agent/check/register"): Case("write", "/v1/agent/check/register", {"Name": "c-new", "TTL": "30s"}),
    ("PUT", "/v1/agent/check/deregister/{check_id}"): Case("write", "/v1/agent/check/deregister/doomed-check"),
    ("PUT", "/v1/agent/check/pass/{check_id}"): Case("write", "/v1/agent/check/pass/ttl-check"),
    ("PUT", "/v1/agent/check/warn/{check_id}"): Case("write", "/v1/agent/check/warn/ttl-check"),
    ("PUT", "/v1/agent/check/fail/{check_id}"): Case("write", "/v1/agent/check/fail/ttl-check"),
    ("PUT", "/v1/agent/check/update/{check_id}"): Case("write", "/v1/agent/check/update/ttl-check", {"Status": "passing"}),
    ("GET", "/v1/agent/checks"): Case("read", "/v1/agent/checks"),
    ("POST", "/v1/agent/connect/authorize"): Case("write", "/v1/agent/connect/authorize", {"Target": "db", "ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/web"}),
    ("PUT", "/v1/agent/connect/authorize"): Case("write", "/v1/agent/connect/authorize", {"Target": "db", "ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/web"}),
    ("GET", "/v1/agent/connect/ca/leaf/{service}"): Case("write", "/v1/agent/connect/ca/leaf/web"),
    ("GET", "/v1/agent/connect/ca/roots"): Case("open", "/v1/agent/connect/ca/roots"),
    ("PUT", "/v1/agent/force-leave/{node}"): Case("write", "/v1/agent/force-leave/ghost"),
    ("PUT", "/v1/agent/join/{address}"): Case("write", "/v1/agent/join/127.0.0.1:1", mgmt=False),
    ("PUT", "/v1/agent/leave"): Case("write", "/v1/agent/leave", mgmt=False),
    ("PUT", "/v1/agent/maintenance"): Case("write", "/v1/agent/maintenance?enable=false"),
    ("GET", "/v1/agent/members"): Case("read", "/v1/agent/members"),
    ("GET", "/v1/agent/metrics"): Case("read", "/v1/agent/metrics"),
    ("PUT", "/v1/agent/reload"): Case("write", "/v1/agent/reload"),
    ("GET", "/v1/agent/self"): Case("read", "/v1/agent/self"),
    ("PUT", "/v1/agent/service/register"): Case("write", "/v1/agent/service/register", _svc("api")),
    ("PUT", "/v1/agent/service/deregister/{service_id}"): Case("write", "/v1/agent/service/deregister/doomed"),
    ("PUT", "/v1/agent/service/maintenance/{service_id}"): Case("write", "/v1/agent/service/maintenance/web?enable=false"),
    ("GET", "/v1/agent/service/{service_id}"): Case("read", "/v1/agent/service/web"),
    ("GET", "/v1/agent/services"): Case("read", "/v1/agent/services"),
    ("PUT", "/v1/agent/token/{kind}"): Case("write", "/v1/agent/token/default", {"Token": ""}),
    # ---- the catalog and health
    ("GET", "/v1/catalog/connect/{service}"): Case("read", "/v1/catalog/connect/web"),
    ("GET", "/v1/catalog/datacenters"): Case("open", "/v1/catalog/datacenters"),
    ("PUT", "/v1/catalog/deregister"): Case("write", "/v1/catalog/deregister", {"Node": "ext", "ServiceID": "doomed"}),
    ("GET", "/v1/catalog/node-services/{node}"): Case("read", f"/v1/catalog/node-services/{NODE}"),
    ("GET", "/v1/catalog/node/{node}"): Case("read", f"/v1/catalog/node/{NODE}"),
    ("GET", "/v1/catalog/nodes"): Case("read", "/v1/catalog/nodes"),
    ("PUT", "/v1/catalog/register"): Case("write", "/v1/catalog/register", {"Node": "ext", "Address": "10.0.0.9", "Service": _svc("ext-svc")}),
    ("GET", "/v1/catalog/service/{service}"): Case("read", "/v1/catalog/service/web"),
    ("GET", "/v1/catalog/services"): Case("read", "/v1/catalog/services"),
    ("GET", "/v1/health/checks/{service}"): Case("read", "/v1/health/checks/web"),
    ("GET", "/v1/health/connect/{service}"): Case("read", "/v1/health/connect/web"),
    ("GET", "/v1/health/node/{node}"): Case("read", f"/v1/health/node/{NODE}"),
    ("GET", "/v1/health/service/{service}"): Case("read", "/v1/health/service/web"),
    ("GET", "/v1/health/state/{state}"): Case("read", "/v1/health/state/any"),
    ("GET", "/v1/internal/debug/state-checksum"): Case("read", "/v1/internal/debug/state-checksum"),
    # ---- config entries, Connect CA, intentions
    ("PUT", "/v1/config"): Case("write", "/v1/config", {"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
    ("GET", "/v1/config/{kind}"): Case("read", "/v1/config/service-defaults"),
    ("GET", "/v1/config/{kind}/{name}"): Case("read", "/v1/config/service-defaults/web"),
    ("DELETE", "/v1/config/{kind}/{name}"): Case("write", "/v1/config/service-defaults/doomed"),
    ("GET", "/v1/connect/ca/configuration"): Case("write", "/v1/connect/ca/configuration"),  # may hold the CA key
    ("PUT", "/v1/connect/ca/configuration"): Case("write", "/v1/connect/ca/configuration", {"Provider": "consul", "Config": {"LeafCertTTL": "72h"}}),
    ("GET", "/v1/connect/ca/roots"): Case("open", "/v1/connect/ca/roots"),
    ("GET", "/v1/connect/intentions"): Case("read", "/v1/connect/intentions"),
    ("POST", "/v1/connect/intentions"): Case("write", "/v1/connect/intentions", {"SourceName": "api", "DestinationName": "cache", "Action": "allow"}),
    ("GET", "/v1/connect/intentions/check"): Case("read", "/v1/connect/intentions/check?source=web&destination=db"),
    ("GET", "/v1/connect/intentions/exact"): Case("read", "/v1/connect/intentions/exact?source=web&destination=db"),
    ("PUT", "/v1/connect/intentions/exact"): Case("write", "/v1/connect/intentions/exact?source=api2&destination=cache2", {"Action": "allow"}),
    ("DELETE", "/v1/connect/intentions/exact"): Case("write", "/v1/connect/intentions/exact?source=gone&destination=db"),
    ("GET", "/v1/connect/intentions/match"): Case("read", "/v1/connect/intentions/match?by=destination&name=db"),
    ("GET", "/v1/connect/intentions/{intention_id}"): Case("read", "/v1/connect/intentions/{intention}"),
    ("PUT", "/v1/connect/intentions/{intention_id}"): Case("write", "/v1/connect/intentions/{intention}", {"SourceName": "web", "DestinationName": "db", "Action": "allow"}),
    ("DELETE", "/v1/connect/intentions/{intention_id}"): Case("write", "/v1/connect/intentions/{doomed_intention}"),
    # ---- events, KV, operator, queries, sessions, snapshots, status, txn
    ("PUT", "/v1/event/fire/{name}"): Case("write", "/v1/event/fire/deploy"),
    ("GET", "/v1/event/list"): Case("read", "/v1/event/list"),
    ("GET", "/v1/kv/{key}"): Case("read", "/v1/kv/app/config"),
    ("PUT", "/v1/kv/{key}"): Case("write", "/v1/kv/app/other", "v"),
    ("DELETE", "/v1/kv/{key}"): Case("write", "/v1/kv/app/doomed"),
    ("GET", "/v1/operator/raft/configuration"): Case("read", "/v1/operator/raft/configuration"),
    ("DELETE", "/v1/operator/raft/peer"): Case("write", "/v1/operator/raft/peer?address=127.0.0.1:1"),
    ("GET", "/v1/query"): Case("read", "/v1/query"),
    ("POST", "/v1/query"): Case("write", "/v1/query", {"Name": "q-new", "Service": {"Service": "web"}}),
    ("GET", "/v1/query/{query_id}"): Case("read", "/v1/query/{query}"),
    ("PUT", "/v1/query/{query_id}"): Case("write", "/v1/query/{query}", {"Name": "web-query", "Service": {"Service": "web"}}),
    ("DELETE", "/v1/query/{query_id}"): Case("write", "/v1/query/{doomed_query}"),
    ("GET", "/v1/query/{query_id}/execute"): Case("read", "/v1/query/{query}/execute"),
    ("GET", "/v1/query/{query_id}/explain"): Case("read", "/v1/query/{query}/explain"),
    ("PUT", "/v1/session/create"): Case("write", "/v1/session/create", {"Name": "s-new"}),
    ("PUT", "/v1/session/destroy/{session_id}"): Case("write", "/v1/session/destroy/{doomed_session}"),
    ("GET", "/v1/session/info/{session_id}"): Case("read", "/v1/session/info/{session}"),
    ("GET", "/v1/session/list"): Case("read", "/v1/session/list"),
    ("GET", "/v1/session/node/{node}"): Case("read", f"/v1/session/node/{NODE}"),
    ("PUT", "/v1/session/renew/{session_id}"): Case("write", "/v1/session/renew/{session}"),
    ("GET", "/v1/snapshot"): Case("write", "/v1/snapshot"),
    ("PUT", "/v1/snapshot"): Case("write", "/v1/snapshot", "not a snapshot"),
    ("GET", "/v1/status/leader"): Case("open", "/v1/status/leader"),
    ("GET", "/v1/status/peers"): Case("open", "/v1/status/peers"),
    ("PUT", "/v1/txn"): Case("write", "/v1/txn", [{"KV": {"Verb": "set", "Key": "app/txn", "Value": ""}}]),
}


# ------------------------------------------------------------------ the agent and its objects


@pytest.fixture(scope="module")
async def acl_api(tmp_path_factory: pytest.TempPathFactory, anyio_backend: str) -> Any:
    """An in-process ACL-enabled dev agent (default deny), its app, and the objects the cases name."""
    from proconsul.agent import config
    from proconsul.agent.agent import Agent
    from proconsul.api.app import build_app

    workdir: Path = tmp_path_factory.mktemp("acl-routes")
    cfg_file = workdir / "acl.json"
    cfg_file.write_text(json.dumps({"acl": {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT}}}))
    (server_port,) = free_ports(1)
    flags = {"dev": True, "port_http": -1, "port_dns": -1, "port_server": server_port, "node_name": NODE}
    agent = Agent(config.build(flags, [str(cfg_file)], []))
    await agent.start()
    import anyio

    with anyio.fail_after(10):
        while not agent.server.is_leader() or not agent.server._consistent_ready:
            await anyio.sleep(0.02)
    app = build_app(agent)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as client:
        client.app = app  # type: ignore[attr-defined]
        client.ids = await _seed(client)  # type: ignore[attr-defined]
        yield client
    await agent.stop()


async def _ok(client: httpx.AsyncClient, method: str, url: str, body: Any = None) -> Any:
    r = await client.request(method, url, headers={"X-Consul-Token": MGMT}, **_content(body))
    assert r.status_code == 200, (method, url, r.status_code, r.text)
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text


def _content(body: Any) -> dict[str, Any]:
    if body is None:
        return {}
    if isinstance(body, str):
        return {"content": body.encode()}
    return {"json": body}


async def _token(client: httpx.AsyncClient, name: str, rules: str) -> str:
    policy = await _ok(client, "PUT", "/v1/acl/policy", {"Name": name, "Rules": rules})
    return (await _ok(client, "PUT", "/v1/acl/token", {"Description": name, "Policies": [{"ID": policy["ID"]}]}))["SecretID"]


async def _seed(client: httpx.AsyncClient) -> dict[str, str]:
    """What the sample URLs name: services, a check, a key, a session, an intention, a query, ACL objects."""
    import anyio

    ids: dict[str, str] = {}
    with anyio.fail_after(10):
        while (await client.get("/v1/acl/token/self", headers={"X-Consul-Token": MGMT})).status_code != 200:
            await anyio.sleep(0.05)
    ids["read"] = await _token(client, "read-all", READ_RULES)
    ids["narrow"] = await _token(client, "narrow", NARROW_RULES)
    for name in ("spare", "doomed"):
        ids[f"{name}_policy"] = (await _ok(client, "PUT", "/v1/acl/policy", {"Name": f"{name}-p", "Rules": ""}))["ID"]
        ids[f"{name}_role"] = (await _ok(client, "PUT", "/v1/acl/role", {"Name": f"{name}-role"}))["ID"]
        ids[f"{name}_token"] = (await _ok(client, "PUT", "/v1/acl/token", {"Description": name}))["AccessorID"]
    await _ok(client, "PUT", "/v1/agent/service/register", {"Name": "web", "Port": 80, "Connect": {"SidecarService": {}}})
    await _ok(client, "PUT", "/v1/agent/service/register", {"Name": "doomed", "Port": 81})
    await _ok(client, "PUT", "/v1/agent/check/register", {"Name": "ttl-check", "TTL": "600s", "ServiceID": "web"})
    await _ok(client, "PUT", "/v1/agent/check/register", {"Name": "doomed-check", "TTL": "600s"})
    for check in ("ttl-check", "doomed-check"):  # passing, so queries and health answers include web
        await _ok(client, "PUT", f"/v1/agent/check/pass/{check}")
    await _ok(client, "PUT", "/v1/kv/app/config", "v")
    await _ok(client, "PUT", "/v1/event/fire/deploy")
    await _ok(client, "PUT", "/v1/config", {"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"})
    ids["session"] = (await _ok(client, "PUT", "/v1/session/create", {"Name": "s"}))["ID"]
    ids["doomed_session"] = (await _ok(client, "PUT", "/v1/session/create", {"Name": "d"}))["ID"]
    ids["intention"] = (await _ok(client, "POST", "/v1/connect/intentions", {"SourceName": "web", "DestinationName": "db", "Action": "allow"}))["ID"]
    ids["doomed_intention"] = (await _ok(client, "POST", "/v1/connect/intentions", {"SourceName": "x", "DestinationName": "db", "Action": "deny"}))["ID"]
    ids["query"] = (await _ok(client, "POST", "/v1/query", {"Name": "web-query", "Service": {"Service": "web"}}))["ID"]
    ids["doomed_query"] = (await _ok(client, "POST", "/v1/query", {"Name": "doomed-query", "Service": {"Service": "web"}}))["ID"]
    return ids


# ------------------------------------------------------------------ the tests


async def test_every_route_has_an_acl_case(acl_api):
    from proconsul.api.app import route_table

    served = {(m, path) for path, methods in route_table(acl_api.app) for m in methods}
    missing = sorted(served - set(CASES))
    assert not missing, f"routes without an ACL case (add a row to CASES and enforce its permission): {missing}"
    assert not sorted(set(CASES) - served), "CASES names routes the app no longer serves"


def _refused(r: httpx.Response) -> bool:
    return r.status_code == 403 or (r.status_code == 409 and "Permission denied" in r.text)


def _filtered(r: httpx.Response) -> bool:
    return r.headers.get("x-consul-results-filtered-by-acls") == "true"


@pytest.mark.parametrize("method,route", sorted(CASES))
async def test_route_enforces_its_acl(acl_api, method, route):
    case = CASES[(method, route)]
    url = case.url.format(**acl_api.ids)
    ids = acl_api.ids

    async def call(token: str | None) -> httpx.Response:
        headers = {"X-Consul-Token": token} if token is not None else {}
        return await acl_api.request(method, url, headers=headers, **_content(case.body))

    tokens = {"anonymous": None, "read": ids["read"], "narrow": ids["narrow"]}
    if case.mgmt:
        tokens["management"] = MGMT
    got = {name: await call(token) for name, token in tokens.items()}

    def show(name: str) -> str:
        r = got[name]
        return f"{name}: {r.status_code} {r.text[:160]!r} filtered={_filtered(r)}"

    report = "\n".join(show(n) for n in got)
    if case.kind == "open":
        assert not any(r.status_code == 403 for r in got.values()), report
    elif case.kind == "bootstrap":
        assert all(r.status_code == 403 for r in got.values()), report
    elif case.kind == "read":
        anon, mgmt = got["anonymous"], got["management"]
        assert _refused(anon) or (anon.status_code in (200, 404) and not _filtered(anon) and anon.content != mgmt.content), report
        assert _refused(got["narrow"]) or _filtered(got["narrow"]), report
        for name in ("read", "management"):
            if name in got:
                assert got[name].status_code != 403 and not _filtered(got[name]), report
                assert got[name].status_code < 500, report
    elif case.kind == "write":
        for name in ("anonymous", "read", "narrow"):
            assert _refused(got[name]), report
            assert "Permission denied" in got[name].text or "ACL not found" in got[name].text, report
        if "management" in got:
            assert not _refused(got["management"]) and got["management"].status_code < 500, report
    else:
        raise AssertionError(f"unknown kind {case.kind}")


async def test_refused_writes_change_nothing(acl_api):
    """A 403 write leaves the store as it was: the key, the service, the intention are untouched."""
    ids = acl_api.ids
    before = (await acl_api.get("/v1/kv/app/config", headers={"X-Consul-Token": MGMT})).json()
    for token in (None, ids["read"], ids["narrow"]):
        h = {"X-Consul-Token": token} if token else {}
        assert (await acl_api.put("/v1/kv/app/config", content=b"evil", headers=h)).status_code == 403
        assert (await acl_api.delete("/v1/kv/app", params={"recurse": ""}, headers=h)).status_code == 403
    assert (await acl_api.get("/v1/kv/app/config", headers={"X-Consul-Token": MGMT})).json() == before


async def test_narrow_token_reaches_its_own(acl_api):
    """The narrowly scoped token writes and reads what its rules name, and sees only that in lists."""
    h = {"X-Consul-Token": acl_api.ids["narrow"]}
    assert (await acl_api.put("/v1/kv/narrow/a", content=b"1", headers=h)).status_code == 200
    assert (await acl_api.get("/v1/kv/narrow/a", headers=h)).status_code == 200
    assert (await acl_api.put("/v1/kv/narrowly", content=b"1", headers=h)).status_code == 403
    keys = await acl_api.get("/v1/kv/", params={"keys": ""}, headers=h)
    assert keys.status_code == 200 and keys.json() == ["narrow/a"] and _filtered(keys)
    assert (await acl_api.put("/v1/agent/service/register", json=_svc("narrow"), headers=h)).status_code == 200
    assert (await acl_api.put("/v1/event/fire/narrow", headers=h)).status_code == 200
    r = await acl_api.post("/v1/connect/intentions", json={"SourceName": "web", "DestinationName": "narrow", "Action": "deny"}, headers=h)
    assert r.status_code == 200, r.text
    listed = await acl_api.get("/v1/connect/intentions", headers=h)
    assert [i["DestinationName"] for i in listed.json()] == ["narrow"] and _filtered(listed)


async def test_default_acl_policy_header(acl_api):
    r = await acl_api.get("/v1/status/leader")
    assert r.headers["x-consul-default-acl-policy"] == "deny"

