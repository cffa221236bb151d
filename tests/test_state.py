"""State store: Consul's KV semantics, indexes and watches, on a bare store at explicit indexes."""

from __future__ import annotations

import pytest

from proconsul.server.commands import TxnKVOp
from proconsul.server.errors import StoreError
from proconsul.server.state import DirEntry, StateStore, TxnErrors
from proconsul.server.watch import WatchSet


def put(st: StateStore, index: int, key: str, value: bytes = b"v", flags: int = 0) -> None:
    st.kv_set(index, DirEntry(key, value, flags))


def fired(ws: WatchSet) -> bool:
    return any(ch.fired for ch in ws.channels)


def test_kv_get_returns_modify_index_or_table_index():
    st = StateStore()
    assert st.kv_get("a") == (1, None)  # never 0
    put(st, 5, "a")
    put(st, 7, "b")
    idx, e = st.kv_get("a")
    assert idx == 5 and e.value == b"v" and e.create_index == 5 and e.modify_index == 5
    assert st.kv_get("missing")[0] == 7


def test_unchanged_set_keeps_modify_index_and_fires_nothing():
    st = StateStore()
    put(st, 5, "a", b"x")
    ws = WatchSet()
    st.kv_get("a", ws)
    put(st, 9, "a", b"x")
    assert st.kv_get("a")[1].modify_index == 5
    assert not fired(ws)
    put(st, 10, "a", b"y")
    assert fired(ws)
    assert st.kv_get("a")[1].create_index == 5


def test_kv_delete_fires_prefix_watch_not_sibling():
    st = StateStore()
    put(st, 2, "web/a")
    put(st, 3, "web/b")
    put(st, 4, "db/a")
    prefix_ws, sibling_ws, other_ws = WatchSet(), WatchSet(), WatchSet()
    st.kv_list("web/", prefix_ws)
    st.kv_get("web/b", sibling_ws)
    st.kv_list("db/", other_ws)
    st.kv_delete(10, "web/a")
    assert fired(prefix_ws)
    assert not fired(sibling_ws)
    assert not fired(other_ws)
    # The list index moves forward with the tombstone, never back.
    assert st.kv_list("web/")[0] == 10
    assert st.kv_get("web/a") == (10, None)


def test_list_index_uses_entries_and_tombstones_under_prefix():
    st = StateStore()
    put(st, 2, "a/1")
    put(st, 3, "b/1")
    put(st, 4, "a/2")
    assert st.kv_list("a/")[0] == 4
    assert st.kv_list("b/")[0] == 3
    assert st.kv_list("")[0] == 4  # whole table
    assert st.kv_list("zzz")[0] == 4  # nothing under it: table index
    st.kv_delete(8, "a/2")
    assert st.kv_list("a/")[0] == 8
    assert st.kv_list("b/")[0] == 3


def test_reaping_tombstones_never_moves_an_index_back():
    st = StateStore()
    put(st, 2, "a/1")
    put(st, 3, "a/2")
    st.kv_delete(5, "a/2")
    assert st.kv_list("a/")[0] == 5
    st.kv_reap_tombstones(6, 5)
    assert st.tombstone_indexes() == []
    assert st.kv_list("a/")[0] >= 5


def test_cas_semantics():
    st = StateStore()
    assert st.kv_set_cas(2, DirEntry("k", b"1", modify_index=0)) is True  # create only
    assert st.kv_set_cas(3, DirEntry("k", b"2", modify_index=0)) is False
    assert st.kv_set_cas(4, DirEntry("k", b"3", modify_index=99)) is False
    assert st.kv_set_cas(5, DirEntry("k", b"4", modify_index=2)) is True
    assert st.kv_get("k")[1].value == b"4"
    assert st.kv_set_cas(6, DirEntry("nope", b"x", modify_index=3)) is False
    # delete-cas: stale index refused, missing key counts as deleted (Consul)
    assert st.kv_delete_cas(7, "k", 2) is False
    assert st.kv_delete_cas(8, "k", 5) is True
    assert st.kv_delete_cas(9, "k", 5) is True


def test_delete_tree_and_keys_with_separator():
    st = StateStore()
    for i, k in enumerate(["a/b/c", "a/b/d", "a/e", "a/f/g", "b"], start=2):
        put(st, i, k)
    assert st.kv_keys("a/", "/")[1] == ["a/b/", "a/e", "a/f/"]
    assert st.kv_keys("a/")[1] == ["a/b/c", "a/b/d", "a/e", "a/f/g"]
    assert st.kv_keys("", "/")[1] == ["a/", "b"]
    st.kv_delete_tree(20, "a/b/")
    assert [e.key for e in st.kv_list("")[1]] == ["a/e", "a/f/g", "b"]
    assert st.kv_list("a/b/")[0] == 20


