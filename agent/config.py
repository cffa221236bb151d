"""Agent configuration: defaults, Consul-style JSON config files, then flags, merged into one frozen RuntimeConfig.

Config files use Consul's agent configuration keys, so an existing Consul
config mostly just works; a key we do not know is an error naming the file
and the key (Consul refuses unknown keys too), as is a value of the wrong type.
Every error here is a ``ConfigError`` with a one-line message.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import socket
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from proconsul.agent import structs
from proconsul.api.decode import loads as decode_json

from proconsul.server import tls as tlsutil
from proconsul.server.durations import parse_duration
from proconsul.server.config import ServerConfig
from proconsul.server.errors import ProconsulError
from proconsul.server.raft import RaftTuning


class ConfigError(Exception):
    """A configuration problem, stated in one line."""


@dataclass(frozen=True)
class Ports:
    http: int = 8500
    https: int = -1
    dns: int = 8600
    server: int = 8300
    raft: int = 8305
    sidecar_min_port: int = 21000  # sidecar proxies without a port get the lowest free one in this range
    sidecar_max_port: int = 21255


@dataclass(frozen=True)
class DNSConfig:
    """Consul's dns_config block (durations in seconds)."""

    allow_stale: bool = True
    max_stale: float = 87600 * 3600.0
    node_ttl: float = 0.0
    service_ttl: dict[str, float] = field(default_factory=dict)
    udp_answer_limit: int = 3
    a_record_limit: int = 0
    only_passing: bool = False
    enable_truncate: bool = True
    recursor_timeout: float = 2.0
    cache_max_age: float = 600.0
    soa_refresh: int = 3600
    soa_retry: int = 600
    soa_expire: int = 86400
    soa_min_ttl: int = 0


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything an agent runs with; a reload builds a new one."""

    node_name: str
    node_id: str = ""
    datacenter: str = "dc1"
    data_dir: str | None = None
    dev: bool = False
    server: bool = False
    bootstrap: bool = False
    bootstrap_expect: int = 0
    retry_join: tuple[str, ...] = ()
    retry_interval: float = 1.0
    bind_addr: str = "127.0.0.1"
    client_addr: str = "127.0.0.1"
    ports: Ports = field(default_factory=Ports)
    encrypt: str | None = None
    log_level: str = "INFO"
    ui: bool = False
    raft_snapshot_threshold: int = 16384
    raft_snapshot_interval: float = 300.0
    kv_max_value_size: int = 512 * 1024
    txn_max_req_len: int = 512 * 1024
    config_files: tuple[str, ...] = ()
    advertise_addr: str = ""
    node_meta: dict[str, str] = field(default_factory=dict)
    enable_script_checks: bool = False
    enable_local_script_checks: bool = False
    check_update_interval: float = 300.0
    ae_interval: float = 60.0
    liveness_interval: float = 2.0
    liveness_timeout: float = 10.0
    reconnect_timeout: float = 72 * 3600.0
    check_reap_interval: float = 30.0
    session_ttl_min: float = 10.0
    check_deregister_interval_min: float = 60.0
    domain: str = "consul."
    alt_domain: str = ""
    recursors: tuple[str, ...] = ()
    dns: DNSConfig = field(default_factory=DNSConfig)
    # connect { enabled, ca_provider, ca_config {...} }: on by default here (Consul needs enabled = true
    # outside -dev); ca_config holds Consul's CamelCase provider keys, used on first leadership only.
    connect_enabled: bool = True
    connect_ca_provider: str = "consul"
    connect_ca_config: dict[str, Any] = field(default_factory=dict)
    # acl { enabled, default_policy } (the rest of the acl block arrives with ACLs) and
    # default_intention_policy: what decides a connection no intention matches.
    acl_enabled: bool = False
    acl_default_policy: str = "allow"
    # The rest of Consul's acl block. Tokens are secrets: kept out of repr so a logged config shows none.
    acl_down_policy: str = "extend-cache"
    acl_token_ttl: float = 30.0
    acl_token_initial_management: str = field(default="", repr=False)
    acl_token_agent: str = field(default="", repr=False)
    acl_token_default: str = field(default="", repr=False)
    acl_token_agent_recovery: str = field(default="", repr=False)
    default_intention_policy: str = ""
    # Service and check definitions from config files, already validated.
    services: tuple[Any, ...] = ()
    checks: tuple[Any, ...] = ()
    # Consul's tls block, resolved per interface (tls.defaults overlaid with tls.https / tls.internal_rpc).
    tls_https: tlsutil.TLSProtocolConfig = field(default_factory=tlsutil.TLSProtocolConfig)
    tls_internal_rpc: tlsutil.TLSProtocolConfig = field(default_factory=tlsutil.TLSProtocolConfig)

    @property
    def advertise(self) -> str:
        """The address other nodes reach this one at (Consul's advertise_addr, default the bind address)."""
        return self.advertise_addr or self.bind_addr

    def server_config(self) -> ServerConfig:
        """The part a server needs."""
        return ServerConfig(
            node_name=self.node_name,
            node_id=self.node_id,
            datacenter=self.datacenter,
            bind_addr=self.bind_addr,
            server_port=self.ports.server,
            raft_port=self.ports.raft,
            data_dir=self.data_dir,
            dev=self.dev,
            bootstrap=self.bootstrap,
            bootstrap_expect=self.bootstrap_expect,
            retry_join=self.retry_join,
            retry_interval=self.retry_interval,
            encrypt=self.encrypt,
            raft=RaftTuning(snapshot_threshold=self.raft_snapshot_threshold, snapshot_interval=self.raft_snapshot_interval),
            node_failure_timeout=self.liveness_timeout,
            session_ttl_min=self.session_ttl_min,
            reconnect_timeout=self.reconnect_timeout,
            connect_enabled=self.connect_enabled,
            ca_provider=self.connect_ca_provider,
            ca_config=dict(self.connect_ca_config),
            acl_enabled=self.acl_enabled,
            acl_default_policy=self.acl_default_policy,
            acl_initial_management=self.acl_token_initial_management,
            default_intention_policy=self.default_intention_policy,
            tls_rpc=self.tls_internal_rpc,
            domain=self.domain.rstrip("."),
        )


# Config-file keys and how to read them: name -> (field, kind). Kinds: str, int, bool, duration, list, ports, limits, ui.
_FILE_KEYS: dict[str, tuple[str, str]] = {
    "node_name": ("node_name", "str"),
    "node_id": ("node_id", "str"),
    "datacenter": ("datacenter", "str"),
    "data_dir": ("data_dir", "str"),
    "server": ("server", "bool"),
    "bootstrap": ("bootstrap", "bool"),
    "bootstrap_expect": ("bootstrap_expect", "int"),
    "retry_join": ("retry_join", "list"),
    "retry_interval": ("retry_interval", "duration"),
    "bind_addr": ("bind_addr", "str"),
    "client_addr": ("client_addr", "str"),
    "ports": ("ports", "ports"),
    "encrypt": ("encrypt", "str"),
    "log_level": ("log_level", "str"),
    "ui": ("ui", "bool"),
    "ui_config": ("ui", "ui"),
    "raft_snapshot_threshold": ("raft_snapshot_threshold", "int"),
    "raft_snapshot_interval": ("raft_snapshot_interval", "duration"),
    "limits": ("limits", "limits"),
    "advertise_addr": ("advertise_addr", "str"),
    "node_meta": ("node_meta", "strmap"),
    "enable_script_checks": ("enable_script_checks", "bool"),
    "enable_local_script_checks": ("enable_local_script_checks", "bool"),
    "check_update_interval": ("check_update_interval", "duration"),
    "ae_interval": ("ae_interval", "duration"),
    "reconnect_timeout": ("reconnect_timeout", "duration"),
    "check_reap_interval": ("check_reap_interval", "duration"),
    "session_ttl_min": ("session_ttl_min", "duration"),
    "check_deregister_interval_min": ("check_deregister_interval_min", "duration"),
    "liveness": ("liveness", "liveness"),
    "domain": ("domain", "str"),
    "alt_domain": ("alt_domain", "str"),
    "recursors": ("recursors", "list"),
    "dns_config": ("dns", "dns"),
    "connect": ("connect", "connect"),
    "acl": ("acl", "acl"),
    "default_intention_policy": ("default_intention_policy", "str"),
    "service": ("services", "service"),
    "services": ("services", "services"),
    "check": ("checks", "check"),
    "checks": ("checks", "checks"),
    "tls": ("tls", "tls"),
    **{key: ("tls_legacy", "tls_legacy") for key in (
        "ca_file", "ca_path", "cert_file", "key_file", "verify_incoming", "verify_incoming_rpc", "verify_incoming_https",
        "verify_outgoing", "verify_server_hostname", "tls_min_version", "tls_cipher_suites", "tls_prefer_server_cipher_suites",
    )},
}
_PORT_KEYS = {"http", "https", "dns", "server", "raft", "sidecar_min_port", "sidecar_max_port"}
_LIMIT_KEYS = {"kv_max_value_size": "kv_max_value_size", "txn_max_req_len": "txn_max_req_len"}
LOG_LEVELS = {"TRACE": "DEBUG", "DEBUG": "DEBUG", "INFO": "INFO", "WARN": "WARNING", "WARNING": "WARNING", "ERR": "ERROR", "ERROR": "ERROR"}


def _typed(source: str, key: str, value: Any, kind: str) -> Any:
    where = f"{source}: {key}"
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {json.dumps(value)}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {json.dumps(value)}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {json.dumps(value)}")
        return value
    if kind == "duration":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except ValueError:
                raise ConfigError(f"{where}: {value!r} is not a duration like \"30s\" or \"5m\"") from None
        raise ConfigError(f"{where}: expected a duration, got {json.dumps(value)}")
    if kind == "strmap":
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigError(f"{where}: expected an object of strings")
        return dict(value)
    if kind == "list":
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {json.dumps(value)}")
        return tuple(value)
    raise AssertionError(kind)


def _apply_file_value(fields: dict[str, Any], source: str, key: str, value: Any) -> None:
    if key not in _FILE_KEYS:
        raise ConfigError(f"{source}: invalid config key {key}")
    name, kind = _FILE_KEYS[key]
    if kind == "ports":
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: ports: expected an object")
        for port, num in value.items():
            if port not in _PORT_KEYS:
                raise ConfigError(f"{source}: invalid config key ports.{port}")
            fields.setdefault("ports", {})[port] = _typed(source, f"ports.{port}", num, "int")
    elif kind == "limits":
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: limits: expected an object")
        for lim, num in value.items():
            if lim not in _LIMIT_KEYS:
                raise ConfigError(f"{source}: invalid config key limits.{lim}")
            fields[_LIMIT_KEYS[lim]] = _typed(source, f"limits.{lim}", num, "int")
    elif kind in ("service", "services", "check", "checks"):
        items = value if kind.endswith("s") else [value]
        if not isinstance(items, list):
            raise ConfigError(f"{source}: {key}: expected a list")
        parse = structs.parse_service if kind.startswith("service") else structs.parse_check
        for i, item in enumerate(items):
            where = f"{key}[{i}]" if kind.endswith("s") else key
            try:
                fields.setdefault(name, []).append(parse(item, strict=True))
            except ProconsulError as err:
                raise ConfigError(f"{source}: {where}: {err}") from None
    elif kind == "dns":
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: dns_config: expected an object")
        fields["dns"] = _dns_config(source, value, fields.get("dns"))
    elif kind == "liveness":
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: liveness: expected an object")
        for sub, v in value.items():
            if sub not in ("interval", "timeout"):
                raise ConfigError(f"{source}: invalid config key liveness.{sub}")
            fields[f"liveness_{sub}"] = _typed(source, f"liveness.{sub}", v, "duration")
    elif kind == "connect":
        fields.update(_connect_config(source, value))
    elif kind == "acl":
        fields.update(_acl_config(source, value))
    elif kind == "tls":
        _merge_tls(fields.setdefault("tls", {}), _tls_block(source, value))
    elif kind == "tls_legacy":
        _merge_tls(fields.setdefault("tls_legacy", {}), _tls_legacy(source, key, value))
    elif kind == "ui":
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: ui_config: expected an object")
        for sub, v in value.items():
            if sub != "enabled":
                raise ConfigError(f"{source}: invalid config key ui_config.{sub}")
            fields["ui"] = _typed(source, "ui_config.enabled", v, "bool")
    else:
        fields[name] = _typed(source, key, value, kind)


_DNS_KEYS = {
    "allow_stale": "bool", "max_stale": "duration", "node_ttl": "duration", "udp_answer_limit": "int",
    "a_record_limit": "int", "only_passing": "bool", "enable_truncate": "bool", "recursor_timeout": "duration",
    "cache_max_age": "duration", "use_cache": "bool", "enable_additional_node_meta_txt": "bool",
    "disable_compression": "bool", "recursor_strategy": "str",
}


def _dns_config(source: str, value: dict[str, Any], current: DNSConfig | None) -> DNSConfig:
    """Consul's dns_config keys onto a DNSConfig (later files override earlier ones key by key)."""
    cfg = current or DNSConfig()
    changes: dict[str, Any] = {}
    for key, v in value.items():
        where = f"dns_config.{key}"
        if key == "service_ttl":
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: {where}: expected an object of service name -> duration")
            changes["service_ttl"] = {name: _typed(source, f"{where}.{name}", ttl, "duration") for name, ttl in v.items()}
        elif key == "soa":
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: {where}: expected an object")
            for sub, num in v.items():
                if sub not in ("refresh", "retry", "expire", "min_ttl"):
                    raise ConfigError(f"{source}: invalid config key {where}.{sub}")
                changes[f"soa_{sub}"] = _typed(source, f"{where}.{sub}", num, "int")
        elif key in _DNS_KEYS:
            typed = _typed(source, where, v, _DNS_KEYS[key])
            if key in DNSConfig.__dataclass_fields__:
                changes[key] = typed
        else:
            raise ConfigError(f"{source}: invalid config key {where}")
    return replace(cfg, **changes)


def _connect_config(source: str, value: Any) -> dict[str, Any]:
    """Consul's connect block: enabled, ca_provider, ca_config (snake_case keys become Consul's CamelCase ones)."""
    from proconsul.server.ca import AGENT_CA_CONFIG_KEYS

    if not isinstance(value, dict):
        raise ConfigError(f"{source}: connect: expected an object")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key == "enabled":
            out["connect_enabled"] = _typed(source, "connect.enabled", v, "bool")
        elif key == "ca_provider":
            out["connect_ca_provider"] = _typed(source, "connect.ca_provider", v, "str")
        elif key == "ca_config":
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: connect.ca_config: expected an object")
            known = {*AGENT_CA_CONFIG_KEYS.values(), "SkipValidate"}
            ca_config: dict[str, Any] = {}
            for k, item in v.items():
                name = AGENT_CA_CONFIG_KEYS.get(k, k)
                if name not in known:
                    raise ConfigError(f"{source}: invalid config key connect.ca_config.{k}")
                ca_config[name] = item
            out["connect_ca_config"] = ca_config
        else:
            raise ConfigError(f"{source}: invalid config key connect.{key}")
    return out


# Consul's acl block: what proconsul reads, and keys it accepts and ignores (replication, persistence,
# the enterprise and HCP ones), so an existing Consul config still loads.
_ACL_IGNORED_KEYS = {"policy_ttl", "role_ttl", "enable_key_list_policy", "enable_token_persistence", "enable_token_replication", "msp_disable_bootstrap"}
_ACL_TOKEN_KEYS = {
    "initial_management": "acl_token_initial_management", "master": "acl_token_initial_management",
    "agent": "acl_token_agent", "default": "acl_token_default",
    "agent_recovery": "acl_token_agent_recovery", "agent_master": "acl_token_agent_recovery",
}
_ACL_IGNORED_TOKENS = {"replication", "config_file_service_registration", "dns"}
ACL_DOWN_POLICIES = ("allow", "deny", "extend-cache", "async-cache")


def _acl_config(source: str, value: Any) -> dict[str, Any]:
    """Consul's acl block: enabled, default_policy, down_policy, token_ttl and tokens {...} (legacy names too)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: acl: expected an object")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key == "enabled":
            out["acl_enabled"] = _typed(source, "acl.enabled", v, "bool")
        elif key == "default_policy":
            out["acl_default_policy"] = _typed(source, "acl.default_policy", v, "str")
        elif key == "down_policy":
            out["acl_down_policy"] = _typed(source, "acl.down_policy", v, "str")
        elif key == "token_ttl":
            out["acl_token_ttl"] = _typed(source, "acl.token_ttl", v, "duration")
        elif key == "tokens":
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: acl.tokens: expected an object")
            for name, secret in v.items():
                if name in _ACL_TOKEN_KEYS:
                    out[_ACL_TOKEN_KEYS[name]] = _typed(source, f"acl.tokens.{name}", secret, "str")
                elif name in _ACL_IGNORED_TOKENS:
                    _typed(source, f"acl.tokens.{name}", secret, "str")
                else:
                    raise ConfigError(f"{source}: invalid config key acl.tokens.{name}")
        elif key in ("policy_ttl", "role_ttl"):
            _typed(source, f"acl.{key}", v, "duration")
        elif key not in _ACL_IGNORED_KEYS:
            raise ConfigError(f"{source}: invalid config key acl.{key}")
    return out


def _tls_block(source: str, value: Any) -> dict[str, dict[str, Any]]:
    """Consul's tls block: defaults, https, internal_rpc and grpc, each a set of typed keys."""
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: tls: expected an object")
    out: dict[str, dict[str, Any]] = {}
    for block, settings in value.items():
        if block not in tlsutil.BLOCK_KEYS:
            raise ConfigError(f"{source}: invalid config key tls.{block}")
        if not isinstance(settings, dict):
            raise ConfigError(f"{source}: tls.{block}: expected an object")
        for key, v in settings.items():
            if key not in tlsutil.BLOCK_KEYS[block]:
                raise ConfigError(f"{source}: invalid config key tls.{block}.{key}")
            out.setdefault(block, {})[key] = _typed(source, f"tls.{block}.{key}", v, "bool" if key in tlsutil.BOOL_KEYS else "str")
    return out


# Consul's pre-1.12 top-level TLS keys and where the tls block has them now (tls block settings win).
_TLS_LEGACY = {
    "ca_file": ("defaults", "ca_file"), "ca_path": ("defaults", "ca_path"), "cert_file": ("defaults", "cert_file"),
    "key_file": ("defaults", "key_file"), "verify_incoming": ("defaults", "verify_incoming"),
    "verify_incoming_rpc": ("internal_rpc", "verify_incoming"), "verify_incoming_https": ("https", "verify_incoming"),
    "verify_outgoing": ("defaults", "verify_outgoing"), "verify_server_hostname": ("internal_rpc", "verify_server_hostname"),
    "tls_min_version": ("defaults", "tls_min_version"), "tls_cipher_suites": ("defaults", "tls_cipher_suites"),
}
_TLS_LEGACY_VERSIONS = {"tls10": "TLSv1_0", "tls11": "TLSv1_1", "tls12": "TLSv1_2", "tls13": "TLSv1_3"}


def _tls_legacy(source: str, key: str, value: Any) -> dict[str, dict[str, Any]]:
    if key == "tls_prefer_server_cipher_suites":
        _typed(source, key, value, "bool")
        return {}
    block, name = _TLS_LEGACY[key]
    typed = _typed(source, key, value, "bool" if name in tlsutil.BOOL_KEYS else "str")
    if name == "tls_min_version":
        typed = _TLS_LEGACY_VERSIONS.get(typed, typed)
    return {block: {name: typed}}


def _merge_tls(into: dict[str, dict[str, Any]], more: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Later settings override earlier ones key by key, as Consul merges config files."""
    for block, settings in more.items():
        into.setdefault(block, {}).update(settings)
    return into


def config_files_in(paths: list[str], dirs: list[str]) -> list[str]:
    """-config-file paths, then each -config-dir's *.json files in lexical order (Consul's order)."""
    files = list(paths)
    for d in dirs:
        if not os.path.isdir(d):
            raise ConfigError(f"{d}: config dir does not exist")
        files += [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".json")]
    return files


def load_file(path: str) -> dict[str, Any]:
    """One JSON config file as a flat field dict; ConfigError names the file and the problem."""
    return _file_fields(path, _read_json(path))


def _read_json(path: str) -> dict[str, Any]:
    if path.endswith(".hcl"):
        raise ConfigError(f"{path}: HCL config files are not supported yet; use the JSON form")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        raw.decode("utf-8")
        data = decode_json(raw)  # as the HTTP API reads bodies: no NaN, no lone surrogates
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except ValueError as err:
        raise ConfigError(f"{path}: invalid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data


def _file_fields(path: str, data: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in data.items():
        _apply_file_value(fields, path, key, value)
    return fields


def _key_paths(data: dict[str, Any], prefix: str = "", depth: int = 3) -> list[str]:
    """The dotted keys a config file sets ("ports", "ports.http", "acl.tokens.agent"), three levels deep."""
    out = []
    for key, value in data.items():
        out.append(prefix + key)
        if isinstance(value, dict) and depth > 1:
            out += _key_paths(value, f"{prefix}{key}.", depth - 1)
    return out


def _blame(err: ConfigError, origin: dict[str, str]) -> ConfigError:
    """A merged-config error naming a key some file set, prefixed with that file's name (the first key named wins)."""
    msg = str(err)
    found = [(m.start(), -len(k), k) for k in origin if (m := re.search(rf"(?:^|\s){re.escape(k)}(?=$|[:\s])", msg))]
    return ConfigError(f"{origin[min(found)[2]]}: {msg}") if found else err


def build(flags: dict[str, Any], config_files: list[str], config_dirs: list[str], persist: bool = True) -> RuntimeConfig:
    """Defaults, then config files in order, then flags; validated and with node name and ID resolved.

    ``persist=False`` only checks (`proconsul validate`): a new node ID is not written to the data dir.
    """
    files = config_files_in(config_files, config_dirs)
    fields: dict[str, Any] = {}
    origin: dict[str, str] = {}  # config key -> the file that set it last, to name it in later errors
    if flags.get("dev"):
        fields.update(dev=True, server=True, bootstrap=True, ui=True)
    for path in files:
        data = _read_json(path)
        origin.update((key, path) for key in _key_paths(data))
        loaded = _file_fields(path, data)
        ports = {**fields.get("ports", {}), **loaded.pop("ports", {})}
        for block in ("tls", "tls_legacy"):
            if block in loaded:
                fields[block] = _merge_tls(fields.get(block, {}), loaded.pop(block))
        # Definitions accumulate across files, as Consul's do; everything else: the last file wins.
        for plural in ("services", "checks"):
            if plural in loaded:
                fields[plural] = [*fields.get(plural, []), *loaded.pop(plural)]
        fields.update(loaded)
        if ports:
            fields["ports"] = ports
    ports = dict(fields.pop("ports", {}))
    for key, value in flags.items():
        if value is None or key in ("dev",):
            continue
        if key.startswith("port_"):
            ports[key[5:]] = value
        else:
            fields[key] = value
        origin.pop(f"ports.{key[5:]}" if key.startswith("port_") else key, None)
    fields["ports"] = Ports(**ports)
    tls_block = _merge_tls(_merge_tls({}, fields.pop("tls_legacy", {})), fields.pop("tls", {}))
    fields["tls_https"] = tlsutil.resolve(tls_block, "https")
    fields["tls_internal_rpc"] = tlsutil.resolve(tls_block, "internal_rpc")
    fields["config_files"] = tuple(files)
    fields["services"] = tuple(fields.get("services", ()))
    fields["checks"] = tuple(fields.get("checks", ()))
    fields.setdefault("node_name", socket.gethostname())
    cfg = RuntimeConfig(**fields)
    try:
        return _validate(cfg, persist)
    except ConfigError as err:
        raise _blame(err, origin) from None


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return addr == "localhost"


def _validate(cfg: RuntimeConfig, persist: bool = True) -> RuntimeConfig:
    level = LOG_LEVELS.get(cfg.log_level.upper())
    if level is None:
        raise ConfigError(f"log_level: unknown level {cfg.log_level!r} (trace, debug, info, warn, err)")
    cfg = replace(cfg, log_level=level)
    if not cfg.node_name:
        raise ConfigError("node_name cannot be empty")
    if not re.fullmatch(r"[a-z0-9_-]+", cfg.datacenter.lower()):
        raise ConfigError(f"datacenter can only contain lowercase alphanumeric, - or _ characters, not {cfg.datacenter!r}")
    if cfg.bootstrap_expect < 0:
        raise ConfigError("bootstrap_expect cannot be negative")
    if cfg.bootstrap and cfg.bootstrap_expect > 1:
        raise ConfigError("bootstrap and bootstrap_expect are mutually exclusive")
    if cfg.bootstrap_expect and not cfg.server:
        raise ConfigError("bootstrap_expect requires server mode (-server)")
    if not cfg.dev and not cfg.data_dir:
        raise ConfigError("data_dir cannot be empty: set -data-dir (only -dev runs without one)")
    if cfg.liveness_interval <= 0 or cfg.liveness_timeout <= cfg.liveness_interval:
        raise ConfigError("liveness: timeout must be longer than interval, and both positive")
    if cfg.ae_interval <= 0:
        raise ConfigError("ae_interval must be positive")
    if cfg.ports.sidecar_min_port > cfg.ports.sidecar_max_port:
        raise ConfigError(f"ports.sidecar_min_port ({cfg.ports.sidecar_min_port}) cannot be higher than ports.sidecar_max_port ({cfg.ports.sidecar_max_port})")
    domain = cfg.domain.strip(".").lower() + "."
    alt = (cfg.alt_domain.strip(".").lower() + ".") if cfg.alt_domain else ""
    if domain == ".":
        raise ConfigError("domain cannot be empty")
    if alt and alt == domain:
        raise ConfigError("alt_domain cannot be the same as domain")
    cfg = replace(cfg, domain=domain, alt_domain=alt)
    for r in cfg.recursors:
        host, _, port = r.rpartition(":") if r.count(":") == 1 else (r, "", "")
        if port and not port.isdigit():
            raise ConfigError(f"recursors: {r!r} is not an address (host or host:port)")
    script_ok = cfg.enable_script_checks or cfg.enable_local_script_checks
    for defn in [*cfg.checks, *(c for s in cfg.services for c in s.checks)]:
        if defn.kind == "script" and not script_ok:
            raise ConfigError(
                f"check {defn.id}: script checks are disabled on this agent; "
                "set enable_local_script_checks (or enable_script_checks) to true"
            )
    for name in ("http", "https", "dns", "server", "raft"):
        port = getattr(cfg.ports, name)
        if not (port == -1 or 0 < port < 65536):
            raise ConfigError(f"ports.{name}: {port} is not a port (1-65535, or -1 to disable)")
    # DNS listens on TCP too, so it cannot share a port with the others (Consul's addrsUnique).
    used = [(n, getattr(cfg.ports, n)) for n in ("http", "https", "dns", "server", "raft") if getattr(cfg.ports, n) > 0]
    if cfg.dev:
        used = [(n, p) for n, p in used if n != "raft"]
    seen: dict[int, str] = {}
    for name, port in used:
        if port in seen:
            raise ConfigError(f"ports.{name} and ports.{seen[port]} are both {port}")
        seen[port] = name
    if cfg.server and cfg.ports.server <= 0:
        raise ConfigError("ports.server must be set on a server")
    if cfg.server and not cfg.dev and cfg.ports.raft <= 0:
        raise ConfigError("ports.raft must be set on a server")
    if cfg.encrypt is not None:
        try:
            key = base64.b64decode(cfg.encrypt, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("encrypt: not a base64 key; make one with `proconsul keygen`") from None
        if len(key) not in (16, 24, 32):
            raise ConfigError(f"encrypt: key is {len(key)} bytes; it must be 16, 24 or 32 (`proconsul keygen` makes one)")
    if cfg.server and not cfg.dev and not _is_loopback(cfg.bind_addr) and not cfg.encrypt:
        raise ConfigError(
            f"refusing to start: the raft port would listen on {cfg.bind_addr}:{cfg.ports.raft} without a cluster key, "
            "and Raft peers exchange pickles; set -encrypt (make a key with `proconsul keygen`) or bind to loopback"
        )
    for addr in cfg.retry_join:
        host, sep, port = addr.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"retry_join: {addr!r} is not host:port (a server's server port, e.g. 127.0.0.1:8300)")
    _validate_tls(cfg)
    if cfg.kv_max_value_size <= 0 or cfg.txn_max_req_len <= 0:
        raise ConfigError("limits: kv_max_value_size and txn_max_req_len must be positive")
    if cfg.acl_default_policy not in ("allow", "deny"):
        raise ConfigError(f'acl.default_policy: must be "allow" or "deny", not {cfg.acl_default_policy!r}')
    if cfg.acl_down_policy not in ACL_DOWN_POLICIES:
        raise ConfigError(f"acl.down_policy: must be one of {', '.join(ACL_DOWN_POLICIES)}, not {cfg.acl_down_policy!r}")
    if cfg.default_intention_policy not in ("", "allow", "deny"):
        raise ConfigError(f'default_intention_policy: must be "allow" or "deny", not {cfg.default_intention_policy!r}')
    if cfg.connect_ca_provider != "consul":
        raise ConfigError(f'connect.ca_provider: unknown CA provider "{cfg.connect_ca_provider}" (only "consul" is built in)')
    if cfg.connect_ca_config:
        from proconsul.server.ca import default_ca_config
        from proconsul.server.ca_manager import check_config

        try:
            check_config({**default_ca_config(), **cfg.connect_ca_config})
        except ProconsulError as err:
            raise ConfigError(f"connect.ca_config: {err}") from None
    return replace(cfg, node_id=cfg.node_id or (_node_id(cfg) if persist else ""))


def _validate_tls(cfg: RuntimeConfig) -> None:
    """Consul's tlsutil checks at startup: files load, and verification has a CA (and a cert) to work with."""
    for name, pc in (("internal_rpc", cfg.tls_internal_rpc), ("https", cfg.tls_https)):
        try:
            tlsutil.check(pc)
        except tlsutil.TLSConfigError as err:
            raise ConfigError(f"tls.{name}: {err}") from None
    if cfg.ports.https > 0 and not cfg.tls_https.has_cert:
        raise ConfigError(f"ports.https: {cfg.ports.https} needs a certificate: set tls.defaults (or tls.https) cert_file and key_file")


def _node_id(cfg: RuntimeConfig) -> str:
    """Consul's node ID: kept in the data dir so it survives restarts; random for an in-memory dev agent."""
    if not cfg.data_dir:
        return str(uuid.uuid4())
    path = os.path.join(cfg.data_dir, "node-id")
    try:
        with open(path) as f:
            node_id = f.read().strip()
        if node_id:
            return node_id
    except FileNotFoundError:
        pass
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None
    node_id = str(uuid.uuid4())
    try:
        os.makedirs(cfg.data_dir, exist_ok=True)
        with open(path, "w") as f:
            f.write(node_id)
    except OSError as err:
        raise ConfigError(f"data_dir {cfg.data_dir}: cannot write: {err}") from None
    return node_id
