"""`proconsul connect proxy`: the built-in proxy as its own process, talking to the local agent's HTTP API.

Two ways to say what it proxies, as Consul's `connect proxy`:
``-sidecar-for <service-id>`` (or ``-proxy-id <id>``) runs a registered
connect-proxy service, following changes to its registration; ``-service
<name> [-upstream <dest>:<port> ...] [-listen <addr:port> -service-addr
<addr:port>]`` runs one from flags alone (no public listener without -listen).
Runs until SIGINT or SIGTERM; exits 1 with one line on a bad flag or an
unreachable agent.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any

from proconsul.agent.client import APIError, resolve_addr
from proconsul.agent.proxy import Proxy, ProxySpec, Upstream
from proconsul.agent.proxy_manager import ConfigError, spec_from_service
from proconsul.agent.proxy_source import BLOCK_WAIT, HTTPSource

if TYPE_CHECKING:
    import httpx  # imported where used: `proconsul agent` builds this parser too and never needs httpx

log = logging.getLogger("proconsul.proxy")


class CommandError(Exception):
    """Printed as one line; exit 1."""


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(f"{flag}: {text!r} is not host:port")
    return host or "127.0.0.1", int(port)


def flag_spec(args: argparse.Namespace) -> ProxySpec:
    """The -service form: identity, upstreams, and an inbound listener only with -listen."""
    if not args.service:
        raise CommandError("-service or -sidecar-for is required")
    upstreams = []
    for text in args.upstream or []:
        dest, sep, port = text.partition(":")
        if not sep or not dest or not port.isdigit() or not 0 < int(port) < 65536:
            raise CommandError(f"-upstream: {text!r} is not <destination>:<local port>")
        upstreams.append(Upstream(dest, int(port)))
    public_address, public_port, local_address, local_port = "", 0, "127.0.0.1", 0
    if args.listen:
        public_address, public_port = _host_port(args.listen, "-listen")
        if not args.service_addr:
            raise CommandError("-service-addr is required with -listen: the address of the local app")
        local_address, local_port = _host_port(args.service_addr, "-service-addr")
    elif args.service_addr:
        raise CommandError("-service-addr needs -listen (the public listener that forwards to it)")
    if not upstreams and not public_port:
        raise CommandError("nothing to proxy: give -upstream and/or -listen")
    return ProxySpec(
        id=args.service, service=args.service, public_address=public_address, public_port=public_port,
        local_address=local_address, local_port=local_port, upstreams=tuple(upstreams), protocol=(args.protocol or "").lower(),
    )


async def _find_proxy_id(http: httpx.AsyncClient, target: str) -> str:
    """Consul's LookupProxyIDForSidecar: the one connect-proxy whose DestinationServiceID is ``target``."""
    r = await _json(http, "/v1/agent/services")
    services = r.json() if r is not None else {}
    ids = sorted(
        sid for sid, s in services.items()
        if s.get("Kind") == "connect-proxy" and (s.get("Proxy") or {}).get("DestinationServiceID") == target
    )
    if not ids:
        raise CommandError(f"No sidecar proxy registered for {target}")
    if len(ids) > 1:
        raise CommandError(f"More than one sidecar proxy registered for {target}. Start proxy with -proxy-id and one of the following IDs: {', '.join(ids)}")
    return ids[0]


async def _json(http: httpx.AsyncClient, path: str, **params: Any) -> Any:
    import httpx

    try:
        r = await http.get(path, params=params)
    except httpx.HTTPError as err:
        raise CommandError(f"cannot reach the agent at {http.base_url}: {err}") from None
    if r.status_code == 404:
        return None
    if r.status_code != 200:
        raise CommandError(f"GET {path}: {r.status_code} {r.text.strip()}")
    return r


