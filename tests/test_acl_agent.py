"""ACLs on /v1/agent/*: Consul's agent endpoint rules, the agent token, leaf certificates and authorize.

An ACL-enabled dev agent (default deny) answers the HTTP checks: each refusal is
asked of anonymous and of a narrowly scoped token, then allowed with the rule
that grants it and with management, and a refused write is shown to change
nothing. The server's ConnectCA.Sign is asked directly over server RPC. A
server + client cluster shows the agent token at work: a client without a
usable agent token cannot write its node (a WARN naming the permission, retried),
and does once a valid one is set through /v1/agent/token/agent; a service syncs
with the token it was registered with.
"""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

from conftest import AgentProc, Cluster, eventually, start_dev_agent

MGMT = "3d0c8b7a-5e41-4f2a-9b6c-7a8e9f0a1b21"
NODE = "aclagent"
ACL_ON = {"acl": {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT}}}


def _h(token: str | None) -> dict[str, str]:
    return {"X-Consul-Token": token} if token is not None else {}


def _anon(perm: str, name: str = "") -> str:
    on = f' on "{name}"' if name else ""
    return (f"Permission denied: anonymous token lacks permission '{perm}'{on}. "
            "The anonymous token is used implicitly when a request does not specify a token.")


class Tok:
    """A token made over HTTP with one policy: its secret and its AccessorID."""

    def __init__(self, agent: AgentProc, name: str, rules: str) -> None:
        r = agent.http.put("/v1/acl/policy", headers=_h(MGMT), json={"Name": name, "Rules": rules})
        assert r.status_code == 200, r.text
        r = agent.http.put("/v1/acl/token", headers=_h(MGMT), json={"Description": name, "Policies": [{"ID": r.json()["ID"]}]})
        assert r.status_code == 200, r.text
        self.secret, self.accessor = r.json()["SecretID"], r.json()["AccessorID"]

    def denied(self, perm: str, name: str = "") -> str:
        on = f' on "{name}"' if name else ""
        return f"Permission denied: token with AccessorID '{self.accessor}' lacks permission '{perm}'{on}"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    a = start_dev_agent(tmp_path_factory.mktemp("aclagent"), NODE, ACL_ON)
    eventually(lambda: a.http.get("/v1/acl/token/self", headers=_h(MGMT)).status_code == 200, what="management token")
    yield a
    a.stop()


@pytest.fixture(scope="module")
def toks(agent: AgentProc) -> dict[str, Tok]:
    rules = {
        "agent_read": f'agent "{NODE}" {{ policy = "read" }}',
        "agent_write": f'agent "{NODE}" {{ policy = "write" }}',
        "other_agent": 'agent "other" { policy = "write" }\nnode "other" { policy = "write" }',
        "node_write": f'node "{NODE}" {{ policy = "write" }}',
        "node_read": f'node "{NODE}" {{ policy = "read" }}',
        "operator": 'operator = "write"',
        "read_all": 'node_prefix "" { policy = "read" }\nservice_prefix "" { policy = "read" }\nagent_prefix "" { policy = "read" }\nacl = "read"',
        "web_read": 'service "web" { policy = "read" }',
        "web_write": 'service "web" { policy = "write" }',
        "pay": 'service "pay" { policy = "write" }',
        "pay_prefix": 'service_prefix "pay" { policy = "write" }',
        "cache": 'service "cache" { policy = "write" }',
        "acl_write": 'acl = "write"',
    }
    return {name: Tok(agent, name, r) for name, r in rules.items()}


def _mgmt(agent: AgentProc, method: str, path: str, **kw: Any) -> httpx.Response:
    r = agent.http.request(method, path, headers=_h(MGMT), **kw)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r


# ------------------------------------------------------------------ self, metrics, membership


