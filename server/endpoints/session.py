"""Session.* endpoints: Consul's sessions (agent/consul/session_endpoint.go)."""

from __future__ import annotations

import uuid
from typing import Any

from proconsul.server.durations import format_duration, parse_duration
from proconsul.server import shapes
from proconsul.server.acl import keep
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
    """Create a session (its ID made here, on the leader) or destroy one; session:write on its node (Consul's Session.Apply)."""
    done, result = await srv.forward("Session.Apply", args, args.datacenter, hops)
    if done:
        return result
    rec = args.session
    if args.op == "destroy":
        if not rec.id:
            raise BadRequest("Must provide ID")
        caller = srv.acl.caller(args.token)
        _, existing = srv.state.session_get(rec.id)
        if existing is None:
            return True  # Consul: destroying an unknown session is a no-op
        caller.require(caller.authorizer.session_write(existing.node), "session", "write", existing.node)
        await propose(srv, SessionRequest(op="destroy", session=rec))
        srv.session_timers.clear(rec.id)
        return True
    if args.op != "create":
        raise BadRequest(f"Invalid session operation '{args.op}'")
    if not rec.node:
        raise BadRequest("Must provide Node")
    caller = srv.acl.caller(args.token)
    caller.require(caller.authorizer.session_write(rec.node), "session", "write", rec.node)
    rec.behavior = rec.behavior or "release"
    if rec.behavior not in BEHAVIORS:
        raise BadRequest(f"Invalid Behavior setting '{rec.behavior}'")
    ttl = _validate_ttl(rec.ttl, srv.config.session_ttl_min) if rec.ttl else 0.0
    if rec.lock_delay < 0:
        raise BadRequest("Invalid LockDelay: cannot be negative")
    rec.id = str(uuid.uuid4())
    while srv.state.session_exists(rec.id):
        rec.id = str(uuid.uuid4())
    await propose(srv, SessionRequest(op="create", session=rec))
    if ttl:
        srv.session_timers.reset(rec.id, ttl)
    return rec.id


@endpoint("Session.Renew", SessionQuery)
async def session_renew(srv: Any, args: SessionQuery, hops: int) -> list | None:
    """Restart a session's TTL timer (on the leader, where the timers live); None when it is gone; session:write on its node."""
    done, result = await srv.forward("Session.Renew", args, args.opts.datacenter, hops)
    if done:
        return result
    _, session = srv.state.session_get(args.id)
    if session is None:
        return None
    caller = srv.acl.caller(args.opts.token)
    caller.require(caller.authorizer.session_write(session.node), "session", "write", session.node)
    if session.ttl:
        srv.session_timers.reset(session.id, parse_duration(session.ttl))
    return [shapes.session_json(session)]


def _readable(srv: Any, token: str) -> Any:
    """An acl_filter keeping the sessions whose node the caller may read (Consul's filterSessions); None when unrestricted."""
    caller = srv.acl.caller(token)
    if caller.unrestricted:
        return None
    return lambda sessions: keep(sessions, lambda s: caller.authorizer.session_read(s.node))


@endpoint("Session.Get", SessionQuery, QueryReply)
async def session_get(srv: Any, args: SessionQuery, hops: int) -> QueryReply:
    """One session as a one-element list; a session the caller may not read answers as missing (filtered)."""
    done, result = await srv.forward_read("Session.Get", args, args.opts, hops)
    if done:
        return result
    readable = _readable(srv, args.opts.token)
    acl_filter = None
    if readable is not None:

        def acl_filter(s: Any) -> tuple[Any, bool]:
            if s is None:
                return None, False
            kept, dropped = readable([s])
            return (kept[0] if kept else None), dropped

    return await srv.blocking_query(
        args.opts,
        lambda ws: srv.state.session_get(args.id, ws),
        lambda s: [shapes.session_json(s)] if s is not None else None,
        acl_filter,
    )


@endpoint("Session.List", SessionQuery, QueryReply)
async def session_list(srv: Any, args: SessionQuery, hops: int) -> QueryReply:
    """Every session whose node the caller may read."""
    done, result = await srv.forward_read("Session.List", args, args.opts, hops)
    if done:
        return result
    return await srv.blocking_query(
        args.opts,
        lambda ws: srv.state.session_list(ws),
        lambda ss: [shapes.session_json(s) for s in ss],
        _readable(srv, args.opts.token),
    )


@endpoint("Session.NodeSessions", SessionQuery, QueryReply)
async def session_node(srv: Any, args: SessionQuery, hops: int) -> QueryReply:
    """The sessions on a node, if the caller may read them."""
    done, result = await srv.forward_read("Session.NodeSessions", args, args.opts, hops)
    if done:
        return result
    return await srv.blocking_query(
        args.opts,
        lambda ws: srv.state.node_sessions(args.node, ws),
        lambda ss: [shapes.session_json(s) for s in ss],
        _readable(srv, args.opts.token),
    )
