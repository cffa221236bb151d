"""The agent's intentions cache and Connect authorization (Consul's IntentionMatch cache type and AgentConnectAuthorize).

``/v1/agent/connect/authorize`` is asked on every inbound connection, so it must
not cost a server round trip: the first question about a target reads its
intentions (Intention.Match by destination, stale reads allowed, as Consul's
cache type does) and starts a watcher, a loop of blocking queries that replaces
the entry as soon as a server applies a change — a write shows up on a client
agent within one round trip after its server applies it. An entry nobody asks
about for ``MAX_AGE`` stops its watcher. When the servers cannot be reached the
last answer stays in force, so a partitioned agent keeps authorizing.

The decision is Consul's: the target's intentions in precedence order, the
first whose source covers the caller's SPIFFE service ID decides (L7
intentions count as deny here; the proxy enforces them per request), else
``default_intention_policy`` if set ("Default intention policy"), else the ACL
default policy ("Default behavior configured by ACLs"; allow while ACLs are
off). Like Consul, the trust domain of the client certificate is not checked:
the caller's TLS layer already verified the chain against the roots.

ACLs: an HTTP caller needs service:write on the target (Consul's ConnectAuthorize),
which also lets it read the target's intentions. The reads carry a token as
Consul's cache does, the asker's: an entry is read, and then watched, with the
token of the last caller that asked about it (the HTTP caller's, else
``acl.tokens.default``; a managed proxy's sidecar token), and with the agent
token when an asker brings none.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple
from urllib.parse import unquote, urlsplit

from proconsul.server import intentions as ix
from proconsul.server.config_entries import DEFAULT_NAMESPACE, WILDCARD
from proconsul.server.endpoints.intention import IntentionQuery
from proconsul.server.errors import BadRequest, PermissionDenied, ProconsulError
from proconsul.server.structs import QueryOptions

log = logging.getLogger("proconsul.intentions")

BLOCK_WAIT = 60.0
MAX_AGE = 3 * 24 * 3600.0  # Consul's cache entries of this type live for days once used

_SPIFFE_SERVICE = re.compile(r"^(?:/ap/([^/]+))?/ns/([^/]+)/dc/([^/]+)/svc/([^/]+)$")
_SPIFFE_OTHER = (
    re.compile(r"^(?:/ap/([^/]+))?/agent/client/dc/([^/]+)/id/([^/]+)$"),
    re.compile(r"^/agent/server/dc/([^/]+)$"),
    re.compile(r"^(?:/ap/([^/]+))?/gateway/mesh/dc/([^/]+)$"),
)


class SpiffeService(NamedTuple):
    """connect.SpiffeIDService."""

    host: str
    partition: str
    namespace: str
    datacenter: str
    service: str


def parse_service_uri(uri: str) -> SpiffeService:
    """connect.ParseCertURIFromString, keeping only service IDs; BadRequest with Consul's two texts otherwise."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise BadRequest("ClientCertURI not a valid Connect identifier") from None
    if parts.scheme != "spiffe":
        raise BadRequest("ClientCertURI not a valid Connect identifier")
    m = _SPIFFE_SERVICE.match(parts.path)
    if m:
        ap, ns, dc, svc = (unquote(v) if v else "" for v in m.groups())
        return SpiffeService(parts.netloc, ap or "default", ns, dc, svc)
    if any(r.match(parts.path) for r in _SPIFFE_OTHER) or (parts.path == "" and "." in parts.netloc[1:]):
        raise BadRequest("ClientCertURI not a valid Service identifier")
    raise BadRequest("ClientCertURI not a valid Connect identifier")


@dataclass
class Entry:
    """One target's intentions (Intention JSON, precedence order), the index they were read at, and a version."""

    matches: list[dict[str, Any]]
    index: int
    version: int = 0
    used: float = field(default_factory=time.monotonic)
    task: asyncio.Task | None = None
    token: str = field(default="", repr=False)  # the last asker's: the watcher reads with it


