"""ACLs on the catalog, health, internal and DNS, against real ACL-enabled dev agents (default_policy = deny).

Writes are vetted as Consul's vetRegisterWithACL / vetDeregisterWithACL do (403 and nothing
changed); reads are filtered per row (node:read on the node, service:read on the service) with
``X-Consul-Results-Filtered-By-ACLs: true`` when something was hidden; DNS answers with the agent's
``acl.tokens.default``.
"""

from __future__ import annotations

from typing import Any, Iterator

import dns.message
import dns.query
import dns.rcode
import pytest

from conftest import AgentProc, eventually, free_ports, start_dev_agent

MGMT = "6e0b1f3c-7d2a-4c1e-9b55-3f1a2c4d5e61"
DNS_SECRET = "2f9c4e1a-8b3d-4a6f-b2c7-9d0e1f2a3b4c"
ACL_ON = {"acl": {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT}}}
ANON_DENIED = "Permission denied: anonymous token lacks permission"

RULES = {
    # writes (service api on the w* nodes, so what the reads see stays as seeded)
    "api_write": 'service "api" { policy = "write" }',
    "w_nodes_write": 'node_prefix "w" { policy = "write" }\nservice "api" { policy = "write" }',
    "w2_node_write": 'node "w2" { policy = "write" }',
    "proxy_write": 'service "api-sidecar-proxy" { policy = "write" }\nnode_prefix "" { policy = "write" }',
    # reads
    "reader": 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }',
    "web_reader": 'service "web" { policy = "read" }\nnode_prefix "" { policy = "read" }',
    "n1_reader": 'node "n1" { policy = "read" }\nservice_prefix "" { policy = "read" }',
    "proxy_reader": 'service "web-sidecar-proxy" { policy = "read" }\nnode_prefix "" { policy = "read" }',
    "operator_reader": 'operator = "read"',
}


def _h(token: str | None) -> dict[str, str]:
    return {"X-Consul-Token": token} if token else {}


def _filtered(r: Any) -> bool:
    return r.headers.get("x-consul-results-filtered-by-acls") == "true"


def _ok(agent: AgentProc, method: str, path: str, body: Any = None) -> Any:
    r = agent.http.request(method, path, json=body, headers=_h(MGMT))
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def make_token(agent: AgentProc, name: str, rules: str, secret: str = "") -> str:
    """A policy with ``rules`` and a token linked to it, made with the management token; returns its secret."""
    policy = _ok(agent, "PUT", "/v1/acl/policy", {"Name": name, "Rules": rules})
    body: dict[str, Any] = {"Description": name, "Policies": [{"ID": policy["ID"]}]}
    if secret:
        body["SecretID"] = secret
    return _ok(agent, "PUT", "/v1/acl/token", body)["SecretID"]


def wait_acls(agent: AgentProc) -> None:
    eventually(lambda: agent.http.get("/v1/acl/token/self", headers=_h(MGMT)).status_code == 200, what="initial management token")


def register(agent: AgentProc, body: dict, token: str | None = MGMT) -> Any:
    return agent.http.put("/v1/catalog/register", json=body, headers=_h(token))


def deregister(agent: AgentProc, body: dict, token: str | None = MGMT) -> Any:
    return agent.http.put("/v1/catalog/deregister", json=body, headers=_h(token))


