"""/v1/acl: Consul's ACL HTTP API — bootstrap, tokens, policies, roles (agent/acl_endpoint.go).

Without ``acl { enabled = true }`` every route answers 401 "ACL support
disabled", as Consul does (py-consul raises ACLDisabled). Bodies decode as
Consul's lib.DecodeJSON does: field names case-insensitive (snake_case too),
unknown fields refused with "<Kind> decoding failed: json: unknown field", and
output fields (CreateIndex, Hash, ...) accepted so a read can be sent back.
The caller's token comes from X-Consul-Token, Authorization: Bearer or
?token=, else the agent's ``acl.tokens.default``; the servers authorize it.
Missing objects are 404 with Consul's "Requested <kind> does not exist: ACL not found".
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.api.common import DC, TOKEN, agent_of, is_pretty, json_response, opts_of, param, query_of, reply_response
from proconsul.api.decode import loads as decode_json, TOLERATED, as_bool, as_duration, as_str, as_strlist, fold
from proconsul.api.headers import meta_headers
from proconsul.api.health import READ_PARAMS
from proconsul.api.lean import json_reply, read_limited
from proconsul.api.params import first
from proconsul.server.acl import parse_rfc3339
from proconsul.server.endpoints.acl import (
    ACLBootstrapArgs,
    ACLDeleteArgs,
    ACLObjectReadArgs,
    ACLPolicyInput,
    ACLPolicySetArgs,
    ACLRoleInput,
    ACLRoleSetArgs,
    ACLTokenInput,
    ACLTokenListArgs,
    ACLTokenReadArgs,
    ACLTokenSetArgs,
)
from proconsul.server.errors import ACLDisabled, BadRequest, NotFound
from proconsul.server.structs import QueryOptions

router = APIRouter(tags=["acl"])
MAX_BODY = 1024 * 1024
_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
_READ = READ_PARAMS[:6]

_TOKEN_FIELDS = {
    "accessorid", "secretid", "description", "policies", "roles", "serviceidentities", "nodeidentities", "templatedpolicies",
    "local", "authmethod", "expirationtime", "expirationttl", "createtime", "hash", "createindex", "modifyindex",
}
_POLICY_FIELDS = {"id", "name", "description", "rules", "datacenters", "hash", "createindex", "modifyindex"}
_ROLE_FIELDS = {
    "id", "name", "description", "policies", "serviceidentities", "nodeidentities", "templatedpolicies", "hash",
    "createindex", "modifyindex",
}


def _enabled(request: Request) -> None:
    """Consul's checkACLDisabled: 401 before anything else."""
    if not agent_of(request).config.acl_enabled:
        raise ACLDisabled("ACL support disabled")


def _opts(request: Request) -> QueryOptions:
    """Query options with the caller's token, or the agent's default token (Consul's parseToken)."""
    opts = opts_of(request)
    if not opts.token:
        opts.token = agent_of(request).config.acl_token_default
    return opts


async def _body(request: Request, err: str) -> Any:
    raw = await read_limited(request.stream(), request.headers.get("content-length"), MAX_BODY, lambda n, d: f"Request body too large: {n} bytes")
    if not raw.strip():
        raise BadRequest(f"{err}: EOF")
    try:
        return decode_json(raw)
    except ValueError as e:
        raise BadRequest(f"{err}: {e}") from None


def _struct(data: Any, known: set[str], what: str, err: str) -> dict[str, Any]:
    """A JSON object's fields, folded; null is the zero value; unknown fields refused (lib.DecodeJSON)."""
    if data is None:
        return {}
    f = fold(data, what, err)
    for key in data:
        folded = key.replace("_", "").replace("-", "").lower()
        if folded not in known and folded not in TOLERATED:
            raise BadRequest(f'{err}: json: unknown field "{key}"')
    return f


