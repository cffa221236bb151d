"""/v1/internal: debugging aids (Consul keeps its UI and debug helpers under this prefix too)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.api.common import agent_of, json_response, opts_of
from proconsul.server.structs import DatacenterRequest

router = APIRouter(tags=["internal"])


@router.get(
    "/v1/internal/debug/state-checksum",
    summary="sha256 of this server's whole replicated state, in canonical order, with the index it covers",
)
async def state_checksum(request: Request) -> Response:
    result = await agent_of(request).rpc("Internal.StateChecksum", DatacenterRequest(opts_of(request)))
    return json_response(request, result)
