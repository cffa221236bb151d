"""ACL.* endpoints: Consul's tokens, policies, roles and bootstrap (agent/consul/acl_endpoint.go).

Every endpoint answers "ACL support disabled" when this server runs without
ACLs. Writes forward to the leader, which resolves the caller's token, checks
``acl:write`` (reads: ``acl:read``; reading your own token needs only its
secret), runs Consul's validation (tokenSetInternal, PolicySet, RoleSet) and
makes IDs, secrets and CreateTime before proposing; the store re-checks
uniqueness and links inside the write. A caller without ``acl:write`` sees
SecretIDs as "<hidden>" (Consul's filterACLWithAuthorizer). Expired tokens
read as absent.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from proconsul.server import acl as acls
from proconsul.server.acl_rules import parse_rules
from proconsul.server.commands import (
    ACLBootstrapRequest,
    ACLPolicyRecord,
    ACLPolicyRequest,
    ACLRoleRecord,
    ACLRoleRequest,
    ACLTokenRecord,
    ACLTokenRequest,
)
from proconsul.server.durations import format_duration
from proconsul.server.endpoints import endpoint
from proconsul.server.endpoints.kv import propose
from proconsul.server.errors import ACLDisabled, BadRequest, NotFound, PermissionDenied, StoreError
from proconsul.server.state.acl import ANONYMOUS_ID, BOOTSTRAP_NOT_ALLOWED, GLOBAL_MANAGEMENT_ID
from proconsul.server.state.queries import is_uuid
from proconsul.server.structs import QueryOptions, QueryReply

BOOTSTRAP_RESET_FILE = "acl-bootstrap-reset"  # Consul's aclBootstrapReset, in the data dir
_POLICY_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
_ROLE_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,256}$")
_IDENTITY_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$")


# ---------------------------------------------------------------- arguments


@dataclass
class ACLBootstrapArgs:
    """ACL.BootstrapTokens; ``bootstrap_secret`` is the optional operator-made SecretID."""

    bootstrap_secret: str = ""
    datacenter: str = ""


@dataclass
class ACLTokenInput:
    """A decoded token body (Consul's structs.ACLToken as sent); links as [{"ID", "Name"}]; TTL in seconds."""

    accessor_id: str = ""
    secret_id: str = ""
    description: str = ""
    policies: list[dict[str, Any]] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)
    service_identities: list[dict[str, Any]] = field(default_factory=list)
    node_identities: list[dict[str, Any]] = field(default_factory=list)
    local: bool = False
    auth_method: str = ""
    expiration_time: str = ""
    expiration_ttl: float = 0.0


@dataclass
class ACLTokenSetArgs:
    """ACL.TokenSet (``create`` for PUT /v1/acl/token) and ACL.TokenClone (the accessor to clone, a new description)."""

    acl_token: ACLTokenInput
    create: bool = False
    datacenter: str = ""
    token: str = ""


@dataclass
class ACLTokenReadArgs:
    """ACL.TokenRead by AccessorID, or by SecretID for /v1/acl/token/self (``id`` then is the caller's own secret)."""

    id: str = ""
    by_secret: bool = False
    opts: QueryOptions = field(default_factory=QueryOptions)


@dataclass
class ACLTokenListArgs:
    """ACL.TokenList with Consul's filters (at most one)."""

    policy: str = ""
    role: str = ""
    auth_method: str = ""
    service_name: str = ""
    opts: QueryOptions = field(default_factory=QueryOptions)


@dataclass
class ACLDeleteArgs:
    """ACL.TokenDelete / PolicyDelete / RoleDelete: one ID."""

    id: str
    datacenter: str = ""
    token: str = ""


@dataclass
class ACLPolicyInput:
    """A decoded policy body."""

    id: str = ""
    name: str = ""
    description: str = ""
    rules: str = ""
    datacenters: list[str] | None = None


@dataclass
class ACLPolicySetArgs:
    policy: ACLPolicyInput
    datacenter: str = ""
    token: str = ""


@dataclass
class ACLRoleInput:
    """A decoded role body; policy links as [{"ID", "Name"}]."""

    id: str = ""
    name: str = ""
    description: str = ""
    policies: list[dict[str, Any]] = field(default_factory=list)
    service_identities: list[dict[str, Any]] = field(default_factory=list)
    node_identities: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ACLRoleSetArgs:
    role: ACLRoleInput
    datacenter: str = ""
    token: str = ""


