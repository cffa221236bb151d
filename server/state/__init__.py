"""The state store: proconsul's replicated tables, in memory (``proconsul.server.state``).

One import boundary, parts behind it: ``base`` (transactions, indexes, watches,
dump/load), ``kv`` (KV and tombstones), ``catalog`` (nodes, services, checks),
``members`` (agents' liveness), ``sessions`` (sessions and lock invalidation).
No Raft, clock or I/O anywhere in here; see ``base`` for the invariants.
"""

from __future__ import annotations

from proconsul.server.state.base import BASE_SCHEMA, StoreBase, TableSchema, TxnAbort, TxnErrors, WriteTxn
from proconsul.server.state.catalog import DEFAULT_WEIGHTS, HEALTH_STATES, CatalogStore, HealthCheck, Node, ServiceInstance
from proconsul.server.state.kv import KV_REAPED, DirEntry, KVStore
from proconsul.server.state.members import SERF_CHECK_ID, Member, MembersStore
from proconsul.server.state.sessions import BEHAVIORS, MAX_LOCK_DELAY, Session, SessionsStore


class StateStore(KVStore, CatalogStore, MembersStore, SessionsStore, StoreBase):
    """Every replicated table with Consul's read and write semantics."""

    PARTS = ("kv", "catalog", "members", "sessions")


SCHEMA: dict[str, TableSchema] = StateStore.schema()

__all__ = [
    "BASE_SCHEMA",
    "DEFAULT_WEIGHTS",
    "HEALTH_STATES",
    "KV_REAPED",
    "SCHEMA",
    "SERF_CHECK_ID",
    "DirEntry",
    "HealthCheck",
    "Member",
    "Node",
    "ServiceInstance",
    "Session",
    "BEHAVIORS",
    "MAX_LOCK_DELAY",
    "StateStore",
    "TableSchema",
    "TxnAbort",
    "TxnErrors",
    "WriteTxn",
]
