"""``proconsul intention ...``: Consul's intention commands (command/intention/*), output and exit codes included.

create prints ``Created: web => db (allow)``; get prints Consul's aligned
fields; list prints a table (exit 2 when there are none); match prints one
intention per line in evaluation order; check prints Allowed (exit 0) or Denied
(exit 1), and exits 2 on errors; every other failure is one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any
from urllib.parse import quote

from proconsul.agent.cli import CLIError, _client, _flag, _http_flags, _out, _sub
from proconsul.agent.client import APIError, Client


def _part(ns: str, name: str) -> str:
    """api.Intention's partString: the default namespace is left out."""
    return f"{ns}/{name}" if ns and ns != "default" else name


def describe(ixn: dict[str, Any]) -> str:
    """api.Intention.String: ``web => db (allow)``."""
    return f"{_part(ixn.get('SourceNS', ''), ixn.get('SourceName', ''))} => {_part(ixn.get('DestinationNS', ''), ixn.get('DestinationName', ''))} ({ixn.get('Action', '')})"


def _format(ns: str, name: str) -> str:
    """command/intention.FormatSource: namespace kept when set."""
    return f"{ns}/{name}" if ns else name


def parse_target(text: str) -> tuple[str, str, str]:
    """ParseIntentionTarget: ``[[partition/]namespace/]name`` to (name, namespace, partition)."""
    parts = text.split("/")
    if len(parts) > 3:
        raise ValueError("input can contain at most two '/'")
    return parts[-1], parts[-2] if len(parts) > 1 else "", parts[0] if len(parts) == 3 else ""


