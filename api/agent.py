"""/v1/agent: this agent's own view and controls (Consul's agent endpoints). Reads answer from local state.

ACLs as Consul's agent endpoints enforce them (agent/agent_endpoint.go, agent/acl.go), resolved on this
agent (``proconsul.agent.acl``; an empty token is ``acl.tokens.default``): self and metrics need
agent:read on this node; reload, join and leave agent:write; force-leave operator:write; node
maintenance node:write on this node. Services, checks and members are filtered to what the token may
read (with ``X-Consul-Results-Filtered-By-ACLs``); one service needs service:read (403). Registrations
are vetted by ``Agent.vet_*`` (Consul's vetServiceRegister, vetCheckRegister, vetCheckUpdate) and keep
the caller's token, which anti-entropy syncs them with. With ACLs off the caller is ``OPEN`` and no
per-item check runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import platform
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.agent import acl as agent_acl
from proconsul.agent.structs import check_unknown, fold, parse_check, parse_service
from proconsul.agent.version import __version__
from proconsul.api.common import DC, TOKEN, agent_of, is_pretty, json_response, param, query_of, reply_response
from proconsul.api.headers import FILTERED
from proconsul.api.lean import Reply, dump_json, read_limited
from proconsul.api.params import first, has, parse_bool, parse_duration, token_from
from proconsul.api.decode import loads as decode_json
from proconsul.server import shapes
from proconsul.server.acl import Resolved, masked
from proconsul.server.errors import ACLDisabled, BadRequest, NotFound, ProconsulError
from proconsul.server.structs import CatalogQuery, DatacenterRequest, MemberRequest, QueryOptions

router = APIRouter(tags=["agent"])
agent_log = logging.getLogger("proconsul.agent")
MAX_BODY = 1024 * 1024
FILTER = param("filter", "Filter expression (Consul's filtering language)")
_JSON_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}


async def _json_body(request: Request) -> Any:
    raw = await read_limited(request.stream(), request.headers.get("content-length"), MAX_BODY, lambda n, d: f"Request body too large: {n} bytes")
    if not raw.strip():
        raise BadRequest("Request decode failed: empty body")
    try:
        return decode_json(raw)
    except ValueError as err:
        raise BadRequest(f"Request decode failed: {err}") from None


def request_token(request: Request) -> str:
    """The caller's token as sent (X-Consul-Token, Authorization: Bearer, ?token); "" when none."""
    return token_from(query_of(request), request.headers)


def rpc_token(request: Request) -> str:
    """The token to pass on to the servers: the caller's, else ``acl.tokens.default`` (Consul's parseToken)."""
    return request_token(request) or agent_of(request).config.acl_token_default


async def caller_of(request: Request) -> Resolved:
    """Who is calling (``OPEN`` with ACLs disabled); 403 "ACL not found" for an unknown token."""
    return await agent_acl.caller(agent_of(request), request_token(request))


async def _require_agent(request: Request, level: str) -> None:
    """agent:read / agent:write on this node (Consul's AgentReadAllowed / AgentWriteAllowed)."""
    caller = await caller_of(request)
    if caller.unrestricted:
        return
    node = agent_of(request).config.node_name
    allowed = caller.authorizer.agent_read(node) if level == "read" else caller.authorizer.agent_write(node)
    caller.require(allowed, "agent", level, node)


def _filtered_header(request: Request, dropped: bool) -> list[tuple[bytes, bytes]]:
    """X-Consul-Results-Filtered-By-ACLs when ACLs hid something, never to an anonymous caller (Consul's
    maskResultsFilteredByACLs)."""
    return [FILTERED] if masked(rpc_token(request), dropped) else []


def _ok(request: Request) -> Response:
    """Consul's agent write endpoints answer 200 with an empty body."""
    return Response(status_code=200)


def _local_service_json(agent: Any, service_id: str) -> dict[str, Any]:
    defn = agent.local.service(service_id)
    inst = shapes.service_instance(agent.config.node_name, defn.service)
    return shapes.agent_service_json(inst, agent.config.datacenter)


def _local_check_json(agent: Any, check_id: str) -> dict[str, Any]:
    c = agent.local.check(check_id)
    out = shapes.check_json(shapes.health_check(agent.config.node_name, c.defn.record(c.status, c.output)))
    svc = agent.local.service(c.defn.service_id) if c.defn.service_id else None
    out["ServiceName"] = svc.service.service if svc else ""
    out["ServiceTags"] = list(svc.service.tags) if svc else []
    out["CreateIndex"] = out["ModifyIndex"] = 0
    return out


