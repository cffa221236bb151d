"""Config entries as Consul decodes, normalizes and validates them (agent/structs/config_entry*.go).

Three kinds: ``service-defaults``, ``proxy-defaults`` and ``service-intentions``.
An entry lives as a dict in Consul's JSON shape (field names, order and
omitempty rules of its Go struct), without ``CreateIndex``/``ModifyIndex``,
which the store adds on the way out. Everything here is pure — no clock, no
randomness — so the state store can run it inside a Raft apply.

* ``decode_entry`` is Consul's DecodeConfigEntry: mapstructure with weak typing,
  field names matched case-insensitively or by their snake_case alias, and every
  key that maps to no field refused (``invalid config key "Sources[0].Foo"``),
  except ``Kind``, ``CreateIndex`` and ``ModifyIndex``.
* ``normalize`` and ``validate`` are the entry's Normalize and Validate methods
  (with their multierror texts); service-intentions has the legacy variants the
  ID-based intention API uses (``legacy=True``).
* ``protocol_of`` resolves a service's protocol the way the discovery chain
  does (service-defaults, then proxy-defaults' ``Config.protocol``, then tcp),
  for the L7-permissions check and for the proxy.

Deviations, stricter than Consul: ``PathRegex`` and header ``Regex`` must
compile as RE2 (Consul leaves that to Envoy), ``Mode`` and ``MeshGateway.Mode``
must be known values, peering/sameness-group sources and JWT requirements are
refused (not implemented). The entries' ``Hash`` field is not computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from proconsul.server.errors import StoreError

SERVICE_DEFAULTS = "service-defaults"
PROXY_DEFAULTS = "proxy-defaults"
SERVICE_INTENTIONS = "service-intentions"
KINDS = (SERVICE_DEFAULTS, PROXY_DEFAULTS, SERVICE_INTENTIONS)
# The other kinds Consul knows (structs.AllConfigEntryKinds): named in errors as not supported yet.
OTHER_CONSUL_KINDS = frozenset({
    "service-router", "service-splitter", "service-resolver", "ingress-gateway", "terminating-gateway", "mesh",
    "exported-services", "sameness-group", "api-gateway", "bound-api-gateway", "http-route", "tcp-route",
    "file-system-certificate", "inline-certificate", "control-plane-request-limit", "jwt-provider",
})
PROXY_CONFIG_GLOBAL = "global"
WILDCARD = "*"
DEFAULT_NAMESPACE = "default"  # Consul's IntentionDefaultNamespace
DEFAULT_PROTOCOL = "tcp"
HTTP_LIKE = ("http", "http2", "grpc")
META_MAX_PAIRS, META_KEY_MAX, META_VALUE_MAX = 64, 128, 512  # structs.metaMaxKeyPairs and friends
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE")
PROXY_MODES = ("", "direct", "transparent")
MESH_GATEWAY_MODES = ("", "none", "local", "remote")
MUTUAL_TLS_MODES = ("", "strict", "permissive")


def multierror(errors: list[str]) -> str:
    """go-multierror's ListFormatFunc, the text Consul sends for accumulated errors."""
    if len(errors) == 1:
        return f"1 error occurred:\n\t* {errors[0]}\n\n"
    points = "\n\t".join(f"* {e}" for e in errors)
    return f"{len(errors)} errors occurred:\n\t{points}\n\n"


def kind_error(kind: str) -> str:
    """Why a kind cannot be written here (Consul's MakeConfigEntry text for unknown kinds)."""
    if kind in OTHER_CONSUL_KINDS:
        return f"config entry kind {kind!r} is not supported by proconsul (supported: {', '.join(KINDS)})"
    return f"invalid config entry kind: {kind}"


# ---------------------------------------------------------------- decoding (mapstructure, weakly typed)


@dataclass(frozen=True)
class F:
    """One struct field: Consul's name and its type ("str", "int", "bool", "strmap", "strlist", "any", a spec)."""

    name: str
    type: Any


@dataclass(frozen=True)
class ListOf:
    """A slice of ``elem`` (a type name or a spec)."""

    elem: Any


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def _go_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    return "<nil>"


