"""Where a proxy gets its certificates, instances, protocols and intentions.

``AgentSource``: a managed proxy inside the agent calls the agent directly — its
leaf cache, its intentions cache, server RPC — with no HTTP in between.
``HTTPSource``: ``proconsul connect proxy`` talks to the local agent's HTTP API,
the way any Consul client would (blocking queries on the agent's endpoints,
``/v1/agent/connect/authorize`` per connection).

Every ``leaf``/``roots``/``connect_instances``/``protocol`` call is one step of a
blocking query: given the index last seen, it returns ``(index, value)`` once
the value may have changed (or the wait ran out). ``intentions(target)`` returns
a callable giving the target's current ``(matches, default_allow)`` for L7
decisions, kept fresh in the background.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable


from proconsul.server import config_entries as ce
from proconsul.server import intentions as ix
from proconsul.server.structs import CatalogQuery, QueryOptions

log = logging.getLogger("proconsul.proxy")

BLOCK_WAIT = 60.0
IntentionView = Callable[[], tuple[list[dict[str, Any]], bool]]


def passing_instances(entries: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(address, port) of each health/connect entry whose checks all pass: the service's address, else the node's."""
    out = []
    for e in entries:
        if any(c.get("Status") != "passing" for c in e.get("Checks") or ()):
            continue
        svc = e["Service"]
        out.append((svc.get("Address") or e["Node"]["Address"], int(svc["Port"])))
    return out


class AgentSource:
    """A managed proxy's view of its own agent.

    ``token()`` is what its reads and its leaf's signing carry: the token its sidecar was registered
    with, else the agent token (read per call, so a re-registration with another token takes effect).
    """

    def __init__(self, agent: Any, token: Callable[[], str] | None = None) -> None:
        self.agent = agent
        self.token: Callable[[], str] = token or agent.agent_token

    def _opts(self, index: int, stale: bool = False) -> QueryOptions:
        return QueryOptions(stale=stale, index=index, wait=BLOCK_WAIT if index else 0.0, token=self.token())

    async def leaf(self, service: str, index: int) -> tuple[int, dict[str, Any]]:
        cert, _ = await self.agent.leafcerts.leaf(service, self._opts(index))
        return int(cert.get("ModifyIndex") or 0), cert

    async def roots(self, index: int) -> tuple[int, dict[str, Any]]:
        new_index, roots, _ = await self.agent.leafcerts.roots(QueryOptions(index=index, wait=BLOCK_WAIT if index else 0.0))
        return new_index, roots

    async def connect_instances(self, service: str, index: int) -> tuple[int, list[tuple[str, int]]]:
        reply = await self.agent.rpc("Health.ServiceNodes", CatalogQuery(name=service, connect=True, opts=self._opts(index, stale=True)))
        return reply.meta.index, passing_instances(reply.value)

    async def protocol(self, service: str, index: int) -> tuple[int, str]:
        from proconsul.server.endpoints.config_entry import ConfigEntryQuery

        sd = await self.agent.rpc("ConfigEntry.Get", ConfigEntryQuery(ce.SERVICE_DEFAULTS, service, opts=self._opts(index, stale=True)))
        pd = await self.agent.rpc("ConfigEntry.Get", ConfigEntryQuery(ce.PROXY_DEFAULTS, ce.PROXY_CONFIG_GLOBAL, opts=self._opts(0, stale=True)))
        return sd.meta.index, ce.protocol_of(sd.value, pd.value)

    async def authorize(self, target: str, uri: str) -> tuple[bool, str]:
        from proconsul.agent.intentions import authorize

        result, _ = await authorize(self.agent, target, uri, reader_token=self.token())
        return result["Authorized"], result["Reason"]

    async def intentions(self, target: str) -> IntentionView:
        cache, cfg = self.agent.intentions, self.agent.config
        default = ix.default_allow(cfg.acl_enabled, cfg.acl_default_policy, cfg.default_intention_policy)
        entry, _ = await cache.get(target, self.token())

        def view() -> tuple[list[dict[str, Any]], bool]:
            nonlocal entry
            current = cache.peek(target)
            if current is None:  # dropped as unused: fetch it again, meanwhile decide on what we had
                asyncio.ensure_future(cache.get(target, self.token()))
            else:
                entry = current
            return entry.matches, default

        return view

    async def close(self) -> None:
        return None


