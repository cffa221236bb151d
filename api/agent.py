"""/v1/agent: this agent's own view (the full agent API arrives with the agents and catalog work)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.agent.version import __version__
from proconsul.api.common import agent_of, json_response
from proconsul.server.structs import DatacenterRequest

router = APIRouter(tags=["agent"])


@router.get("/v1/agent/self", summary="This agent's configuration, member entry and stats")
async def agent_self(request: Request) -> Response:
    agent = agent_of(request)
    cfg = agent.config
    raft = await agent.rpc("Status.RaftStats", DatacenterRequest()) if cfg.server else {}
    body = {
        "Config": {
            "Datacenter": cfg.datacenter,
            "PrimaryDatacenter": cfg.datacenter,
            "NodeName": cfg.node_name,
            "NodeID": cfg.node_id,
            "Server": cfg.server,
            "Revision": "",
            "Version": __version__,
            "BuildDate": "",
        },
        "Member": {
            "Name": cfg.node_name,
            "Addr": cfg.bind_addr,
            "Port": cfg.ports.server,
            "Tags": {"dc": cfg.datacenter, "id": cfg.node_id, "role": "consul" if cfg.server else "node"},
            "Status": 1,
        },
        "Stats": {"agent": {"server": str(cfg.server).lower()}, "raft": raft},
        "Meta": {},
    }
    return json_response(request, body)
