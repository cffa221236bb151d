"""ACL enforcement on sessions, events, prepared queries, txn, operator, snapshot, CA config, intentions and
config entries, against a real ACL-enabled dev agent (default policy deny), in Consul's codes and texts.

Each refusal is asserted for the anonymous token and for a token scoped to something else, then the right
rule, and management, are allowed; after a refused write, what it would have changed is read back unchanged.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any, Iterator

import pytest

from conftest import AgentProc, eventually, free_ports

MGMT = "5b0e1c9a-7d3f-4c2e-9a41-0f6d2b8e3c77"
NODE = "acle"
ACL_ON = {"acl": {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT, "agent": MGMT}}}
FILTERED = "X-Consul-Results-Filtered-By-ACLs"
SPIFFE = "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/{}"
_names = itertools.count()


def anon_denied(resource: str, level: str, name: str = "") -> str:
    """Consul's 403 text for the anonymous token."""
    on = f' on "{name}"' if name else ""
    return (f"Permission denied: anonymous token lacks permission '{resource}:{level}'{on}. "
            "The anonymous token is used implicitly when a request does not specify a token.")


def denied(accessor: str, resource: str, level: str, name: str = "") -> str:
    """Consul's 403 text for a token."""
    on = f' on "{name}"' if name else ""
    return f"Permission denied: token with AccessorID '{accessor}' lacks permission '{resource}:{level}'{on}"


class Token(str):
    """A token's SecretID that also knows its AccessorID."""

    accessor: str


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    http, server = free_ports(2)
    cfg = {"node_name": NODE, "ports": {"http": http, "server": server, "dns": -1}, **ACL_ON}
    a = AgentProc(NODE, tmp_path_factory.mktemp("acle"), cfg).start(["-dev"])

    def ready() -> bool:
        # As AgentProc.wait_ready, with the management token: /v1/agent/self needs agent:read.
        if not a.running():
            raise AssertionError(f"{NODE} exited:\n{a.log()[-3000:]}")
        status, me, _ = call(a, "GET", "/v1/agent/self", MGMT)
        return status == 200 and bool(a.leader()) and int(me["Stats"]["raft"]["applied_index"]) >= 2

    eventually(ready, 20.0, what=f"{NODE} ready with its initial management token")
    # The agent token is management, so the agent registers its own node (sessions need it).
    eventually(lambda: (call(a, "GET", f"/v1/catalog/node/{NODE}", MGMT)[1] or {}).get("Node"), what="node registered")
    yield a
    a.stop()


def call(agent: AgentProc, method: str, path: str, token: str | None = None, body: Any = None,
         content: bytes | None = None, **params: Any) -> tuple[int, Any, Any]:
    """(status, JSON or text body, headers)."""
    headers = {"X-Consul-Token": token} if token is not None else {}
    kwargs: dict[str, Any] = {"headers": headers, "params": params}
    if content is not None:
        kwargs["content"] = content
    elif body is not None:
        kwargs["json"] = body
    r = agent.http.request(method, path, **kwargs)
    is_json = r.headers.get("content-type", "").startswith("application/json")
    return r.status_code, (r.json() if is_json and r.content else r.text), r.headers


def make_token(agent: AgentProc, rules: str) -> Token:
    """A token with one policy of ``rules``, made with the management token."""
    status, pol, _ = call(agent, "PUT", "/v1/acl/policy", MGMT, {"Name": f"p{next(_names)}", "Rules": rules})
    assert status == 200, pol
    status, tok, _ = call(agent, "PUT", "/v1/acl/token", MGMT, {"Policies": [{"ID": pol["ID"]}]})
    assert status == 200, tok
    t = Token(tok["SecretID"])
    t.accessor = tok["AccessorID"]
    return t


# ---------------------------------------------------------------- sessions


