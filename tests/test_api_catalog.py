"""/v1/catalog and /v1/health through the ASGI app of an in-process dev agent."""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.anyio


def reg(node: str, address: str = "10.1.0.1", service: dict | None = None, checks: list | None = None, **extra) -> dict:
    body = {"Node": node, "Address": address, **extra}
    if service is not None:
        body["Service"] = service
    if checks is not None:
        body["Checks"] = checks
    return body


async def register(api, **kw) -> None:
    r = await api.put("/v1/catalog/register", json=reg(**kw))
    assert r.status_code == 200 and r.json() is True, r.text


async def test_register_and_query_every_view(api):
    await register(
        api,
        node="cat-n1",
        NodeMeta={"env": "prod"},
        service={"Service": "billing", "ID": "billing-1", "Port": 9000, "Tags": ["primary", "v2"], "Meta": {"team": "pay"}},
        checks=[{"CheckID": "billing-http", "Name": "billing http", "Status": "passing", "ServiceID": "billing-1"}],
    )
    entries = (await api.get("/v1/catalog/service/billing")).json()
    [e] = entries
    assert (e["Node"], e["ServiceID"], e["ServicePort"], e["ServiceTags"]) == ("cat-n1", "billing-1", 9000, ["primary", "v2"])
    assert e["NodeMeta"] == {"env": "prod"} and e["ServiceMeta"] == {"team": "pay"}
    assert list(e)[:5] == ["ID", "Node", "Address", "Datacenter", "TaggedAddresses"]
    assert (await api.get("/v1/catalog/services")).json()["billing"] == ["primary", "v2"]
    assert "cat-n1" in [n["Node"] for n in (await api.get("/v1/catalog/nodes")).json()]
    node = (await api.get("/v1/catalog/node/cat-n1")).json()
    assert node["Node"]["Address"] == "10.1.0.1" and "billing-1" in node["Services"]
    listed = (await api.get("/v1/catalog/node-services/cat-n1")).json()
    assert [s["ID"] for s in listed["Services"]] == ["billing-1"]
    health = (await api.get("/v1/health/service/billing")).json()
    assert [c["CheckID"] for c in health[0]["Checks"]] == ["billing-http"]
    assert (await api.get("/v1/health/checks/billing")).json()[0]["ServiceName"] == "billing"
    assert [c["CheckID"] for c in (await api.get("/v1/health/node/cat-n1")).json()] == ["billing-http"]
    assert (await api.get("/v1/catalog/datacenters")).json() == ["dc1"]


async def test_tag_node_meta_and_passing_filters(api):
    for i, (tags, status, env) in enumerate([(["a"], "passing", "prod"), (["a", "b"], "critical", "dev"), (["b"], "warning", "prod")]):
        await register(
            api,
            node=f"flt-n{i}",
            NodeMeta={"env": env},
            service={"Service": "flt", "ID": f"flt-{i}", "Tags": tags},
            checks=[{"CheckID": f"flt-c{i}", "Status": status, "ServiceID": f"flt-{i}"}],
        )

    async def ids(path: str, params: dict | list) -> list[str]:
        body = (await api.get(path, params=params)).json()
        return sorted(e["Service"]["ID"] if "Service" in e else e["ServiceID"] for e in body)

    assert await ids("/v1/health/service/flt", {"passing": ""}) == ["flt-0"]
    assert await ids("/v1/health/service/flt", [("tag", "a"), ("tag", "b")]) == ["flt-1"]
    assert await ids("/v1/catalog/service/flt", {"tag": "B"}) == ["flt-1", "flt-2"]  # case-insensitive, as Consul
    assert await ids("/v1/health/service/flt", {"node-meta": "env:prod"}) == ["flt-0", "flt-2"]
    assert [c["CheckID"] for c in (await api.get("/v1/health/state/warning")).json() if c["CheckID"].startswith("flt")] == ["flt-c2"]
    states = {c["CheckID"] for c in (await api.get("/v1/health/state/any")).json()}
    assert {"flt-c0", "flt-c1", "flt-c2"} <= states


