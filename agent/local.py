"""What this node owns: its services and checks, and whether the catalog has them yet (Consul's agent/local.State).

The local state is the source of truth for its own node. Every service and check
carries ``in_sync`` (the catalog matches) and ``deleted`` (removed here, kept
until the catalog confirms). Anti-entropy reads these flags and clears them.

Check results: a status change marks the check out of sync and triggers a sync
at once; an output-only change waits up to ``check_update_interval`` (Consul's
rate limit on output churn), unless a status change overtakes it.

Definitions registered through the HTTP API are persisted (``persist.AgentStore``)
so a restarted agent registers them again; config-file ones are re-read instead.
Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Callable

from proconsul.agent.persist import AgentStore
from proconsul.agent.structs import CheckDef, ServiceDef


@dataclass
class LocalService:
    defn: ServiceDef
    source: str = "api"  # "api" (persisted) or "config" (re-read on reload)
    in_sync: bool = False
    deleted: bool = False
    # Bumped by every local change: a sync that awaited the servers marks an entry in sync
    # only if its generation did not move meanwhile.
    gen: int = 0

    def touch(self) -> None:
        self.in_sync = False
        self.gen += 1


@dataclass
class LocalCheck:
    defn: CheckDef
    status: str
    output: str = ""
    source: str = "api"
    in_sync: bool = False
    deleted: bool = False
    critical_since: float | None = None
    deferred: asyncio.TimerHandle | None = None
    gen: int = 0

    def touch(self) -> None:
        self.in_sync = False
        self.gen += 1


class LocalState:
    """See the module docstring."""

    def __init__(self, persist: AgentStore | None, check_update_interval: float = 300.0) -> None:
        self._persist = persist
        self.check_update_interval = check_update_interval
        self.services: dict[str, LocalService] = {}
        self.checks: dict[str, LocalCheck] = {}
        self.node_in_sync = False
        self.version = 0
        self._changed = asyncio.Event()
        # Anti-entropy's trigger for a partial sync; set by the agent.
        self.on_sync_needed: Callable[[], None] = lambda: None
        # Notified with a check ID whenever a check's status or output changes (alias checks listen).
        self.check_listeners: list[Callable[[str], None]] = []

    # ------------------------------------------------------------- change notification

    def _changed_now(self, sync: bool = True) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        if sync:
            self.on_sync_needed()

    async def wait_change(self, version: int, timeout: float) -> None:
        """Return once ``version`` is out of date, or after ``timeout`` (for blocking agent endpoints)."""
        if self.version != version:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------- services

    def live_services(self) -> dict[str, ServiceDef]:
        return {sid: s.defn for sid, s in self.services.items() if not s.deleted}

    def live_checks(self) -> dict[str, LocalCheck]:
        return {cid: c for cid, c in self.checks.items() if not c.deleted}

    def service(self, service_id: str) -> ServiceDef | None:
        s = self.services.get(service_id)
        return s.defn if s is not None and not s.deleted else None

    def add_service(self, defn: ServiceDef, source: str = "api", persist: bool = True) -> None:
        """Add or replace a service (its checks are added separately)."""
        sid = defn.service.id
        self.services[sid] = LocalService(defn, source)
        if persist and source == "api" and self._persist is not None:
            self._persist.save_service(sid, {"defn": defn.to_json(), "source": source})
        self._changed_now()

    def remove_service(self, service_id: str) -> bool:
        """Mark a service (and its checks) deleted; False when there is no such service."""
        s = self.services.get(service_id)
        if s is None or s.deleted:
            return False
        s.deleted = True
        s.touch()
        for cid, c in list(self.checks.items()):
            if c.defn.service_id == service_id:
                self.remove_check(cid, notify=False)
        if self._persist is not None:
            self._persist.delete_service(service_id)
        self._changed_now()
        return True

    # ------------------------------------------------------------- checks

    def check(self, check_id: str) -> LocalCheck | None:
        c = self.checks.get(check_id)
        return c if c is not None and not c.deleted else None

    def add_check(self, defn: CheckDef, source: str = "api", status: str | None = None, output: str | None = None) -> None:
        """Add or replace a check, starting in its initial status (or the status it had)."""
        old = self.checks.get(defn.id)
        if old is not None and old.deferred is not None:
            old.deferred.cancel()
        check = LocalCheck(defn, status or defn.status, defn.output if output is None else output, source)
        if check.status == "critical":
            check.critical_since = asyncio.get_running_loop().time()
        self.checks[defn.id] = check
        if source == "api" and self._persist is not None:
            self._persist.save_check(defn.id, {"defn": defn.to_json(), "source": source})
        self._changed_now()
        self._notify_check(defn.id)

    def remove_check(self, check_id: str, notify: bool = True) -> bool:
        c = self.checks.get(check_id)
        if c is None or c.deleted:
            return False
        if c.deferred is not None:
            c.deferred.cancel()
            c.deferred = None
        c.deleted = True
        c.touch()
        if self._persist is not None:
            self._persist.delete_check(check_id)
        if notify:
            self._changed_now()
        self._notify_check(check_id)
        return True

    def update_check(self, check_id: str, status: str, output: str) -> bool:
        """A check result (Consul's UpdateCheck): status changes sync now, output-only changes are deferred."""
        c = self.check(check_id)
        if c is None:
            return False
        if c.status == status and c.output == output:
            return False
        loop = asyncio.get_running_loop()
        if status == "critical" and c.status != "critical":
            c.critical_since = loop.time()
        elif status != "critical":
            c.critical_since = None
        if c.status == status and self.check_update_interval > 0:
            c.output = output
            if c.deferred is None:
                delay = self.check_update_interval / 2 + random.random() * self.check_update_interval
                c.deferred = loop.call_later(delay, self._deferred_sync, check_id)
            self._changed_now(sync=False)
            self._notify_check(check_id)
            return True
        c.status, c.output = status, output
        c.touch()
        self._changed_now()
        self._notify_check(check_id)
        return True

    def _deferred_sync(self, check_id: str) -> None:
        c = self.checks.get(check_id)
        if c is None:
            return
        c.deferred = None
        if not c.deleted:
            c.touch()
            self.on_sync_needed()

    def _notify_check(self, check_id: str) -> None:
        for listener in list(self.check_listeners):
            listener(check_id)

    def service_checks(self, service_id: str) -> list[LocalCheck]:
        """The live checks of one service, by check ID."""
        return [c for _, c in sorted(self.live_checks().items()) if c.defn.service_id == service_id]

    # ------------------------------------------------------------- persistence

    def load_persisted(self) -> tuple[list[ServiceDef], list[CheckDef]]:
        """Definitions a previous run registered through the API."""
        if self._persist is None:
            return [], []
        services, checks = self._persist.load()
        return (
            [ServiceDef.from_json(s["defn"]) for s in services],
            [CheckDef.from_json(c["defn"]) for c in checks],
        )