def seed(agent: AgentProc) -> None:
    """n1: web (+ a check), its sidecar proxy, a node check; n2: web, db (+ a check), a node check."""
    n1 = {"Node": "n1", "Address": "10.0.0.1"}
    n2 = {"Node": "n2", "Address": "10.0.0.2"}
    for body in (
        {**n1, "Service": {"ID": "web1", "Service": "web", "Port": 80},
         "Checks": [{"CheckID": "n1-alive", "Name": "n1 alive", "Status": "passing"},
                    {"CheckID": "web-alive", "Name": "web alive", "Status": "passing", "ServiceID": "web1"}]},
        {**n1, "Service": {"ID": "web1-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
                           "Proxy": {"DestinationServiceName": "web", "DestinationServiceID": "web1"}}},
        {**n2, "Service": {"ID": "web2", "Service": "web", "Port": 80}},
        {**n2, "Service": {"ID": "db1", "Service": "db", "Port": 5432},
         "Checks": [{"CheckID": "n2-alive", "Name": "n2 alive", "Status": "passing"},
                    {"CheckID": "db-alive", "Name": "db alive", "Status": "passing", "ServiceID": "db1"}]},
    ):
        assert register(agent, body).status_code == 200


@pytest.fixture(scope="module")
def acl_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProc, dict[str, str]]]:
    agent = start_dev_agent(tmp_path_factory.mktemp("acl-catalog"), "aclcat", ACL_ON)
    try:
        wait_acls(agent)
        tokens = {name: make_token(agent, name, rules) for name, rules in RULES.items()}
        seed(agent)
        yield agent, tokens
    finally:
        agent.stop()


def node_of(agent: AgentProc, name: str) -> Any:
    return _ok(agent, "GET", f"/v1/catalog/node/{name}")


# ---------------------------------------------------------------- Catalog.Register


def test_register_needs_service_write_then_node_write(acl_agent):
    agent, tok = acl_agent
    body = {"Node": "w1", "Address": "10.9.0.1", "Service": {"ID": "api-w1", "Service": "api", "Port": 80}}
    r = register(agent, body, None)
    assert r.status_code == 403 and r.text.startswith(f"{ANON_DENIED} 'service:write' on \"api\""), r.text
    # service:write on api is not enough for a node that does not exist yet.
    r = register(agent, body, tok["api_write"])
    assert r.status_code == 403 and "lacks permission 'node:write' on \"w1\"" in r.text, r.text
    assert node_of(agent, "w1") is None
    # node:write on w* and service:write on api register it.
    assert register(agent, body, tok["w_nodes_write"]).status_code == 200
    assert set(node_of(agent, "w1")["Services"]) == {"api-w1"}


def test_register_unchanged_node_needs_no_node_write(acl_agent):
    agent, tok = acl_agent
    base = {"Node": "w3", "Address": "10.9.0.3", "NodeMeta": {"rack": "a"}}
    assert register(agent, base).status_code == 200
    # Re-posting the same node info with a service only needs service:write (Consul's ChangesNode).
    r = register(agent, {**base, "Service": {"ID": "api-w3", "Service": "api", "Port": 80}}, tok["api_write"])
    assert r.status_code == 200, r.text
    # Changing the node's address or meta does need node:write; nothing changes when refused.
    for change in ({"Address": "10.9.9.9"}, {"NodeMeta": {"rack": "b"}}):
        r = register(agent, {**base, **change, "Service": {"ID": "api-w3", "Service": "api", "Port": 80}}, tok["api_write"])
        assert r.status_code == 403 and "'node:write' on \"w3\"" in r.text, r.text
    node = node_of(agent, "w3")["Node"]
    assert (node["Address"], node["Meta"]) == ("10.9.0.3", {"rack": "a"})
    # SkipNodeUpdate registers the service without touching the node, so no node:write either.
    r = register(agent, {**base, "Address": "10.9.9.9", "SkipNodeUpdate": True,
                         "Service": {"ID": "api-w3b", "Service": "api", "Port": 81}}, tok["api_write"])
    assert r.status_code == 200, r.text
    assert node_of(agent, "w3")["Node"]["Address"] == "10.9.0.3"