def _columns(rows: list[tuple[str, ...]]) -> str:
    """ryanuber/columnize with Consul's settings: columns two spaces apart, the last one not padded."""
    widths = [max(len(r[i]) for r in rows if len(r) > i) for i in range(max(len(r) for r in rows))]
    lines = []
    for r in rows:
        cells = [v.ljust(widths[i]) if i < len(r) - 1 else v for i, v in enumerate(r)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _get(c: Client, path: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """api.IntentionGet / IntentionGetExact: None on 404, "Unexpected response N: body" otherwise."""
    resp = c.request("GET", path, params, ok=(200, 404, 400, 403, 500))
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise APIError(f"Unexpected response {resp.status_code}: {resp.text}")
    return resp.json()


def get_from_args(c: Client, args: list[str]) -> dict[str, Any]:
    """command/intention.GetFromArgs: by ID (one argument) or by source and destination (two)."""
    if len(args) == 1:
        try:
            found = _get(c, "/v1/connect/intentions/" + quote(args[0], safe=""))
        except APIError as err:
            raise CLIError(f"Error reading the intention: {err}") from None
        if found is None:
            raise CLIError(f'Intention not found with ID "{args[0]}"')
        return found
    if len(args) == 2:
        try:
            found = _get(c, "/v1/connect/intentions/exact", {"source": args[0], "destination": args[1]})
        except APIError as err:
            raise CLIError(f"Error reading the intention: {err}") from None
        if found is None:
            raise CLIError(f'Intention not found with source "{args[0]}" and destination "{args[1]}"')
        return found
    raise CLIError("command requires exactly 1 or 2 arguments")


def _go_rfc850(text: str) -> str:
    """A Go time's JSON form printed as time.RFC850 in local time (the zero time when absent)."""
    if not text:
        return "Monday, 01-Jan-01 00:00:00 UTC"
    import calendar

    base = text.partition(".")[0].rstrip("Z")
    try:
        seconds = calendar.timegm(time.strptime(base[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return text
    return time.strftime("%A, %d-%b-%y %H:%M:%S %Z", time.localtime(seconds))


# ----------------------------------------------------------------- commands


def cmd_create(args: argparse.Namespace) -> int:
    """Consul's `intention create`: POST each intention (or, with -replace, update the matching one)."""
    if args.allow and args.deny:
        raise CLIError("Only one of -allow or -deny may be specified.")
    action = "deny" if args.deny else "allow"
    meta: dict[str, str] = {}
    for item in args.meta or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f'invalid value "{item}" for flag -meta: Missing "=" value in argument: {item}')
        meta[key] = value
    if args.file:
        ixns = [_from_file(path) for path in args.args]
    else:
        if len(args.args) != 2:
            raise CLIError("Error: Must specify two arguments: source and destination")
        try:
            src = parse_target(args.args[0])
        except ValueError as err:
            raise CLIError(f"Error: Invalid intention source: {err}") from None
        try:
            dst = parse_target(args.args[1])
        except ValueError as err:
            raise CLIError(f"Error: Invalid intention destination: {err}") from None
        ixn: dict[str, Any] = {"SourceName": src[0], "DestinationName": dst[0], "SourceType": "consul", "Action": action}
        for key, value in (("SourceNS", src[1]), ("SourcePartition", src[2]), ("DestinationNS", dst[1]), ("DestinationPartition", dst[2])):
            if value:
                ixn[key] = value
        if meta:
            ixn["Meta"] = meta
        ixns = [ixn]
    c = _client(args)
    for ixn in ixns:
        source = _format(ixn.get("SourceNS", ""), ixn.get("SourceName", ""))
        destination = _format(ixn.get("DestinationNS", ""), ixn.get("DestinationName", ""))
        if args.replace:
            try:
                old = _get(c, "/v1/connect/intentions/exact", {"source": source, "destination": destination})
            except APIError as err:
                raise CLIError(f'Error looking up intention for replacement with source "{source}" and destination "{destination}": {err}') from None
            if old is not None:
                try:
                    if old.get("ID"):
                        c.request("PUT", "/v1/connect/intentions/" + old["ID"], content=json.dumps({**ixn, "ID": old["ID"]}).encode())
                    else:
                        # Entries written as config entries have no ID; Consul's CLI fails here, we upsert by name.
                        body = {k: v for k, v in ixn.items() if k not in ("SourceName", "DestinationName", "Meta")}
                        c.request("PUT", "/v1/connect/intentions/exact", {"source": source, "destination": destination}, content=json.dumps(body).encode())
                except APIError as err:
                    raise CLIError(f'Error replacing intention with source "{source}" and destination "{destination}": {err}') from None
                continue
        try:
            c.request("POST", "/v1/connect/intentions", content=json.dumps(ixn).encode())
        except APIError as err:
            raise CLIError(f'Error creating intention "{describe(ixn)}": {err}') from None
        _out(f"Created: {describe(ixn)}")
    return 0


def _from_file(path: str) -> dict[str, Any]:
    try:
        if path == "-":
            data = json.load(sys.stdin)
        else:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
    except OSError as err:
        raise CLIError(f"Error: open {path}: {err.strerror.lower() if err.strerror else err}") from None
    except ValueError as err:
        raise CLIError(f"Error: {err}") from None
    if not isinstance(data, dict):
        raise CLIError(f"Error: {path}: expected a JSON object")
    if data.get("Permissions"):
        raise CLIError(f"Error: cannot create L7 intention from file \"{path}\" using this CLI; use 'consul config write' instead")
    return data


def cmd_get(args: argparse.Namespace) -> int:
    """Consul's `intention get`: the intention's fields, aligned."""
    ixn = get_from_args(_client(args), args.args)
    rows = [
        ("Source:", _part(ixn.get("SourceNS", ""), ixn.get("SourceName", ""))),
        ("Destination:", _part(ixn.get("DestinationNS", ""), ixn.get("DestinationName", ""))),
    ]
    if ixn.get("Action"):
        rows.append(("Action:", ixn["Action"]))
    if ixn.get("ID"):
        rows.append(("ID:", ixn["ID"]))
    if ixn.get("Description"):
        rows.append(("Description:", ixn["Description"]))
    for key in sorted(ixn.get("Meta") or {}):
        rows.append((f"Meta[{key}]:", ixn["Meta"][key]))
    rows.append(("Created At:", _go_rfc850(ixn.get("CreatedAt", ""))))
    _out(_columns(rows))
    if ixn.get("Permissions"):
        _out("Permissions:\n" + json.dumps(ixn["Permissions"], indent=2))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Consul's `intention delete`: by ID or by source and destination."""
    c = _client(args)
    try:
        if len(args.args) == 1:
            c.request("DELETE", "/v1/connect/intentions/" + quote(args.args[0], safe=""))
        elif len(args.args) == 2:
            c.request("DELETE", "/v1/connect/intentions/exact", {"source": args.args[0], "destination": args.args[1]})
        else:
            raise CLIError("command requires exactly 1 or 2 arguments")
    except APIError as err:
        raise CLIError(f"Error deleting the intention: {err}") from None
    _out("Intention deleted.")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Consul's `intention list`: a table, exit 2 when there is nothing to list."""
    try:
        ixns = _client(args).request("GET", "/v1/connect/intentions").json()
    except APIError as err:
        raise CLIError(f"Failed to retrieve the intentions list: {err}") from None
    if not ixns:
        sys.stderr.write("There are no intentions.\n")
        return 2
    rows = [("ID", "Source", "Action", "Destination", "Precedence")]
    rows += [(i.get("ID", ""), i["SourceName"], i.get("Action", ""), i["DestinationName"], str(i["Precedence"])) for i in ixns]
    _out(_columns(rows))
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    """Consul's `intention match`: the intentions for a destination (or -source), in evaluation order."""
    if len(args.args) != 1:
        raise CLIError("Error: command requires exactly one argument: src or dst")
    if args.source and args.destination:
        raise CLIError("Error: only one of -source or -destination may be specified")
    by = "source" if args.source else "destination"
    try:
        matches = _client(args).request("GET", "/v1/connect/intentions/match", {"by": by, "name": args.args[0]}).json()
    except APIError as err:
        raise CLIError(f"Error matching the connection: {err}") from None
    for ixn in matches.get(args.args[0]) or []:
        _out(describe(ixn))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Consul's `intention check`: Allowed (exit 0), Denied (exit 1), errors exit 2."""
    if len(args.args) != 2:
        sys.stderr.write("Error: command requires exactly two arguments: src and dst\n")
        return 2
    params = {"source": args.args[0], "destination": args.args[1], "source-type": "consul"}
    try:
        allowed = _client(args).request("GET", "/v1/connect/intentions/check", params).json()["Allowed"]
    except APIError as err:
        sys.stderr.write(f"Error checking the connection: {err}\n")
        return 2
    _out("Allowed" if allowed else "Denied")
    return 0 if allowed else 1


def add_parsers(subs: Any) -> None:
    """The ``intention`` command and its subcommands."""
    top = _sub(subs, "intention", "Create, read, delete, list, match and check intentions")
    ss = top.add_subparsers(dest="ixn_cmd", metavar="create|get|delete|list|match|check", parser_class=type(top))
    ss.required = True
    create = _sub(ss, "create", "Create an intention (allow by default); -replace replaces a matching one")
    create.add_argument("args", nargs="*", metavar="SRC DST")
    _http_flags(create)
    _flag(create, "allow", action="store_true", help="allow when matched (the default)")
    _flag(create, "deny", action="store_true", help="deny when matched")
    _flag(create, "replace", action="store_true", help="replace a matching intention")
    _flag(create, "file", action="store_true", help="read intentions from the JSON files named as arguments (- is stdin)")
    _flag(create, "meta", action="append", help="key=value metadata; repeatable")
    create.set_defaults(run=cmd_create)
    for name, run, text in (
        ("get", cmd_get, "Show an intention (SRC DST, or ID)"),
        ("delete", cmd_delete, "Delete an intention (SRC DST, or ID)"),
    ):
        p = _sub(ss, name, text)
        p.add_argument("args", nargs="*", metavar="SRC DST | ID")
        _http_flags(p)
        p.set_defaults(run=run)
    lst = _sub(ss, "list", "List every intention")
    _http_flags(lst)
    lst.set_defaults(run=cmd_list)
    match = _sub(ss, "match", "Show the intentions that apply to a destination (or, with -source, a source), in evaluation order")
    match.add_argument("args", nargs="*", metavar="SRC|DST")
    _http_flags(match)
    _flag(match, "source", action="store_true", help="match by source")
    _flag(match, "destination", action="store_true", help="match by destination (the default)")
    match.set_defaults(run=cmd_match)
    check = _sub(ss, "check", "Would SRC be allowed to connect to DST? Exit 0 allowed, 1 denied, 2 on errors")
    check.add_argument("args", nargs="*", metavar="SRC DST")
    _http_flags(check)
    check.set_defaults(run=cmd_check)