def test_locks_need_a_session_that_exists():
    st = StateStore()
    with pytest.raises(StoreError, match='invalid session "nope"'):
        st.kv_lock(2, DirEntry("k", b"v", session="nope"))
    with pytest.raises(StoreError, match="missing session"):
        st.kv_lock(2, DirEntry("k", b"v", session=""))
    assert st.kv_get("k")[1] is None
    # release of a key nobody holds is simply false
    assert st.kv_unlock(3, DirEntry("k", b"v", session="s1")) is False


def test_locks_with_a_session():
    st = StateStore()
    st._sessions["s1"] = object()
    st._sessions["s2"] = object()
    assert st.kv_lock(2, DirEntry("k", b"v", session="s1")) is True
    e = st.kv_get("k")[1]
    assert (e.session, e.lock_index) == ("s1", 1)
    assert st.kv_lock(3, DirEntry("k", b"v", session="s2")) is False
    assert st.kv_lock(4, DirEntry("k", b"w", session="s1")) is True  # re-acquire by holder
    assert st.kv_get("k")[1].lock_index == 1
    put(st, 5, "k", b"plain")  # a plain set keeps session and lock index
    e = st.kv_get("k")[1]
    assert (e.session, e.lock_index, e.value) == ("s1", 1, b"plain")
    assert st.kv_unlock(6, DirEntry("k", b"x", session="s2")) is False
    assert st.kv_unlock(7, DirEntry("k", b"x", session="s1")) is True
    e = st.kv_get("k")[1]
    assert (e.session, e.lock_index) == ("", 1)
    assert st.kv_lock(8, DirEntry("k", b"v", session="s2")) is True
    assert st.kv_get("k")[1].lock_index == 2


def op(verb: str, key: str, value: bytes | None = None, index: int = 0, session: str = "") -> TxnKVOp:
    return TxnKVOp(verb=verb, key=key, value=value, index=index, session=session)


def test_txn_commits_all_or_nothing_and_reports_every_failure():
    st = StateStore()
    put(st, 2, "x", b"old")
    ws = WatchSet()
    st.kv_get("x", ws)
    with pytest.raises(TxnErrors) as err:
        st.txn(
            3,
            [
                op("set", "x", b"new"),
                op("check-index", "x", index=99),
                op("set", "y", b"1"),
                op("get", "missing"),
                op("frobnicate", "z"),
            ],
        )
    assert err.value.errors == [
        (1, 'failed index check for key "x", current modify index 3 != 99'),
        (3, 'key "missing" doesn\'t exist'),
        (4, 'unknown KV verb "frobnicate"'),
    ]
    assert st.kv_get("x")[1].value == b"old"
    assert st.kv_get("y")[1] is None
    assert st.kv_get("x")[0] == 2
    assert not fired(ws)


def test_txn_results_blank_values_except_get():
    st = StateStore()
    results = st.txn(
        2,
        [op("set", "a", b"1"), op("set", "b", b"2"), op("get", "a"), op("delete", "b"), op("get-tree", "a"), op("check-not-exists", "b")],
    )
    assert [(r.key, r.value) for r in results] == [("a", None), ("b", None), ("a", b"1"), ("a", b"1")]
    assert st.kv_get("b")[1] is None


def test_txn_read_refuses_writes():
    st = StateStore()
    results, errors = st.txn_read([op("get", "a"), op("set", "a", b"1")])
    assert results == [] and errors[0][0] == 0 and errors[1][0] == 1
    assert st.kv_get("a")[1] is None


def test_restore_replaces_tables_fires_abandon_and_lifts_indexes():
    st = StateStore()
    put(st, 2, "a")
    abandon = st.abandon_channel
    ws = WatchSet()
    st.kv_get("zzz", ws)
    other = StateStore()
    put(other, 3, "b", b"restored")
    st.restore(50, other.dump())
    assert abandon.fired and fired(ws)
    assert st.kv_get("a")[1] is None
    assert st.kv_get("b")[1].value == b"restored"
    assert st.kv_get("a")[0] >= 50  # table index lifted: blocked readers see it move forward


def test_checksum_depends_on_content_only():
    a, b = StateStore(), StateStore()
    for st in (a, b):
        put(st, 2, "k1", b"x")
        put(st, 3, "k2", b"y")
        st.kv_delete(4, "k1")
    assert a.checksum() == b.checksum()
    put(b, 5, "k3")
    assert a.checksum() != b.checksum()