def _filtered(request: Request, schema: str, items: dict[str, dict]) -> dict[str, dict]:
    expr = first(query_of(request), "filter")
    if not expr:
        return items
    from proconsul.server import filter as bexpr

    keep = bexpr.compile_filter(expr, getattr(bexpr, schema))
    return {k: v for k, v in items.items() if keep(v)}


# ----------------------------------------------------------------- self, members, metrics


@router.get("/v1/agent/self", summary="This agent's configuration, member entry and stats", openapi_extra={"parameters": [TOKEN]})
async def agent_self(request: Request) -> Response:
    await _require_agent(request, "read")
    agent = agent_of(request)
    cfg = agent.config
    raft = await agent.rpc("Status.RaftStats", DatacenterRequest()) if cfg.server else {}
    body = {
        "Config": {
            "Datacenter": cfg.datacenter,
            "PrimaryDatacenter": cfg.datacenter,
            "NodeName": cfg.node_name,
            "NodeID": cfg.node_id,
            "Revision": "",
            "Server": cfg.server,
            "Version": __version__,
            "BuildDate": "",
        },
        "DebugConfig": {
            "Datacenter": cfg.datacenter,
            "NodeName": cfg.node_name,
            "BindAddr": cfg.bind_addr,
            "ClientAddrs": [cfg.client_addr],
            "AdvertiseAddrLAN": cfg.advertise,
            "DataDir": cfg.data_dir or "",
            "DevMode": cfg.dev,
            "ServerMode": cfg.server,
            "EnableScriptChecks": cfg.enable_script_checks,
            "EnableLocalScriptChecks": cfg.enable_local_script_checks,
            "RetryJoinLAN": list(cfg.retry_join),
            "ACLsEnabled": cfg.acl_enabled,
            "ACLResolverSettings": {"ACLDefaultPolicy": cfg.acl_default_policy},
            "DefaultIntentionPolicy": cfg.default_intention_policy,
        },
        "Coord": None,
        "Member": {
            "Name": cfg.node_name,
            "Addr": cfg.advertise,
            "Port": cfg.ports.server if cfg.server else 0,
            "Tags": agent.member_tags(),
            "Status": 1,
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        },
        "Stats": {
            "agent": {
                "check_monitors": str(len(agent.local.live_checks())),
                "services": str(len(agent.local.live_services())),
                "checks": str(len(agent.local.live_checks())),
                "server": str(cfg.server).lower(),
                "known_servers": str(len(agent.router.servers()) if agent.router else 1),
            },
            "runtime": {"os": platform.system().lower(), "arch": platform.machine(), "version": platform.python_version()},
            "raft": raft,
        },
        "Meta": dict(cfg.node_meta),
        "xDS": None,
    }
    return json_response(request, body)


@router.get("/v1/agent/members", summary="The cluster's agents with their liveness", openapi_extra={"parameters": [TOKEN, param("wan", "Accepted; there is no WAN pool")]})
async def agent_members(request: Request) -> Response:
    """Consul's AgentMembers with filterMembers: only the members whose node the token may read.

    The member table stands in for Consul's local serf view: the agent reads it with its own token
    and filters for the caller here (so the agent recovery token works without the servers).
    """
    caller = await caller_of(request)
    agent = agent_of(request)
    reply = await agent.rpc("Internal.Members", CatalogQuery(opts=QueryOptions(stale=True, token=agent.agent_token())))
    members, dropped = reply.value, False
    if not caller.unrestricted:
        kept = [m for m in members if caller.authorizer.node_read(m["Name"])]
        dropped = dropped or len(kept) != len(members)
        members = kept
    return json_response(request, members, headers=_filtered_header(request, dropped))


@router.get(
    "/v1/agent/metrics",
    summary="Telemetry: Consul's JSON, or Prometheus text with ?format=prometheus",
    openapi_extra={"parameters": [TOKEN, param("format", "prometheus for Prometheus text")]},
)
async def agent_metrics(request: Request) -> Response:
    await _require_agent(request, "read")
    metrics = agent_of(request).metrics
    if first(query_of(request), "format") == "prometheus":
        from proconsul.agent.metrics import PROMETHEUS_CONTENT_TYPE

        return Response(content=metrics.to_prometheus(), media_type=PROMETHEUS_CONTENT_TYPE)
    return json_response(request, metrics.to_json())