@dataclass
class ACLObjectReadArgs:
    """ACL.PolicyRead / RoleRead by ID or name, and ACL.PolicyList / RoleList (``policy`` filters roles)."""

    id: str = ""
    name: str = ""
    policy: str = ""
    opts: QueryOptions = field(default_factory=QueryOptions)


@dataclass
class ACLResolveArgs:
    """ACL.ResolveIdentity: what a client agent needs to build an authorizer for a secret."""

    secret: str = ""
    datacenter: str = ""


# ---------------------------------------------------------------- helpers


def _enabled(srv: Any) -> None:
    if not srv.config.acl_enabled:
        raise ACLDisabled("ACL support disabled")


async def _acl_read(srv: Any, method: str, args: Any, hops: int, query: Any, shape: Any) -> QueryReply:
    """Every ACL object read: ACLs on, forwarded as the read mode says, acl:read, a blocking query."""
    _enabled(srv)
    done, result = await srv.forward_read(method, args, args.opts, hops)
    if done:
        return result
    _authorize(srv, args.opts.token, "read")
    return await srv.blocking_query(args.opts, query, shape)


async def _acl_delete(srv: Any, method: str, args: Any, hops: int, get: Any, kind: str, request_type: Any, check: Any = None) -> bool:
    """Delete a policy or role on the leader (acl:write); ``check(obj)`` may refuse, as for builtin objects."""
    _enabled(srv)
    done, result = await srv.forward(method, args, args.datacenter, hops)
    if done:
        return result
    _authorize(srv, args.token, "write")
    _, obj = get(args.id)
    if obj is None:
        raise NotFound(f"Cannot find {kind} to delete")
    if check is not None:
        check(obj)
    await propose(srv, request_type("delete", ids=[args.id]))
    return True


def _authorize(srv: Any, secret: str, level: str) -> acls.Resolved:
    """Resolve the caller's token and require acl:<level> (Consul's ResolveTokenAndDefaultMeta + ACLRead/ACLWrite)."""
    resolved = srv.acl.resolve(secret)
    allowed = resolved.authorizer.acl_write() if level == "write" else resolved.authorizer.acl_read()
    if not allowed:
        raise resolved.denied("acl", level)
    return resolved


def _go_duration(seconds: float) -> str:
    return "-" + format_duration(-seconds) if seconds < 0 else format_duration(seconds)


def _link_policies(srv: Any, links: list[dict[str, Any]]) -> list[str]:
    """Policy links by ID or name to deduplicated IDs (Consul's tokenSetInternal / RoleSet)."""
    ids: list[str] = []
    for link in links:
        pid, name = link.get("ID") or "", link.get("Name") or ""
        if not pid:
            _, p = srv.state.acl_policy_get(name=name)
            if p is None:
                raise BadRequest(f'No such ACL policy with name "{name}"')
            pid = p.id
        else:
            _, p = srv.state.acl_policy_get(pid)
            if p is None:
                raise BadRequest(f'No such ACL policy with ID "{pid}"')
        if pid not in ids:
            ids.append(pid)
    return ids


def _link_roles(srv: Any, links: list[dict[str, Any]]) -> list[str]:
    ids: list[str] = []
    for link in links:
        rid, name = link.get("ID") or "", link.get("Name") or ""
        if not rid:
            _, r = srv.state.acl_role_get(name=name)
            if r is None:
                raise BadRequest(f'No such ACL role with name "{name}"')
            rid = r.role.id
        else:
            _, r = srv.state.acl_role_get(rid)
            if r is None:
                raise BadRequest(f'No such ACL role with ID "{rid}"')
        if rid not in ids:
            ids.append(rid)
    return ids


def _service_identities(items: list[dict[str, Any]], what: str, local: bool = False) -> list[dict[str, Any]]:
    """Validate and dedupe (Consul's dedupeServiceIdentities: one per name, datacenters merged)."""
    out: dict[str, dict[str, Any]] = {}
    for s in items:
        name = s.get("ServiceName") or ""
        dcs = list(s.get("Datacenters") or [])
        if not name:
            raise BadRequest(f"Service identity is missing the service name field on this {what}")
        if local and dcs:
            raise BadRequest(f'Service identity "{name}" cannot specify a list of datacenters on a local token')
        if len(name) > 256 or not _IDENTITY_NAME.match(name):
            raise BadRequest(f"Service identity \"{name}\" has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed")
        if name in out:
            prev = out[name]
            if not prev.get("Datacenters") or not dcs:
                prev.pop("Datacenters", None)
            else:
                prev["Datacenters"] = sorted(set(prev["Datacenters"]) | set(dcs))
        else:
            out[name] = {"ServiceName": name, **({"Datacenters": dcs} if dcs else {})}
    return list(out.values())


