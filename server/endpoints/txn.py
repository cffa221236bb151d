"""Txn.* endpoints: Consul's /v1/txn (agent/consul/txn_endpoint.go), KV operations."""

from __future__ import annotations

from typing import Any

from proconsul.server.endpoints import endpoint
from proconsul.server.endpoints.kv import entry_json, propose
from proconsul.server.structs import TxnApply


def _precheck(srv: Any, ops: list) -> list[dict[str, Any]]:
    """Consul's txnPreCheck: errors found before anything reaches Raft (keys, and lock-delay on the leader)."""
    errors = []
    for i, op in enumerate(ops):
        if not op.key and op.verb != "delete-tree":
            errors.append({"OpIndex": i, "What": "Must provide key"})
        elif op.verb == "lock" and srv.lock_delays.active(op.key):
            errors.append({"OpIndex": i, "What": f'failed to lock key "{op.key}" due to lock delay'})
    return errors


def _errors(errors: list[tuple[int, str]]) -> list[dict[str, Any]]:
    return [{"OpIndex": i, "What": what} for i, what in errors]


@endpoint("Txn.Apply", TxnApply)
async def txn_apply(srv: Any, args: TxnApply, hops: int) -> dict[str, Any]:
    """Commit a transaction with writes, all or nothing; Consul's Txn.Apply."""
    done, result = await srv.forward("Txn.Apply", args, args.opts.datacenter, hops)
    if done:
        return result
    errors = _precheck(srv, args.req.ops)
    if errors:
        return {"Results": None, "Errors": errors}
    outcome = await propose(srv, args.req)
    if outcome.errors:
        return {"Results": None, "Errors": _errors(outcome.errors)}
    return {"Results": [{"KV": entry_json(e)} for e in outcome.results], "Errors": None}


@endpoint("Txn.Read", TxnApply)
async def txn_read(srv: Any, args: TxnApply, hops: int) -> dict[str, Any]:
    """A transaction of gets and checks only: no Raft entry, Consul's consistency modes; Consul's Txn.Read."""
    opts = args.opts
    done, result = await srv.forward_read("Txn.Read", args, opts, hops)
    if done:
        return result
    if opts.consistent:
        await srv.raft.barrier()
    errors = _precheck(srv, args.req.ops)
    results: list = []
    if not errors:
        entries, failed = srv.state.txn_read(args.req.ops)
        errors = _errors(failed)
        results = [{"KV": entry_json(e)} for e in entries]
    meta = srv.query_meta(0, opts)
    return {
        "Results": None if errors else results,
        "Errors": errors or None,
        # Consul flattens the read's QueryMeta into the body (LastContact in nanoseconds).
        "Index": 0,
        "LastContact": meta.last_contact_ms * 1_000_000,
        "KnownLeader": meta.known_leader,
        "ConsistencyLevel": "",
        "NotModified": False,
        "Backend": 0,
        "ResultsFilteredByACLs": False,
    }
