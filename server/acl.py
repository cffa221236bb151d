"""ACLs on the servers: builtin objects, Consul's JSON shapes, and token resolution (Consul's ACLResolver).

* ``ACLResolver.resolve(secret)`` turns a secret into a ``Resolved`` (the token
  and an authorizer) from this server's own store, as Consul's servers do. It
  caches per secret and drops the cache whenever an ACL table's index moves, so
  a write is seen by the next request and nothing is rebuilt in between. An
  empty secret is the anonymous token (or ``acl.tokens.default`` on an agent); an
  unknown or expired one is "ACL not found" (403).
* ``build_authorizer`` is the one place an identity becomes an authorizer
  (``proconsul.server.acl_authz.Authorizer``). A token linked (directly or
  through a role) to the builtin global-management policy is a management
  token and may do everything.
* Secrets never go to a log: messages name AccessorIDs only.
* ``initialize_acls`` is the leader duty (Consul's initializeACLs): the
  global-management policy, the anonymous token, and the
  ``acl.tokens.initial_management`` token, each made once and replicated.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from proconsul.server import acl_authz
from proconsul.server.acl_authz import Authorizer
from proconsul.server.acl_rules import Rules, RulesError, node_identity_rules, parse_rules, service_identity_rules
from proconsul.server.commands import ACLBootstrapRequest, ACLPolicyRecord, ACLPolicyRequest, ACLTokenRecord, ACLTokenRequest
from proconsul.server.errors import PermissionDenied, ProconsulError, StoreError
from proconsul.server.state.acl import (
    ANONYMOUS_ID,
    BOOTSTRAP_NOT_ALLOWED,
    GLOBAL_MANAGEMENT_ID,
    ACLIdentity,
    ACLPolicy,
    ACLRole,
    ACLToken,
    RoleView,
    TokenView,
)

log = logging.getLogger("proconsul.acl")

ANONYMOUS_SECRET = "anonymous"  # Consul's anonymousToken
REDACTED = "<hidden>"  # Consul's aclfilter.RedactedToken
RESERVED_PREFIX = "00000000-0000-0000-0000-0000000000"  # Consul's structs.ACLReservedPrefix
GLOBAL_MANAGEMENT_NAME = "global-management"
# Consul's structs.ACLPolicyGlobalManagement (the CE rules, without the v2 identity_prefix block).
GLOBAL_MANAGEMENT_RULES = """
acl = "write"
agent_prefix "" {
	policy = "write"
}
event_prefix "" {
	policy = "write"
}
key_prefix "" {
	policy = "write"
}
keyring = "write"
node_prefix "" {
	policy = "write"
}
operator = "write"
mesh = "write"
peering = "write"
query_prefix "" {
	policy = "write"
}
service_prefix "" {
	policy = "write"
	intentions = "write"
}
session_prefix "" {
	policy = "write"
}"""
ACL_NOT_FOUND = "ACL not found"  # Consul's acl.ErrNotFound
TOKEN_REAP_INTERVAL = 1.0  # Consul's aclTokenReapingRateLimit: one pass a second
TOKEN_REAP_BATCH = 128  # Consul's aclBatchDeleteSize is in bytes; 128 IDs stay well under it


# ---------------------------------------------------------------- time, hashes, IDs


def rfc3339(ts: float) -> str:
    """A Unix time as Go marshals a time.Time (RFC 3339, UTC, sub-second digits)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def now_rfc3339() -> str:
    """The leader's clock, for CreateTime."""
    return rfc3339(time.time())


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_rfc3339(text: str) -> datetime:
    """RFC 3339 (Go's time.Time JSON) to an aware datetime; raises ValueError."""
    s = _FRACTION.sub(r"\1", text.strip())
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return dt


def is_expired(token: ACLToken, now: float | None = None) -> bool:
    """Consul's ACLToken.IsExpired, on the reader's clock."""
    if not token.expiration_time:
        return False
    try:
        expires = parse_rfc3339(token.expiration_time).timestamp()
    except ValueError:
        return False
    return expires <= (time.time() if now is None else now)