def test_register_other_service_or_node_check_refused(acl_agent):
    agent, tok = acl_agent
    base = {"Node": "w4", "Address": "10.9.0.4"}
    assert register(agent, {**base, "Service": {"ID": "cache-w4", "Service": "cache", "Port": 5432}}).status_code == 200
    before = node_of(agent, "w4")
    # Another service's name.
    r = register(agent, {**base, "Service": {"ID": "x", "Service": "cache", "Port": 1}}, tok["api_write"])
    assert r.status_code == 403 and "'service:write' on \"cache\"" in r.text, r.text
    # Overwriting cache's instance by ID as "api" is deleting a cache instance: service:write on cache.
    r = register(agent, {**base, "Service": {"ID": "cache-w4", "Service": "api", "Port": 80}}, tok["api_write"])
    assert r.status_code == 403 and "'service:write' on \"cache\"" in r.text, r.text
    # A node-level check needs node:write; a check on cache's instance needs service:write on cache.
    r = register(agent, {**base, "Check": {"CheckID": "w4-alive", "Name": "alive"}}, tok["api_write"])
    assert r.status_code == 403 and "'node:write' on \"w4\"" in r.text, r.text
    r = register(agent, {**base, "Check": {"CheckID": "cache-w4-alive", "Name": "cache", "ServiceID": "cache-w4"}}, tok["api_write"])
    assert r.status_code == 403 and "'service:write' on \"cache\"" in r.text, r.text
    assert node_of(agent, "w4") == before
    assert _ok(agent, "GET", "/v1/health/node/w4") == []
    # An unknown service ID for a check is refused as Consul refuses it.
    r = register(agent, {**base, "Check": {"CheckID": "c", "Name": "c", "ServiceID": "nope"}}, tok["api_write"])
    assert r.status_code == 400 and "Unknown service ID 'nope' for check ID 'c'" in r.text, r.text
    # Management may do all of it.
    r = register(agent, {**base, "Check": {"CheckID": "w4-alive", "Name": "alive", "Status": "passing"}})
    assert r.status_code == 200
    assert [c["CheckID"] for c in _ok(agent, "GET", "/v1/health/node/w4")] == ["w4-alive"]


def test_register_proxy_needs_write_on_its_destination(acl_agent):
    agent, tok = acl_agent
    body = {"Node": "w5", "Address": "10.9.0.5",
            "Service": {"ID": "p", "Service": "api-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
                        "Proxy": {"DestinationServiceName": "api"}}}
    r = register(agent, body, tok["proxy_write"])
    assert r.status_code == 403 and "'service:write' on \"api\"" in r.text, r.text
    assert node_of(agent, "w5") is None
    assert register(agent, body).status_code == 200


# ---------------------------------------------------------------- Catalog.Deregister