def _list(v: Any, what: str, err: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise BadRequest(f"{err}: {what}: expected a list")
    return v


def _links(v: Any, what: str, err: str) -> list[dict[str, str]]:
    out = []
    for i, item in enumerate(_list(v, what, err)):
        f = _struct(item, {"id", "name"}, f"{what}[{i}]", err)
        out.append({"ID": as_str(f.get("id"), f"{what}[{i}].ID", err), "Name": as_str(f.get("name"), f"{what}[{i}].Name", err)})
    return out


def _service_identities(v: Any, err: str) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(_list(v, "ServiceIdentities", err)):
        f = _struct(item, {"servicename", "datacenters"}, f"ServiceIdentities[{i}]", err)
        si: dict[str, Any] = {"ServiceName": as_str(f.get("servicename"), "ServiceName", err)}
        dcs = as_strlist(f.get("datacenters"), "Datacenters", err)
        if dcs:
            si["Datacenters"] = dcs
        out.append(si)
    return out


def _node_identities(v: Any, err: str) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(_list(v, "NodeIdentities", err)):
        f = _struct(item, {"nodename", "datacenter"}, f"NodeIdentities[{i}]", err)
        out.append({"NodeName": as_str(f.get("nodename"), "NodeName", err), "Datacenter": as_str(f.get("datacenter"), "Datacenter", err)})
    return out


def _no_templated(v: Any, err: str) -> None:
    if _list(v, "TemplatedPolicies", err):
        raise BadRequest("TemplatedPolicies are not supported by proconsul yet")


def parse_token_body(data: Any) -> ACLTokenInput:
    """A token body as Consul's structs.ACLToken decodes it (ExpirationTTL a duration string or nanoseconds)."""
    err = "Token decoding failed"
    f = _struct(data, _TOKEN_FIELDS, "token", err)
    _no_templated(f.get("templatedpolicies"), err)
    expiration_time = as_str(f.get("expirationtime"), "ExpirationTime", err)
    if expiration_time:
        try:
            parse_rfc3339(expiration_time)
        except ValueError:
            raise BadRequest(f'{err}: parsing time "{expiration_time}" as RFC 3339: not a time') from None
    return ACLTokenInput(
        accessor_id=as_str(f.get("accessorid"), "AccessorID", err),
        secret_id=as_str(f.get("secretid"), "SecretID", err),
        description=as_str(f.get("description"), "Description", err),
        policies=_links(f.get("policies"), "Policies", err),
        roles=_links(f.get("roles"), "Roles", err),
        service_identities=_service_identities(f.get("serviceidentities"), err),
        node_identities=_node_identities(f.get("nodeidentities"), err),
        local=as_bool(f.get("local"), "Local", err),
        auth_method=as_str(f.get("authmethod"), "AuthMethod", err),
        expiration_time=expiration_time,
        expiration_ttl=as_duration(f.get("expirationttl"), "ExpirationTTL", err),
    )


def parse_policy_body(data: Any) -> ACLPolicyInput:
    err = "Policy decoding failed"
    f = _struct(data, _POLICY_FIELDS, "policy", err)
    dcs = f.get("datacenters")
    return ACLPolicyInput(
        id=as_str(f.get("id"), "ID", err),
        name=as_str(f.get("name"), "Name", err),
        description=as_str(f.get("description"), "Description", err),
        rules=as_str(f.get("rules"), "Rules", err),
        datacenters=as_strlist(dcs, "Datacenters", err) if dcs is not None else None,
    )


def parse_role_body(data: Any) -> ACLRoleInput:
    err = "Role decoding failed"
    f = _struct(data, _ROLE_FIELDS, "role", err)
    _no_templated(f.get("templatedpolicies"), err)
    return ACLRoleInput(
        id=as_str(f.get("id"), "ID", err),
        name=as_str(f.get("name"), "Name", err),
        description=as_str(f.get("description"), "Description", err),
        policies=_links(f.get("policies"), "Policies", err),
        service_identities=_service_identities(f.get("serviceidentities"), err),
        node_identities=_node_identities(f.get("nodeidentities"), err),
    )


async def _read(request: Request, method: str, args: Any, missing: str = "") -> Response:
    """A read through the servers; None becomes Consul's 404 ``missing`` text, lists stay lists."""
    reply = await agent_of(request).rpc(method, args)
    if reply.value is None:
        if missing:
            raise NotFound(missing)
        value: Any = []
    else:
        value = reply.value
    return reply_response(json_reply(value, is_pretty(request), headers=meta_headers(reply.meta)))


# ---------------------------------------------------------------- bootstrap


@router.put("/v1/acl/bootstrap", summary="Make the first management token (once)", openapi_extra={"parameters": [DC]})
async def acl_bootstrap(request: Request) -> Response:
    _enabled(request)
    raw = await read_limited(request.stream(), request.headers.get("content-length"), MAX_BODY, lambda n, d: f"Request body too large: {n} bytes")
    secret = ""
    if raw.strip():
        try:
            data = decode_json(raw)
        except ValueError as e:
            raise BadRequest(f"Request decoding failed: {e}") from None
        f = _struct(data, {"bootstrapsecret"}, "bootstrap", "Request decoding failed")
        secret = as_str(f.get("bootstrapsecret"), "BootstrapSecret", "Request decoding failed")
    token = await agent_of(request).rpc("ACL.BootstrapTokens", ACLBootstrapArgs(secret, agent_of(request).config.datacenter))
    return json_response(request, {"ID": token["SecretID"], **token})


# ---------------------------------------------------------------- tokens


@router.get(
    "/v1/acl/tokens",
    summary="Every token (list stubs)",
    openapi_extra={"parameters": [*_READ, *(param(p, f"Only tokens linked to this {p}") for p in ("policy", "role", "authmethod", "servicename"))]},
)
async def acl_token_list(request: Request) -> Response:
    _enabled(request)
    q = query_of(request)
    args = ACLTokenListArgs(first(q, "policy"), first(q, "role"), first(q, "authmethod"), first(q, "servicename"), _opts(request))
    return await _read(request, "ACL.TokenList", args)


@router.put("/v1/acl/token", summary="Create a token", openapi_extra={"parameters": [DC, TOKEN], "requestBody": _BODY})
async def acl_token_create(request: Request) -> Response:
    _enabled(request)
    t = parse_token_body(await _body(request, "Token decoding failed"))
    opts = _opts(request)
    return json_response(request, await agent_of(request).rpc("ACL.TokenSet", ACLTokenSetArgs(t, True, opts.datacenter, opts.token)))


@router.get("/v1/acl/token/{accessor_id}", summary="One token by AccessorID ('self': the caller's own)", openapi_extra={"parameters": _READ})
async def acl_token_read(request: Request, accessor_id: str) -> Response:
    _enabled(request)
    opts = _opts(request)
    if accessor_id == "self":
        return await _read(request, "ACL.TokenRead", ACLTokenReadArgs(opts.token, True, opts), "Supplied token does not exist")
    return await _read(request, "ACL.TokenRead", ACLTokenReadArgs(accessor_id, False, opts), "Requested token does not exist: ACL not found")


@router.put("/v1/acl/token/{accessor_id}", summary="Update a token", openapi_extra={"parameters": [DC, TOKEN], "requestBody": _BODY})
async def acl_token_update(request: Request, accessor_id: str) -> Response:
    _enabled(request)
    t = parse_token_body(await _body(request, "Token decoding failed"))
    if not t.accessor_id:
        t.accessor_id = accessor_id
    if t.accessor_id != accessor_id:
        raise BadRequest("Token Accessor ID in URL and payload do not match")
    opts = _opts(request)
    return json_response(request, await agent_of(request).rpc("ACL.TokenSet", ACLTokenSetArgs(t, False, opts.datacenter, opts.token)))


@router.delete("/v1/acl/token/{accessor_id}", summary="Delete a token", openapi_extra={"parameters": [DC, TOKEN]})
async def acl_token_delete(request: Request, accessor_id: str) -> Response:
    _enabled(request)
    opts = _opts(request)
    return json_response(request, await agent_of(request).rpc("ACL.TokenDelete", ACLDeleteArgs(accessor_id, opts.datacenter, opts.token)))


@router.put("/v1/acl/token/{accessor_id}/clone", summary="Clone a token", openapi_extra={"parameters": [DC, TOKEN], "requestBody": _BODY})
async def acl_token_clone(request: Request, accessor_id: str) -> Response:
    _enabled(request)
    raw = await read_limited(request.stream(), request.headers.get("content-length"), MAX_BODY, lambda n, d: f"Request body too large: {n} bytes")
    t = ACLTokenInput()
    if raw.strip():  # Consul decodes an optional body; only Description matters
        try:
            t = parse_token_body(decode_json(raw))
        except ValueError as e:
            raise BadRequest(f"Token decoding failed: {e}") from None
    t.accessor_id = accessor_id
    opts = _opts(request)
    return json_response(request, await agent_of(request).rpc("ACL.TokenClone", ACLTokenSetArgs(t, True, opts.datacenter, opts.token)))


async def _write(request: Request, method: str, args_type: Any, obj: Any) -> Response:
    """An ACL write RPC with the request's datacenter and token; its result as JSON."""
    opts = _opts(request)
    return json_response(request, await agent_of(request).rpc(method, args_type(obj, opts.datacenter, opts.token)))


async def _read_one(request: Request, method: str, kind: str, id: str = "", name: str | None = None) -> Response:
    """One policy or role by ID or by name (Consul's "Requested <kind> does not exist" 403 when absent)."""
    _enabled(request)
    if name is not None and not name:
        raise BadRequest(f"Missing {kind} Name")
    args = ACLObjectReadArgs(id=id, name=name or "", opts=_opts(request))
    return await _read(request, method, args, f"Requested {kind} does not exist: ACL not found")


def _url_id(obj: Any, url_id: str, kind: str) -> Any:
    """The object an update names: the URL's ID, which a payload ID must match."""
    if obj.id and obj.id != url_id:
        raise BadRequest(f"{kind} ID in URL and payload do not match")
    obj.id = url_id
    return obj


# ---------------------------------------------------------------- policies


@router.get("/v1/acl/policies", summary="Every policy (list stubs, no Rules)", openapi_extra={"parameters": _READ})
async def acl_policy_list(request: Request) -> Response:
    _enabled(request)
    return await _read(request, "ACL.PolicyList", ACLObjectReadArgs(opts=_opts(request)))


@router.put("/v1/acl/policy", summary="Create a policy", openapi_extra={"parameters": [DC, TOKEN], "requestBody": _BODY})
async def acl_policy_create(request: Request) -> Response:
    _enabled(request)
    p = parse_policy_body(await _body(request, "Policy decoding failed"))
    if p.id:
        raise BadRequest("Cannot specify the ID when creating a new policy")
    return await _write(request, "ACL.PolicySet", ACLPolicySetArgs, p)


@router.get("/v1/acl/policy/name/{name}", summary="One policy by name", openapi_extra={"parameters": _READ})
async def acl_policy_read_by_name(request: Request, name: str) -> Response:
    return await _read_one(request, "ACL.PolicyRead", "policy", name=name)


@router.get("/v1/acl/policy/{policy_id}", summary="One policy by ID", openapi_extra={"parameters": _READ})
async def acl_policy_read(request: Request, policy_id: str) -> Response:
    return await _read_one(request, "ACL.PolicyRead", "policy", id=policy_id)


@router.put("/v1/acl/policy/{policy_id}", summary="Update a policy", openapi_extra={"parameters": [DC, TOKEN], "requestBody": _BODY})
async def acl_policy_update(request: Request, policy_id: str) -> Response:
    _enabled(request)
    p = _url_id(parse_policy_body(await _body(request, "Policy decoding failed")), policy_id, "Policy")
    return await _write(request, "ACL.PolicySet", ACLPolicySetArgs, p)


@router.delete("/v1/acl/policy/{policy_id}", summary="Delete a policy", openapi_extra={"parameters": [DC, TOKEN]})
async def acl_policy_delete(request: Request, policy_id: str) -> Response:
    _enabled(request)
    return await _write(request, "ACL.PolicyDelete", ACLDeleteArgs, policy_id)


# ---------------------------------------------------------------- roles


@router.get("/v1/acl/roles", summary="Every role", openapi_extra={"parameters": [*_READ, param("policy", "Only roles linked to this policy ID")]})
async def acl_role_list(request: Request) -> Response:
    _enabled(request)
    return await _read(request, "ACL.RoleList", ACLObjectReadArgs(policy=first(query_of(request), "policy"), opts=_opts(request)))


@router.put("/v1/acl/role", summary="Create a role", openapi_extra={"parameters": [DC, TOKEN], "requestBody": _BODY})
async def acl_role_create(request: Request) -> Response:
    _enabled(request)
    r = parse_role_body(await _body(request, "Role decoding failed"))
    if r.id:
        raise BadRequest("Role ID in URL and payload do not match")
    return await _write(request, "ACL.RoleSet", ACLRoleSetArgs, r)


@router.get("/v1/acl/role/name/{name}", summary="One role by name", openapi_extra={"parameters": _READ})
async def acl_role_read_by_name(request: Request, name: str) -> Response:
    return await _read_one(request, "ACL.RoleRead", "role", name=name)


@router.get("/v1/acl/role/{role_id}", summary="One role by ID", openapi_extra={"parameters": _READ})
async def acl_role_read(request: Request, role_id: str) -> Response:
    return await _read_one(request, "ACL.RoleRead", "role", id=role_id)


@router.put("/v1/acl/role/{role_id}", summary="Update a role", openapi_extra={"parameters": [DC, TOKEN], "requestBody": _BODY})
async def acl_role_update(request: Request, role_id: str) -> Response:
    _enabled(request)
    r = _url_id(parse_role_body(await _body(request, "Role decoding failed")), role_id, "Role")
    return await _write(request, "ACL.RoleSet", ACLRoleSetArgs, r)


@router.delete("/v1/acl/role/{role_id}", summary="Delete a role", openapi_extra={"parameters": [DC, TOKEN]})
async def acl_role_delete(request: Request, role_id: str) -> Response:
    _enabled(request)
    return await _write(request, "ACL.RoleDelete", ACLDeleteArgs, role_id)
