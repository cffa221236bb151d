"""Running the agent's checks: one runner per check, alias checks, and reaping long-critical services.

* http, tcp, udp, ttl, script and grpc checks run in ``checks.CheckRunner``
  tasks; every result goes to ``LocalState.update_check``, which decides what
  reaches the servers.
* Alias checks mirror another service's or node's health (Consul's CheckAlias):
  on this node from local state as it changes; on another node from the catalog
  through blocking queries.
* A service with a check that has ``deregister_critical_service_after`` is
  removed once that check has been critical that long (Consul's reaper).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from proconsul.agent.checks import CheckRunner
from proconsul.agent.structs import CheckDef
from proconsul.server.errors import ProconsulError
from proconsul.server.structs import CatalogQuery, QueryOptions

log = logging.getLogger("proconsul.checks")



def alias_status(checks: list[tuple[str, str, str, str, str]], node: str, service_id: str, found: bool) -> tuple[str, str]:
    """Consul's CheckAlias.processChecks over (node, service_id, name, status, output) rows."""
    health, msg = "passing", "No checks found."
    service_found = False
    for chk_node, chk_sid, name, status, output in checks:
        if node and chk_node.lower() != node.lower():
            continue
        match = bool(service_id) and chk_sid == service_id
        if chk_sid and not match:
            continue
        if match:
            service_found = True
        if status in ("critical", "warning"):
            health, msg = status, f'Aliased check "{name}" failing: {output}'
            if status == "critical":
                break
        elif health == "passing":
            msg = "All checks passing."
    if service_id and not service_found and not found:
        health, msg = "critical", f"Service {service_id} could not be found on node {node}"
    return health, msg


class CheckManager:
    """See the module docstring."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.local = agent.local
        self._runners: dict[str, CheckRunner] = {}
        self._alias_tasks: dict[str, asyncio.Task] = {}
        self._local_aliases: dict[str, CheckDef] = {}
        self.local.check_listeners.append(self._on_local_check)
        self._reaper: asyncio.Task | None = None

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap(), name="check-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for cid in list(self._runners):
            await self.remove(cid)
        for cid in list(self._alias_tasks):
            await self.remove(cid)

    def _report(self, check_id: str, status: str, output: str) -> None:
        metrics = self.agent.metrics
        metrics.incr("agent.check.run", labels={"type": self.local.checks[check_id].defn.kind} if check_id in self.local.checks else None)
        self.local.update_check(check_id, status, output)

    async def add(self, defn: CheckDef) -> None:
        """Start running a check that local state now holds (replacing its previous runner)."""
        await self.remove(defn.id)
        if defn.kind == "alias":
            if not defn.alias_node or defn.alias_node.lower() == self.agent.config.node_name.lower():
                self._local_aliases[defn.id] = defn
                self._evaluate_local_alias(defn)
            else:
                self._alias_tasks[defn.id] = asyncio.create_task(self._remote_alias(defn), name=f"alias-{defn.id}")
            return
        if not defn.kind or defn.kind == "maintenance":
            return  # maintenance checks have no runner: their status is set directly
        runner = CheckRunner(defn.spec(), self._report)
        self._runners[defn.id] = runner
        runner.start()

    async def run_now(self, check_id: str) -> None:
        """Restart an interval check without its first-run stagger (what it checks just came up)."""
        runner = self._runners.get(check_id)
        if runner is None:
            return
        await runner.stop()
        runner = self._runners[check_id] = CheckRunner(runner.spec, self._report, stagger=lambda _: 0.0)
        runner.start()

    async def remove(self, check_id: str) -> None:
        runner = self._runners.pop(check_id, None)
        if runner is not None:
            await runner.stop()
        task = self._alias_tasks.pop(check_id, None)
        if task is not None:
            task.cancel()
        self._local_aliases.pop(check_id, None)

    def ttl_update(self, check_id: str, status: str, output: str) -> bool:
        """pass/warn/fail/update on a TTL check; False when the check is not a TTL check."""
        runner = self._runners.get(check_id)
        if runner is None or self.local.checks[check_id].defn.kind != "ttl":
            return False
        runner.ttl_update(status, output)
        return True

    # ------------------------------------------------------------- alias checks

    def _on_local_check(self, changed_id: str) -> None:
        for cid, defn in list(self._local_aliases.items()):
            if cid != changed_id:
                self._evaluate_local_alias(defn)

    def _evaluate_local_alias(self, defn: CheckDef) -> None:
        node = self.agent.config.node_name
        rows = [
            (node, c.defn.service_id, c.defn.name, c.status, c.output)
            for cid, c in self.local.live_checks().items()
            if cid != defn.id
        ]
        found = bool(defn.alias_service) and self.local.service(defn.alias_service) is not None
        status, output = alias_status(rows, node if defn.alias_node else "", defn.alias_service, found)
        if self.local.check(defn.id) is not None:
            self.local.update_check(defn.id, status, output)

    async def _remote_alias(self, defn: CheckDef) -> None:
        index = 0
        while True:
            try:
                # With the check's own token, else the agent's (Consul: the check's token, else a default).
                opts = QueryOptions(index=index, wait=60.0, stale=True, token=defn.token or self.agent.agent_token())
                reply = await self.agent.rpc("Health.NodeChecks", CatalogQuery(name=defn.alias_node, opts=opts))
                index = reply.meta.index
                rows = [(c["Node"], c["ServiceID"], c["Name"], c["Status"], c["Output"]) for c in reply.value]
                found = any(r[1] == defn.alias_service for r in rows) if defn.alias_service else False
                status, output = alias_status(rows, defn.alias_node, defn.alias_service, found)
                self.local.update_check(defn.id, status, output)
            except ProconsulError as err:
                log.debug("alias check %s: %s", defn.id, err)
                await asyncio.sleep(1.0)

    # ------------------------------------------------------------- reaping

    async def _reap(self) -> None:
        """Consul's reapServicesInternal: every check_reap_interval, with timeouts no shorter than check_deregister_interval_min."""
        loop = asyncio.get_running_loop()
        cfg = self.agent.config
        while True:
            await asyncio.sleep(cfg.check_reap_interval)
            now = loop.time()
            for cid, c in list(self.local.live_checks().items()):
                timeout = c.defn.deregister_critical_service_after
                if timeout:
                    timeout = max(timeout, cfg.check_deregister_interval_min)
                sid = c.defn.service_id
                if not timeout or not sid or c.critical_since is None:
                    continue
                if now - c.critical_since > timeout and self.local.service(sid) is not None:
                    log.info("removing service %s: check %s has been critical for more than %.0f s", sid, cid, timeout)
                    await self.agent.deregister_service(sid)
