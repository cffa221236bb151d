"""Internal.* endpoints: debugging aids that Consul keeps under /v1/internal."""

from __future__ import annotations

from typing import Any

from proconsul.server.endpoints import endpoint
from proconsul.server.structs import DatacenterRequest


@endpoint("Internal.StateChecksum", DatacenterRequest)
async def state_checksum(srv: Any, args: DatacenterRequest, hops: int) -> dict[str, Any]:
    """sha256 of this server's whole state in canonical order, to compare replicas (always local)."""
    srv.check_datacenter(args.opts.datacenter)
    index, digest = srv.state.checksum()
    applied = srv.raft.applied_index() if srv.raft is not None else 0
    return {"Index": index, "AppliedIndex": applied, "Checksum": digest}
