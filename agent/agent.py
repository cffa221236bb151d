"""The agent process: HTTP API, local state, checks, anti-entropy and heartbeats — and on servers, the Raft server.

One asyncio loop carries everything. ``rpc(method, args)`` is how the agent
reaches the servers: a direct call into the in-process server on a server
agent, server RPC (with failover) on a client agent. ``/v1/agent/*`` answers
from local state; catalog and health reads go through ``rpc``; the CLI speaks
HTTP only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import socket
from typing import Any

import uvicorn

from proconsul.agent.antientropy import AntiEntropy
from proconsul.agent.checkmgr import CheckManager
from proconsul.agent.config import RuntimeConfig
from proconsul.agent.intentions import IntentionCache
from proconsul.agent.leafcerts import LeafCerts
from proconsul.agent.local import LocalState
from proconsul.agent.metrics import Metrics
from proconsul.agent.persist import AgentStore
from proconsul.agent.proxy_manager import ProxyManager
from proconsul.agent.router import ServerRouter
from proconsul.agent.structs import SIDECAR_SUFFIX, CheckDef, ServiceDef, sidecar_default_checks
from proconsul.agent.version import __version__
from proconsul.api.app import build_app
from proconsul.api.protocol import HTTPProtocol
from proconsul.server.codec import to_wire
from proconsul.server.commands import RegisterRequest
from proconsul.server.errors import BadRequest, NotFound, ProconsulError
from proconsul.server import tls as tlsutil
from proconsul.server.rpc import RPCPool
from proconsul.server.server import Server
from proconsul.server.state.members import tagged_addresses
from proconsul.server.structs import HeartbeatRequest, HelloRequest, MemberRequest

log = logging.getLogger("proconsul.agent")

SERVICE_MAINT_PREFIX = "_service_maintenance:"
NODE_MAINT_ID = "_node_maintenance"
# A heartbeat unanswered this long means the servers are out of reach; longer than a server
# holds a request while it has no leader (rpc_hold_timeout, 7 s), so an election is not mistaken for it.
HEARTBEAT_TIMEOUT = 10.0
DEFAULT_SERVICE_MAINT_REASON = "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
DEFAULT_NODE_MAINT_REASON = "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
SCRIPTS_DISABLED_REMOTE = (
    "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true"
)
SCRIPTS_DISABLED = (
    "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or "
    "'enable_local_script_checks' to true"
)


def _ip_tagged_addresses(svc: Any) -> None:
    """Consul's addServiceInternal: a service with an IP literal address gets lan_/wan_ipv4 (or ipv6) tags."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(svc.address)
    except ValueError:
        return
    suffix = "ipv4" if ip.version == 4 else "ipv6"
    for tag in (f"lan_{suffix}", f"wan_{suffix}"):
        svc.tagged_addresses.setdefault(tag, {"Address": svc.address, "Port": svc.port})


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the agent owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


class StartupError(Exception):
    """The agent cannot start; the message says why in one line."""


