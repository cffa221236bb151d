"""Guards for the fast /v1/health/service path (issue 9): the invariants it rests on, not timings.

* The store's (node, service ID) -> check IDs index matches a full scan of the checks after any
  sequence of writes, rollbacks, loads and restores, and so do the reads built on it.
* The encoded answer (``EncodedCatalogQuery`` -> ``shapes.EncodedJSON``) is byte for byte what
  encoding the plain answer gives, compact and pretty, with the same meta, for every request filter and ACL token.
* A warm read of an unchanged service encodes nothing; a changed check re-encodes its instance
  only, shows at once, and wakes a blocking read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
from types import SimpleNamespace
from typing import Any, AsyncIterator

import httpx
import pytest

from conftest import free_ports
from proconsul.api.lean import dump_json
from proconsul.server.codec import from_wire, to_wire
from proconsul.server.endpoints.health import EncodedCatalogQuery, entry_cache
from proconsul.server.errors import StoreError
from proconsul.server.shapes import EncodedJSON
from proconsul.server.state import HealthCheck, Node, ServiceInstance, StateStore
from proconsul.server.structs import CatalogQuery, QueryOptions


# ----------------------------------------------------------------- the check index


def scan_check_service_nodes(st: StateStore, name: str, connect: bool) -> list:
    """Health.ServiceNodes rows the slow way: every check of the instance's node, filtered."""
    from proconsul.server.state.catalog import _matches_kind

    lname = name.lower()
    rows = []
    for key in sorted(k for k, s in st._services.items() if lname in s.names()):
        svc = st._services[key]
        if not _matches_kind(svc, lname, connect):
            continue
        checks = tuple(
            c for (n, _), c in sorted(st._checks.items())
            if n == key[0] and (not c.service_id or c.service_id.lower() == key[1])
        )
        rows.append((st._nodes[key[0]], svc, checks))
    return rows


def assert_index_matches_scan(st: StateStore) -> None:
    expected: dict[tuple[str, str], set[str]] = {}
    for (lnode, lcid), check in st._checks.items():
        expected.setdefault((lnode, check.service_id.lower()), set()).add(lcid)
    assert st._chk_by_svc == expected
    names = {n for s in st._services.values() for n in s.names()} | {"nosuch"}
    for name in names:
        for connect in (False, True):
            assert st.check_service_nodes(name, connect=connect)[1] == scan_check_service_nodes(st, name, connect), (name, connect)
        by_scan = [c for _, s, cs in scan_check_service_nodes(st, name, False) for c in cs if c.service_id]
        assert st.service_checks(name)[1] == by_scan