def new_uuid(taken: Any = None) -> str:
    """A random UUID that is not reserved and, given ``taken(id) -> bool``, not in use (Consul's lib.GenerateUUID)."""
    while True:
        value = str(uuid.uuid4())
        if value.startswith(RESERVED_PREFIX) or (taken is not None and taken(value)):
            continue
        return value


def content_hash(*parts: Any) -> str:
    """Consul's SetHash: a digest of what the object grants (not its indexes), base64 as Go marshals []byte."""
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode(), digest_size=32).digest()
    return base64.b64encode(digest).decode("ascii")


# ---------------------------------------------------------------- Consul's JSON shapes


def _links(links: tuple) -> list[dict[str, str]]:
    return [{"ID": i, "Name": n} for i, n in links]


def token_json(view: TokenView, redact: bool = False) -> dict[str, Any]:
    """structs.ACLToken (and the list's ACLTokenListStub, the same fields) as Consul marshals it: empty lists omitted."""
    t = view.token
    out: dict[str, Any] = {"AccessorID": t.accessor_id, "SecretID": REDACTED if redact else t.secret_id, "Description": t.description}
    if view.policies:
        out["Policies"] = _links(view.policies)
    if view.roles:
        out["Roles"] = _links(view.roles)
    if t.service_identities:
        out["ServiceIdentities"] = [dict(s) for s in t.service_identities]
    if t.node_identities:
        out["NodeIdentities"] = [dict(n) for n in t.node_identities]
    out["Local"] = t.local
    if t.auth_method:
        out["AuthMethod"] = t.auth_method
    if t.expiration_time:
        out["ExpirationTime"] = t.expiration_time
    out["CreateTime"] = t.create_time
    out["Hash"] = t.hash
    out["CreateIndex"] = t.create_index
    out["ModifyIndex"] = t.modify_index
    return out


def policy_json(p: ACLPolicy, stub: bool = False) -> dict[str, Any]:
    """structs.ACLPolicy (or the list's ACLPolicyListStub, without Rules)."""
    out: dict[str, Any] = {"ID": p.id, "Name": p.name, "Description": p.description}
    if not stub:
        out["Rules"] = p.rules
    out["Datacenters"] = list(p.datacenters) if p.datacenters is not None else None
    out["Hash"] = p.hash
    out["CreateIndex"] = p.create_index
    out["ModifyIndex"] = p.modify_index
    return out


def role_json(view: RoleView) -> dict[str, Any]:
    """structs.ACLRole: empty link lists omitted."""
    r = view.role
    out: dict[str, Any] = {"ID": r.id, "Name": r.name, "Description": r.description}
    if view.policies:
        out["Policies"] = _links(view.policies)
    if r.service_identities:
        out["ServiceIdentities"] = [dict(s) for s in r.service_identities]
    if r.node_identities:
        out["NodeIdentities"] = [dict(n) for n in r.node_identities]
    out["Hash"] = r.hash
    out["CreateIndex"] = r.create_index
    out["ModifyIndex"] = r.modify_index
    return out


# ---------------------------------------------------------------- authorizers


def build_authorizer(token: ACLToken, roles: tuple[ACLRole, ...], policies: tuple[ACLPolicy, ...], default_policy: str, datacenter: str = "") -> Authorizer:
    """The one place an identity becomes an authorizer (Consul's ACLResolver.resolveWithCache + policy merge).

    Policies linked directly or through roles, scoped to this datacenter; service and node identities
    as Consul's synthetic policies; global-management makes a management authorizer.
    """
    if any(p.id == GLOBAL_MANAGEMENT_ID for p in policies):
        return acl_authz.management()
    parsed: list[Rules] = []
    for p in policies:
        if p.datacenters and datacenter and datacenter not in p.datacenters:
            continue
        try:
            parsed.append(parse_rules(p.rules))
        except RulesError as err:  # validated before it was stored; a bad row grants nothing
            log.warning("ACL policy %s (%s) does not parse, ignoring it: %s", p.name, p.id, err)
    for holder in (token, *roles):
        for si in holder.service_identities:
            dcs = si.get("Datacenters") or ()
            if not dcs or not datacenter or datacenter in dcs:
                parsed.append(parse_rules(service_identity_rules(si["ServiceName"], tuple(dcs))))
        for ni in holder.node_identities:
            if not datacenter or ni.get("Datacenter") == datacenter:
                parsed.append(parse_rules(node_identity_rules(ni["NodeName"], ni.get("Datacenter", ""))))
    return acl_authz.Authorizer(parsed, default_policy)