def test_sessions(agent: AgentProc) -> None:
    other = make_token(agent, 'session "elsewhere" { policy = "write" }')
    writer = make_token(agent, f'session "{NODE}" {{ policy = "write" }}')
    reader = make_token(agent, f'session "{NODE}" {{ policy = "read" }}')
    body = {"Node": NODE, "Name": "s", "TTL": "60s"}

    assert call(agent, "PUT", "/v1/session/create", None, body)[:2] == (403, anon_denied("session", "write", NODE))
    assert call(agent, "PUT", "/v1/session/create", other, body)[:2] == (403, denied(other.accessor, "session", "write", NODE))
    assert call(agent, "PUT", "/v1/session/create", reader, body)[:2] == (403, denied(reader.accessor, "session", "write", NODE))
    assert call(agent, "GET", "/v1/session/list", MGMT)[1] == []  # nothing was created
    status, made, _ = call(agent, "PUT", "/v1/session/create", writer, body)
    assert status == 200, made
    sid = made["ID"]
    status, made2, _ = call(agent, "PUT", "/v1/session/create", MGMT, body)
    assert status == 200

    # Reads are filtered by session:read on the session's node.
    for path in ("/v1/session/list", f"/v1/session/node/{NODE}", f"/v1/session/info/{sid}"):
        status, got, headers = call(agent, "GET", path)
        assert (status, got, headers.get(FILTERED)) == (200, [], None)  # anonymous: never told (maskResultsFilteredByACLs), path
        status, got, headers = call(agent, "GET", path, other)
        assert (status, got, headers.get(FILTERED)) == (200, [], "true"), path
        status, got, headers = call(agent, "GET", path, reader)
        assert status == 200 and sid in [s["ID"] for s in got] and FILTERED not in headers, path
    assert {s["ID"] for s in call(agent, "GET", "/v1/session/list", MGMT)[1]} == {sid, made2["ID"]}
    # An unknown session is just empty (nothing filtered).
    status, got, headers = call(agent, "GET", "/v1/session/info/00000000-0000-0000-0000-00000000abcd")
    assert (status, got, headers.get(FILTERED)) == (200, [], None)

    # Renew and destroy need session:write on the session's node.
    assert call(agent, "PUT", f"/v1/session/renew/{sid}", reader)[:2] == (403, denied(reader.accessor, "session", "write", NODE))
    assert call(agent, "PUT", f"/v1/session/renew/{sid}")[:2] == (403, anon_denied("session", "write", NODE))
    status, renewed, _ = call(agent, "PUT", f"/v1/session/renew/{sid}", writer)
    assert status == 200 and renewed[0]["ID"] == sid
    assert call(agent, "PUT", f"/v1/session/destroy/{sid}", other)[:2] == (403, denied(other.accessor, "session", "write", NODE))
    assert call(agent, "PUT", f"/v1/session/destroy/{sid}")[:2] == (403, anon_denied("session", "write", NODE))
    assert call(agent, "GET", f"/v1/session/info/{sid}", MGMT)[1][0]["ID"] == sid  # still there
    assert call(agent, "PUT", f"/v1/session/destroy/{sid}", writer)[:2] == (200, True)
    assert call(agent, "PUT", f"/v1/session/destroy/{made2['ID']}", MGMT)[:2] == (200, True)
    assert call(agent, "GET", "/v1/session/list", MGMT)[1] == []


# ---------------------------------------------------------------- events


def test_events(agent: AgentProc) -> None:
    deployer = make_token(agent, 'event "deploy" { policy = "write" }')
    watcher = make_token(agent, 'event "deploy" { policy = "read" }')

    assert call(agent, "PUT", "/v1/event/fire/deploy", content=b"x")[:2] == (403, "Permission denied")
    assert call(agent, "PUT", "/v1/event/fire/deploy", watcher, content=b"x")[:2] == (403, "Permission denied")
    assert call(agent, "PUT", "/v1/event/fire/restart", deployer, content=b"x")[:2] == (403, "Permission denied")
    assert call(agent, "GET", "/v1/event/list", MGMT)[1] == []  # nothing fired
    status, fired, _ = call(agent, "PUT", "/v1/event/fire/deploy", deployer, content=b"v1")
    assert status == 200 and fired["Name"] == "deploy"
    status, other, _ = call(agent, "PUT", "/v1/event/fire/restart", MGMT)
    assert status == 200

    status, listed, headers = call(agent, "GET", "/v1/event/list", watcher)
    assert status == 200 and [e["ID"] for e in listed] == [fired["ID"]] and headers.get(FILTERED) == "true"
    assert base64.b64decode(listed[0]["Payload"]) == b"v1"
    status, listed, headers = call(agent, "GET", "/v1/event/list")
    assert (status, listed, headers.get(FILTERED)) == (200, [], None)
    status, listed, headers = call(agent, "GET", "/v1/event/list", watcher, name="deploy")
    assert [e["ID"] for e in listed] == [fired["ID"]] and FILTERED not in headers  # the name filter hid "restart"
    status, listed, headers = call(agent, "GET", "/v1/event/list", MGMT)
    assert [e["ID"] for e in listed] == [fired["ID"], other["ID"]] and FILTERED not in headers