@pytest.mark.parametrize("seed", range(6))
def test_check_index_matches_a_full_scan_after_random_writes(seed: int) -> None:
    rnd = random.Random(seed)
    st = StateStore()
    nodes = ["n1", "N2", "n3"]
    sids = ["web-1", "Web-2", "db-1", "proxy-1", "native-1"]
    index = 1

    def service(node: str, sid: str) -> ServiceInstance:
        if sid.startswith("proxy"):
            return ServiceInstance(node, sid, "web-sidecar-proxy", kind="connect-proxy", port=21000, proxy={"DestinationServiceName": "web"})
        if sid.startswith("native"):
            return ServiceInstance(node, sid, "web", port=8443, connect={"Native": True})
        name = sid.split("-")[0]
        return ServiceInstance(node, rnd.choice([sid, sid.upper()]), rnd.choice([name, name.upper()]), tags=(rnd.choice(["a", "b"]),))

    def check(node: str, existing_sids: list[str]) -> HealthCheck:
        sid = rnd.choice(["", *existing_sids]) if existing_sids else ""
        return HealthCheck(node, rnd.choice(["c1", "C2", "c3", "serfHealth"]), status=rnd.choice(["passing", "warning", "critical"]), service_id=sid)

    snapshots = [st.dump()]
    for _ in range(400):
        index += 1
        op = rnd.random()
        node = rnd.choice(nodes)
        lnode = node.lower()
        on_node = [s.service_id for (n, _), s in st._services.items() if n == lnode]
        if op < 0.35:
            svc = service(node, rnd.choice(sids)) if rnd.random() < 0.7 else None
            have = on_node + ([svc.service_id] if svc else [])
            checks = [check(node, have) for _ in range(rnd.randint(0, 2))]
            st.ensure_registration(index, Node(node, address=rnd.choice(["10.0.0.1", "10.0.0.2"])), svc, checks)
        elif op < 0.55 and lnode in st._nodes:
            st.ensure_registration(index, None, None, [check(node, on_node)])
        elif op < 0.65:
            # A check naming a service that is not there fails the whole registration: it rolls back.
            with pytest.raises(StoreError):
                st.ensure_registration(index, Node(node, address="10.9.9.9"), service(node, "web-1"),
                                       [check(node, on_node), HealthCheck(node, "bad", service_id="missing")])
        elif op < 0.75 and st._checks:
            lnode2, lcid = rnd.choice(sorted(st._checks))
            st.delete_check(index, lnode2, lcid)
        elif op < 0.85 and on_node:
            st.delete_service(index, node, rnd.choice(on_node).upper())
        elif op < 0.9:
            st.delete_node(index, node)
        elif op < 0.95:
            # Back to an earlier snapshot (what a follower's snapshot install does) or this one.
            st.load(rnd.choice(snapshots[-5:] + [st.dump()]))
        else:
            st.restore(index, rnd.choice(snapshots[-5:]))
        if rnd.random() < 0.1:
            snapshots.append(st.dump())
        assert_index_matches_scan(st)


def test_node_check_turned_service_check_moves_the_other_services_on_its_node() -> None:
    """A node-level check re-registered as a service check leaves every other instance's health:
    their index moves, their watchers fire and their (memoized) rows drop it."""
    from proconsul.server.watch import WatchSet

    st = StateStore()
    st.ensure_registration(10, Node("n1", address="10.0.0.1"), ServiceInstance("n1", "web1", "web"), [HealthCheck("n1", "c", status="critical")])
    st.ensure_registration(11, None, ServiceInstance("n1", "db1", "db"), [])
    ws = WatchSet()
    index, rows = st.check_service_nodes("web", ws)
    assert [c.check_id for c in rows[0][2]] == ["c"]
    st.ensure_registration(12, None, None, [HealthCheck("n1", "c", status="critical", service_id="db1")])
    assert any(ch.fired for ch in ws.channels)
    index2, rows = st.check_service_nodes("web")
    assert index2 == 12 > index and rows[0][2] == ()


# ----------------------------------------------------------------- the encoded answer


