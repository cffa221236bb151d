"""Txn.* endpoints: Consul's /v1/txn (agent/consul/txn_endpoint.go), KV operations, with Consul's per-op ACL checks."""

from __future__ import annotations

from typing import Any

from proconsul.server.acl import keep, masked
from proconsul.server.endpoints import endpoint
from proconsul.server.endpoints.kv import entry_json, propose
from proconsul.server.structs import TxnApply


# Consul's kvsPreApply: what each verb needs. Gets are filtered on the way out instead; the checks could
# reveal a key's state through the outcome, so they need read; check-not-exists is grouped with the writes.
_KEY_READ_VERBS = frozenset({"check-index", "check-session"})
_KEY_WRITE_VERBS = frozenset({"set", "cas", "lock", "unlock", "delete", "delete-cas", "check-not-exists"})


def _denied(caller: Any, op: Any) -> str:
    """Why the caller may not run ``op`` (Consul's PermissionDeniedError text), or "" when it may."""
    authz = caller.authorizer
    if op.verb == "delete-tree":
        if not authz.key_write_prefix(op.key):
            return str(caller.denied("key", "write", op.key))
    elif op.verb in _KEY_WRITE_VERBS:
        if not authz.key_write(op.key):
            return str(caller.denied("key", "write", op.key))
    elif op.verb in _KEY_READ_VERBS:
        if not authz.key_read(op.key):
            return str(caller.denied("key", "read", op.key))
    return ""


def _precheck(srv: Any, caller: Any, ops: list) -> list[dict[str, Any]]:
    """Consul's txnPreCheck: errors found before anything reaches Raft (keys, ACLs, and lock-delay on the leader)."""
    errors = []
    check_acl = not caller.unrestricted
    for i, op in enumerate(ops):
        if not op.key and op.verb != "delete-tree":
            errors.append({"OpIndex": i, "What": "Must provide key"})
        elif check_acl and (why := _denied(caller, op)):
            errors.append({"OpIndex": i, "What": why})
        elif op.verb == "lock" and srv.lock_delays.active(op.key):
            errors.append({"OpIndex": i, "What": f'failed to lock key "{op.key}" due to lock delay'})
    return errors


def _readable(caller: Any, entries: list) -> tuple[list, bool]:
    """Consul's FilterTxnResults: only the KV results the caller may read."""
    if caller.unrestricted:
        return entries, False
    return keep(entries, lambda e: caller.authorizer.key_read(e.key))


def _errors(errors: list[tuple[int, str]]) -> list[dict[str, Any]]:
    return [{"OpIndex": i, "What": what} for i, what in errors]


@endpoint("Txn.Apply", TxnApply)
async def txn_apply(srv: Any, args: TxnApply, hops: int) -> dict[str, Any]:
    """Commit a transaction with writes, all or nothing; Consul's Txn.Apply.

    Every op is checked first (key:write, key:write on the whole tree for delete-tree, key:read for the checks);
    any refusal answers the TxnErrors and applies nothing. Results the caller may not read are left out.
    """
    done, result = await srv.forward("Txn.Apply", args, args.opts.datacenter, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    errors = _precheck(srv, caller, args.req.ops)
    if errors:
        return {"Results": None, "Errors": errors}
    outcome = await propose(srv, args.req)
    if outcome.errors:
        return {"Results": None, "Errors": _errors(outcome.errors)}
    results, _ = _readable(caller, outcome.results)
    return {"Results": [{"KV": entry_json(e)} for e in results], "Errors": None}


@endpoint("Txn.Read", TxnApply)
async def txn_read(srv: Any, args: TxnApply, hops: int) -> dict[str, Any]:
    """A transaction of gets and checks only: no Raft entry, Consul's consistency modes; Consul's Txn.Read.

    Checks the caller may not read fail the transaction; gets it may not read are left out of the results.
    """
    opts = args.opts
    done, result = await srv.forward_read("Txn.Read", args, opts, hops)
    if done:
        return result
    if opts.consistent:
        await srv.raft.barrier()
    caller = srv.acl.caller(opts.token)
    errors = _precheck(srv, caller, args.req.ops)
    results: list = []
    filtered = False
    if not errors:
        entries, failed = srv.state.txn_read(args.req.ops)
        errors = _errors(failed)
        entries, filtered = _readable(caller, entries)
        filtered = masked(opts.token, filtered)
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
        "ResultsFilteredByACLs": filtered,
    }
