"""/v1/session and locks through the ASGI app of an in-process dev agent (session_ttl_min lowered to 1 s)."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import eventually_async

pytestmark = pytest.mark.anyio


async def create(api, **body) -> str:
    r = await api.put("/v1/session/create", json=body)
    assert r.status_code == 200, r.text
    return r.json()["ID"]


async def test_create_info_list_node_destroy(api):
    sid = await create(api, Name="s-crud", TTL="30s", LockDelay="2s", Behavior="delete")
    [info] = (await api.get(f"/v1/session/info/{sid}")).json()
    assert list(info) == ["ID", "Name", "Node", "LockDelay", "Behavior", "TTL", "NodeChecks", "ServiceChecks", "CreateIndex", "ModifyIndex"]
    assert (info["Name"], info["Node"], info["LockDelay"], info["Behavior"], info["TTL"], info["NodeChecks"]) == (
        "s-crud", "api", 2_000_000_000, "delete", "30s", ["serfHealth"])
    assert sid in [s["ID"] for s in (await api.get("/v1/session/list")).json()]
    assert sid in [s["ID"] for s in (await api.get("/v1/session/node/api")).json()]
    assert (await api.put(f"/v1/session/destroy/{sid}")).json() is True
    assert (await api.get(f"/v1/session/info/{sid}")).json() == []


async def test_defaults_and_explicit_empty_checks(api):
    sid = await create(api)
    [info] = (await api.get(f"/v1/session/info/{sid}")).json()
    assert (info["LockDelay"], info["Behavior"], info["NodeChecks"]) == (15_000_000_000, "release", ["serfHealth"])
    sid = await create(api, Checks=[])  # Patroni's way of asking for a session bound to nothing
    [info] = (await api.get(f"/v1/session/info/{sid}")).json()
    assert info["NodeChecks"] == []
    sid = await create(api, LockDelay=3)  # a bare small number means seconds (Consul's lockDelayMinThreshold)
    assert (await api.get(f"/v1/session/info/{sid}")).json()[0]["LockDelay"] == 3_000_000_000
    await api.put("/v1/agent/check/register", json={"Name": "extra", "TTL": "30s", "Status": "passing"})
    await eventually_async(lambda: api.get("/v1/health/node/api"), want=lambda r: any(c["CheckID"] == "extra" for c in r.json()))
    sid = await create(api, Checks=["extra"])  # Checks without NodeChecks: serfHealth stays, both enforced
    assert (await api.get(f"/v1/session/info/{sid}")).json()[0]["NodeChecks"] == ["serfHealth", "extra"]


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"TTL": "500ms"}, "Invalid Session TTL '500000000', must be between [1s=24h0m0s]"),
        ({"TTL": "25h"}, "Invalid Session TTL '90000000000000'"),
        ({"TTL": "soon"}, "invalid"),
        ({"Behavior": "explode"}, "Invalid Behavior setting 'explode'"),
        ({"Node": "no-such-node"}, "Missing node registration"),
        ({"NodeChecks": ["no-such-check"]}, "Missing check 'no-such-check' registration"),
        ({"LockDelay": "soon"}, "LockDelay"),
        ({"Bogus": 1}, 'unknown field "Bogus"'),
    ],
)
async def test_invalid_sessions_are_400_and_nothing_is_created(api, body, fragment):
    before = (await api.get("/v1/session/list")).json()
    r = await api.put("/v1/session/create", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.text, r.text
    assert (await api.get("/v1/session/list")).json() == before


async def test_renew_returns_the_session_and_404_when_gone(api):
    sid = await create(api, TTL="10s")
    r = await api.put(f"/v1/session/renew/{sid}")
    assert r.status_code == 200 and r.json()[0]["ID"] == sid
    await api.put(f"/v1/session/destroy/{sid}")
    r = await api.put(f"/v1/session/renew/{sid}")
    assert r.status_code == 404 and r.text == f"Session id '{sid}' not found"


async def test_ttl_expiry_after_twice_the_ttl_and_renew_extends_it(api):
    kept = await create(api, TTL="1s")
    expiring = await create(api, TTL="1s")
    await api.put("/v1/kv/ttl/lock", content=b"x", params={"acquire": expiring})
    started = time.monotonic()
    while time.monotonic() - started < 3.5:
        await api.put(f"/v1/session/renew/{kept}")
        await asyncio.sleep(0.3)
    assert (await api.get(f"/v1/session/info/{kept}")).json() != []
    assert (await api.get(f"/v1/session/info/{expiring}")).json() == []
    [entry] = (await api.get("/v1/kv/ttl/lock")).json()
    assert "Session" not in entry  # released by the expiry


async def test_expiry_happens_no_sooner_than_twice_the_ttl(api):
    sid = await create(api, TTL="2s")
    started = time.monotonic()
    await asyncio.sleep(3.0)
    assert (await api.get(f"/v1/session/info/{sid}")).json() != []  # past 1×TTL: Consul's grace keeps it
    await eventually_async(lambda: api.get(f"/v1/session/info/{sid}"), want=lambda r: r.json() == [], timeout=5)
    elapsed = time.monotonic() - started
    print(f"session with TTL 2s invalidated after {elapsed:.2f} s")
    assert 4.0 <= elapsed < 6.0


async def test_locks_lock_delay_and_reacquire(api):
    holder = await create(api, LockDelay="1s")
    other = await create(api, LockDelay="1s")
    assert (await api.put("/v1/kv/ld/key", content=b"1", params={"acquire": holder})).json() is True
    assert (await api.put("/v1/kv/ld/key", content=b"1", params={"acquire": holder})).json() is True  # holder again
    assert (await api.put("/v1/kv/ld/key", content=b"2", params={"acquire": other})).json() is False
    [entry] = (await api.get("/v1/kv/ld/key")).json()
    assert (entry["Session"], entry["LockIndex"]) == (holder, 1)
    assert (await api.put("/v1/kv/ld/key", params={"release": other})).json() is False
    await api.put(f"/v1/session/destroy/{holder}")  # invalidation: the 1 s lock delay starts now
    assert (await api.put("/v1/kv/ld/key", content=b"2", params={"acquire": other})).json() is False
    txn = [{"KV": {"Verb": "lock", "Key": "ld/key", "Session": other}}]
    r = await api.put("/v1/txn", json=txn)
    assert r.status_code == 409 and "lock delay" in r.json()["Errors"][0]["What"]
    await asyncio.sleep(1.05)
    assert (await api.put("/v1/kv/ld/key", content=b"2", params={"acquire": other})).json() is True
    [entry] = (await api.get("/v1/kv/ld/key")).json()
    assert (entry["Session"], entry["LockIndex"]) == (other, 2)
    assert (await api.put("/v1/kv/ld/key", params={"release": other})).json() is True


async def test_txn_lock_unlock_and_check_session(api):
    sid = await create(api, LockDelay="0s")
    ops = [
        {"KV": {"Verb": "lock", "Key": "tx/l", "Value": "YQ==", "Session": sid}},
        {"KV": {"Verb": "check-session", "Key": "tx/l", "Session": sid}},
    ]
    r = await api.put("/v1/txn", json=ops)
    assert r.status_code == 200, r.text
    assert r.json()["Results"][0]["KV"]["Session"] == sid
    r = await api.put("/v1/txn", json=[{"KV": {"Verb": "check-session", "Key": "tx/l", "Session": "other"}}])
    assert r.status_code == 409
    r = await api.put("/v1/txn", json=[{"KV": {"Verb": "unlock", "Key": "tx/l", "Session": sid}}])
    assert r.status_code == 200
    assert "Session" not in (await api.get("/v1/kv/tx/l")).json()[0]


async def test_blocking_session_reads(api):
    index = int((await api.get("/v1/session/list")).headers["X-Consul-Index"])
    task = asyncio.create_task(api.get("/v1/session/list", params={"index": str(index), "wait": "10s"}))
    await asyncio.sleep(0.1)
    sid = await create(api, Name="wake")
    r = await asyncio.wait_for(task, 5)
    assert sid in [s["ID"] for s in r.json()] and int(r.headers["X-Consul-Index"]) > index
