"""Prepared queries in the state store, on a bare store at explicit indexes."""

from __future__ import annotations

import pytest

from proconsul.server import shapes
from proconsul.server.errors import StoreError
from proconsul.server.state import HealthCheck, Node, PreparedQuery, Session, StateStore
from proconsul.server.watch import WatchSet

Q1 = "11111111-1111-1111-1111-111111111111"
Q2 = "22222222-2222-2222-2222-222222222222"
Q3 = "33333333-3333-3333-3333-333333333333"
Q4 = "44444444-4444-4444-4444-444444444444"
TEMPLATE = {"Type": "name_prefix_match", "Regexp": "", "RemoveEmptyTags": False}


def query(qid: str, name: str = "", service: str = "web", **kw) -> PreparedQuery:
    svc = {"Service": service, **kw.pop("svc", {})}
    return PreparedQuery(qid, name, service=svc, **kw)


def template(qid: str, name: str, service: str = "${name.suffix}", regexp: str = "", **kw) -> PreparedQuery:
    tpl = {**TEMPLATE, "Regexp": regexp, "RemoveEmptyTags": kw.pop("remove_empty_tags", False)}
    return query(qid, name, service, template=tpl, **kw)


def fired(ws: WatchSet) -> bool:
    return any(ch.fired for ch in ws.channels)


@pytest.fixture
def st() -> StateStore:
    s = StateStore()
    s.ensure_registration(2, Node("n1", "", "10.0.0.1"), None, [HealthCheck("n1", "serfHealth", status="passing")])
    return s


def test_create_update_delete_keep_indexes(st):
    st.query_set(10, query(Q1, "web-q"))
    idx, q = st.query_get(Q1)
    assert (idx, q.name, q.create_index, q.modify_index) == (10, "web-q", 10, 10)
    st.query_set(11, query(Q1, "web-q2", "api"))
    idx, q = st.query_get(Q1.upper())  # IDs are UUIDs: any case finds them
    assert (idx, q.name, q.service["Service"], q.create_index, q.modify_index) == (11, "web-q2", "api", 10, 11)
    # The old name is free again, the new one taken.
    st.query_set(12, query(Q2, "web-q"))
    with pytest.raises(StoreError, match="name 'WEB-Q2' aliases an existing query name"):
        st.query_set(13, query(Q3, "WEB-Q2"))
    assert [q.id for q in st.query_list()[1]] == [Q1, Q2]
    st.query_delete(14, Q1)
    assert st.query_get(Q1) == (14, None)
    st.query_delete(15, Q1)  # deleting a missing query is a no-op and moves nothing
    assert st.query_list()[0] == 14


def test_name_rules_and_nothing_changes_on_refusal(st):
    st.query_set(10, query(Q1, "alpha"))
    before = st.dump()
    with pytest.raises(StoreError, match=f"name '{Q1}' aliases an existing query ID"):
        st.query_set(11, query(Q2, Q1))
    st.query_set(11, template(Q2, ""))
    with pytest.raises(StoreError, match="a query template with an empty name already exists"):
        st.query_set(12, template(Q3, ""))
    with pytest.raises(StoreError, match='invalid session "nope"'):
        st.query_set(12, query(Q3, "beta", session="nope"))
    with pytest.raises(StoreError, match="Missing query ID"):
        st.query_set(12, query("", "beta"))
    assert st.query_list()[0] == 11
    assert before["queries"] == [r for r in st.dump()["queries"] if r[0] == Q1]


@pytest.mark.parametrize(
    "tpl,fragment",
    [
        ({"Type": "bogus"}, "failed compiling template: Bad Template.Type 'bogus'"),
        ({"Type": "name_prefix_match", "Regexp": "(abc"}, "Bad Regexp: error parsing regexp: missing closing ): `(abc`"),
        ({"Type": "name_prefix_match", "Regexp": "a(?=b)"}, "invalid or unsupported Perl syntax: `(?=`"),
    ],
)
def test_bad_templates_are_refused(st, tpl, fragment):
    with pytest.raises(StoreError) as err:
        st.query_set(10, query(Q1, "t", template=tpl))
    assert fragment in str(err.value)
    assert st.query_list()[1] == []


@pytest.mark.parametrize(
    "service,fragment",
    [
        ("${nope}", "Bad evaluation for '${nope}' in Service.Service: 1:3: unknown variable accessed: nope"),
        ("${name.full", "Bad format '${name.full' in Service.Service"),
        ("${lower(1)}", "unknown function called: lower"),
    ],
)
def test_bad_interpolations_are_refused_at_write(st, service, fragment):
    with pytest.raises(StoreError) as err:
        st.query_set(10, template(Q1, "t", service))
    assert str(err.value).startswith("failed compiling template: ") and fragment in str(err.value)


def test_resolve_precedence_id_name_longest_prefix(st):
    st.query_set(10, query(Q1, "geo-db-exact", "exact"))
    st.query_set(11, template(Q2, "geo-", "short-${name.suffix}"))
    st.query_set(12, template(Q3, "geo-db-", "long-${name.suffix}"))
    st.query_set(13, template(Q4, "", "catchall-${name.full}"))
    assert st.query_resolve(Q1)[1].service["Service"] == "exact"
    assert st.query_resolve("GEO-DB-EXACT")[1].service["Service"] == "exact"  # names are case-insensitive
    assert st.query_resolve("geo-db-x")[1].service["Service"] == "long-x"
    assert st.query_resolve("geo-web")[1].service["Service"] == "short-web"
    assert st.query_resolve("other")[1].service["Service"] == "catchall-other"
    assert st.query_resolve("geo-")[1].service["Service"] == "short-"  # an exact name match renders too
    with pytest.raises(StoreError, match="prepared query templates can only be resolved up by name, not by ID"):
        st.query_resolve(Q2)
    with pytest.raises(StoreError, match="Missing query ID"):
        st.query_resolve("")
    st.query_delete(14, Q4)
    assert st.query_resolve("other") == (14, None)


