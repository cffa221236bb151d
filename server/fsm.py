"""The finite state machine: Raft log entries in, state-store writes out.

Contract (hashicorp/raft's FSM, adapted to pysyncobj):

* ``apply(payload, index)`` runs on pysyncobj's thread for every committed entry,
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
    BarrierRequest,
    KVSRequest,
    RestoreRequest,
    TombstoneRequest,
    TxnRequest,
    decode,
)
from proconsul.server.errors import ProconsulError, StoreError
from proconsul.server.snapshot import tables_from_wire
from proconsul.server.state import DirEntry, StateStore, TxnErrors

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
        self._handlers: dict[type, Callable[[Any, int], Any]] = {
            KVSRequest: self.apply_kvs,
            TxnRequest: self.apply_txn,
            TombstoneRequest: self.apply_tombstone,
            RestoreRequest: self.apply_restore,
            BarrierRequest: self.apply_barrier,
        }

    def apply(self, payload: bytes, index: int) -> Any:
        """Apply one committed entry at ``index``; returns the result or the error (see module docstring)."""
        cmd = decode(payload)  # UnknownCommandError propagates on purpose
        try:
            return self._handlers[type(cmd)](cmd, index)
        except ProconsulError as err:
            return err
        except Exception as err:  # a bug in a handler: report it, keep the node alive
            log.exception("apply of %s at index %d failed", type(cmd).__name__, index)
            return StoreError(f"apply failed: {err}")

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