# ---------------------------------------------------------------- prepared queries


def _register(agent: AgentProc, service: str) -> None:
    """An instance on a node of its own (the agent's anti-entropy owns the agent's node)."""
    body = {"Node": "pq-node", "Address": "127.0.0.2", "Service": {"Service": service, "Port": 80}}
    status, got, _ = call(agent, "PUT", "/v1/catalog/register", MGMT, body)
    assert status == 200, got


def test_prepared_queries(agent: AgentProc) -> None:
    _register(agent, "pq-web")
    writer = make_token(agent, 'query "pq-web" { policy = "write" }')
    reader = make_token(agent, 'query_prefix "pq-" { policy = "read" }')
    discover = make_token(agent, 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }')
    body = {"Name": "pq-web", "Service": {"Service": "pq-web"}, "Token": discover}

    assert call(agent, "POST", "/v1/query", None, body)[:2] == (403, anon_denied("query", "write", "pq-web"))
    assert call(agent, "POST", "/v1/query", reader, body)[:2] == (403, denied(reader.accessor, "query", "write", "pq-web"))
    assert call(agent, "GET", "/v1/query", MGMT)[1] == []
    status, made, _ = call(agent, "POST", "/v1/query", writer, body)
    assert status == 200, made
    qid = made["ID"]

    # Reads: query:read on the name, and the stored Token only for acl = "write" (management).
    assert call(agent, "GET", f"/v1/query/{qid}")[:2] == (403, "Permission denied")
    status, got, _ = call(agent, "GET", f"/v1/query/{qid}", reader)
    assert status == 200 and got[0]["Name"] == "pq-web" and got[0]["Token"] == "<hidden>"
    assert call(agent, "GET", f"/v1/query/{qid}", MGMT)[1][0]["Token"] == discover
    status, listed, headers = call(agent, "GET", "/v1/query")
    assert (status, listed, headers.get(FILTERED)) == (200, [], None)
    status, listed, headers = call(agent, "GET", "/v1/query", reader)
    assert [q["ID"] for q in listed] == [qid] and listed[0]["Token"] == "<hidden>" and FILTERED not in headers
    assert call(agent, "GET", f"/v1/query/{qid}/explain")[:2] == (403, "Permission denied")
    status, explained, _ = call(agent, "GET", f"/v1/query/pq-web/explain", reader)
    assert status == 200 and explained["Query"]["ID"] == qid and explained["Query"]["Token"] == "<hidden>"

    # Execute filters with the query's own Token: the anonymous caller sees the instance through it.
    status, ran, _ = call(agent, "GET", "/v1/query/pq-web/execute")
    assert status == 200 and [n["Service"]["Service"] for n in ran["Nodes"]] == ["pq-web"]
    # Without a query Token the caller's decides: anonymous sees nothing, a discovery token sees it.
    status, _, _ = call(agent, "PUT", f"/v1/query/{qid}", writer, {**body, "Token": ""})
    assert status == 200
    status, ran, headers = call(agent, "GET", "/v1/query/pq-web/execute")
    assert (status, ran["Nodes"], ran["ResultsFilteredByACLs"], headers.get(FILTERED)) == (200, [], False, None)  # anonymous: not told
    status, ran, _ = call(agent, "GET", "/v1/query/pq-web/execute", discover)
    assert [n["Service"]["Service"] for n in ran["Nodes"]] == ["pq-web"] and ran["ResultsFilteredByACLs"] is False

    # Update and delete need write on the stored name and on the new one.
    renamed = {**body, "Name": "pq-other", "Token": ""}
    assert call(agent, "PUT", f"/v1/query/{qid}", writer, renamed)[:2] == (403, denied(writer.accessor, "query", "write", "pq-other"))
    assert call(agent, "PUT", f"/v1/query/{qid}", reader, body)[:2] == (403, denied(reader.accessor, "query", "write", "pq-web"))
    assert call(agent, "DELETE", f"/v1/query/{qid}")[:2] == (403, anon_denied("query", "write", "pq-web"))
    assert call(agent, "DELETE", f"/v1/query/{qid}", reader)[:2] == (403, denied(reader.accessor, "query", "write", "pq-web"))
    assert call(agent, "GET", f"/v1/query/{qid}", MGMT)[1][0]["Name"] == "pq-web"
    assert call(agent, "DELETE", f"/v1/query/{qid}", writer)[0] == 200
    assert call(agent, "GET", "/v1/query", MGMT)[1] == []


