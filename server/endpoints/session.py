"""Session.* endpoints: Consul's sessions (agent/consul/session_endpoint.go)."""

from __future__ import annotations

import uuid
from typing import Any

from proconsul.server.durations import format_duration, parse_duration
from proconsul.server import shapes
from proconsul.server.commands import SessionRequest
from proconsul.server.endpoints import endpoint
from proconsul.server.endpoints.kv import propose
from proconsul.server.errors import BadRequest
from proconsul.server.state import BEHAVIORS
from proconsul.server.structs import QueryReply, SessionApply, SessionQuery

TTL_MAX = 86400.0


def _validate_ttl(ttl: str, ttl_min: float) -> float:
    """Consul's session TTL bounds (session_ttl_min .. 24h), with its message."""
    try:
        seconds = parse_duration(ttl)
    except ValueError:
        raise BadRequest(f"Session TTL '{ttl}' invalid: not a duration like \"30s\"") from None
    if not ttl_min <= seconds <= TTL_MAX:
        # Consul formats the TTL with %d: its nanoseconds (Patroni and friends match on this text).
        raise BadRequest(f"Invalid Session TTL '{round(seconds * 1e9)}', must be between [{format_duration(ttl_min)}=24h0m0s]")
    return seconds


@endpoint("Session.Apply", SessionApply)
async def session_apply(srv: Any, args: SessionApply, hops: int) -> Any:
    """Create a session (its ID made here, on the leader) or destroy one."""
    done, result = await srv.forward("Session.Apply", args, args.datacenter, hops)
    if done:
        return result
    rec = args.session
    if args.op == "destroy":
        if not rec.id:
            raise BadRequest("Must provide ID")
        await propose(srv, SessionRequest(op="destroy", session=rec))
        srv.session_timers.clear(rec.id)
        return True
    if args.op != "create":
        raise BadRequest(f"Invalid session operation '{args.op}'")
    rec.behavior = rec.behavior or "release"
    if rec.behavior not in BEHAVIORS:
        raise BadRequest(f"Invalid Behavior setting '{rec.behavior}'")
    ttl = _validate_ttl(rec.ttl, srv.config.session_ttl_min) if rec.ttl else 0.0
    if rec.lock_delay < 0:
        raise BadRequest("Invalid LockDelay: cannot be negative")
    if not rec.node:
        raise BadRequest("Must provide Node")
    rec.id = str(uuid.uuid4())
    while srv.state.session_exists(rec.id):
        rec.id = str(uuid.uuid4())
    await propose(srv, SessionRequest(op="create", session=rec))
    if ttl:
        srv.session_timers.reset(rec.id, ttl)
    return rec.id


@endpoint("Session.Renew", SessionQuery)
async def session_renew(srv: Any, args: SessionQuery, hops: int) -> list | None:
    """Restart a session's TTL timer (on the leader, where the timers live); None when it is gone."""
    done, result = await srv.forward("Session.Renew", args, args.opts.datacenter, hops)
    if done:
        return result
    _, session = srv.state.session_get(args.id)
    if session is None:
        return None
    if session.ttl:
        srv.session_timers.reset(session.id, parse_duration(session.ttl))
    return [shapes.session_json(session)]


@endpoint("Session.Get", SessionQuery, QueryReply)
async def session_get(srv: Any, args: SessionQuery, hops: int) -> QueryReply:
    done, result = await srv.forward_read("Session.Get", args, args.opts, hops)
    if done:
        return result
    return await srv.blocking_query(
        args.opts,
        lambda ws: srv.state.session_get(args.id, ws),
        lambda s: [shapes.session_json(s)] if s is not None else None,
    )


@endpoint("Session.List", SessionQuery, QueryReply)
async def session_list(srv: Any, args: SessionQuery, hops: int) -> QueryReply:
    done, result = await srv.forward_read("Session.List", args, args.opts, hops)
    if done:
        return result
    return await srv.blocking_query(
        args.opts, lambda ws: srv.state.session_list(ws), lambda ss: [shapes.session_json(s) for s in ss]
    )


@endpoint("Session.NodeSessions", SessionQuery, QueryReply)
async def session_node(srv: Any, args: SessionQuery, hops: int) -> QueryReply:
    done, result = await srv.forward_read("Session.NodeSessions", args, args.opts, hops)
    if done:
        return result
    return await srv.blocking_query(
        args.opts, lambda ws: srv.state.node_sessions(args.node, ws), lambda ss: [shapes.session_json(s) for s in ss]
    )
