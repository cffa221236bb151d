"""The ``proconsul`` command line, with Consul's command and flag names.

Flags take ``-flag`` or ``--flag`` and ``-flag=value``. Every command other
than ``agent`` speaks HTTP to an agent (-http-addr, PROCONSUL_HTTP_ADDR or
CONSUL_HTTP_ADDR). Failures print one line to stderr and exit 1; no tracebacks.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from typing import Any, Callable, NoReturn

from proconsul.agent.client import APIError, Client
from proconsul.agent.version import __version__


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{self.prog}: {message}")


def _flag(parser: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """Register -name and --name (Consul's Go flags accept both)."""
    parser.add_argument(f"-{name}", f"--{name}", **kw)


def _sub(subs: Any, name: str, help: str) -> argparse.ArgumentParser:
    return subs.add_parser(name, help=help, description=help, allow_abbrev=False)


def _http_flags(p: argparse.ArgumentParser) -> None:
    _flag(p, "http-addr", dest="http_addr", help="agent HTTP address (default: $PROCONSUL_HTTP_ADDR, $CONSUL_HTTP_ADDR, 127.0.0.1:8500)")
    _flag(p, "token", help="ACL token (default: $CONSUL_HTTP_TOKEN)")
    _flag(p, "datacenter", help="datacenter to query")


def _client(args: argparse.Namespace) -> Client:
    return Client(args.http_addr, args.token, args.datacenter)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


# ----------------------------------------------------------------- agent


def agent_config(args: argparse.Namespace, persist: bool = True) -> tuple[Any, dict[str, Any]]:
    """The RuntimeConfig an ``agent`` command line asks for (flags over config files) and its flags, or CLIError.

    ``persist=False`` checks only: nothing is written (no node-id file in the data dir).
    """
    from proconsul.agent import config as config_mod

    flags = {
        "dev": args.dev,
        "server": True if args.server else None,
        "bootstrap": True if args.bootstrap else None,
        "bootstrap_expect": args.bootstrap_expect,
        "node_name": args.node,
        "node_id": args.node_id,
        "datacenter": args.datacenter,
        "data_dir": args.data_dir,
        "bind_addr": args.bind,
        "client_addr": args.client,
        "retry_join": tuple(args.retry_join) if args.retry_join else None,
        "encrypt": args.encrypt,
        "log_level": args.log_level,
        "ui": True if args.ui else None,
        "port_http": args.http_port,
        "port_https": args.https_port,
        "port_dns": args.dns_port,
        "port_server": args.server_port,
        "port_raft": args.raft_port,
        "advertise_addr": args.advertise,
        "enable_script_checks": True if args.enable_script_checks else None,
        "enable_local_script_checks": True if args.enable_local_script_checks else None,
    }
    if args.node_meta:
        meta = {}
        for item in args.node_meta:
            key, sep, value = item.partition(":")
            if not sep or not key:
                raise CLIError(f"-node-meta: {item!r} is not key:value")
            meta[key] = value
        flags["node_meta"] = meta
    if args.retry_interval:
        from proconsul.server.durations import parse_duration

        try:
            flags["retry_interval"] = parse_duration(args.retry_interval)
        except ValueError:
            raise CLIError(f"-retry-interval: {args.retry_interval!r} is not a duration like 30s") from None
    try:
        cfg = config_mod.build(flags, args.config_file or [], args.config_dir or [], persist=persist)
    except config_mod.ConfigError as err:
        raise CLIError(f"config: {err}") from None
    return cfg, flags


def cmd_agent(args: argparse.Namespace) -> int:
    import asyncio

    import uvloop

    from proconsul.agent import log as log_mod
    from proconsul.agent.agent import Agent, StartupError

    cfg, flags = agent_config(args)
    log_mod.setup(cfg.log_level)
    agent = Agent(cfg, (flags, args.config_file or [], args.config_dir or []))
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(agent.run())
    except StartupError as err:
        raise CLIError(str(err)) from None
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Consul's `validate`: check config files and directories as `agent` would load them, start nothing."""
    from proconsul.agent import config as config_mod

    files = [p for p in args.paths if not os.path.isdir(p)]
    dirs = [p for p in args.paths if os.path.isdir(p)]
    try:
        config_mod.build({}, files, dirs, persist=False)
    except config_mod.ConfigError as err:
        raise CLIError(f"Config validation failed: {err}") from None
    if not args.quiet:
        _out("Configuration is valid!")
    return 0


def _agent_parser(subs: Any) -> None:
    p = _sub(subs, "agent", "Run an agent: a client (-retry-join a server), a server (-server), or -dev for a one-node playground")
    _flag(p, "dev", action="store_true", help="one in-memory node that is server and agent, on 127.0.0.1")
    _flag(p, "server", action="store_true", help="run as a Raft server")
    _flag(p, "bootstrap", action="store_true", help="a single server that elects itself")
    _flag(p, "bootstrap-expect", dest="bootstrap_expect", type=int, help="start Raft once this many servers found each other")
    _flag(p, "node", help="node name (default: hostname)")
    _flag(p, "node-id", dest="node_id", help="node ID (default: kept in the data dir)")
    _flag(p, "datacenter", help="datacenter (default dc1)")
    _flag(p, "data-dir", dest="data_dir", help="where Raft's journal, snapshots and agent state live")
    _flag(p, "bind", help="address for the server and raft ports (default 127.0.0.1)")
    _flag(p, "client", help="address for the HTTP and DNS ports (default 127.0.0.1)")
    _flag(p, "retry-join", dest="retry_join", action="append", help="a server's server (RPC) address; repeatable")
    _flag(p, "retry-interval", dest="retry_interval", help="time between join attempts")
    _flag(p, "encrypt", help="cluster key (from `proconsul keygen`): authenticates and encrypts Raft traffic")
    _flag(p, "log-level", dest="log_level", help="trace, debug, info, warn or err")
    _flag(p, "ui", action="store_true", help="serve the web UI")
    _flag(p, "advertise", help="address other nodes reach this one at (default: -bind)")
    _flag(p, "node-meta", dest="node_meta", action="append", help="key:value node metadata; repeatable")
    _flag(p, "enable-script-checks", dest="enable_script_checks", action="store_true", help="allow script checks from the API and config files")
    _flag(p, "enable-local-script-checks", dest="enable_local_script_checks", action="store_true", help="allow script checks from config files only")
    _flag(p, "http-port", dest="http_port", type=int)
    _flag(p, "https-port", dest="https_port", type=int, help="HTTPS API port (default -1: off; needs tls cert_file and key_file)")
    _flag(p, "dns-port", dest="dns_port", type=int)
    _flag(p, "server-port", dest="server_port", type=int)
    _flag(p, "raft-port", dest="raft_port", type=int)
    _flag(p, "config-file", dest="config_file", action="append", help="JSON config file; repeatable")
    _flag(p, "config-dir", dest="config_dir", action="append", help="directory of JSON config files; repeatable")
    p.set_defaults(run=cmd_agent)


# ----------------------------------------------------------------- small commands


def cmd_version(args: argparse.Namespace) -> int:
    _out(f"proconsul v{__version__}")
    _out(f"Python {sys.version.split()[0]}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    _out(base64.b64encode(secrets.token_bytes(32)).decode())
    return 0


# ----------------------------------------------------------------- kv


def _kv_key(key: str) -> str:
    return key[1:] if key.startswith("/") else key


def cmd_kv_get(args: argparse.Namespace) -> int:
    c = _client(args)
    key = _kv_key(args.key or "")
    if not key and not (args.recurse or args.keys):
        raise CLIError("Error! Missing KEY argument")
    stale = args.stale or None
    if args.keys:
        resp, keys = c.kv_get(key, keys=True, separator=args.separator, stale=stale)
        for k in keys or []:
            _out(k)
        return 0
    resp, entries = c.kv_get(key, recurse=args.recurse or None, stale=stale)
    if entries is None:
        if args.recurse:
            return 0
        raise CLIError(f"Error! No key exists at: {key}")

    def value_of(e: dict) -> bytes:
        return base64.b64decode(e["Value"]) if e.get("Value") else b""

    def shown(e: dict) -> str:
        raw = value_of(e)
        return base64.b64encode(raw).decode() if args.base64 else raw.decode("utf-8", "replace")

    if args.detailed:
        blocks = []
        for e in entries:
            rows = [
                ("CreateIndex", str(e["CreateIndex"])),
                ("Flags", str(e["Flags"])),
                ("Key", e["Key"]),
                ("LockIndex", str(e["LockIndex"])),
                ("ModifyIndex", str(e["ModifyIndex"])),
                ("Session", e.get("Session") or "-"),
                ("Value", shown(e)),
            ]
            blocks.append("\n".join(f"{k:<17}{v}" for k, v in rows))
        _out("\n\n".join(blocks))
    elif args.recurse:
        for e in entries:
            _out(f"{e['Key']}:{shown(e)}")
    elif args.base64:
        _out(shown(entries[0]))
    else:
        sys.stdout.buffer.write(value_of(entries[0]) + b"\n")
        sys.stdout.flush()
    return 0


def _read_data(arg: str | None, b64: bool) -> bytes:
    if arg is None:
        data = b""
    elif arg == "-":
        data = sys.stdin.buffer.read()
    elif arg.startswith("@"):
        try:
            with open(arg[1:], "rb") as f:
                data = f.read()
        except OSError as err:
            raise CLIError(f"Failed to read file: {err.strerror}: {arg[1:]}") from None
    else:
        data = arg.encode()
    if b64:
        try:
            data = base64.b64decode(data, validate=True)
        except ValueError as err:
            raise CLIError(f"Error! Cannot base 64 decode data: {err}") from None
    return data


def cmd_kv_put(args: argparse.Namespace) -> int:
    key = _kv_key(args.key or "")
    if not key:
        raise CLIError("Error! Missing KEY argument")
    if (args.acquire or args.release) and not args.session:
        raise CLIError("Error! Missing -session (required with -acquire and -release)")
    data = _read_data(args.data, args.base64)
    c = _client(args)
    params: dict[str, Any] = {"flags": args.flags}
    if args.cas:
        params["cas"] = args.modify_index or 0
        if not c.kv_put(key, data, **params):
            if not args.modify_index:
                raise CLIError(f"Error! Did not write to {key}: CAS performed with index=0 and key already exists.")
            raise CLIError(f"Error! Did not write to {key}: CAS failed")
    elif args.acquire:
        if not c.kv_put(key, data, acquire=args.session, **params):
            raise CLIError("Error! Did not acquire lock")
        _out(f"Success! Lock acquired on: {key}")
        return 0
    elif args.release:
        if not c.kv_put(key, data, release=args.session, **params):
            raise CLIError("Error! Did not release lock")
        _out(f"Success! Lock released on: {key}")
        return 0
    else:
        c.kv_put(key, data, **params)
    _out(f"Success! Data written to: {key}")
    return 0


def cmd_kv_delete(args: argparse.Namespace) -> int:
    key = _kv_key(args.key or "")
    if args.modify_index and not args.cas:
        raise CLIError("Cannot specify -modify-index without -cas!")
    if args.cas and args.recurse:
        raise CLIError("Cannot specify both -cas and -recurse!")
    if not key and not args.recurse:
        raise CLIError("Error! Missing KEY argument")
    c = _client(args)
    if args.cas:
        if not args.modify_index:
            raise CLIError("Cannot delete a key that does not exist. Provide a -modify-index greater than 0.")
        if not c.kv_delete(key, cas=args.modify_index):
            raise CLIError(f"Error! Did not delete key {key}: CAS failed")
        _out(f"Success! Deleted key: {key}")
    elif args.recurse:
        c.kv_delete(key, recurse=True)
        _out(f"Success! Deleted keys with prefix: {key}")
    else:
        c.kv_delete(key)
        _out(f"Success! Deleted key: {key}")
    return 0


def _kv_parser(subs: Any) -> None:
    kv = _sub(subs, "kv", "Read and write the key/value store")
    kvs = kv.add_subparsers(dest="kv_cmd", metavar="get|put|delete", parser_class=_Parser)
    kvs.required = True

    g = _sub(kvs, "get", "Read a key, or every key under a prefix")
    g.add_argument("key", nargs="?")
    _http_flags(g)
    _flag(g, "recurse", action="store_true", help="every key under the prefix, as key:value")
    _flag(g, "keys", action="store_true", help="only key names")
    _flag(g, "separator", default="/", help="with -keys: roll up at this separator (default /)")
    _flag(g, "detailed", action="store_true", help="every field of the entry")
    _flag(g, "base64", action="store_true", help="print values base64-encoded")
    _flag(g, "stale", action="store_true", help="any server may answer")
    g.set_defaults(run=cmd_kv_get)

    p = _sub(kvs, "put", "Write a key: DATA is a value, @file, or - for stdin")
    p.add_argument("key", nargs="?")
    p.add_argument("data", nargs="?")
    _http_flags(p)
    _flag(p, "cas", action="store_true", help="check-and-set against -modify-index (0: only if absent)")
    _flag(p, "modify-index", dest="modify_index", type=int, default=0)
    _flag(p, "flags", type=int, default=None, help="opaque uint64 stored with the key")
    _flag(p, "base64", action="store_true", help="DATA is base64-encoded")
    _flag(p, "acquire", action="store_true", help="acquire the key's lock with -session")
    _flag(p, "release", action="store_true", help="release the key's lock held by -session")
    _flag(p, "session")
    p.set_defaults(run=cmd_kv_put)

    d = _sub(kvs, "delete", "Delete a key, or every key under a prefix")
    d.add_argument("key", nargs="?")
    _http_flags(d)
    _flag(d, "recurse", action="store_true")
    _flag(d, "cas", action="store_true", help="delete only at -modify-index")
    _flag(d, "modify-index", dest="modify_index", type=int, default=0)
    d.set_defaults(run=cmd_kv_delete)


# ----------------------------------------------------------------- snapshot


def cmd_snapshot_save(args: argparse.Namespace) -> int:
    from proconsul.server.snapshot import read_snapshot

    c = _client(args)
    resp = c.request("GET", "/v1/snapshot", {"stale": args.stale or None})
    tmp = args.file + ".unverified"
    try:
        with open(tmp, "wb") as f:
            f.write(resp.content)
        read_snapshot(tmp)
        os.replace(tmp, args.file)
    except OSError as err:
        raise CLIError(f"Error saving snapshot: {err.strerror}: {err.filename}") from None
    except ValueError as err:
        raise CLIError(f"Error verifying snapshot file: {err}") from None
    _out(f"Saved and verified snapshot to index {resp.headers.get('X-Consul-Index', '0')}")
    return 0


def cmd_snapshot_restore(args: argparse.Namespace) -> int:
    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as err:
        raise CLIError(f"Error restoring snapshot: {err.strerror}: {args.file}") from None
    _client(args).request("PUT", "/v1/snapshot", content=data)
    _out("Restored snapshot")
    return 0


def cmd_snapshot_inspect(args: argparse.Namespace) -> int:
    from proconsul.server.snapshot import read_snapshot

    try:
        tables, meta = read_snapshot(args.file)
    except Exception as err:  # not SQLite, not ours, unreadable: all one line to the user
        raise CLIError(f"Error inspecting snapshot: {err}") from None
    _out(f"{'Index':<12}{meta.get('index', '')}")
    for name in sorted(tables):
        _out(f"{name:<12}{len(tables[name])} rows")
    return 0


def _snapshot_parser(subs: Any) -> None:
    s = _sub(subs, "snapshot", "Save, restore and inspect snapshots of the whole state (SQLite files)")
    ss = s.add_subparsers(dest="snap_cmd", metavar="save|restore|inspect", parser_class=_Parser)
    ss.required = True
    save = _sub(ss, "save", "Save a snapshot to FILE")
    save.add_argument("file")
    _http_flags(save)
    _flag(save, "stale", action="store_true", help="any server may answer")
    save.set_defaults(run=cmd_snapshot_save)
    restore = _sub(ss, "restore", "Restore the snapshot in FILE (replaces all state)")
    restore.add_argument("file")
    _http_flags(restore)
    restore.set_defaults(run=cmd_snapshot_restore)
    inspect = _sub(ss, "inspect", "Show what a snapshot file holds")
    inspect.add_argument("file")
    inspect.set_defaults(run=cmd_snapshot_inspect)


# ----------------------------------------------------------------- operator


def cmd_raft_list_peers(args: argparse.Namespace) -> int:
    config = _client(args).request("GET", "/v1/operator/raft/configuration", {"stale": args.stale or None}).json()
    leader_index = max((s.get("LastIndex", 0) for s in config["Servers"] if s["Leader"]), default=0)
    rows = [("Node", "ID", "Address", "State", "Voter", "RaftProtocol", "Commit Index", "Trails Leader By")]
    for s in config["Servers"]:
        behind = leader_index - s.get("LastIndex", 0)
        trails = "-" if s["Leader"] else ("1 commit" if behind == 1 else f"{max(behind, 0)} commits")
        rows.append(
            (
                s["Node"], s["ID"], s["Address"], "leader" if s["Leader"] else "follower",
                str(s["Voter"]).lower(), s.get("ProtocolVersion") or "<=1", str(s.get("LastIndex", 0)), trails,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        _out("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def cmd_raft_remove_peer(args: argparse.Namespace) -> int:
    if not args.address and not args.id:
        raise CLIError("Error removing peer: an address or id is required for the peer to remove")
    if args.address and args.id:
        raise CLIError("Error removing peer: cannot give both an address and id")
    params = {"address": args.address} if args.address else {"id": args.id}
    try:
        _client(args).request("DELETE", "/v1/operator/raft/peer", params)
    except APIError as err:
        raise CLIError(f"Error removing peer: {err}") from None
    _out(f'Removed peer with address "{args.address}"' if args.address else f'Removed peer with id "{args.id}"')
    return 0


def _operator_parser(subs: Any) -> None:
    op = _sub(subs, "operator", "Cluster operations")
    ops = op.add_subparsers(dest="op_cmd", metavar="raft", parser_class=_Parser)
    ops.required = True
    raft = _sub(ops, "raft", "Inspect and change the Raft configuration")
    rs = raft.add_subparsers(dest="raft_cmd", metavar="list-peers|remove-peer", parser_class=_Parser)
    rs.required = True
    lp = _sub(rs, "list-peers", "List the Raft voters")
    _http_flags(lp)
    _flag(lp, "stale", action="store_true")
    lp.set_defaults(run=cmd_raft_list_peers)
    rp = _sub(rs, "remove-peer", "Remove a (failed) server from the Raft configuration")
    _http_flags(rp)
    _flag(rp, "address", help="the server's address (IP:port)")
    _flag(rp, "id", help="the server's node ID")
    rp.set_defaults(run=cmd_raft_remove_peer)


# ----------------------------------------------------------------- cluster and catalog


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        _out("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def cmd_members(args: argparse.Namespace) -> int:
    members = _client(args).request("GET", "/v1/agent/members").json()
    status = {1: "alive", 2: "leaving", 3: "left", 4: "failed"}
    rows = [("Node", "Address", "Status", "Type", "Build", "Protocol", "DC")]
    for m in sorted(members, key=lambda m: m["Name"]):
        tags = m.get("Tags") or {}
        port = f":{m['Port']}" if m.get("Port") else ""
        kind = "server" if tags.get("role") == "consul" else "client"
        rows.append((m["Name"], f"{m['Addr']}{port}", status.get(m["Status"], "none"), kind, tags.get("build", ""), "2", tags.get("dc", "")))
    _table(rows)
    return 0


def cmd_catalog_datacenters(args: argparse.Namespace) -> int:
    for dc in _client(args).request("GET", "/v1/catalog/datacenters").json():
        _out(dc)
    return 0


def cmd_catalog_nodes(args: argparse.Namespace) -> int:
    params = {"node-meta": args.node_meta}
    nodes = _client(args).request("GET", "/v1/catalog/nodes", params).json()
    if args.service:
        entries = _client(args).request("GET", f"/v1/catalog/service/{args.service}").json()
        names = {e["Node"] for e in entries}
        nodes = [n for n in nodes if n["Node"] in names]
    rows = [("Node", "ID", "Address", "DC")]
    rows += [(n["Node"], (n.get("ID") or "")[:8], n["Address"], n["Datacenter"]) for n in nodes]
    _table(rows)
    return 0


def cmd_catalog_services(args: argparse.Namespace) -> int:
    c = _client(args)
    if args.node:
        found = c.request("GET", f"/v1/catalog/node/{args.node}").json()
        if not found:
            raise CLIError(f'Error listing services for node: No node "{args.node}"')
        services = {s["Service"]: s["Tags"] for s in found["Services"].values()}
    else:
        services = c.request("GET", "/v1/catalog/services", {"node-meta": args.node_meta}).json()
    if args.tags:
        _table([(name, ",".join(sorted(tags))) for name, tags in sorted(services.items())] or [("", "")])
    else:
        for name in sorted(services):
            _out(name)
    return 0


def _service_defs_from_file(path: str) -> list[dict[str, Any]]:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise CLIError(f"Error reading {path}: {err.strerror}") from None
    except ValueError as err:
        raise CLIError(f"Error parsing {path}: {err}") from None
    if not isinstance(data, dict):
        raise CLIError(f"Error parsing {path}: expected a JSON object")
    defs = []
    if "service" in data:
        defs.append(data["service"])
    if "services" in data:
        if not isinstance(data["services"], list):
            raise CLIError(f"Error parsing {path}: services must be a list")
        defs.extend(data["services"])
    if not defs and any(k.lower() in ("name", "id") for k in data):
        defs.append(data)  # a bare definition, as the HTTP API takes it
    if not defs:
        raise CLIError(f"Error parsing {path}: no service definition (expected a service or services block)")
    return defs


def cmd_services_register(args: argparse.Namespace) -> int:
    import json

    from proconsul.agent.structs import parse_service
    from proconsul.server.errors import ProconsulError

    if args.file:
        defs = [d for f in args.file for d in _service_defs_from_file(f)]
    elif args.name:
        meta = {}
        for item in args.meta or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise CLIError(f"Error parsing -meta: {item!r} is not key=value")
            meta[key] = value
        defs = [{"Name": args.name, "ID": args.id or args.name, "Address": args.address or "", "Port": args.port or 0,
                 "Tags": args.tag or [], "Meta": meta}]
    else:
        raise CLIError("Error! Must specify a service definition file or -name")
    c = _client(args)
    for d in defs:
        try:
            name = parse_service(d, strict=bool(args.file)).service.service
        except ProconsulError as err:
            raise CLIError(f"Error parsing service definition: {err}") from None
        c.request("PUT", "/v1/agent/service/register", content=json.dumps(d).encode())
        _out(f"Registered service: {name}")
    return 0


def cmd_services_deregister(args: argparse.Namespace) -> int:
    ids = [args.id] if args.id else []
    for f in args.file or []:
        for d in _service_defs_from_file(f):
            fields = {k.lower(): v for k, v in d.items()}
            ids.append(fields.get("id") or fields.get("name"))
    if not ids:
        raise CLIError("Error! Must specify a service ID with -id or a definition file")
    c = _client(args)
    for sid in ids:
        try:
            c.request("PUT", f"/v1/agent/service/deregister/{sid}")
        except APIError as err:
            raise CLIError(f"Error deregistering service {sid!r}: {err}") from None
        _out(f"Deregistered service: {sid}")
    return 0


def cmd_maint(args: argparse.Namespace) -> int:
    if args.enable and args.disable:
        raise CLIError("Only one of -enable or -disable may be provided")
    c = _client(args)
    if not args.enable and not args.disable:
        checks = c.request("GET", "/v1/agent/checks").json()
        for cid, chk in sorted(checks.items()):
            if cid == "_node_maintenance":
                _out(f"Node:\n  Name:   {chk['Node']}\n  Reason: {chk['Notes']}\n")
            elif cid.startswith("_service_maintenance:"):
                _out(f"Service:\n  ID:     {chk['ServiceID']}\n  Reason: {chk['Notes']}\n")
        return 0
    params = {"enable": "true" if args.enable else "false", "reason": args.reason}
    state = "enabled" if args.enable else "disabled"
    if args.service:
        try:
            c.request("PUT", f"/v1/agent/service/maintenance/{args.service}", params)
        except APIError as err:
            raise CLIError(f"Error: {err}") from None
        _out(f'Service maintenance is now {state} for "{args.service}"')
    else:
        c.request("PUT", "/v1/agent/maintenance", params)
        _out(f"Node maintenance is now {state}")
    return 0


def cmd_join(args: argparse.Namespace) -> int:
    c = _client(args)
    joined = 0
    for addr in args.address:
        try:
            c.request("PUT", f"/v1/agent/join/{addr}")
            joined += 1
        except APIError as err:
            raise CLIError(f"Error joining address '{addr}': {err}") from None
    _out(f"Successfully joined cluster by contacting {joined} nodes.")
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    _client(args).request("PUT", "/v1/agent/leave")
    _out("Graceful leave complete")
    return 0


def cmd_force_leave(args: argparse.Namespace) -> int:
    try:
        _client(args).request("PUT", f"/v1/agent/force-leave/{args.node}", {"prune": args.prune or None})
    except APIError as err:
        raise CLIError(f"Error force leaving: {err}") from None
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        _client(args).request("PUT", "/v1/agent/reload")
    except APIError as err:
        raise CLIError(f"Error reloading: {err}") from None
    _out("Configuration reload triggered")
    return 0


def _cluster_parsers(subs: Any) -> None:
    m = _sub(subs, "members", "List the cluster's agents and their liveness")
    _http_flags(m)
    m.set_defaults(run=cmd_members)

    cat = _sub(subs, "catalog", "Read the catalog")
    cats = cat.add_subparsers(dest="cat_cmd", metavar="services|nodes|datacenters", parser_class=_Parser)
    cats.required = True
    dcs = _sub(cats, "datacenters", "List datacenters")
    _http_flags(dcs)
    dcs.set_defaults(run=cmd_catalog_datacenters)
    nodes = _sub(cats, "nodes", "List nodes")
    _http_flags(nodes)
    _flag(nodes, "service", help="only nodes running this service")
    _flag(nodes, "node-meta", dest="node_meta", help="key:value the node must have")
    nodes.set_defaults(run=cmd_catalog_nodes)
    svcs = _sub(cats, "services", "List services")
    _http_flags(svcs)
    _flag(svcs, "node", help="only services on this node")
    _flag(svcs, "tags", action="store_true", help="show tags")
    _flag(svcs, "node-meta", dest="node_meta", help="key:value the node must have")
    svcs.set_defaults(run=cmd_catalog_services)

    services = _sub(subs, "services", "Register and deregister services with the local agent")
    ss = services.add_subparsers(dest="svc_cmd", metavar="register|deregister", parser_class=_Parser)
    ss.required = True
    reg = _sub(ss, "register", "Register services from FILEs (config format) or from flags")
    reg.add_argument("file", nargs="*")
    _http_flags(reg)
    _flag(reg, "name")
    _flag(reg, "id")
    _flag(reg, "address")
    _flag(reg, "port", type=int)
    _flag(reg, "tag", action="append")
    _flag(reg, "meta", action="append", help="key=value; repeatable")
    reg.set_defaults(run=cmd_services_register)
    dereg = _sub(ss, "deregister", "Deregister services by -id or from FILEs")
    dereg.add_argument("file", nargs="*")
    _http_flags(dereg)
    _flag(dereg, "id")
    dereg.set_defaults(run=cmd_services_deregister)

    maint = _sub(subs, "maint", "Put the node or a service in or out of maintenance mode (no flags: show)")
    _http_flags(maint)
    _flag(maint, "enable", action="store_true")
    _flag(maint, "disable", action="store_true")
    _flag(maint, "service", help="a service ID (default: the whole node)")
    _flag(maint, "reason", help="shown in the maintenance check's notes")
    maint.set_defaults(run=cmd_maint)

    join = _sub(subs, "join", "Join servers (their server RPC addresses)")
    join.add_argument("address", nargs="+")
    _http_flags(join)
    join.set_defaults(run=cmd_join)
    leave = _sub(subs, "leave", "Leave the cluster gracefully and stop the local agent")
    _http_flags(leave)
    leave.set_defaults(run=cmd_leave)
    fl = _sub(subs, "force-leave", "Move a failed node to left")
    fl.add_argument("node")
    _http_flags(fl)
    _flag(fl, "prune", action="store_true")
    fl.set_defaults(run=cmd_force_leave)
    rl = _sub(subs, "reload", "Make the local agent re-read its config files")
    _http_flags(rl)
    rl.set_defaults(run=cmd_reload)


# ----------------------------------------------------------------- sessions and locks


def cmd_session_list(args: argparse.Namespace) -> int:
    path = f"/v1/session/node/{args.node}" if args.node else "/v1/session/list"
    sessions = _client(args).request("GET", path).json()
    rows = [("ID", "Node", "Name", "TTL", "Behavior", "LockDelay")]
    for s in sessions:
        rows.append((s["ID"], s["Node"], s["Name"] or "-", s["TTL"] or "-", s["Behavior"], f"{s['LockDelay'] / 1e9:g}s"))
    _table(rows)
    return 0


def cmd_session_info(args: argparse.Namespace) -> int:
    import json

    found = _client(args).request("GET", f"/v1/session/info/{args.id}").json()
    if not found:
        raise CLIError(f"Error! No session with ID {args.id}")
    _out(json.dumps(found[0], indent=4))
    return 0


def cmd_session_destroy(args: argparse.Namespace) -> int:
    _client(args).request("PUT", f"/v1/session/destroy/{args.id}")
    _out(f"Destroyed session: {args.id}")
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    """Consul's `lock`: hold a lock (or a semaphore slot with -n) under PREFIX while CHILD runs."""
    import subprocess
    import threading

    from proconsul.agent.lock import Lock, LockError, Semaphore
    from proconsul.agent.signals import received, run_until_signal, signals_to_pipe
    from proconsul.server.durations import parse_duration

    if not args.child:
        raise CLIError("Error! Missing child command")
    if args.n < 1:
        raise CLIError("Error! Limit must be positive")
    prefix = args.prefix.strip("/")
    child_text = " ".join(args.child)
    name = args.name or f"Consul lock for '{child_text}' at '{prefix}'"
    try:
        wait = parse_duration(args.try_) if args.try_ else None
    except ValueError:
        raise CLIError(f"Error! Invalid -try duration {args.try_!r}") from None
    client = _client(args)
    holder: Lock | Semaphore
    if args.n == 1:
        holder = Lock(client, f"{prefix}/.lock", session_name=name)
    else:
        holder = Semaphore(client, prefix, args.n, session_name=name)
    stop = threading.Event()
    with signals_to_pipe() as wake:
        try:
            # In a thread: a blocking read of the held key lasts up to 15 s, and a signal must not wait for it.
            acquired, sig = run_until_signal(lambda: holder.acquire(timeout=wait, stop=stop), wake, "lock-acquire")
        except LockError as err:
            raise CLIError(f"Lock acquisition failed: {err}") from None
        if sig is not None:
            stop.set()
            holder.abandon()
        if not acquired:
            raise CLIError("Shutdown triggered or timeout during lock acquisition")
        if args.verbose:
            sys.stderr.write(f"Lock acquired on {prefix}\n")
        argv = ["/bin/sh", "-c", child_text] if args.shell else args.child
        child = subprocess.Popen(argv, start_new_session=True, stdin=None if args.pass_stdin else subprocess.DEVNULL)
        try:
            while child.poll() is None:
                if holder.lost.is_set() and not stop.is_set():
                    sys.stderr.write("Lock lost, killing child\n")
                    _kill_group(child)
                    break
                for sig in received(wake, timeout=0.05):
                    stop.set()
                    _signal_group(child, sig)
            rc = child.wait()
        finally:
            holder.release()
    if args.verbose:
        sys.stderr.write(f"Child exited with code {rc}; lock released\n")
    return 2 if args.child_exit_code and rc != 0 else 0


def _signal_group(child: Any, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except ProcessLookupError:
        pass


def _kill_group(child: Any) -> None:
    import signal
    import subprocess

    _signal_group(child, signal.SIGTERM)
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _signal_group(child, signal.SIGKILL)


def _session_parsers(subs: Any) -> None:
    sess = _sub(subs, "session", "List, show and destroy sessions")
    ss = sess.add_subparsers(dest="sess_cmd", metavar="list|info|destroy", parser_class=_Parser)
    ss.required = True
    lst = _sub(ss, "list", "List sessions (all, or one node's)")
    _http_flags(lst)
    _flag(lst, "node", help="only this node's sessions")
    lst.set_defaults(run=cmd_session_list)
    info = _sub(ss, "info", "Show one session")
    info.add_argument("id")
    _http_flags(info)
    info.set_defaults(run=cmd_session_info)
    destroy = _sub(ss, "destroy", "Destroy a session (its locks are released)")
    destroy.add_argument("id")
    _http_flags(destroy)
    destroy.set_defaults(run=cmd_session_destroy)

    lock = _sub(subs, "lock", "Run a command while holding a lock (or, with -n, one of N semaphore slots)")
    lock.add_argument("prefix")
    lock.add_argument("child", nargs=argparse.REMAINDER)
    _http_flags(lock)
    _flag(lock, "n", type=int, default=1, help="semaphore limit: how many holders at once (default 1: a lock)")
    _flag(lock, "name", help="session name")
    _flag(lock, "pass-stdin", dest="pass_stdin", action="store_true", help="give the child our stdin")
    _flag(lock, "try", dest="try_", help="give up acquiring after this long (e.g. 10s)")
    _flag(lock, "child-exit-code", dest="child_exit_code", action="store_true", help="exit 2 when the child fails")
    _flag(lock, "shell", type=lambda v: v.lower() not in ("false", "0"), default=True, help="run the child through sh -c (default true)")
    _flag(lock, "verbose", action="store_true")
    lock.set_defaults(run=cmd_lock)


# ----------------------------------------------------------------- events and watches


def cmd_event(args: argparse.Namespace) -> int:
    """Consul's `event`: fire a user event, print its ID."""
    from urllib.parse import quote

    from proconsul.server.endpoints.event import regexp_error

    if not args.name:
        raise CLIError("Event name must be specified")
    for pattern, what in ((args.node, "node"), (args.service, "service"), (args.tag, "tag")):
        if pattern and (err := regexp_error(pattern)):
            raise CLIError(f"Failed to compile {what} filter regexp: {err}")
    if args.tag and not args.service:
        raise CLIError("Cannot provide tag filter without service filter.")
    if len(args.payload) > 1:
        raise CLIError("Too many command line arguments.")
    c = _client(args)
    try:
        c.request("GET", "/v1/agent/self")
    except APIError as err:
        raise CLIError(f"Error querying Consul agent: {err}") from None
    params = {"node": args.node or None, "service": args.service or None, "tag": args.tag or None}
    try:
        fired = c.request("PUT", "/v1/event/fire/" + quote(args.name, safe="/"), params, content=args.payload[0].encode() if args.payload else None)
    except APIError as err:
        raise CLIError(f"Error firing event: {err}") from None
    _out(f"Event ID: {fired.json()['ID']}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Consul's `watch`: hand every change of a view to a child command until interrupted, or print it once."""
    from proconsul.agent import watch

    params: dict[str, Any] = {"type": args.type}
    for name in ("datacenter", "token", "key", "prefix", "service", "tag", "state", "name"):
        if getattr(args, name):
            params[name] = getattr(args, name)
    if args.stale:
        params["stale"] = True
    if args.passingonly:
        truth = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
                 "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
        if args.passingonly not in truth:
            raise CLIError(f'Failed to parse passingonly flag: strconv.ParseBool: parsing "{args.passingonly}": invalid syntax')
        params["passingonly"] = truth[args.passingonly]
    try:
        plan = watch.parse(params)
    except watch.WatchError as err:
        raise CLIError(str(err)) from None
    c = _client(args)
    try:
        c.request("GET", "/v1/agent/self")
    except APIError as err:
        raise CLIError(f"Error querying Consul agent: {err}") from None
    return watch.execute(plan, c, args.handler, args.shell)


def _event_parsers(subs: Any) -> None:
    ev = _sub(subs, "event", "Fire a user event (to every agent, or those the filters pick)")
    ev.add_argument("payload", nargs="*")
    _http_flags(ev)
    _flag(ev, "name", help="event name (required)")
    _flag(ev, "node", help="regular expression on node names")
    _flag(ev, "service", help="regular expression on service names")
    _flag(ev, "tag", help="regular expression on service tags (needs -service)")
    ev.set_defaults(run=cmd_event)

    w = _sub(subs, "watch", "Watch a view (key, keyprefix, services, nodes, service, checks, event) and run HANDLER on each change (no HANDLER: print it once)")
    w.add_argument("handler", nargs=argparse.REMAINDER)
    _http_flags(w)
    _flag(w, "type", default="", help="key, keyprefix, services, nodes, service, checks or event")
    _flag(w, "key", help="the key (type key)")
    _flag(w, "prefix", help="the key prefix (type keyprefix)")
    _flag(w, "service", help="the service (type service; optional for checks)")
    _flag(w, "tag", action="append", help="a tag the service must have (types service, checks); repeatable")
    _flag(w, "passingonly", nargs="?", const="true", help="only instances passing all checks (type service)")
    _flag(w, "state", help="check state (type checks; default any)")
    _flag(w, "name", help="event name (type event)")
    _flag(w, "stale", action="store_true", help="any server may answer")
    _flag(w, "shell", nargs="?", const=True, type=lambda v: v.lower() not in ("false", "0", "f"), default=True,
          help="run HANDLER through $SHELL -c (default true)")
    w.set_defaults(run=cmd_watch)


# ----------------------------------------------------------------- connect


def cmd_connect_ca_get_config(args: argparse.Namespace) -> int:
    """Consul's `connect ca get-config`: the CA configuration as tab-indented JSON."""
    import json

    try:
        config = _client(args).request("GET", "/v1/connect/ca/configuration", {"stale": args.stale or None}).json()
    except APIError as err:
        raise CLIError(f"Error querying CA configuration: {err}") from None
    _out(json.dumps(config, indent="\t"))
    return 0


def cmd_connect_ca_set_config(args: argparse.Namespace) -> int:
    """Consul's `connect ca set-config -config-file F`: PUT the file's CAConfiguration."""
    import json

    if not args.config_file:
        raise CLIError("The -config-file flag is required")
    try:
        with open(args.config_file, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise CLIError(f"Error reading config file: {err.strerror or err}: {args.config_file}") from None
    try:
        config = json.loads(raw)
    except ValueError as err:
        raise CLIError(f"Error parsing config file: {err}") from None
    if not isinstance(config, dict):
        raise CLIError("Error parsing config file: expected a JSON object")
    if args.force_without_cross_signing:
        config["ForceWithoutCrossSigning"] = True
    try:
        _client(args).request("PUT", "/v1/connect/ca/configuration", content=json.dumps(config).encode())
    except APIError as err:
        raise CLIError(f"Error setting CA configuration: {err}") from None
    _out("Configuration updated!")
    return 0


def cmd_connect_proxy(args: argparse.Namespace) -> int:
    """`connect proxy`: the built-in mTLS proxy in this process (see proxy_command)."""
    import asyncio

    import uvloop

    from proconsul.agent import log as log_mod
    from proconsul.agent import proxy_command
    from proconsul.agent.config import LOG_LEVELS

    level = LOG_LEVELS.get(args.log_level.upper())
    if level is None:
        raise CLIError(f"-log-level: unknown level {args.log_level!r} (trace, debug, info, warn, err)")
    log_mod.setup(level)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(proxy_command.run(args))
    except proxy_command.CommandError as err:
        raise CLIError(str(err)) from None


def _connect_parsers(subs: Any) -> None:
    from proconsul.agent import proxy_command

    conn = _sub(subs, "connect", "Connect (service mesh): the CA and the built-in proxy")
    cs = conn.add_subparsers(dest="connect_cmd", metavar="ca|proxy", parser_class=_Parser)
    cs.required = True
    cap = _sub(cs, "ca", "Inspect and change the Connect CA")
    cas = cap.add_subparsers(dest="ca_cmd", metavar="get-config|set-config", parser_class=_Parser)
    cas.required = True
    get = _sub(cas, "get-config", "Display the current Connect CA configuration")
    _http_flags(get)
    _flag(get, "stale", action="store_true", help="any server may answer")
    get.set_defaults(run=cmd_connect_ca_get_config)
    put = _sub(cas, "set-config", "Modify the Connect CA configuration (new key settings rotate the root)")
    _http_flags(put)
    _flag(put, "config-file", dest="config_file", help="the JSON CA configuration to apply (Provider, Config)")
    _flag(put, "force-without-cross-signing", dest="force_without_cross_signing", action="store_true", help="rotate without having the old root cross-sign the new one")
    put.set_defaults(run=cmd_connect_ca_set_config)
    proxy_command.add_parser(cs, _sub, _flag, _http_flags)
    cs.choices["proxy"].set_defaults(run=cmd_connect_proxy)


# ----------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="proconsul", description="Service registry, KV store and service mesh, compatible with Consul.", allow_abbrev=False)
    subs = p.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    subs.required = True
    _agent_parser(subs)
    v = _sub(subs, "version", "Print the version")
    v.set_defaults(run=cmd_version)
    k = _sub(subs, "keygen", "Make a cluster key for -encrypt")
    k.set_defaults(run=cmd_keygen)
    val = _sub(subs, "validate", "Check agent config files (and directories of them) without starting anything")
    val.add_argument("paths", nargs="+", metavar="FILE_OR_DIRECTORY")
    _flag(val, "quiet", action="store_true", help="print nothing when the configuration is valid")
    val.set_defaults(run=cmd_validate)
    _kv_parser(subs)
    _snapshot_parser(subs)
    _operator_parser(subs)
    _cluster_parsers(subs)
    _session_parsers(subs)
    _event_parsers(subs)
    _connect_parsers(subs)
    from proconsul.agent import intention_commands  # its own module; it imports the helpers above

    intention_commands.add_parsers(subs)
    from proconsul.agent import tls_commands

    tls_commands.add_parsers(subs)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser().parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
        code = run(args)
    except (CLIError, APIError) as err:
        sys.stderr.write(f"{err}\n")
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = 0
    sys.exit(code)
