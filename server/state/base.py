"""The state store's machinery: write transactions, the index table, watch channels, dump and load.

Invariants (the FSM relies on them, as hashicorp/raft's FSM contract does):

* Writes happen on one thread only (the event loop's, where Raft applies) and take the Raft
  index of the entry that carries them; no clock, randomness or I/O here, so
  every replica that applies the same log holds the same rows.
* Every row carries ``create_index``/``modify_index``; the ``index`` table keeps
  each table's last writing index (and Consul's per-service "service.<name>"
  entries). Reads return ``(index, result)`` with the max index they touched and
  never 0, so blocking queries can wait on it.
* A write either applies whole or not at all: an undo log rolls back a failed
  transaction before anyone can read, and after it commits the channels of
  exactly what it changed fire through the ``notify`` hook.
* Readers on other threads take the lock only for the read; rows are immutable
  tuples, so a reader may keep what it got after releasing the lock.
* Tables are declared by the parts (``kv``, ``catalog``, ...) with a schema that
  snapshots, restore and the replica checksum share.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from proconsul.server.watch import WatchChannel, WatchSet, fire_all

MISSING = object()


@dataclass(frozen=True)
class TableSchema:
    """A replicated table: its columns (name, kind) in row order; the first ``pk`` columns are the key.

    Kinds: text, int, u64 (unsigned 64-bit, kept as text in SQLite), bool, blob, json.
    """

    columns: tuple[tuple[str, str], ...]
    pk: int = 1

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]


BASE_SCHEMA: dict[str, TableSchema] = {"index": TableSchema((("name", "text"), ("idx", "int")))}


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
    kv_keys: set[str] = field(default_factory=set)
    watch_keys: set[str] = field(default_factory=set)
    # Keys released by session invalidations, with their lock delay (seconds), reported after commit.
    lock_delays: list[tuple[list[str], float]] = field(default_factory=list)


def restore_slot(table: Any, key: Any, old: Any) -> None:
    """Undo one assignment: put back ``old``, or remove the key when it was missing."""
    if old is MISSING:
        table.pop(key, None)
    else:
        table[key] = old


class StoreBase:
    """Machinery shared by the parts; ``StateStore`` names the parts in ``PARTS``."""

    PARTS: tuple[str, ...] = ()

    @classmethod
    def schema(cls) -> dict[str, TableSchema]:
        """Every replicated table, by name."""
        out = dict(BASE_SCHEMA)
        for part in cls.PARTS:
            out.update(getattr(cls, f"{part.upper()}_SCHEMA"))
        return out

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index: dict[str, int] = {}
        self._watches: dict[str, WatchChannel] = {}
        self._abandon = WatchChannel()
        # Called with the channels a commit fired; a server points it at its event loop.
        self.notify: Callable[[list[WatchChannel]], None] = fire_all
        for part in self.PARTS:
            getattr(self, f"_{part}_init")()
        # Asked on every commit: bound once here rather than looked up by name per write.
        self._fired_hooks = [getattr(self, f"_{part}_fired") for part in self.PARTS]

    # ---------------------------------------------------------------- indexes

    def _max_index(self, *tables: str) -> int:
        return max((self._index.get(t, 0) for t in tables), default=0)

    def max_index(self) -> int:
        """The highest index any table has reached (Consul's LatestIndex)."""
        with self._lock:
            return max(self._index.values(), default=0) or 1

    def _set_index_txn(self, tx: WriteTxn, name: str) -> None:
        old = self._index.get(name, MISSING)
        if old == tx.index:
            return
        self._index[name] = tx.index
        tx.undo.append(lambda: restore_slot(self._index, name, old))

    def _drop_index_txn(self, tx: WriteTxn, name: str) -> None:
        old = self._index.pop(name, MISSING)
        if old is not MISSING:
            tx.undo.append(lambda: restore_slot(self._index, name, old))

    # ---------------------------------------------------------------- watches

    @property
    def abandon_channel(self) -> WatchChannel:
        """Fires when a restore replaces the tables: blocked readers must re-read at once."""
        return self._abandon

    def _watch(self, ws: WatchSet | None, *keys: str) -> None:
        """Add the channels for these watch keys (and the abandon channel) to ``ws``."""
        if ws is None:
            return
        for key in keys:
            ch = self._watches.get(key)
            if ch is None:
                ch = self._watches[key] = WatchChannel()
            ws.add(ch)
        ws.add(self._abandon)

    def _add_channel(self, ws: WatchSet | None, ch: WatchChannel) -> None:
        if ws is not None:
            ws.add(ch)
            ws.add(self._abandon)

    # ---------------------------------------------------------------- transactions

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
            fired = [ch for key in tx.watch_keys if (ch := self._watches.pop(key, None)) is not None]
            for hook in self._fired_hooks:
                fired += hook(tx)
        if fired:
            self.notify(fired)
        for keys, delay in tx.lock_delays:
            self.on_lock_delay(keys, delay)
        return result

    # ---------------------------------------------------------------- snapshot & restore

    def dump(self) -> dict[str, list[tuple]]:
        """Every table as rows in canonical (key) order, for snapshots and checksums."""
        with self._lock:
            return self._dump_locked()

    def _dump_locked(self) -> dict[str, list[tuple]]:
        tables: dict[str, list[tuple]] = {"index": sorted(self._index.items())}
        for part in self.PARTS:
            tables.update(getattr(self, f"_{part}_dump")())
        return tables

    def load(self, tables: dict[str, list[tuple]]) -> None:
        """Replace every table with snapshot rows as they were (pysyncobj's dump load)."""
        self._replace(tables, bump_to=0)

    def restore(self, index: int, tables: dict[str, list[tuple]]) -> None:
        """A user restore (/v1/snapshot PUT): replace all tables and lift every table index to ``index``."""
        self._replace(tables, bump_to=index)

    def _replace(self, tables: dict[str, list[tuple]], bump_to: int) -> None:
        index = {name: int(i) for name, i in tables.get("index", ())}
        if bump_to:
            # Every table's index (and every per-result entry the snapshot has) moves past the
            # restore, so no reader sees an index go backwards.
            for name in {*index, *self.schema()}:
                if name != "index":
                    index[name] = max(index.get(name, 0), bump_to)
        # Parts build their new structures outside the lock; the swap is one step.
        swaps = [getattr(self, f"_{part}_load")(tables) for part in self.PARTS]
        with self._lock:
            self._index = index
            for swap in swaps:
                swap()
            fired = list(self._watches.values())
            self._watches = {}
            for part in self.PARTS:
                fired += getattr(self, f"_{part}_abandon")()
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
                digest.update(json.dumps([name, *_jsonable(row)], separators=(",", ":"), sort_keys=True).encode())
                digest.update(b"\n")
        return top, digest.hexdigest()


def _jsonable(row: Iterable[Any]) -> list:
    return [v.hex() if isinstance(v, bytes) else v for v in row]
