"""The finite state machine: Raft log entries in, state-store writes out.

Contract (hashicorp/raft's FSM, adapted to pysyncobj):

* ``apply(payload, index)`` runs inside a Raft tick (on the event loop) for every committed entry,
  in log order, on every server. It is deterministic — no clock, randomness or
  I/O — so replicas stay identical.
* It never raises for a bad command: a store error is *returned* as the result
  and handed to whoever proposed the entry. An exception escaping into pysyncobj
  would wedge the node.
* The one exception is an entry of a type this version does not know: applying
  past it would diverge, so ``UnknownCommandError`` propagates and the Raft node
  stops the process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from proconsul.server.commands import (
    ACLBootstrapRequest,
    ACLPolicyRecord,
    ACLPolicyRequest,
    ACLRoleRecord,
    ACLRoleRequest,
    ACLTokenRecord,
    ACLTokenRequest,
    Batch,
    BarrierRequest,
    CALeafRequest,
    CARequest,
    ConfigEntryRequest,
    DeregisterRequest,
    EventFireRequest,
    IntentionRequest,
    KVSRequest,
    MemberReapRequest,
    MemberUpdateRequest,
    PreparedQueryRequest,
    RegisterRequest,
    RestoreRequest,
    SessionRequest,
    TombstoneRequest,
    TxnRequest,
    decode,
)
from proconsul.server.errors import ProconsulError, StoreError
from proconsul.server.snapshot import tables_from_wire
from proconsul.server.shapes import health_check, service_instance
from proconsul.server.state import DirEntry, Member, Node, PreparedQuery, Session, StateStore, TxnErrors, UserEvent
from proconsul.server.state.acl import ACLPolicy, ACLRole, ACLToken
from proconsul.server.state.ca import CAConfig, CARoot

log = logging.getLogger("proconsul.fsm")


@dataclass
class TxnResult:
    """Outcome of a transaction: results on success, (op index, reason) pairs on rollback."""

    results: list[DirEntry] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)


class FSM:
    """Maps each command type to one state-store write."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        # payload -> the command it was encoded from, left by this node's proposer (see ``remember``).
        self.proposed: dict[bytes, Any] = {}
        self._handlers: dict[type, Callable[[Any, int], Any]] = {
            KVSRequest: self.apply_kvs,
            TxnRequest: self.apply_txn,
            TombstoneRequest: self.apply_tombstone,
            RestoreRequest: self.apply_restore,
            BarrierRequest: self.apply_barrier,
            RegisterRequest: self.apply_register,
            DeregisterRequest: self.apply_deregister,
            MemberUpdateRequest: self.apply_member_update,
            MemberReapRequest: self.apply_member_reap,
            SessionRequest: self.apply_session,
            EventFireRequest: self.apply_event_fire,
            PreparedQueryRequest: self.apply_prepared_query,
            CARequest: self.apply_ca,
            CALeafRequest: self.apply_ca_leaf,
            ConfigEntryRequest: self.apply_config_entry,
            IntentionRequest: self.apply_intention,
            ACLBootstrapRequest: self.apply_acl_bootstrap,
            ACLTokenRequest: self.apply_acl_token,
            ACLPolicyRequest: self.apply_acl_policy,
            ACLRoleRequest: self.apply_acl_role,
        }

    def apply(self, payload: bytes, index: int) -> Any:
        """Apply one committed entry at ``index``; returns the result or the error (see module docstring).

        A Batch applies its commands in order at the same index and returns their results as a list.
        """
        cmd = self.proposed.pop(payload, None) if self.proposed else None
        if cmd is None:
            cmd = decode(payload)  # UnknownCommandError propagates on purpose
        if type(cmd) is Batch:
            return [self.apply(p, index) for p in cmd.payloads]
        try:
            return self._handlers[type(cmd)](cmd, index)
        except ProconsulError as err:
            return err
        except Exception as err:  # a bug in a handler: report it, keep the node alive
            log.exception("apply of %s at index %d failed", type(cmd).__name__, index)
            return StoreError(f"apply failed: {err}")

    def remember(self, payload: bytes, cmd: Any) -> None:
        """The leader proposed ``payload`` from ``cmd``: apply may take ``cmd`` instead of decoding it again.

        Only for KVSRequest, whose fields (str, int, bytes) come back from decode(encode(cmd)) equal,
        so leader and followers apply equal commands. Forgotten when applied; bounded in case entries
        never commit (a lost leadership also clears it).
        """
        if type(cmd) is KVSRequest:
            if len(self.proposed) >= 4096:
                self.proposed.clear()
            self.proposed[payload] = cmd

    def apply_kvs(self, req: KVSRequest, index: int) -> bool:
        st = self.state
        entry = DirEntry(req.key, req.value, req.flags, 0, req.session, 0, req.index)
        op = req.op
        if op == "set":
            return st.kv_set(index, entry)
        if op == "cas":
            return st.kv_set_cas(index, entry)
        if op == "lock":
            return st.kv_lock(index, entry)
        if op == "unlock":
            return st.kv_unlock(index, entry)
        if op == "delete":
            return st.kv_delete(index, req.key)
        if op == "delete-cas":
            return st.kv_delete_cas(index, req.key, req.index)
        if op == "delete-tree":
            return st.kv_delete_tree(index, req.key)
        raise StoreError(f"Invalid KVS operation '{op}'")

    def apply_txn(self, req: TxnRequest, index: int) -> TxnResult:
        try:
            return TxnResult(results=self.state.txn(index, req.ops))
        except TxnErrors as err:
            return TxnResult(errors=err.errors)

    def apply_tombstone(self, req: TombstoneRequest, index: int) -> None:
        self.state.kv_reap_tombstones(index, req.reap_index)

    def apply_restore(self, req: RestoreRequest, index: int) -> None:
        self.state.restore(index, tables_from_wire(req.tables))

    def apply_barrier(self, req: BarrierRequest, index: int) -> None:
        return None

    def apply_register(self, req: RegisterRequest, index: int) -> None:
        node = None
        if not req.skip_node_update:
            node = Node(req.node, req.id, req.address, req.datacenter, dict(req.tagged_addresses), dict(req.node_meta))
        svc = service_instance(req.node, req.service) if req.service is not None else None
        checks = [health_check(req.node, c) for c in req.checks]
        self.state.ensure_registration(index, node, svc, checks)

    def apply_deregister(self, req: DeregisterRequest, index: int) -> None:
        if req.service_id:
            self.state.delete_service(index, req.node, req.service_id)
        elif req.check_id:
            self.state.delete_check(index, req.node, req.check_id)
        else:
            self.state.delete_node(index, req.node)

    def apply_member_update(self, req: MemberUpdateRequest, index: int) -> None:
        member = Member(
            name=req.name,
            id=req.id,
            address=req.address,
            port=req.port,
            status=req.status,
            role=req.role,
            datacenter=req.datacenter,
            tags=dict(req.tags),
            changed_at=req.changed_at,
        )
        self.state.member_update(index, member, server_port=req.port if req.role == "consul" else 0)

    def apply_member_reap(self, req: MemberReapRequest, index: int) -> None:
        self.state.member_reap(index, req.name)

    def apply_session(self, req: SessionRequest, index: int) -> None:
        if req.op == "create":
            r = req.session
            session = Session(
                id=r.id,
                name=r.name,
                node=r.node,
                lock_delay=r.lock_delay,
                behavior=r.behavior,
                ttl=r.ttl,
                node_checks=tuple(r.node_checks),
                service_checks=tuple(r.service_checks),
            )
            self.state.session_create(index, session)
        elif req.op == "destroy":
            self.state.session_destroy(index, req.session.id)
        else:
            raise StoreError(f"Invalid session operation '{req.op}'")

    def apply_event_fire(self, req: EventFireRequest, index: int) -> UserEvent:
        event = UserEvent(0, req.id, req.name, req.payload, req.node_filter, req.service_filter, req.tag_filter, req.version)
        return self.state.event_fire(index, event)

    def apply_prepared_query(self, req: PreparedQueryRequest, index: int) -> None:
        r = req.query
        if req.op in ("create", "update"):
            query = PreparedQuery(r.id, r.name, r.session, r.token, dict(r.template), dict(r.service), dict(r.dns))
            self.state.query_set(index, query)
        elif req.op == "delete":
            self.state.query_delete(index, r.id)
        else:
            raise StoreError(f"Unknown prepared query operation: {req.op}")

    def apply_ca(self, req: CARequest, index: int) -> bool:
        """Consul's applyConnectCAOperation: False when a check-and-set lost."""
        config = None
        if req.config is not None:
            c = req.config
            config = CAConfig(c.cluster_id, c.provider, dict(c.config), dict(c.state) if c.state is not None else None, c.force_without_cross_signing)
        roots = [
            CARoot(
                r.id, r.name, r.serial_number, r.signing_key_id, r.external_trust_domain, r.not_before, r.not_after,
                r.root_cert, tuple(r.intermediate_certs) if r.intermediate_certs is not None else None, r.signing_key,
                r.active, r.rotated_out_at, r.private_key_type, r.private_key_bits,
            )
            for r in req.roots
        ]
        if req.op == "set-config":
            if config is None:
                raise StoreError("Missing CA configuration")
            return self.state.ca_set_config(index, config, req.config_index)
        if req.op == "set-roots":
            return self.state.ca_set_roots(index, req.index, roots)
        if req.op == "set-roots-config":
            if config is None:
                raise StoreError("Missing CA configuration")
            return self.state.ca_set_roots_and_config(index, req.index, roots, config, req.config_index)
        raise StoreError(f"Invalid CA operation '{req.op}'")

    def apply_ca_leaf(self, req: CALeafRequest, index: int) -> int:
        if req.op != "increment-index":
            raise StoreError(f"Invalid CA Leaf operation '{req.op}'")
        return self.state.ca_increment_leaf_index(index)

    def apply_config_entry(self, req: ConfigEntryRequest, index: int) -> bool:
        """Consul's applyConfigEntryOperation: True, or False when a check-and-set lost."""
        entry = req.entry
        if req.op in ("upsert", "upsert-cas"):
            return self.state.config_entry_set(index, entry, req.cas if req.op == "upsert-cas" else None)
        if req.op in ("delete", "delete-cas"):
            return self.state.config_entry_delete(index, entry.get("Kind", ""), entry.get("Name", ""), req.cas if req.op == "delete-cas" else None)
        raise StoreError(f"Invalid config entry operation '{req.op}'")

    def apply_intention(self, req: IntentionRequest, index: int) -> None:
        """Consul's applyIntentionOperation (the config-entry flavour: IntentionMutation)."""
        self.state.intention_mutation(index, req.op, req.legacy_id, req.destination, req.source, dict(req.value))

    def apply_acl_bootstrap(self, req: ACLBootstrapRequest, index: int) -> None:
        """Consul's applyACLTokenBootstrap."""
        self.state.acl_bootstrap(index, _acl_token(req.token), req.reset_index)

    def apply_acl_token(self, req: ACLTokenRequest, index: int) -> None:
        """Consul's applyACLTokenSetOperation / applyACLTokenDeleteOperation."""
        if req.op == "set":
            self.state.acl_token_set(index, [_acl_token(t) for t in req.tokens])
        elif req.op == "delete":
            self.state.acl_token_delete(index, list(req.ids))
        else:
            raise StoreError(f"Invalid ACL token operation '{req.op}'")

    def apply_acl_policy(self, req: ACLPolicyRequest, index: int) -> None:
        """Consul's applyACLPolicySetOperation / applyACLPolicyDeleteOperation."""
        if req.op == "set":
            self.state.acl_policy_set(index, [_acl_policy(p) for p in req.policies])
        elif req.op == "delete":
            self.state.acl_policy_delete(index, list(req.ids))
        else:
            raise StoreError(f"Invalid ACL policy operation '{req.op}'")

    def apply_acl_role(self, req: ACLRoleRequest, index: int) -> None:
        """Consul's applyACLRoleSetOperation / applyACLRoleDeleteOperation."""
        if req.op == "set":
            self.state.acl_role_set(index, [_acl_role(r) for r in req.roles])
        elif req.op == "delete":
            self.state.acl_role_delete(index, list(req.ids))
        else:
            raise StoreError(f"Invalid ACL role operation '{req.op}'")


def _acl_token(r: ACLTokenRecord) -> ACLToken:
    return ACLToken(
        r.accessor_id, r.secret_id, r.description, tuple(r.policies), tuple(r.roles), tuple(r.service_identities),
        tuple(r.node_identities), r.local, r.auth_method, r.expiration_time, r.create_time, r.hash,
    )


def _acl_policy(r: ACLPolicyRecord) -> ACLPolicy:
    return ACLPolicy(r.id, r.name, r.description, r.rules, tuple(r.datacenters) if r.datacenters is not None else None, r.hash)


def _acl_role(r: ACLRoleRecord) -> ACLRole:
    return ACLRole(r.id, r.name, r.description, tuple(r.policies), tuple(r.service_identities), tuple(r.node_identities), r.hash)