# ---------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Resolved:
    """A resolved secret: the token (None for a synthetic identity such as agent recovery) and its authorizer."""

    token: ACLToken | None
    accessor_id: str
    authorizer: Authorizer

    @property
    def unrestricted(self) -> bool:
        """Everything is allowed (ACLs disabled, or a management token): filters can be skipped."""
        return self.authorizer is acl_authz.MANAGEMENT

    def require(self, allowed: bool, resource: str, level: str, name: str = "") -> None:
        """Raise Consul's 403 for this identity unless ``allowed`` (the result of an authorizer check)."""
        if not allowed:
            raise self.denied(resource, level, name)

    def denied(self, resource: str, level: str, name: str = "") -> PermissionDenied:
        """Consul's PermissionDeniedByACL message for this identity (``name``: the object refused, if any)."""
        on = f' on "{name}"' if name else ""
        if self.accessor_id == ANONYMOUS_ID:
            return PermissionDenied(
                f"Permission denied: anonymous token lacks permission '{resource}:{level}'{on}. "
                "The anonymous token is used implicitly when a request does not specify a token."
            )
        return PermissionDenied(f"Permission denied: token with AccessorID '{self.accessor_id}' lacks permission '{resource}:{level}'{on}")


# The caller when ACLs are disabled: everything is allowed (Consul without ACLs).
OPEN = Resolved(None, "", acl_authz.MANAGEMENT)


def masked(token: str, filtered: bool) -> bool:
    """Whether to tell the caller results were filtered: never an unauthenticated one (Consul's
    maskResultsFilteredByACLs, so anonymous callers cannot learn that hidden objects exist)."""
    return filtered and token not in ("", ANONYMOUS_SECRET)


def keep(items: list, allowed: Any) -> tuple[list, bool]:
    """``items`` the caller may see (``allowed(item)``) and whether any were dropped (Consul's ACL filters)."""
    kept = [x for x in items if allowed(x)]
    return kept, len(kept) != len(items)


class ACLResolver:
    """Secret -> Resolved from a server's own store, cached until an ACL table's index moves."""

    MAX_CACHE = 4096

    def __init__(self, srv: Any) -> None:
        self.srv = srv
        self._cache: dict[str, Resolved] = {}
        self._cache_index = -1

    def caller(self, secret: str) -> Resolved:
        """Who is calling a server endpoint: ``OPEN`` with ACLs disabled, else ``resolve(secret)``."""
        if not self.srv.config.acl_enabled:
            return OPEN
        return self.resolve(secret)

    def resolve(self, secret: str) -> Resolved:
        """Consul's ResolveToken: raises PermissionDenied("ACL not found") for an unknown or expired secret."""
        state = self.srv.state
        index = state.acl_index()
        if index != self._cache_index:
            self._cache = {}
            self._cache_index = index
        key = secret or ANONYMOUS_SECRET
        hit = self._cache.get(key)
        if hit is not None and (hit.token is None or not is_expired(hit.token)):
            return hit
        _, identity = state.acl_identity(key)
        if identity is None and key == ANONYMOUS_SECRET:
            # Before the leader has written the anonymous token, it still means "no privileges".
            identity = ACLIdentity(ACLToken(ANONYMOUS_ID, ANONYMOUS_SECRET), (), ())
        if identity is None or is_expired(identity.token):
            raise PermissionDenied(ACL_NOT_FOUND)
        cfg = self.srv.config
        authz = build_authorizer(identity.token, identity.roles, identity.policies, cfg.acl_default_policy, cfg.datacenter)
        resolved = Resolved(identity.token, identity.token.accessor_id, authz)
        if len(self._cache) >= self.MAX_CACHE:
            self._cache = {}
        self._cache[key] = resolved
        return resolved


# ---------------------------------------------------------------- leader duty


