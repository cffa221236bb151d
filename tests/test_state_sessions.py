"""Sessions in the state store: creation rules and every way a session is invalidated, on a bare store."""

from __future__ import annotations

import pytest

from proconsul.server.errors import StoreError
from proconsul.server.state import DirEntry, HealthCheck, Node, Session, StateStore
from proconsul.server.watch import WatchSet


@pytest.fixture
def st() -> StateStore:
    s = StateStore()
    s.ensure_registration(2, Node("n1", "", "10.0.0.1"), None, [HealthCheck("n1", "serfHealth", status="passing")])
    s.ensure_registration(3, Node("n2", "", "10.0.0.2"), None, [HealthCheck("n2", "serfHealth", status="passing")])
    s.lock_delays: list = []
    s.on_lock_delay = lambda keys, delay: s.lock_delays.append((keys, delay))
    return s


def session(sid: str, node: str = "n1", **kw) -> Session:
    return Session(sid, node=node, node_checks=kw.pop("checks", ("serfHealth",)), **kw)


def test_create_needs_a_node_and_healthy_checks(st):
    with pytest.raises(StoreError, match="Missing node registration"):
        st.session_create(10, session("s0", node="ghost"))
    with pytest.raises(StoreError, match="Missing check 'nope' registration"):
        st.session_create(10, session("s0", checks=("nope",)))
    st.ensure_registration(11, None, None, [HealthCheck("n1", "bad", status="critical")])
    with pytest.raises(StoreError, match="Check 'bad' is in critical state"):
        st.session_create(12, session("s0", checks=("bad",)))
    with pytest.raises(StoreError, match="Invalid session behavior"):
        st.session_create(12, session("s0", behavior="explode"))
    assert st.session_list()[1] == []
    st.session_create(13, session("s1"))
    idx, row = st.session_get("s1")
    assert idx == 13 and row.node == "n1" and row.create_index == 13


def test_destroy_releases_held_keys_and_reports_the_lock_delay(st):
    st.session_create(10, session("s1", lock_delay=5_000_000_000))
    assert st.kv_lock(11, DirEntry("a", b"v", session="s1"))
    assert st.kv_lock(12, DirEntry("b", b"v", session="s1"))
    ws = WatchSet()
    st.kv_get("a", ws)
    st.session_destroy(13, "s1")
    a = st.kv_get("a")[1]
    assert (a.session, a.lock_index, a.value, a.modify_index) == ("", 1, b"v", 13)
    assert any(ch.fired for ch in ws.channels)
    assert st.lock_delays == [(["a", "b"], 5.0)]
    assert st.session_get("s1")[1] is None
    st.session_destroy(14, "s1")  # already gone: a no-op (a late TTL expiry is harmless)


def test_delete_behaviour_deletes_held_keys(st):
    st.session_create(10, session("s1", behavior="delete"))
    st.kv_lock(11, DirEntry("eph", b"v", session="s1"))
    st.kv_set(12, DirEntry("other", b"v"))
    st.session_destroy(13, "s1")
    assert st.kv_get("eph")[1] is None and st.kv_get("other")[1] is not None


def test_lock_delay_is_capped_at_a_minute(st):
    st.session_create(10, session("s1", lock_delay=600_000_000_000))
    st.kv_lock(11, DirEntry("k", b"", session="s1"))
    st.session_destroy(12, "s1")
    assert st.lock_delays == [(["k"], 60.0)]


def test_check_going_critical_invalidates_only_sessions_bound_to_it(st):
    st.ensure_registration(10, None, None, [HealthCheck("n1", "app", status="passing")])
    st.session_create(11, session("bound", checks=("app",)))
    st.session_create(12, session("serf"))
    st.kv_lock(13, DirEntry("held", b"", session="bound"))
    st.ensure_registration(14, None, None, [HealthCheck("n1", "app", status="critical")])
    assert st.session_get("bound")[1] is None and st.session_get("serf")[1] is not None
    assert st.kv_get("held")[1].session == ""
    assert st.kv_get("held")[1].modify_index == 14  # released in the same entry as the check change


def test_node_deregistration_invalidates_its_sessions(st):
    st.session_create(10, session("s1", node="n1"))
    st.session_create(11, session("s2", node="n2"))
    st.kv_lock(12, DirEntry("k", b"", session="s1"))
    st.delete_node(13, "n1")
    assert st.session_get("s1")[1] is None and st.session_get("s2")[1] is not None
    assert st.kv_get("k")[1].session == ""


def test_removed_check_invalidates_its_sessions(st):
    st.ensure_registration(10, None, None, [HealthCheck("n2", "c2", status="passing")])
    st.session_create(11, session("s2", node="n2", checks=("c2",)))
    st.delete_check(12, "n2", "c2")
    assert st.session_get("s2")[1] is None


def test_node_sessions_and_blocking_watches(st):
    st.session_create(10, session("a1", node="n1"))
    st.session_create(11, session("b1", node="n2"))
    assert [s.id for s in st.node_sessions("N1")[1]] == ["a1"]
    ws = WatchSet()
    st.node_sessions("n2", ws)
    st.session_destroy(12, "a1")
    assert not any(ch.fired for ch in ws.channels)  # another node's session
    st.session_destroy(13, "b1")
    assert any(ch.fired for ch in ws.channels)


def test_sessions_survive_dump_and_load(st):
    st.session_create(10, session("s1", ttl="15s"))
    st.kv_lock(11, DirEntry("k", b"", session="s1"))
    other = StateStore()
    other.load(st.dump())
    assert other.checksum() == st.checksum()
    assert other.session_ids_with_ttl() == [("s1", "15s")]
    other.session_destroy(12, "s1")  # the session -> keys index was rebuilt on load
    assert other.kv_get("k")[1].session == ""