def test_unnamed_prepared_query(agent: AgentProc) -> None:
    """No name and no template: no query rule applies; anyone with the ID reads it, lists need acl = "write"."""
    reader = make_token(agent, 'query_prefix "" { policy = "read" }')
    status, made, _ = call(agent, "PUT", "/v1/session/create", MGMT, {"Node": NODE})
    assert status == 200
    body = {"Session": made["ID"], "Service": {"Service": "anything"}, "Token": reader}
    status, created, _ = call(agent, "POST", "/v1/query", None, body)
    assert status == 200, created
    qid = created["ID"]
    status, got, _ = call(agent, "GET", f"/v1/query/{qid}")
    assert status == 200 and got[0]["ID"] == qid and got[0]["Token"] == "<hidden>"
    status, listed, headers = call(agent, "GET", "/v1/query", reader)
    assert (listed, headers.get(FILTERED)) == ([], "true")
    assert call(agent, "GET", f"/v1/query/{qid}/explain", reader)[:2] == (403, "Permission denied")
    assert [q["ID"] for q in call(agent, "GET", "/v1/query", MGMT)[1]] == [qid]
    assert call(agent, "DELETE", f"/v1/query/{qid}")[0] == 200
    assert call(agent, "PUT", f"/v1/session/destroy/{made['ID']}", MGMT)[0] == 200


# ---------------------------------------------------------------- txn


def _kv(op: str, key: str, value: bytes | None = None, **extra: Any) -> dict[str, Any]:
    kv: dict[str, Any] = {"Verb": op, "Key": key, **extra}
    if value is not None:
        kv["Value"] = base64.b64encode(value).decode()
    return {"KV": kv}


def test_txn(agent: AgentProc) -> None:
    tx = make_token(agent, 'key_prefix "tx/" { policy = "write" }\nkey "tx/secret" { policy = "deny" }')
    assert call(agent, "PUT", "/v1/kv/tx/secret", MGMT, content=b"s")[1] is True
    assert call(agent, "PUT", "/v1/kv/tx/a", MGMT, content=b"a0")[1] is True

    status, got, _ = call(agent, "PUT", "/v1/txn", None, [_kv("set", "tx/a", b"a1")])
    assert (status, got) == (409, {"Results": None, "Errors": [{"OpIndex": 0, "What": anon_denied("key", "write", "tx/a")}]})
    # One refused op refuses the transaction; every refused op is named; nothing is applied.
    ops = [_kv("set", "tx/a", b"a1"), _kv("set", "tx/secret", b"s1"), _kv("set", "other", b"o"), _kv("delete-tree", "tx/")]
    status, got, _ = call(agent, "PUT", "/v1/txn", tx, ops)
    assert status == 409 and got["Results"] is None
    assert got["Errors"] == [
        {"OpIndex": 1, "What": denied(tx.accessor, "key", "write", "tx/secret")},
        {"OpIndex": 2, "What": denied(tx.accessor, "key", "write", "other")},
        {"OpIndex": 3, "What": denied(tx.accessor, "key", "write", "tx/")},
    ]
    assert base64.b64decode(call(agent, "GET", "/v1/kv/tx/a", MGMT)[1][0]["Value"]) == b"a0"
    assert call(agent, "GET", "/v1/kv/other", MGMT)[0] == 404
    # Allowed writes apply.
    status, got, _ = call(agent, "PUT", "/v1/txn", tx, [_kv("set", "tx/a", b"a1"), _kv("get", "tx/a")])
    assert status == 200 and [r["KV"]["Key"] for r in got["Results"]] == ["tx/a", "tx/a"]

    # Read-only: gets the token may not read are left out; checks on them fail the transaction.
    status, got, headers = call(agent, "PUT", "/v1/txn", tx, [_kv("get", "tx/a"), _kv("get", "tx/secret"), _kv("get-tree", "tx/")])
    assert status == 200 and [r["KV"]["Key"] for r in got["Results"]] == ["tx/a", "tx/a"]
    assert got["ResultsFilteredByACLs"] is True
    status, got, _ = call(agent, "PUT", "/v1/txn", None, [_kv("get", "tx/a")])
    assert (status, got["Results"], got["ResultsFilteredByACLs"]) == (200, [], False)
    status, got, _ = call(agent, "PUT", "/v1/txn", tx, [_kv("check-index", "tx/secret", Index=1)])
    assert (status, got["Errors"]) == (409, [{"OpIndex": 0, "What": denied(tx.accessor, "key", "read", "tx/secret")}])
    status, got, _ = call(agent, "PUT", "/v1/txn", MGMT, [_kv("get", "tx/secret")])
    assert status == 200 and got["ResultsFilteredByACLs"] is False and got["Results"][0]["KV"]["Key"] == "tx/secret"


