"""Operator.* and Server.* endpoints: the Raft configuration and how servers find each other."""

from __future__ import annotations

import asyncio
from typing import Any

from proconsul.server.endpoints import endpoint
from proconsul.server.errors import BadRequest, NotFound, StoreError
from proconsul.server.structs import AddPeerRequest, DatacenterRequest, HelloReply, HelloRequest, RaftPeerRequest


@endpoint("Operator.RaftGetConfiguration", DatacenterRequest)
async def raft_get_configuration(srv: Any, args: DatacenterRequest, hops: int) -> dict[str, Any]:
    """Consul's /v1/operator/raft/configuration: every voter with its node, ID, address and leadership; operator:read."""
    done, result = await srv.forward_read("Operator.RaftGetConfiguration", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    caller.require(caller.authorizer.operator_read(), "operator", "read")
    raft = srv.raft
    if raft is None:  # a server still waiting for bootstrap-expect peers (only ?stale gets here)
        return {"Servers": [], "Index": 0}
    last_indexes = raft.last_indexes()
    leader = raft.leader()
    servers = []
    for addr in raft.peers():
        info = srv.members.info(addr)
        servers.append(
            {
                "ID": info.id if info else addr,
                "Node": info.node if info else "(unknown)",
                "Address": info.rpc_addr if info else addr,
                "Leader": addr == leader,
                "ProtocolVersion": "3",
                "Voter": True,
                "LastIndex": last_indexes.get(addr, 0),
                "RaftAddress": addr,
            }
        )
    return {"Servers": servers, "Index": raft.applied_index()}


@endpoint("Operator.RaftRemovePeer", RaftPeerRequest)
async def raft_remove_peer(srv: Any, args: RaftPeerRequest, hops: int) -> bool:
    """Remove a voter by server address, raft address or ID (operator:write); the leader hands off first if it is the one going."""
    done, result = await srv.forward("Operator.RaftRemovePeer", args, args.opts.datacenter, hops)
    if done:
        return result
    if not args.address and not args.id:
        raise BadRequest("Must specify either ?id with the server's ID or ?address with IP:port of peer to remove")
    if args.address and args.id:
        raise BadRequest("Must specify only one of ?id or ?address")
    caller = srv.acl.caller(args.opts.token)
    caller.require(caller.authorizer.operator_write(), "operator", "write")
    target = srv.members.raft_addr_for(address=args.address, node_id=args.id, voters=srv.raft.peers())
    if target is None:
        what = f'address "{args.address}"' if args.address else f'id "{args.id}"'
        raise NotFound(f"{what} was not found in the Raft configuration")
    if target == srv.raft.self_addr:
        await srv.raft.transfer_leadership()
        done, result = await srv.forward("Operator.RaftRemovePeer", args, args.opts.datacenter, hops)
        if done:
            return result
        raise StoreError("leadership transfer did not complete; try again")
    await srv.raft.remove_server(target)
    return True


@endpoint("Server.Hello", HelloRequest, HelloReply)
async def server_hello(srv: Any, args: HelloRequest, hops: int) -> HelloReply:
    """A server introduces itself; we answer with whom we know and whether our Raft runs."""
    return srv.members.handle_hello(args)


@endpoint("Server.AddRaftPeer", AddPeerRequest)
async def server_add_raft_peer(srv: Any, args: AddPeerRequest, hops: int) -> bool:
    """Add a server to the Raft configuration (pysyncobj dynamic membership); retried while a change is pending."""
    done, result = await srv.forward("Server.AddRaftPeer", args, "", hops)
    if done:
        return result
    for _ in range(50):
        if args.raft_addr in srv.raft.peers():
            return True
        try:
            await srv.raft.add_server(args.raft_addr)
            return True
        except StoreError:
            # Denied: another membership change (or this leader's first entry) is not committed yet.
            await asyncio.sleep(0.1)
    return args.raft_addr in srv.raft.peers()