# ----------------------------------------------------------------- services and checks


@router.get("/v1/agent/services", summary="Services registered with this agent", openapi_extra={"parameters": [TOKEN, FILTER]})
async def agent_services(request: Request) -> Response:
    """Consul's AgentServices with filterServices: only the services the token may read."""
    caller = await caller_of(request)
    agent = agent_of(request)
    live = agent.local.live_services()
    dropped = False
    if not caller.unrestricted:
        allowed = {sid for sid, defn in live.items() if caller.authorizer.service_read(defn.service.service)}
        dropped = len(allowed) != len(live)
        live = {sid: defn for sid, defn in live.items() if sid in allowed}
    items = {sid: _local_service_json(agent, sid) for sid in sorted(live)}
    return json_response(request, _filtered(request, "AGENT_SERVICE", items), headers=_filtered_header(request, dropped))


@router.api_route("/v1/agent/service/register", methods=["GET", "POST", "DELETE", "PATCH"], include_in_schema=False)
async def agent_service_register_wrong_method(request: Request) -> Response:
    """Consul's mux matches /v1/agent/service/register before /v1/agent/service/<id>: other methods get 405."""
    from starlette.exceptions import HTTPException

    raise HTTPException(405, headers={"Allow": "PUT"})


@router.get(
    "/v1/agent/service/{service_id}",
    summary="One local service, with its ContentHash (hash-blocking with ?hash=&wait=)",
    openapi_extra={"parameters": [TOKEN, param("hash", "Block until the ContentHash differs"), param("wait", "Max wait, a Go duration")]},
)
async def agent_service(request: Request, service_id: str) -> Response:
    caller = await caller_of(request)
    agent = agent_of(request)
    q = query_of(request)

    def current() -> dict[str, Any]:
        defn = agent.local.service(service_id)
        if defn is None:
            raise NotFound(f"unknown service ID: {service_id}")
        name = defn.service.service
        caller.require(caller.authorizer.service_read(name), "service", "read", name)
        body = _local_service_json(agent, service_id)
        body["ContentHash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        return body

    body = current()
    wanted = first(q, "hash")
    if wanted and wanted == body["ContentHash"]:
        try:
            wait = parse_duration(first(q, "wait")) if first(q, "wait") else 300.0
        except ValueError:
            raise BadRequest("Invalid wait time") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait or 300.0, 600.0)
        while body["ContentHash"] == wanted and loop.time() < deadline:
            await agent.local.wait_change(agent.local.version, deadline - loop.time())
            body = current()
    return json_response(request, body, headers=[(b"x-consul-contenthash", body["ContentHash"].encode())])


@router.get("/v1/agent/checks", summary="Checks registered with this agent", openapi_extra={"parameters": [TOKEN, FILTER]})
async def agent_checks(request: Request) -> Response:
    """Consul's AgentChecks with filterChecks: service:read for a service's check, node:read for the node's."""
    caller = await caller_of(request)
    agent = agent_of(request)
    items = {cid: _local_check_json(agent, cid) for cid in sorted(agent.local.live_checks())}
    dropped = False
    if not caller.unrestricted:
        authz, node = caller.authorizer, agent.config.node_name
        kept = {
            cid: c for cid, c in items.items()
            if (authz.service_read(c["ServiceName"]) if c["ServiceName"] else authz.node_read(node))
        }
        dropped = len(kept) != len(items)
        items = kept
    return json_response(request, _filtered(request, "HEALTH_CHECK", items), headers=_filtered_header(request, dropped))


@router.put(
    "/v1/agent/service/register",
    summary="Register a service (with its checks) on this agent",
    openapi_extra={"parameters": [TOKEN, param("replace-existing-checks", "Drop the service's checks not in this definition", {"type": "boolean"})], "requestBody": _JSON_BODY},
)
async def agent_service_register(request: Request) -> Response:
    """Consul's AgentRegisterService: validated (400), vetted (403), then kept with the caller's token."""
    defn = parse_service(await _json_body(request))
    agent = agent_of(request)
    token = request_token(request)
    caller = await caller_of(request)
    agent.vet_service_register(caller, defn.service)
    if defn.sidecar is not None:
        # The sidecar goes under its own Token if its block names one, else the request's (Consul's
        # sidecarServiceFromNodeService), and is vetted with that token.
        own = defn.sidecar.token if defn.sidecar.token != defn.token else ""
        defn.sidecar.token = own or token
        agent.vet_service_register(await agent_acl.caller(agent, own) if own else caller, defn.sidecar.service)
    defn.token = token  # an API registration's body Token is not used: the request's token is (Consul)
    replace = has(query_of(request), "replace-existing-checks")
    await agent.register_service(defn, "api", replace_existing_checks=replace)
    return _ok(request)


