"""/v1/snapshot: the whole state as a SQLite file, and restoring one."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.api.common import DC, STALE, TOKEN, agent_of, opts_of, reply_response
from proconsul.api.headers import meta_headers
from proconsul.api.lean import MAX_SNAPSHOT, Reply, read_limited
from proconsul.server.structs import DatacenterRequest, SnapshotRestore

router = APIRouter(tags=["snapshot"])

SQLITE = (b"content-type", b"application/vnd.sqlite3")


@router.get(
    "/v1/snapshot",
    summary="Save a snapshot of the whole state (a SQLite file)",
    openapi_extra={"parameters": [DC, STALE, TOKEN]},
)
async def snapshot_save(request: Request) -> Response:
    reply = await agent_of(request).rpc("Snapshot.Save", DatacenterRequest(opts_of(request)))
    return reply_response(Reply(200, reply.data, [SQLITE, *meta_headers(reply.meta)]))


@router.put(
    "/v1/snapshot",
    summary="Restore a snapshot, replacing the whole state on every server",
    openapi_extra={
        "parameters": [DC, TOKEN],
        "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    },
)
async def snapshot_restore(request: Request) -> Response:
    data = await read_limited(
        request.stream(),
        request.headers.get("content-length"),
        MAX_SNAPSHOT,
        lambda size, declared: f"Snapshot too large: {'' if declared else 'more than '}{size} bytes, max {MAX_SNAPSHOT}",
    )
    await agent_of(request).rpc("Snapshot.Restore", SnapshotRestore(data, opts_of(request)))
    return Response(status_code=200)