def test_deregister_by_service_write_or_node_write(acl_agent):
    agent, tok = acl_agent
    base = {"Node": "w2", "Address": "10.9.0.2"}
    assert register(agent, {**base, "Service": {"ID": "api-w2", "Service": "api", "Port": 80}}).status_code == 200
    assert register(agent, {**base, "Service": {"ID": "cache-w2", "Service": "cache", "Port": 5432},
                            "Checks": [{"CheckID": "w2-alive", "Name": "a", "Status": "passing"},
                                       {"CheckID": "cache-w2-alive", "Name": "c", "Status": "passing", "ServiceID": "cache-w2"}]}).status_code == 200
    # Anonymous: nothing.
    for body in ({"Node": "w2"}, {"Node": "w2", "ServiceID": "api-w2"}, {"Node": "w2", "CheckID": "w2-alive"}):
        r = deregister(agent, body, None)
        assert r.status_code == 403 and r.text.startswith(ANON_DENIED), (body, r.text)
    # service:write on api: its own instance only; not cache's, not a node check, not the node.
    for body, lacks in (({"Node": "w2", "ServiceID": "cache-w2"}, "'service:write' on \"cache\""),
                        ({"Node": "w2", "CheckID": "cache-w2-alive"}, "'service:write' on \"cache\""),
                        ({"Node": "w2", "CheckID": "w2-alive"}, "'node:write' on \"w2\""),
                        ({"Node": "w2"}, "'node:write' on \"w2\"")):
        r = deregister(agent, body, tok["api_write"])
        assert r.status_code == 403 and lacks in r.text, (body, r.text)
    assert set(node_of(agent, "w2")["Services"]) == {"api-w2", "cache-w2"}
    assert {c["CheckID"] for c in _ok(agent, "GET", "/v1/health/node/w2")} == {"w2-alive", "cache-w2-alive"}
    # An unknown ID tells nothing to a caller without node:write: refused like the node.
    for body in ({"Node": "w2", "ServiceID": "nope"}, {"Node": "w2", "CheckID": "nope"}, {"Node": "nowhere", "ServiceID": "api-w2"}):
        r = deregister(agent, body, tok["api_write"])
        assert r.status_code == 403 and f"'node:write' on \"{body['Node']}\"" in r.text, (body, r.text)
    assert deregister(agent, {"Node": "w2", "ServiceID": "api-w2"}, tok["api_write"]).status_code == 200
    assert set(node_of(agent, "w2")["Services"]) == {"cache-w2"}
    # node:write on w2 removes any service or check on it, then the node itself.
    assert deregister(agent, {"Node": "w2", "CheckID": "cache-w2-alive"}, tok["w2_node_write"]).status_code == 200
    assert deregister(agent, {"Node": "w2", "ServiceID": "cache-w2"}, tok["w2_node_write"]).status_code == 200
    assert deregister(agent, {"Node": "w2"}, tok["w2_node_write"]).status_code == 200
    assert node_of(agent, "w2") is None


# ---------------------------------------------------------------- catalog reads


def _get(agent: AgentProc, path: str, token: str | None) -> tuple[Any, bool]:
    r = agent.http.get(path, headers=_h(token))
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json(), _filtered(r)


def test_catalog_nodes_filtered_by_node_read(acl_agent):
    agent, tok = acl_agent
    assert _get(agent, "/v1/catalog/nodes", None) == ([], False)
    nodes, filtered = _get(agent, "/v1/catalog/nodes", tok["n1_reader"])
    assert [n["Node"] for n in nodes] == ["n1"] and filtered
    for token in (tok["reader"], MGMT):
        nodes, filtered = _get(agent, "/v1/catalog/nodes", token)
        assert {"n1", "n2"} <= {n["Node"] for n in nodes} and not filtered
    # ?filter runs first: rows it drops do not count as hidden by ACLs.
    nodes, filtered = _get(agent, "/v1/catalog/nodes?filter=Node%20%3D%3D%20%22n1%22", tok["n1_reader"])
    assert [n["Node"] for n in nodes] == ["n1"] and not filtered


def test_catalog_services_filtered_by_service_read(acl_agent):
    agent, tok = acl_agent
    assert _get(agent, "/v1/catalog/services", None) == ({}, False)
    assert _get(agent, "/v1/catalog/services", tok["web_reader"]) == ({"web": []}, True)
    services, filtered = _get(agent, "/v1/catalog/services", tok["reader"])
    assert {"web", "db", "web-sidecar-proxy"} <= set(services) and not filtered


def test_catalog_service_instances_need_node_and_service_read(acl_agent):
    agent, tok = acl_agent
    assert _get(agent, "/v1/catalog/service/web", None) == ([], False)
    rows, filtered = _get(agent, "/v1/catalog/service/web", tok["n1_reader"])
    assert [(s["Node"], s["ServiceID"]) for s in rows] == [("n1", "web1")] and filtered
    for token in (tok["web_reader"], tok["reader"], MGMT):
        rows, filtered = _get(agent, "/v1/catalog/service/web", token)
        assert {("n1", "web1"), ("n2", "web2")} <= {(s["Node"], s["ServiceID"]) for s in rows} and not filtered
    assert _get(agent, "/v1/catalog/service/db", tok["web_reader"]) == ([], True)