def test_template_rendering_with_regexp_and_empty_tags(st):
    st.query_set(
        10,
        template(
            Q1, "geo-db-", "mysql-${match(1)}", r"^geo-db-(.*?)-([^\-]+?)$", remove_empty_tags=True,
            svc={"Tags": ["${match(2)}", "${match(7)}", "${agent.segment}", "$${literal}"], "NodeMeta": {"dc": "${name.prefix}"}},
        ),
    )
    q = st.query_resolve("geo-db-customer-primary")[1]
    assert q.service["Service"] == "mysql-customer"
    assert q.service["Tags"] == ["primary", "${literal}"]
    assert q.service["NodeMeta"] == {"dc": "geo-db-"}
    # No match: every group is empty; the stored template itself is untouched.
    assert st.query_resolve("geo-db-x")[1].service["Service"] == "mysql-"
    assert st.query_get(Q1)[1].service["Service"] == "mysql-${match(1)}"


def test_session_invalidation_deletes_bound_queries_in_the_same_entry(st):
    st.session_create(10, Session("s1", node="n1", node_checks=("serfHealth",)))
    st.query_set(11, query(Q1, session="s1"))
    st.query_set(12, query(Q2, "kept"))
    ws = WatchSet()
    st.query_list(ws)
    # The node's serfHealth goes critical: session and query go in the one write at index 13.
    st.ensure_registration(13, None, None, [HealthCheck("n1", "serfHealth", status="critical")])
    assert st.session_get("s1")[1] is None
    assert st.query_get(Q1) == (13, None)
    assert st.query_get(Q2)[1] is not None
    assert fired(ws)
    assert st.query_list()[0] == 13


def test_watches_fire_for_the_query_that_changed(st):
    st.query_set(10, query(Q1, "a"))
    st.query_set(11, query(Q2, "b"))
    ws1, ws2, wl = WatchSet(), WatchSet(), WatchSet()
    st.query_get(Q1, ws1)
    st.query_get(Q2, ws2)
    st.query_list(wl)
    st.query_set(12, query(Q1, "a", "api"))
    assert fired(ws1) and fired(wl) and not fired(ws2)


def test_dump_load_round_trip_keeps_templates_working(st):
    st.session_create(9, Session("s1", node="n1", node_checks=()))
    st.query_set(10, template(Q1, "geo-", "svc-${name.suffix}", session="s1"))
    st.query_set(11, query(Q2, "plain", token="tok", dns={"TTL": "10s"}))
    tables = st.dump()
    other = StateStore()
    other.load(tables)
    assert other.dump() == tables
    assert other.query_resolve("geo-x")[1].service["Service"] == "svc-x"
    assert other.checksum() == st.checksum()
    # Indexes are rebuilt too: the name stays taken, and the session still owns its query.
    with pytest.raises(StoreError, match="aliases an existing query name"):
        other.query_set(12, query(Q3, "PLAIN"))
    other.session_destroy(12, "s1")
    assert other.query_get(Q1)[1] is None


def test_json_shape_is_consuls(st):
    st.query_set(10, query(Q1, "shape", svc={"Tags": ["a"]}))
    out = shapes.prepared_query_json(st.query_get(Q1)[1])
    assert list(out) == ["ID", "Name", "Session", "Token", "Template", "Service", "DNS", "CreateIndex", "ModifyIndex"]
    assert list(out["Service"]) == [
        "Service", "SamenessGroup", "Failover", "OnlyPassing", "IgnoreCheckIDs", "Near", "Tags", "NodeMeta",
        "ServiceMeta", "Connect", "Peer",
    ]
    assert out["Service"]["Failover"] == {"NearestN": 0, "Datacenters": None, "Targets": None}
    assert out["Template"] == {"Type": "", "Regexp": "", "RemoveEmptyTags": False}


def test_fsm_applies_encoded_commands_and_returns_store_errors(st):
    from proconsul.server.commands import PreparedQueryRecord, PreparedQueryRequest, decode, encode
    from proconsul.server.fsm import FSM

    fsm = FSM(st)
    rec = PreparedQueryRecord(id=Q1, name="via-raft", service={"Service": "web"}, dns={"TTL": "5s"})
    payload = encode(PreparedQueryRequest(op="create", query=rec))
    assert payload[0] == 12 and decode(payload) == PreparedQueryRequest(op="create", query=rec)
    assert fsm.apply(payload, 20) is None
    assert st.query_get(Q1)[1].dns == {"TTL": "5s"}
    clash = PreparedQueryRecord(id=Q2, name="VIA-RAFT", service={"Service": "web"})
    err = fsm.apply(encode(PreparedQueryRequest(op="create", query=clash)), 21)
    assert isinstance(err, StoreError) and "aliases an existing query name" in str(err)
    assert fsm.apply(encode(PreparedQueryRequest(op="delete", query=PreparedQueryRecord(id=Q1))), 22) is None
    assert st.query_list() == (22, [])
