"""Managed proxies: the agent runs the built-in proxy for every sidecar registered here.

A sidecar registered through a service's ``Connect.SidecarService`` gets a proxy
task in the agent's loop, started when it is registered, replaced when its
definition changes, stopped when it is deregistered, and started again (with
backoff) when it fails. ``Proxy.Config.managed = false`` leaves a sidecar to a
proxy run by hand (``proconsul connect proxy -sidecar-for <id>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from proconsul.agent.proxy import Proxy, ProxySpec, Upstream
from proconsul.agent.proxy_source import AgentSource

log = logging.getLogger("proconsul.proxy")

RESTART_MIN, RESTART_MAX = 0.5, 10.0


class ConfigError(ValueError):
    """A proxy definition that cannot run (its message names the field)."""


def spec_from_service(sid: str, address: str, port: int, proxy: dict[str, Any], default_bind: str) -> ProxySpec:
    """A ProxySpec from a connect-proxy registration (Consul's AgentService fields; Proxy in Consul's JSON)."""
    config = proxy.get("Config") or {}
    dest = proxy.get("DestinationServiceName") or ""
    if not dest:
        raise ConfigError(f"proxy {sid}: Proxy.DestinationServiceName is required")
    upstreams = []
    for u in proxy.get("Upstreams") or []:
        if (u.get("DestinationType") or "service") != "service":
            raise ConfigError(f"proxy {sid}: upstream {u.get('DestinationName')}: only service upstreams are supported")
        if not u.get("LocalBindPort"):
            raise ConfigError(f"proxy {sid}: upstream {u.get('DestinationName')}: LocalBindPort is required")
        upstreams.append(Upstream(u["DestinationName"], int(u["LocalBindPort"]), u.get("LocalBindAddress") or "127.0.0.1", u.get("Datacenter") or ""))
    protocol = str(config.get("protocol") or "").lower()
    return ProxySpec(
        id=sid,
        service=dest,
        public_address=str(config.get("bind_address") or address or default_bind),
        public_port=int(config.get("bind_port") or port),
        local_address=proxy.get("LocalServiceAddress") or "127.0.0.1",
        local_port=int(proxy.get("LocalServicePort") or 0),
        upstreams=tuple(upstreams),
        protocol=protocol,
    )


class _Managed:
    def __init__(self, spec: ProxySpec, source: AgentSource) -> None:
        self.spec = spec
        self.source = source
        self.proxy: Proxy | None = None
        self.task: asyncio.Task | None = None
        self.failures = 0


class ProxyManager:
    """See the module docstring."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.running: dict[str, _Managed] = {}

    def wanted(self) -> dict[str, ProxySpec]:
        out = {}
        bind = self.agent.config.advertise
        for sid, defn in self.agent.local.live_services().items():
            svc = defn.service
            if svc.kind != "connect-proxy" or not defn.is_sidecar:
                continue
            if str((svc.proxy.get("Config") or {}).get("managed", True)).lower() == "false":
                continue
            try:
                out[sid] = spec_from_service(sid, svc.address, svc.port, svc.proxy, bind)
            except ConfigError as err:
                log.error("%s", err)
        return out

    def sync(self) -> None:
        """Start, replace and stop proxies to match the registered sidecars."""
        wanted = self.wanted()
        for sid in list(self.running):
            if wanted.get(sid) != self.running[sid].spec:
                self._stop(sid)
        for sid, spec in wanted.items():
            if sid not in self.running:
                # Each proxy acts with the token its sidecar was registered with (else the agent token).
                source = AgentSource(self.agent, lambda sid=sid: self.agent.service_token(sid))
                m = self.running[sid] = _Managed(spec, source)
                m.task = asyncio.create_task(self._supervise(m), name=f"proxy-{sid}")

    def proxy(self, sid: str) -> Proxy | None:
        m = self.running.get(sid)
        return m.proxy if m is not None else None

    async def _supervise(self, m: _Managed) -> None:
        """Keep one proxy running: start it, and start it again after a failure, with backoff."""
        delay = RESTART_MIN
        while True:
            proxy = Proxy(m.spec, m.source, self.agent.metrics)
            try:
                await proxy.start()
            except asyncio.CancelledError:
                await proxy.stop()
                raise
            except Exception as err:  # noqa: BLE001 (a port in use, no CA yet: try again)
                m.failures += 1
                log.error("proxy %s failed to start, retrying in %.1fs: %s", m.spec.id, delay, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX)
                continue
            m.proxy = proxy
            delay = RESTART_MIN
            # The sidecar's "listening" check need not wait out its stagger: the listener is up now.
            for c in self.agent.local.service_checks(m.spec.id):
                if c.defn.kind == "tcp":
                    await self.agent.checks.run_now(c.defn.id)
            try:
                await proxy.wait_failed()
            finally:
                m.proxy = None
                await proxy.stop()
            m.failures += 1
            log.error("proxy %s stopped unexpectedly; restarting", m.spec.id)

    def _stop(self, sid: str) -> None:
        m = self.running.pop(sid)
        if m.task is not None:
            m.task.cancel()

    async def stop(self) -> None:
        tasks = [m.task for m in self.running.values() if m.task is not None]
        self.running.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
