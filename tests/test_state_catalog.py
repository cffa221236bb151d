"""Catalog and members parts of the state store, on a bare store at explicit indexes."""

from __future__ import annotations

import pytest

from proconsul.server.errors import StoreError
from proconsul.server.state import HealthCheck, Member, Node, ServiceInstance, StateStore
from proconsul.server.watch import WatchSet


def node(name: str, addr: str = "10.0.0.1", **kw) -> Node:
    return Node(name, kw.pop("id", ""), addr, "dc1", kw.pop("tagged", {}), kw.pop("meta", {}))


def svc(n: str, sid: str, name: str, port: int = 80, tags: tuple = (), **kw) -> ServiceInstance:
    return ServiceInstance(n, sid, name, tags=tags, port=port, **kw)


def chk(n: str, cid: str, status: str = "passing", service_id: str = "", **kw) -> HealthCheck:
    return HealthCheck(n, cid, name=cid, status=status, service_id=service_id, **kw)


def fired(ws: WatchSet) -> bool:
    return any(ch.fired for ch in ws.channels)


@pytest.fixture
def st() -> StateStore:
    s = StateStore()
    s.ensure_registration(10, node("n1"), svc("n1", "web1", "web", tags=("v1",)), [chk("n1", "web-alive", service_id="web1")])
    s.ensure_registration(11, node("n2", "10.0.0.2"), svc("n2", "db1", "db", 5432), [chk("n2", "db-alive", service_id="db1")])
    s.ensure_registration(12, None, None, [chk("n2", "serfHealth")])
    return s


def test_register_and_read_back(st):
    idx, rows = st.service_nodes("web")
    assert idx == 10
    [(n, s)] = rows
    assert (n.node, n.address, s.service_id, s.port, s.tags) == ("n1", "10.0.0.1", "web1", 80, ("v1",))
    idx, rows = st.check_service_nodes("db")
    [(n, s, checks)] = rows
    assert [c.check_id for c in checks] == ["db-alive", "serfHealth"]
    assert checks[0].service_name == "db"
    assert idx == 12  # the node-level check moved db's index too


def test_lookups_are_case_insensitive_rows_keep_case():
    s = StateStore()
    s.ensure_registration(5, node("Node-A"), svc("Node-A", "Web-1", "Web"), [])
    assert [r[1].service_id for r in s.service_nodes("WEB")[1]] == ["Web-1"]
    assert s.node_services("node-a")[1].node == "Node-A"
    s.ensure_registration(6, None, None, [chk("NODE-A", "c", service_id="WEB-1")])
    assert s.service_checks("web")[1][0].service_id == "Web-1"


def test_change_to_one_service_does_not_wake_or_move_another(st):
    ws_web, ws_db = WatchSet(), WatchSet()
    web_idx = st.check_service_nodes("web", ws_web)[0]
    db_idx = st.check_service_nodes("db", ws_db)[0]
    st.ensure_registration(20, None, None, [chk("n2", "db-alive", status="critical", service_id="db1")])
    assert fired(ws_db) and not fired(ws_web)
    assert st.check_service_nodes("web")[0] == web_idx
    assert st.check_service_nodes("db")[0] == 20 > db_idx


def test_node_level_check_wakes_every_service_on_that_node_only(st):
    st.ensure_registration(13, None, svc("n1", "api1", "api"), [])
    ws_web, ws_api, ws_db = WatchSet(), WatchSet(), WatchSet()
    for name, ws in (("web", ws_web), ("api", ws_api), ("db", ws_db)):
        st.check_service_nodes(name, ws)
    st.ensure_registration(21, None, None, [chk("n1", "serfHealth", status="critical")])
    assert fired(ws_web) and fired(ws_api) and not fired(ws_db)
    assert st.check_service_nodes("api")[0] == 21


def test_unchanged_registration_moves_nothing(st):
    before = st.checksum()
    ws = WatchSet()
    st.check_service_nodes("web", ws)
    st.ensure_registration(30, node("n1"), svc("n1", "web1", "web", tags=("v1",)), [chk("n1", "web-alive", service_id="web1")])
    assert st.checksum() == before
    assert not fired(ws)


def test_check_needs_its_node_and_service_and_a_valid_status(st):
    with pytest.raises(StoreError, match="Missing node registration"):
        st.ensure_registration(40, None, None, [chk("ghost", "c")])
    with pytest.raises(StoreError, match="Missing service registration"):
        st.ensure_registration(40, None, None, [chk("n1", "c", service_id="nope")])
    with pytest.raises(StoreError, match="Invalid check status"):
        st.ensure_registration(40, None, None, [chk("n1", "c", status="bogus")])
    # all or nothing: a bad check after a good service registers neither
    with pytest.raises(StoreError):
        st.ensure_registration(41, None, svc("n1", "new1", "new"), [chk("n1", "c", service_id="nope")])
    assert st.service_nodes("new")[1] == []


