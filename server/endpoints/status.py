"""Status.* endpoints: what this server knows about Raft, answered locally (Consul's Status endpoint)."""

from __future__ import annotations

from typing import Any

from proconsul.server.endpoints import endpoint
from proconsul.server.structs import DatacenterRequest


@endpoint("Status.Leader", DatacenterRequest)
async def status_leader(srv: Any, args: DatacenterRequest, hops: int) -> str:
    """The leader's server address as this server knows it, or ""."""
    srv.check_datacenter(args.opts.datacenter)
    return srv.leader_rpc_addr() or ""


@endpoint("Status.Peers", DatacenterRequest)
async def status_peers(srv: Any, args: DatacenterRequest, hops: int) -> list[str] | None:
    """Server addresses of every Raft voter (Consul returns null before there is a configuration)."""
    srv.check_datacenter(args.opts.datacenter)
    if srv.raft is None:
        return None
    return [srv.members.rpc_addr(p) or p for p in srv.raft.peers()]


@endpoint("Status.RaftStats", DatacenterRequest)
async def status_raft_stats(srv: Any, args: DatacenterRequest, hops: int) -> dict[str, Any]:
    """Consul's Stats.raft block of /v1/agent/self, plus our applied index for tests to wait on."""
    stats = srv.raft.stats() if srv.raft is not None else {"state": "Follower", "applied_index": "0"}
    stats["known_leader"] = str(srv.leader_rpc_addr() is not None).lower()
    return stats
