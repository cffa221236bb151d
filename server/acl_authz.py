"""The ACL authorizer: answers "may this token do X?" from its merged policies.

Matches Consul's ``acl.policyAuthorizer`` chained onto the static default
authorizer (acl/policy_authorizer.go, acl/chained_authorizer.go,
acl/static_authorizer.go):

* All of a token's policies are merged first (``merge_rules``: per resource and
  segment, deny > write > list > read).
* A lookup takes the exact rule for the name if there is one, else the longest
  matching prefix rule. ``write`` grants read, list and write; ``list`` grants
  read and list; ``read`` grants read; ``deny`` grants nothing.
* When no rule applies the default authorizer decides: ``acl.default_policy``
  ``allow`` or ``deny``. The ACL resource (and snapshots) never fall to
  ``allow``: only ``MANAGEMENT`` or an ``acl`` rule grants them.
* ``mesh`` and ``peering`` fall back to ``operator`` when unset.
* Intentions on a destination follow the service rules' ``intentions``
  attribute, or, when unset, ``read`` for a read/write service rule and
  ``deny`` for a deny rule. ``"*"`` as the destination asks whether any (read)
  or all (write) intention rules allow it, as Consul's anyAllowed/allAllowed.

Every table is built at construction; a check is one or two dict probes per
distinct prefix length, with no allocation beyond a slice.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable

from proconsul.server.acl_rules import Rule, Rules, merge_rules

DENY, READ, LIST, WRITE = 1, 2, 3, 4
_LEVEL = {"deny": DENY, "read": READ, "list": LIST, "write": WRITE}


class _Table:
    """Exact and prefix rules for one resource (Consul keeps both in one radix tree)."""

    __slots__ = ("exact", "prefix", "lengths", "segments")

    def __init__(self, exact: Iterable[Rule], prefix: Iterable[Rule], attr: str = "policy") -> None:
        self.exact = {r.segment: _LEVEL[getattr(r, attr)] for r in exact}
        self.prefix = {r.segment: _LEVEL[getattr(r, attr)] for r in prefix}
        self.lengths = tuple(sorted({len(p) for p in self.prefix}, reverse=True))
        self.segments = tuple(sorted(set(self.exact) | set(self.prefix)))

    def lookup(self, name: str) -> int:
        """The level of the exact rule, else of the longest prefix rule; 0 when none applies."""
        level = self.exact.get(name)
        if level is not None:
            return level
        return self.lookup_prefix(name)

    def lookup_prefix(self, name: str) -> int:
        """The level of the longest prefix rule covering ``name``; 0 when none does."""
        prefix = self.prefix
        n = len(name)
        for length in self.lengths:
            if length <= n:
                level = prefix.get(name[:length])
                if level is not None:
                    return level
        return 0

    def any_allowed(self, required: int) -> bool | None:
        """Consul's anyAllowed: does some rule grant ``required``? None defers to the default."""
        decision: bool | None = None
        root = self.prefix.get("")
        if root is not None:
            decision = root >= required
            if decision:
                return True
        for segment in self.segments:
            level = self.prefix.get(segment)
            if level is not None and level >= required:
                return True
            level = self.exact.get(segment)
            if level is not None and level >= required:
                return True
        return decision

    def all_allowed(self, required: int) -> bool | None:
        """Consul's allAllowed: does no rule refuse ``required``? None defers to the default."""
        decision: bool | None = None
        root = self.prefix.get("")
        if root is not None:
            decision = root >= required
            if not decision:
                return False
        for segment in self.segments:
            level = self.prefix.get(segment)
            if level is not None and level < required:
                return False
            level = self.exact.get(segment)
            if level is not None and level < required:
                return False
        return decision


def _tables(rules: Rules, name: str) -> _Table:
    return _Table(getattr(rules, name), getattr(rules, name + "_prefix"))


def _intention(rule: Rule) -> Rule:
    if rule.intentions:
        return rule
    derived = "read" if rule.policy in ("read", "write") else "deny"
    return Rule(rule.segment, rule.policy, derived)