def _go_kind(v: Any) -> str:
    """reflect.Kind names, as mapstructure's "expected a map, got 'slice'" uses them."""
    if isinstance(v, list):
        return "slice"
    if isinstance(v, dict):
        return "map"
    return _go_type(v)


def _go_float(v: float) -> str:
    """strconv.FormatFloat(v, 'f', -1, 64)."""
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    return repr(v)


class _Decoder:
    """mapstructure.Decode with WeaklyTypedInput and Metadata: errors and unused keys collected."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.unused: list[str] = []

    def value(self, raw: Any, t: Any, path: str) -> Any:
        """Decode one value of type ``t`` found at ``path``."""
        if isinstance(t, tuple):
            return self.struct(raw, t, path)
        if isinstance(t, ListOf):
            return self.list(raw, t.elem, path)
        return getattr(self, "_" + t)(raw, path)

    def struct(self, raw: Any, spec: tuple[F, ...], path: str) -> dict[str, Any]:
        """A map onto a struct's fields; keys that match none are recorded as unused."""
        if raw is None:
            return {}
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], dict):
            raw = raw[0]  # decode.HookWeakDecodeFromSlice: HCL's one-element blocks
        if not isinstance(raw, dict):
            self.errors.append(f"'{path}' expected a map, got '{_go_kind(raw)}'")
            return {}
        fields = {_fold(f.name): f for f in spec}
        out: dict[str, Any] = {}
        for key, value in raw.items():
            f = fields.get(_fold(str(key)))
            if f is None or f.name in out:
                self.unused.append(f"{path}.{key}" if path else str(key))
                continue
            out[f.name] = self.value(value, f.type, f"{path}.{f.name}" if path else f.name)
        return out

    def list(self, raw: Any, elem: Any, path: str) -> list[Any] | None:
        """A slice; a lone value becomes a one-element slice (weak decoding)."""
        if raw is None:
            return None
        if not isinstance(raw, list):
            raw = [raw]  # weak: a single value where a slice is wanted
        return [self.value(v, elem, f"{path}[{i}]") for i, v in enumerate(raw)]

    def _str(self, raw: Any, path: str) -> str:
        if raw is None:
            return ""
        if isinstance(raw, str):
            return raw
        if isinstance(raw, bool):
            return "1" if raw else "0"
        if isinstance(raw, (int, float)):
            return _go_float(float(raw)) if isinstance(raw, float) else str(raw)
        self.errors.append(f"'{path}' expected type 'string', got unconvertible type '{_go_type(raw)}'")
        return ""

    def _int(self, raw: Any, path: str) -> int:
        if raw is None:
            return 0
        if isinstance(raw, bool):
            return int(raw)
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float):
            if math.isfinite(raw):
                return int(raw)
        elif isinstance(raw, str):
            if raw == "":
                return 0
            try:
                return int(raw, 0)
            except ValueError:
                self.errors.append(f"cannot parse '{path}' as int: strconv.ParseInt: parsing {_go_quote(raw)}: invalid syntax")
                return 0
        self.errors.append(f"'{path}' expected type 'int', got unconvertible type '{_go_type(raw)}'")
        return 0

    def _bool(self, raw: Any, path: str) -> bool:
        if raw is None:
            return False
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, (int, float)):
            return raw != 0
        if isinstance(raw, str):
            if raw == "":
                return False
            if raw in ("1", "t", "T", "TRUE", "true", "True"):
                return True
            if raw in ("0", "f", "F", "FALSE", "false", "False"):
                return False
            self.errors.append(f"cannot parse '{path}' as bool: strconv.ParseBool: parsing {_go_quote(raw)}: invalid syntax")
            return False
        self.errors.append(f"'{path}' expected type 'bool', got unconvertible type '{_go_type(raw)}'")
        return False

    def _strmap(self, raw: Any, path: str) -> dict[str, str] | None:
        if raw is None:
            return None
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], dict):
            raw = raw[0]
        if not isinstance(raw, dict):
            self.errors.append(f"'{path}' expected a map, got '{_go_kind(raw)}'")
            return None
        return {str(k): self._str(v, f"{path}[{k}]") for k, v in raw.items()}

    def _strlist(self, raw: Any, path: str) -> list[str] | None:
        return self.list(raw, "str", path)

    def _any(self, raw: Any, path: str) -> Any:
        return raw