def global_management_policy() -> ACLPolicyRecord:
    """The builtin policy Consul's leader creates (structs.ACLPolicyGlobalManagementID)."""
    rec = ACLPolicyRecord(GLOBAL_MANAGEMENT_ID, GLOBAL_MANAGEMENT_NAME, "Builtin Policy that grants unlimited access", GLOBAL_MANAGEMENT_RULES)
    rec.hash = policy_hash(rec.name, rec.description, rec.rules, rec.datacenters)
    return rec


def policy_hash(name: str, description: str, rules: str, datacenters: Any) -> str:
    return content_hash("policy", name, description, rules, datacenters)


def role_hash(name: str, description: str, policies: list[str], services: list, nodes: list) -> str:
    return content_hash("role", name, description, policies, services, nodes)


def token_hash(rec: ACLTokenRecord) -> str:
    return content_hash(
        "token", rec.description, rec.policies, rec.roles, rec.service_identities, rec.node_identities, rec.local, rec.auth_method,
        rec.expiration_time,
    )


def management_token(secret: str, description: str, taken: Any = None) -> ACLTokenRecord:
    """A token linked to global-management, made on the leader (IDs and CreateTime here, never in apply)."""
    rec = ACLTokenRecord(new_uuid(taken), secret, description, [GLOBAL_MANAGEMENT_ID], create_time=now_rfc3339())
    rec.hash = token_hash(rec)
    return rec


async def _propose(srv: Any, cmd: Any) -> Any:
    result = await srv.raft.apply(cmd)
    if isinstance(result, Exception):
        raise result
    return result


async def initialize_acls(srv: Any) -> None:
    """Consul's initializeACLs, once per leadership: builtin policy, anonymous token, initial management token."""
    st = srv.state
    _, policy = st.acl_policy_get(GLOBAL_MANAGEMENT_ID)
    if policy is None:
        await _propose(srv, ACLPolicyRequest("set", policies=[global_management_policy()]))
        log.info("created ACL global-management policy")
    _, anonymous = st.acl_token_get(ANONYMOUS_ID)
    if anonymous is None:
        rec = ACLTokenRecord(ANONYMOUS_ID, ANONYMOUS_SECRET, "Anonymous Token", create_time=now_rfc3339())
        rec.hash = token_hash(rec)
        await _propose(srv, ACLTokenRequest("set", tokens=[rec]))
        log.info("created ACL anonymous token")
    secret = srv.config.acl_initial_management
    if secret:
        _, existing = st.acl_token_get_by_secret(secret)
        if existing is None:
            rec = management_token(secret, "Initial Management Token", lambda v: st.acl_token_get(v)[1] is not None)
            allowed, _ = st.acl_can_bootstrap()
            if allowed:
                try:
                    await _propose(srv, ACLBootstrapRequest(rec))
                    log.info("bootstrapped ACL initial management token from configuration")
                    return
                except StoreError as err:
                    if BOOTSTRAP_NOT_ALLOWED not in str(err):
                        raise
            await _propose(srv, ACLTokenRequest("set", tokens=[rec]))
            log.info("created ACL initial management token from configuration")


async def reap_expired_tokens(srv: Any, now: float | None = None) -> int:
    """Consul's reapExpiredACLTokens: delete up to a batch of expired tokens through Raft; how many."""
    now = time.time() if now is None else now
    expired = []
    for accessor, expires in srv.state.acl_token_expirations():
        try:
            if parse_rfc3339(expires).timestamp() <= now:
                expired.append(accessor)
        except ValueError:
            continue
        if len(expired) >= TOKEN_REAP_BATCH:
            break
    if expired:
        await _propose(srv, ACLTokenRequest("delete", ids=expired))
        log.info("reaped %d expired ACL token(s)", len(expired))
    return len(expired)


async def acl_leader_loop(srv: Any, is_active: Any) -> None:
    """Run ``initialize_acls`` until it succeeds, then reap expired tokens about once a second, while leader."""
    while is_active():
        try:
            await initialize_acls(srv)
            break
        except ProconsulError as err:
            log.warning("initializing ACLs failed, will retry: %s", err)
            await asyncio.sleep(0.5)
    while is_active():
        await asyncio.sleep(TOKEN_REAP_INTERVAL)
        if not is_active():
            return
        try:
            await reap_expired_tokens(srv)
        except ProconsulError as err:
            log.warning("reaping expired ACL tokens failed, will retry: %s", err)
