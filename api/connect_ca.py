"""/v1/connect/ca and /v1/agent/connect/ca: Consul's Connect CA API (agent/connect_ca_endpoint.go, agent_endpoint.go).

The /v1/connect/ca routes read and change the servers' CA; the /v1/agent ones
answer from this agent's cache (``agent.leafcerts``): the roots it watches and
the leaf certificates it keeps for its services, each with ``X-Cache``. The
roots need no token; a leaf needs service:write on its service.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.api.common import DC, TOKEN, agent_of, is_pretty, opts_of, param, query_of, reply_response
from proconsul.api.decode import loads as decode_json, DECODE, as_bool, as_str, check_unknown, fold
from proconsul.api.headers import meta_headers
from proconsul.api.health import READ_PARAMS
from proconsul.api.lean import Reply, json_reply, read_limited
from proconsul.api.params import first, parse_bool
from proconsul.server.endpoints.connect_ca import CAConfigSet
from proconsul.server.errors import BadRequest
from proconsul.server.structs import DatacenterRequest, QueryMeta

router = APIRouter(tags=["connect"])

PEM_CHAIN = (b"content-type", b"application/pem-certificate-chain")
_CONFIG_FIELDS = {"provider", "config", "state", "forcewithoutcrosssigning", "createindex", "modifyindex", "clusterid"}
_BLOCKING = READ_PARAMS[:6]
_CONFIG_BODY = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "Provider": {"type": "string", "enum": ["consul"]},
                    "Config": {"type": "object", "description": "LeafCertTTL, IntermediateCertTTL, RootCertTTL, PrivateKeyType, PrivateKeyBits, PrivateKey, RootCert"},
                    "ForceWithoutCrossSigning": {"type": "boolean"},
                },
            }
        }
    }
}


def _cache_header(hit: bool) -> tuple[bytes, bytes]:
    return (b"x-cache", b"HIT" if hit else b"MISS")


@router.get(
    "/v1/connect/ca/roots",
    summary="The trusted CA roots (JSON, or the PEM chain with ?pem)",
    openapi_extra={"parameters": [*_BLOCKING, param("pem", "Answer with the roots and intermediates as a PEM chain", {"type": "boolean"})]},
)
async def connect_ca_roots(request: Request) -> Response:
    query = query_of(request)
    pem = False
    if "pem" in query and first(query, "pem") != "":
        parsed = parse_bool(first(query, "pem"))
        if parsed is None:
            raise BadRequest("The 'pem' query parameter must be a boolean value")
        pem = parsed
    reply = await agent_of(request).rpc("ConnectCA.Roots", DatacenterRequest(opts=opts_of(request)))
    headers = meta_headers(reply.meta)
    if not pem:
        return reply_response(json_reply(reply.value, is_pretty(request), headers=headers))
    # Consul writes each root, then its intermediates.
    chain = "".join(r["RootCert"] + "".join(r["IntermediateCerts"] or []) for r in reply.value["Roots"])
    return reply_response(Reply(200, chain.encode(), [PEM_CHAIN, *headers]))


@router.get("/v1/connect/ca/configuration", summary="The CA configuration", openapi_extra={"parameters": _BLOCKING})
async def connect_ca_configuration_get(request: Request) -> Response:
    reply = await agent_of(request).rpc("ConnectCA.ConfigurationGet", DatacenterRequest(opts=opts_of(request)))
    return reply_response(json_reply(reply.value, is_pretty(request), headers=meta_headers(reply.meta)))


def parse_config_body(data: Any) -> CAConfigSet:
    """The PUT body: Consul's CAConfiguration (Provider, Config, State, ForceWithoutCrossSigning)."""
    if data is None:
        data = {}
    check_unknown(data if isinstance(data, dict) else {}, _CONFIG_FIELDS, "CAConfiguration", strict=False)
    f = fold(data, "CAConfiguration")
    config = f.get("config")
    if config is not None and not isinstance(config, dict):
        raise BadRequest(f"{DECODE}: Config: expected an object, got {json.dumps(config)[:40]}")
    state = f.get("state")
    if state is not None and (not isinstance(state, dict) or not all(isinstance(v, str) for v in state.values())):
        raise BadRequest(f"{DECODE}: State: expected an object of strings")
    return CAConfigSet(
        provider=as_str(f.get("provider"), "Provider"),
        config=config or {},
        state=state,
        force_without_cross_signing=as_bool(f.get("forcewithoutcrosssigning"), "ForceWithoutCrossSigning"),
    )


@router.put(
    "/v1/connect/ca/configuration",
    summary="Change the CA configuration; new key settings rotate the root (cross-signed by the old one)",
    openapi_extra={"parameters": [DC, TOKEN], "requestBody": _CONFIG_BODY},
)
async def connect_ca_configuration_set(request: Request) -> Response:
    raw = await read_limited(request.stream(), request.headers.get("content-length"), 512 * 1024, lambda n, d: f"Request body too large: {n} bytes")
    try:
        data = decode_json(raw) if raw.strip() else None
    except ValueError as err:
        raise BadRequest(f"{DECODE}: {err}") from None
    args = parse_config_body(data)
    opts = opts_of(request)
    args.datacenter, args.token = opts.datacenter, opts.token
    await agent_of(request).rpc("ConnectCA.ConfigurationSet", args)
    return reply_response(Reply(200, b"", []))


@router.get(
    "/v1/agent/connect/ca/roots",
    summary="The trusted CA roots from this agent's cache (blocking on ?index)",
    openapi_extra={"parameters": _BLOCKING},
)
async def agent_connect_ca_roots(request: Request) -> Response:
    index, roots, hit = await agent_of(request).leafcerts.roots(opts_of(request))
    headers = [*meta_headers(QueryMeta(index=index)), _cache_header(hit)]
    return reply_response(json_reply(roots, is_pretty(request), headers=headers))


@router.get(
    "/v1/agent/connect/ca/leaf/{service}",
    summary="This agent's leaf certificate for a service: made and renewed here, signed by the servers (blocking on ?index)",
    openapi_extra={"parameters": _BLOCKING},
)
async def agent_connect_ca_leaf(request: Request, service: str) -> Response:
    """service:write on the service (403), as the servers' ConnectCA.Sign wants for the token it is given.

    The check runs here too, so a leaf already cached for another caller is not handed to a token
    that could not have had it signed. The leaf is signed and renewed with this caller's token.
    """
    from proconsul.agent import acl as agent_acl

    agent, opts = agent_of(request), opts_of(request)
    caller = await agent_acl.caller(agent, opts.token)
    caller.require(caller.authorizer.service_write(service), "service", "write", service)
    cert, hit = await agent.leafcerts.leaf(service, opts)
    headers = [(b"x-consul-index", str(cert["ModifyIndex"]).encode()), _cache_header(hit)]
    return reply_response(json_reply(cert, is_pretty(request), headers=headers))


@router.get("/v1/agent/connect/ca/leaf/", include_in_schema=False)
async def agent_connect_ca_leaf_unnamed(request: Request) -> Response:
    raise BadRequest("Missing service name: /v1/agent/connect/ca/leaf/<service>")