def _go_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


_TPROXY = (F("OutboundListenerPort", "int"), F("DialedDirectly", "bool"))
_MESH_GATEWAY = (F("Mode", "str"),)
_EXPOSE_PATH = (F("ListenerPort", "int"), F("Path", "str"), F("LocalPathPort", "int"), F("Protocol", "str"), F("ParsedFromCheck", "bool"))
_EXPOSE = (F("Checks", "bool"), F("Paths", ListOf(_EXPOSE_PATH)))
_DESTINATION = (F("Addresses", "strlist"), F("Port", "int"))
_HEADER = (F("Name", "str"), F("Present", "bool"), F("Exact", "str"), F("Prefix", "str"), F("Suffix", "str"), F("Regex", "str"), F("Invert", "bool"))
_HTTP = (F("PathExact", "str"), F("PathPrefix", "str"), F("PathRegex", "str"), F("Header", ListOf(_HEADER)), F("Methods", "strlist"))
PERMISSION = (F("Action", "str"), F("HTTP", _HTTP), F("JWT", "any"))
_SOURCE = (
    F("Name", "str"), F("Action", "str"), F("Permissions", ListOf(PERMISSION)), F("Precedence", "int"),
    F("LegacyID", "str"), F("Type", "str"), F("Description", "str"), F("LegacyMeta", "strmap"),
    F("LegacyCreateTime", "str"), F("LegacyUpdateTime", "str"), F("Peer", "str"), F("SamenessGroup", "str"),
)
_COMMON_TAIL = (F("Meta", "strmap"), F("Hash", "any"))
SPECS: dict[str, tuple[F, ...]] = {
    SERVICE_DEFAULTS: (
        F("Kind", "str"), F("Name", "str"), F("Protocol", "str"), F("Mode", "str"), F("TransparentProxy", _TPROXY),
        F("MutualTLSMode", "str"), F("MeshGateway", _MESH_GATEWAY), F("Expose", _EXPOSE), F("ExternalSNI", "str"),
        F("UpstreamConfig", "any"), F("Destination", _DESTINATION), F("MaxInboundConnections", "int"),
        F("LocalConnectTimeoutMs", "int"), F("LocalRequestTimeoutMs", "int"), F("BalanceInboundConnections", "str"),
        F("RateLimits", "any"), F("EnvoyExtensions", "any"), *_COMMON_TAIL,
    ),
    PROXY_DEFAULTS: (
        F("Kind", "str"), F("Name", "str"), F("Config", "any"), F("Protocol", "str"), F("Mode", "str"),
        F("TransparentProxy", _TPROXY), F("MutualTLSMode", "str"), F("MeshGateway", _MESH_GATEWAY), F("Expose", _EXPOSE),
        F("AccessLogs", "any"), F("EnvoyExtensions", "any"), F("FailoverPolicy", "any"), F("PrioritizeByLocality", "any"),
        *_COMMON_TAIL,
    ),
    SERVICE_INTENTIONS: (F("Kind", "str"), F("Name", "str"), F("Sources", ListOf(_SOURCE)), F("JWT", "any"), *_COMMON_TAIL),
}


def _unused_errors(unused: list[str]) -> list[str]:
    """Consul's validateUnusedKeys (CE)."""
    out = []
    for k in unused:
        if k in ("CreateIndex", "ModifyIndex", "kind", "Kind"):
            continue
        if k.lower().endswith("namespace"):
            out.append(f'invalid config key "{k}", namespaces are a consul enterprise feature')
        elif "jwt" in k.lower():
            out.append(f'invalid config key "{k}", api-gateway jwt validation is a consul enterprise feature')
        else:
            out.append(f'invalid config key "{k}"')
    return out


MISSING_KIND = object()


