"""The events part of the state store: the ring of the most recent user events.

Consul gossips user events and each agent keeps the last 256 it accepted. We
have no gossip, so the ring lives in the replicated state instead: one Raft
entry per fire appends to it, evicting the oldest past ``EVENT_BUFFER``, and
every agent answers ``/v1/event/list`` from it, applying the event's node,
service and tag filters to itself at read time. ``ltime`` stands in for serf's
Lamport time: one more than the newest event's, so it is a pure function of the
log and orders the ring (it is the table's key). Re-applying an event whose ID
is already in the ring changes nothing, so a fire retried after an unknown
outcome is not delivered twice.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from proconsul.server.state.base import TableSchema, WriteTxn
from proconsul.server.watch import WatchChannel, WatchSet

EVENT_BUFFER = 256  # Consul's agent eventBuf size


class UserEvent(NamedTuple):
    """Consul's agent.UserEvent as the ring keeps it; ``create_index`` is the Raft index that fired it."""

    ltime: int
    id: str
    name: str
    payload: bytes | None = None
    node_filter: str = ""
    service_filter: str = ""
    tag_filter: str = ""
    version: int = 1
    create_index: int = 0


class EventsStore:
    """Mixed into StateStore (see base.StoreBase for the machinery)."""

    EVENTS_SCHEMA = {
        "events": TableSchema(
            (
                ("ltime", "int"),
                ("id", "text"),
                ("name", "text"),
                ("payload", "blob"),
                ("node_filter", "text"),
                ("service_filter", "text"),
                ("tag_filter", "text"),
                ("version", "int"),
                ("create_index", "int"),
            )
        )
    }

    # Provided by StoreBase.
    _lock: Any
    _max_index: Callable[..., int]
    _set_index_txn: Callable[[WriteTxn, str], None]
    _write: Callable[..., Any]
    _watch: Callable[..., None]

    def _events_init(self) -> None:
        # Oldest first. Replaced whole on every fire (copy on write), so a reader may keep what it got.
        self._events: tuple[UserEvent, ...] = ()

    def _events_dump(self) -> dict[str, list[tuple]]:
        return {"events": [tuple(e) for e in self._events]}

    def _events_load(self, tables: dict[str, list[tuple]]) -> Callable[[], None]:
        rows = sorted((UserEvent(*r) for r in tables.get("events", ())), key=lambda e: e.ltime)
        events = tuple(rows[-EVENT_BUFFER:])

        def swap() -> None:
            self._events = events

        return swap

    def _events_abandon(self) -> list[WatchChannel]:
        return []

    def _events_fired(self, tx: WriteTxn) -> list[WatchChannel]:
        return []

    # ------------------------------------------------------------- writes

    def event_fire(self, index: int, event: UserEvent) -> UserEvent:
        """Append a fired event to the ring (evicting the oldest past 256); returns it as stored."""

        def body(tx: WriteTxn) -> UserEvent:
            old = self._events
            for e in old:
                if e.id == event.id:
                    return e
            ltime = old[-1].ltime + 1 if old else 1
            row = event._replace(ltime=ltime, create_index=tx.index)
            self._events = (*old[-(EVENT_BUFFER - 1):], row)
            tx.undo.append(lambda: setattr(self, "_events", old))
            self._set_index_txn(tx, "events")
            tx.watch_keys.add("events")
            return row

        return self._write(index, body)

    # ------------------------------------------------------------- reads

    def event_list(self, name: str = "", ws: WatchSet | None = None) -> tuple[int, list[UserEvent]]:
        """The ring oldest first (only events called ``name`` when given); the index is the last fire's."""
        with self._lock:
            self._watch(ws, "events")
            events = self._events
            index = self._max_index("events") or 1
        return index, [e for e in events if not name or e.name == name]

    def event_last_ltime(self) -> int:
        """The newest event's ltime (0 when none): the leader sizes a new event with the next one."""
        with self._lock:
            return self._events[-1].ltime if self._events else 0
