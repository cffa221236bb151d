"""The ACL part of the state store: Consul's tokens, policies and roles (``state/acl.go``).

* Tokens are keyed by AccessorID, with a unique SecretID beside it; policies and
  roles by ID, with a unique case-insensitive name. Tokens and roles hold the
  IDs of what they link to; names are looked up on read, and links to deleted
  policies or roles are dropped on read (Consul's fixupTokenPolicyLinks), so a
  rename or a delete never rewrites the tokens that mention it.
* Writes run Consul's checks inside the write, where they cannot race: secrets
  are unique and never change, names are unique, linked policies and roles
  exist, the builtin global-management policy keeps its rules and cannot be
  deleted, the anonymous token cannot be deleted.
* Bootstrap (Consul's ACLBootstrap) is allowed once: it records its Raft index
  under ``acl-token-bootstrap`` in the index table, and a later bootstrap must
  name that index (the reset index) to run again.
* Expiry needs a clock, so it is not decided here: rows carry ExpirationTime and
  readers compare it with their own clock.

Indexes ``acl_tokens``, ``acl_policies``, ``acl_roles`` (and ``acl-token-bootstrap``).
Watch keys are the same three names.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from proconsul.server.errors import StoreError
from proconsul.server.state.base import MISSING, TableSchema, WriteTxn, restore_slot
from proconsul.server.watch import WatchChannel, WatchSet

TOKENS, POLICIES, ROLES = "acl_tokens", "acl_policies", "acl_roles"
BOOTSTRAP_INDEX = "acl-token-bootstrap"
GLOBAL_MANAGEMENT_ID = "00000000-0000-0000-0000-000000000001"  # Consul's structs.ACLPolicyGlobalManagementID
ANONYMOUS_ID = "00000000-0000-0000-0000-000000000002"  # Consul's acl.AnonymousTokenID
BOOTSTRAP_NOT_ALLOWED = "ACL bootstrap no longer allowed"  # structs.ACLBootstrapNotAllowedErr
BOOTSTRAP_BAD_RESET = "Invalid ACL bootstrap reset index"  # structs.ACLBootstrapInvalidResetIndexErr


class ACLToken(NamedTuple):
    """Consul's structs.ACLToken; ``policies``/``roles`` are IDs, identities in Consul's JSON shape."""

    accessor_id: str
    secret_id: str
    description: str = ""
    policies: tuple = ()
    roles: tuple = ()
    service_identities: tuple = ()
    node_identities: tuple = ()
    local: bool = False
    auth_method: str = ""
    expiration_time: str = ""
    create_time: str = ""
    hash: str = ""
    create_index: int = 0
    modify_index: int = 0


class ACLPolicy(NamedTuple):
    """Consul's structs.ACLPolicy; ``datacenters`` None when unset (Consul's nil slice)."""

    id: str
    name: str
    description: str = ""
    rules: str = ""
    datacenters: tuple | None = None
    hash: str = ""
    create_index: int = 0
    modify_index: int = 0


class ACLRole(NamedTuple):
    """Consul's structs.ACLRole; ``policies`` are IDs."""

    id: str
    name: str
    description: str = ""
    policies: tuple = ()
    service_identities: tuple = ()
    node_identities: tuple = ()
    hash: str = ""
    create_index: int = 0
    modify_index: int = 0


Links = tuple[tuple[str, str], ...]  # (ID, current name) of each live link


class TokenView(NamedTuple):
    """A token as read: its live policy and role links with their current names."""

    token: ACLToken
    policies: Links
    roles: Links


class RoleView(NamedTuple):
    """A role as read: its live policy links with their current names."""

    role: ACLRole
    policies: Links


class ACLIdentity(NamedTuple):
    """What resolving a secret needs, read at once: the token, its roles, and every policy they reach."""

    token: ACLToken
    roles: tuple[ACLRole, ...]
    policies: tuple[ACLPolicy, ...]


def _put(tx: WriteTxn, table: dict, key: Any, value: Any) -> None:
    old = table.get(key, MISSING)
    table[key] = value
    tx.undo.append(lambda: restore_slot(table, key, old))


def _pop(tx: WriteTxn, table: dict, key: Any) -> None:
    old = table.pop(key, MISSING)
    if old is not MISSING:
        tx.undo.append(lambda: restore_slot(table, key, old))