def decode_entry(raw: Any) -> dict[str, Any]:
    """Consul's DecodeConfigEntry: a body to a (not yet normalized) entry; raises StoreError with Consul's text."""
    if not isinstance(raw, dict):
        raise StoreError("Payload does not contain a kind/Kind key at the top level")
    kind = raw["Kind"] if "Kind" in raw else raw.get("kind", MISSING_KIND)
    if kind is MISSING_KIND:
        raise StoreError("Payload does not contain a kind/Kind key at the top level")
    if not isinstance(kind, str):
        raise StoreError("Kind value in payload is not a string")
    if kind not in SPECS:
        raise StoreError(kind_error(kind))
    dec = _Decoder()
    entry = dec.struct(raw, SPECS[kind], "")
    if dec.errors:
        points = "\n".join(sorted(f"* {e}" for e in dec.errors))
        raise StoreError(f"{len(dec.errors)} error(s) decoding:\n\n{points}")
    unused = _unused_errors(dec.unused)
    if unused:
        raise StoreError(multierror(unused))
    entry["Kind"] = kind
    return entry


def decode_permissions(raw: Any, path: str = "Permissions") -> list[dict[str, Any]] | None:
    """Intention permissions in a /v1/connect/intentions body, decoded as in a config entry."""
    dec = _Decoder()
    perms = dec.list(raw, PERMISSION, path)
    if dec.errors:
        raise StoreError(dec.errors[0])
    if dec.unused:
        raise StoreError(_unused_errors(dec.unused)[0])
    return perms


# ---------------------------------------------------------------- JSON shapes


def _nonzero(d: dict[str, Any], *names: str) -> dict[str, Any]:
    """Go's omitempty: keep the fields that are set, in struct order."""
    return {n: d[n] for n in names if d.get(n) not in (None, "", 0, False, [], {})}


def _expose(e: dict[str, Any]) -> dict[str, Any]:
    out = _nonzero(e or {}, "Checks", "Paths")
    if "Paths" in out:
        out["Paths"] = [_nonzero(p, *(f.name for f in _EXPOSE_PATH)) for p in out["Paths"]]
    return out


def _source_json(s: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"Name": s.get("Name", "")}
    out.update(_nonzero(s, "Action"))
    if s.get("Permissions"):
        out["Permissions"] = [_permission_json(p) for p in s["Permissions"]]
    out["Precedence"] = s.get("Precedence", 0)
    out.update(_nonzero(s, "LegacyID"))
    out["Type"] = s.get("Type", "")
    out.update(_nonzero(s, "Description", "LegacyMeta", "LegacyCreateTime", "LegacyUpdateTime", "Peer", "SamenessGroup"))
    return out


def _permission_json(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"Action": p.get("Action", "")}
    http = p.get("HTTP")
    if http is not None:
        h = _nonzero(http, "PathExact", "PathPrefix", "PathRegex", "Header", "Methods")
        if "Header" in h:
            h["Header"] = [{"Name": x.get("Name", ""), **_nonzero(x, "Present", "Exact", "Prefix", "Suffix", "Regex", "Invert")} for x in h["Header"]]
        out["HTTP"] = h
    return out


def entry_json(e: dict[str, Any]) -> dict[str, Any]:
    """A normalized entry in its Go struct's JSON field order and omitempty rules (Hash left out)."""
    kind = e["Kind"]
    out: dict[str, Any] = {"Kind": kind, "Name": e.get("Name", "")}
    if kind == SERVICE_INTENTIONS:
        out["Sources"] = [_source_json(s) for s in e.get("Sources") or []]
        out.update(_nonzero(e, "Meta"))
        return out
    if kind == SERVICE_DEFAULTS:
        out["Protocol"] = e.get("Protocol", "")
    else:
        out["Config"] = e.get("Config")
    out.update(_nonzero(e, "Mode"))
    out["TransparentProxy"] = _nonzero(e.get("TransparentProxy") or {}, "OutboundListenerPort", "DialedDirectly")
    out.update(_nonzero(e, "MutualTLSMode"))
    out["MeshGateway"] = _nonzero(e.get("MeshGateway") or {}, "Mode")
    out["Expose"] = _expose(e.get("Expose") or {})
    if kind == SERVICE_DEFAULTS:
        out.update(_nonzero(e, "ExternalSNI"))
        if e.get("UpstreamConfig") is not None:
            out["UpstreamConfig"] = e["UpstreamConfig"]
        if e.get("Destination") is not None:
            out["Destination"] = _nonzero(e["Destination"], "Addresses", "Port")
        out.update(_nonzero(e, "MaxInboundConnections", "LocalConnectTimeoutMs", "LocalRequestTimeoutMs", "BalanceInboundConnections"))
        if e.get("RateLimits") is not None:
            out["RateLimits"] = e["RateLimits"]
        out.update(_nonzero(e, "EnvoyExtensions", "Meta"))
        return out
    out["AccessLogs"] = e.get("AccessLogs") or {}
    out.update(_nonzero(e, "EnvoyExtensions"))
    for name in ("FailoverPolicy", "PrioritizeByLocality"):
        if e.get(name) is not None:
            out[name] = e[name]
    out.update(_nonzero(e, "Meta"))
    return out