def test_node_id_may_not_alias_another_node():
    s = StateStore()
    s.ensure_registration(2, node("a", id="11111111-1111-1111-1111-111111111111"), None, [])
    with pytest.raises(StoreError, match="aliases existing node"):
        s.ensure_registration(3, node("b", id="11111111-1111-1111-1111-111111111111"), None, [])


def test_deletes_cascade_and_indexes_stay_monotonic(st):
    web_idx = st.check_service_nodes("web")[0]
    st.delete_service(50, "n1", "web1")
    assert st.service_nodes("web")[1] == []
    assert st.node_checks("n1")[1] == []  # the service's check went with it
    assert st.check_service_nodes("web")[0] >= 50 > web_idx
    st.delete_node(51, "n2")
    assert st.service_nodes("db")[1] == [] and st.node_checks("n2")[1] == []
    assert [n.node for n in st.catalog_nodes()[1]] == ["n1"]
    st.delete_check(52, "n1", "nothing")  # missing: a no-op
    assert st.catalog_nodes()[0] == 51


def test_service_rename_retags_its_checks(st):
    st.ensure_registration(60, None, svc("n1", "web1", "web", tags=("v2",)), [])
    [check] = st.service_checks("web")[1]
    assert check.service_tags == ("v2",)


def test_connect_queries_return_proxies_for_the_destination():
    s = StateStore()
    s.ensure_registration(2, node("n1"), svc("n1", "web", "web"), [])
    proxy = svc("n1", "web-sidecar-proxy", "web-sidecar-proxy", 21000, kind="connect-proxy",
                proxy={"DestinationServiceName": "web", "DestinationServiceID": "web"})
    ws = WatchSet()
    s.check_service_nodes("web", ws, connect=True)
    s.ensure_registration(3, None, proxy, [])
    assert fired(ws)
    assert [r[1].service_id for r in s.check_service_nodes("web", connect=True)[1]] == ["web-sidecar-proxy"]
    assert [r[1].service_id for r in s.service_nodes("web")[1]] == ["web"]


def test_checks_in_state(st):
    st.ensure_registration(70, None, None, [chk("n1", "web-alive", status="warning", service_id="web1")])
    assert [c.check_id for c in st.checks_in_state("warning")[1]] == ["web-alive"]
    assert len(st.checks_in_state("any")[1]) == 3


def test_member_updates_drive_the_catalog():
    s = StateStore()
    s.member_update(2, Member("c1", "id-c1", "10.0.0.9", status="alive", datacenter="dc1"))
    [check] = s.node_checks("c1")[1]
    assert (check.check_id, check.status, check.output) == ("serfHealth", "passing", "Agent alive and reachable")
    s.ensure_registration(3, None, svc("c1", "web1", "web"), [chk("c1", "web-ok", service_id="web1")])
    ws = WatchSet()
    s.check_service_nodes("web", ws)
    s.member_update(4, Member("c1", "id-c1", "10.0.0.9", status="failed", datacenter="dc1"))
    assert fired(ws)
    checks = s.check_service_nodes("web")[1][0][2]
    assert {c.check_id: c.status for c in checks} == {"serfHealth": "critical", "web-ok": "passing"}
    s.member_update(5, Member("c1", "id-c1", "10.0.0.9", status="left", datacenter="dc1"))
    assert s.get_node("c1") is None and s.service_nodes("web")[1] == []
    assert s.members()[1][0].status == "left"
    s.member_reap(6, "c1")
    assert s.members()[1] == []


def test_server_members_get_the_consul_service():
    s = StateStore()
    s.member_update(2, Member("s1", "id", "10.0.0.1", status="alive", role="consul", datacenter="dc1"), server_port=8300)
    [(n, inst)] = s.service_nodes("consul")[1]
    assert inst.port == 8300


def test_catalog_round_trips_through_dump_and_load(st):
    other = StateStore()
    other.load(st.dump())
    assert other.checksum() == st.checksum()
    assert [r[1].tags for r in other.service_nodes("web")[1]] == [("v1",)]
    ws = WatchSet()
    other.check_service_nodes("web", ws)
    other.ensure_registration(99, None, svc("n1", "web1", "web", tags=("v1",)), [])
    assert not fired(ws)  # loaded rows compare equal to re-registered ones (tags are tuples again)