def test_self_and_metrics_need_agent_read(agent, toks):
    for path in ("/v1/agent/self", "/v1/agent/metrics"):
        r = agent.http.get(path)
        assert (r.status_code, r.text) == (403, _anon("agent:read", NODE)), path
        r = agent.http.get(path, headers=_h(toks["other_agent"].secret))
        assert (r.status_code, r.text) == (403, toks["other_agent"].denied("agent:read", NODE)), path
        assert agent.http.get(path, headers=_h("no-such-token")).text == "ACL not found"
        for token in (toks["agent_read"].secret, MGMT):
            assert agent.http.get(path, headers=_h(token)).status_code == 200, path
    r = agent.http.get("/v1/agent/metrics", params={"format": "prometheus"}, headers=_h(toks["agent_read"].secret))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert agent.http.get("/v1/agent/self", headers=_h(toks["agent_read"].secret)).json()["Config"]["NodeName"] == NODE


def test_reload_join_leave_need_agent_write(agent, toks):
    for method, path in (("PUT", "/v1/agent/reload"), ("PUT", "/v1/agent/join/127.0.0.1:1"), ("PUT", "/v1/agent/leave")):
        r = agent.http.request(method, path)
        assert (r.status_code, r.text) == (403, _anon("agent:write", NODE)), path
        r = agent.http.request(method, path, headers=_h(toks["agent_read"].secret))
        assert (r.status_code, r.text) == (403, toks["agent_read"].denied("agent:write", NODE)), path
    assert agent.running() and agent.leader()  # the refused leave left it running
    assert agent.http.put("/v1/agent/reload", headers=_h(toks["agent_write"].secret)).status_code == 200
    r = agent.http.put("/v1/agent/join/127.0.0.1:1", headers=_h(toks["agent_write"].secret))
    assert r.status_code == 400 and r.text.startswith("Failed to join 127.0.0.1:1")  # past the ACL check


def test_force_leave_needs_operator_write(agent, toks):
    r = agent.http.put("/v1/agent/force-leave/ghost", headers=_h(toks["agent_write"].secret))
    assert (r.status_code, r.text) == (403, toks["agent_write"].denied("operator:write"))
    assert agent.http.put("/v1/agent/force-leave/ghost").text == _anon("operator:write")
    for token in (toks["operator"].secret, MGMT):
        r = agent.http.put("/v1/agent/force-leave/ghost", headers=_h(token))
        assert r.status_code == 404 and "ghost" in r.text  # allowed; there is no such node


def test_node_maintenance_needs_node_write(agent, toks):
    def maintained() -> bool:
        return "_node_maintenance" in _mgmt(agent, "GET", "/v1/agent/checks").json()

    for token, who in ((None, None), (toks["other_agent"].secret, toks["other_agent"])):
        r = agent.http.put("/v1/agent/maintenance", params={"enable": "true"}, headers=_h(token))
        want = _anon("node:write", NODE) if who is None else who.denied("node:write", NODE)
        assert (r.status_code, r.text) == (403, want)
    assert not maintained()
    # Input errors come first, as in Consul.
    assert agent.http.put("/v1/agent/maintenance").text == "Missing value for enable"
    assert agent.http.put("/v1/agent/maintenance", params={"enable": "true"}, headers=_h(toks["node_write"].secret)).status_code == 200
    assert maintained()
    assert agent.http.put("/v1/agent/maintenance", params={"enable": "false"}, headers=_h(MGMT)).status_code == 200
    assert not maintained()


def test_members_filtered_by_node_read(agent, toks):
    filtered = "x-consul-results-filtered-by-acls"
    r = agent.http.get("/v1/agent/members", headers=_h(toks["other_agent"].secret))
    assert r.status_code == 200 and r.json() == [] and r.headers[filtered] == "true"
    r = agent.http.get("/v1/agent/members")  # anonymous: filtered, but not told so (Consul masks it)
    assert r.json() == [] and filtered not in r.headers
    for token in (toks["node_read"].secret, MGMT):
        r = agent.http.get("/v1/agent/members", headers=_h(token))
        assert [m["Name"] for m in r.json()] == [NODE] and filtered not in r.headers


# ------------------------------------------------------------------ services and checks


