"""/v1/event: Consul's user events; every agent answers the list for itself.

The ring of recent events lives on the servers (``Event.List``); an agent keeps
only the events whose filters match it, as a Consul agent does when gossip
delivers them (agent/user_event.go shouldProcessUserEvent): NodeFilter against
its node name, ServiceFilter against its local services, TagFilter against the
tags of those services. The filters are applied when the list is read, so a
service registered after a fire makes the agent see that event too.

``X-Consul-Index`` is Consul's for events: not a Raft index but the last listed
event's ID folded to 64 bits (``uuidToUint64``), or 1 with no events. It is not
ordered, so a blocking list returns as soon as that value differs from
``?index`` (agent/event_endpoint.go EventList), and otherwise waits for fires.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.agent.watch import id_to_index
from proconsul.api.common import CONSISTENT, DC, STALE, TOKEN, agent_of, is_pretty, json_response, opts_of, param, query_of, reply_response
from proconsul.api.headers import FILTERED
from proconsul.api.lean import json_reply, read_limited
from proconsul.api.params import first, token_from
from proconsul.server.commands import EventFireRequest
from proconsul.server.endpoints.event import EventFireArgs, EventQuery, filter_regexp
from proconsul.server.errors import BadRequest, PermissionDenied
from proconsul.server.structs import QueryOptions

router = APIRouter(tags=["event"])

PERMISSION_DENIED = "Permission denied"  # acl.ErrPermissionDenied
MAX_BODY = 64 * 1024  # anything near this is far past serf's 512-byte event limit anyway
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0


def accepts(event: dict[str, Any], node_name: str, services: Iterable[Any]) -> bool:
    """Consul's shouldProcessUserEvent: does this agent (its node name, its local services) take the event?

    Consul matches ServiceFilter against the local services map's keys (service IDs); we match the
    service name too, as the docs describe it. A filter Go would not compile drops the event.
    """
    node_filter, service_filter, tag_filter = event["NodeFilter"], event["ServiceFilter"], event["TagFilter"]
    if node_filter:
        node_re = filter_regexp(node_filter)
        if node_re is None or not node_re.search(node_name):
            return False
    if service_filter:
        service_re = filter_regexp(service_filter)
        tag_re = filter_regexp(tag_filter) if tag_filter else None
        if service_re is None or (tag_filter and tag_re is None):
            return False
        for svc in services:
            if not (service_re.search(svc.service) or service_re.search(svc.id)):
                continue
            if tag_re is None or any(tag_re.search(tag) for tag in svc.tags):
                return True
        return False
    return True


async def agent_events(agent: Any, name: str, opts: QueryOptions) -> tuple[int, list[dict[str, Any]], bool]:
    """The events this agent takes and their index, and whether ACLs hid some (the servers drop events the
    token may not read); with ``opts.index`` equal to the index, wait for a fire first."""
    loop = asyncio.get_running_loop()
    wait = min(opts.wait if opts.wait > 0 else DEFAULT_WAIT, MAX_WAIT)
    deadline = loop.time() + wait
    raft_index, remaining = 0, wait
    while True:
        query = EventQuery(
            name=name,
            opts=QueryOptions(
                datacenter=opts.datacenter,
                token=opts.token,
                index=raft_index,
                wait=remaining,
                stale=opts.stale,
                consistent=opts.consistent,
            ),
        )
        reply = await agent.rpc("Event.List", query)
        services = [d.service for d in agent.local.live_services().values()]
        events = [e for e in reply.value or [] if accepts(e, agent.config.node_name, services)]
        index = id_to_index(events[-1]["ID"]) if events else 1
        # Consul waits only while the index equals ?index exactly: it is a hash, not a position.
        remaining = deadline - loop.time()
        if not opts.index or index != opts.index or remaining <= 0:
            return index, events, reply.meta.filtered
        raft_index = reply.meta.index


_FIRE_PARAMS = [
    DC,
    TOKEN,
    param("node", "Regular expression (RE2) on the node names that take the event"),
    param("service", "Regular expression on the local service names of the agents that take it"),
    param("tag", "Regular expression on those services' tags (needs service)"),
]
_LIST_PARAMS = [
    param("name", "Only events with this name"),
    DC,
    TOKEN,
    STALE,
    CONSISTENT,
    param("index", "Blocking query: wait while the event index equals this", {"type": "integer", "minimum": 0}),
    param("wait", "Blocking query: maximum wait, a Go duration"),
]
_PAYLOAD = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


@router.put("/v1/event/fire/{name}", summary="Fire a user event", openapi_extra={"parameters": _FIRE_PARAMS, "requestBody": _PAYLOAD})
@router.put("/v1/event/fire/{name:path}", include_in_schema=False)  # Consul takes the rest of the path, slashes too
async def event_fire(request: Request, name: str) -> Response:
    if not name:
        raise BadRequest("Missing name")
    q = query_of(request)
    raw = await read_limited(request.stream(), request.headers.get("content-length"), MAX_BODY, lambda n, d: f"Request body too large: {n} bytes")
    event = EventFireRequest(
        id="",
        name=name,
        payload=raw or None,
        node_filter=first(q, "node"),
        service_filter=first(q, "service"),
        tag_filter=first(q, "tag"),
    )
    try:
        result = await agent_of(request).rpc("Event.Fire", EventFireArgs(event, first(q, "dc"), token_from(q, request.headers)))
    except PermissionDenied as err:
        if str(err).startswith(PERMISSION_DENIED):
            raise PermissionDenied(PERMISSION_DENIED) from None  # Consul's EventFire answers acl.ErrPermissionDenied's bare text
        raise
    return json_response(request, result)


@router.get("/v1/event/list", summary="The recent user events this agent takes, oldest first", openapi_extra={"parameters": _LIST_PARAMS})
async def event_list(request: Request) -> Response:
    opts = opts_of(request)
    index, events, filtered = await agent_events(agent_of(request), first(query_of(request), "name"), opts)
    headers = [(b"x-consul-index", str(index).encode())]
    if filtered:
        headers.append(FILTERED)
    return reply_response(json_reply(events, is_pretty(request), headers=headers))