# ---------------------------------------------------------------- operator, snapshot, CA configuration


def test_operator_raft(agent: AgentProc) -> None:
    op_read = make_token(agent, 'operator = "read"')
    assert call(agent, "GET", "/v1/operator/raft/configuration")[:2] == (403, anon_denied("operator", "read"))
    status, conf, _ = call(agent, "GET", "/v1/operator/raft/configuration", op_read)
    assert status == 200 and len(conf["Servers"]) == 1
    addr = conf["Servers"][0]["Address"]
    assert call(agent, "DELETE", "/v1/operator/raft/peer", op_read, address=addr)[:2] == (403, denied(op_read.accessor, "operator", "write"))
    assert call(agent, "DELETE", "/v1/operator/raft/peer", None, address=addr)[:2] == (403, anon_denied("operator", "write"))
    assert call(agent, "GET", "/v1/operator/raft/configuration", MGMT)[1]["Servers"] == conf["Servers"]
    # Status endpoints need no token, as in Consul.
    assert call(agent, "GET", "/v1/status/leader")[0] == 200
    assert call(agent, "GET", "/v1/status/peers")[0] == 200


def test_snapshot(agent: AgentProc) -> None:
    operator = make_token(agent, 'operator = "write"')
    acl_writer = make_token(agent, 'acl = "write"')
    assert call(agent, "GET", "/v1/snapshot")[:2] == (403, anon_denied("acl", "write"))
    assert call(agent, "GET", "/v1/snapshot", operator)[:2] == (403, denied(operator.accessor, "acl", "write"))
    r = agent.http.get("/v1/snapshot", headers={"X-Consul-Token": acl_writer})
    assert r.status_code == 200 and r.content.startswith(b"SQLite format 3")
    assert call(agent, "PUT", "/v1/kv/snap/marker", MGMT, content=b"after")[1] is True
    # A refused restore changes nothing.
    assert call(agent, "PUT", "/v1/snapshot", operator, content=r.content)[:2] == (403, denied(operator.accessor, "acl", "write"))
    assert call(agent, "PUT", "/v1/snapshot", None, content=r.content)[:2] == (403, anon_denied("acl", "write"))
    assert call(agent, "GET", "/v1/kv/snap/marker", MGMT)[0] == 200