def test_services_and_checks_filtered(agent, toks):
    _mgmt(agent, "PUT", "/v1/agent/service/register", json={"Name": "web", "Port": 80, "Check": {"TTL": "60s"}})
    _mgmt(agent, "PUT", "/v1/agent/service/register", json={"Name": "db", "Port": 5432, "Check": {"TTL": "60s"}})
    _mgmt(agent, "PUT", "/v1/agent/check/register", json={"Name": "disk", "TTL": "60s"})
    filtered = "x-consul-results-filtered-by-acls"
    web = toks["web_read"].secret
    r = agent.http.get("/v1/agent/services", headers=_h(web))
    assert list(r.json()) == ["web"] and r.headers[filtered] == "true"
    r = agent.http.get("/v1/agent/checks", headers=_h(web))
    assert list(r.json()) == ["service:web"] and r.headers[filtered] == "true"  # no node:read: "disk" is hidden
    r = agent.http.get("/v1/agent/checks", headers=_h(toks["node_read"].secret))
    assert "disk" in r.json() and "service:web" not in r.json() and "service:db" not in r.json()
    r = agent.http.get("/v1/agent/services")
    assert r.json() == {} and filtered not in r.headers
    for token in (toks["read_all"].secret, MGMT):
        r = agent.http.get("/v1/agent/services", headers=_h(token))
        assert {"web", "db"} <= set(r.json()) and filtered not in r.headers
        r = agent.http.get("/v1/agent/checks", headers=_h(token))
        assert {"service:web", "service:db", "disk"} <= set(r.json()) and filtered not in r.headers
    # ?filter still applies after the ACL filter.
    r = agent.http.get("/v1/agent/services", params={"filter": 'Service == "db"'}, headers=_h(web))
    assert r.json() == {}


def test_one_service_needs_service_read(agent, toks):
    _mgmt(agent, "PUT", "/v1/agent/service/register", json={"Name": "web", "Port": 80, "Check": {"TTL": "60s"}})
    _mgmt(agent, "PUT", "/v1/agent/service/register", json={"Name": "db", "Port": 5432, "Check": {"TTL": "60s"}})
    web = toks["web_read"]
    assert agent.http.get("/v1/agent/service/web", headers=_h(web.secret)).json()["Service"] == "web"
    r = agent.http.get("/v1/agent/service/db", headers=_h(web.secret))
    assert (r.status_code, r.text) == (403, web.denied("service:read", "db"))
    assert agent.http.get("/v1/agent/service/db").text == _anon("service:read", "db")
    r = agent.http.get("/v1/agent/service/nope")  # unknown: 404 whoever asks, as before
    assert (r.status_code, r.text) == (404, "unknown service ID: nope")


def _services(agent: AgentProc) -> dict[str, Any]:
    return _mgmt(agent, "GET", "/v1/agent/services").json()


def test_service_register_is_vetted(agent, toks):
    pay, prefix = toks["pay"], toks["pay_prefix"]
    _mgmt(agent, "PUT", "/v1/agent/service/register", json={"Name": "cache", "Port": 6379})
    before = _services(agent)
    r = agent.http.put("/v1/agent/service/register", headers=_h(pay.secret), json={"Name": "cache2", "Port": 1})
    assert (r.status_code, r.text) == (403, pay.denied("service:write", "cache2"))
    r = agent.http.put("/v1/agent/service/register", json={"Name": "pay", "Port": 1})
    assert (r.status_code, r.text) == (403, _anon("service:write", "pay"))
    # Replacing another service's registration needs write on that one too.
    r = agent.http.put("/v1/agent/service/register", headers=_h(pay.secret), json={"Name": "pay", "ID": "cache", "Port": 1})
    assert (r.status_code, r.text) == (403, pay.denied("service:write", "cache"))
    # A sidecar needs write on its own name; a proxy on its destination.
    r = agent.http.put("/v1/agent/service/register", headers=_h(pay.secret), json={"Name": "pay", "Port": 1, "Connect": {"SidecarService": {}}})
    assert (r.status_code, r.text) == (403, pay.denied("service:write", "pay-sidecar-proxy"))
    proxy = {"Name": "pay-proxy", "Kind": "connect-proxy", "Port": 21999, "Proxy": {"DestinationServiceName": "cache"}}
    r = agent.http.put("/v1/agent/service/register", headers=_h(prefix.secret), json=proxy)
    assert (r.status_code, r.text) == (403, prefix.denied("service:write", "cache"))
    assert _services(agent) == before  # nothing registered by any refusal
    assert _services(agent)["cache"]["Service"] == "cache"
    # Allowed.
    r = agent.http.put("/v1/agent/service/register", headers=_h(prefix.secret), json={"Name": "pay", "Port": 1, "Connect": {"SidecarService": {}}})
    assert r.status_code == 200, r.text
    assert {"pay", "pay-sidecar-proxy"} <= set(_services(agent))
    assert agent.http.put("/v1/agent/service/register", headers=_h(MGMT), json=proxy).status_code == 200