def test_catalog_connect_needs_read_on_the_service_and_its_proxies(acl_agent):
    agent, tok = acl_agent
    assert _get(agent, "/v1/catalog/connect/web", None) == ([], False)
    # Read on web but not on its proxy's name: the proxy row is hidden.
    assert _get(agent, "/v1/catalog/connect/web", tok["web_reader"]) == ([], True)
    # Read on the proxy but not on web: Consul answers nothing for a service the token cannot read.
    assert _get(agent, "/v1/catalog/connect/web", tok["proxy_reader"]) == ([], True)
    rows, filtered = _get(agent, "/v1/catalog/connect/web", tok["reader"])
    assert "web1-proxy" in {s["ServiceID"] for s in rows} and not filtered


def test_catalog_node_hidden_without_node_read(acl_agent):
    agent, tok = acl_agent
    assert _get(agent, "/v1/catalog/node/n1", None) == (None, False)
    assert _get(agent, "/v1/catalog/node-services/n1", None) == ({"Node": None, "Services": None}, False)
    # An unknown node is null without the header: nothing was hidden.
    assert _get(agent, "/v1/catalog/node/nope", None) == (None, False)
    found, filtered = _get(agent, "/v1/catalog/node/n1", tok["web_reader"])
    assert found["Node"]["Node"] == "n1" and set(found["Services"]) == {"web1"} and filtered
    found, filtered = _get(agent, "/v1/catalog/node-services/n1", tok["web_reader"])
    assert found["Node"]["Node"] == "n1" and [s["ID"] for s in found["Services"]] == ["web1"] and filtered
    found, filtered = _get(agent, "/v1/catalog/node/n1", tok["reader"])
    assert set(found["Services"]) == {"web1", "web1-proxy"} and not filtered
    found, filtered = _get(agent, "/v1/catalog/node-services/n1", MGMT)
    assert {s["ID"] for s in found["Services"]} == {"web1", "web1-proxy"} and not filtered


def test_datacenters_need_no_token(acl_agent):
    agent, _ = acl_agent
    r = agent.http.get("/v1/catalog/datacenters")
    assert (r.status_code, r.json()) == (200, ["dc1"])


def test_refused_token_is_acl_not_found(acl_agent):
    agent, _ = acl_agent
    r = agent.http.get("/v1/catalog/services", headers=_h("00000000-dead-beef-0000-000000000000"))
    assert (r.status_code, r.text) == (403, "ACL not found")


# ---------------------------------------------------------------- health reads


def test_health_service_filtered(acl_agent):
    agent, tok = acl_agent
    for path in ("/v1/health/service/web", "/v1/health/connect/web"):
        assert _get(agent, path, None) == ([], False)
    rows, filtered = _get(agent, "/v1/health/service/web", tok["n1_reader"])
    assert [(e["Node"]["Node"], e["Service"]["ID"]) for e in rows] == [("n1", "web1")] and filtered
    # The instance's checks come with it (Consul filters instances, not the checks inside them).
    assert {c["CheckID"] for c in rows[0]["Checks"]} == {"n1-alive", "web-alive"}
    rows, filtered = _get(agent, "/v1/health/service/web?passing", tok["reader"])
    assert {e["Service"]["ID"] for e in rows} == {"web1", "web2"} and not filtered
    assert _get(agent, "/v1/health/connect/web", tok["proxy_reader"]) == ([], True)
    rows, filtered = _get(agent, "/v1/health/connect/web", MGMT)
    assert "web1-proxy" in {e["Service"]["ID"] for e in rows} and not filtered