def _listen(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise StartupError(f"cannot listen for {what} on {host}:{port}: {err.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _client_pool(cfg: RuntimeConfig) -> RPCPool:
    """A client agent's server RPC: TLS when tls.internal_rpc says verify_outgoing, as Consul's OutgoingRPCWrapper."""
    pc = cfg.tls_internal_rpc
    name = tlsutil.server_name(cfg.datacenter, cfg.domain) if pc.verify_server_hostname else None
    return RPCPool(ssl=tlsutil.outgoing_context(pc), server_name=name)


class Agent:
    """See the module docstring."""

    def __init__(self, config: RuntimeConfig, config_inputs: tuple[dict, list[str], list[str]] | None = None) -> None:
        self.config = config
        # What the config was built from (flags, -config-file, -config-dir), so reload can rebuild it.
        self._config_inputs = config_inputs
        self.metrics = Metrics()
        self.server: Server | None = Server(config.server_config()) if config.server else None
        self.router: ServerRouter | None = None if config.server else ServerRouter(list(config.retry_join), _client_pool(config))
        self.local = LocalState(
            AgentStore(config.data_dir) if config.data_dir else None, check_update_interval=config.check_update_interval
        )
        self.checks = CheckManager(self)
        self.ae = AntiEntropy(self)
        self.leafcerts = LeafCerts(self)  # Connect CA roots and service leaf certificates, made on first use
        # /v1/agent/connect/authorize, watched per target on first use (read with the asker's token, else the agent token)
        self.intentions = IntentionCache(self.rpc, self.agent_token)
        self.proxies = ProxyManager(self)  # a built-in proxy for each sidecar registered here
        self.local.on_sync_needed = self.ae.trigger
        self.connected = False
        self.dns: Any = None
        self._http: _Uvicorn | None = None
        self._https: _Uvicorn | None = None
        self._tasks: list[asyncio.Task] = []
        self._heartbeat_round = asyncio.Lock()  # held while a heartbeat is out; leaving takes it to wait for it
        self._stop = asyncio.Event()
        self._register_gauges()

    # ------------------------------------------------------------- servers

    async def rpc(self, method: str, args: Any, timeout: float | None = None) -> Any:
        """Call a server endpoint: in-process on a server agent, over server RPC on a client (``timeout`` there)."""
        if self.server is not None:
            return await self.server.call(method, args)
        return await self.router.call(method, args, timeout=timeout)

    def agent_token(self) -> str:
        """The token for the agent's own RPC (Consul's tokens.AgentToken): ``acl.tokens.agent``, else ``acl.tokens.default``."""
        cfg = self.config
        return cfg.acl_token_agent or cfg.acl_token_default

    def service_token(self, service_id: str) -> str:
        """The token a local service syncs with: the one it was registered with, else the agent token (Consul's serviceToken)."""
        s = self.local.services.get(service_id)
        return (s.defn.token if s is not None else "") or self.agent_token()

    def set_token(self, kind: str, secret: str) -> None:
        """Consul's PUT /v1/agent/token/<kind> on the running agent (not persisted; a reload reads the files again).

        ``kind`` is a config field name (``acl_token_default``, ``acl_token_agent``, ``acl_token_agent_recovery``).
        A new default or agent token starts a full anti-entropy sync, as Consul's SyncFull.Trigger.
        """
        if getattr(self.config, kind) == secret:
            return
        self.config = dataclasses.replace(self.config, **{kind: secret})
        if kind in ("acl_token_default", "acl_token_agent"):
            self.ae.trigger_full()
        if kind == "acl_token_default" and self.dns is not None:
            self.dns.resolver.cache.close()  # answers fetched with the old token may show what the new one may not

    def node_registration(self) -> RegisterRequest:
        """This node as anti-entropy registers it."""
        cfg = self.config
        return RegisterRequest(
            node=cfg.node_name,
            id=cfg.node_id,
            address=cfg.advertise,
            datacenter=cfg.datacenter,
            tagged_addresses=tagged_addresses(cfg.advertise),
            node_meta={"consul-network-segment": "", **cfg.node_meta},
        )

    def member_tags(self) -> dict[str, str]:
        """Consul's serf tags for this agent."""
        cfg = self.config
        tags = {"dc": cfg.datacenter, "id": cfg.node_id, "role": "consul" if cfg.server else "node", "vsn": "2", "build": __version__}
        if cfg.server:
            tags.update(port=str(cfg.ports.server), raft_vsn="3", expect=str(cfg.bootstrap_expect))
        return tags

    async def _heartbeat_loop(self) -> None:
        cfg = self.config
        req = HeartbeatRequest(
            name=cfg.node_name,
            id=cfg.node_id,
            address=cfg.advertise,
            datacenter=cfg.datacenter,
            role="consul" if cfg.server else "node",
            port=cfg.ports.server if cfg.server else 0,
            tags=self.member_tags(),
        )
        unreachable_logged = False
        while True:
            try:
                async with self._heartbeat_round:
                    reply = await self.rpc("Internal.Heartbeat", req, timeout=HEARTBEAT_TIMEOUT)
                if self.router is not None:
                    self.router.update(reply.servers)
                if not self.connected:
                    log.info("in contact with the servers (leader %s)", reply.leader or "unknown")
                    self.connected = True
                    self.ae.trigger_full()
            except ProconsulError as err:
                if self.connected and self.router is not None:
                    log.warning(
                        "lost contact with the servers (partitioned?): DNS answers come from the cache and "
                        "local changes sync once they are back: %s", err,
                    )
                elif self.connected:
                    log.warning("lost contact with the servers: %s", err)
                elif self.router is not None and not unreachable_logged:  # once: a client's bad join (address, TLS) says why
                    log.warning("cannot reach the servers: %s", err)
                    unreachable_logged = True
                self.connected = False
            await asyncio.sleep(cfg.liveness_interval)

    # ------------------------------------------------------------- ACL vetting (Consul's agent/acl.go)

    def vet_service_register(self, caller: Any, svc: Any) -> None:
        """Consul's vetServiceRegister: service:write on the service, on the one it replaces, and on a proxy's destination."""
        if caller.unrestricted:
            return
        authz = caller.authorizer
        caller.require(authz.service_write(svc.service), "service", "write", svc.service)
        existing = self.local.service(svc.id or svc.service)
        if existing is not None:
            name = existing.service.service
            caller.require(authz.service_write(name), "service", "write", name)
        if svc.kind == "connect-proxy":
            dest = svc.proxy.get("DestinationServiceName") or ""
            caller.require(authz.service_write(dest), "service", "write", dest)

    def vet_service_update(self, caller: Any, service_id: str) -> None:
        """Consul's vetServiceUpdate: service:write on the registered service; NotFound when there is none."""
        defn = self.local.service(service_id)
        if defn is None:
            raise NotFound(f'Unknown service ID "{service_id}". Ensure that the service ID is passed, not the service name.')
        if not caller.unrestricted:
            name = defn.service.service
            caller.require(caller.authorizer.service_write(name), "service", "write", name)

    def _vet_check(self, caller: Any, service_id: str) -> None:
        """A service's check needs service:write on the service; a node check node:write on this node."""
        svc = self.local.service(service_id) if service_id else None
        if svc is not None:
            name = svc.service.service
            caller.require(caller.authorizer.service_write(name), "service", "write", name)
        else:
            node = self.config.node_name
            caller.require(caller.authorizer.node_write(node), "node", "write", node)

    def vet_check_register(self, caller: Any, defn: CheckDef) -> None:
        """Consul's vetCheckRegister, for the new check and the one it replaces; NotFound for an unknown ServiceID."""
        if defn.service_id and self.local.service(defn.service_id) is None:
            raise NotFound(f'ServiceID "{defn.service_id}" does not exist')
        if caller.unrestricted:
            return
        self._vet_check(caller, defn.service_id)
        existing = self.local.check(defn.id)
        if existing is not None:
            self._vet_check(caller, existing.defn.service_id)

    def vet_check_update(self, caller: Any, check_id: str) -> None:
        """Consul's vetCheckUpdate: the rule of the existing check; NotFound when there is none."""
        existing = self.local.check(check_id)
        if existing is None:
            raise NotFound(f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check name.')
        if not caller.unrestricted:
            self._vet_check(caller, existing.defn.service_id)

    # ------------------------------------------------------------- services and checks

    def _allow_script(self, defn: CheckDef, source: str) -> None:
        if defn.kind != "script":
            return
        cfg = self.config
        if cfg.enable_script_checks or (source == "config" and cfg.enable_local_script_checks):
            return
        raise BadRequest(SCRIPTS_DISABLED_REMOTE if source == "api" else SCRIPTS_DISABLED)

    async def register_service(self, defn: ServiceDef, source: str = "api", replace_existing_checks: bool = False) -> None:
        """Add or replace a service and its checks (Consul's AddService); validated before anything changes.

        A ``Connect.SidecarService`` block registers the proxy too, after its parent, with a port
        from the sidecar range and Consul's default checks when it names none.
        """
        sidecar = defn.sidecar
        for check in defn.checks + (sidecar.checks if sidecar is not None else []):
            self._allow_script(check, source)
        if sidecar is not None:
            defn.sidecar = None  # the parent is kept without it, as Consul keeps it
            if sidecar.service.port < 1 and not sidecar.service.socket_path:
                sidecar.service.port = self._sidecar_port(sidecar.service.id)
            if not sidecar.checks:
                sidecar.checks = sidecar_default_checks(sidecar.service)
        await self._register_one(defn, source, replace_existing_checks)
        if sidecar is not None:
            await self._register_one(sidecar, source, replace_existing_checks)

    def _sidecar_port(self, sidecar_id: str) -> int:
        """Consul's sidecarPortFromServiceIDLocked: the port this sidecar already has, else the lowest free one."""
        lo, hi = self.config.ports.sidecar_min_port, self.config.ports.sidecar_max_port
        if lo < 1 or hi < 1:
            raise BadRequest("Invalid SidecarService: no port provided for sidecar_service and auto-assignment disabled in config")
        used = set()
        for sid, other in self.local.live_services().items():
            if lo <= other.service.port <= hi:
                if sid == sidecar_id:
                    return other.service.port
                used.add(other.service.port)
        for port in range(lo, hi + 1):
            if port not in used:
                return port
        raise BadRequest(f"Invalid SidecarService: no port provided for sidecar_service and none left in the configured range [{lo}, {hi}]")

    async def _register_one(self, defn: ServiceDef, source: str, replace_existing_checks: bool) -> None:
        sid = defn.service.id
        _ip_tagged_addresses(defn.service)
        wanted = {c.id for c in defn.checks}
        if replace_existing_checks:
            for old in self.local.service_checks(sid):
                if old.defn.id not in wanted:
                    await self.deregister_check(old.defn.id)
        self.local.add_service(defn, source)
        for check in defn.checks:
            check.service_id = sid
            check.token = defn.token  # a service's own checks sync with its token (Consul's AddService)
            await self._add_check(check, source)
        self.proxies.sync()

    async def deregister_service(self, service_id: str) -> None:
        """Remove a service and its checks; NotFound when there is no such service."""
        if self.local.service(service_id) is None:
            raise NotFound(f'Unknown service ID "{service_id}". Ensure that the service ID is passed, not the service name.')
        for c in self.local.service_checks(service_id):
            await self.checks.remove(c.defn.id)
        self.local.remove_service(service_id)
        self.proxies.sync()
        sidecar = self.local.service(service_id + SIDECAR_SUFFIX)
        if sidecar is not None and sidecar.is_sidecar:  # registered through this service's SidecarService
            await self.deregister_service(sidecar.service.id)

    async def register_check(self, defn: CheckDef, source: str = "api") -> None:
        """Add or replace a check (Consul's AddCheck): its service, if any, must be registered here."""
        self._allow_script(defn, source)
        if defn.service_id and self.local.service(defn.service_id) is None:
            raise NotFound(f'ServiceID "{defn.service_id}" does not exist')
        await self._add_check(defn, source)

    async def _add_check(self, defn: CheckDef, source: str) -> None:
        previous = self.local.check(defn.id)
        # Re-registering a check keeps its last status and output, as Consul's AddCheck does.
        keep = previous is not None and previous.defn.kind == defn.kind
        self.local.add_check(defn, source, status=previous.status if keep else None, output=previous.output if keep else None)
        await self.checks.add(defn)

    async def deregister_check(self, check_id: str) -> None:
        if self.local.check(check_id) is None:
            raise NotFound(f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check name.')
        await self.checks.remove(check_id)
        self.local.remove_check(check_id)

    def update_ttl_check(self, check_id: str, status: str, output: str) -> None:
        """pass/warn/fail/update: only TTL checks take outside updates, as in Consul."""
        check = self.local.check(check_id)
        if check is None:
            raise NotFound(f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check name.')
        if not self.checks.ttl_update(check_id, status, output):
            raise BadRequest(f'CheckID "{check_id}" does not have associated TTL')

    async def service_maintenance(self, service_id: str, enable: bool, reason: str) -> None:
        """Consul's EnableServiceMaintenance / DisableServiceMaintenance."""
        if self.local.service(service_id) is None:
            raise NotFound(f'Unknown service ID "{service_id}". Ensure that the service ID is passed, not the service name.')
        self._maintenance(
            CheckDef(
                id=SERVICE_MAINT_PREFIX + service_id,
                name="Service Maintenance Mode",
                kind="maintenance",
                service_id=service_id,
                notes=reason or DEFAULT_SERVICE_MAINT_REASON,
                status="critical",
            ),
            enable,
            f"service {service_id}",
        )

    async def node_maintenance(self, enable: bool, reason: str) -> None:
        """Consul's EnableNodeMaintenance / DisableNodeMaintenance."""
        self._maintenance(
            CheckDef(
                id=NODE_MAINT_ID,
                name="Node Maintenance Mode",
                kind="maintenance",
                notes=reason or DEFAULT_NODE_MAINT_REASON,
                status="critical",
            ),
            enable,
            "node",
        )

    def _maintenance(self, defn: CheckDef, enable: bool, what: str) -> None:
        """Maintenance is a critical check that is there or not (idempotent both ways)."""
        present = self.local.check(defn.id) is not None
        if enable and not present:
            self.local.add_check(defn, "api")
            log.info("%s entered maintenance mode", what)
        elif not enable and present:
            self.local.remove_check(defn.id)
            log.info("%s left maintenance mode", what)

    async def _load_definitions(self) -> None:
        """Persisted API registrations first, then config files (which win on a clash, as in Consul)."""
        services, checks = self.local.load_persisted()
        for defn in services:
            await self._restore(self.register_service, defn)
        for check in checks:
            if check.kind == "maintenance":
                self.local.add_check(check, "api")
            elif self.local.check(check.id) is None:
                await self._restore(self.register_check, check)
        await self._load_config_definitions(self.config)

    async def _restore(self, register: Any, defn: Any) -> None:
        try:
            await register(defn)
        except ProconsulError as err:
            log.warning("not restoring %s: %s", getattr(defn, "id", defn), err)

    async def _load_config_definitions(self, cfg: RuntimeConfig) -> None:
        for defn in cfg.services:
            await self.register_service(ServiceDef.from_json(defn.to_json()), "config")
        for check in cfg.checks:
            await self.register_check(CheckDef.from_json(check.to_json()), "config")

    def rebuild_config(self) -> RuntimeConfig:
        """Read the config files again (ConfigError when they are broken: the running config stays)."""
        from proconsul.agent import config as config_mod

        if self._config_inputs is None:
            return self.config
        flags, files, dirs = self._config_inputs
        return config_mod.build(flags, files, dirs)

    async def reload_from_files(self) -> None:
        """Consul's reload (PUT /v1/agent/reload, ``proconsul reload``, SIGHUP): read the config files again and apply them.

        A broken file changes nothing: the error is logged and raised as a 400 naming the file and the key.
        """
        from proconsul.agent.config import ConfigError

        try:
            new = self.rebuild_config()
        except ConfigError as err:
            log.error("reload failed, keeping the running configuration: %s", err)
            raise BadRequest(f"Failed to reload configs: {err}") from None
        await self.reload(new)

    async def reload(self, new: RuntimeConfig) -> None:
        """Consul's reload: config-file services and checks are replaced; the rest of the config too."""
        for sid, s in list(self.local.services.items()):
            if s.source == "config" and not s.deleted:
                await self.deregister_service(sid)
        for cid, c in list(self.local.checks.items()):
            if c.source == "config" and not c.deleted:
                await self.deregister_check(cid)
        token_changed = self.agent_token() != (new.acl_token_agent or new.acl_token_default)
        self.config = new
        if token_changed:
            self.ae.trigger_full()
        try:
            await self._load_config_definitions(new)
        except ProconsulError as err:
            log.error("reload: %s", err)
            raise BadRequest(f"Failed to reload configs: {err}") from None
        log.info("configuration reloaded from %s", ", ".join(new.config_files) or "flags")

    async def join(self, addr: str) -> None:
        """/v1/agent/join: a client adds a server to use; a server introduces itself to another server."""
        if self.server is None:
            self.router.add(addr)
            return
        members = self.server.members
        raw = await self.server.pool.call(addr, "Server.Hello", to_wire(HelloRequest(me=members.me, known=members.servers())), timeout=5.0)
        from proconsul.server.codec import from_wire
        from proconsul.server.structs import HelloReply

        reply = from_wire(HelloReply, raw)
        members.merge([reply.me, *reply.known])

    async def leave(self) -> None:
        """Leave the cluster gracefully (the node leaves the catalog; a server leaves Raft), then shut down."""
        await self._quiesce()
        try:
            await self.rpc("Internal.Leave", MemberRequest(name=self.config.node_name, token=self.agent_token()))
            log.info("left the cluster")
        except ProconsulError as err:
            log.warning("leaving the cluster: %s", err)
        self._stop.set()

    async def _quiesce(self) -> None:
        """Stop heartbeats and catalog syncs, waiting for any that is out: one the leader handled after our
        Leave would bring the node back as alive (seen in a test: alive again 1 ms after it left)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HEARTBEAT_TIMEOUT  # one wait for both: a cut-off agent leaves (or fails to) in 10 s
        for task, round_lock in (("heartbeat", self._heartbeat_round), ("anti-entropy", self.ae.round)):
            try:
                await asyncio.wait_for(round_lock.acquire(), max(0.01, deadline - loop.time()))
            except asyncio.TimeoutError:
                log.warning("leaving: a %s call is still out after %.0f s; leaving anyway", task, HEARTBEAT_TIMEOUT)
            for t in self._tasks:
                if t.get_name() == task:
                    t.cancel()  # waiting for its next round or for the lock: it sends nothing more

    # ------------------------------------------------------------- metrics

    def _register_gauges(self) -> None:
        def gauges() -> list[tuple[str, float, dict[str, str]]]:
            out = [
                ("agent.services", float(len(self.local.live_services())), {}),
                ("agent.checks", float(len(self.local.live_checks())), {}),
            ]
            if self.server is not None:
                nodes, services, checks = self.server.state.catalog_counts()
                out += [
                    ("catalog.nodes", float(nodes), {}),
                    ("catalog.service_instances", float(services), {}),
                    ("catalog.checks", float(checks), {}),
                ]
            return out

        self.metrics.add_gauge_source(gauges)
        if self.server is not None:
            self.server.metrics = self.metrics

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        cfg = self.config
        http_sock = _listen(cfg.client_addr, cfg.ports.http, "HTTP") if cfg.ports.http > 0 else None
        https_sock = _listen(cfg.client_addr, cfg.ports.https, "HTTPS") if cfg.ports.https > 0 else None
        if self.server is not None:
            try:
                await self.server.start()
            except OSError as err:
                raise StartupError(f"cannot listen for server RPC on {cfg.bind_addr}:{cfg.ports.server}: {err.strerror or err}") from None
        try:
            await self._load_definitions()
        except ProconsulError as err:
            raise StartupError(f"cannot register the config files' services and checks: {err}") from None
        self.checks.start()
        if cfg.ports.dns > 0:
            await self._start_dns()
        self._tasks += [
            asyncio.create_task(self.ae.run(), name="anti-entropy"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        ]
        if http_sock is not None:
            self._http = _Uvicorn(self._uvicorn_config())
            self._tasks.append(asyncio.create_task(self._http.serve(sockets=[http_sock]), name="http"))
        if https_sock is not None:
            config = self._uvicorn_config()
            config.load()
            # Our own context (Consul's IncomingHTTPSConfig): verify_incoming requires a client cert from the CA.
            config.ssl = tlsutil.incoming_context(cfg.tls_https)
            self._https = _Uvicorn(config)
            self._tasks.append(asyncio.create_task(self._https.serve(sockets=[https_sock]), name="https"))
        rpc_tls = cfg.tls_internal_rpc
        log.info(
            "started %s: node %s, datacenter %s, http %s:%s, https %s, server rpc %s, rpc tls %s",
            "server" if cfg.server else "client",
            cfg.node_name, cfg.datacenter, cfg.client_addr, cfg.ports.http,
            f"{cfg.client_addr}:{cfg.ports.https}" if https_sock is not None else "off",
            f"{cfg.bind_addr}:{cfg.ports.server}" if cfg.server else "off",
            ", ".join(n for n, on in (("incoming", cfg.server and rpc_tls.has_cert), ("verify_incoming", cfg.server and rpc_tls.verify_incoming),
                                      ("verify_outgoing", rpc_tls.verify_outgoing), ("verify_server_hostname", rpc_tls.verify_server_hostname)) if on) or "off",
        )

    def _uvicorn_config(self) -> uvicorn.Config:
        return uvicorn.Config(
            build_app(self),
            loop="none",
            http=HTTPProtocol,  # httptools, one send per response (api/protocol.py)
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
            server_header=False,
            proxy_headers=False,  # Consul ignores X-Forwarded-*; the middleware costs every request
        )

    async def _start_dns(self) -> None:
        from proconsul.dns.cache import CatalogCache
        from proconsul.dns.resolver import Resolver
        from proconsul.dns.server import DNSServer

        cfg = self.config
        # DNS reads with acl.tokens.default, as it is now (PUT /v1/agent/token/default may change it).
        cache = CatalogCache(self.rpc, cfg.dns.cache_max_age, self.metrics, cfg.dns.allow_stale, cfg.dns.max_stale,
                             token=lambda: self.config.acl_token_default)
        resolver = Resolver(cfg, cache, cfg.advertise, query=self._dns_prepared_query)
        self.dns = DNSServer(cfg, resolver, self.metrics)
        try:
            await self.dns.start(cfg.client_addr, cfg.ports.dns)
        except OSError as err:
            raise StartupError(f"cannot listen for DNS on {cfg.client_addr}:{cfg.ports.dns}: {err.strerror or err}") from None

    async def _dns_prepared_query(self, name: str) -> dict[str, Any] | None:
        """Execute ``<name>.query.consul`` as Consul's DNS does: from this agent, stale reads allowed; None if unknown."""
        from proconsul.server.endpoints.query import QueryExecute
        from proconsul.server.structs import QueryOptions

        cfg = self.config
        # Consul's DNS answers with the DNS token, which falls back to the default token.
        args = QueryExecute(name, agent_node=cfg.node_name, near="_agent",
                            opts=QueryOptions(stale=cfg.dns.allow_stale, token=cfg.acl_token_default))
        try:
            reply = await self.rpc("PreparedQuery.Execute", args)
        except NotFound:
            return None
        return reply.value

    async def stop(self) -> None:
        if self.dns is not None:
            await self.dns.stop()
            self.dns.resolver.cache.close()
        for server in (self._http, self._https):
            if server is not None:
                server.should_exit = True
        for task in self._tasks:
            if task.get_name() not in ("http", "https"):
                task.cancel()
        http = [t for t in self._tasks if t.get_name() in ("http", "https")]
        if http:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*http), 3)
        await self.checks.stop()
        await self.proxies.stop()
        await self.leafcerts.stop()
        self.intentions.close()
        if self.server is not None:
            await self.server.stop()
        if self.router is not None:
            self.router.pool.close()
        if self.local._persist is not None:
            self.local._persist.close()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Start, serve until SIGINT or SIGTERM (or /v1/agent/leave), then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await self.start()
        except BaseException:
            # What start() had begun (Raft, a leadership's duties, listeners) ends before the error is told.
            await self.stop()
            raise
        # What start() built lives as long as the agent: out of the cyclic GC's full passes, which would walk it all
        # a few times a minute under load (tens of ms each, stalling every connection and request on the loop).
        # FastAPI's part of the HTTP API loads on a thread meanwhile (~45k objects): frozen too once it is there.
        gc.freeze()
        for server in (self._http, self._https):
            if server is not None:
                await server.config.app.loaded()
        gc.freeze()
        await self._stop.wait()
        log.info("shutting down")
        await self.stop()

    def _on_sighup(self) -> None:
        log.info("caught SIGHUP, reloading the configuration")
        self._reload_task = asyncio.ensure_future(self._reload_quietly())  # kept referenced until it ends

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(ProconsulError):  # already logged; the running config stays
            await self.reload_from_files()

    def _on_signal(self) -> None:
        if self._stop.is_set():
            log.warning("second signal: exiting now")
            raise SystemExit(1)
        self._stop.set()