def test_connect_ca_configuration(agent: AgentProc) -> None:
    op_read = make_token(agent, 'operator = "read"')
    op_write = make_token(agent, 'operator = "write"')
    status, roots, _ = eventually(lambda: (lambda r: r if r[0] == 200 else None)(call(agent, "GET", "/v1/connect/ca/roots")))
    assert roots["Roots"]  # roots need no token
    # Reading needs operator:write too: the configuration may hold the CA's private key (CVE-2020-28053).
    assert call(agent, "GET", "/v1/connect/ca/configuration")[:2] == (403, anon_denied("operator", "write"))
    assert call(agent, "GET", "/v1/connect/ca/configuration", op_read)[:2] == (403, denied(op_read.accessor, "operator", "write"))
    status, conf, _ = eventually(lambda: (lambda r: r if r[0] == 200 else None)(call(agent, "GET", "/v1/connect/ca/configuration", op_write)))
    body = {"Provider": conf["Provider"], "Config": conf["Config"]}
    assert call(agent, "PUT", "/v1/connect/ca/configuration", op_read, body)[:2] == (403, denied(op_read.accessor, "operator", "write"))
    assert call(agent, "PUT", "/v1/connect/ca/configuration", None, body)[:2] == (403, anon_denied("operator", "write"))
    assert call(agent, "GET", "/v1/connect/ca/configuration", MGMT)[1]["ModifyIndex"] == conf["ModifyIndex"]
    status, got, _ = call(agent, "PUT", "/v1/connect/ca/configuration", op_write, body)
    assert status == 200, got


# ---------------------------------------------------------------- intentions


def test_intentions(agent: AgentProc) -> None:
    db_writer = make_token(agent, 'service "ix-db" { policy = "read" intentions = "write" }')
    web_writer = make_token(agent, 'service "ix-web" { policy = "read" intentions = "write" }')  # the source only
    web_reader = make_token(agent, 'service "ix-web" { policy = "read" }')  # intentions read derived from service read
    legacy = {"SourceName": "ix-web", "DestinationName": "ix-db", "Action": "allow"}

    assert call(agent, "POST", "/v1/connect/intentions", None, legacy)[:2] == (403, "Permission denied")
    assert call(agent, "POST", "/v1/connect/intentions", web_writer, legacy)[:2] == (403, "Permission denied")
    assert call(agent, "GET", "/v1/connect/intentions", MGMT)[1] == []
    status, made, _ = call(agent, "POST", "/v1/connect/intentions", db_writer, legacy)
    assert status == 200, made
    ixn_id = made["ID"]
    # A wildcard destination needs intention:write on every service.
    wild = {"SourceName": "ix-web", "DestinationName": "*", "Action": "deny"}
    assert call(agent, "POST", "/v1/connect/intentions", db_writer, wild)[:2] == (403, "Permission denied")
    status, wild_made, _ = call(agent, "POST", "/v1/connect/intentions", MGMT, wild)
    assert status == 200
    status, _, _ = call(agent, "PUT", "/v1/connect/intentions/exact", MGMT, {"Action": "allow"}, source="ix-x", destination="ix-y")
    assert status == 200

    # Reads: intention:read on either end.
    status, listed, headers = call(agent, "GET", "/v1/connect/intentions", web_reader)
    pairs = {(i["SourceName"], i["DestinationName"]) for i in listed}
    assert status == 200 and pairs == {("ix-web", "ix-db"), ("ix-web", "*")} and headers.get(FILTERED) == "true"
    status, listed, headers = call(agent, "GET", "/v1/connect/intentions")
    assert (status, listed, headers.get(FILTERED)) == (200, [], None)
    assert len(call(agent, "GET", "/v1/connect/intentions", MGMT)[1]) == 3
    # The user's filter runs on what the token may read only.
    status, listed, _ = call(agent, "GET", "/v1/connect/intentions", web_reader, filter='SourceName == "ix-x"')
    assert (status, listed) == (200, [])
    assert call(agent, "GET", f"/v1/connect/intentions/{ixn_id}")[:2] == (403, "Permission denied")
    assert call(agent, "GET", f"/v1/connect/intentions/{ixn_id}", web_reader)[1]["ID"] == ixn_id
    assert call(agent, "GET", "/v1/connect/intentions/exact", None, source="ix-web", destination="ix-db")[:2] == (403, "Permission denied")
    status, got, _ = call(agent, "GET", "/v1/connect/intentions/exact", web_reader, source="ix-web", destination="ix-db")
    assert status == 200 and got["ID"] == ixn_id

    # Match: intention:read on every name asked.
    assert call(agent, "GET", "/v1/connect/intentions/match", None, by="destination", name="ix-db")[:2] == (
        403, anon_denied("intention", "read", "ix-db"))
    status, match, _ = call(agent, "GET", "/v1/connect/intentions/match", web_reader, by="source", name="ix-web")
    assert status == 200 and {i["DestinationName"] for i in match["ix-web"]} == {"ix-db", "*"}
    assert call(agent, "GET", "/v1/connect/intentions/match", web_reader, by="destination", name="ix-db")[:2] == (
        403, denied(web_reader.accessor, "intention", "read", "ix-db"))
    # Check: service:read on the destination.
    assert call(agent, "GET", "/v1/connect/intentions/check", None, source="ix-web", destination="ix-db")[:2] == (
        403, anon_denied("service", "read", "ix-db"))
    assert call(agent, "GET", "/v1/connect/intentions/check", web_reader, source="ix-web", destination="ix-db")[:2] == (
        403, denied(web_reader.accessor, "service", "read", "ix-db"))
    assert call(agent, "GET", "/v1/connect/intentions/check", db_writer, source="ix-web", destination="ix-db")[:2] == (
        200, {"Allowed": True})

    # Update and delete check the stored intention's destination; nothing changes when refused.
    before = call(agent, "GET", f"/v1/connect/intentions/{ixn_id}", MGMT)[1]
    changed = {**legacy, "Action": "deny"}
    assert call(agent, "PUT", f"/v1/connect/intentions/{ixn_id}", web_writer, changed)[:2] == (403, "Permission denied")
    assert call(agent, "DELETE", f"/v1/connect/intentions/{ixn_id}", web_writer)[:2] == (403, "Permission denied")
    assert call(agent, "PUT", "/v1/connect/intentions/exact", web_writer, {"Action": "deny"}, source="ix-web", destination="ix-db")[:2] == (
        403, "Permission denied")
    assert call(agent, "DELETE", "/v1/connect/intentions/exact", None, source="ix-web", destination="ix-db")[:2] == (403, "Permission denied")
    assert call(agent, "GET", f"/v1/connect/intentions/{ixn_id}", MGMT)[1] == before
    assert call(agent, "PUT", f"/v1/connect/intentions/{ixn_id}", db_writer, changed)[0] == 200
    assert call(agent, "DELETE", f"/v1/connect/intentions/{ixn_id}", db_writer)[0] == 200
    assert call(agent, "DELETE", f"/v1/connect/intentions/{wild_made['ID']}", MGMT)[0] == 200
    assert call(agent, "DELETE", "/v1/connect/intentions/exact", MGMT, source="ix-x", destination="ix-y")[0] == 200

    # With no intention left, the ACL default policy (deny) decides, for check and for authorize alike.
    status, got, _ = call(agent, "GET", "/v1/connect/intentions/check", db_writer, source="ix-web", destination="ix-db")
    assert (status, got) == (200, {"Allowed": False})
    db_service = make_token(agent, 'service "ix-db" { policy = "write" }')
    authz = {"Target": "ix-db", "ClientCertURI": SPIFFE.format("ix-web"), "ClientCertSerial": "01"}
    assert call(agent, "POST", "/v1/agent/connect/authorize", None, authz)[:2] == (403, anon_denied("service", "write", "ix-db"))
    assert call(agent, "POST", "/v1/agent/connect/authorize", web_reader, authz)[0] == 403
    status, got, _ = call(agent, "POST", "/v1/agent/connect/authorize", db_service, authz)
    assert (status, got) == (200, {"Authorized": False, "Reason": "Default behavior configured by ACLs"})


