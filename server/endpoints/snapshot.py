"""Snapshot.* endpoints: the whole state as a SQLite file, and restoring one through Raft."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from proconsul.server.commands import RestoreRequest
from proconsul.server.endpoints import endpoint
from proconsul.server.endpoints.kv import propose
from proconsul.server.errors import BadRequest
from proconsul.server.snapshot import snapshot_bytes, tables_from_bytes, tables_to_wire
from proconsul.server.structs import DatacenterRequest, QueryMeta, SnapshotRestore


@dataclass
class SnapshotReply:
    meta: QueryMeta
    data: bytes


def _require_snapshot(srv: Any, token: str) -> None:
    """Consul's SnapshotAllowed: one permission for save and restore (a snapshot holds every ACL secret)."""
    caller = srv.acl.caller(token)
    caller.require(caller.authorizer.snapshot(), "acl", "write")


@endpoint("Snapshot.Save", DatacenterRequest, SnapshotReply)
async def snapshot_save(srv: Any, args: DatacenterRequest, hops: int) -> SnapshotReply:
    """A consistent copy of every table (from the leader unless ?stale); Consul's Snapshot save; needs acl = "write"."""
    done, result = await srv.forward_read("Snapshot.Save", args, args.opts, hops)
    if done:
        return result
    _require_snapshot(srv, args.opts.token)
    tables = srv.state.dump()
    index = srv.state.max_index()
    meta = {"index": index, "datacenter": srv.config.datacenter, "node": srv.config.node_name}
    data = await asyncio.get_running_loop().run_in_executor(None, snapshot_bytes, tables, meta)
    return SnapshotReply(srv.query_meta(index, args.opts), data)


@endpoint("Snapshot.Restore", SnapshotRestore)
async def snapshot_restore(srv: Any, args: SnapshotRestore, hops: int) -> bool:
    """Replace the whole state on every server with a snapshot's tables; Consul's Snapshot restore; needs acl = "write"."""
    done, result = await srv.forward("Snapshot.Restore", args, args.opts.datacenter, hops)
    if done:
        return result
    _require_snapshot(srv, args.opts.token)
    try:
        tables, _ = await asyncio.get_running_loop().run_in_executor(None, tables_from_bytes, args.data)
    except ValueError as err:
        raise BadRequest(f"Error restoring snapshot: {err}") from None
    await propose(srv, RestoreRequest(tables=tables_to_wire(tables)))
    return True