def test_deregister_and_service_maintenance_need_write_on_the_service(agent, toks):
    pay = toks["pay"]
    _mgmt(agent, "PUT", "/v1/agent/service/register", json={"Name": "cache", "Port": 6379})
    _mgmt(agent, "PUT", "/v1/agent/service/register", json={"Name": "pay", "ID": "pay-1", "Port": 1})
    r = agent.http.put("/v1/agent/service/deregister/cache", headers=_h(pay.secret))
    assert (r.status_code, r.text) == (403, pay.denied("service:write", "cache"))
    r = agent.http.put("/v1/agent/service/maintenance/cache", params={"enable": "true"}, headers=_h(pay.secret))
    assert (r.status_code, r.text) == (403, pay.denied("service:write", "cache"))
    assert agent.http.put("/v1/agent/service/deregister/cache").text == _anon("service:write", "cache")
    assert "cache" in _services(agent)
    assert "_service_maintenance:cache" not in _mgmt(agent, "GET", "/v1/agent/checks").json()
    r = agent.http.put("/v1/agent/service/deregister/nope", headers=_h(pay.secret))
    assert r.status_code == 404 and r.text.startswith('Unknown service ID "nope"')
    # By ID, judged on the registered name.
    assert agent.http.put("/v1/agent/service/maintenance/pay-1", params={"enable": "true"}, headers=_h(pay.secret)).status_code == 200
    assert "_service_maintenance:pay-1" in _mgmt(agent, "GET", "/v1/agent/checks").json()
    assert agent.http.put("/v1/agent/service/deregister/pay-1", headers=_h(pay.secret)).status_code == 200
    assert "pay-1" not in _services(agent)


def _checks(agent: AgentProc) -> dict[str, Any]:
    return _mgmt(agent, "GET", "/v1/agent/checks").json()


