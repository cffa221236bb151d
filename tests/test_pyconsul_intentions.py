"""py-consul (from PyPI), unchanged: its connect intention calls and config entry calls against a dev agent."""

from __future__ import annotations

import consul
import pytest

from conftest import AgentProc


def client(agent: AgentProc) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=agent.http_port)


def test_connect_intentions(dev_agent):
    c = client(dev_agent)
    ixns = c.connect.intentions
    assert ixns.upsert("py-web", "py-db", action="allow", description="from py-consul") is True
    assert ixns.upsert("*", "py-db", action="deny") is True
    got = ixns.read("py-web", "py-db")
    assert (got["SourceName"], got["DestinationName"], got["Action"], got["Description"], got["Precedence"]) == (
        "py-web", "py-db", "allow", "from py-consul", 9)
    assert ixns.read("py-nobody", "py-db") is None
    listed = ixns.list(filter_expr='DestinationName == "py-db"')
    assert [(i["SourceName"], i["Precedence"]) for i in listed] == [("py-web", 9), ("*", 8)]
    assert ixns.check("py-web", "py-db") is True
    assert ixns.check("py-api", "py-db") is False
    matched = ixns.match("destination", "py-db")
    assert [i["SourceName"] for i in matched["py-db"]] == ["py-web", "*"]
    assert [i["DestinationName"] for i in ixns.match("source", "py-web")["py-web"]] == ["py-db", "py-db"]
    assert ixns.delete("py-web", "py-db") is True
    assert ixns.read("py-web", "py-db") is None
    assert ixns.check("py-web", "py-db") is False  # now the wildcard decides
    assert ixns.delete("*", "py-db") is True
    assert ixns.check("py-web", "py-db") is True  # the default: ACLs are off


def test_connect_intentions_l7_and_errors(dev_agent):
    c = client(dev_agent)
    assert c.config.set("service-defaults", "py-api", {"Protocol": "http"}) is True
    perms = [{"Action": "allow", "HTTP": {"PathPrefix": "/public", "Methods": ["GET"]}}]
    assert c.connect.intentions.upsert("py-web", "py-api", permissions=perms) is True
    assert c.connect.intentions.read("py-web", "py-api")["Permissions"] == perms
    with pytest.raises(consul.ConsulException, match="Sources\\[0\\].Action must be set to 'allow' or 'deny'"):
        c.connect.intentions.upsert("py-web", "py-cache", action="maybe")
    with pytest.raises(consul.ConsulException, match="incompatible with L7 intentions permissions"):
        c.connect.intentions.upsert("py-web", "py-tcp", permissions=perms)
    assert c.connect.intentions.delete("py-web", "py-api") is True


def test_config_entries(dev_agent):
    c = client(dev_agent)
    cfg = c.config
    assert cfg.set("service-defaults", "py-svc", {"Protocol": "grpc", "Meta": {"a": "b"}}) is True
    got = cfg.get("service-defaults", "py-svc")
    assert (got["Kind"], got["Name"], got["Protocol"], got["Meta"]) == ("service-defaults", "py-svc", "grpc", {"a": "b"})
    assert cfg.set("service-defaults", "py-svc", {"Protocol": "http"}, cas=0) is False
    assert cfg.set("service-defaults", "py-svc", {"Protocol": "http"}, cas=got["ModifyIndex"]) is True
    assert "py-svc" in [e["Name"] for e in cfg.list("service-defaults")]
    assert [e["Name"] for e in cfg.list("service-defaults", filter_expr='Name == "py-svc"')] == ["py-svc"]
    assert cfg.set("service-intentions", "py-svc", {"Sources": [{"Name": "py-web", "Action": "allow"}]}) is True
    assert client(dev_agent).connect.intentions.check("py-web", "py-svc") is True
    assert cfg.delete("service-intentions", "py-svc") is True
    index = cfg.get("service-defaults", "py-svc")["ModifyIndex"]
    assert cfg.delete("service-defaults", "py-svc", cas=index + 100) is False
    assert cfg.delete("service-defaults", "py-svc", cas=index) is True
    assert cfg.get("service-defaults", "py-svc") is None


def test_agent_connect_calls(dev_agent):
    """py-consul's agent.connect: the CA roots, a leaf, and authorize with the leaf's own URI and serial."""
    from catls import verify_with_cryptography

    c = client(dev_agent)
    roots = c.agent.connect.ca.roots()
    assert roots["ActiveRootID"] and roots["TrustDomain"].endswith(".consul")
    leaf = c.agent.connect.ca.leaf("py-api")
    assert leaf["Service"] == "py-api" and leaf["ServiceURI"].endswith("/svc/py-api")
    assert verify_with_cryptography(leaf["CertPEM"], [r["RootCert"] for r in roots["Roots"]]) == [leaf["ServiceURI"]]
    assert c.connect.intentions.upsert("py-api", "py-db", action="deny") is True
    denied = c.agent.connect.authorize("py-db", leaf["ServiceURI"], leaf["SerialNumber"])
    assert denied["Authorized"] is False and "default/py-api => default/py-db" in denied["Reason"]
    allowed = c.agent.connect.authorize("py-other", leaf["ServiceURI"], leaf["SerialNumber"])
    assert allowed["Authorized"] is True
    with pytest.raises(consul.ConsulException):
        c.agent.connect.authorize("py-db", "not a uri", "")
    assert c.connect.intentions.delete("py-api", "py-db") is True