def test_health_checks_need_node_read_and_service_read(acl_agent):
    agent, tok = acl_agent
    for path in ("/v1/health/node/n2", "/v1/health/checks/db", "/v1/health/state/any", "/v1/health/state/passing"):
        assert _get(agent, path, None) == ([], False), path
    # Node read everywhere, service read on web only: node checks and web's, never db's.
    checks, filtered = _get(agent, "/v1/health/node/n2", tok["web_reader"])
    assert [c["CheckID"] for c in checks] == ["n2-alive"] and filtered
    assert _get(agent, "/v1/health/checks/db", tok["web_reader"]) == ([], True)
    checks, filtered = _get(agent, "/v1/health/state/passing", tok["web_reader"])
    ids = {c["CheckID"] for c in checks}
    assert {"n1-alive", "n2-alive", "web-alive"} <= ids and "db-alive" not in ids and filtered
    # Service read everywhere, node read on n1 only: n1's checks.
    checks, filtered = _get(agent, "/v1/health/state/any", tok["n1_reader"])
    assert {c["CheckID"] for c in checks} == {"n1-alive", "web-alive"} and filtered
    for token in (tok["reader"], MGMT):
        checks, filtered = _get(agent, "/v1/health/checks/db", token)
        assert [c["CheckID"] for c in checks] == ["db-alive"] and not filtered
        checks, filtered = _get(agent, "/v1/health/node/n2", token)
        assert {c["CheckID"] for c in checks} == {"n2-alive", "db-alive"} and not filtered


# ---------------------------------------------------------------- internal


def test_state_checksum_needs_operator_read(acl_agent):
    agent, tok = acl_agent
    r = agent.http.get("/v1/internal/debug/state-checksum")
    assert r.status_code == 403 and r.text.startswith(f"{ANON_DENIED} 'operator:read'"), r.text
    r = agent.http.get("/v1/internal/debug/state-checksum", headers=_h(tok["reader"]))
    assert r.status_code == 403 and "lacks permission 'operator:read'" in r.text, r.text
    for token in (tok["operator_reader"], MGMT):
        r = agent.http.get("/v1/internal/debug/state-checksum", headers=_h(token))
        assert r.status_code == 200 and len(r.json()["Checksum"]) == 64, r.text


# ---------------------------------------------------------------- DNS


def _dns_agent(workdir: Any, name: str, default_token: str = "") -> tuple[AgentProc, int]:
    http, server, dns_port = free_ports(3)
    acl = {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT}}
    if default_token:
        acl["tokens"]["default"] = default_token
    cfg = {"node_name": name, "ports": {"http": http, "server": server, "dns": dns_port}, "acl": acl}
    return AgentProc(name, workdir, cfg).start(["-dev"]).wait_ready(), dns_port


def _ask(port: int, name: str, rtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rtype), "127.0.0.1", port=port, timeout=5)


def _register_web(agent: AgentProc) -> None:
    assert register(agent, {"Node": "n1", "Address": "10.0.0.1", "Service": {"ID": "web1", "Service": "web", "Port": 80}}).status_code == 200


def test_dns_without_default_token_is_anonymous(tmp_path):
    agent, port = _dns_agent(tmp_path, "dnsanon")
    try:
        wait_acls(agent)
        _register_web(agent)
        # The catalog has it (management sees it), but DNS reads as anonymous under default deny.
        assert _get(agent, "/v1/health/service/web", MGMT)[0]
        for name in ("web.service.consul.", "n1.node.consul."):
            reply = _ask(port, name)
            assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.answer, (name, reply)
    finally:
        agent.stop()


def test_dns_answers_with_the_default_token(tmp_path):
    agent, port = _dns_agent(tmp_path, "dnsdefault", DNS_SECRET)
    try:
        wait_acls(agent)
        make_token(agent, "dns", 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }', secret=DNS_SECRET)
        _register_web(agent)
        reply = eventually(lambda: (lambda m: m if m.rcode() == dns.rcode.NOERROR and m.answer else None)(_ask(port, "web.service.consul.")))
        assert [rr.address for rr in reply.answer[0]] == ["10.0.0.1"]
        reply = _ask(port, "n1.node.consul.")
        assert reply.rcode() == dns.rcode.NOERROR and [rr.address for rr in reply.answer[0]] == ["10.0.0.1"]
    finally:
        agent.stop()