# ---------------------------------------------------------------- normalize and validate


def _meta_errors(meta: dict[str, str] | None, prefix: str = "Meta") -> list[str]:
    """Consul's validateConfigEntryMeta."""
    meta = meta or {}
    errors = []
    if len(meta) > META_MAX_PAIRS:
        errors.append(f"{prefix} exceeds maximum element count {META_MAX_PAIRS}")
    for k, v in meta.items():
        if len(k) > META_KEY_MAX:
            errors.append(f"{prefix} key {_go_quote(k)} exceeds maximum length {META_KEY_MAX}")
        if len(v) > META_VALUE_MAX:
            errors.append(f"{prefix} value for key {_go_quote(k)} exceeds maximum length {META_VALUE_MAX}")
    return errors


def _mode_errors(e: dict[str, Any]) -> list[str]:
    errors = []
    if e.get("Mode", "") not in PROXY_MODES:
        errors.append(f'Mode: invalid proxy mode {_go_quote(e["Mode"])} (one of "", "direct", "transparent")')
    mgw = (e.get("MeshGateway") or {}).get("Mode", "")
    if mgw not in MESH_GATEWAY_MODES:
        errors.append(f'MeshGateway.Mode: invalid mesh gateway mode {_go_quote(mgw)} (one of "", "none", "local", "remote")')
    return errors


def _mtls_error(e: dict[str, Any]) -> str:
    mode = e.get("MutualTLSMode", "")
    if mode in MUTUAL_TLS_MODES:
        return ""
    return f'Invalid MutualTLSMode {_go_quote(mode)}. Must be one of "", "strict", or "permissive".'


def proxy_config_protocol(config: Any) -> str:
    """ProxyConfigEntry.ComputeProtocol: ``Config.protocol``, weakly decoded to a string."""
    if not isinstance(config, dict):
        return ""
    value = config.get("protocol")
    if value is None:
        return ""
    dec = _Decoder()
    proto = dec._str(value, "protocol")
    if dec.errors:
        raise StoreError(f"1 error(s) decoding:\n\n* {dec.errors[0]}")
    return proto


def normalize(e: dict[str, Any], legacy: bool = False) -> dict[str, Any]:
    """The entry's Normalize (LegacyNormalize for service-intentions with ``legacy``); returns a new dict."""
    kind = e["Kind"]
    e = dict(e)
    e.pop("Hash", None)
    if kind == SERVICE_DEFAULTS:
        e["Protocol"] = (e.get("Protocol") or "").lower()
    elif kind == PROXY_DEFAULTS:
        name = e.get("Name", "")
        if name not in ("", PROXY_CONFIG_GLOBAL):
            raise StoreError(f'invalid name ({_go_quote(name)}), only "global" is supported')
        e["Name"] = PROXY_CONFIG_GLOBAL
        e.pop("Protocol", None)  # computed from Config when read (ComputeProtocol)
        proxy_config_protocol(e.get("Config"))
    elif kind == SERVICE_INTENTIONS:
        e["Sources"] = _normalize_sources(e.get("Name", ""), e.get("Sources") or [], legacy)
    return entry_json(e)


def source_precedence(destination: str, source: str) -> int:
    """computeIntentionPrecedence with every namespace "default": 9, 8 (source *), 6 (destination *), 5."""
    top = 9 if destination != WILDCARD else 6
    return top if source != WILDCARD else top - 1