class HTTPSource:
    """``proconsul connect proxy``'s view of the local agent, through its HTTP API."""

    def __init__(self, base_url: str, token: str = "") -> None:
        import httpx  # here, not at the top: the agent's managed proxies use AgentSource

        headers = {"X-Consul-Token": token} if token else {}
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=httpx.Timeout(BLOCK_WAIT + 30, connect=5.0))
        self._views: dict[str, tuple[list[dict[str, Any]], bool]] = {}
        self._tasks: list[asyncio.Task] = []
        self._default: bool | None = None

    async def _get(self, path: str, index: int = 0, **params: Any) -> tuple[int, Any]:
        if index:
            params.update(index=index, wait=f"{BLOCK_WAIT:.0f}s")
        r = await self.http.get(path, params=params)
        if r.status_code == 404:
            return int(r.headers.get("x-consul-index") or 0), None
        if r.status_code != 200:
            raise RuntimeError(f"GET {path}: {r.status_code} {r.text.strip()}")
        return int(r.headers.get("x-consul-index") or 0), r.json()

    async def leaf(self, service: str, index: int) -> tuple[int, dict[str, Any]]:
        _, cert = await self._get(f"/v1/agent/connect/ca/leaf/{service}", index)
        if cert is None:
            raise RuntimeError(f"no leaf certificate for {service}")
        return int(cert.get("ModifyIndex") or 0), cert

    async def roots(self, index: int) -> tuple[int, dict[str, Any]]:
        return await self._get("/v1/agent/connect/ca/roots", index)

    async def connect_instances(self, service: str, index: int) -> tuple[int, list[tuple[str, int]]]:
        new_index, entries = await self._get(f"/v1/health/connect/{service}", index, passing="", stale="")
        return new_index, passing_instances(entries or [])

    async def protocol(self, service: str, index: int) -> tuple[int, str]:
        new_index, sd = await self._get(f"/v1/config/{ce.SERVICE_DEFAULTS}/{service}", index, stale="")
        _, pd = await self._get(f"/v1/config/{ce.PROXY_DEFAULTS}/{ce.PROXY_CONFIG_GLOBAL}", stale="")
        return new_index, ce.protocol_of(sd, pd)

    async def authorize(self, target: str, uri: str) -> tuple[bool, str]:
        r = await self.http.post("/v1/agent/connect/authorize", json={"Target": target, "ClientCertURI": uri})
        if r.status_code != 200:
            return False, f"authorize: {r.status_code} {r.text.strip()}"
        body = r.json()
        return bool(body.get("Authorized")), body.get("Reason", "")

    async def _default_allow(self) -> bool:
        """What decides when no intention matches, from the agent's configuration (/v1/agent/self)."""
        if self._default is None:
            _, me = await self._get("/v1/agent/self")
            dc = (me or {}).get("DebugConfig") or {}
            acl = dc.get("ACLResolverSettings") or {}
            self._default = ix.default_allow(bool(dc.get("ACLsEnabled")), acl.get("ACLDefaultPolicy", "allow"), dc.get("DefaultIntentionPolicy", ""))
        return self._default

    async def intentions(self, target: str) -> IntentionView:
        if target not in self._views:
            default = await self._default_allow()
            index, matches = await self._get("/v1/connect/intentions/match", by="destination", name=target)
            self._views[target] = ((matches or {}).get(target) or [], default)
            self._tasks.append(asyncio.create_task(self._watch_intentions(target, index, default)))
        return lambda: self._views[target]

    async def _watch_intentions(self, target: str, index: int, default: bool) -> None:
        import httpx

        backoff = 0.2
        while True:
            try:
                new_index, matches = await self._get("/v1/connect/intentions/match", index, by="destination", name=target)
                backoff = 0.2
            except (httpx.HTTPError, RuntimeError) as err:
                log.warning("watching intentions for %s failed, retrying in %.1fs: %s", target, backoff, err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._views[target] = ((matches or {}).get(target) or [], default)
            index = 0 if new_index < index else new_index

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.http.aclose()

