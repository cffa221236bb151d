"""The state store: proconsul's replicated tables, in memory.

Invariants (the FSM relies on them, as hashicorp/raft's FSM contract does):

* Writes happen on one thread only (pysyncobj's apply thread) and take the Raft
  index of the entry that carries them; no clock, randomness or I/O here, so
  every replica that applies the same log holds the same rows.
* Every row carries ``create_index``/``modify_index``; the ``index`` table keeps
  each table's last writing index. Reads return ``(index, result)`` with the
  max index they touched and never 0, so blocking queries can wait on it.
* Deletes leave tombstones until the leader reaps them through Raft, and reaping
  raises a floor, so an index a reader saw never goes backwards.
* A write either applies whole or not at all (an undo log rolls back a failed
  transaction before anyone can read), and after it commits fires the watch
  channels of exactly what it changed through the ``notify`` hook.
* Readers on other threads take the lock only for the read; rows are immutable
  tuples, so a reader may keep what it got after releasing the lock.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from sortedcontainers import SortedDict

from proconsul.server.errors import StoreError
from proconsul.server.watch import WatchChannel, WatchSet, fire_all


class DirEntry(NamedTuple):
    """A KV row, Consul's structs.DirEntry."""

    key: str
    value: bytes | None = None
    flags: int = 0
    lock_index: int = 0
    session: str = ""
    create_index: int = 0
    modify_index: int = 0


# Table layouts, shared by snapshots (one SQLite table each), restore and the
# replica checksum. Column kinds: text, int, blob.
SCHEMA: dict[str, tuple[tuple[str, str], ...]] = {
    "index": (("name", "text"), ("idx", "int")),
    "kvs": (
        ("key", "text"),
        ("value", "blob"),
        ("flags", "int"),
        ("lock_index", "int"),
        ("session", "text"),
        ("create_index", "int"),
        ("modify_index", "int"),
    ),
    "tombstones": (("key", "text"), ("idx", "int")),
}

# Index-table name under which the highest reaped tombstone index is kept.
KV_REAPED = "kvs.reaped"

_MISSING = object()
_TXN_WRITES = frozenset({"set", "cas", "lock", "unlock", "delete", "delete-cas", "delete-tree"})


class TxnAbort(Exception):
    """One transaction op failed; carries Consul's error text."""