def _normalize_sources(destination: str, sources: list[dict[str, Any]], legacy: bool) -> list[dict[str, Any]]:
    out = []
    for src in sources:
        s = dict(src)
        s["Type"] = s.get("Type") or "consul"
        s["Precedence"] = source_precedence(destination, s.get("Name", ""))
        if legacy:
            s["LegacyMeta"] = dict(s.get("LegacyMeta") or {})
        else:
            # LegacyMeta is kept so that validate can refuse it (Consul's data-loss warning).
            for k in ("LegacyID", "LegacyCreateTime", "LegacyUpdateTime"):
                s.pop(k, None)
        if s.get("Permissions"):
            perms = []
            for p in s["Permissions"]:
                p = dict(p)
                if p.get("HTTP") is not None:
                    p["HTTP"] = dict(p["HTTP"])
                    if p["HTTP"].get("Methods"):
                        p["HTTP"]["Methods"] = [m.upper() for m in p["HTTP"]["Methods"]]
                perms.append(p)
            s["Permissions"] = perms
        out.append(s)
    out.sort(key=lambda s: -s["Precedence"])  # stable, as sort.SliceStable
    return out


def regexp_error(pattern: str) -> str:
    """What Go's regexp.Compile (RE2) says about ``pattern``; "" when it compiles."""
    from proconsul.server.filter import _go_regexp, _GoError  # the one RE2 emulation, shared with ?filter

    try:
        _go_regexp(pattern)
    except _GoError as err:
        return str(err)
    return ""


def validate(e: dict[str, Any], legacy: bool = False) -> None:
    """The entry's Validate (LegacyValidate with ``legacy``); raises StoreError with Consul's text."""
    kind = e["Kind"]
    if kind == SERVICE_INTENTIONS:
        _validate_intentions(e, legacy)
        return
    if kind == PROXY_DEFAULTS:
        if e.get("Name") != PROXY_CONFIG_GLOBAL:
            raise StoreError(f'invalid name ({_go_quote(e.get("Name", ""))}), only "global" is supported')
        errors = _meta_errors(e.get("Meta"))
        if errors:
            raise StoreError(multierror(errors))
        config = e.get("Config")
        if config is not None and not isinstance(config, dict):
            raise StoreError("Config: must be an object")
        socket_dir = (config or {}).get("envoy_hcp_metrics_bind_socket_dir")
        if isinstance(socket_dir, str) and len(socket_dir) > 70:
            raise StoreError(f"Config: envoy_hcp_metrics_bind_socket_dir length {len(socket_dir)} exceeds max 70")
        if err := _mtls_error(e):
            raise StoreError(err)
        if errors := _mode_errors(e):
            raise StoreError(multierror(errors))
        return
    # service-defaults
    name = e.get("Name", "")
    if not name:
        raise StoreError("Name is required")
    if name == WILDCARD:
        raise StoreError("service-defaults name must be the name of a service, and not a wildcard")
    errors = _meta_errors(e.get("Meta"))
    balance = e.get("BalanceInboundConnections", "")
    if balance not in ("", "exact_balance"):
        errors.append(f"invalid value for balance_inbound_connections: {balance}")
    if e.get("Protocol", "") not in ("", *HTTP_LIKE, "tcp"):
        errors.append(f"invalid value for protocol: {e['Protocol']}")
    dest = e.get("Destination")
    if e.get("UpstreamConfig") is not None and dest is not None:
        errors.append("UpstreamConfig and Destination are mutually exclusive for service defaults")
        raise StoreError(multierror(errors))
    if dest is not None:
        addresses = dest.get("Addresses") or []
        if not addresses:
            errors.append("Destination must contain at least one valid address")
        seen: set[str] = set()
        for address in addresses:
            if address in seen:
                errors.append(f"Duplicate address '{address}' is not allowed")
                continue
            seen.add(address)
            if not _endpoint_address_ok(address):
                errors.append(f"Destination address '{address}' is invalid Could not validate address {address} as an IP or Hostname")
        port = dest.get("Port", 0)
        if not 1 <= port <= 65535:
            errors.append(f"Invalid Port number {port}")
    if err := _mtls_error(e):
        raise StoreError(err)
    errors += _mode_errors(e)
    if errors:
        raise StoreError(multierror(errors))


def _endpoint_address_ok(address: str) -> bool:
    import ipaddress
    import re

    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        pass
    if "*" in address or not address or len(address) > 255:
        return False
    return all(re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label) for label in address.rstrip(".").split("."))


