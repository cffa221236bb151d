"""The sessions part of the state store: Consul's sessions and what invalidating one does.

A session lives on a node and is bound to health checks (by default the node's
``serfHealth``). It is invalidated — in the same Raft entry as its cause — when
it is destroyed (by the API or by the leader's TTL timer), when its node is
deregistered, and when one of its checks goes critical or is removed.
Invalidation releases every key the session holds (``release``: the Session is
cleared, LockIndex kept) or deletes them (``delete``), and reports the released
keys with the session's lock delay through ``on_lock_delay``. The delay's clock
lives outside the store, on the servers' event loop, where the leader enforces it
before proposing a lock: apply itself reads no clock.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from proconsul.server.errors import StoreError
from proconsul.server.state.base import MISSING, TableSchema, WriteTxn, restore_slot
from proconsul.server.watch import WatchChannel, WatchSet

MAX_LOCK_DELAY = 60.0  # seconds (Consul's structs.MaxLockDelay)
BEHAVIORS = ("release", "delete")


class Session(NamedTuple):
    """Consul's structs.Session; ``lock_delay`` in nanoseconds, as Consul's JSON carries it."""

    id: str
    name: str = ""
    node: str = ""
    lock_delay: int = 15_000_000_000
    behavior: str = "release"
    ttl: str = ""
    node_checks: tuple = ()
    service_checks: tuple = ()
    create_index: int = 0
    modify_index: int = 0


class SessionsStore:
    """Mixed into StateStore (see base.StoreBase for the machinery)."""

    SESSIONS_SCHEMA = {
        "sessions": TableSchema(
            (
                ("id", "text"),
                ("name", "text"),
                ("node", "text"),
                ("lock_delay", "int"),
                ("behavior", "text"),
                ("ttl", "text"),
                ("node_checks", "json"),
                ("service_checks", "json"),
                ("create_index", "int"),
                ("modify_index", "int"),
            )
        )
    }

    # Provided by StoreBase and the other parts.
    _lock: Any
    _index: dict[str, int]
    _nodes: dict
    _checks: dict
    _kv: Any
    _kv_by_session: dict[str, set[str]]
    _max_index: Callable[..., int]
    _set_index_txn: Callable[[WriteTxn, str], None]
    _write: Callable[..., Any]
    _watch: Callable[..., None]
    kv_set_txn: Callable[..., Any]
    kv_delete_txn: Callable[..., Any]

    def _sessions_init(self) -> None:
        self._sessions: dict[str, Session] = {}
        # Keys released by an invalidation and their lock delay (seconds); the server stamps the clock.
        self.on_lock_delay: Callable[[list[str], float], None] = lambda keys, delay: None

    def _sessions_dump(self) -> dict[str, list[tuple]]:
        return {"sessions": [tuple(list(v) if isinstance(v, tuple) else v for v in s) for _, s in sorted(self._sessions.items())]}

    def _sessions_load(self, tables: dict[str, list[tuple]]) -> Callable[[], None]:
        sessions = {}
        for r in tables.get("sessions", ()):
            row = Session(*r)._replace(node_checks=tuple(r[6] or ()), service_checks=tuple(r[7] or ()))
            sessions[row.id] = row

        def swap() -> None:
            self._sessions = sessions

        return swap

    def _sessions_abandon(self) -> list[WatchChannel]:
        return []

    def _sessions_fired(self, tx: WriteTxn) -> list[WatchChannel]:
        return []

    # ------------------------------------------------------------- writes

    def session_create(self, index: int, session: Session) -> None:
        """Create a session on a registered node with healthy checks (Consul's sessionCreateTxn)."""

        def body(tx: WriteTxn) -> None:
            if session.behavior not in BEHAVIORS:
                raise StoreError(f"Invalid session behavior {session.behavior!r}")
            if session.id in self._sessions:
                raise StoreError(f"Session {session.id} already exists")
            lnode = session.node.lower()
            node = self._nodes.get(lnode)
            if node is None:
                raise StoreError("Missing node registration")
            for check_id in (*session.node_checks, *session.service_checks):
                check = self._checks.get((lnode, check_id.lower()))
                if check is None:
                    raise StoreError(f"Missing check '{check_id}' registration")
                if check.status == "critical":
                    raise StoreError(f"Check '{check_id}' is in {check.status} state")
            row = session._replace(node=node.node, create_index=tx.index, modify_index=tx.index)
            self._sessions[row.id] = row
            tx.undo.append(lambda: self._sessions.pop(row.id, None))
            self._set_index_txn(tx, "sessions")
            tx.watch_keys.update(("sessions", f"session:{row.id}", f"sessions:node:{lnode}"))

        self._write(index, body)

    def session_destroy(self, index: int, session_id: str) -> None:
        """Destroy (invalidate) a session; a missing one is a no-op, so a timer's late expiry is harmless."""
        self._write(index, lambda tx: self.session_invalidate_txn(tx, session_id))

    def session_invalidate_txn(self, tx: WriteTxn, session_id: str) -> None:
        """Remove a session and release (or delete) every key it holds (Consul's deleteSessionTxn)."""
        session = self._sessions.get(session_id)
        if session is None:
            return
        del self._sessions[session_id]
        tx.undo.append(lambda: restore_slot(self._sessions, session_id, session))
        self._set_index_txn(tx, "sessions")
        tx.watch_keys.update(("sessions", f"session:{session_id}", f"sessions:node:{session.node.lower()}"))
        held = sorted(self._kv_by_session.get(session_id, ()))
        for key in held:
            entry = self._kv[key]
            if session.behavior == "delete":
                self.kv_delete_txn(tx, key)
            else:
                self.kv_set_txn(tx, entry._replace(session=""), update_session=True)
        delay = min(session.lock_delay / 1e9, MAX_LOCK_DELAY)
        if held and delay > 0:
            tx.lock_delays.append((held, delay))
        self.query_delete_session_txn(tx, session_id)  # type: ignore[attr-defined]  # the queries part

    def _invalidate_sessions_txn(self, tx: WriteTxn, lnode: str, check_id: str | None) -> None:
        """Invalidate the node's sessions (all of them, or those bound to one check)."""
        for sid, session in list(self._sessions.items()):
            if session.node.lower() != lnode:
                continue
            if check_id is None or check_id.lower() in {c.lower() for c in (*session.node_checks, *session.service_checks)}:
                self.session_invalidate_txn(tx, sid)

    # ------------------------------------------------------------- reads

    def session_get(self, session_id: str, ws: WatchSet | None = None) -> tuple[int, Session | None]:
        with self._lock:
            self._watch(ws, f"session:{session_id}")
            return self._max_index("sessions") or 1, self._sessions.get(session_id)

    def session_list(self, ws: WatchSet | None = None) -> tuple[int, list[Session]]:
        with self._lock:
            self._watch(ws, "sessions")
            return self._max_index("sessions") or 1, sorted(self._sessions.values(), key=lambda s: s.id)

    def node_sessions(self, node: str, ws: WatchSet | None = None) -> tuple[int, list[Session]]:
        lnode = node.lower()
        with self._lock:
            self._watch(ws, f"sessions:node:{lnode}")
            rows = [s for s in self._sessions.values() if s.node.lower() == lnode]
            return self._max_index("sessions") or 1, sorted(rows, key=lambda s: s.id)

    def session_ids_with_ttl(self) -> list[tuple[str, str]]:
        """(id, ttl) of every session with a TTL: the new leader restarts their timers."""
        with self._lock:
            return [(s.id, s.ttl) for s in self._sessions.values() if s.ttl]

    def session_exists(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions
