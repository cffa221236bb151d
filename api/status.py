"""/v1/status: Raft leader and peers as this agent's server sees them."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.api.common import DC, agent_of, json_response, opts_of
from proconsul.server.structs import DatacenterRequest

router = APIRouter(tags=["status"])


@router.get("/v1/status/leader", summary="The Raft leader's server address", openapi_extra={"parameters": [DC]})
async def status_leader(request: Request) -> Response:
    leader = await agent_of(request).rpc("Status.Leader", DatacenterRequest(opts_of(request)))
    return json_response(request, leader)


@router.get("/v1/status/peers", summary="Server addresses of the Raft voters", openapi_extra={"parameters": [DC]})
async def status_peers(request: Request) -> Response:
    peers = await agent_of(request).rpc("Status.Peers", DatacenterRequest(opts_of(request)))
    return json_response(request, peers)