def _wildcard_error(name: str) -> str:
    """validateIntentionWildcards (namespaces are always "default" here)."""
    if name != WILDCARD and WILDCARD in name:
        return "Name: wildcard character '*' cannot be used with partial values"
    return ""


def _validate_intentions(e: dict[str, Any], legacy: bool) -> None:
    """ServiceIntentionsConfigEntry.validate, message for message."""
    name = e.get("Name", "")
    if not name:
        raise StoreError("Name is required")
    if err := _wildcard_error(name):
        raise StoreError(err)
    dest_is_wild = name == WILDCARD
    if e.get("JWT") is not None:
        raise StoreError("JWT: JWT requirements are not supported by proconsul")
    if legacy:
        if e.get("Meta"):
            raise StoreError("Meta must be omitted for legacy intention writes")
    elif errors := _meta_errors(e.get("Meta")):
        raise StoreError(multierror(errors))
    sources = e.get("Sources") or []
    if not sources:
        raise StoreError("At least one source is required")
    seen: set[str] = set()
    for i, src in enumerate(sources):
        sname = src.get("Name", "")
        if not sname:
            raise StoreError(f"Sources[{i}].Name is required")
        if err := _wildcard_error(sname):
            raise StoreError(f"Sources[{i}].{err}")
        if src.get("Peer"):
            raise StoreError(f"Sources[{i}].Peer: cluster peering is not supported by proconsul")
        if src.get("SamenessGroup"):
            raise StoreError(f"Sources[{i}].SamenessGroup: sameness groups are not supported by proconsul")
        if len(src.get("Description", "")) > META_VALUE_MAX:
            raise StoreError(f"Sources[{i}].Description exceeds maximum length {META_VALUE_MAX}")
        if legacy:
            meta = src.get("LegacyMeta") or {}
            if len(meta) > META_MAX_PAIRS:
                raise StoreError(f"Sources[{i}].Meta exceeds maximum element count {META_MAX_PAIRS}")
            for k, v in meta.items():
                if len(k) > META_KEY_MAX:
                    raise StoreError(f"Sources[{i}].Meta key {_go_quote(k)} exceeds maximum length {META_KEY_MAX}")
                if len(v) > META_VALUE_MAX:
                    raise StoreError(f"Sources[{i}].Meta value for key {_go_quote(k)} exceeds maximum length {META_VALUE_MAX}")
            if not src.get("LegacyCreateTime"):
                raise StoreError(f"Sources[{i}].LegacyCreateTime must be set")
            if not src.get("LegacyUpdateTime"):
                raise StoreError(f"Sources[{i}].LegacyUpdateTime must be set")
            if not src.get("LegacyID"):
                raise StoreError(f"Sources[{i}].LegacyID must be set")
        else:
            if src.get("LegacyMeta"):
                raise StoreError(f"Sources[{i}].LegacyMeta must be omitted")
            for k in ("LegacyCreateTime", "LegacyUpdateTime", "LegacyID"):
                if src.get(k):
                    raise StoreError(f"Sources[{i}].{k} must be omitted")
        perms = src.get("Permissions") or []
        action = src.get("Action", "")
        if (legacy or not perms) and action not in ("allow", "deny"):
            raise StoreError(f"Sources[{i}].Action must be set to 'allow' or 'deny'")
        if perms and action:
            raise StoreError(f"Sources[{i}].Action must be omitted if Permissions are specified")
        if dest_is_wild and perms:
            raise StoreError(f"Sources[{i}].Permissions cannot be specified on intentions with wildcarded destinations")
        if src.get("Type", "") != "consul":
            raise StoreError(f"Sources[{i}].Type must be set to 'consul'")
        for j, perm in enumerate(perms):
            _validate_permission(i, j, perm)
        if sname in seen:
            raise StoreError(f"Sources[{i}] defines {_go_quote(sname)} more than once")
        seen.add(sname)