class Authorizer:
    """Decides each ACL check for one token, mirroring Consul's acl.Authorizer (True = allowed)."""

    __slots__ = (
        "_allow", "_manage",
        "_acl", "_keyring", "_operator", "_mesh", "_peering",
        "_agent", "_key", "_node", "_service", "_session", "_event", "_query", "_intention",
        "_key_not_write", "_intention_read_any", "_intention_write_all",
        "_service_read_all", "_service_write_any", "_node_read_all",
    )

    def __init__(self, policies: Iterable[Rules] = (), default: str = "deny") -> None:
        if default not in ("allow", "deny"):
            raise ValueError(f"default policy must be 'allow' or 'deny', not {default!r}")
        merged = merge_rules(list(policies))
        self._allow = default == "allow"
        self._manage = False
        self._acl = _LEVEL.get(merged.acl, 0)
        self._keyring = _LEVEL.get(merged.keyring, 0)
        self._operator = _LEVEL.get(merged.operator, 0)
        self._mesh = _LEVEL.get(merged.mesh, 0) or self._operator
        self._peering = _LEVEL.get(merged.peering, 0) or self._operator
        self._agent = _tables(merged, "agent")
        self._key = _tables(merged, "key")
        self._node = _tables(merged, "node")
        self._service = _tables(merged, "service")
        self._session = _tables(merged, "session")
        self._event = _tables(merged, "event")
        self._query = _tables(merged, "query")
        self._intention = _Table(
            [_intention(r) for r in merged.service],
            [_intention(r) for r in merged.service_prefix],
            attr="intentions",
        )
        key = self._key
        self._key_not_write = tuple(
            s for s in key.segments if key.exact.get(s, WRITE) != WRITE or key.prefix.get(s, WRITE) != WRITE
        )
        self._intention_read_any = self._intention.any_allowed(READ)
        self._intention_write_all = self._intention.all_allowed(WRITE)
        self._service_read_all = self._service.all_allowed(READ)
        self._service_write_any = self._service.any_allowed(WRITE)
        self._node_read_all = self._node.all_allowed(READ)

    @classmethod
    def _static(cls, allow: bool, manage: bool) -> Authorizer:
        authz = cls((), "allow" if allow else "deny")
        authz._manage = manage
        return authz

    @property
    def default_allow(self) -> bool:
        """Whether a check no rule covers is allowed (acl.default_policy = allow)."""
        return self._allow

    def __repr__(self) -> str:
        kind = "management" if self._manage else ("allow" if self._allow else "deny")
        return f"<Authorizer default={kind}>"

    # --- unsegmented ------------------------------------------------------

    def acl_read(self) -> bool:
        """ACLRead: list and read ACL objects; never granted by default_policy=allow."""
        return self._acl >= READ if self._acl else self._manage

    def acl_write(self) -> bool:
        """ACLWrite: create, change and delete ACL objects."""
        return self._acl == WRITE if self._acl else self._manage

    def snapshot(self) -> bool:
        """Snapshot: save and restore; needs acl = "write" as in Consul."""
        return self._acl == WRITE if self._acl else self._manage

    def keyring_read(self) -> bool:
        """KeyringRead: list gossip encryption keys."""
        return self._keyring >= READ if self._keyring else self._allow

    def keyring_write(self) -> bool:
        """KeyringWrite: install, use and remove gossip keys."""
        return self._keyring == WRITE if self._keyring else self._allow

    def operator_read(self) -> bool:
        """OperatorRead: read-only operator endpoints (raft configuration, autopilot)."""
        return self._operator >= READ if self._operator else self._allow

    def operator_write(self) -> bool:
        """OperatorWrite: state-changing operator endpoints."""
        return self._operator == WRITE if self._operator else self._allow

    def mesh_read(self) -> bool:
        """MeshRead: mesh-wide config reads; falls back to operator when no mesh rule is set."""
        return self._mesh >= READ if self._mesh else self._allow

    def mesh_write(self) -> bool:
        """MeshWrite: mesh-wide config writes; falls back to operator when no mesh rule is set."""
        return self._mesh == WRITE if self._mesh else self._allow

    def peering_read(self) -> bool:
        """PeeringRead: falls back to operator when no peering rule is set."""
        return self._peering >= READ if self._peering else self._allow

    def peering_write(self) -> bool:
        """PeeringWrite: falls back to operator when no peering rule is set."""
        return self._peering == WRITE if self._peering else self._allow

    # --- key/value --------------------------------------------------------

    def key_read(self, key: str) -> bool:
        """KeyRead: read one key."""
        level = self._key.lookup(key)
        return level >= READ if level else self._allow

    def key_list(self, key: str) -> bool:
        """KeyList: list keys under a prefix; needs list or write (only checked with acl.enable_key_list_policy)."""
        level = self._key.lookup(key)
        return level >= LIST if level else self._allow

    def key_write(self, key: str) -> bool:
        """KeyWrite: write or delete one key."""
        level = self._key.lookup(key)
        return level == WRITE if level else self._allow

    def key_write_prefix(self, prefix: str) -> bool:
        """KeyWritePrefix: delete a whole tree; denied if the covering prefix rule or any rule under it is not write."""
        level = self._key.lookup_prefix(prefix)
        if level and level != WRITE:
            return False
        not_write = self._key_not_write
        i = bisect_left(not_write, prefix)
        if i < len(not_write) and not_write[i].startswith(prefix):
            return False
        return True if level else self._allow

    # --- segmented --------------------------------------------------------

    def agent_read(self, node: str) -> bool:
        """AgentRead: read an agent's endpoints on ``node``."""
        level = self._agent.lookup(node)
        return level >= READ if level else self._allow

    def agent_write(self, node: str) -> bool:
        """AgentWrite: change an agent (join, leave, maintenance) on ``node``."""
        level = self._agent.lookup(node)
        return level == WRITE if level else self._allow

    def event_read(self, name: str) -> bool:
        """EventRead: list user events named ``name``."""
        level = self._event.lookup(name)
        return level >= READ if level else self._allow

    def event_write(self, name: str) -> bool:
        """EventWrite: fire user events named ``name``."""
        level = self._event.lookup(name)
        return level == WRITE if level else self._allow

    def node_read(self, name: str) -> bool:
        """NodeRead: discover node ``name``."""
        level = self._node.lookup(name)
        return level >= READ if level else self._allow

    def node_read_all(self) -> bool:
        """NodeReadAll: read every node (no rule refuses read)."""
        decision = self._node_read_all
        return self._allow if decision is None else decision

    def node_write(self, name: str) -> bool:
        """NodeWrite: register or change node ``name``."""
        level = self._node.lookup(name)
        return level == WRITE if level else self._allow

    def query_read(self, name: str) -> bool:
        """PreparedQueryRead: read the definition of prepared query ``name``."""
        level = self._query.lookup(name)
        return level >= READ if level else self._allow

    def query_write(self, name: str) -> bool:
        """PreparedQueryWrite: create, change or delete prepared query ``name``."""
        level = self._query.lookup(name)
        return level == WRITE if level else self._allow

    def service_read(self, name: str) -> bool:
        """ServiceRead: discover service ``name``."""
        level = self._service.lookup(name)
        return level >= READ if level else self._allow

    def service_read_all(self) -> bool:
        """ServiceReadAll: read every service (no rule refuses read)."""
        decision = self._service_read_all
        return self._allow if decision is None else decision

    def service_write(self, name: str) -> bool:
        """ServiceWrite: register or change service ``name``."""
        level = self._service.lookup(name)
        return level == WRITE if level else self._allow

    def service_write_any(self) -> bool:
        """ServiceWriteAny: some rule grants service write."""
        decision = self._service_write_any
        return self._allow if decision is None else decision

    def session_read(self, node: str) -> bool:
        """SessionRead: read sessions tied to ``node``."""
        level = self._session.lookup(node)
        return level >= READ if level else self._allow

    def session_write(self, node: str) -> bool:
        """SessionWrite: create or destroy sessions tied to ``node``."""
        level = self._session.lookup(node)
        return level == WRITE if level else self._allow

    # --- intentions -------------------------------------------------------

    def intention_read(self, destination: str) -> bool:
        """IntentionRead: read intentions whose destination is ``destination`` ("*": any rule allows)."""
        if destination == "*":
            decision = self._intention_read_any
            return self._allow if decision is None else decision
        level = self._intention.lookup(destination)
        return level >= READ if level else self._allow

    def intention_write(self, destination: str) -> bool:
        """IntentionWrite: change intentions whose destination is ``destination`` ("*": all rules allow)."""
        if destination == "*":
            decision = self._intention_write_all
            return self._allow if decision is None else decision
        level = self._intention.lookup(destination)
        return level == WRITE if level else self._allow

    def intention_default_allow(self) -> bool:
        """IntentionDefaultAllow: no policy decides this; the default authorizer does."""
        return self._allow


_ALLOW_ALL = Authorizer._static(allow=True, manage=False)
_DENY_ALL = Authorizer._static(allow=False, manage=False)
MANAGEMENT = Authorizer._static(allow=True, manage=True)


def allow_all() -> Authorizer:
    """Everything but the ACL resource allowed (Consul's AllowAll, default_policy = allow)."""
    return _ALLOW_ALL


def deny_all() -> Authorizer:
    """Everything denied (Consul's DenyAll, default_policy = deny)."""
    return _DENY_ALL


def management() -> Authorizer:
    """Everything allowed, ACLs included (Consul's ManageAll, the management token)."""
    return MANAGEMENT