class IntentionCache:
    """See the module docstring; ``rpc`` is the agent's ``rpc`` (in-process on a server, server RPC on a client).

    ``token()`` is the agent token, for askers that bring none (read afresh, so a token set through
    /v1/agent/token is used from the next read on).
    """

    def __init__(self, rpc: Any, token: Callable[[], str] = lambda: "", max_age: float = MAX_AGE) -> None:
        self._rpc = rpc
        self._token = token
        self._max_age = max_age
        self._entries: dict[str, Entry] = {}
        self._pending: dict[str, asyncio.Future] = {}
        self.fetches = 0  # reads that went to the servers

    async def _fetch(self, target: str, index: int, token: str) -> tuple[int, list[dict[str, Any]]]:
        self.fetches += 1
        opts = QueryOptions(stale=True, index=index, wait=BLOCK_WAIT if index else 0.0, token=token)
        reply = await self._rpc("Intention.Match", IntentionQuery(match_type="destination", names=[target], opts=opts))
        return reply.meta.index, list(reply.value[0] or [])

    def peek(self, target: str) -> Entry | None:
        """The target's entry if cached (marking it used), without reading anything."""
        entry = self._entries.get(target)
        if entry is not None:
            entry.used = time.monotonic()
        return entry

    async def get(self, target: str, token: str | None = None) -> tuple[Entry, bool]:
        """The target's entry and whether it was already cached; reads it (and starts its watcher) on first use.

        ``token`` is the asker's (None: the agent token); the watcher reads with the latest asker's.
        """
        token = self._token() if token is None else token
        entry = self.peek(target)
        if entry is not None:
            entry.token = token
            return entry, True
        pending = self._pending.get(target)
        if pending is not None:
            return await asyncio.shield(pending), False
        fut = self._pending[target] = asyncio.get_running_loop().create_future()
        try:
            index, matches = await self._fetch(target, 0, token)
            entry = Entry(matches, index, token=token)
            self._entries[target] = entry
            entry.task = asyncio.create_task(self._watch(target, entry), name=f"intentions-watch-{target}")
            fut.set_result(entry)
            return entry, False
        except BaseException as err:
            fut.set_exception(err)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._pending.pop(target, None)

    async def _watch(self, target: str, entry: Entry) -> None:
        backoff = 0.5
        try:
            while time.monotonic() - entry.used < self._max_age:
                try:
                    index, matches = await self._fetch(target, entry.index, entry.token)
                    backoff = 0.5
                except ProconsulError as err:
                    log.debug("intentions watch %s: %s", target, err)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if index < entry.index:
                    index = 0  # the servers' index went backwards (a restore): re-read without blocking
                if matches != entry.matches:
                    entry.matches = matches
                    entry.version += 1
                entry.index = index
        finally:
            if self._entries.get(target) is entry:
                del self._entries[target]

    def close(self) -> None:
        """Stop every watcher (the agent is shutting down)."""
        for entry in self._entries.values():
            if entry.task is not None:
                entry.task.cancel()
        self._entries.clear()


def _source_covers(ixn: dict[str, Any], svc: SpiffeService) -> bool:
    """connect.IntentionMatch on the source side (partitions and namespaces are always "default" here)."""
    if svc.partition != "default":
        return False
    ns = ixn.get("SourceNS", DEFAULT_NAMESPACE)
    if ns != WILDCARD and ns != svc.namespace:
        return False
    name = ixn.get("SourceName", "")
    return name == WILDCARD or name == svc.service


async def authorize(
    agent: Any, target: str, client_cert_uri: str, token: str | None = None, *, reader_token: str | None = None
) -> tuple[dict[str, Any], bool]:
    """Consul's AgentConnectAuthorize: ({"Authorized", "Reason"}, served from a warm cache entry).

    ``token`` is the HTTP caller's: it needs service:write on the target, as Consul's
    ConnectAuthorize checks before reading intentions (403 otherwise), and the intentions are
    read with it (an empty one is ``acl.tokens.default``). ``None`` is the agent's own managed
    proxy asking: no check, and the intentions are read with ``reader_token`` (its sidecar's).
    """
    if not target:
        raise BadRequest("Target service must be specified")
    svc = parse_service_uri(client_cert_uri)
    if token is not None:
        from proconsul.agent import acl as agent_acl

        caller = await agent_acl.caller(agent, token)
        caller.require(caller.authorizer.service_write(target), "service", "write", target)
        reader_token = token or agent.config.acl_token_default
    if svc.partition != "default":
        raise BadRequest(f'Mismatched partitions: "{svc.partition}" != "default"')
    try:
        entry, hit = await agent.intentions.get(target, reader_token)
    except PermissionDenied:
        raise
    except ProconsulError as err:
        raise ProconsulError(f"failed getting intention match: {err}") from None
    cfg = agent.config
    for ixn in entry.matches:
        if _source_covers(ixn, svc):
            if ixn.get("Permissions"):
                return {"Authorized": False, "Reason": f"Matched L7 intention: {ix.intention_string(ixn)}"}, hit
            return {"Authorized": ixn.get("Action") == "allow", "Reason": f"Matched L4 intention: {ix.intention_string(ixn)}"}, hit
    if cfg.default_intention_policy:
        return {"Authorized": cfg.default_intention_policy == "allow", "Reason": "Default intention policy"}, hit
    allowed = ix.default_allow(cfg.acl_enabled, cfg.acl_default_policy)
    return {"Authorized": allowed, "Reason": "Default behavior configured by ACLs"}, hit