class TxnErrors(Exception):
    """A transaction rolled back; ``errors`` holds Consul's (OpIndex, What) pairs."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        super().__init__("; ".join(what for _, what in errors))
        self.errors = errors


@dataclass
class WriteTxn:
    """One write transaction: the undo log and what to fire on commit."""

    index: int
    undo: list[Callable[[], None]] = field(default_factory=list)
    changed_keys: set[str] = field(default_factory=set)


class StateStore:
    """In-memory tables with Consul's read and write semantics; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kv: SortedDict = SortedDict()  # key -> DirEntry
        self._tombstones: SortedDict = SortedDict()  # key -> index
        self._index: dict[str, int] = {}
        # Sessions arrive with their own issue; locks already check against this table.
        self._sessions: dict[str, Any] = {}
        self._kv_key_watches: dict[str, WatchChannel] = {}
        self._kv_prefix_watches: dict[str, WatchChannel] = {}
        self._abandon = WatchChannel()
        # Called with the channels a commit fired; a server points it at its event loop.
        self.notify: Callable[[list[WatchChannel]], None] = fire_all
        # Called with the index of every commit that made tombstones (the leader's reaper).
        self.on_tombstone: Callable[[int], None] = lambda index: None

    # ------------------------------------------------------------------ indexes

    def _max_index(self, *tables: str) -> int:
        return max((self._index.get(t, 0) for t in tables), default=0)

    def max_index(self) -> int:
        """The highest index any table has reached (Consul's LatestIndex)."""
        with self._lock:
            return max(self._index.values(), default=0) or 1

    # ------------------------------------------------------------------ watches

    @property
    def abandon_channel(self) -> WatchChannel:
        """Fires when a restore replaces the tables: blocked readers must re-read at once."""
        return self._abandon

    def _key_watch(self, key: str) -> WatchChannel:
        ch = self._kv_key_watches.get(key)
        if ch is None:
            ch = self._kv_key_watches[key] = WatchChannel()
        return ch

    def _prefix_watch(self, prefix: str) -> WatchChannel:
        ch = self._kv_prefix_watches.get(prefix)
        if ch is None:
            ch = self._kv_prefix_watches[prefix] = WatchChannel()
        return ch

    def _watch(self, ws: WatchSet | None, ch: WatchChannel) -> None:
        if ws is not None:
            ws.add(ch)
            ws.add(self._abandon)

    def _collect_fired(self, keys: Iterable[str]) -> list[WatchChannel]:
        fired: list[WatchChannel] = []
        key_watches, prefix_watches = self._kv_key_watches, self._kv_prefix_watches
        for key in keys:
            ch = key_watches.pop(key, None)
            if ch is not None:
                fired.append(ch)
            if not prefix_watches:
                continue
            # Whichever is shorter: the watched prefixes, or the prefixes of this key.
            if len(prefix_watches) <= len(key) + 1:
                hits = [p for p in prefix_watches if key.startswith(p)]
            else:
                hits = [key[:i] for i in range(len(key) + 1) if key[:i] in prefix_watches]
            for p in hits:
                fired.append(prefix_watches.pop(p))
        return fired

    # -------------------------------------------------------------- transactions

    def _commit(self, tx: WriteTxn) -> None:
        fired = self._collect_fired(tx.changed_keys)
        if fired:
            self.notify(fired)

    def _write(self, index: int, body: Callable[[WriteTxn], Any]) -> Any:
        """Run ``body`` as one all-or-nothing write at ``index``."""
        tx = WriteTxn(index)
        with self._lock:
            try:
                result = body(tx)
            except BaseException:
                for undo in reversed(tx.undo):
                    undo()
                raise
            self._commit(tx)
        return result

    def _set_index_txn(self, tx: WriteTxn, table: str) -> None:
        old = self._index.get(table, _MISSING)
        if old == tx.index:
            return
        self._index[table] = tx.index
        tx.undo.append(lambda: self._restore_slot(self._index, table, old))

    @staticmethod
    def _restore_slot(table: Any, key: Any, old: Any) -> None:
        if old is _MISSING:
            table.pop(key, None)
        else:
            table[key] = old

    def _kv_put_row_txn(self, tx: WriteTxn, entry: DirEntry) -> None:
        old = self._kv.get(entry.key, _MISSING)
        self._kv[entry.key] = entry
        tx.undo.append(lambda: self._restore_slot(self._kv, entry.key, old))
        tx.changed_keys.add(entry.key)
        self._set_index_txn(tx, "kvs")

    def _kv_tombstone_txn(self, tx: WriteTxn, key: str) -> None:
        old = self._tombstones.get(key, _MISSING)
        self._tombstones[key] = tx.index
        tx.undo.append(lambda: self._restore_slot(self._tombstones, key, old))
        self._set_index_txn(tx, "tombstones")

    def _kv_remove_row_txn(self, tx: WriteTxn, key: str) -> None:
        old = self._kv.pop(key)
        tx.undo.append(lambda: self._restore_slot(self._kv, key, old))
        tx.changed_keys.add(key)

    # ------------------------------------------------------------- KV writes

    def kv_set_txn(self, tx: WriteTxn, entry: DirEntry, update_session: bool = False) -> DirEntry:
        """Write a key, keeping its session and lock index unless told otherwise (Consul's kvsSetTxn)."""
        existing = self._kv.get(entry.key)
        if existing is not None:
            create_index = existing.create_index
            session = entry.session if update_session else existing.session
            lock_index = entry.lock_index if update_session else existing.lock_index
        else:
            create_index = tx.index
            session = entry.session if update_session else ""
            lock_index = entry.lock_index if update_session else 0
        if (
            existing is not None
            and existing.value == entry.value
            and existing.flags == entry.flags
            and existing.session == session
            and existing.lock_index == lock_index
        ):
            # Unchanged: Consul skips the write, so the index does not move.
            return existing
        row = DirEntry(entry.key, entry.value, entry.flags, lock_index, session, create_index, tx.index)
        self._kv_put_row_txn(tx, row)
        return row

    def kv_set_cas_txn(self, tx: WriteTxn, entry: DirEntry) -> DirEntry | None:
        """Check-and-set on ``entry.modify_index``: 0 means create only (Consul's kvsSetCASTxn)."""
        existing = self._kv.get(entry.key)
        if entry.modify_index == 0 and existing is not None:
            return None
        if entry.modify_index != 0 and (existing is None or existing.modify_index != entry.modify_index):
            return None
        return self.kv_set_txn(tx, entry)

    def kv_lock_txn(self, tx: WriteTxn, entry: DirEntry) -> DirEntry | None:
        """Acquire a lock on a key for a session (Consul's kvsLockTxn)."""
        if not entry.session:
            raise StoreError("missing session")
        if entry.session not in self._sessions:
            raise StoreError(f'invalid session "{entry.session}"')
        existing = self._kv.get(entry.key)
        lock_index = 1
        if existing is not None:
            if existing.session == entry.session:
                lock_index = existing.lock_index
            elif existing.session:
                return None
            else:
                lock_index = existing.lock_index + 1
        return self.kv_set_txn(tx, entry._replace(lock_index=lock_index), update_session=True)

    def kv_unlock_txn(self, tx: WriteTxn, entry: DirEntry) -> DirEntry | None:
        """Release a lock held by the session (Consul's kvsUnlockTxn)."""
        if not entry.session:
            raise StoreError("missing session")
        existing = self._kv.get(entry.key)
        if existing is None or existing.session != entry.session:
            return None
        return self.kv_set_txn(tx, entry._replace(session="", lock_index=existing.lock_index), update_session=True)

    def kv_delete_txn(self, tx: WriteTxn, key: str) -> None:
        """Delete a key, leaving a tombstone (Consul's kvsDeleteTxn)."""
        if key not in self._kv:
            return
        self._kv_remove_row_txn(tx, key)
        self._kv_tombstone_txn(tx, key)
        self._set_index_txn(tx, "kvs")

    def kv_delete_cas_txn(self, tx: WriteTxn, key: str, cas_index: int) -> bool:
        """Delete if ModifyIndex matches; a missing key counts as deleted (Consul's kvsDeleteCASTxn)."""
        existing = self._kv.get(key)
        if existing is None:
            return True
        if existing.modify_index != cas_index:
            return False
        self.kv_delete_txn(tx, key)
        return True

    def kv_delete_tree_txn(self, tx: WriteTxn, prefix: str) -> None:
        """Delete every key under a prefix with one tombstone for the prefix (Consul's kvsDeleteTreeTxn)."""
        keys = list(self._kv_prefix_keys(prefix))
        if not keys:
            return
        for key in keys:
            self._kv_remove_row_txn(tx, key)
        if prefix:
            self._kv_tombstone_txn(tx, prefix)
        self._set_index_txn(tx, "kvs")

    def kv_set(self, index: int, entry: DirEntry) -> bool:
        """Unconditional set."""
        self._write(index, lambda tx: self.kv_set_txn(tx, entry))
        return True

    def kv_set_cas(self, index: int, entry: DirEntry) -> bool:
        return self._write(index, lambda tx: self.kv_set_cas_txn(tx, entry)) is not None

    def kv_lock(self, index: int, entry: DirEntry) -> bool:
        return self._write(index, lambda tx: self.kv_lock_txn(tx, entry)) is not None

    def kv_unlock(self, index: int, entry: DirEntry) -> bool:
        return self._write(index, lambda tx: self.kv_unlock_txn(tx, entry)) is not None

    def kv_delete(self, index: int, key: str) -> bool:
        self._write(index, lambda tx: self.kv_delete_txn(tx, key))
        self._hint_tombstone(index)
        return True

    def kv_delete_cas(self, index: int, key: str, cas_index: int) -> bool:
        ok = self._write(index, lambda tx: self.kv_delete_cas_txn(tx, key, cas_index))
        self._hint_tombstone(index)
        return ok

    def kv_delete_tree(self, index: int, prefix: str) -> bool:
        self._write(index, lambda tx: self.kv_delete_tree_txn(tx, prefix))
        self._hint_tombstone(index)
        return True

    def _hint_tombstone(self, index: int) -> None:
        if self._index.get("tombstones") == index:
            self.on_tombstone(index)

    def kv_reap_tombstones(self, index: int, reap_index: int) -> None:
        """Drop tombstones at or below ``reap_index`` and raise the floor that keeps list indexes monotonic."""

        def body(tx: WriteTxn) -> None:
            doomed = [k for k, idx in self._tombstones.items() if idx <= reap_index]
            floor = max((self._tombstones[k] for k in doomed), default=0)
            for key in doomed:
                old = self._tombstones.pop(key)
                tx.undo.append(lambda key=key, old=old: self._restore_slot(self._tombstones, key, old))
            if floor > self._index.get(KV_REAPED, 0):
                old_floor = self._index.get(KV_REAPED, _MISSING)
                self._index[KV_REAPED] = floor
                tx.undo.append(lambda: self._restore_slot(self._index, KV_REAPED, old_floor))
            if doomed:
                self._set_index_txn(tx, "tombstones")

        self._write(index, body)

    def tombstone_indexes(self) -> list[int]:
        """Indexes of live tombstones (the leader's reaper seeds itself from these)."""
        with self._lock:
            return sorted(set(self._tombstones.values()))

    # ------------------------------------------------------------- KV reads

    def _kv_prefix_keys(self, prefix: str) -> Iterator[str]:
        for key in self._kv.irange(minimum=prefix):
            if not key.startswith(prefix):
                break
            yield key

    def _kv_table_index(self) -> int:
        return self._max_index("kvs", "tombstones") or 1

    def _kv_list_index(self, prefix: str, entries_index: int) -> int:
        """Consul's kvsListTxn index: entries and tombstones under the prefix, else the table's."""
        if prefix:
            for key in self._tombstones.irange(minimum=prefix):
                if not key.startswith(prefix):
                    break
                entries_index = max(entries_index, self._tombstones[key])
        else:
            entries_index = 0
        if entries_index:
            return max(entries_index, self._index.get(KV_REAPED, 0))
        return self._kv_table_index()

    def kv_get(self, key: str, ws: WatchSet | None = None) -> tuple[int, DirEntry | None]:
        """One key: its ModifyIndex when present, else the table index (Consul's KVS.Get)."""
        with self._lock:
            if ws is not None:
                self._watch(ws, self._key_watch(key))
            entry = self._kv.get(key)
            if entry is not None:
                return entry.modify_index, entry
            return self._kv_table_index(), None

    def kv_list(self, prefix: str, ws: WatchSet | None = None) -> tuple[int, list[DirEntry]]:
        """Every entry under a prefix, in key order (Consul's KVS.List)."""
        with self._lock:
            if ws is not None:
                self._watch(ws, self._prefix_watch(prefix))
            kv = self._kv
            entries = [kv[k] for k in self._kv_prefix_keys(prefix)]
            top = max((e.modify_index for e in entries), default=0)
            return self._kv_list_index(prefix, top), entries

    def kv_keys(self, prefix: str, separator: str = "", ws: WatchSet | None = None) -> tuple[int, list[str]]:
        """Keys under a prefix, rolled up at the first separator after it (Consul's KVS.ListKeys)."""
        with self._lock:
            if ws is not None:
                self._watch(ws, self._prefix_watch(prefix))
            keys: list[str] = []
            top = 0
            plen = len(prefix)
            for key in self._kv_prefix_keys(prefix):
                top = max(top, self._kv[key].modify_index)
                if separator:
                    cut = key.find(separator, plen)
                    if cut >= 0:
                        key = key[: cut + len(separator)]
                        if keys and keys[-1] == key:
                            continue
                keys.append(key)
            return self._kv_list_index(prefix, top), keys

    # --------------------------------------------------------------- txn

    def txn(self, index: int, ops: list[Any]) -> list[Any]:
        """Apply KV transaction ops all-or-nothing (Consul's txnDispatch).

        Like Consul, a failing op does not stop the ops after it: every failure
        is collected, then the whole transaction rolls back and ``TxnErrors``
        carries the (op index, reason) pairs.
        """

        def body(tx: WriteTxn) -> list[Any]:
            results, errors = self._txn_run(tx, ops)
            if errors:
                raise TxnErrors(errors)
            return results

        results = self._write(index, body)
        self._hint_tombstone(index)
        return results

    def txn_read(self, ops: list[Any]) -> tuple[list[Any], list[tuple[int, str]]]:
        """Read-only transaction: gets and checks under one lock (Consul's Txn.Read)."""
        with self._lock:
            return self._txn_run(None, ops)

    def _txn_run(self, tx: WriteTxn | None, ops: list[Any]) -> tuple[list[Any], list[tuple[int, str]]]:
        results: list[Any] = []
        errors: list[tuple[int, str]] = []
        for i, op in enumerate(ops):
            try:
                results.extend(self._txn_kv_op(tx, op))
            except (TxnAbort, StoreError) as err:
                errors.append((i, str(err)))
        return results, errors

    def _txn_kv_op(self, tx: WriteTxn | None, op: Any) -> list[DirEntry]:
        verb, key = op.verb, op.key
        if tx is None and verb in _TXN_WRITES:
            raise TxnAbort(f'"{verb}" is a write and cannot run in a read-only transaction')
        entry = DirEntry(key, op.value, op.flags, 0, op.session, 0, op.index)
        result: DirEntry | None = None
        if verb == "set":
            result = self.kv_set_txn(tx, entry)
        elif verb == "cas":
            result = self.kv_set_cas_txn(tx, entry)
            if result is None:
                raise TxnAbort(f'failed to set key "{key}", index is stale')
        elif verb == "lock":
            result = self.kv_lock_txn(tx, entry)
            if result is None:
                raise TxnAbort(f'failed to lock key "{key}", lock is already held')
        elif verb == "unlock":
            result = self.kv_unlock_txn(tx, entry)
            if result is None:
                raise TxnAbort(f'failed to unlock key "{key}", lock isn\'t held, or is held by another session')
        elif verb == "delete":
            self.kv_delete_txn(tx, key)
        elif verb == "delete-cas":
            if not self.kv_delete_cas_txn(tx, key, op.index):
                raise TxnAbort(f'failed to delete key "{key}", index is stale')
        elif verb == "delete-tree":
            self.kv_delete_tree_txn(tx, key)
        elif verb == "get":
            result = self._kv.get(key)
            if result is None:
                raise TxnAbort(f'key "{key}" doesn\'t exist')
            return [result]
        elif verb == "get-tree":
            return [self._kv[k] for k in self._kv_prefix_keys(key)]
        elif verb == "check-index":
            result = self._kv.get(key)
            if result is None:
                raise TxnAbort(f'failed to check index, key "{key}" doesn\'t exist')
            if result.modify_index != op.index:
                raise TxnAbort(
                    f'failed index check for key "{key}", current modify index {result.modify_index} != {op.index}'
                )
        elif verb == "check-session":
            result = self._kv.get(key)
            if result is None:
                raise TxnAbort(f'failed to check session, key "{key}" doesn\'t exist')
            if result.session != op.session:
                raise TxnAbort(
                    f'failed session check for key "{key}", current session "{result.session}" != "{op.session}"'
                )
        elif verb == "check-not-exists":
            if key in self._kv:
                raise TxnAbort(f'key "{key}" exists')
        else:
            raise TxnAbort(f'unknown KV verb "{verb}"')
        # Writes and checks return the entry without its value, as Consul does.
        return [result._replace(value=None)] if result is not None else []

    # ----------------------------------------------------- snapshot & restore

    def dump(self) -> dict[str, list[tuple]]:
        """Every table as rows in canonical (key) order, for snapshots and checksums."""
        with self._lock:
            return self._dump_locked()

    def _dump_locked(self) -> dict[str, list[tuple]]:
        return {
            "index": sorted(self._index.items()),
            "kvs": [tuple(e) for e in self._kv.values()],
            "tombstones": list(self._tombstones.items()),
        }

    def load(self, tables: dict[str, list[tuple]]) -> None:
        """Replace every table with snapshot rows as they were (pysyncobj's dump load)."""
        self._replace(tables, bump_to=0)

    def restore(self, index: int, tables: dict[str, list[tuple]]) -> None:
        """A user restore (/v1/snapshot PUT): replace all tables and lift every table index to ``index``."""
        self._replace(tables, bump_to=index)

    def _replace(self, tables: dict[str, list[tuple]], bump_to: int) -> None:
        kv = SortedDict((row[0], DirEntry(*row)) for row in tables.get("kvs", ()))
        tombstones = SortedDict((k, int(i)) for k, i in tables.get("tombstones", ()))
        index = {name: int(i) for name, i in tables.get("index", ())}
        if bump_to:
            for table in ("kvs", "tombstones"):
                index[table] = max(index.get(table, 0), bump_to)
        with self._lock:
            self._kv, self._tombstones, self._index = kv, tombstones, index
            fired = list(self._kv_key_watches.values()) + list(self._kv_prefix_watches.values())
            self._kv_key_watches, self._kv_prefix_watches = {}, {}
            fired.append(self._abandon)
            self._abandon = WatchChannel()
        self.notify(fired)

    def checksum(self) -> tuple[int, str]:
        """sha256 over every table in canonical order, with the max index it covers."""
        with self._lock:
            tables = self._dump_locked()
            top = max(self._index.values(), default=0)
        digest = hashlib.sha256()
        for name in sorted(tables):
            for row in tables[name]:
                digest.update(json.dumps([name, *_jsonable(row)], separators=(",", ":")).encode())
                digest.update(b"\n")
        return top, digest.hexdigest()


def _jsonable(row: tuple) -> list:
    return [v.hex() if isinstance(v, bytes) else v for v in row]