@router.put("/v1/agent/service/deregister/{service_id}", summary="Remove a service and its checks from this agent", openapi_extra={"parameters": [TOKEN]})
async def agent_service_deregister(request: Request, service_id: str) -> Response:
    agent = agent_of(request)
    agent.vet_service_update(await caller_of(request), service_id)
    await agent.deregister_service(service_id)
    return _ok(request)


@router.put("/v1/agent/check/register", summary="Register a check on this agent", openapi_extra={"parameters": [TOKEN], "requestBody": _JSON_BODY})
async def agent_check_register(request: Request) -> Response:
    data = await _json_body(request)
    fields = fold(data, "check")
    if not fields.get("name"):
        raise BadRequest("Missing check name")
    if fields.get("status") not in (None, "", "passing", "warning", "critical"):
        raise BadRequest("Bad check status")
    defn = parse_check(data)
    agent = agent_of(request)
    agent.vet_check_register(await caller_of(request), defn)
    defn.token = request_token(request)
    await agent.register_check(defn)
    return _ok(request)


@router.put("/v1/agent/check/deregister/{check_id}", summary="Remove a check from this agent", openapi_extra={"parameters": [TOKEN]})
async def agent_check_deregister(request: Request, check_id: str) -> Response:
    agent = agent_of(request)
    agent.vet_check_update(await caller_of(request), check_id)
    await agent.deregister_check(check_id)
    return _ok(request)


def _ttl_route(status: str) -> Any:
    async def handler(request: Request, check_id: str) -> Response:
        agent = agent_of(request)
        agent.vet_check_update(await caller_of(request), check_id)
        agent.update_ttl_check(check_id, status, first(query_of(request), "note"))
        return _ok(request)

    handler.__name__ = f"agent_check_{status}"
    return handler


for _verb, _status in (("pass", "passing"), ("warn", "warning"), ("fail", "critical")):
    router.add_api_route(
        f"/v1/agent/check/{_verb}/{{check_id}}",
        _ttl_route(_status),
        methods=["PUT"],
        summary=f"Set a TTL check {_status} (and reset its TTL)",
        openapi_extra={"parameters": [TOKEN, param("note", "Output to record")]},
    )


@router.put("/v1/agent/check/update/{check_id}", summary="Set a TTL check's status and output", openapi_extra={"parameters": [TOKEN], "requestBody": _JSON_BODY})
async def agent_check_update(request: Request, check_id: str) -> Response:
    data = await _json_body(request)
    check_unknown(data, {"status", "output"}, "update", strict=False)
    f = fold(data, "update")
    status = f.get("status")
    if status not in ("passing", "warning", "critical"):
        raise BadRequest(f"Invalid check status: '{status}'")
    output = f.get("output", "")
    if not isinstance(output, str):
        raise BadRequest("Request decode failed: Output: expected a string")
    agent = agent_of(request)
    agent.vet_check_update(await caller_of(request), check_id)
    agent.update_ttl_check(check_id, status, output)
    return _ok(request)


def _enable(request: Request) -> tuple[bool, str]:
    q = query_of(request)
    if not has(q, "enable"):
        raise BadRequest("Missing value for enable")
    value = parse_bool(first(q, "enable"))
    if value is None:
        raise BadRequest(f'Invalid value for enable: "{first(q, "enable")}"')
    return value, first(q, "reason")


@router.put(
    "/v1/agent/service/maintenance/{service_id}",
    summary="Put a service in or out of maintenance mode",
    openapi_extra={"parameters": [TOKEN, param("enable", "true or false", {"type": "boolean"}), param("reason", "Shown as the check's notes")]},
)
async def agent_service_maintenance(request: Request, service_id: str) -> Response:
    enable, reason = _enable(request)
    agent = agent_of(request)
    agent.vet_service_update(await caller_of(request), service_id)
    await agent.service_maintenance(service_id, enable, reason)
    return _ok(request)