def _tuple(v: Any) -> tuple:
    return tuple(v) if v is not None else ()


class ACLStore:
    """Consul's ACL tables; mixed into StateStore (see base.StoreBase for the machinery)."""

    ACL_SCHEMA = {
        TOKENS: TableSchema(
            (
                ("accessor_id", "text"), ("secret_id", "text"), ("description", "text"), ("policies", "json"),
                ("roles", "json"), ("service_identities", "json"), ("node_identities", "json"), ("local", "bool"),
                ("auth_method", "text"), ("expiration_time", "text"), ("create_time", "text"), ("hash", "text"),
                ("create_index", "int"), ("modify_index", "int"),
            )
        ),
        POLICIES: TableSchema(
            (
                ("id", "text"), ("name", "text"), ("description", "text"), ("rules", "text"), ("datacenters", "json"),
                ("hash", "text"), ("create_index", "int"), ("modify_index", "int"),
            )
        ),
        ROLES: TableSchema(
            (
                ("id", "text"), ("name", "text"), ("description", "text"), ("policies", "json"),
                ("service_identities", "json"), ("node_identities", "json"), ("hash", "text"),
                ("create_index", "int"), ("modify_index", "int"),
            )
        ),
    }

    # Provided by StoreBase.
    _lock: Any
    _index: dict[str, int]
    _max_index: Callable[..., int]
    _set_index_txn: Callable[[WriteTxn, str], None]
    _write: Callable[..., Any]
    _watch: Callable[..., None]

    def _acl_init(self) -> None:
        self._acl_tokens: dict[str, ACLToken] = {}
        self._acl_policies: dict[str, ACLPolicy] = {}
        self._acl_roles: dict[str, ACLRole] = {}
        self._build_acl_indexes()

    def _build_acl_indexes(self) -> None:
        self._acl_secrets = {t.secret_id: a for a, t in self._acl_tokens.items()}
        self._acl_policy_names = {p.name.lower(): i for i, p in self._acl_policies.items()}
        self._acl_role_names = {r.name.lower(): i for i, r in self._acl_roles.items()}

    def _acl_dump(self) -> dict[str, list[tuple]]:
        return {
            TOKENS: [tuple(t) for _, t in sorted(self._acl_tokens.items())],
            POLICIES: [tuple(p) for _, p in sorted(self._acl_policies.items())],
            ROLES: [tuple(r) for _, r in sorted(self._acl_roles.items())],
        }

    def _acl_load(self, tables: dict[str, list[tuple]]) -> Callable[[], None]:
        tokens = {}
        for r in tables.get(TOKENS, ()):
            t = ACLToken(*r)
            tokens[t.accessor_id] = t._replace(
                policies=_tuple(t.policies), roles=_tuple(t.roles), service_identities=_tuple(t.service_identities),
                node_identities=_tuple(t.node_identities), local=bool(t.local),
            )
        policies = {}
        for r in tables.get(POLICIES, ()):
            p = ACLPolicy(*r)
            policies[p.id] = p._replace(datacenters=tuple(p.datacenters) if p.datacenters is not None else None)
        roles = {}
        for r in tables.get(ROLES, ()):
            role = ACLRole(*r)
            roles[role.id] = role._replace(
                policies=_tuple(role.policies), service_identities=_tuple(role.service_identities),
                node_identities=_tuple(role.node_identities),
            )

        def swap() -> None:
            self._acl_tokens, self._acl_policies, self._acl_roles = tokens, policies, roles
            self._build_acl_indexes()

        return swap

    def _acl_abandon(self) -> list[WatchChannel]:
        return []

    def _acl_fired(self, tx: WriteTxn) -> list[WatchChannel]:
        return []

    def _acl_touch(self, tx: WriteTxn, table: str) -> None:
        self._set_index_txn(tx, table)
        tx.watch_keys.add(table)

    # ------------------------------------------------------------- writes

    def acl_bootstrap(self, index: int, token: ACLToken, reset_index: int = 0) -> None:
        """Consul's ACLBootstrap: the first management token, once; again only with the recorded reset index."""

        def body(tx: WriteTxn) -> None:
            done = self._index.get(BOOTSTRAP_INDEX, 0)
            if done:
                if reset_index == 0:
                    raise StoreError(BOOTSTRAP_NOT_ALLOWED)
                if reset_index != done:
                    raise StoreError(BOOTSTRAP_BAD_RESET)
            self.acl_token_set_txn(tx, token)
            self._set_index_txn(tx, BOOTSTRAP_INDEX)

        self._write(index, body)

    def acl_token_set(self, index: int, tokens: list[ACLToken]) -> None:
        """Consul's ACLTokenBatchSet: every token or none."""
        self._write(index, lambda tx: [self.acl_token_set_txn(tx, t) for t in tokens])

    def acl_token_set_txn(self, tx: WriteTxn, token: ACLToken) -> None:
        """Consul's aclTokenSetTxn: secret unique and unchanged, links resolvable; CreateIndex kept across updates."""
        if not token.secret_id:
            raise StoreError("Missing ACL Token SecretID")
        if not token.accessor_id:
            raise StoreError("Missing ACL Token AccessorID")
        owner = self._acl_secrets.get(token.secret_id)
        if owner is not None and owner != token.accessor_id:
            raise StoreError("Invalid Token: SecretID is already in use")
        existing = self._acl_tokens.get(token.accessor_id)
        if existing is not None and existing.secret_id != token.secret_id:
            raise StoreError("The SecretID cannot be changed")
        for pid in token.policies:
            if pid not in self._acl_policies:
                raise StoreError(f"No such policy with ID: {pid}")
        for rid in token.roles:
            if rid not in self._acl_roles:
                raise StoreError(f"No such role with ID: {rid}")
        row = token._replace(
            create_index=existing.create_index if existing is not None else tx.index, modify_index=tx.index
        )
        _put(tx, self._acl_tokens, row.accessor_id, row)
        _put(tx, self._acl_secrets, row.secret_id, row.accessor_id)
        self._acl_touch(tx, TOKENS)

    def acl_token_delete(self, index: int, accessor_ids: list[str]) -> None:
        """Consul's ACLTokenBatchDelete; a missing token is a no-op."""

        def body(tx: WriteTxn) -> None:
            for aid in accessor_ids:
                if aid == ANONYMOUS_ID:
                    raise StoreError("Deletion of the builtin anonymous token is not permitted")
                existing = self._acl_tokens.get(aid)
                if existing is None:
                    continue
                _pop(tx, self._acl_tokens, aid)
                _pop(tx, self._acl_secrets, existing.secret_id)
                self._acl_touch(tx, TOKENS)

        self._write(index, body)

    def acl_policy_set(self, index: int, policies: list[ACLPolicy]) -> None:
        """Consul's ACLPolicyBatchSet."""
        self._write(index, lambda tx: [self.acl_policy_set_txn(tx, p) for p in policies])

    def acl_policy_set_txn(self, tx: WriteTxn, policy: ACLPolicy) -> None:
        """Consul's aclPolicySetTxn: ID and name set, name unique, the builtin policy's rules unchanged."""
        if not policy.id:
            raise StoreError("Missing ACL Policy ID")
        if not policy.name:
            raise StoreError("Missing ACL Policy Name")
        existing = self._acl_policies.get(policy.id)
        if existing is not None and policy.id == GLOBAL_MANAGEMENT_ID:
            if policy.rules != existing.rules:
                raise StoreError("Changing the Rules for the builtin global-management policy is not permitted")
            if policy.datacenters:
                raise StoreError("Changing the Datacenters of the builtin global-management policy is not permitted")
        other = self._acl_policy_names.get(policy.name.lower())
        if other is not None and other != policy.id:
            raise StoreError(f'Invalid Policy: A Policy with Name "{policy.name}" already exists')
        row = policy._replace(
            create_index=existing.create_index if existing is not None else tx.index, modify_index=tx.index
        )
        if existing is not None:
            _pop(tx, self._acl_policy_names, existing.name.lower())
        _put(tx, self._acl_policies, row.id, row)
        _put(tx, self._acl_policy_names, row.name.lower(), row.id)
        self._acl_touch(tx, POLICIES)

    def acl_policy_delete(self, index: int, ids: list[str]) -> None:
        """Consul's ACLPolicyBatchDelete; tokens and roles keep their (now dead) links, dropped on read."""

        def body(tx: WriteTxn) -> None:
            for pid in ids:
                if pid == GLOBAL_MANAGEMENT_ID:
                    raise StoreError("Deletion of the builtin global-management policy is not permitted")
                existing = self._acl_policies.get(pid)
                if existing is None:
                    continue
                _pop(tx, self._acl_policies, pid)
                _pop(tx, self._acl_policy_names, existing.name.lower())
                self._acl_touch(tx, POLICIES)

        self._write(index, body)

    def acl_role_set(self, index: int, roles: list[ACLRole]) -> None:
        """Consul's ACLRoleBatchSet."""
        self._write(index, lambda tx: [self.acl_role_set_txn(tx, r) for r in roles])

    def acl_role_set_txn(self, tx: WriteTxn, role: ACLRole) -> None:
        """Consul's aclRoleSetTxn: ID and name set, name unique, linked policies exist."""
        if not role.id:
            raise StoreError("Missing ACL Role ID")
        if not role.name:
            raise StoreError("Missing ACL Role Name")
        existing = self._acl_roles.get(role.id)
        other = self._acl_role_names.get(role.name.lower())
        if other is not None and other != role.id:
            raise StoreError(f'Invalid Role: A Role with Name "{role.name}" already exists')
        for pid in role.policies:
            if pid not in self._acl_policies:
                raise StoreError(f"No such policy with ID: {pid}")
        row = role._replace(create_index=existing.create_index if existing is not None else tx.index, modify_index=tx.index)
        if existing is not None:
            _pop(tx, self._acl_role_names, existing.name.lower())
        _put(tx, self._acl_roles, row.id, row)
        _put(tx, self._acl_role_names, row.name.lower(), row.id)
        self._acl_touch(tx, ROLES)

    def acl_role_delete(self, index: int, ids: list[str]) -> None:
        """Consul's ACLRoleBatchDelete; tokens keep their (now dead) links, dropped on read."""

        def body(tx: WriteTxn) -> None:
            for rid in ids:
                existing = self._acl_roles.get(rid)
                if existing is None:
                    continue
                _pop(tx, self._acl_roles, rid)
                _pop(tx, self._acl_role_names, existing.name.lower())
                self._acl_touch(tx, ROLES)

        self._write(index, body)

    # ------------------------------------------------------------- reads (callers hold no lock)

    def _policy_links(self, ids: tuple) -> Links:
        return tuple((pid, p.name) for pid in ids if (p := self._acl_policies.get(pid)) is not None)

    def _role_links(self, ids: tuple) -> Links:
        return tuple((rid, r.name) for rid in ids if (r := self._acl_roles.get(rid)) is not None)

    def _token_view(self, t: ACLToken) -> TokenView:
        return TokenView(t, self._policy_links(t.policies), self._role_links(t.roles))

    def _acl_token_index(self) -> int:
        # A token read shows policy and role names, so it moves with all three tables.
        return self._max_index(TOKENS, POLICIES, ROLES) or 1

    def acl_index(self) -> int:
        """The highest index of the ACL tables: what a resolver's cache is valid for."""
        with self._lock:
            return self._max_index(TOKENS, POLICIES, ROLES)

    def acl_can_bootstrap(self) -> tuple[bool, int]:
        """Consul's CanBootstrapACLToken: (allowed, the reset index an operator must name to bootstrap again)."""
        with self._lock:
            done = self._index.get(BOOTSTRAP_INDEX, 0)
            return done == 0, done

    def acl_token_get(self, accessor_id: str, ws: WatchSet | None = None) -> tuple[int, TokenView | None]:
        """One token by AccessorID (Consul's ACLTokenGetByAccessor)."""
        with self._lock:
            self._watch(ws, TOKENS, POLICIES, ROLES)
            t = self._acl_tokens.get(accessor_id)
            return self._acl_token_index(), self._token_view(t) if t is not None else None

    def acl_token_get_by_secret(self, secret_id: str, ws: WatchSet | None = None) -> tuple[int, TokenView | None]:
        """One token by SecretID (Consul's ACLTokenGetBySecret)."""
        with self._lock:
            self._watch(ws, TOKENS, POLICIES, ROLES)
            aid = self._acl_secrets.get(secret_id)
            t = self._acl_tokens.get(aid) if aid is not None else None
            return self._acl_token_index(), self._token_view(t) if t is not None else None

    def acl_token_list(
        self, policy: str = "", role: str = "", auth_method: str = "", service_name: str = "", ws: WatchSet | None = None
    ) -> tuple[int, list[TokenView]]:
        """Consul's ACLTokenList with at most one filter, ordered by AccessorID."""
        if sum(1 for f in (policy, role, auth_method, service_name) if f) > 1:
            raise StoreError("can only filter by one of policy, role, serviceName, or authMethod at once")
        with self._lock:
            self._watch(ws, TOKENS, POLICIES, ROLES)
            out = []
            for _, t in sorted(self._acl_tokens.items()):
                if policy and policy not in t.policies:
                    continue
                if role and role not in t.roles:
                    continue
                if auth_method and t.auth_method != auth_method:
                    continue
                if service_name and not any(s.get("ServiceName") == service_name for s in t.service_identities):
                    continue
                out.append(self._token_view(t))
            return self._acl_token_index(), out

    def acl_token_expirations(self) -> list[tuple[str, str]]:
        """(AccessorID, ExpirationTime) of every token that has one: the leader reaps the expired (Consul's ACLTokenListExpired)."""
        with self._lock:
            return [(a, t.expiration_time) for a, t in self._acl_tokens.items() if t.expiration_time]

    def acl_policy_get(self, policy_id: str = "", name: str = "", ws: WatchSet | None = None) -> tuple[int, ACLPolicy | None]:
        """One policy by ID, or by name case-insensitively (Consul's ACLPolicyGetByID / ByName)."""
        with self._lock:
            self._watch(ws, POLICIES)
            if not policy_id:
                policy_id = self._acl_policy_names.get(name.lower(), "")
            return self._max_index(POLICIES) or 1, self._acl_policies.get(policy_id)

    def acl_policy_list(self, ws: WatchSet | None = None) -> tuple[int, list[ACLPolicy]]:
        """Every policy, by ID (Consul's ACLPolicyList)."""
        with self._lock:
            self._watch(ws, POLICIES)
            return self._max_index(POLICIES) or 1, [p for _, p in sorted(self._acl_policies.items())]

    def acl_role_get(self, role_id: str = "", name: str = "", ws: WatchSet | None = None) -> tuple[int, RoleView | None]:
        """One role by ID, or by name case-insensitively (Consul's ACLRoleGetByID / ByName)."""
        with self._lock:
            self._watch(ws, ROLES, POLICIES)
            if not role_id:
                role_id = self._acl_role_names.get(name.lower(), "")
            r = self._acl_roles.get(role_id)
            view = RoleView(r, self._policy_links(r.policies)) if r is not None else None
            return self._max_index(ROLES, POLICIES) or 1, view

    def acl_role_list(self, policy: str = "", ws: WatchSet | None = None) -> tuple[int, list[RoleView]]:
        """Every role, by ID, optionally only those linking ``policy`` (Consul's ACLRoleList)."""
        with self._lock:
            self._watch(ws, ROLES, POLICIES)
            views = [
                RoleView(r, self._policy_links(r.policies))
                for _, r in sorted(self._acl_roles.items())
                if not policy or policy in r.policies
            ]
            return self._max_index(ROLES, POLICIES) or 1, views

    def acl_identity(self, secret_id: str) -> tuple[int, ACLIdentity | None]:
        """A token by secret with its live roles and every policy it reaches, read under one lock (for resolvers)."""
        with self._lock:
            index = self._max_index(TOKENS, POLICIES, ROLES)
            aid = self._acl_secrets.get(secret_id)
            t = self._acl_tokens.get(aid) if aid is not None else None
            if t is None:
                return index, None
            roles = tuple(r for rid in t.roles if (r := self._acl_roles.get(rid)) is not None)
            seen: dict[str, ACLPolicy] = {}
            for pid in [*t.policies, *(p for r in roles for p in r.policies)]:
                p = self._acl_policies.get(pid)
                if p is not None:
                    seen.setdefault(pid, p)
            return index, ACLIdentity(t, roles, tuple(seen.values()))
