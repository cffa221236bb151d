"""Status, operator, snapshot, unknown paths and the OpenAPI schema, through the ASGI app."""

from __future__ import annotations

import sqlite3

import pytest

pytestmark = pytest.mark.anyio


async def test_status_leader_and_peers(api):
    addr = api.agent.server.config.rpc_addr
    assert (await api.get("/v1/status/leader")).json() == addr
    assert (await api.get("/v1/status/peers")).json() == [addr]


async def test_raft_configuration(api):
    config = (await api.get("/v1/operator/raft/configuration")).json()
    [server] = config["Servers"]
    assert server["Leader"] is True and server["Voter"] is True
    assert server["Node"] == "api" and server["Address"] == api.agent.server.config.rpc_addr
    assert config["Index"] > 0


@pytest.mark.parametrize(
    "params,status,text",
    [
        ({}, 400, "Must specify either ?id with the server's ID or ?address with IP:port of peer to remove"),
        ({"id": "x", "address": "1.2.3.4:8300"}, 400, "Must specify only one of ?id or ?address"),
        ({"address": "1.2.3.4:8300"}, 404, 'address "1.2.3.4:8300" was not found in the Raft configuration'),
        ({"id": "nope"}, 404, 'id "nope" was not found in the Raft configuration'),
    ],
)
async def test_remove_peer_bad_input(api, params, status, text):
    r = await api.delete("/v1/operator/raft/peer", params=params)
    assert (r.status_code, r.text) == (status, text)


async def test_snapshot_save_and_restore(api, tmp_path):
    await api.put("/v1/kv/snap/a", content=b"before")
    r = await api.get("/v1/snapshot")
    assert r.status_code == 200 and int(r.headers["X-Consul-Index"]) > 1
    path = tmp_path / "state.db"
    path.write_bytes(r.content)
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
        assert {"kvs", "tombstones", "index", "meta"} <= tables
        assert ("snap/a",) in db.execute("select key from kvs").fetchall()
    await api.put("/v1/kv/snap/a", content=b"after")
    await api.put("/v1/kv/snap/b", content=b"new")
    r = await api.put("/v1/snapshot", content=path.read_bytes())
    assert r.status_code == 200
    assert (await api.get("/v1/kv/snap/a?raw")).content == b"before"
    assert (await api.get("/v1/kv/snap/b")).status_code == 404


async def test_restore_wakes_blocked_readers(api):
    import asyncio

    snap = (await api.get("/v1/snapshot")).content
    await api.put("/v1/kv/wake/me", content=b"1")
    index = int((await api.get("/v1/kv/wake/me")).headers["X-Consul-Index"])
    task = asyncio.create_task(api.get("/v1/kv/wake/me", params={"index": str(index), "wait": "30s"}))
    await asyncio.sleep(0.1)
    assert (await api.put("/v1/snapshot", content=snap)).status_code == 200
    r = await asyncio.wait_for(task, 5)
    assert r.status_code == 404  # the restored state has no such key


async def test_restore_garbage_is_400_and_changes_nothing(api):
    before = api.agent.server.state.checksum()
    r = await api.put("/v1/snapshot", content=b"definitely not sqlite")
    assert r.status_code == 400 and "Error restoring snapshot" in r.text
    r = await api.put("/v1/snapshot", content=b"SQLite format 3\x00" + b"\x00" * 100)
    assert r.status_code == 400
    assert api.agent.server.state.checksum() == before


async def test_unknown_paths_are_404(api):
    r = await api.get("/v1/nope")
    assert r.status_code == 404 and r.text == "Invalid URL path: not a recognized HTTP API endpoint\n"
    r = await api.get("/nope")
    assert r.status_code == 404 and "ensure the path starts with '/v1/'" in r.text
    r = await api.post("/v1/status/leader")
    assert r.status_code == 405 and r.text == "method POST not allowed"


async def test_state_checksum_endpoint(api):
    body = (await api.get("/v1/internal/debug/state-checksum")).json()
    assert len(body["Checksum"]) == 64 and body["AppliedIndex"] >= body["Index"] >= 1


async def test_openapi_covers_every_route(api):
    from proconsul.api.app import build_app, route_table

    paths = (await api.get("/openapi.json")).json()["paths"]
    table = route_table(build_app(api.agent))  # from the app itself: a new route without schema fails here
    assert len(table) >= 8
    for path, methods in table:
        assert path in paths, path
        assert {m.lower() for m in methods} <= set(paths[path]), path
    assert "/v1/kv/{key}" in paths and "/v1/txn" in paths and "/v1/snapshot" in paths


async def test_every_route_answers_405_to_methods_it_does_not_serve(api):
    from proconsul.api.app import build_app, route_table

    routes = route_table(build_app(api.agent))
    assert len(routes) >= 8
    for path, methods in routes:
        for method in {"GET", "PUT", "POST", "DELETE", "PATCH"} - methods:
            r = await api.request(method, path.replace("{key}", "x"))
            assert r.status_code == 405, (method, path, r.status_code, r.text)
            assert r.text == f"method {method} not allowed"
            assert r.headers["allow"].startswith("OPTIONS,")


async def test_kv_hot_path_never_enters_fastapi(api, monkeypatch):
    """The regression guard for the lean handlers: KV, service health and catalog reads and status must not pay
    for FastAPI's routing or validation (no pydantic on the hot paths)."""
    from proconsul.api.app import build_app

    built = build_app(api.agent)
    entered: list[str] = []
    inner = built.fastapi_app

    async def spy(scope, receive, send):
        entered.append(scope["path"])
        await inner(scope, receive, send)

    built.fastapi_app = spy
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=built), base_url="http://agent") as c:
        assert (await c.put("/v1/kv/hot/a", content=b"1")).status_code == 200
        assert (await c.get("/v1/kv/hot/a")).status_code == 200
        assert (await c.get("/v1/kv/hot/", params={"recurse": ""})).status_code == 200
        assert (await c.get("/v1/kv/hot/a", params={"stale": ""})).status_code == 200
        assert (await c.delete("/v1/kv/hot/a")).status_code == 200
        assert (await c.get("/v1/health/service/consul", params={"passing": ""})).status_code == 200
        assert (await c.get("/v1/catalog/service/consul")).status_code == 200
        assert (await c.get("/v1/status/leader")).status_code == 200
        assert entered == []
        assert (await c.get("/v1/catalog/services")).status_code == 200  # the spy sees what does go to FastAPI
        assert entered == ["/v1/catalog/services"]


async def test_chunked_body_past_the_limit_is_refused(api):
    async def chunks():
        for _ in range(9):
            yield b"x" * (64 * 1024)

    r = await api.put("/v1/kv/chunked", content=chunks())
    assert r.status_code == 413
    assert (await api.get("/v1/kv/chunked")).status_code == 404