@router.put(
    "/v1/agent/maintenance",
    summary="Put this node in or out of maintenance mode",
    openapi_extra={"parameters": [TOKEN, param("enable", "true or false", {"type": "boolean"}), param("reason", "Shown as the check's notes")]},
)
async def agent_maintenance(request: Request) -> Response:
    enable, reason = _enable(request)
    agent = agent_of(request)
    caller = await caller_of(request)
    node = agent.config.node_name
    caller.require(caller.authorizer.node_write(node), "node", "write", node)
    await agent.node_maintenance(enable, reason)
    return _ok(request)


# ----------------------------------------------------------------- cluster membership


@router.put("/v1/agent/join/{address}", summary="Join a server (a server's server RPC address)", openapi_extra={"parameters": [TOKEN, param("wan", "Accepted; there is no WAN pool")]})
async def agent_join(request: Request, address: str) -> Response:
    await _require_agent(request, "write")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise BadRequest(f"Invalid address {address!r}: expected host:port of a server's server port")
    try:
        await agent_of(request).join(address)
    except ProconsulError as err:
        raise BadRequest(f"Failed to join {address}: {err}") from None
    return _ok(request)


@router.put("/v1/agent/leave", summary="Leave the cluster gracefully and shut this agent down", openapi_extra={"parameters": [TOKEN]})
async def agent_leave(request: Request) -> Response:
    await _require_agent(request, "write")
    agent = agent_of(request)
    # Answer first: leaving ends with this process shutting down.
    asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(agent.leave()))
    return _ok(request)


@router.put("/v1/agent/force-leave/{node}", summary="Move a failed node to left, out of the catalog", openapi_extra={"parameters": [TOKEN, param("prune", "Accepted")]})
async def agent_force_leave(request: Request, node: str) -> Response:
    caller = await caller_of(request)
    caller.require(caller.authorizer.operator_write(), "operator", "write")
    await agent_of(request).rpc("Internal.ForceLeave", MemberRequest(name=node, token=rpc_token(request)))
    return _ok(request)


@router.put("/v1/agent/reload", summary="Re-read the config files (services and checks from them are replaced)", openapi_extra={"parameters": [TOKEN]})
async def agent_reload(request: Request) -> Response:
    await _require_agent(request, "write")
    await agent_of(request).reload_from_files()
    return _ok(request)


# ----------------------------------------------------------------- ACL tokens

# Consul's AgentToken kinds: the name in the URL -> the RuntimeConfig field it sets (legacy names too).
TOKEN_KINDS = {
    "default": "acl_token_default",
    "acl_token": "acl_token_default",
    "agent": "acl_token_agent",
    "acl_agent_token": "acl_token_agent",
    "agent_recovery": "acl_token_agent_recovery",
    "agent_master": "acl_token_agent_recovery",
    "acl_agent_master_token": "acl_token_agent_recovery",
}
# Kinds Consul takes for features proconsul does not have (ACL replication, DNS tokens, config-file
# registration tokens): accepted and not used, as the config loader accepts them in acl.tokens.
IGNORED_TOKEN_KINDS = {"replication", "acl_replication_token", "config_file_service_registration", "dns", "dns_token"}
_TOKEN_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {"Token": {"type": "string"}}}}}}


@router.put(
    "/v1/agent/token/{kind}",
    summary="Set one of this agent's ACL tokens (default, agent, agent_recovery; legacy names too) until the next reload",
    openapi_extra={"parameters": [TOKEN], "requestBody": _TOKEN_BODY},
)
async def agent_token(request: Request, kind: str) -> Response:
    """Consul's AgentToken: 401 with ACLs off, acl:write, then {"Token": "..."}; not persisted."""
    agent = agent_of(request)
    if not agent.config.acl_enabled:
        raise ACLDisabled("ACL support disabled")
    caller = await caller_of(request)
    caller.require(caller.authorizer.acl_write(), "acl", "write")
    secret = fold(await _json_body(request), "AgentToken").get("token", "")
    if not isinstance(secret, str):
        raise BadRequest("Request decode failed: Token: expected a string")
    field = TOKEN_KINDS.get(kind)
    if field is None and kind not in IGNORED_TOKEN_KINDS:
        raise NotFound(f'Token "{kind}" is unknown')
    if field is not None:
        agent.set_token(field, secret)
    agent_log.info("updated the agent's ACL token %s", kind)  # the kind, never the secret
    return _ok(request)
