"""The state store: proconsul's replicated tables, in memory (``proconsul.server.state``).

One import boundary, parts behind it: ``base`` (transactions, indexes, watches,
dump/load), ``kv`` (KV and tombstones), ``catalog`` (nodes, services, checks),
``members`` (agents' liveness), ``sessions`` (sessions and lock invalidation),
``queries`` (prepared queries and their templates), ``ca`` (Connect CA roots and config),
``config_entries`` (config entries, and the intentions read from them), ``acl`` (tokens, policies, roles).
No Raft, clock or I/O anywhere in here; see ``base`` for the invariants.
"""

from __future__ import annotations

from proconsul.server.state.acl import ACLIdentity, ACLPolicy, ACLRole, ACLStore, ACLToken, RoleView, TokenView
from proconsul.server.state.base import BASE_SCHEMA, StoreBase, TableSchema, TxnAbort, TxnErrors, WriteTxn
from proconsul.server.state.ca import CAConfig, CARoot, CAStore
from proconsul.server.state.config_entries import ConfigEntriesStore, ConfigEntry
from proconsul.server.state.catalog import DEFAULT_WEIGHTS, HEALTH_STATES, CatalogStore, HealthCheck, Node, ServiceInstance
from proconsul.server.state.kv import KV_REAPED, DirEntry, KVStore
from proconsul.server.state.events import EVENT_BUFFER, EventsStore, UserEvent
from proconsul.server.state.members import SERF_CHECK_ID, Member, MembersStore
from proconsul.server.state.queries import PreparedQuery, QueriesStore
from proconsul.server.state.sessions import BEHAVIORS, MAX_LOCK_DELAY, Session, SessionsStore


class StateStore(KVStore, CatalogStore, MembersStore, SessionsStore, QueriesStore, EventsStore, CAStore, ConfigEntriesStore, ACLStore, StoreBase):
    """Every replicated table with Consul's read and write semantics."""

    PARTS = ("kv", "catalog", "members", "sessions", "queries", "events", "ca", "config_entries", "acl")


SCHEMA: dict[str, TableSchema] = StateStore.schema()

__all__ = [
    "ACLIdentity",
    "ACLPolicy",
    "ACLRole",
    "ACLStore",
    "ACLToken",
    "RoleView",
    "TokenView",
    "BASE_SCHEMA",
    "CAConfig",
    "CARoot",
    "CAStore",
    "DEFAULT_WEIGHTS",
    "HEALTH_STATES",
    "KV_REAPED",
    "SCHEMA",
    "SERF_CHECK_ID",
    "ConfigEntriesStore",
    "ConfigEntry",
    "DirEntry",
    "EVENT_BUFFER",
    "EventsStore",
    "HealthCheck",
    "Member",
    "Node",
    "PreparedQuery",
    "ServiceInstance",
    "Session",
    "BEHAVIORS",
    "MAX_LOCK_DELAY",
    "StateStore",
    "TableSchema",
    "TxnAbort",
    "TxnErrors",
    "UserEvent",
    "WriteTxn",
]