async def _registered_spec(http: httpx.AsyncClient, proxy_id: str, wait_hash: str = "") -> tuple[ProxySpec, str]:
    params = {"hash": wait_hash, "wait": f"{BLOCK_WAIT:.0f}s"} if wait_hash else {}
    r = await _json(http, f"/v1/agent/service/{proxy_id}", **params)
    if r is None:
        raise CommandError(f"proxy service {proxy_id} is not registered with this agent")
    svc = r.json()
    if svc.get("Kind") != "connect-proxy":
        raise CommandError(f"service {proxy_id} is not a connect-proxy (Kind {svc.get('Kind') or 'typical'!r})")
    try:
        spec = spec_from_service(proxy_id, svc.get("Address") or "", int(svc.get("Port") or 0), svc.get("Proxy") or {}, "127.0.0.1")
    except ConfigError as err:
        raise CommandError(str(err)) from None
    return spec, r.headers.get("x-consul-contenthash", "")


async def run(args: argparse.Namespace) -> int:
    base = resolve_addr(args.http_addr)
    source = HTTPSource(base, args.token or "")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    proxy: Proxy | None = None
    import httpx

    try:
        async with httpx.AsyncClient(base_url=base, timeout=BLOCK_WAIT + 30) as http:
            await _json(http, "/v1/agent/self")  # fail at once, in one line, when there is no agent
            proxy_id, content_hash = args.proxy_id, ""
            if args.sidecar_for:
                proxy_id = await _find_proxy_id(http, args.sidecar_for)
            if proxy_id:
                spec, content_hash = await _registered_spec(http, proxy_id)
            else:
                spec = flag_spec(args)
            proxy = await _start(spec, source)
            stopping = asyncio.ensure_future(stop.wait())
            while not stop.is_set():
                if not proxy_id:
                    await stopping
                    break
                # Follow the registration: a changed definition replaces the proxy (live connections run on).
                change = asyncio.ensure_future(_registered_spec(http, proxy_id, content_hash))
                await asyncio.wait([stopping, change], return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    change.cancel()
                    break
                try:
                    new_spec, content_hash = change.result()
                except CommandError as err:
                    log.warning("%s", err)
                    await asyncio.sleep(1.0)
                    continue
                if new_spec != spec:
                    log.info("proxy %s: registration changed; restarting its listeners", proxy_id)
                    await proxy.stop()
                    spec, proxy = new_spec, await _start(new_spec, source)
    except (CommandError, APIError) as err:
        raise CommandError(str(err)) from None
    finally:
        if proxy is not None:
            await proxy.stop()
        await source.close()
    return 0


async def _start(spec: ProxySpec, source: HTTPSource) -> Proxy:
    proxy = Proxy(spec, source)
    try:
        await proxy.start()
    except (RuntimeError, OSError) as err:
        raise CommandError(str(err)) from None
    public = f"{spec.public_address}:{proxy.public_port}" if spec.public_port else "no inbound listener"
    ups = ", ".join(f"{u.bind_address}:{proxy.upstream_ports[u.destination]} -> {u.destination}" for u in spec.upstreams)
    print(f"==> proxy for {spec.service} running: {public}; upstreams: {ups or 'none'}", flush=True)
    return proxy


def add_parser(connect_subs: Any, sub: Any, flag: Any, http_flags: Any) -> None:
    p = sub(connect_subs, "proxy", "Run the built-in mTLS proxy for a service (talks to the local agent's HTTP API)")
    http_flags(p)
    flag(p, "sidecar-for", dest="sidecar_for", help="the ID of a service whose registered sidecar proxy to run")
    flag(p, "proxy-id", dest="proxy_id", help="the ID of a registered connect-proxy service to run")
    flag(p, "service", help="run a proxy for this service name (unregistered; with -upstream and/or -listen)")
    flag(p, "upstream", action="append", help="<destination>:<local port>; repeatable")
    flag(p, "listen", help="<addr:port> of the public mTLS listener")
    flag(p, "service-addr", dest="service_addr", help="<addr:port> of the local app the public listener forwards to")
    flag(p, "protocol", help="tcp or http (default: the service's service-defaults, else tcp)")
    flag(p, "log-level", dest="log_level", default="info", help="trace, debug, info, warn or err")