def _node_identities(items: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in items:
        name, dc = n.get("NodeName") or "", n.get("Datacenter") or ""
        if not name:
            raise BadRequest(f"Node identity is missing the node name field on this {what}")
        if not dc:
            raise BadRequest(f"Node identity is missing the datacenter field on this {what}")
        if len(name) > 256 or not _IDENTITY_NAME.match(name):
            raise BadRequest("Node identity has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed")
        item = {"NodeName": name, "Datacenter": dc}
        if item not in out:
            out.append(item)
    return out


def validate_rules(rules: str) -> None:
    """Parse policy rules with Consul's rules language; RulesError (a 400) carries Consul's text."""
    parse_rules(rules)


def _token_reply(srv: Any, accessor_id: str) -> dict[str, Any]:
    _, view = srv.state.acl_token_get(accessor_id)
    if view is None:
        raise StoreError("Failed to retrieve the token after insertion")
    return acls.token_json(view)


# ---------------------------------------------------------------- bootstrap


def _reset_index_file(srv: Any) -> int:
    """The reset index an operator wrote to <data_dir>/acl-bootstrap-reset (Consul's fileBootstrapResetIndex)."""
    if not srv.config.data_dir:
        return 0
    try:
        with open(os.path.join(srv.config.data_dir, BOOTSTRAP_RESET_FILE)) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


@endpoint("ACL.BootstrapTokens", ACLBootstrapArgs)
async def acl_bootstrap(srv: Any, args: ACLBootstrapArgs, hops: int) -> dict[str, Any]:
    """Make the first management token, once (Consul's ACL.BootstrapTokens); 403 with the reset index afterwards."""
    _enabled(srv)
    done, result = await srv.forward("ACL.BootstrapTokens", args, args.datacenter, hops)
    if done:
        return result
    allowed, reset = srv.state.acl_can_bootstrap()
    specified = 0
    if not allowed:
        specified = _reset_index_file(srv)
        if specified == 0:
            raise PermissionDenied(f"Permission denied: {BOOTSTRAP_NOT_ALLOWED} (reset index: {reset})")
        if specified != reset:
            raise BadRequest(f"Invalid bootstrap reset index (specified {specified}, reset index: {reset})")
        try:
            os.remove(os.path.join(srv.config.data_dir, BOOTSTRAP_RESET_FILE))
        except OSError:
            pass
    secret = args.bootstrap_secret
    taken = lambda v: srv.state.acl_token_get(v)[1] is not None or srv.state.acl_token_get_by_secret(v)[1] is not None  # noqa: E731
    if secret:
        if not is_uuid(secret):
            raise BadRequest("The bootstrap secret must be a UUID")
        if taken(secret):
            raise BadRequest("Invalid Token: SecretID is already in use")
    else:
        secret = acls.new_uuid(taken)
    rec = acls.management_token(secret, "Bootstrap Token (Global Management)", taken)
    try:
        await propose(srv, ACLBootstrapRequest(rec, reset_index=specified))
    except StoreError as err:
        if BOOTSTRAP_NOT_ALLOWED in str(err):  # lost a race with another bootstrap
            _, reset = srv.state.acl_can_bootstrap()
            raise PermissionDenied(f"Permission denied: {BOOTSTRAP_NOT_ALLOWED} (reset index: {reset})") from None
        raise
    return _token_reply(srv, rec.accessor_id)


# ---------------------------------------------------------------- tokens


async def _token_set(srv: Any, t: ACLTokenInput, create: bool) -> dict[str, Any]:
    """Consul's tokenSetInternal, on the leader."""
    st = srv.state
    cfg = srv.config
    accessor_match = st.acl_token_get(t.accessor_id)[1] if t.accessor_id else None
    secret_match = st.acl_token_get_by_secret(t.secret_id)[1] if t.secret_id else None
    now = time.time()
    rec = ACLTokenRecord(t.accessor_id, t.secret_id, t.description, local=t.local, auth_method=t.auth_method)
    if not t.accessor_id or create:
        if not t.accessor_id:
            rec.accessor_id = acls.new_uuid(lambda v: st.acl_token_get(v)[1] is not None or st.acl_token_get_by_secret(v)[1] is not None)
        elif not is_uuid(t.accessor_id):
            raise BadRequest("Invalid Token: AccessorID is not a valid UUID")
        elif accessor_match is not None or st.acl_token_get_by_secret(t.accessor_id)[1] is not None:
            raise BadRequest("Invalid Token: AccessorID is already in use")
        elif t.accessor_id.startswith(acls.RESERVED_PREFIX):
            raise BadRequest(f'Invalid Token: UUIDs with the prefix "{acls.RESERVED_PREFIX}" are reserved')
        if not t.secret_id:
            rec.secret_id = acls.new_uuid(lambda v: st.acl_token_get(v)[1] is not None or st.acl_token_get_by_secret(v)[1] is not None)
        elif not is_uuid(t.secret_id):
            raise BadRequest("Invalid Token: SecretID is not a valid UUID")
        elif secret_match is not None or st.acl_token_get(t.secret_id)[1] is not None:
            raise BadRequest("Invalid Token: SecretID is already in use")
        elif t.secret_id.startswith(acls.RESERVED_PREFIX):
            raise BadRequest(f'Invalid Token: UUIDs with the prefix "{acls.RESERVED_PREFIX}" are reserved')
        rec.create_time = acls.rfc3339(now)
        if t.auth_method:
            raise BadRequest("AuthMethod field is disallowed outside of Login")
        expires: float | None = None
        if t.expiration_ttl:
            if t.expiration_ttl < 0:
                raise BadRequest(f"Token Expiration TTL '{_go_duration(t.expiration_ttl)}' should be > 0")
            if t.expiration_time:
                raise BadRequest("Token Expiration TTL and Expiration Time cannot both be set")
            expires = now + t.expiration_ttl
            rec.expiration_time = acls.rfc3339(expires)
        elif t.expiration_time:
            try:
                expires = acls.parse_rfc3339(t.expiration_time).timestamp()
            except ValueError:
                raise BadRequest(f"Token decoding failed: ExpirationTime: {t.expiration_time!r} is not an RFC 3339 time") from None
            rec.expiration_time = t.expiration_time
        if expires is not None:
            if expires < now:
                raise BadRequest("ExpirationTime cannot be before CreateTime")
            within = expires - now
            if within > cfg.acl_token_max_expiration_ttl:
                raise BadRequest(f"ExpirationTime cannot be more than {_go_duration(cfg.acl_token_max_expiration_ttl)} in the future (was {_go_duration(within)})")
            if within < cfg.acl_token_min_expiration_ttl:
                raise BadRequest(f"ExpirationTime cannot be less than {_go_duration(cfg.acl_token_min_expiration_ttl)} in the future (was {_go_duration(within)})")
    else:
        if not is_uuid(t.accessor_id):
            raise BadRequest("AccessorID is not a valid UUID")
        if accessor_match is None or acls.is_expired(accessor_match.token):
            raise BadRequest(f'Cannot find token "{t.accessor_id}"')
        old = accessor_match.token
        if not t.secret_id:
            rec.secret_id = old.secret_id
        elif t.secret_id != old.secret_id:
            raise BadRequest("Changing a tokens SecretID is not permitted")
        if t.local != old.local:
            raise BadRequest(f"cannot toggle local mode of {t.accessor_id}")
        if not t.auth_method:
            rec.auth_method = old.auth_method
        elif t.auth_method != old.auth_method:
            raise BadRequest(f"Cannot change AuthMethod of {t.accessor_id}")
        if t.expiration_ttl:
            raise BadRequest(f"Cannot change expiration time of {t.accessor_id}")
        if not t.expiration_time:
            rec.expiration_time = old.expiration_time
        elif not old.expiration_time or acls.parse_rfc3339(t.expiration_time) != acls.parse_rfc3339(old.expiration_time):
            raise BadRequest(f"Cannot change expiration time of {t.accessor_id}")
        else:
            rec.expiration_time = old.expiration_time
        rec.create_time = old.create_time
    rec.policies = _link_policies(srv, t.policies)
    rec.roles = _link_roles(srv, t.roles)
    rec.service_identities = _service_identities(t.service_identities, "token", t.local)
    rec.node_identities = _node_identities(t.node_identities, "token")
    rec.hash = acls.token_hash(rec)
    await propose(srv, ACLTokenRequest("set", tokens=[rec]))
    return _token_reply(srv, rec.accessor_id)


@endpoint("ACL.TokenSet", ACLTokenSetArgs)
async def acl_token_set(srv: Any, args: ACLTokenSetArgs, hops: int) -> dict[str, Any]:
    """Create (``create``, or no AccessorID) or update a token; answers it in Consul's shape."""
    _enabled(srv)
    done, result = await srv.forward("ACL.TokenSet", args, args.datacenter, hops)
    if done:
        return result
    _authorize(srv, args.token, "write")
    return await _token_set(srv, args.acl_token, args.create)


@endpoint("ACL.TokenClone", ACLTokenSetArgs)
async def acl_token_clone(srv: Any, args: ACLTokenSetArgs, hops: int) -> dict[str, Any]:
    """A new token with the links, identities, locality and expiry of another (Consul's ACL.TokenClone)."""
    _enabled(srv)
    done, result = await srv.forward("ACL.TokenClone", args, args.datacenter, hops)
    if done:
        return result
    _authorize(srv, args.token, "write")
    _, view = srv.state.acl_token_get(args.acl_token.accessor_id)
    if view is None or acls.is_expired(view.token):
        raise PermissionDenied(acls.ACL_NOT_FOUND)
    t = view.token
    if t.auth_method:
        raise BadRequest("Cannot clone a token created from an auth method")
    clone = ACLTokenInput(
        description=args.acl_token.description or t.description,
        policies=[{"ID": i} for i, _ in view.policies],
        roles=[{"ID": i} for i, _ in view.roles],
        service_identities=[dict(s) for s in t.service_identities],
        node_identities=[dict(n) for n in t.node_identities],
        local=t.local,
        expiration_time=t.expiration_time,
    )
    return await _token_set(srv, clone, True)


@endpoint("ACL.TokenRead", ACLTokenReadArgs, QueryReply)
async def acl_token_read(srv: Any, args: ACLTokenReadArgs, hops: int) -> QueryReply:
    """One token by AccessorID (acl:read; SecretID hidden without acl:write), or the caller's own by SecretID."""
    _enabled(srv)
    done, result = await srv.forward_read("ACL.TokenRead", args, args.opts, hops)
    if done:
        return result
    redact = False
    if not args.by_secret:
        resolved = _authorize(srv, args.opts.token, "read")
        redact = not resolved.authorizer.acl_write()

    def read(ws: Any) -> tuple[int, Any]:
        if args.by_secret:
            return srv.state.acl_token_get_by_secret(args.id or acls.ANONYMOUS_SECRET, ws)
        return srv.state.acl_token_get(args.id, ws)

    def shape(view: Any) -> Any:
        if view is None or acls.is_expired(view.token):
            return None
        return acls.token_json(view, redact=redact)

    return await srv.blocking_query(args.opts, read, shape)


@endpoint("ACL.TokenDelete", ACLDeleteArgs)
async def acl_token_delete(srv: Any, args: ACLDeleteArgs, hops: int) -> bool:
    """Delete a token by AccessorID; not the anonymous token, nor the caller's own."""
    _enabled(srv)
    done, result = await srv.forward("ACL.TokenDelete", args, args.datacenter, hops)
    if done:
        return result
    _authorize(srv, args.token, "write")
    if not is_uuid(args.id):
        raise BadRequest("Accessor ID is missing or an invalid UUID")
    if args.id == ANONYMOUS_ID:
        raise BadRequest("Delete operation not permitted on the anonymous token")
    _, view = srv.state.acl_token_get(args.id)
    if view is None:
        raise NotFound("Cannot find token to delete")
    if view.token.secret_id == (args.token or acls.ANONYMOUS_SECRET):
        raise BadRequest("Deletion of the request's authorization token is not permitted")
    await propose(srv, ACLTokenRequest("delete", ids=[args.id]))
    return True


@endpoint("ACL.TokenList", ACLTokenListArgs, QueryReply)
async def acl_token_list(srv: Any, args: ACLTokenListArgs, hops: int) -> QueryReply:
    """Every unexpired token as Consul's list stubs, with at most one filter (policy, role, authmethod, servicename)."""
    _enabled(srv)
    done, result = await srv.forward_read("ACL.TokenList", args, args.opts, hops)
    if done:
        return result
    resolved = _authorize(srv, args.opts.token, "read")
    redact = not resolved.authorizer.acl_write()
    if sum(1 for f in (args.policy, args.role, args.auth_method, args.service_name) if f) > 1:
        raise BadRequest("can only filter by one of policy, role, serviceName, or authMethod at once")

    def shape(views: list) -> list[dict[str, Any]]:
        now = time.time()
        return [acls.token_json(v, redact=redact) for v in views if not acls.is_expired(v.token, now)]

    return await srv.blocking_query(
        args.opts, lambda ws: srv.state.acl_token_list(args.policy, args.role, args.auth_method, args.service_name, ws), shape
    )


# ---------------------------------------------------------------- policies


@endpoint("ACL.PolicySet", ACLPolicySetArgs)
async def acl_policy_set(srv: Any, args: ACLPolicySetArgs, hops: int) -> dict[str, Any]:
    """Create (no ID) or update a policy after Consul's PolicySet checks; answers it."""
    _enabled(srv)
    done, result = await srv.forward("ACL.PolicySet", args, args.datacenter, hops)
    if done:
        return result
    _authorize(srv, args.token, "write")
    p, st = args.policy, srv.state
    if not p.name:
        raise BadRequest("Invalid Policy: no Name is set")
    if not _POLICY_NAME.match(p.name):
        raise BadRequest("Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed")
    _, name_match = st.acl_policy_get(name=p.name)
    if p.id:
        if not is_uuid(p.id):
            raise BadRequest("Policy ID invalid UUID")
        _, id_match = st.acl_policy_get(p.id)
        if id_match is None:
            raise BadRequest(f"cannot find policy {p.id}")
        if name_match is not None and name_match.id != p.id:
            raise BadRequest(f'Invalid Policy: A policy with name "{p.name}" already exists')
        if p.id == GLOBAL_MANAGEMENT_ID:
            if p.datacenters:
                raise BadRequest("Changing the Datacenters of the builtin global-management policy is not permitted")
            if p.rules != id_match.rules:
                raise BadRequest("Changing the Rules for the builtin global-management policy is not permitted")
        pid = p.id
    else:
        if name_match is not None:
            raise BadRequest(f'Invalid Policy: A Policy with Name "{p.name}" already exists')
        pid = acls.new_uuid(lambda v: st.acl_policy_get(v)[1] is not None)
    validate_rules(p.rules)
    rec = ACLPolicyRecord(pid, p.name, p.description, p.rules, list(p.datacenters) if p.datacenters is not None else None)
    rec.hash = acls.policy_hash(rec.name, rec.description, rec.rules, rec.datacenters)
    await propose(srv, ACLPolicyRequest("set", policies=[rec]))
    _, policy = st.acl_policy_get(pid)
    return acls.policy_json(policy)


@endpoint("ACL.PolicyRead", ACLObjectReadArgs, QueryReply)
async def acl_policy_read(srv: Any, args: ACLObjectReadArgs, hops: int) -> QueryReply:
    """One policy by ID or name (acl:read); None when missing."""
    return await _acl_read(
        srv, "ACL.PolicyRead", args, hops,
        lambda ws: srv.state.acl_policy_get(args.id, args.name, ws), lambda p: acls.policy_json(p) if p is not None else None,
    )


@endpoint("ACL.PolicyDelete", ACLDeleteArgs)
async def acl_policy_delete(srv: Any, args: ACLDeleteArgs, hops: int) -> bool:
    """Delete a policy (not the builtin one); links to it stop granting anything."""
    def deletable(policy: Any) -> None:
        if policy.id == GLOBAL_MANAGEMENT_ID:
            raise BadRequest("Delete operation not permitted on the builtin global-management policy")

    return await _acl_delete(srv, "ACL.PolicyDelete", args, hops, srv.state.acl_policy_get, "policy", ACLPolicyRequest, deletable)


@endpoint("ACL.PolicyList", ACLObjectReadArgs, QueryReply)
async def acl_policy_list(srv: Any, args: ACLObjectReadArgs, hops: int) -> QueryReply:
    """Every policy as Consul's list stubs (no Rules)."""
    _enabled(srv)
    done, result = await srv.forward_read("ACL.PolicyList", args, args.opts, hops)
    if done:
        return result
    _authorize(srv, args.opts.token, "read")
    return await srv.blocking_query(
        args.opts, lambda ws: srv.state.acl_policy_list(ws), lambda ps: [acls.policy_json(p, stub=True) for p in ps]
    )


# ---------------------------------------------------------------- roles


@endpoint("ACL.RoleSet", ACLRoleSetArgs)
async def acl_role_set(srv: Any, args: ACLRoleSetArgs, hops: int) -> dict[str, Any]:
    """Create (no ID) or update a role after Consul's RoleSet checks; answers it."""
    _enabled(srv)
    done, result = await srv.forward("ACL.RoleSet", args, args.datacenter, hops)
    if done:
        return result
    _authorize(srv, args.token, "write")
    r, st = args.role, srv.state
    if not r.name:
        raise BadRequest("Invalid Role: no Name is set")
    if not _ROLE_NAME.match(r.name):
        raise BadRequest("Invalid Role: invalid Name. Only alphanumeric characters, '-' and '_' are allowed")
    _, name_match = st.acl_role_get(name=r.name)
    if r.id:
        if not is_uuid(r.id):
            raise BadRequest("Role ID invalid UUID")
        _, existing = st.acl_role_get(r.id)
        if existing is None:
            raise BadRequest(f"cannot find role {r.id}")
        if name_match is not None and name_match.role.id != r.id:
            raise BadRequest(f'Invalid Role: A role with name "{r.name}" already exists')
        rid = r.id
    else:
        if name_match is not None:
            raise BadRequest(f'Invalid Role: A Role with Name "{r.name}" already exists')
        rid = acls.new_uuid(lambda v: st.acl_role_get(v)[1] is not None)
    policies = _link_policies(srv, r.policies)
    services = _service_identities(r.service_identities, "role")
    nodes = _node_identities(r.node_identities, "role")
    rec = ACLRoleRecord(rid, r.name, r.description, policies, services, nodes)
    rec.hash = acls.role_hash(rec.name, rec.description, policies, services, nodes)
    await propose(srv, ACLRoleRequest("set", roles=[rec]))
    _, view = st.acl_role_get(rid)
    return acls.role_json(view)


@endpoint("ACL.RoleRead", ACLObjectReadArgs, QueryReply)
async def acl_role_read(srv: Any, args: ACLObjectReadArgs, hops: int) -> QueryReply:
    """One role by ID or name (acl:read); None when missing."""
    return await _acl_read(
        srv, "ACL.RoleRead", args, hops,
        lambda ws: srv.state.acl_role_get(args.id, args.name, ws), lambda v: acls.role_json(v) if v is not None else None,
    )


@endpoint("ACL.RoleDelete", ACLDeleteArgs)
async def acl_role_delete(srv: Any, args: ACLDeleteArgs, hops: int) -> bool:
    """Delete a role; tokens linking it stop getting its policies."""
    return await _acl_delete(srv, "ACL.RoleDelete", args, hops, srv.state.acl_role_get, "role", ACLRoleRequest)


@endpoint("ACL.RoleList", ACLObjectReadArgs, QueryReply)
async def acl_role_list(srv: Any, args: ACLObjectReadArgs, hops: int) -> QueryReply:
    """Every role, optionally only those linking ``policy``."""
    _enabled(srv)
    done, result = await srv.forward_read("ACL.RoleList", args, args.opts, hops)
    if done:
        return result
    _authorize(srv, args.opts.token, "read")
    return await srv.blocking_query(
        args.opts, lambda ws: srv.state.acl_role_list(args.policy, ws), lambda vs: [acls.role_json(v) for v in vs]
    )


# ---------------------------------------------------------------- resolution for client agents


@endpoint("ACL.ResolveIdentity", ACLResolveArgs)
async def acl_resolve_identity(srv: Any, args: ACLResolveArgs, hops: int) -> dict[str, Any]:
    """A secret's token, roles and reachable policies (Consul's TokenRead-by-secret + PolicyResolve + RoleResolve).

    Answered from this server's store (stale is fine: Consul's agents cache these for token_ttl);
    "ACL not found" for an unknown or expired secret.
    """
    _enabled(srv)
    _, identity = srv.state.acl_identity(args.secret or acls.ANONYMOUS_SECRET)
    if identity is None or acls.is_expired(identity.token):
        raise PermissionDenied(acls.ACL_NOT_FOUND)
    t = identity.token
    return {
        "token": [*t],
        "roles": [[*r] for r in identity.roles],
        "policies": [[*p] for p in identity.policies],
    }