def test_check_register_and_updates_are_vetted(agent, toks):
    node, cache = toks["node_write"], toks["cache"]
    _mgmt(agent, "PUT", "/v1/agent/service/register", json={"Name": "cache", "Port": 6379})
    # A node check needs node:write, a service's check service:write on the service.
    r = agent.http.put("/v1/agent/check/register", headers=_h(cache.secret), json={"Name": "mem", "TTL": "60s"})
    assert (r.status_code, r.text) == (403, cache.denied("node:write", NODE))
    body = {"Name": "cache-alive", "ServiceID": "cache", "TTL": "60s"}
    r = agent.http.put("/v1/agent/check/register", headers=_h(node.secret), json=body)
    assert (r.status_code, r.text) == (403, node.denied("service:write", "cache"))
    assert agent.http.put("/v1/agent/check/register", json=body).text == _anon("service:write", "cache")
    assert not {"mem", "cache-alive"} & set(_checks(agent))
    r = agent.http.put("/v1/agent/check/register", json={"Name": "x", "ServiceID": "nope", "TTL": "60s"})
    assert (r.status_code, r.text) == (404, 'ServiceID "nope" does not exist')
    assert agent.http.put("/v1/agent/check/register", headers=_h(node.secret), json={"Name": "mem", "TTL": "60s"}).status_code == 200
    assert agent.http.put("/v1/agent/check/register", headers=_h(cache.secret), json=body).status_code == 200
    # Replacing a service's check with a node check needs write on that service too.
    r = agent.http.put("/v1/agent/check/register", headers=_h(node.secret), json={"Name": "x", "CheckID": "cache-alive", "TTL": "60s"})
    assert (r.status_code, r.text) == (403, node.denied("service:write", "cache"))
    # pass / warn / fail / update / deregister: the existing check's rule.
    for method, path, kw in (("PUT", "/v1/agent/check/pass/cache-alive", {}), ("PUT", "/v1/agent/check/warn/cache-alive", {}),
                             ("PUT", "/v1/agent/check/fail/cache-alive", {}),
                             ("PUT", "/v1/agent/check/update/cache-alive", {"json": {"Status": "passing"}}),
                             ("PUT", "/v1/agent/check/deregister/cache-alive", {})):
        r = agent.http.request(method, path, headers=_h(node.secret), **kw)
        assert (r.status_code, r.text) == (403, node.denied("service:write", "cache")), path
    assert _checks(agent)["cache-alive"]["Status"] == "critical"
    r = agent.http.put("/v1/agent/check/pass/mem", headers=_h(cache.secret))
    assert (r.status_code, r.text) == (403, cache.denied("node:write", NODE))
    assert agent.http.put("/v1/agent/check/pass/nope", headers=_h(cache.secret)).status_code == 404
    assert agent.http.put("/v1/agent/check/warn/cache-alive", params={"note": "hm"}, headers=_h(cache.secret)).status_code == 200
    assert _checks(agent)["cache-alive"]["Status"] == "warning"
    assert agent.http.put("/v1/agent/check/pass/mem", headers=_h(node.secret)).status_code == 200
    assert _checks(agent)["mem"]["Status"] == "passing"
    assert agent.http.put("/v1/agent/check/deregister/cache-alive", headers=_h(cache.secret)).status_code == 200
    assert agent.http.put("/v1/agent/check/deregister/mem", headers=_h(node.secret)).status_code == 200
    assert not {"mem", "cache-alive"} & set(_checks(agent))


# ------------------------------------------------------------------ Connect


def test_leaf_needs_service_write_roots_need_nothing(agent, toks):
    assert agent.http.get("/v1/agent/connect/ca/roots").status_code == 200
    r = agent.http.get("/v1/agent/connect/ca/leaf/web")
    assert (r.status_code, r.text) == (403, _anon("service:write", "web"))
    for name in ("read_all", "web_read", "pay"):
        r = agent.http.get("/v1/agent/connect/ca/leaf/web", headers=_h(toks[name].secret))
        assert (r.status_code, r.text) == (403, toks[name].denied("service:write", "web")), name
    r = agent.http.get("/v1/agent/connect/ca/leaf/web", headers=_h(toks["web_write"].secret))
    assert r.status_code == 200, r.text
    assert r.json()["Service"] == "web" and r.json()["ServiceURI"].endswith("/svc/web")
    # Cached now, and still refused to a token without write.
    r = agent.http.get("/v1/agent/connect/ca/leaf/web", headers=_h(toks["web_read"].secret))
    assert r.status_code == 403


def test_authorize_needs_service_write_on_the_target(agent, toks):
    body = {"Target": "web", "ClientCertURI": "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/api"}
    r = agent.http.post("/v1/agent/connect/authorize", json=body)
    assert (r.status_code, r.text) == (403, _anon("service:write", "web"))
    r = agent.http.post("/v1/agent/connect/authorize", json=body, headers=_h(toks["read_all"].secret))
    assert (r.status_code, r.text) == (403, toks["read_all"].denied("service:write", "web"))
    for token in (toks["web_write"].secret, MGMT):
        r = agent.http.post("/v1/agent/connect/authorize", json=body, headers=_h(token))
        assert r.status_code == 200, r.text
        assert r.json() == {"Authorized": False, "Reason": "Default behavior configured by ACLs"}  # default deny