async def test_blocking_on_one_service_ignores_another(api):
    await register(api, node="blk-n1", service={"Service": "svc-a", "ID": "a1"})
    await register(api, node="blk-n1", service={"Service": "svc-b", "ID": "b1"})
    r = await api.get("/v1/health/service/svc-a")
    index_a = int(r.headers["X-Consul-Index"])
    index_b = int((await api.get("/v1/health/service/svc-b")).headers["X-Consul-Index"])
    started = time.monotonic()
    watcher_a = asyncio.create_task(api.get("/v1/health/service/svc-a", params={"index": str(index_a), "wait": "1s"}))
    watcher_b = asyncio.create_task(api.get("/v1/health/service/svc-b", params={"index": str(index_b), "wait": "20s"}))
    await asyncio.sleep(0.1)
    await register(api, node="blk-n1", service={"Service": "svc-b", "ID": "b1", "Port": 1234})
    rb = await asyncio.wait_for(watcher_b, 5)
    assert int(rb.headers["X-Consul-Index"]) > index_b and time.monotonic() - started < 1.0
    ra = await asyncio.wait_for(watcher_a, 5)
    assert time.monotonic() - started >= 1.0  # svc-a's watcher timed out: nothing woke it
    assert int(ra.headers["X-Consul-Index"]) == index_a  # and its index did not move


async def test_deregister_service_check_and_node(api):
    await register(api, node="dr-n1", service={"Service": "dr", "ID": "dr1"}, checks=[{"CheckID": "dr-c", "ServiceID": "dr1", "Status": "passing"}, {"CheckID": "dr-node", "Status": "passing"}])
    assert (await api.put("/v1/catalog/deregister", json={"Node": "dr-n1", "CheckID": "dr-node"})).json() is True
    assert [c["CheckID"] for c in (await api.get("/v1/health/node/dr-n1")).json()] == ["dr-c"]
    assert (await api.put("/v1/catalog/deregister", json={"Node": "dr-n1", "ServiceID": "dr1"})).json() is True
    assert (await api.get("/v1/catalog/service/dr")).json() == []
    assert (await api.put("/v1/catalog/deregister", json={"Node": "dr-n1"})).json() is True
    assert (await api.get("/v1/catalog/node/dr-n1")).json() is None


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"Address": "1.2.3.4"}, "Must provide node and address"),
        ({"Node": "x"}, "Must provide node and address"),
        ({"Node": "x", "Address": "1.2.3.4", "Service": {"ID": "only-id"}}, "Must provide service name with ID"),
        ({"Node": "x", "Address": "1.2.3.4", "Service": {"Service": "s", "Port": "eighty"}}, "Port"),
        ({"Node": "x", "Address": "1.2.3.4", "Check": {"CheckID": "c", "Status": "bogus"}}, "Invalid check status"),
        ({"Node": "x", "Address": "1.2.3.4", "Check": {"CheckID": "c", "ServiceID": "missing"}}, "Missing service registration"),
        ({"Node": "x", "Address": "1.2.3.4", "NodeMeta": {"k": 5}}, "NodeMeta"),
        ("not an object", "expected an object"),
    ],
)
async def test_bad_registrations_are_400_and_register_nothing(api, body, fragment):
    before = api.agent.server.state.checksum()
    r = await api.put("/v1/catalog/register", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.text
    assert api.agent.server.state.checksum() == before


async def test_health_state_must_be_known(api):
    r = await api.get("/v1/health/state/sideways")
    assert r.status_code == 400 and "Invalid state" in r.text


async def test_filter_expressions(api):
    await register(api, node="fx-n1", NodeMeta={"rack": "r1"}, service={"Service": "fx", "ID": "fx1", "Tags": ["canary"], "Meta": {"ver": "2"}})
    await register(api, node="fx-n2", NodeMeta={"rack": "r2"}, service={"Service": "fx", "ID": "fx2", "Tags": ["stable"], "Meta": {"ver": "1"}})
    r = await api.get("/v1/health/service/fx", params={"filter": 'Service.Tags contains "canary"'})
    assert [e["Service"]["ID"] for e in r.json()] == ["fx1"]
    r = await api.get("/v1/catalog/service/fx", params={"filter": 'NodeMeta.rack == r2 and ServiceMeta.ver == "1"'})
    assert [e["ServiceID"] for e in r.json()] == ["fx2"]
    r = await api.get("/v1/catalog/nodes", params={"filter": 'Meta.rack == "r1"'})
    assert [n["Node"] for n in r.json()] == ["fx-n1"]
    r = await api.get("/v1/health/service/fx", params={"filter": "Bogus.Field == 1"})
    assert r.status_code == 400 and "Bogus" in r.text
    r = await api.get("/v1/health/service/fx", params={"filter": "Service.ID == "})
    assert r.status_code == 400
