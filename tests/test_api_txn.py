"""/v1/txn through the ASGI app: Consul's verbs, all-or-nothing, response shapes, limits."""

from __future__ import annotations

import base64

import pytest

pytestmark = pytest.mark.anyio


def b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


def kv(verb: str, key: str, value: bytes | None = None, **extra) -> dict:
    op = {"Verb": verb, "Key": key, **extra}
    if value is not None:
        op["Value"] = b64(value)
    return {"KV": op}


async def test_write_txn_commits_every_op(api):
    r = await api.put("/v1/txn", json=[kv("set", "t/a", b"1"), kv("set", "t/b", b"2", Flags=7), kv("get", "t/a")])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["Errors"] is None
    results = [res["KV"] for res in body["Results"]]
    assert [(e["Key"], e["Value"]) for e in results] == [("t/a", None), ("t/b", None), ("t/a", b64(b"1"))]
    assert results[1]["Flags"] == 7
    assert (await api.get("/v1/kv/t/b?raw")).content == b"2"


async def test_failed_txn_rolls_back_and_reports_each_op(api):
    await api.put("/v1/kv/t2/x", content=b"orig")
    index = (await api.get("/v1/kv/t2/x")).json()[0]["ModifyIndex"]
    r = await api.put(
        "/v1/txn",
        json=[kv("set", "t2/x", b"changed"), kv("cas", "t2/x", b"again", Index=index + 500), kv("set", "t2/new", b"1")],
    )
    assert r.status_code == 409
    assert r.json() == {"Results": None, "Errors": [{"OpIndex": 1, "What": 'failed to set key "t2/x", index is stale'}]}
    assert (await api.get("/v1/kv/t2/x?raw")).content == b"orig"
    assert (await api.get("/v1/kv/t2/new")).status_code == 404


async def test_every_kv_verb(api):
    r = await api.put("/v1/txn", json=[kv("set", "v/a", b"1"), kv("set", "v/b", b"2"), kv("set", "v/c/d", b"3")])
    a_index = r.json()["Results"][0]["KV"]["ModifyIndex"]
    ops = [
        kv("check-index", "v/a", Index=a_index),
        kv("check-not-exists", "v/zzz"),
        kv("check-session", "v/a", Session=""),
        kv("cas", "v/a", b"10", Index=a_index),
        kv("get-tree", "v/c/"),
        kv("delete", "v/b"),
        kv("delete-tree", "v/c/"),
        kv("delete-cas", "v/never", Index=1),
    ]
    r = await api.put("/v1/txn", json=ops)
    assert r.status_code == 200, r.text
    keys = [res["KV"]["Key"] for res in r.json()["Results"]]
    assert keys == ["v/a", "v/a", "v/a", "v/c/d"]  # checks and cas return entries, deletes none
    assert (await api.get("/v1/kv/v/", params={"keys": ""})).json() == ["v/a"]


async def test_read_only_txn_is_a_read(api):
    await api.put("/v1/kv/ro/a", content=b"1")
    index = api.agent.server.raft.applied_index()
    r = await api.put("/v1/txn", json=[kv("get", "ro/a"), kv("check-not-exists", "ro/b")])
    assert r.status_code == 200
    body = r.json()
    assert body["Results"][0]["KV"]["Value"] == b64(b"1")
    assert body["KnownLeader"] is True and "LastContact" in body and body["Index"] == 0
    assert r.headers["X-Consul-KnownLeader"] == "true"
    assert api.agent.server.raft.applied_index() == index  # no Raft entry for a read
    r = await api.put("/v1/txn", json=[kv("get", "ro/missing")])
    assert r.status_code == 409
    assert r.json()["Errors"] == [{"OpIndex": 0, "What": 'key "ro/missing" doesn\'t exist'}]


async def test_field_names_match_case_insensitively_as_in_go(api):
    r = await api.put("/v1/txn", json=[{"kv": {"verb": "set", "key": "ci/a", "value": b64(b"x")}}])
    assert r.status_code == 200, r.text
    assert (await api.get("/v1/kv/ci/a?raw")).content == b"x"


async def test_txn_limits(api):
    r = await api.put("/v1/txn", json=[kv("set", f"lim/{i}", b"x") for i in range(129)])
    assert r.status_code == 413 and r.text == "Transaction contains too many operations (129 > 128)"
    r = await api.put("/v1/txn", json=[kv("set", f"lim/{i}", b"x") for i in range(128)])
    assert r.status_code == 200
    r = await api.put("/v1/txn", json=[kv("set", "lim/big", b"x" * (512 * 1024 + 1))])
    assert r.status_code == 413


@pytest.mark.parametrize(
    "body,fragment",
    [
        (b"", "Failed to parse body"),
        (b"{not json", "Failed to parse body"),
        (b'{"KV": {}}', "expected a JSON array"),
        (b"[1]", "operation 0 is not an object"),
        (b'[{"Foo": {}}]', 'unknown field "foo"'),
        (b'[{"KV": {"Verb": "set", "Key": "k", "Bogus": 1}}]', 'unknown field "bogus"'),
        (b'[{"KV": {"Verb": "set", "Key": "k", "Value": "***"}}]', "not valid base64"),
        (b'[{"KV": {"Verb": "set", "Key": "k", "Flags": -1}}]', "Flags: -1 is out of range"),
        (b'[{"KV": {"Verb": "set", "Key": 5}}]', "Key: expected a string"),
        (b'[{"KV": "set"}]', "KV must be an object"),
        (b'[{"Node": {"Verb": "set"}}]', "Node operations are not supported"),
        (b"[{}]", "has no KV member"),
    ],
)
async def test_malformed_bodies_are_400(api, body, fragment):
    before = api.agent.server.state.checksum()
    r = await api.put("/v1/txn", content=body)
    assert r.status_code == 400, r.text
    assert fragment in r.text
    assert api.agent.server.state.checksum() == before


async def test_missing_key_and_unknown_verb_are_409_like_consul(api):
    r = await api.put("/v1/txn", json=[kv("set", "", b"x")])
    assert r.status_code == 409 and r.json()["Errors"] == [{"OpIndex": 0, "What": "Must provide key"}]
    r = await api.put("/v1/txn", json=[kv("set", "w/x", b"1"), kv("frob", "w/x")])
    assert r.status_code == 409 and r.json()["Errors"] == [{"OpIndex": 1, "What": 'unknown KV verb "frob"'}]
    assert (await api.get("/v1/kv/w/x")).status_code == 404


async def test_wrong_method(api):
    r = await api.get("/v1/txn")
    assert r.status_code == 405 and r.headers["allow"] == "OPTIONS,PUT"