def _validate_permission(i: int, j: int, perm: dict[str, Any]) -> None:
    if perm.get("Action", "") not in ("allow", "deny"):
        raise StoreError(f"Sources[{i}].Permissions[{j}].Action must be set to 'allow' or 'deny'")
    prefix = f"Sources[{i}].Permissions[{j}].HTTP"
    http = perm.get("HTTP")
    if http is None:
        raise StoreError(f"{prefix} is required")
    if perm.get("JWT") is not None:
        raise StoreError(f"Sources[{i}].Permissions[{j}].JWT: JWT requirements are not supported by proconsul")
    parts = 0
    for field in ("PathExact", "PathPrefix"):
        value = http.get(field, "")
        if value:
            parts += 1
            if not value.startswith("/"):
                raise StoreError(f"{prefix}.{field} doesn't start with '/': {_go_quote(value)}")
    regex = http.get("PathRegex", "")
    if regex:
        parts += 1
    if parts > 1:
        raise StoreError(f"{prefix} should only contain at most one of PathExact, PathPrefix, or PathRegex")
    if regex and (err := regexp_error(regex)):
        raise StoreError(f"{prefix}.PathRegex {_go_quote(regex)} is not a valid regular expression: {err}")
    total = parts
    for k, hdr in enumerate(http.get("Header") or []):
        if not hdr.get("Name"):
            raise StoreError(f"{prefix}.Header[{k}] missing required Name field")
        matchers = sum(1 for f in ("Present", "Exact", "Regex", "Prefix", "Suffix") if hdr.get(f))
        if matchers != 1:
            raise StoreError(f"{prefix}.Header[{k}] should only contain one of Present, Exact, Prefix, Suffix, or Regex")
        if hdr.get("Regex") and (err := regexp_error(hdr["Regex"])):
            raise StoreError(f"{prefix}.Header[{k}].Regex {_go_quote(hdr['Regex'])} is not a valid regular expression: {err}")
        total += 1
    methods = http.get("Methods") or []
    if methods:
        found: set[str] = set()
        for m in methods:
            if m not in HTTP_METHODS:
                raise StoreError(f"{prefix}.Methods contains an invalid method {_go_quote(m)}")
            if m in found:
                raise StoreError(f"{prefix}.Methods contains {_go_quote(m)} more than once")
            found.add(m)
        total += 1
    if total == 0:
        raise StoreError(f"{prefix} should not be empty")


def prepare(entry: dict[str, Any], legacy: bool = False) -> dict[str, Any]:
    """Normalize then validate (Consul's ConfigEntry.Apply and the intention mutations); StoreError on bad input."""
    out = normalize(entry, legacy)
    validate(out, legacy)
    return out


def acl_rule(kind: str, write: bool) -> tuple[str, str, bool] | None:
    """What Consul's CanRead/CanWrite check for an entry of ``kind``: (resource, level, named); None when anyone may.

    service-defaults: service read/write on the name; proxy-defaults: anyone reads, writing needs mesh:write;
    service-intentions: intention read/write on the name (the destination).
    """
    level = "write" if write else "read"
    if kind == SERVICE_DEFAULTS:
        return "service", level, True
    if kind == PROXY_DEFAULTS:
        return ("mesh", "write", False) if write else None
    if kind == SERVICE_INTENTIONS:
        return "intention", level, True
    return None


def acl_allows(authz: Any, kind: str, name: str, write: bool) -> bool:
    """Consul's ConfigEntry.CanRead (``write`` False) / CanWrite for the entry ``kind``/``name``."""
    rule = acl_rule(kind, write)
    if rule is None:
        return True
    resource, level, named = rule
    check = getattr(authz, f"{resource}_{level}")
    return check(name) if named else check()


def has_permissions(e: dict[str, Any]) -> bool:
    """ServiceIntentionsConfigEntry.HasAnyPermissions."""
    return any(s.get("Permissions") for s in e.get("Sources") or [])


def protocol_of(service_defaults: dict[str, Any] | None, proxy_defaults: dict[str, Any] | None) -> str:
    """A service's protocol as its discovery chain compiles it: service-defaults, then proxy-defaults, then tcp."""
    if service_defaults and service_defaults.get("Protocol"):
        return service_defaults["Protocol"].lower()
    if proxy_defaults:
        proto = proxy_config_protocol(proxy_defaults.get("Config"))
        if proto:
            return proto.lower()
    return DEFAULT_PROTOCOL
