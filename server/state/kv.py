"""The KV part of the state store: Consul's KV table, tombstones, and KV transactions.

Deletes leave tombstones until the leader reaps them through Raft, and reaping
raises a floor, so a list index a reader saw never goes backwards. Watches are
per key and per prefix: a write fires its key's channel and every watched
prefix of it, nothing else.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, NamedTuple

from sortedcontainers import SortedDict

from proconsul.server.errors import StoreError
from proconsul.server.state.base import MISSING, TableSchema, TxnAbort, TxnErrors, WriteTxn, restore_slot
from proconsul.server.watch import WatchChannel, WatchSet


class DirEntry(NamedTuple):
    """A KV row, Consul's structs.DirEntry."""

    key: str
    value: bytes | None = None
    flags: int = 0
    lock_index: int = 0
    session: str = ""
    create_index: int = 0
    modify_index: int = 0


# Index-table name under which the highest reaped tombstone index is kept.
KV_REAPED = "kvs.reaped"
_TXN_WRITES = frozenset({"set", "cas", "lock", "unlock", "delete", "delete-cas", "delete-tree"})


class KVStore:
    """Consul's KV semantics; mixed into StateStore (see base.StoreBase for the machinery)."""

    KV_SCHEMA = {
        "kvs": TableSchema(
            (
                ("key", "text"),
                ("value", "blob"),
                ("flags", "u64"),
                ("lock_index", "int"),
                ("session", "text"),
                ("create_index", "int"),
                ("modify_index", "int"),
            )
        ),
        "tombstones": TableSchema((("key", "text"), ("idx", "int"))),
    }

    # Provided by StoreBase / other parts.
    _lock: Any
    _index: dict[str, int]
    _sessions: dict[str, Any]
    _max_index: Callable[..., int]
    _set_index_txn: Callable[[WriteTxn, str], None]
    _write: Callable[..., Any]
    _add_channel: Callable[[WatchSet | None, WatchChannel], None]

    def _kv_init(self) -> None:
        self._kv: SortedDict = SortedDict()  # key -> DirEntry
        self._tombstones: SortedDict = SortedDict()  # key -> index
        self._kv_key_watches: dict[str, WatchChannel] = {}
        self._kv_prefix_watches: dict[str, WatchChannel] = {}
        # session ID -> keys it holds, so invalidating a session finds its locks without a scan
        self._kv_by_session: dict[str, set[str]] = {}
        # Called with the index of every commit that made tombstones (the leader's reaper).
        self.on_tombstone: Callable[[int], None] = lambda index: None

    def _kv_dump(self) -> dict[str, list[tuple]]:
        return {"kvs": [tuple(e) for e in self._kv.values()], "tombstones": list(self._tombstones.items())}

    def _kv_load(self, tables: dict[str, list[tuple]]) -> Callable[[], None]:
        kv = SortedDict((row[0], DirEntry(*row)) for row in tables.get("kvs", ()))
        tombstones = SortedDict((k, int(i)) for k, i in tables.get("tombstones", ()))

        by_session: dict[str, set[str]] = {}
        for key, entry in kv.items():
            if entry.session:
                by_session.setdefault(entry.session, set()).add(key)

        def swap() -> None:
            self._kv, self._tombstones, self._kv_by_session = kv, tombstones, by_session

        return swap

    def _kv_abandon(self) -> list[WatchChannel]:
        fired = list(self._kv_key_watches.values()) + list(self._kv_prefix_watches.values())
        self._kv_key_watches, self._kv_prefix_watches = {}, {}
        return fired

    def _kv_fired(self, tx: WriteTxn) -> list[WatchChannel]:
        """The channels a commit that changed ``tx.kv_keys`` fires: each key's, and every watched prefix of one."""
        fired: list[WatchChannel] = []
        key_watches, prefix_watches = self._kv_key_watches, self._kv_prefix_watches
        for key in tx.kv_keys:
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

    def _kv_key_watch(self, key: str) -> WatchChannel:
        ch = self._kv_key_watches.get(key)
        if ch is None:
            ch = self._kv_key_watches[key] = WatchChannel()
        return ch

    def _kv_prefix_watch(self, prefix: str) -> WatchChannel:
        ch = self._kv_prefix_watches.get(prefix)
        if ch is None:
            ch = self._kv_prefix_watches[prefix] = WatchChannel()
        return ch

    # ------------------------------------------------------------- rows

    def _kv_put_row_txn(self, tx: WriteTxn, entry: DirEntry) -> None:
        old = self._kv.get(entry.key, MISSING)
        self._kv[entry.key] = entry
        tx.undo.append(lambda: restore_slot(self._kv, entry.key, old))
        tx.kv_keys.add(entry.key)
        self._set_index_txn(tx, "kvs")
        old_session = old.session if old is not MISSING else ""
        if old_session != entry.session:
            self._kv_session_index_txn(tx, entry.key, old_session, entry.session)

    def _kv_session_index_txn(self, tx: WriteTxn, key: str, old: str, new: str) -> None:
        """Keep session -> held keys current (undoably)."""
        index = self._kv_by_session

        def move(src: str, dst: str) -> None:
            if src:
                held = index.get(src)
                if held is not None:
                    held.discard(key)
                    if not held:
                        del index[src]
            if dst:
                index.setdefault(dst, set()).add(key)

        move(old, new)
        tx.undo.append(lambda: move(new, old))

    def _kv_tombstone_txn(self, tx: WriteTxn, key: str) -> None:
        old = self._tombstones.get(key, MISSING)
        self._tombstones[key] = tx.index
        tx.undo.append(lambda: restore_slot(self._tombstones, key, old))
        self._set_index_txn(tx, "tombstones")

    def _kv_remove_row_txn(self, tx: WriteTxn, key: str) -> None:
        old = self._kv.pop(key)
        tx.undo.append(lambda: restore_slot(self._kv, key, old))
        tx.kv_keys.add(key)
        if old.session:
            self._kv_session_index_txn(tx, key, old.session, "")

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
                tx.undo.append(lambda key=key, old=old: restore_slot(self._tombstones, key, old))
            if floor > self._index.get(KV_REAPED, 0):
                old_floor = self._index.get(KV_REAPED, MISSING)
                self._index[KV_REAPED] = floor
                tx.undo.append(lambda: restore_slot(self._index, KV_REAPED, old_floor))
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
                self._add_channel(ws, self._kv_key_watch(key))
            entry = self._kv.get(key)
            if entry is not None:
                return entry.modify_index, entry
            return self._kv_table_index(), None

    def kv_list(self, prefix: str, ws: WatchSet | None = None) -> tuple[int, list[DirEntry]]:
        """Every entry under a prefix, in key order (Consul's KVS.List)."""
        with self._lock:
            if ws is not None:
                self._add_channel(ws, self._kv_prefix_watch(prefix))
            kv = self._kv
            entries = [kv[k] for k in self._kv_prefix_keys(prefix)]
            top = max((e.modify_index for e in entries), default=0)
            return self._kv_list_index(prefix, top), entries

    def kv_keys(self, prefix: str, separator: str = "", ws: WatchSet | None = None) -> tuple[int, list[str]]:
        """Keys under a prefix, rolled up at the first separator after it (Consul's KVS.ListKeys)."""
        with self._lock:
            if ws is not None:
                self._add_channel(ws, self._kv_prefix_watch(prefix))
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
