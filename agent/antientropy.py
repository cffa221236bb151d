"""Anti-entropy: keep the catalog's view of this node equal to the agent's local state (Consul's agent/ae + local.State).

* A partial sync runs whenever local state changes: every service and check not
  ``in_sync`` is registered (a service together with all its checks), every
  ``deleted`` one deregistered, then marked in sync.
* A full sync runs every ``ae_interval`` plus up to one more (Consul: 1–2 min
  for clusters up to 128 nodes, so agents spread out) and when the servers come
  back: it reads this node from the
  catalog, marks whatever differs out of sync — including services and checks
  the catalog has and the agent does not, which it deletes — then does a partial
  sync. So a service removed behind the agent's back, or lost with the servers'
  state, is back within one full sync.
* The ``serfHealth`` check and, on servers, the ``consul`` service belong to the
  leader's liveness and are left alone.
* Tokens, as Consul's local.State: the node and the catalog reads use the agent
  token (``acl.tokens.agent``, else ``acl.tokens.default``); a service or check
  syncs with the token it was registered with, else the agent token. A
  service's checks ride with it only when they share its token, so a check
  never borrows its service's privileges.
* A registration the servers refuse for want of permission is logged (a WARN
  naming the permission and AccessorID, never a secret) and marked in sync, as
  Consul does: it is tried again by the next full sync, not in a tight loop, and
  it does not hold back the rest.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from proconsul.server import shapes
from proconsul.server.commands import DeregisterRequest, RegisterRequest
from proconsul.server.errors import PermissionDenied, ProconsulError
from proconsul.server.state import SERF_CHECK_ID
from proconsul.server.structs import CatalogQuery, DeregisterArgs, QueryOptions, RegisterArgs

log = logging.getLogger("proconsul.antientropy")

LEADER_OWNED_SERVICES = {"consul"}
_CHECK_FIELDS = ("CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "Type", "Interval", "Timeout", "Definition")


class AntiEntropy:
    """See the module docstring."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.local = agent.local
        self._wake = asyncio.Event()
        self.round = asyncio.Lock()  # held while a sync's RPCs are out; leaving takes it to wait for them
        self._full_needed = True
        self.full_syncs = 0
        self.partial_syncs = 0

    def trigger(self) -> None:
        """Local state changed: push it soon."""
        self._wake.set()

    def trigger_full(self) -> None:
        """Compare with the catalog soon (servers came back, or the agent joined)."""
        self._full_needed = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.agent.config.ae_interval
        next_full = loop.time()
        backoff = 0.5
        while True:
            wait = max(0.0, next_full - loop.time())
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            full = self._full_needed or loop.time() >= next_full
            try:
                async with self.round:
                    if full:
                        self._full_needed = False
                        await self.sync_full()
                        # Consul's ae: Interval + rand[0, Interval) for clusters up to 128 nodes.
                        next_full = loop.time() + interval + random.random() * interval
                    else:
                        await self.sync_changes()
                backoff = 0.5
            except Exception as err:  # never let the sync loop die: the next round may succeed
                if isinstance(err, PermissionDenied):
                    # AccessorIDs and permissions only: the agent token's secret is never logged.
                    log.warning("syncing with the catalog blocked by ACLs, will retry (is acl.tokens.agent valid?): %s", err)
                elif isinstance(err, ProconsulError):
                    log.warning("syncing with the catalog failed, will retry: %s", err)
                else:
                    log.exception("syncing with the catalog failed, will retry")
                self._full_needed = full or self._full_needed
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                self._wake.set()

    # ------------------------------------------------------------- full sync

    async def sync_full(self) -> None:
        agent = self.agent
        node = agent.config.node_name
        opts = QueryOptions(token=agent.agent_token())
        reply = await agent.rpc("Catalog.NodeServiceList", CatalogQuery(name=node, opts=opts))
        checks_reply = await agent.rpc("Health.NodeChecks", CatalogQuery(name=node, opts=opts))
        remote = reply.value or {}
        self.local.node_in_sync = self._node_matches(remote.get("Node"))
        remote_services = {s["ID"]: s for s in remote.get("Services") or []}
        remote_checks = {c["CheckID"]: c for c in checks_reply.value}
        local = self.local
        for sid, rs in remote_services.items():
            ls = local.services.get(sid)
            if ls is None:
                if sid not in LEADER_OWNED_SERVICES:
                    log.info("service %s is in the catalog but not on this agent: removing it", sid)
                    await self._remove_unknown("service", sid, DeregisterRequest(node=node, service_id=sid))
                continue
            if ls.deleted:
                ls.in_sync = False  # still in the catalog (its deregistration was refused): try again
                continue
            svc = ls.defn.service
            if svc.enable_tag_override and rs.get("Tags") != svc.tags:
                svc.tags = list(rs.get("Tags") or [])  # Consul: the catalog may own this service's tags
            ls.in_sync = self._service_json(ls) == _without_indexes(rs)
        for sid, ls in local.services.items():
            if sid not in remote_services:
                ls.in_sync = False
        for cid, rc in remote_checks.items():
            lc = local.checks.get(cid)
            if lc is None:
                if cid != SERF_CHECK_ID:
                    log.info("check %s is in the catalog but not on this agent: removing it", cid)
                    await self._remove_unknown("check", cid, DeregisterRequest(node=node, check_id=cid))
                continue
            if lc.deleted:
                lc.in_sync = False
                continue
            mine, theirs = self._check_json(lc), {k: rc.get(k) for k in _CHECK_FIELDS}
            if lc.deferred is not None:
                # An output-only change is waiting out check_update_interval: don't let the full sync push it early.
                mine.pop("Output"), theirs.pop("Output")
            lc.in_sync = mine == theirs
        for cid, lc in local.checks.items():
            if cid not in remote_checks:
                lc.in_sync = False
        self.full_syncs += 1
        await self.sync_changes()

    async def _remove_unknown(self, what: str, key: str, req: DeregisterRequest) -> None:
        """Deregister what the catalog has and this agent does not, with the agent token."""
        try:
            await self._deregister(req, self.agent.agent_token())
        except PermissionDenied as err:
            log.warning("%s %s deregistration blocked by ACLs: %s", what, key, err)

    def _node_matches(self, remote: dict | None) -> bool:
        if remote is None:
            return False
        mine = self.agent.node_registration()
        return (
            remote.get("ID") == mine.id
            and remote.get("Address") == mine.address
            and (remote.get("TaggedAddresses") or {}) == mine.tagged_addresses
            and (remote.get("Meta") or {}) == mine.node_meta
        )

    def _service_json(self, ls: Any) -> dict:
        return shapes.service_json(shapes.service_instance(self.agent.config.node_name, ls.defn.service), indexes=False)

    def _check_json(self, lc: Any) -> dict:
        record = lc.defn.record(lc.status, lc.output)
        full = shapes.check_json(shapes.health_check(self.agent.config.node_name, record))
        return {k: full[k] for k in _CHECK_FIELDS}

    # ------------------------------------------------------------- partial sync

    async def sync_changes(self) -> None:
        """Register or deregister whatever is out of sync (Consul's SyncChanges)."""
        agent, local, node = self.agent, self.local, self.agent.config.node_name
        agent_token = agent.agent_token()
        pending = [e for e in (*local.services.values(), *local.checks.values()) if not e.in_sync and not e.deleted]
        if any(e.defn.token and e.defn.token != agent_token for e in pending):
            # The node first, with the agent token, when something goes under a token of its own: that
            # token may lack node:write, which Consul's vetRegisterWithACL asks only for a node change.
            await self._sync_node()
        for sid, ls in list(local.services.items()):
            if ls.in_sync:
                continue
            token = ls.defn.token or agent_token
            try:
                if ls.deleted:
                    await self._drop(local.services, sid, ls, DeregisterRequest(node=node, service_id=sid), token)
                else:
                    riders = [c for c in local.service_checks(sid) if (c.defn.token or agent_token) == token]
                    await self._push(ls, riders, token)
            except PermissionDenied as err:
                log.warning("service %s %s blocked by ACLs: %s", sid, "deregistration" if ls.deleted else "registration", err)
        for cid, lc in list(local.checks.items()):
            if lc.in_sync:
                continue
            token = lc.defn.token or agent_token
            try:
                if lc.deleted:
                    await self._drop(local.checks, cid, lc, DeregisterRequest(node=node, check_id=cid), token)
                elif not lc.defn.service_id:
                    await self._push(None, [lc], token)
                else:
                    ls = local.services.get(lc.defn.service_id)
                    if ls is not None and not ls.deleted:
                        # Sent with its service, as Consul's syncCheck, but under the check's own token.
                        await self._push(ls, [lc], token, mark_service=False)
            except PermissionDenied as err:
                log.warning("check %s %s blocked by ACLs: %s", cid, "deregistration" if lc.deleted else "registration", err)
        await self._sync_node()
        self.partial_syncs += 1

    async def _sync_node(self) -> None:
        """Register this node's own information with the agent token, unless a service push already did."""
        if self.local.node_in_sync:
            return
        try:
            await self._register(self.agent.node_registration(), self.agent.agent_token())
        except PermissionDenied as err:
            node = self.agent.config.node_name
            log.warning("node info update blocked by ACLs (the agent token needs node:write on %r): %s", node, err)
        self.local.node_in_sync = True

    async def _push(self, service: Any, checks: list[Any], token: str, mark_service: bool = True) -> None:
        """Register this node with a service and/or checks; mark them in sync if they did not change meanwhile.

        A refusal (PermissionDenied) marks them too, so only the next full sync tries again.
        """
        seen = [(entry, entry.gen) for entry in ([service] if service is not None and mark_service else []) + checks]
        req = self.agent.node_registration()
        if service is not None:
            req.service = service.defn.service
        req.checks = [c.defn.record(c.status, c.output) for c in checks]
        try:
            await self._register(req, token)
        except PermissionDenied:
            _mark_synced(seen)
            raise
        _mark_synced(seen)
        self.local.node_in_sync = True

    async def _drop(self, table: dict, key: str, entry: Any, req: DeregisterRequest, token: str) -> None:
        """Deregister a deleted service or check, then forget it (unless it was registered again meanwhile)."""
        gen = entry.gen
        try:
            await self._deregister(req, token)
        except PermissionDenied:
            _mark_synced([(entry, gen)])
            raise
        if table.get(key) is entry:
            del table[key]

    async def _register(self, req: RegisterRequest, token: str) -> None:
        await self.agent.rpc("Catalog.Register", RegisterArgs(req, token=token))

    async def _deregister(self, req: DeregisterRequest, token: str) -> None:
        await self.agent.rpc("Catalog.Deregister", DeregisterArgs(req, token=token))


def _mark_synced(seen: list[tuple[Any, int]]) -> None:
    """What was sent is in the catalog now — unless it changed (or was deleted) while the RPC was in flight."""
    for entry, gen in seen:
        if entry.gen == gen:
            entry.in_sync = True


def _without_indexes(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("CreateIndex", "ModifyIndex")}
