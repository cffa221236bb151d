"""FSM and snapshots: encoded commands applied at explicit indexes, SQLite round trips."""

from __future__ import annotations

import sqlite3

import pytest

from proconsul.server.commands import (
    BarrierRequest,
    KVSRequest,
    RestoreRequest,
    TombstoneRequest,
    TxnKVOp,
    TxnRequest,
    Batch,
    UnknownCommandError,
    decode,
    encode,
    encode_batch,
)
from proconsul.server.errors import StoreError
from proconsul.server.fsm import FSM, TxnResult
from proconsul.server.snapshot import read_snapshot, tables_from_wire, tables_to_wire, write_snapshot
from proconsul.server.state import DirEntry, StateStore


def test_commands_round_trip_through_the_wire_form():
    cmds = [
        KVSRequest(op="set", key="a/ü%2F", value=b"\x00\xffbin", flags=2**64 - 1),
        TxnRequest(ops=[TxnKVOp(verb="cas", key="k", value=None, index=7)]),
        TombstoneRequest(reap_index=9),
        BarrierRequest(),
    ]
    for cmd in cmds:
        assert decode(encode(cmd)) == cmd


def test_a_batch_applies_in_order_at_one_index_with_a_result_each():
    payloads = [
        encode(KVSRequest(op="set", key="a", value=b"1")),
        encode(KVSRequest(op="cas", key="a", value=b"2", index=7)),  # a's index is 7 by now: wins
        encode(KVSRequest(op="cas", key="a", value=b"3", index=6)),  # stale index: loses
        encode(KVSRequest(op="lock", key="b", value=b"v", session="nope")),  # an error, in its slot only
        encode(KVSRequest(op="set", key="c", value=b"")),
    ]
    assert decode(encode_batch(payloads)) == Batch(payloads)
    st = StateStore()
    results = FSM(st).apply(encode_batch(payloads), 7)
    assert results[:3] == [True, True, False] and isinstance(results[3], StoreError) and results[4] is True
    assert st.kv_get("a")[1].value == b"2" and st.kv_get("a")[1].modify_index == 7
    assert st.kv_get("b")[1] is None and st.kv_get("c")[1].modify_index == 7


def test_unknown_command_type_is_refused_not_skipped():
    with pytest.raises(UnknownCommandError):
        decode(b"\xfe{}")
    fsm = FSM(StateStore())
    with pytest.raises(UnknownCommandError):
        fsm.apply(b"\xfe{}", 3)


def test_apply_returns_store_errors_instead_of_raising():
    fsm = FSM(StateStore())
    result = fsm.apply(encode(KVSRequest(op="lock", key="k", value=b"v", session="nope")), 3)
    assert isinstance(result, StoreError)
    assert str(result) == 'invalid session "nope"'
    result = fsm.apply(encode(KVSRequest(op="frob", key="k")), 4)
    assert isinstance(result, StoreError)


def test_apply_kvs_and_txn():
    st = StateStore()
    fsm = FSM(st)
    assert fsm.apply(encode(KVSRequest(op="set", key="a", value=b"1")), 3) is True
    assert fsm.apply(encode(KVSRequest(op="cas", key="a", value=b"2", index=99)), 4) is False
    res = fsm.apply(encode(TxnRequest(ops=[TxnKVOp("set", "b", b"x"), TxnKVOp("check-index", "a", index=3)])), 5)
    assert isinstance(res, TxnResult) and res.errors == [] and len(res.results) == 2
    res = fsm.apply(encode(TxnRequest(ops=[TxnKVOp("set", "c", b"x"), TxnKVOp("check-index", "a", index=1)])), 6)
    assert res.errors and st.kv_get("c")[1] is None
    assert fsm.apply(encode(BarrierRequest()), 7) is None


def _sample_store() -> StateStore:
    st = StateStore()
    st.kv_set(3, DirEntry("a", b"\x00bin", 2**64 - 1))
    st.kv_set(4, DirEntry("b/c", None, 1))
    st.kv_delete(5, "a")
    return st


def test_snapshot_file_round_trips_and_opens_with_sqlite3(tmp_path):
    st = _sample_store()
    path = str(tmp_path / "snap.db")
    write_snapshot(path, st.dump(), {"index": 5})
    with sqlite3.connect(path) as db:
        names = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
        assert {"kvs", "tombstones", "index", "meta"} <= names
        assert db.execute("select key from kvs").fetchall() == [("b/c",)]
    tables, meta = read_snapshot(path)
    assert meta["index"] == 5
    restored = StateStore()
    restored.load(tables)
    assert restored.checksum() == st.checksum()


def test_restore_command_carries_tables_through_json():
    st = _sample_store()
    fresh = StateStore()
    cmd = RestoreRequest(tables=tables_to_wire(st.dump()))
    FSM(fresh).apply(encode(cmd), 10)
    assert [e.key for e in fresh.kv_list("")[1]] == ["b/c"]
    assert fresh.kv_get("b/c")[1].flags == 1
    with pytest.raises(ValueError):
        tables_from_wire({"nope": []})


def test_a_remembered_kv_command_applies_as_its_decoded_payload_would():
    """The leader skips decoding its own KV proposals: the state must be what decoding gives, and
    only KVSRequest (whose wire form round-trips exactly) is remembered."""
    cmds = [KVSRequest(op="set", key=f"k{i}", value=bytes([i]) * i or None, flags=i) for i in range(5)]
    remembered, decoded = StateStore(), StateStore()
    fsm = FSM(remembered)
    for i, cmd in enumerate(cmds):
        payload = encode(cmd)
        fsm.remember(payload, cmd)
        assert fsm.apply(payload, 10 + i) is True
        assert FSM(decoded).apply(payload, 10 + i) is True
    assert fsm.proposed == {}
    assert remembered.checksum() == decoded.checksum()
    fsm.remember(encode(TxnRequest(ops=[])), TxnRequest(ops=[]))
    assert fsm.proposed == {}


def test_kv_commands_encode_byte_for_byte_as_the_generic_path():
    import random

    from proconsul.server.codec import compact_json, to_wire
    from proconsul.server.commands import _TYPE_BYTES

    rnd = random.Random(11)
    alphabet = "ab/\"\\\n\t é中\U0001f600\x00"
    for _ in range(300):
        cmd = KVSRequest(
            op=rnd.choice(["set", "cas", "lock", "unlock", "delete", "delete-cas", "delete-tree"]),
            key="".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12))),
            value=None if rnd.random() < 0.2 else bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 60))),
            flags=rnd.choice([0, 7, 2**64 - 1]), index=rnd.randint(0, 2**63), session=rnd.choice(["", "0f3c2d2e-8b8a"]),
        )
        assert encode(cmd) == _TYPE_BYTES[KVSRequest] + compact_json(to_wire(cmd))
        assert decode(encode(cmd)) == cmd