@pytest.mark.anyio
async def test_server_sign_checks_the_token_it_is_given(agent, toks):
    """ConnectCA.Sign over server RPC, as a client agent calls it: service:write on the CSR's service."""
    from proconsul.server import ca
    from proconsul.server.codec import to_wire
    from proconsul.server.endpoints.connect_ca import CASignRequest
    from proconsul.server.errors import PermissionDenied
    from proconsul.server.rpc import RPCPool

    roots = agent.http.get("/v1/agent/connect/ca/roots").json()
    key, _ = ca.generate_key()
    csr = ca.make_csr(key, ca.service_uri(roots["TrustDomain"], "dc1", "web"))
    pool = RPCPool()
    try:
        for token, who in (("", None), (toks["web_read"].secret, toks["web_read"]), (toks["pay"].secret, toks["pay"])):
            with pytest.raises(PermissionDenied) as err:
                await pool.call(agent.server_addr, "ConnectCA.Sign", to_wire(CASignRequest(csr=csr, service="web", datacenter="dc1", token=token)))
            assert str(err.value) == (_anon("service:write", "web") if who is None else who.denied("service:write", "web"))
        # The service the CSR names decides, not the one the request claims.
        with pytest.raises(PermissionDenied):
            await pool.call(agent.server_addr, "ConnectCA.Sign", to_wire(CASignRequest(csr=csr, service="", datacenter="dc1", token=toks["pay"].secret)))
        reply = await pool.call(agent.server_addr, "ConnectCA.Sign", to_wire(CASignRequest(csr=csr, service="web", datacenter="dc1", token=toks["web_write"].secret)))
        assert reply["Service"] == "web" and "BEGIN CERTIFICATE" in reply["CertPEM"]
    finally:
        pool.close()


# ------------------------------------------------------------------ anti-entropy's tokens (a scripted fake server)


