"""Event.* endpoints: Consul's user events (agent/user_event.go, Internal.EventFire).

Consul validates an event on the agent, gives it a UUID and Version 1, and hands
it to serf, which refuses it when the serf name ("consul:event:" + name) plus
the msgpack'd event passes 512 bytes, before or after serf's own encoding. Here
the leader does all of that before proposing, so the log only carries events
that Consul would have gossiped; apply then appends them to the ring.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from proconsul.server.acl import keep
from proconsul.server.commands import EventFireRequest
from proconsul.server.endpoints import endpoint
from proconsul.server.endpoints.kv import propose
from proconsul.server.errors import BadRequest
from proconsul.server.filter import _go_regexp, _GoError
from proconsul.server.state import UserEvent
from proconsul.server.structs import QueryOptions, QueryReply

USER_EVENT_SIZE_LIMIT = 512  # serf's default UserEventSizeLimit, which Consul does not change
USER_EVENT_VERSION = 1  # Consul's userEventMaxVersion
SERF_EVENT_PREFIX = "consul:event:"


@dataclass
class EventFireArgs:
    """Event.Fire: the event as the HTTP layer read it (no ID yet), plus routing."""

    event: EventFireRequest
    datacenter: str = ""
    token: str = ""


@dataclass
class EventQuery:
    """Event.List: the ring, only events called ``name`` when given."""

    name: str = ""
    opts: QueryOptions = field(default_factory=QueryOptions)


def event_json(e: UserEvent | EventFireRequest, ltime: int) -> dict[str, Any]:
    """Consul's UserEvent JSON (struct order; Payload base64 or null)."""
    return {
        "ID": e.id,
        "Name": e.name,
        "Payload": base64.b64encode(e.payload).decode("ascii") if e.payload else None,
        "NodeFilter": e.node_filter,
        "ServiceFilter": e.service_filter,
        "TagFilter": e.tag_filter,
        "Version": e.version,
        "LTime": ltime,
    }


@lru_cache(maxsize=1024)
def filter_regexp(pattern: str) -> re.Pattern[str] | None:
    """An event filter compiled as Go would (RE2, searched unanchored); None when Go would refuse it."""
    try:
        return _go_regexp(pattern)
    except _GoError:
        return None


def regexp_error(pattern: str) -> str:
    """What Go's regexp.Compile says about ``pattern`` ("" when it compiles): filters are RE2, searched unanchored."""
    try:
        _go_regexp(pattern)
    except _GoError as err:
        return str(err)
    return ""


def validate_user_event(e: EventFireRequest) -> None:
    """Consul's validateUserEventParams (texts included)."""
    if not e.name:
        raise BadRequest("User event missing name")
    if e.tag_filter and not e.service_filter:
        raise BadRequest("Cannot provide tag filter without service filter")
    for pattern, what in ((e.node_filter, "node"), (e.service_filter, "service"), (e.tag_filter, "tag")):
        if pattern and (err := regexp_error(pattern)):
            raise BadRequest(f"Invalid {what} filter: {err}")


# ------------------------------------------------------------- msgpack sizes (go-msgpack, as Consul and serf encode)


def _str_len(n: int, str8: bool) -> int:
    """Bytes of a msgpack string of n bytes: fixstr, str8 (only with WriteExt), str16, str32."""
    if n < 32:
        return 1 + n
    if str8 and n < 256:
        return 2 + n
    return (3 if n < 65536 else 5) + n


def _bin_len(n: int) -> int:
    return (2 if n < 256 else 3 if n < 65536 else 5) + n


def _uint_len(v: int) -> int:
    return 1 if v < 128 else 2 if v < 256 else 3 if v < 65536 else 5 if v < 2**32 else 9


def consul_encoded_size(e: EventFireRequest) -> int:
    """len(encodeMsgPack(UserEvent)): codec tags ID, n, p/nf/sf/tf (omitempty), v; LTime is not encoded."""
    fields = [("ID", _str_len(len(e.id.encode()), True)), ("n", _str_len(len(e.name.encode()), True))]
    if e.payload:
        fields.append(("p", _bin_len(len(e.payload))))
    for key, value in (("nf", e.node_filter), ("sf", e.service_filter), ("tf", e.tag_filter)):
        if value:
            fields.append((key, _str_len(len(value.encode()), True)))
    fields.append(("v", _uint_len(e.version)))
    return 1 + sum(_str_len(len(k), True) + v for k, v in fields)


def check_size(e: EventFireRequest, ltime: int) -> None:
    """serf's UserEvent size checks, with its messages (512 bytes, before and after its own encoding)."""
    limit = USER_EVENT_SIZE_LIMIT
    serf_name = len((SERF_EVENT_PREFIX + e.name).encode())
    payload = consul_encoded_size(e)
    if serf_name + payload > limit:
        raise BadRequest(f"user event exceeds configured limit of {limit} bytes before encoding")
    # serf's messageUserEvent{LTime, Name, Payload, CC} after a type byte, with a plain MsgpackHandle.
    encoded = 1 + 1 + _str_len(5, False) + _uint_len(ltime) + _str_len(4, False) + _str_len(serf_name, False)
    encoded += _str_len(7, False) + _str_len(payload, False) + _str_len(2, False) + 1
    if encoded > limit:
        raise BadRequest(f"encoded user event exceeds configured limit of {limit} bytes after encoding")


# ------------------------------------------------------------- endpoints


@endpoint("Event.Fire", EventFireArgs)
async def event_fire(srv: Any, args: EventFireArgs, hops: int) -> dict[str, Any]:
    """Validate and size a user event (event:write on its name), give it its ID, and append it to the ring; answers Consul's fire reply."""
    done, result = await srv.forward("Event.Fire", args, args.datacenter, hops)
    if done:
        return result
    e = args.event
    validate_user_event(e)
    caller = srv.acl.caller(args.token)
    caller.require(caller.authorizer.event_write(e.name), "event", "write", e.name)
    e.id = str(uuid.uuid4())
    e.version = USER_EVENT_VERSION
    check_size(e, srv.state.event_last_ltime())
    await propose(srv, e)
    # Consul answers before gossip has stamped a Lamport time: LTime is 0 in the fire reply.
    return event_json(e, 0)


@endpoint("Event.List", EventQuery, QueryReply)
async def event_list(srv: Any, args: EventQuery, hops: int) -> QueryReply:
    """The ring oldest first, only events the caller may read (event:read), blocking on the last fire's Raft index;
    agents filter it for themselves."""
    done, result = await srv.forward_read("Event.List", args, args.opts, hops)
    if done:
        return result
    name, state = args.name, srv.state
    caller = srv.acl.caller(args.opts.token)
    readable = None if caller.unrestricted else lambda es: keep(es, lambda e: caller.authorizer.event_read(e.name))
    return await srv.blocking_query(
        args.opts, lambda ws: state.event_list(name, ws), lambda es: [event_json(e, e.ltime) for e in es], readable
    )