# ---------------------------------------------------------------- config entries


def test_config_entries(agent: AgentProc) -> None:
    web = make_token(agent, 'service "ce-web" { policy = "write" }')
    web_read = make_token(agent, 'service "ce-web" { policy = "read" }')
    mesh = make_token(agent, 'mesh = "write"')
    operator = make_token(agent, 'operator = "write"')
    sd = {"Kind": "service-defaults", "Name": "ce-web", "Protocol": "http"}
    sd_other = {"Kind": "service-defaults", "Name": "ce-api", "Protocol": "grpc"}

    assert call(agent, "PUT", "/v1/config", None, sd)[:2] == (403, anon_denied("service", "write", "ce-web"))
    assert call(agent, "PUT", "/v1/config", web_read, sd)[:2] == (403, denied(web_read.accessor, "service", "write", "ce-web"))
    assert call(agent, "GET", "/v1/config/service-defaults/ce-web", MGMT)[0] == 404
    assert call(agent, "PUT", "/v1/config", web, sd)[:2] == (200, True)
    assert call(agent, "PUT", "/v1/config", web, sd_other)[:2] == (403, denied(web.accessor, "service", "write", "ce-api"))
    assert call(agent, "PUT", "/v1/config", MGMT, sd_other)[:2] == (200, True)

    assert call(agent, "GET", "/v1/config/service-defaults/ce-web")[:2] == (403, anon_denied("service", "read", "ce-web"))
    assert call(agent, "GET", "/v1/config/service-defaults/ce-web", web_read)[1]["Protocol"] == "http"
    status, listed, headers = call(agent, "GET", "/v1/config/service-defaults", web_read)
    assert status == 200 and [e["Name"] for e in listed] == ["ce-web"] and headers.get(FILTERED) == "true"
    status, listed, headers = call(agent, "GET", "/v1/config/service-defaults", web_read, filter='Protocol == "grpc"')
    assert (status, listed) == (200, [])  # ce-api is hidden before the filter runs
    assert [e["Name"] for e in call(agent, "GET", "/v1/config/service-defaults", MGMT)[1]] == ["ce-api", "ce-web"]

    assert call(agent, "DELETE", "/v1/config/service-defaults/ce-api", web)[:2] == (403, denied(web.accessor, "service", "write", "ce-api"))
    assert call(agent, "GET", "/v1/config/service-defaults/ce-api", MGMT)[0] == 200
    assert call(agent, "DELETE", "/v1/config/service-defaults/ce-web", web)[0] == 200

    # proxy-defaults: anyone reads; writing needs mesh:write (operator:write grants it when no mesh rule is set).
    pd = {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}
    assert call(agent, "PUT", "/v1/config", web, pd)[:2] == (403, denied(web.accessor, "mesh", "write"))
    assert call(agent, "PUT", "/v1/config", None, pd)[:2] == (403, anon_denied("mesh", "write"))
    assert call(agent, "GET", "/v1/config/proxy-defaults/global", MGMT)[0] == 404
    assert call(agent, "PUT", "/v1/config", mesh, pd)[:2] == (200, True)
    assert call(agent, "PUT", "/v1/config", operator, pd)[:2] == (200, True)
    assert call(agent, "GET", "/v1/config/proxy-defaults/global")[1]["Config"] == {"protocol": "http"}
    status, listed, headers = call(agent, "GET", "/v1/config/proxy-defaults")
    assert status == 200 and len(listed) == 1 and FILTERED not in headers
    assert call(agent, "DELETE", "/v1/config/proxy-defaults/global", web)[:2] == (403, denied(web.accessor, "mesh", "write"))
    assert call(agent, "DELETE", "/v1/config/proxy-defaults/global", mesh)[0] == 200

    # service-intentions: intention read/write on the entry's name (its destination).
    si = {"Kind": "service-intentions", "Name": "ce-web", "Sources": [{"Name": "ce-api", "Action": "allow"}]}
    api_ixn = make_token(agent, 'service "ce-api" { policy = "write" intentions = "write" }')
    web_ixn = make_token(agent, 'service "ce-web" { policy = "read" intentions = "write" }')
    assert call(agent, "PUT", "/v1/config", api_ixn, si)[:2] == (403, denied(api_ixn.accessor, "intention", "write", "ce-web"))
    assert call(agent, "PUT", "/v1/config", web_ixn, si)[:2] == (200, True)
    assert call(agent, "GET", "/v1/config/service-intentions/ce-web")[:2] == (403, anon_denied("intention", "read", "ce-web"))
    assert call(agent, "GET", "/v1/config/service-intentions/ce-web", web_read)[1]["Name"] == "ce-web"
    status, listed, headers = call(agent, "GET", "/v1/config/service-intentions", api_ixn)
    assert (status, listed, headers.get(FILTERED)) == (200, [], "true")
    assert call(agent, "DELETE", "/v1/config/service-intentions/ce-web", api_ixn)[0] == 403
    assert call(agent, "DELETE", "/v1/config/service-intentions/ce-web", web_ixn)[0] == 200
    assert call(agent, "DELETE", "/v1/config/service-defaults/ce-api", MGMT)[0] == 200