class _TokenAgent:
    """Just what AntiEntropy uses; ``rpc`` records (method, what, token) and refuses the token "BAD"."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        from proconsul.agent.local import LocalState

        self.config = SimpleNamespace(node_name="n1", ae_interval=60.0, node_id="id", datacenter="dc1")
        self.local = LocalState(None)
        self.calls: list[tuple[str, str, str]] = []

    def agent_token(self) -> str:
        return "AGENT"

    def node_registration(self) -> Any:
        from proconsul.server.commands import RegisterRequest

        return RegisterRequest(node="n1", id="id", address="127.0.0.1", datacenter="dc1")

    async def rpc(self, method: str, args: Any) -> Any:
        from proconsul.server.errors import PermissionDenied

        req = args.req
        if method == "Catalog.Register":
            what = "+".join(filter(None, [req.service.id if req.service else "", *(c.check_id for c in req.checks)])) or "node"
        else:
            what = req.service_id or req.check_id
        self.calls.append((method, what, args.token))
        if args.token == "BAD":
            raise PermissionDenied(f"Permission denied: token with AccessorID 'bad-accessor' lacks permission 'service:write' on \"{what}\"")
        return True


@pytest.mark.anyio
async def test_anti_entropy_syncs_each_entry_with_its_own_token(caplog):
    from proconsul.agent.antientropy import AntiEntropy
    from proconsul.agent.structs import parse_check, parse_service

    agent = _TokenAgent()
    ae = AntiEntropy(agent)
    web = parse_service({"Name": "web", "Check": {"CheckID": "web-ttl", "TTL": "60s"}})
    web.token = web.checks[0].token = "WEB"
    agent.local.add_service(web)
    for check, token in ((parse_check({"CheckID": "web-extra", "Name": "x", "ServiceID": "web", "TTL": "60s"}), "OTHER"),
                         (parse_check({"CheckID": "disk", "Name": "disk", "TTL": "60s"}), "")):
        check.token = token
        agent.local.add_check(check)
    web.checks[0].service_id = "web"
    agent.local.add_check(web.checks[0])
    denied = parse_service({"Name": "denied"})
    denied.token = "BAD"
    agent.local.add_service(denied)
    await ae.sync_changes()
    assert agent.calls == [
        ("Catalog.Register", "node", "AGENT"),  # first: the other tokens may not write the node
        ("Catalog.Register", "web+web-ttl", "WEB"),  # only the checks sharing its token ride along
        ("Catalog.Register", "denied", "BAD"),
        ("Catalog.Register", "web+web-extra", "OTHER"),  # with its service, under its own token
        ("Catalog.Register", "disk", "AGENT"),  # no token of its own: the agent's
    ]
    # The refusal was logged without holding back the rest, and is not retried until a full sync.
    assert "service denied registration blocked by ACLs: Permission denied: token with AccessorID 'bad-accessor'" in caplog.text
    agent.calls.clear()
    await ae.sync_changes()
    assert agent.calls == []
    # Deregistrations go under the token the entry was registered with.
    agent.local.remove_service("web")
    await ae.sync_changes()
    assert agent.calls == [("Catalog.Deregister", "web", "WEB"), ("Catalog.Deregister", "web-extra", "OTHER"),
                           ("Catalog.Deregister", "web-ttl", "WEB")]


# ------------------------------------------------------------------ /v1/agent/token


def test_agent_token_endpoint_without_acls_is_401(dev_agent):
    r = dev_agent.http.put("/v1/agent/token/default", json={"Token": "x"})
    assert (r.status_code, r.text) == (401, "ACL support disabled")


def test_agent_token_needs_acl_write_and_sets_the_running_token(agent, toks):
    reader = toks["agent_read"].secret
    r = agent.http.put("/v1/agent/token/default", json={"Token": reader})
    assert (r.status_code, r.text) == (403, _anon("acl:write"))
    r = agent.http.put("/v1/agent/token/default", json={"Token": reader}, headers=_h(toks["agent_write"].secret))
    assert (r.status_code, r.text) == (403, toks["agent_write"].denied("acl:write"))
    assert agent.http.get("/v1/agent/self").status_code == 403  # unchanged
    writer = toks["acl_write"].secret
    r = agent.http.put("/v1/agent/token/bogus", json={"Token": "x"}, headers=_h(writer))
    assert (r.status_code, r.text) == (404, 'Token "bogus" is unknown')
    assert agent.http.put("/v1/agent/token/default", content=b"{nope", headers=_h(writer)).status_code == 400
    assert agent.http.put("/v1/agent/token/default", json={"Token": 7}, headers=_h(writer)).status_code == 400
    # The default token now stands in for requests without one; the legacy name sets the same token.
    r = agent.http.put("/v1/agent/token/default", json={"Token": reader}, headers=_h(writer))
    assert (r.status_code, r.text) == (200, "")
    assert agent.http.get("/v1/agent/self").status_code == 200
    assert agent.http.put("/v1/agent/token/acl_token", json={"Token": ""}, headers=_h(MGMT)).status_code == 200
    assert agent.http.get("/v1/agent/self").status_code == 403
    for kind in ("agent", "acl_agent_token", "agent_recovery", "agent_master", "acl_agent_master_token", "replication"):
        assert agent.http.put(f"/v1/agent/token/{kind}", json={"Token": ""}, headers=_h(MGMT)).status_code == 200, kind
    # The recovery token set over the API works locally.
    recovery = "6f7e8d9c-0000-4000-8000-00000000beef"
    assert agent.http.put("/v1/agent/token/agent_recovery", json={"Token": recovery}, headers=_h(MGMT)).status_code == 200
    assert agent.http.get("/v1/agent/self", headers=_h(recovery)).status_code == 200
    assert agent.http.put("/v1/agent/token/agent_recovery", json={"Token": ""}, headers=_h(MGMT)).status_code == 200
    assert agent.http.get("/v1/agent/self", headers=_h(recovery)).text == "ACL not found"
    log = agent.log()
    assert "updated the agent's ACL token default" in log
    assert reader not in log and recovery not in log


# ------------------------------------------------------------------ the agent token on a client

FAST = {"liveness": {"interval": "300ms", "timeout": "5s"}, "ae_interval": "1s"}
SERVER_AGENT = "0b5c3a2e-7d41-4e88-a0c1-5f9e2d3c4b01"
RECOVERY = "a4c2e1f0-1111-4222-8333-944455556666"


@pytest.fixture(scope="module")
def acl_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    acl = {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT, "agent": SERVER_AGENT}}
    c = Cluster(tmp_path_factory.mktemp("aclclient"), size=1, acl=acl, **FAST)
    try:
        c.start()
        server = c.servers[0]
        eventually(lambda: server.http.get("/v1/acl/token/self", headers=_h(MGMT)).status_code == 200, what="management token")
        yield c
    finally:
        c.close()


def _node_meta(server: AgentProc, node: str) -> dict[str, str]:
    found = server.http.get(f"/v1/catalog/node/{node}", headers=_h(MGMT)).json() or {}
    return (found.get("Node") or {}).get("Meta") or {}


@pytest.mark.cluster
def test_client_without_a_usable_agent_token_cannot_write_its_node(acl_cluster):
    server = acl_cluster.servers[0]
    agents = Tok(server, "agents", 'node_prefix "" { policy = "write" }\nservice_prefix "" { policy = "read" }')
    limited = Tok(server, "limited", 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }')
    api = Tok(server, "api-svc", 'service "api" { policy = "write" }\nnode_prefix "" { policy = "read" }')
    client = acl_cluster.add_client("c1", node_meta={"rack": "r7"}, **FAST,
                                    acl={"enabled": True, "default_policy": "deny", "tokens": {"agent_recovery": RECOVERY}})
    client.start()
    client.wait_ready(30)

    # No agent token at all: the anonymous token may not write the node. Logged, and retried each full sync.
    blocked_anon = "node info update blocked by ACLs (the agent token needs node:write on 'c1'): " + _anon("node:write", "c1")
    eventually(lambda: client.log().count(blocked_anon) >= 2, 20, what="refusal logged, then retried")
    assert "rack" not in _node_meta(server, "c1")

    # A token without node:write: refused too, the WARN naming its AccessorID and the permission.
    r = client.http.put("/v1/agent/token/agent", json={"Token": limited.secret}, headers=_h(MGMT))
    assert r.status_code == 200, r.text
    eventually(lambda: client.log().count(limited.denied("node:write", "c1")) >= 2, 20, what="limited token refused, retried")
    assert "rack" not in _node_meta(server, "c1")

    # A service registered with its own token syncs with that token, not the agent's (which may not write services).
    r = client.http.put("/v1/agent/service/register", json={"Name": "api", "Port": 9000}, headers=_h(api.secret))
    assert r.status_code == 200, r.text

    # A valid agent token: the node is written, with its meta; the service follows.
    assert client.http.put("/v1/agent/token/agent", json={"Token": agents.secret}, headers=_h(MGMT)).status_code == 200
    eventually(lambda: _node_meta(server, "c1").get("rack") == "r7", 20, what="node registered with its meta")
    eventually(lambda: [s["ServiceID"] for s in server.http.get("/v1/catalog/service/api", headers=_h(MGMT)).json()] == ["api"], 20,
               what="api synced with its own token")

    # A leaf on the client is signed by the server with the caller's token.
    r = client.http.get("/v1/agent/connect/ca/leaf/api", headers=_h(api.secret))
    assert r.status_code == 200 and r.json()["Service"] == "api", r.text
    r = client.http.get("/v1/agent/connect/ca/leaf/api", headers=_h(limited.secret))
    assert (r.status_code, r.text) == (403, limited.denied("service:write", "api"))

    # Members through the client: the recovery token reads nodes without asking the servers.
    names = {m["Name"] for m in client.http.get("/v1/agent/members", headers=_h(RECOVERY)).json()}
    assert {"s1", "c1"} <= names

    client.stop()
    log = client.log()
    for secret in (MGMT, RECOVERY, agents.secret, limited.secret, api.secret):
        assert secret not in log
