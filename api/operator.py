"""/v1/operator/raft: the Raft configuration, and removing a voter."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.api.common import DC, STALE, TOKEN, agent_of, json_response, opts_of, param, query_of
from proconsul.api.params import first, has
from proconsul.server.errors import BadRequest, NotFound
from proconsul.server.structs import DatacenterRequest, RaftPeerRequest

router = APIRouter(tags=["operator"])


@router.get(
    "/v1/operator/raft/configuration",
    summary="Every Raft voter with node, ID, address and leadership",
    openapi_extra={"parameters": [DC, STALE, TOKEN]},
)
async def operator_raft_configuration(request: Request) -> Response:
    config = await agent_of(request).rpc("Operator.RaftGetConfiguration", DatacenterRequest(opts_of(request)))
    return json_response(request, config)


@router.delete(
    "/v1/operator/raft/peer",
    summary="Remove a Raft voter by server address or ID",
    openapi_extra={"parameters": [DC, TOKEN, param("address", "IP:port of the server"), param("id", "The server's node ID")]},
)
async def operator_raft_remove_peer(request: Request) -> Response:
    q = query_of(request)
    # Presence counts, as in Consul: "?id=&address=x" names both.
    if has(q, "id") and has(q, "address"):
        raise BadRequest("Must specify only one of ?id or ?address")
    if has(q, "id") and not first(q, "id"):
        raise NotFound('id "" was not found in the Raft configuration')
    req = RaftPeerRequest(address=first(q, "address"), id=first(q, "id"), opts=opts_of(request))
    await agent_of(request).rpc("Operator.RaftRemovePeer", req)
    return Response(status_code=200)
