"""The DNS server's view of the catalog: one entry per name asked about, kept fresh by a blocking query.

The first question about a service (or node, or connect name) reads it once and
starts a watcher: a loop of blocking queries — stale ones by default (Consul's
dns_config allow_stale), going to the leader when a server's last contact is
older than max_stale — that replaces the entry the moment the catalog changes, so
a health change reaches DNS within one round trip, and answering costs no
server round trip once warm. An entry nobody asks about for ``cache_max_age``
stops its watcher and is dropped, and at most ``max_entries`` names are watched
at once (the least recently asked goes first), so a flood of made-up names
cannot pile up watchers. When the servers cannot be reached, entries
keep their last value: a partitioned client agent keeps answering.

Every read carries ``token()`` (the agent's ``acl.tokens.default``, empty for
anonymous, as Consul's DNS uses the agent's default token), so the servers
filter the answer by ACL: what the token may not read is not there, and a name
with nothing readable is NXDOMAIN.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from proconsul.server.errors import ProconsulError
from proconsul.server.structs import CatalogQuery, QueryOptions

log = logging.getLogger("proconsul.dns")

BLOCK_WAIT = 60.0
MAX_ENTRIES = 2048  # names watched at once; past it the least recently asked stops


@dataclass
class Entry:
    """One cached read: its value (Consul's JSON), index, and a version bumped on every change."""

    value: Any
    index: int
    version: int = 0
    used: float = field(default_factory=time.monotonic)
    task: asyncio.Task | None = None


Fetch = Callable[[str, int], Awaitable[tuple[int, Any]]]


class CatalogCache:
    """See the module docstring. Kinds: "service", "connect", "node"."""

    def __init__(
        self,
        rpc: Callable[[str, Any], Awaitable[Any]],
        max_age: float = 600.0,
        metrics: Any = None,
        allow_stale: bool = True,
        max_stale: float = 87600 * 3600.0,
        token: Callable[[], str] | None = None,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._rpc = rpc
        self._max_entries = max_entries
        self.token = token  # None until set: reads go out anonymous
        self._max_age = max_age
        self._metrics = metrics
        self._allow_stale = allow_stale
        self._max_stale_ms = max_stale * 1000
        self._entries: dict[tuple[str, str], Entry] = {}
        self._pending: dict[tuple[str, str], asyncio.Future] = {}
        self.fetches = 0  # reads that went to the servers (the regression guard checks warm answers add none)

    async def _fetch(self, kind: str, name: str, index: int) -> tuple[int, Any]:
        self.fetches += 1
        if self._metrics is not None:
            self._metrics.incr("dns.catalog_read", labels={"blocking": "true" if index else "false"})
        reply = await self._read(kind, name, index, self._allow_stale)
        if self._allow_stale and reply.meta.last_contact_ms > self._max_stale_ms:
            # Consul's max_stale: a server this far behind the leader is not asked again; the leader is.
            reply = await self._read(kind, name, 0, False)
        return reply.meta.index, reply.value

    async def _read(self, kind: str, name: str, index: int, stale: bool) -> Any:
        token = self.token() if self.token is not None else ""
        opts = QueryOptions(token=token, stale=stale, index=index, wait=BLOCK_WAIT if index else 0.0)
        if kind == "node":
            return await self._rpc("Catalog.NodeServices", CatalogQuery(name=name, opts=opts))
        return await self._rpc("Health.ServiceNodes", CatalogQuery(name=name, connect=kind == "connect", opts=opts))

    def peek(self, kind: str, name: str) -> Entry | None:
        """The entry if cached (marking it used), without reading anything."""
        entry = self._entries.get((kind, name))
        if entry is not None:
            entry.used = time.monotonic()
        return entry

    async def get(self, kind: str, name: str) -> Entry:
        """The cached entry, reading it (and starting its watcher) on first use; raises ProconsulError if unreachable."""
        entry = self.peek(kind, name)
        if entry is not None:
            return entry
        key = (kind, name)
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut = self._pending[key] = asyncio.get_running_loop().create_future()
        try:
            index, value = await self._fetch(kind, name, 0)
            entry = Entry(value, index)
            if len(self._entries) >= self._max_entries:
                self._evict_least_recent()
            self._entries[key] = entry
            entry.task = asyncio.create_task(self._watch(key, entry), name=f"dns-watch-{kind}-{name}")
            fut.set_result(entry)
            return entry
        except BaseException as err:
            fut.set_exception(err)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._pending.pop(key, None)

    async def _watch(self, key: tuple[str, str], entry: Entry) -> None:
        kind, name = key
        backoff = 0.5
        while time.monotonic() - entry.used < self._max_age:
            try:
                index, value = await self._fetch(kind, name, entry.index)
                backoff = 0.5
            except ProconsulError as err:
                log.debug("dns watch %s %s: %s", kind, name, err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if index != entry.index or value != entry.value:
                entry.value, entry.index = value, index
                entry.version += 1
        if self._entries.get(key) is entry:
            del self._entries[key]

    def _evict_least_recent(self) -> None:
        key = min(self._entries, key=lambda k: self._entries[k].used)
        entry = self._entries.pop(key)
        if entry.task is not None:
            entry.task.cancel()

    def close(self) -> None:
        for entry in self._entries.values():
            if entry.task is not None:
                entry.task.cancel()
        self._entries.clear()
