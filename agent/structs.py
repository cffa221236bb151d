"""Service and check definitions as an agent receives them: from its HTTP API or from config files.

Consul decodes both forms into the same structs: the API's CamelCase and the
config files' snake_case, with field names matched case-insensitively
(``DeregisterCriticalServiceAfter`` = ``deregister_critical_service_after``).
Only struct field names are folded; user data (Meta, Header, Proxy.Config,
TaggedAddresses' names) keeps its keys. API bodies ignore fields we do not
know (Enterprise fields like Namespace arrive there); config files refuse them.
Every problem is a ``BadRequest`` with Consul's wording where Consul has one.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from proconsul.agent.checks import CheckSpec
from proconsul.server.durations import format_duration
from proconsul.api.decode import as_bool, as_duration, as_int, as_str, as_strlist, as_strmap, check_unknown, fold
from proconsul.server.commands import CheckRecord, NodeService
from proconsul.server.errors import BadRequest

CHECK_KINDS = ("script", "http", "tcp", "udp", "grpc", "ttl", "alias")
SERVICE_KINDS = ("", "connect-proxy", "mesh-gateway", "terminating-gateway", "ingress-gateway", "api-gateway")
DEFAULT_SCRIPT_TIMEOUT = 30.0
DEFAULT_TIMEOUT = 10.0
SIDECAR_SUFFIX = "-sidecar-proxy"  # Consul's structs.SidecarProxySuffix
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")


# ----------------------------------------------------------------- checks


@dataclass
class CheckDef:
    """A check as the agent keeps it: what to run (``spec()``) and what the catalog shows (``record()``)."""

    id: str
    name: str
    kind: str
    service_id: str = ""
    notes: str = ""
    status: str = "critical"
    output: str = ""
    interval: float = 0.0
    timeout: float = 0.0
    ttl: float = 0.0
    http: str = ""
    method: str = ""
    header: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    tls_skip_verify: bool = False
    tls_server_name: str = ""
    disable_redirects: bool = False
    tcp: str = ""
    udp: str = ""
    grpc: str = ""
    grpc_use_tls: bool = False
    args: list[str] = field(default_factory=list)
    alias_node: str = ""
    alias_service: str = ""
    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0
    output_max_size: int = 4096
    deregister_critical_service_after: float = 0.0
    token: str = ""

    def spec(self) -> CheckSpec:
        """What the check runner needs (alias checks are run by the agent, not a runner)."""
        timeout = self.timeout or (DEFAULT_SCRIPT_TIMEOUT if self.kind == "script" else DEFAULT_TIMEOUT)
        return CheckSpec(
            check_id=self.id,
            name=self.name,
            kind=self.kind,
            service_id=self.service_id,
            interval=self.interval,
            timeout=timeout,
            ttl=self.ttl,
            status=self.status,
            http=self.http,
            method=self.method or "GET",
            header={k: list(v) for k, v in self.header.items()},
            body=self.body,
            tls_skip_verify=self.tls_skip_verify,
            tls_server_name=self.tls_server_name,
            disable_redirects=self.disable_redirects,
            tcp=self.tcp,
            udp=self.udp,
            grpc=self.grpc,
            grpc_use_tls=self.grpc_use_tls,
            args=list(self.args),
            success_before_passing=self.success_before_passing,
            failures_before_warning=self.failures_before_warning,
            failures_before_critical=self.failures_before_critical,
            output_max_size=self.output_max_size,
        )

    def definition(self) -> dict[str, Any]:
        """Consul's HealthCheckDefinition: the ``Definition`` object of a catalog check."""
        out: dict[str, Any] = {}
        if self.http:
            out.update(HTTP=self.http, Method=self.method, Header=self.header or None, Body=self.body)
            out.update(TLSServerName=self.tls_server_name, TLSSkipVerify=self.tls_skip_verify)
        if self.tcp:
            out["TCP"] = self.tcp
        if self.udp:
            out["UDP"] = self.udp
        if self.grpc:
            out.update(GRPC=self.grpc, GRPCUseTLS=self.grpc_use_tls)
        if self.args:
            out["ScriptArgs"] = list(self.args)
        if self.alias_node or self.alias_service:
            out.update(AliasNode=self.alias_node, AliasService=self.alias_service)
        if self.interval:
            out["Interval"] = format_duration(self.interval)
        if self.timeout:
            out["Timeout"] = format_duration(self.timeout)
        if self.ttl:
            out["TTL"] = format_duration(self.ttl)
        if self.deregister_critical_service_after:
            out["DeregisterCriticalServiceAfter"] = format_duration(self.deregister_critical_service_after)
        return out

    def record(self, status: str, output: str) -> CheckRecord:
        """The catalog row for this check at a given status."""
        return CheckRecord(
            check_id=self.id,
            name=self.name,
            status=status,
            notes=self.notes,
            output=output,
            service_id=self.service_id,
            type=self.kind,
            interval=format_duration(self.interval) if self.interval else "",
            timeout=format_duration(self.timeout) if self.timeout else "",
            definition=self.definition(),
        )

    def to_json(self) -> dict[str, Any]:
        """For persistence: every field, read back by ``CheckDef.from_json``."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CheckDef":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_CHECK_FIELDS = {
    "id", "checkid", "name", "notes", "serviceid", "token", "status", "output", "scriptargs", "args", "http", "header",
    "method", "body", "tcp", "udp", "grpc", "grpcusetls", "aliasnode", "aliasservice", "tlsservername",
    "tlsskipverify", "disableredirects", "interval", "timeout", "ttl", "successbeforepassing",
    "failuresbeforewarning", "failuresbeforecritical", "deregistercriticalserviceafter", "outputmaxsize",
    "type", "definition", "node", "servicename", "servicetags", "createindex", "modifyindex", "exposedport",
    "dockercontainerid", "shell", "h2ping", "h2pingusetls", "osservice",
}


def parse_check(data: Any, *, service_id: str = "", default_id: str = "", default_name: str = "", strict: bool = False) -> CheckDef:
    """One check definition (a service's Check/Checks entry, /v1/agent/check/register, or a config file block)."""
    f = fold(data, "check")
    check_unknown(data, _CHECK_FIELDS, "check", strict)
    header_raw = f.get("header")
    header: dict[str, list[str]] = {}
    if header_raw is not None:
        if not isinstance(header_raw, dict):
            raise BadRequest("Request decode failed: check Header: expected an object of string lists")
        for k, v in header_raw.items():
            header[k] = [v] if isinstance(v, str) else as_strlist(v, f"check Header.{k}")
    args = as_strlist(f.get("scriptargs", f.get("args")), "check ScriptArgs")
    status = as_str(f.get("status"), "check Status") or "critical"
    if status not in ("passing", "warning", "critical"):
        raise BadRequest("Status for checks must 'passing', 'warning', 'critical'")
    check = CheckDef(
        id=as_str(f.get("checkid") or f.get("id"), "check ID"),
        name=as_str(f.get("name"), "check Name"),
        kind="",
        service_id=as_str(f.get("serviceid"), "check ServiceID") or service_id,
        notes=as_str(f.get("notes"), "check Notes"),
        status=status,
        output=as_str(f.get("output"), "check Output"),
        interval=as_duration(f.get("interval"), "check Interval"),
        timeout=as_duration(f.get("timeout"), "check Timeout"),
        ttl=as_duration(f.get("ttl"), "check TTL"),
        http=as_str(f.get("http"), "check HTTP"),
        method=as_str(f.get("method"), "check Method"),
        header=header,
        body=as_str(f.get("body"), "check Body"),
        tls_skip_verify=as_bool(f.get("tlsskipverify"), "check TLSSkipVerify"),
        tls_server_name=as_str(f.get("tlsservername"), "check TLSServerName"),
        disable_redirects=as_bool(f.get("disableredirects"), "check DisableRedirects"),
        tcp=as_str(f.get("tcp"), "check TCP"),
        udp=as_str(f.get("udp"), "check UDP"),
        grpc=as_str(f.get("grpc"), "check GRPC"),
        grpc_use_tls=as_bool(f.get("grpcusetls"), "check GRPCUseTLS"),
        args=args,
        alias_node=as_str(f.get("aliasnode"), "check AliasNode"),
        alias_service=as_str(f.get("aliasservice"), "check AliasService"),
        success_before_passing=as_int(f.get("successbeforepassing"), "check SuccessBeforePassing"),
        failures_before_warning=as_int(f.get("failuresbeforewarning"), "check FailuresBeforeWarning"),
        failures_before_critical=as_int(f.get("failuresbeforecritical"), "check FailuresBeforeCritical"),
        output_max_size=as_int(f.get("outputmaxsize"), "check OutputMaxSize") or 4096,
        deregister_critical_service_after=as_duration(
            f.get("deregistercriticalserviceafter"), "check DeregisterCriticalServiceAfter"
        ),
        token=as_str(f.get("token"), "check Token"),
    )
    check.kind = _kind(check)
    _validate_check(check)
    check.id = check.id or default_id or check.name
    check.name = check.name or default_name or check.id
    if not check.id:
        raise BadRequest("Missing check name")
    return check


def _kind(c: CheckDef) -> str:
    if c.args:
        return "script"
    for kind in ("http", "tcp", "udp", "grpc"):
        if getattr(c, kind):
            return kind
    if c.alias_node or c.alias_service:
        return "alias"
    return "ttl"


def _validate_check(c: CheckDef) -> None:
    """Consul's CheckType.Validate, same messages."""
    interval_check = c.kind in ("script", "http", "tcp", "udp", "grpc")
    if c.interval > 0 and c.ttl > 0:
        raise BadRequest("Invalid check: Interval and TTL cannot both be specified")
    if interval_check and c.interval <= 0:
        raise BadRequest("Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks")
    if c.kind == "alias" and c.interval > 0:
        raise BadRequest("Invalid check: Interval cannot be set for Alias checks")
    if c.kind == "alias" and c.ttl > 0:
        raise BadRequest("Invalid check: TTL must be not be set for Alias checks")
    if c.kind == "ttl" and c.ttl <= 0:
        raise BadRequest("Invalid check: TTL must be > 0 for TTL checks")
    if c.failures_before_warning > c.failures_before_critical and c.failures_before_critical:
        raise BadRequest("Invalid check: FailuresBeforeWarning can't be higher than FailuresBeforeCritical")
    if c.kind == "grpc":
        raise BadRequest("Invalid check: gRPC checks are not supported by this agent (no HTTP/2 client is installed)")
    if c.kind == "http" and not re.match(r"^https?://", c.http):
        raise BadRequest(f"Invalid check: HTTP check URL {c.http!r} must start with http:// or https://")
    if c.kind in ("tcp", "udp") and ":" not in getattr(c, c.kind):
        raise BadRequest(f"Invalid check: {c.kind.upper()} check address {getattr(c, c.kind)!r} must be host:port")
    for name in ("interval", "timeout", "ttl", "deregister_critical_service_after"):
        if getattr(c, name) < 0:
            raise BadRequest(f"Invalid check: {name} cannot be negative")


# ----------------------------------------------------------------- services


@dataclass
class ServiceDef:
    """A service as the agent keeps it: the catalog registration and its checks.

    ``sidecar`` is the proxy a ``Connect.SidecarService`` block asks for, already filled
    with Consul's defaults except its port and default checks, which need the agent's
    state (``Agent.register_service`` adds them). The sidecar is registered as a service
    of its own with ``is_sidecar`` set, so deregistering the parent takes it along.
    """

    service: NodeService
    checks: list[CheckDef] = field(default_factory=list)
    token: str = ""
    sidecar: "ServiceDef | None" = None
    is_sidecar: bool = False  # Consul's LocallyRegisteredAsSidecar

    def to_json(self) -> dict[str, Any]:
        """For persistence: read back by ``ServiceDef.from_json``."""
        return {
            "service": asdict(self.service),
            "checks": [c.to_json() for c in self.checks],
            "token": self.token,
            "sidecar": self.sidecar.to_json() if self.sidecar is not None else None,
            "is_sidecar": self.is_sidecar,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ServiceDef":
        return cls(
            service=NodeService(**data["service"]),
            checks=[CheckDef.from_json(c) for c in data.get("checks", [])],
            token=data.get("token", ""),
            sidecar=cls.from_json(data["sidecar"]) if data.get("sidecar") else None,
            is_sidecar=bool(data.get("is_sidecar")),
        )


_SERVICE_FIELDS = {
    "id", "name", "tags", "address", "socketpath", "taggedaddresses", "meta", "port", "kind", "proxy", "connect",
    "check", "checks", "enabletagoverride", "weights", "token", "service", "contenthash", "datacenter",
    "createindex", "modifyindex",
}

# Proxy fields Consul knows, by folded name -> the name it answers with; "Config" holds user data.
_PROXY_FIELDS = {
    k.lower(): k
    for k in (
        "DestinationServiceName", "DestinationServiceID", "LocalServiceAddress", "LocalServicePort",
        "LocalServiceSocketPath", "Mode", "Config", "Upstreams", "MeshGateway", "Expose", "TransparentProxy",
        "AccessLogs",
    )
}
_UPSTREAM_FIELDS = {
    k.lower(): k
    for k in (
        "DestinationType", "DestinationNamespace", "DestinationPartition", "DestinationPeer", "DestinationName",
        "Datacenter", "LocalBindAddress", "LocalBindPort", "LocalBindSocketPath", "LocalBindSocketMode", "Config",
        "MeshGateway", "CentrallyConfigured",
    )
}


def _canonical(data: Any, names: dict[str, str], what: str) -> dict[str, Any]:
    """Fold a struct's keys and give them back in Consul's spelling; unknown keys are dropped."""
    return {names[k]: v for k, v in fold(data, what).items() if k in names}


def parse_proxy(data: Any) -> dict[str, Any]:
    """A service's Proxy block, keys in Consul's spelling (Config and its values untouched)."""
    if data is None:
        return {}
    proxy = _canonical(data, _PROXY_FIELDS, "Proxy")
    if "LocalServicePort" in proxy:
        proxy["LocalServicePort"] = as_int(proxy["LocalServicePort"], "Proxy.LocalServicePort", 0, 65535)
    if proxy.get("Upstreams") is not None:
        if not isinstance(proxy["Upstreams"], list):
            raise BadRequest("Request decode failed: Proxy.Upstreams: expected a list")
        ups = []
        for i, u in enumerate(proxy["Upstreams"]):
            up = _canonical(u, _UPSTREAM_FIELDS, f"Proxy.Upstreams[{i}]")
            up.setdefault("DestinationType", "service")
            if "LocalBindPort" in up:
                up["LocalBindPort"] = as_int(up["LocalBindPort"], f"Proxy.Upstreams[{i}].LocalBindPort", 0, 65535)
            if not up.get("DestinationName"):
                raise BadRequest(f"Invalid upstream {i}: DestinationName is required")
            ups.append(up)
        proxy["Upstreams"] = ups
    return proxy


def parse_service(data: Any, *, strict: bool = False, parent: NodeService | None = None) -> ServiceDef:
    """A service definition (/v1/agent/service/register or a config file ``service`` block), validated.

    With ``parent`` it is that service's ``Connect.SidecarService`` block, defaulted as
    Consul's sidecarServiceFromNodeService does (port and checks are left to the agent).
    """
    f = fold(data, "service")
    check_unknown(data, _SERVICE_FIELDS, "service", strict)
    if parent is not None:
        f = {**f, "id": parent.id + SIDECAR_SUFFIX}
        f.setdefault("kind", "connect-proxy")
        if not (f.get("name") or f.get("service")):
            f["name"] = parent.service + SIDECAR_SUFFIX
    name = as_str(f.get("name") or f.get("service"), "service Name")
    if not name:
        raise BadRequest("Missing service name")
    sid = as_str(f.get("id"), "service ID") or name
    kind = as_str(f.get("kind"), "service Kind")
    if kind not in SERVICE_KINDS:
        raise BadRequest(f'Invalid service kind "{kind}"')
    tagged: dict[str, dict[str, Any]] = {}
    raw_tagged = f.get("taggedaddresses")
    if raw_tagged is not None:
        if not isinstance(raw_tagged, dict):
            raise BadRequest("Request decode failed: service TaggedAddresses: expected an object")
        for tag, addr in raw_tagged.items():
            a = fold(addr, f"TaggedAddresses.{tag}")
            tagged[tag] = {
                "Address": as_str(a.get("address"), f"TaggedAddresses.{tag}.Address"),
                "Port": as_int(a.get("port"), f"TaggedAddresses.{tag}.Port", 0, 65535),
            }
    meta = as_strmap(f.get("meta"), "service Meta")
    _validate_meta(meta)
    tags = as_strlist(f.get("tags"), "service Tags")
    if parent is not None:
        meta = meta or dict(parent.meta)  # a sidecar without its own tags and meta gets its parent's
        tags = tags or list(parent.tags)
    weights = {"Passing": 1, "Warning": 1}
    if f.get("weights") is not None:
        w = fold(f["weights"], "service Weights")
        weights = {
            "Passing": as_int(w.get("passing", 1), "service Weights.Passing", 0),
            "Warning": as_int(w.get("warning", 1), "service Weights.Warning", 0),
        }
        if weights["Passing"] < 1:
            raise BadRequest("Invalid Weights: Passing must be greater than 0")
    connect: dict[str, Any] = {}
    if f.get("connect") is not None:
        c = fold(f["connect"], "service Connect")
        if c.get("native") is not None:
            connect["Native"] = as_bool(c["native"], "Connect.Native")
        if c.get("sidecarservice") is not None:
            connect["SidecarService"] = c["sidecarservice"]
    proxy = parse_proxy(f.get("proxy"))
    if parent is not None:
        proxy.setdefault("DestinationServiceName", parent.service)
        proxy.setdefault("DestinationServiceID", parent.id)
        if not proxy.get("LocalServiceSocketPath") and not (proxy.get("LocalServiceAddress") and proxy.get("LocalServicePort")):
            if parent.socket_path:
                proxy["LocalServiceSocketPath"] = parent.socket_path
            else:
                proxy["LocalServiceAddress"] = proxy.get("LocalServiceAddress") or "127.0.0.1"
                proxy["LocalServicePort"] = proxy.get("LocalServicePort") or parent.port
    if kind == "connect-proxy" and not proxy.get("DestinationServiceName"):
        raise BadRequest("Proxy.DestinationServiceName must be non-empty for Connect proxy services")
    address = as_str(f.get("address"), "service Address") or (parent.address if parent is not None else "")
    if address in ("0.0.0.0", "::", "[::]"):
        raise BadRequest("Invalid service address")
    svc = NodeService(
        id=sid,
        service=name,
        kind=kind,
        tags=tags,
        address=address,
        tagged_addresses=tagged,
        meta=meta,
        port=as_int(f.get("port"), "service Port", 0, 65535),
        socket_path=as_str(f.get("socketpath"), "service SocketPath"),
        weights=weights,
        enable_tag_override=as_bool(f.get("enabletagoverride"), "service EnableTagOverride"),
        proxy=proxy,
        connect=connect,
    )
    if kind == "connect-proxy" and not svc.port and not svc.socket_path and parent is None:
        raise BadRequest("Port or SocketPath must be set for a Connect proxy")
    raw_checks: list[Any] = []
    if f.get("check"):  # an entirely empty Check is ignored, as Consul's CheckType.Empty()
        raw_checks.append(f["check"])
    if f.get("checks") is not None:
        if not isinstance(f["checks"], list):
            raise BadRequest("Request decode failed: service Checks: expected a list")
        raw_checks.extend(c for c in f["checks"] if c)
    checks = []
    for i, raw in enumerate(raw_checks, start=1):
        # Consul's ids: "service:<id>" for one check, "service:<id>:<n>" when there are several.
        default_id = f"service:{sid}" if len(raw_checks) == 1 else f"service:{sid}:{i}"
        check = parse_check(raw, service_id=sid, default_id=default_id, default_name=f"Service '{name}' check", strict=strict)
        check.service_id = sid
        checks.append(check)
    if len({c.id for c in checks}) != len(checks):
        raise BadRequest("Invalid check: duplicate check IDs")
    token = as_str(f.get("token"), "service Token")
    defn = ServiceDef(service=svc, checks=checks, token=token)
    if "SidecarService" in connect:
        defn.sidecar = _parse_sidecar(connect.pop("SidecarService"), svc, strict)
        defn.sidecar.token = defn.sidecar.token or token
    if parent is not None:
        defn.is_sidecar = True
    return defn


def _parse_sidecar(data: Any, parent: NodeService, strict: bool) -> ServiceDef:
    """Consul's nested-sidecar validation, then the sidecar with its defaults ("Invalid SidecarService: ...")."""
    f = fold(data, "SidecarService")
    if f.get("id"):
        raise BadRequest("A SidecarService cannot specify an ID as this is managed by the agent")
    nested = f.get("connect")
    if isinstance(nested, dict) and fold(nested, "SidecarService.Connect").get("sidecarservice") is not None:
        raise BadRequest("A SidecarService cannot have a nested SidecarService")
    try:
        return parse_service(data, strict=strict, parent=parent)
    except BadRequest as err:
        raise BadRequest(f"Invalid SidecarService: {err}") from None


def sidecar_default_checks(sidecar: NodeService) -> list[CheckDef]:
    """Consul's sidecarDefaultChecks: the proxy's public port answers, and it is as healthy as its service."""
    parent_id = sidecar.id.removesuffix(SIDECAR_SUFFIX)
    address = sidecar.address or sidecar.proxy.get("LocalServiceAddress") or "127.0.0.1"
    host = f"[{address}]" if ":" in address else address
    return [
        CheckDef(id=f"service:{sidecar.id}:1", name="Connect Sidecar Listening", kind="tcp", service_id=sidecar.id,
                 tcp=f"{host}:{sidecar.port}", interval=10.0),
        CheckDef(id=f"service:{sidecar.id}:2", name=f"Connect Sidecar Aliasing {parent_id}", kind="alias",
                 service_id=sidecar.id, alias_service=parent_id),
    ]


def _validate_meta(meta: dict[str, str]) -> None:
    """Consul's structs.ValidateServiceMetadata limits and messages."""
    if len(meta) > 64:
        raise BadRequest("Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs")
    for k, v in meta.items():
        problem = ""
        if not k:
            problem = "Key cannot be blank"
        elif not _META_KEY.match(k):
            problem = "Key contains invalid characters"
        elif len(k) > 128:
            problem = "Key is too long (limit: 128 characters)"
        elif k.startswith("consul-"):
            problem = "Key prefix 'consul-' is reserved for internal use"
        elif len(v) > 512:
            problem = "Value is too long (limit: 512 characters)"
        if problem:
            raise BadRequest(f"Invalid Service Meta: Couldn't load metadata pair ('{k}', '{v}'): {problem}")
