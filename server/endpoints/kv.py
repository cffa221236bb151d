"""KVS.* endpoints: Consul's KV store (agent/consul/kvs_endpoint.go)."""

from __future__ import annotations

import base64
import time
from typing import Any

from proconsul.server.acl import keep
from proconsul.server.commands import KV_OPS
from proconsul.server.endpoints import endpoint
from proconsul.server.errors import BadRequest
from proconsul.server.state import DirEntry
from proconsul.server.structs import KeyListRequest, KeyRequest, KVSApply, QueryReply

_b64 = base64.b64encode


def entry_json(e: DirEntry) -> dict[str, Any]:
    """A KV row in Consul's JSON shape (structs.DirEntry field order; Session only when set)."""
    out: dict[str, Any] = {
        "LockIndex": e.lock_index,
        "Key": e.key,
        "Flags": e.flags,
        "Value": _b64(e.value).decode("ascii") if e.value is not None else None,
    }
    if e.session:
        out["Session"] = e.session
    out["CreateIndex"] = e.create_index
    out["ModifyIndex"] = e.modify_index
    return out


async def propose(srv: Any, cmd: Any) -> Any:
    """Commit a command on the leader and return its result, raising the error apply returned."""
    started = time.perf_counter()
    result = await srv.raft.apply(cmd)
    if srv.metrics is not None:
        srv.metrics.observe("raft.apply", (time.perf_counter() - started) * 1000.0, (("type", type(cmd).__name__),))
    if isinstance(result, Exception):
        raise result
    return result


@endpoint("KVS.Apply", KVSApply)
async def kvs_apply(srv: Any, args: KVSApply, hops: int) -> bool:
    """Write one key (set, cas, lock, unlock, delete, delete-cas, delete-tree); Consul's KVS.Apply."""
    done, result = await srv.forward("KVS.Apply", args, args.datacenter, hops)
    if done:
        return result
    req = args.req
    if req.op not in KV_OPS:
        raise BadRequest(f"Invalid KVS operation '{req.op}'")
    if not req.key and req.op != "delete-tree":
        raise BadRequest("Must provide key")
    caller = srv.acl.caller(args.token)
    if req.op == "delete-tree":
        caller.require(caller.authorizer.key_write_prefix(req.key), "key", "write", req.key)
    else:
        caller.require(caller.authorizer.key_write(req.key), "key", "write", req.key)
    if req.op == "lock" and srv.lock_delays.active(req.key):
        # Lock-delay runs on the leader's wall clock, so it is checked before Raft (Consul's kvsPreApply).
        return False
    return await propose(srv, req)


@endpoint("KVS.Get", KeyRequest, QueryReply)
async def kvs_get(srv: Any, args: KeyRequest, hops: int) -> QueryReply:
    """One key, as a one-element list (empty when missing); Consul's KVS.Get."""
    done, result = await srv.forward_read("KVS.Get", args, args.opts, hops)
    if done:
        return result
    key, state = args.key, srv.state
    caller = srv.acl.caller(args.opts.token)
    caller.require(caller.authorizer.key_read(key), "key", "read", key)
    return await srv.blocking_query(
        args.opts, lambda ws: state.kv_get(key, ws), lambda e: [entry_json(e)] if e is not None else []
    )


@endpoint("KVS.List", KeyRequest, QueryReply)
async def kvs_list(srv: Any, args: KeyRequest, hops: int) -> QueryReply:
    """Every entry under a prefix; Consul's KVS.List."""
    done, result = await srv.forward_read("KVS.List", args, args.opts, hops)
    if done:
        return result
    prefix, state = args.key, srv.state
    caller = srv.acl.caller(args.opts.token)
    readable = None if caller.unrestricted else lambda entries: keep(entries, lambda e: caller.authorizer.key_read(e.key))
    return await srv.blocking_query(
        args.opts, lambda ws: state.kv_list(prefix, ws), lambda entries: [entry_json(e) for e in entries], readable
    )


@endpoint("KVS.ListKeys", KeyListRequest, QueryReply)
async def kvs_list_keys(srv: Any, args: KeyListRequest, hops: int) -> QueryReply:
    """Key names under a prefix, rolled up at the separator; Consul's KVS.ListKeys."""
    done, result = await srv.forward_read("KVS.ListKeys", args, args.opts, hops)
    if done:
        return result
    prefix, sep, state = args.prefix, args.separator, srv.state
    caller = srv.acl.caller(args.opts.token)
    readable = None if caller.unrestricted else lambda keys: keep(keys, caller.authorizer.key_read)
    return await srv.blocking_query(args.opts, lambda ws: state.kv_keys(prefix, sep, ws), acl_filter=readable)