@contextlib.asynccontextmanager
async def dev_agent(**config_changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process dev agent and a client on its app (dev mode: its HTTP answers are pretty, so the
    fast path is asked for through ``agent.rpc`` or a non-dev route, as the tests below do)."""
    import anyio

    from proconsul.agent import config
    from proconsul.agent.agent import Agent
    from proconsul.api.app import build_app

    (port,) = free_ports(1)
    cfg = config.build({"dev": True, "port_http": -1, "port_dns": -1, "port_server": port, "node_name": "hs"}, [], [])
    agent = Agent(dataclasses.replace(cfg, **config_changes))
    await agent.start()
    try:
        with anyio.fail_after(10):
            while not agent.server.is_leader() or not agent.server._consistent_ready:
                await anyio.sleep(0.02)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(agent)), base_url="http://agent") as client:
            client.agent = agent  # type: ignore[attr-defined]
            yield client
    finally:
        await agent.stop()


async def put(api: httpx.AsyncClient, body: dict, token: str = "") -> None:
    r = await api.put("/v1/catalog/register", json=body, headers={"X-Consul-Token": token} if token else {})
    assert r.status_code == 200, r.text


async def seed(api: httpx.AsyncClient, token: str = "") -> None:
    """Instances with every optional field, node and service checks in each state, and non-ASCII output."""
    n1 = {"Node": "n1", "Address": "10.0.0.1", "NodeMeta": {"env": "prod"}, "TaggedAddresses": {"lan": "10.0.0.1"}}
    n2 = {"Node": "N2", "Address": "10.0.0.2", "NodeMeta": {"env": "dev"}}
    for body in (
        {**n1, "Service": {"ID": "web1", "Service": "web", "Port": 80, "Tags": ["v1", "Primary"], "Meta": {"m": "1"}},
         "Checks": [{"CheckID": "web1-http", "Name": "http", "Status": "passing", "ServiceID": "web1", "Output": "ok ✓ \"quoted\""},
                    {"CheckID": "serfHealth", "Name": "Serf", "Status": "passing"}]},
        {**n1, "Service": {"ID": "web1-sidecar-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
                           "Proxy": {"DestinationServiceName": "web", "LocalServicePort": 80}}},
        {**n2, "Service": {"ID": "web2", "Service": "web", "Port": 81, "Tags": ["v2"], "SocketPath": "/tmp/s",
                           "TaggedAddresses": {"lan": {"Address": "10.0.0.2", "Port": 81}}, "Weights": {"Passing": 3, "Warning": 1}},
         "Checks": [{"CheckID": "web2-http", "Name": "http", "Status": "warning", "ServiceID": "web2"}]},
        {**n2, "Service": {"ID": "web-native", "Service": "web", "Port": 8443, "Connect": {"Native": True}}},
        {**n2, "Checks": [{"CheckID": "maint", "Name": "maintenance", "Status": "critical", "Notes": "ü"}]},
        {**n2, "Service": {"ID": "db1", "Service": "db", "Port": 5432}},
    ):
        await put(api, body, token)


QUERIES = [
    dict(name="web"),
    dict(name="WEB", passing=True),
    dict(name="web", tags=["primary"]),
    dict(name="web", tags=["v1", "v2"]),
    dict(name="web", node_meta={"env": "dev"}),
    dict(name="web", connect=True),
    dict(name="web", connect=True, passing=True),
    dict(name="db"),
    dict(name="nosuch"),
]


async def both(agent: Any, token: str = "", index: int = 0, **q: Any) -> tuple[Any, Any]:
    """(plain reply, encoded reply) for one Health.ServiceNodes query."""
    plain = await agent.rpc("Health.ServiceNodes", CatalogQuery(**q, opts=QueryOptions(token=token, index=index)))
    encoded = await agent.rpc("Health.ServiceNodes", EncodedCatalogQuery(**q, opts=QueryOptions(token=token, index=index)))
    return plain, encoded


@pytest.mark.anyio
async def test_encoded_answer_is_byte_identical_to_the_plain_one() -> None:
    async with dev_agent() as api:
        agent = api.agent  # type: ignore[attr-defined]
        await seed(api)
        for q in QUERIES:
            for _ in range(2):  # cold, then from the cache
                plain, encoded = await both(agent, **q)
                assert isinstance(encoded.value, EncodedJSON), q
                assert encoded.value.body == dump_json(plain.value or [], False), q
                assert encoded.meta == plain.meta, q
                pretty = await agent.rpc("Health.ServiceNodes", EncodedCatalogQuery(**q, pretty=True, opts=QueryOptions()))
                assert pretty.value.body == dump_json(plain.value or [], True), q
        # ?filter takes the plain path, whatever the caller asked for.
        plain, encoded = await both(agent, name="web", filter='Service.Tags contains "v1"')
        assert not isinstance(encoded.value, EncodedJSON) and encoded.value == plain.value and len(plain.value) == 1


@pytest.mark.anyio
async def test_warm_read_encodes_nothing_and_a_changed_check_shows_at_once() -> None:
    async with dev_agent() as api:
        agent = api.agent  # type: ignore[attr-defined]
        await seed(api)
        cache = entry_cache(agent.server)
        _, first = await both(agent, name="web")
        builds = cache.builds
        _, warm = await both(agent, name="web")
        assert cache.builds == builds and warm.value.body == first.value.body

        await put(api, {"Node": "N2", "Address": "10.0.0.2", "NodeMeta": {"env": "dev"},
                        "Checks": [{"CheckID": "web2-http", "Name": "http", "Status": "passing", "ServiceID": "web2"}]})
        plain, after = await both(agent, name="web")
        assert cache.builds == builds + 1  # only web2's entry was encoded again
        assert after.meta.index > warm.meta.index
        assert after.value.body == dump_json(plain.value, False)
        statuses = {c["CheckID"]: c["Status"] for e in json.loads(after.value.body) for c in e["Checks"]}
        assert statuses["web2-http"] == "passing"

        # A node-level check is part of every instance on its node: all of N2's web entries change.
        await put(api, {"Node": "N2", "Address": "10.0.0.2", "NodeMeta": {"env": "dev"},
                        "Checks": [{"CheckID": "maint", "Name": "maintenance", "Status": "passing", "Notes": "ü"}]})
        builds = cache.builds
        plain, after = await both(agent, name="web", passing=True)
        assert after.value.body == dump_json(plain.value, False)
        assert [e["Service"]["ID"] for e in json.loads(after.value.body)] == ["web1", "web-native", "web2"]
        assert cache.builds == builds + 2

        # A changed service row (same checks) and a changed node row re-encode what they are part of.
        await put(api, {"Node": "n1", "Address": "10.0.0.1", "NodeMeta": {"env": "prod"}, "TaggedAddresses": {"lan": "10.0.0.1"},
                        "Service": {"ID": "web1", "Service": "web", "Port": 8080, "Tags": ["v1", "Primary"], "Meta": {"m": "1"}}})
        builds = cache.builds
        plain, after = await both(agent, name="web", passing=True)
        assert after.value.body == dump_json(plain.value, False) and cache.builds == builds + 1
        assert json.loads(after.value.body)[0]["Service"]["Port"] == 8080
        await put(api, {"Node": "N2", "Address": "10.0.0.22", "NodeMeta": {"env": "dev"}})
        plain, after = await both(agent, name="web", passing=True)
        assert after.value.body == dump_json(plain.value, False) and cache.builds == builds + 1 + 2
        assert {e["Node"]["Address"] for e in json.loads(after.value.body)} == {"10.0.0.1", "10.0.0.22"}


@pytest.mark.anyio
async def test_deregistered_instances_leave_the_cache() -> None:
    async with dev_agent() as api:
        agent = api.agent  # type: ignore[attr-defined]
        await seed(api)
        cache = entry_cache(agent.server)
        await both(agent, name="web")
        assert len(cache._groups[("web", False)]) == 3
        r = await api.put("/v1/catalog/deregister", json={"Node": "N2", "ServiceID": "web2"})
        assert r.status_code == 200, r.text
        plain, encoded = await both(agent, name="web")
        assert encoded.value.body == dump_json(plain.value, False)
        assert sorted(cache._groups[("web", False)]) == [("N2", "web-native"), ("n1", "web1")]


@pytest.mark.anyio
async def test_blocking_encoded_read_wakes_on_a_check_change() -> None:
    async with dev_agent() as api:
        agent = api.agent  # type: ignore[attr-defined]
        await seed(api)
        _, before = await both(agent, name="db")
        q = EncodedCatalogQuery(name="db", opts=QueryOptions(index=before.meta.index, wait=10.0))
        waiting = asyncio.create_task(agent.rpc("Health.ServiceNodes", q))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await put(api, {"Node": "N2", "Address": "10.0.0.2", "NodeMeta": {"env": "dev"},
                        "Checks": [{"CheckID": "db-tcp", "Name": "tcp", "Status": "critical", "ServiceID": "db1"}]})
        reply = await asyncio.wait_for(waiting, 5)
        assert reply.meta.index > before.meta.index
        assert "db-tcp" in [c["CheckID"] for c in json.loads(reply.value.body)[0]["Checks"]]


MGMT = "8d1f0c2e-4b6a-4f3e-9c7d-2a5b6c7d8e9f"


@pytest.mark.anyio
async def test_acl_filtered_encoded_answer_matches_the_plain_one() -> None:
    async with dev_agent(acl_enabled=True, acl_default_policy="deny", acl_token_initial_management=MGMT) as api:
        agent = api.agent  # type: ignore[attr-defined]
        import anyio

        with anyio.fail_after(10):
            while agent.server.state.acl_token_get_by_secret(MGMT)[1] is None:
                await anyio.sleep(0.02)
        await seed(api, MGMT)
        hdr = {"X-Consul-Token": MGMT}
        tokens = {"management": MGMT, "anonymous": ""}
        for name, rules in {
            "web-reader": 'service "web" { policy = "read" }\nnode_prefix "" { policy = "read" }',
            "n1-reader": 'node "n1" { policy = "read" }\nservice_prefix "" { policy = "read" }',
            "proxy-reader": 'service "web-sidecar-proxy" { policy = "read" }\nnode_prefix "" { policy = "read" }',
        }.items():
            policy = (await api.put("/v1/acl/policy", json={"Name": name, "Rules": rules}, headers=hdr)).json()
            token = (await api.put("/v1/acl/token", json={"Policies": [{"ID": policy["ID"]}]}, headers=hdr)).json()
            tokens[name] = token["SecretID"]
        filtered_somewhere = False
        for who, secret in tokens.items():
            for q in QUERIES:
                plain, encoded = await both(agent, token=secret, **q)
                assert isinstance(encoded.value, EncodedJSON), (who, q)
                assert encoded.value.body == dump_json(plain.value or [], False), (who, q)
                assert encoded.meta == plain.meta, (who, q)
                filtered_somewhere |= plain.meta.filtered
        assert filtered_somewhere


def test_the_encoded_marker_does_not_cross_server_rpc() -> None:
    q = EncodedCatalogQuery.of(CatalogQuery(name="web", tags=["a"], passing=True, node_meta={"k": "v"}, opts=QueryOptions(token="t")))
    remote = from_wire(CatalogQuery, json.loads(json.dumps(to_wire(q))))
    assert type(remote) is CatalogQuery
    assert dataclasses.asdict(remote) == {k: v for k, v in dataclasses.asdict(q).items() if k != "pretty"}


@pytest.mark.anyio
async def test_lean_route_sends_the_encoded_bytes_pretty_or_not() -> None:
    from proconsul.api.reads import health_routes as lean_routes

    async with dev_agent() as api:
        agent = api.agent  # type: ignore[attr-defined]
        await seed(api)
        asked: list[type] = []

        async def rpc(method: str, args: Any) -> Any:
            asked.append(type(args))
            return await agent.rpc(method, args)

        # The dev agent's own routes are always pretty; these are a production agent's.
        routes = lean_routes(SimpleNamespace(config=SimpleNamespace(dev=False), rpc=rpc))
        service_route = routes[0]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service_route), base_url="http://agent") as client:
            r = await client.get("/v1/health/service/web", params={"passing": ""})
            plain = await agent.rpc("Health.ServiceNodes", CatalogQuery(name="web", passing=True))
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            assert r.content == dump_json(plain.value, False)
            assert r.headers["x-consul-index"] == str(plain.meta.index)
            assert asked[-1] is EncodedCatalogQuery
            r = await client.get("/v1/health/service/web", params={"pretty": ""})
            assert r.content == dump_json((await agent.rpc("Health.ServiceNodes", CatalogQuery(name="web"))).value, True)
            assert asked[-1] is EncodedCatalogQuery
            r = await client.get("/v1/health/service/nosuch")
            assert r.content == b"[]"
