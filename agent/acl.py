"""Token resolution for the agent's HTTP API: ``await resolve(agent, secret)`` -> ``Resolved`` (or None).

This is what every endpoint will call to enforce ACLs (Consul's agent.resolveToken):

* ACLs disabled: None (everything is allowed, as Consul does without ACLs).
* An empty secret is ``acl.tokens.default`` if set, else the anonymous token.
* ``acl.tokens.agent_recovery`` resolves locally, without servers, to an
  identity that may write this agent and read nodes (Consul's agent recovery token).
* On a server agent the in-process server resolves from its own store
  (``proconsul.server.acl.ACLResolver``, cached until an ACL table changes).
* On a client agent the servers answer ``ACL.ResolveIdentity``; the result is
  cached for ``acl.token_ttl``. When no server answers, ``down_policy``
  extend-cache / async-cache keep using an expired cache entry; ``allow`` and
  ``deny`` allow or deny everything (ACLs themselves excepted); otherwise the
  error propagates.

Unknown or expired secrets raise PermissionDenied("ACL not found") (403).
Secrets are cache keys only; nothing here logs them.
"""

from __future__ import annotations

import time
from typing import Any

from proconsul.server import acl_authz
from proconsul.server.acl import ACL_NOT_FOUND, OPEN, Resolved, build_authorizer
from proconsul.server.endpoints.acl import ACLResolveArgs
from proconsul.server.errors import PermissionDenied, RPCError
from proconsul.server.state.acl import ACLPolicy, ACLRole, ACLToken

AGENT_RECOVERY_ACCESSOR = "agent-recovery"
# Consul's down_policy allow / deny: with no server to ask, every token gets this.
DOWN_POLICIES = {
    "allow": Resolved(None, "down-policy-allow", acl_authz.allow_all()),
    "deny": Resolved(None, "down-policy-deny", acl_authz.deny_all()),
}
_MAX_CACHE = 4096


def _agent_recovery(agent: Any) -> Resolved:
    """Consul's agent recovery identity: agent:write on this node, node:read everywhere."""
    node = agent.config.node_name
    rules = f'agent "{node}" {{\n  policy = "write"\n}}\nnode_prefix "" {{\n  policy = "read"\n}}\n'
    token = ACLToken(AGENT_RECOVERY_ACCESSOR, "", "Agent Recovery Token")
    policy = ACLPolicy("agent-recovery", "agent-recovery", "", rules)
    return Resolved(None, AGENT_RECOVERY_ACCESSOR, build_authorizer(token, (), (policy,), "deny", agent.config.datacenter))


def _from_wire(data: dict[str, Any], default_policy: str, datacenter: str) -> Resolved:
    def tupled(row: list, tuple_cols: range | tuple) -> list:
        return [tuple(v) if i in tuple_cols and isinstance(v, list) else v for i, v in enumerate(row)]

    token = ACLToken(*tupled(data["token"], (3, 4, 5, 6)))
    roles = tuple(ACLRole(*tupled(r, (3, 4, 5))) for r in data.get("roles") or ())
    policies = tuple(ACLPolicy(*tupled(p, (4,))) for p in data.get("policies") or ())
    return Resolved(token, token.accessor_id, build_authorizer(token, roles, policies, default_policy, datacenter))


async def resolve(agent: Any, secret: str) -> Resolved | None:
    """The caller's identity and authorizer; None when ACLs are disabled (see the module docstring)."""
    cfg = agent.config
    if not cfg.acl_enabled:
        return None
    if not secret:
        secret = cfg.acl_token_default
    if cfg.acl_token_agent_recovery and secret == cfg.acl_token_agent_recovery:
        return _agent_recovery(agent)
    if agent.server is not None:
        return agent.server.acl.resolve(secret)
    cache: dict[str, tuple[float, Resolved]] = agent.__dict__.setdefault("_acl_cache", {})
    now = time.monotonic()
    hit = cache.get(secret)
    if hit is not None and hit[0] > now:
        return hit[1]
    try:
        data = await agent.rpc("ACL.ResolveIdentity", ACLResolveArgs(secret=secret, datacenter=cfg.datacenter))
    except PermissionDenied:
        cache.pop(secret, None)
        raise
    except RPCError:
        if hit is not None and cfg.acl_down_policy in ("extend-cache", "async-cache"):
            return hit[1]
        if cfg.acl_down_policy in DOWN_POLICIES:
            return DOWN_POLICIES[cfg.acl_down_policy]
        raise
    if not isinstance(data, dict) or "token" not in data:
        raise PermissionDenied(ACL_NOT_FOUND)
    resolved = _from_wire(data, cfg.acl_default_policy, cfg.datacenter)
    if len(cache) >= _MAX_CACHE:
        cache.clear()
    cache[secret] = (now + cfg.acl_token_ttl, resolved)
    return resolved


async def caller(agent: Any, secret: str) -> Resolved:
    """Who is calling this agent's endpoints: ``OPEN`` (everything allowed) with ACLs disabled."""
    resolved = await resolve(agent, secret)
    return OPEN if resolved is None else resolved
