"""/v1/kv through the ASGI app of an in-process dev agent: Consul's KV API, blocking queries, bad input."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

pytestmark = pytest.mark.anyio


def b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


async def test_put_get_delete_round_trip(api):
    r = await api.put("/v1/kv/app/cfg", content=b"hello", params={"flags": "42"})
    assert r.status_code == 200 and r.json() is True
    r = await api.get("/v1/kv/app/cfg")
    assert r.status_code == 200
    [entry] = r.json()
    assert list(entry) == ["LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"]
    assert entry["Key"] == "app/cfg" and entry["Flags"] == 42 and entry["Value"] == b64(b"hello")
    assert int(r.headers["X-Consul-Index"]) == entry["ModifyIndex"]
    assert r.headers["X-Consul-KnownLeader"] == "true"
    assert r.headers["X-Consul-LastContact"] == "0"
    assert r.headers["X-Consul-Default-Acl-Policy"] == "allow"
    r = await api.get("/v1/kv/app/cfg", params={"raw": ""})
    assert r.content == b"hello" and r.headers["content-type"] == "text/plain"
    r = await api.delete("/v1/kv/app/cfg")
    assert r.status_code == 200 and r.json() is True
    r = await api.get("/v1/kv/app/cfg")
    assert r.status_code == 404 and r.content == b""
    assert int(r.headers["X-Consul-Index"]) > entry["ModifyIndex"]


async def test_empty_value_is_null(api):
    await api.put("/v1/kv/empty", content=b"")
    assert (await api.get("/v1/kv/empty")).json()[0]["Value"] is None
    assert (await api.get("/v1/kv/empty?raw")).content == b""


@pytest.mark.parametrize("key", ["a/b/c", "ünïcødé/ключ", "with space", "per%25cent", "q?mark", "emoji/🎉", "trailing/"])
async def test_keys_round_trip(api, key):
    from urllib.parse import quote

    path = "/v1/kv/" + quote(key, safe="/")
    assert (await api.put(path, content=key.encode())).json() is True
    [entry] = (await api.get(path)).json()
    assert entry["Key"] == key
    assert base64.b64decode(entry["Value"]) == key.encode()
    keys = (await api.get("/v1/kv/", params={"keys": ""})).json()
    assert key in keys


async def test_recurse_keys_and_separator(api):
    for k in ["tree/a/1", "tree/a/2", "tree/b", "tree/c/d/e"]:
        await api.put(f"/v1/kv/{k}", content=b"x")
    r = await api.get("/v1/kv/tree/", params={"recurse": ""})
    assert [e["Key"] for e in r.json()] == ["tree/a/1", "tree/a/2", "tree/b", "tree/c/d/e"]
    r = await api.get("/v1/kv/tree/", params={"keys": "", "separator": "/"})
    assert r.json() == ["tree/a/", "tree/b", "tree/c/"]
    r = await api.get("/v1/kv/tree/", params={"keys": "", "seperator": "/"})  # Consul's historic spelling
    assert r.json() == ["tree/a/", "tree/b", "tree/c/"]
    assert (await api.get("/v1/kv/nothing-here/", params={"keys": ""})).status_code == 404
    assert (await api.get("/v1/kv/nothing-here/", params={"recurse": ""})).status_code == 404
    r = await api.delete("/v1/kv/tree/a/", params={"recurse": ""})
    assert r.json() is True
    r = await api.get("/v1/kv/tree/", params={"keys": ""})
    assert r.json() == ["tree/b", "tree/c/d/e"]


async def test_cas_put_and_delete(api):
    assert (await api.put("/v1/kv/cas", content=b"1", params={"cas": "0"})).json() is True
    assert (await api.put("/v1/kv/cas", content=b"2", params={"cas": "0"})).json() is False
    idx = (await api.get("/v1/kv/cas")).json()[0]["ModifyIndex"]
    assert (await api.put("/v1/kv/cas", content=b"3", params={"cas": str(idx + 1000)})).json() is False
    assert (await api.put("/v1/kv/cas", content=b"3", params={"cas": str(idx)})).json() is True
    new_idx = (await api.get("/v1/kv/cas")).json()[0]["ModifyIndex"]
    assert (await api.delete("/v1/kv/cas", params={"cas": str(idx)})).json() is False
    assert (await api.delete("/v1/kv/cas", params={"cas": str(new_idx)})).json() is True
    assert (await api.get("/v1/kv/cas")).status_code == 404


async def test_locks_refused_without_sessions(api):
    r = await api.put("/v1/kv/lock", content=b"x", params={"acquire": "b0a3c2e4-0000-4000-8000-000000000000"})
    assert r.status_code == 400
    assert r.text == 'invalid session "b0a3c2e4-0000-4000-8000-000000000000"'
    assert (await api.get("/v1/kv/lock")).status_code == 404
    r = await api.put("/v1/kv/lock", content=b"x", params={"release": "some-session"})
    assert r.status_code == 200 and r.json() is False


async def test_value_too_large_is_refused_before_raft(api):
    index = api.agent.server.raft.applied_index()
    r = await api.put("/v1/kv/big", content=b"x" * (512 * 1024 + 1))
    assert r.status_code == 413
    assert "too large, max size: 524288 bytes" in r.text
    assert api.agent.server.raft.applied_index() == index
    assert (await api.get("/v1/kv/big")).status_code == 404
    r = await api.put("/v1/kv/big", content=b"x" * (512 * 1024))
    assert r.json() is True


async def test_other_datacenter_is_no_path(api):
    r = await api.get("/v1/kv/x", params={"dc": "dc9"})
    assert r.status_code == 500 and r.text == "No path to datacenter"
    r = await api.put("/v1/kv/x", content=b"1", params={"dc": "dc9"})
    assert r.status_code == 500
    assert (await api.get("/v1/kv/x", params={"dc": "dc1"})).status_code == 404


@pytest.mark.parametrize(
    "method,path,params,status,text",
    [
        ("GET", "/v1/kv/", {}, 400, "Missing key name"),
        ("PUT", "/v1/kv/", {}, 400, "Missing key name"),
        ("DELETE", "/v1/kv/", {}, 400, "Missing key name"),
        ("GET", "/v1/kv/k", {"index": "abc"}, 400, "Invalid index"),
        ("GET", "/v1/kv/k", {"index": "-1"}, 400, "Invalid index"),
        ("GET", "/v1/kv/k", {"index": "1", "wait": "10"}, 400, "Invalid wait time"),
        ("GET", "/v1/kv/k", {"stale": "", "consistent": ""}, 400, "Cannot specify ?stale with ?consistent, conflicting semantics."),
        ("PUT", "/v1/kv/k", {"flags": "x"}, 400, None),
        ("PUT", "/v1/kv/k", {"flags": str(2**64)}, 400, None),
        ("PUT", "/v1/kv/k", {"cas": "-3"}, 400, None),
        ("PUT", "/v1/kv/k", {"cas": "1", "acquire": "s"}, 400, "Conflicting flags: acquire=s&cas=1"),
        ("DELETE", "/v1/kv/k", {"cas": "1", "recurse": ""}, 400, "Conflicting flags: cas=1&recurse="),
        ("DELETE", "/v1/kv/k", {"cas": "zz"}, 400, None),
        ("PUT", "/v1/kv/k", {"acquire": ""}, 400, "missing session"),
    ],
)
async def test_bad_input_is_400_and_changes_nothing(api, method, path, params, status, text):
    before = api.agent.server.state.checksum()
    r = await api.request(method, path, params=params, content=b"v" if method == "PUT" else None)
    assert r.status_code == status, r.text
    assert r.text
    if text is not None:
        assert r.text == text
    assert api.agent.server.state.checksum() == before


async def test_wrong_method_is_405_and_options_lists_methods(api):
    r = await api.request("PATCH", "/v1/kv/x")
    assert r.status_code == 405 and r.text == "method PATCH not allowed"
    assert r.headers["allow"] == "OPTIONS,GET,PUT,DELETE"
    r = await api.request("OPTIONS", "/v1/kv/x")
    assert r.status_code == 200 and r.headers["allow"] == "OPTIONS,GET,PUT,DELETE"


async def test_blocking_get_wakes_on_change_within_100ms(api):
    await api.put("/v1/kv/block/key", content=b"1")
    r = await api.get("/v1/kv/block/key")
    index = int(r.headers["X-Consul-Index"])

    async def blocked():
        r = await api.get("/v1/kv/block/key", params={"index": str(index), "wait": "30s"})
        return time.monotonic(), r

    task = asyncio.create_task(blocked())
    await asyncio.sleep(0.2)
    assert not task.done()
    # Measured from the write's start: an upper bound on "after it committed".
    written = time.monotonic()
    await api.put("/v1/kv/block/key", content=b"2")
    returned, r = await asyncio.wait_for(task, 5)
    latency = returned - written
    print(f"blocking GET returned {latency * 1000:.1f} ms after the write began")
    assert latency < 0.1
    assert int(r.headers["X-Consul-Index"]) > index
    assert base64.b64decode(r.json()[0]["Value"]) == b"2"


async def test_blocking_get_ignores_changes_elsewhere(api):
    await api.put("/v1/kv/quiet/key", content=b"1")
    index = int((await api.get("/v1/kv/quiet/key")).headers["X-Consul-Index"])
    start = time.monotonic()
    task = asyncio.create_task(api.get("/v1/kv/quiet/key", params={"index": str(index), "wait": "1s"}))
    await asyncio.sleep(0.1)
    await api.put("/v1/kv/quiet/sibling", content=b"x")
    await api.put("/v1/kv/elsewhere", content=b"x")
    r = await asyncio.wait_for(task, 5)
    assert time.monotonic() - start >= 1.0  # timed out: the sibling write did not wake it
    assert int(r.headers["X-Consul-Index"]) == index


async def test_blocking_prefix_list_wakes_on_child_change(api):
    await api.put("/v1/kv/watched/a", content=b"1")
    r = await api.get("/v1/kv/watched/", params={"recurse": ""})
    index = int(r.headers["X-Consul-Index"])
    task = asyncio.create_task(api.get("/v1/kv/watched/", params={"recurse": "", "index": str(index), "wait": "30s"}))
    await asyncio.sleep(0.1)
    await api.put("/v1/kv/watched/new/deep", content=b"2")
    r = await asyncio.wait_for(task, 5)
    assert int(r.headers["X-Consul-Index"]) > index
    assert [e["Key"] for e in r.json()] == ["watched/a", "watched/new/deep"]


async def test_blocking_on_missing_key_wakes_on_create(api):
    r = await api.get("/v1/kv/later/created")
    assert r.status_code == 404
    index = int(r.headers["X-Consul-Index"])
    task = asyncio.create_task(api.get("/v1/kv/later/created", params={"index": str(index), "wait": "30s"}))
    await asyncio.sleep(0.1)
    await api.put("/v1/kv/later/created", content=b"now")
    r = await asyncio.wait_for(task, 5)
    assert r.status_code == 200


async def test_index_is_never_zero_and_never_goes_backwards(api):
    seen = 0
    for i in range(20):
        await api.put(f"/v1/kv/mono/{i % 3}", content=str(i).encode())
        if i % 4 == 0:
            await api.delete(f"/v1/kv/mono/{i % 3}")
        for path, params in (("/v1/kv/mono/", {"recurse": ""}), ("/v1/kv/mono/", {"keys": ""})):
            idx = int((await api.get(path, params=params)).headers["X-Consul-Index"])
            assert idx >= 1
        idx = int((await api.get("/v1/kv/mono/", params={"recurse": ""})).headers["X-Consul-Index"])
        assert idx >= seen
        seen = idx


async def test_consistency_modes_report_themselves(api):
    await api.put("/v1/kv/mode", content=b"1")
    for params, label in (({}, "leader"), ({"stale": ""}, "stale"), ({"consistent": ""}, "consistent")):
        r = await api.get("/v1/kv/mode", params=params)
        assert r.status_code == 200
        assert r.headers["X-Consul-Effective-Consistency"] == label
