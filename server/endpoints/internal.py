"""Internal.* endpoints: debugging aids that Consul keeps under /v1/internal."""

from __future__ import annotations

from typing import Any

from proconsul.server import shapes
from proconsul.server.endpoints import endpoint
from proconsul.server.errors import NotFound
from proconsul.server.structs import (
    CatalogQuery,
    DatacenterRequest,
    HeartbeatReply,
    HeartbeatRequest,
    MemberRequest,
    QueryReply,
)


@endpoint("Internal.StateChecksum", DatacenterRequest)
async def state_checksum(srv: Any, args: DatacenterRequest, hops: int) -> dict[str, Any]:
    """sha256 of this server's whole state in canonical order, to compare replicas (always local); operator:read."""
    srv.check_datacenter(args.opts.datacenter)
    caller = srv.acl.caller(args.opts.token)
    caller.require(caller.authorizer.operator_read(), "operator", "read")
    index, digest = srv.state.checksum()
    applied = srv.raft.applied_index() if srv.raft is not None else 0
    return {"Index": index, "AppliedIndex": applied, "Checksum": digest}


@endpoint("Internal.Heartbeat", HeartbeatRequest, HeartbeatReply)
async def internal_heartbeat(srv: Any, args: HeartbeatRequest, hops: int) -> HeartbeatReply:
    """An agent is alive; the answer tells it which servers it may use."""
    done, result = await srv.forward("Internal.Heartbeat", args, args.datacenter, hops)
    if done:
        return result
    await srv.liveness.heartbeat(args)
    return HeartbeatReply(servers=server_addrs(srv), leader=srv.leader_rpc_addr() or "")


def server_addrs(srv: Any) -> list[str]:
    """Server RPC addresses of every Raft voter this server knows how to reach."""
    if srv.raft is None:
        return [srv.config.rpc_addr]
    return [addr for addr in (srv.members.rpc_addr(p) for p in srv.raft.peers()) if addr]


@endpoint("Internal.Members", CatalogQuery, QueryReply)
async def internal_members(srv: Any, args: CatalogQuery, hops: int) -> QueryReply:
    """Every agent with its liveness (Consul's serf members), from the replicated member table."""
    done, result = await srv.forward_read("Internal.Members", args, args.opts, hops)
    if done:
        return result
    return await srv.blocking_query(
        args.opts, lambda ws: srv.state.members(ws), lambda ms: [shapes.member_json(m) for m in ms]
    )


@endpoint("Internal.Leave", MemberRequest)
async def internal_leave(srv: Any, args: MemberRequest, hops: int) -> bool:
    """A member leaves gracefully: it leaves the catalog, and a server leaves the Raft configuration."""
    done, result = await srv.forward("Internal.Leave", args, args.datacenter, hops)
    if done:
        return result
    member = srv.state.get_member(args.name)
    if member is None:
        raise NotFound(f"Unknown node {args.name!r}")
    if member.role == "consul":
        voter = srv.members.raft_addr_for(address=f"{member.address}:{member.port}", voters=srv.raft.peers())
        if voter == srv.raft.self_addr:
            await srv.raft.transfer_leadership()
            done, result = await srv.forward("Internal.Leave", args, args.datacenter, hops)
            if done:
                return result
        elif voter is not None:
            await srv.raft.remove_server(voter)
    await srv.liveness.set_status(args.name, "left")
    return True


@endpoint("Internal.ForceLeave", MemberRequest)
async def internal_force_leave(srv: Any, args: MemberRequest, hops: int) -> bool:
    """Move a (failed) member to left, taking it out of the catalog; a live one rejoins on its next heartbeat."""
    done, result = await srv.forward("Internal.ForceLeave", args, args.datacenter, hops)
    if done:
        return result
    if srv.state.get_member(args.name) is None:
        raise NotFound(f"Unknown node {args.name!r}")
    await srv.liveness.set_status(args.name, "left")
    return True
