"""`proconsul intention ...` against a real dev agent: Consul's output, arguments and exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from test_cli import fails, ok, run


def test_create_get_match_check_delete(dev_agent):
    assert ok(run(dev_agent, "intention", "create", "cli-web", "cli-db")) == "Created: cli-web => cli-db (allow)\n"
    assert ok(run(dev_agent, "intention", "create", "-deny", "-meta", "team=a", "*", "cli-db")) == "Created: * => cli-db (deny)\n"
    out = ok(run(dev_agent, "intention", "get", "cli-web", "cli-db"))
    lines = out.splitlines()
    assert lines[:3] == ["Source:       cli-web", "Destination:  cli-db", "Action:       allow"]
    assert re.fullmatch(r"ID:           [0-9a-f-]{36}", lines[3])
    assert lines[4].startswith("Created At:   ") and re.search(r"\d\d-\w{3}-\d\d \d\d:\d\d:\d\d", lines[4])
    ixn_id = lines[3].split()[-1]
    assert ok(run(dev_agent, "intention", "get", ixn_id)) == out
    meta = ok(run(dev_agent, "intention", "get", "*", "cli-db"))
    assert "Meta[team]:   a" in meta.splitlines()
    assert ok(run(dev_agent, "intention", "match", "cli-db")) == "cli-web => cli-db (allow)\n* => cli-db (deny)\n"
    assert ok(run(dev_agent, "intention", "match", "-source", "cli-web")).splitlines()[0] == "cli-web => cli-db (allow)"
    p = run(dev_agent, "intention", "check", "cli-web", "cli-db")
    assert (p.returncode, p.stdout) == (0, b"Allowed\n")
    p = run(dev_agent, "intention", "check", "cli-api", "cli-db")
    assert (p.returncode, p.stdout) == (1, b"Denied\n")  # Consul's check: 0 allowed, 1 denied, 2 errors
    # Deleting by name rewrites the entry as a config entry, which would drop the other (legacy) intention's
    # Meta: Consul refuses that rather than lose data, and so do we. Deleting by ID keeps the entry legacy.
    fails(run(dev_agent, "intention", "delete", "cli-web", "cli-db"),
          "Error deleting the intention: Unexpected response code: 400 (Sources[0].LegacyMeta must be omitted)")
    assert ok(run(dev_agent, "intention", "delete", ixn_id)) == "Intention deleted.\n"
    fails(run(dev_agent, "intention", "get", "cli-web", "cli-db"), 'Intention not found with source "cli-web" and destination "cli-db"')
    fails(run(dev_agent, "intention", "get", ixn_id), f'Intention not found with ID "{ixn_id}"')
    assert ok(run(dev_agent, "intention", "delete", "*", "cli-db")) == "Intention deleted.\n"


def test_create_refuses_a_duplicate_unless_replace(dev_agent):
    ok(run(dev_agent, "intention", "create", "rep-web", "rep-db"))
    fails(run(dev_agent, "intention", "create", "-deny", "rep-web", "rep-db"),
          'Error creating intention "rep-web => rep-db (deny)": Unexpected response code: 400 (Sources[1] defines "rep-web" more than once)')
    assert ok(run(dev_agent, "intention", "create", "-deny", "-replace", "rep-web", "rep-db")) == ""
    assert "Action:       deny" in ok(run(dev_agent, "intention", "get", "rep-web", "rep-db"))
    # An intention written by name has no ID; -replace still replaces it.
    ok(run(dev_agent, "intention", "delete", "rep-web", "rep-db"))
    dev_agent.http.put("/v1/connect/intentions/exact", params={"source": "rep-web", "destination": "rep-db"}, json={"Action": "allow"})
    ok(run(dev_agent, "intention", "create", "-deny", "-replace", "rep-web", "rep-db"))
    assert "Action:       deny" in ok(run(dev_agent, "intention", "get", "rep-web", "rep-db"))
    ok(run(dev_agent, "intention", "delete", "rep-web", "rep-db"))


def test_create_from_file(dev_agent, tmp_path: Path):
    f = tmp_path / "ixn.json"
    f.write_text(json.dumps({"SourceName": "file-web", "DestinationName": "file-db", "Action": "deny"}))
    assert ok(run(dev_agent, "intention", "create", "-file", str(f))) == "Created: file-web => file-db (deny)\n"
    assert ok(run(dev_agent, "intention", "create", "-file", "-", stdin=json.dumps({"SourceName": "file-api", "DestinationName": "file-db", "Action": "allow"}).encode())) \
        == "Created: file-api => file-db (allow)\n"
    l7 = tmp_path / "l7.json"
    l7.write_text(json.dumps({"SourceName": "a", "DestinationName": "b", "Permissions": [{"Action": "allow"}]}))
    fails(run(dev_agent, "intention", "create", "-file", str(l7)),
          f"Error: cannot create L7 intention from file \"{l7}\" using this CLI; use 'consul config write' instead")
    for pair in (("file-web", "file-db"), ("file-api", "file-db")):
        ok(run(dev_agent, "intention", "delete", *pair))


def test_list(dev_agent):
    ok(run(dev_agent, "intention", "create", "ls-web", "ls-db"))
    lines = ok(run(dev_agent, "intention", "list")).splitlines()
    assert lines[0].split() == ["ID", "Source", "Action", "Destination", "Precedence"]
    row = next(line for line in lines if "ls-web" in line).split()
    assert row[1:] == ["ls-web", "allow", "ls-db", "9"] and len(row[0]) == 36
    ok(run(dev_agent, "intention", "delete", "ls-web", "ls-db"))


def test_list_with_no_intentions_exits_2(tmp_path: Path):
    from conftest import start_dev_agent

    agent = start_dev_agent(tmp_path, name="empty")
    try:
        p = run(agent, "intention", "list")
        assert (p.returncode, p.stdout, p.stderr) == (2, b"", b"There are no intentions.\n")
    finally:
        agent.stop()


def test_argument_errors(dev_agent):
    fails(run(dev_agent, "intention", "create", "only-one"), "Error: Must specify two arguments: source and destination")
    fails(run(dev_agent, "intention", "create", "-allow", "-deny", "a", "b"), "Only one of -allow or -deny may be specified.")
    fails(run(dev_agent, "intention", "create", "a/b/c/d", "b"), "Error: Invalid intention source: input can contain at most two '/'")
    fails(run(dev_agent, "intention", "create", "a", "b", "-meta", "novalue"),
          'invalid value "novalue" for flag -meta: Missing "=" value in argument: novalue')
    fails(run(dev_agent, "intention", "get"), "command requires exactly 1 or 2 arguments")
    fails(run(dev_agent, "intention", "delete", "a", "b", "c"), "command requires exactly 1 or 2 arguments")
    fails(run(dev_agent, "intention", "get", "not-a-uuid"),
          "Error reading the intention: Unexpected response 400: failed config entry lookup: UUID must be 36 characters")
    fails(run(dev_agent, "intention", "match"), "Error: command requires exactly one argument: src or dst")
    fails(run(dev_agent, "intention", "match", "-source", "-destination", "x"), "Error: only one of -source or -destination may be specified")
    fails(run(dev_agent, "intention", "delete", "11111111-2222-3333-4444-555555555555"),
          "Error deleting the intention: Unexpected response code: 404 (Cannot delete non-existent intention: '11111111-2222-3333-4444-555555555555')")
    p = run(dev_agent, "intention", "check", "a")
    assert (p.returncode, p.stderr) == (2, b"Error: command requires exactly two arguments: src and dst\n")
    p = run(dev_agent, "intention", "check", "a/b/c/d", "b")
    assert p.returncode == 2
    assert p.stderr == b"Error checking the connection: Unexpected response code: 400 (source \"a/b/c/d\" is invalid: input can contain at most two '/')\n"
