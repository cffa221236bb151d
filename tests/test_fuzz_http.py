"""Bad input over HTTP: schemathesis walks every operation in /openapi.json against a real dev agent.

No request may get a 5xx or kill the agent, and the agent logs no traceback.
Consul's own 5xx for "the cluster, not the request, is at fault" are allowed:
500 ``No path to datacenter`` for a ``?dc=`` other than the agent's.

What reaches the code behind the decoders:

* Bodies: the schema declares bare JSON objects, so each JSON operation also
  gets valid bodies from Consul's API docs (``SEEDS``) with a few fields
  replaced, dropped or added, and free-form bodies whose keys are the field
  names and words the API's code knows (harvested from its source); values of
  every JSON type, NaN and Infinity included.
* Path parameters: about half the cases name an object that exists (a service,
  check, session, prepared query, intention, config entry, ACL token, policy,
  role), made again before each operation, which may have deleted it.
* ``?dc=``: two cases in three name the agent's own datacenter.

The run is derandomized (the same cases every time), positive and negative
cases for every operation, ``EXAMPLES`` of each (``PROCONSUL_FUZZ_EXAMPLES``);
again with ACLs on and a management token; the ``slow`` variant runs ten times
as many. Most operations must have answered 2xx at least once, so a fuzzer
stopped at validation fails instead of passing quietly.

What the fuzzer may not do: ``/v1/agent/leave`` (stops the agent) and
``/v1/agent/join`` (dials whatever address it is given) are left out, every
health-check target in a body is pointed at a closed loopback port, and a
blocking query's ``wait`` is capped so a case never parks for minutes.
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from conftest import AgentProc, free_ports

from proconsul.server.durations import parse_duration

EXAMPLES = int(os.environ.get("PROCONSUL_FUZZ_EXAMPLES", "8"))
MANAGEMENT = str(uuid.UUID(int=0x5EC2E7))
EXCLUDED = ["/v1/agent/leave", "/v1/agent/join/{address}"]
# Health-check kinds that dial their target: the fuzzer's targets all go to a closed port on loopback.
DIALING = {"http", "tcp", "udp", "grpc", "h2ping"}
LOOPBACK_TARGETS = ["http://127.0.0.1:9/", "127.0.0.1:9", "[::1]:9", "https://localhost:9/x?y=z", ""]

SOURCE = Path(__file__).resolve().parent.parent


def _words() -> tuple[list[str], list[str]]:
    """Field names (CamelCase) and words (lowercase) that appear as string constants in the API's code."""
    fields: set[str] = set()
    words: set[str] = set()
    for folder in ("api", "agent", "server", "server/endpoints", "server/state"):
        for path in sorted((SOURCE / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if re.fullmatch(r"[A-Z][A-Za-z0-9]{1,40}", node.value):
                        fields.add(node.value)
                    elif re.fullmatch(r"[a-z][a-z0-9-]{1,24}", node.value):
                        words.add(node.value)
    return sorted(fields), sorted(words)


FIELDS, WORDS = _words()
_SPECIAL = ["10s", "-1s", "0s", "1ns", "87600h", "9999999999h", "1.5m", "", " ", "\x00", "*", "/", "..", "a/../b",
            "127.0.0.1", "::1", "0.0.0.0", "dc1", "dc2", MANAGEMENT, "00000000-0000-0000-0000-000000000002",
            "not-a-uuid", "-1", "1e400", "${match(1)}", "(", "Service.Name == ", "\ud800", "a\udfffb", "\ud83d\ude00"]
_NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-2, max_value=70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, -(2**63) - 1, 0.5, 1e300]),
)
_LEAVES = st.one_of(
    st.none(), st.booleans(), _NUMBERS, st.text(max_size=20), st.sampled_from(WORDS), st.sampled_from(_SPECIAL),
)
_KEYS = st.one_of(st.sampled_from(FIELDS), st.sampled_from(FIELDS).map(str.lower), st.sampled_from(WORDS), st.text(max_size=8))
JSON_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=6)),
    max_leaves=24,
)
JSON_BODIES = JSON_VALUES.filter(lambda body: isinstance(body, (dict, list)))

# Valid bodies from Consul's API docs, one or more per route: the fuzzer changes, drops or adds a few
# fields in them, so the rest still decodes and a bad value reaches the code that uses it.
_SERVICE = {
    "ID": "web1", "Name": "web", "Tags": ["v1"], "Address": "127.0.0.1", "Port": 8080, "Meta": {"k": "v"},
    "EnableTagOverride": False, "Weights": {"Passing": 10, "Warning": 1},
    "TaggedAddresses": {"lan": {"Address": "127.0.0.1", "Port": 8080}},
    "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "90m"},
    "Checks": [{"Name": "c2", "HTTP": "http://127.0.0.1:9/", "Interval": "10s", "Timeout": "1s", "Header": {"X": ["y"]}}],
}
_SIDECAR = {"Name": "api", "Port": 9000, "Connect": {"SidecarService": {"Proxy": {
    "Upstreams": [{"DestinationName": "db", "LocalBindPort": 0}], "Config": {"protocol": "http"}}}}}
_QUERY = {
    "Session": "", "Token": "",
    "Service": {"Service": "web", "Failover": {"NearestN": 3, "Datacenters": ["dc1"]}, "OnlyPassing": False,
                "Tags": ["v1", "!v2"], "NodeMeta": {"a": "b"}, "ServiceMeta": {"c": "d"}, "IgnoreCheckIDs": ["x"], "Near": "_agent"},
    "DNS": {"TTL": "10s"},
}
_QUERY_TEMPLATE = {"Name": "tmpl-", "Template": {"Type": "name_prefix_match", "Regexp": "^tmpl-(.*)$"},
                   "Service": {"Service": "${match(1)}"}}
_INTENTION = {"SourceName": "web", "DestinationName": "db", "Action": "allow", "Description": "d", "Meta": {"a": "b"}}
_POLICY = {"Name": "p", "Description": "d", "Rules": 'key_prefix "" { policy = "read" }', "Datacenters": ["dc1"]}
_TOKEN = {
    "Description": "d", "Policies": [{"Name": "global-management"}], "Local": False, "ExpirationTTL": "1h",
    "ServiceIdentities": [{"ServiceName": "web", "Datacenters": ["dc1"]}], "NodeIdentities": [{"NodeName": "n", "Datacenter": "dc1"}],
}
_ROLE = {"Name": "r", "Description": "d", "Policies": [{"Name": "global-management"}], "ServiceIdentities": [{"ServiceName": "web"}]}
SEEDS: dict[str, list[Any]] = {
    "PUT /v1/agent/service/register": [_SERVICE, _SIDECAR],
    "PUT /v1/agent/check/register": [
        {"ID": "c1", "Name": "mem", "Notes": "n", "TTL": "15s", "Status": "passing"},
        {"Name": "t", "TCP": "127.0.0.1:9", "Interval": "10s", "Timeout": "1s", "SuccessBeforePassing": 2,
         "FailuresBeforeCritical": 3, "OutputMaxSize": 100},
        {"Name": "a", "AliasService": "web1"},
    ],
    "PUT /v1/agent/check/update/{check_id}": [{"Status": "passing", "Output": "ok"}],
    "PUT /v1/agent/token/{kind}": [{"Token": "x"}],
    "PUT /v1/catalog/register": [{
        "Node": "n1", "Address": "127.0.0.1", "Datacenter": "dc1", "TaggedAddresses": {"lan": "127.0.0.1"},
        "NodeMeta": {"a": "b"}, "SkipNodeUpdate": False,
        "Service": {"ID": "r1", "Service": "redis", "Tags": ["p"], "Address": "127.0.0.1", "Port": 8000, "Meta": {"x": "y"}},
        "Check": {"Node": "n1", "CheckID": "service:r1", "Name": "Redis", "Status": "passing", "ServiceID": "r1",
                  "Definition": {"TCP": "127.0.0.1:9", "Interval": "5s", "Timeout": "1s"}},
        "Checks": [{"CheckID": "c", "Name": "c", "Status": "warning"}],
    }],
    "PUT /v1/catalog/deregister": [{"Node": "n1", "ServiceID": "r1"}, {"Node": "n1", "CheckID": "c"}],
    "PUT /v1/session/create": [{"LockDelay": "15s", "Name": "s", "Checks": ["serfHealth"], "Behavior": "release", "TTL": "30s"}],
    "POST /v1/query": [_QUERY, _QUERY_TEMPLATE],
    "PUT /v1/query/{query_id}": [_QUERY, _QUERY_TEMPLATE],
    "PUT /v1/txn": [[
        {"KV": {"Verb": "set", "Key": "a", "Value": "aGk=", "Flags": 1}},
        {"KV": {"Verb": "cas", "Key": "a", "Index": 0, "Value": ""}},
        {"KV": {"Verb": "get-tree", "Key": ""}},
    ], [
        {"KV": {"Verb": "check-not-exists", "Key": "nope"}},
        {"KV": {"Verb": "delete-tree", "Key": "fuzz/tree/"}},
        {"KV": {"Verb": "lock", "Key": "fuzz/l", "Session": "00000000-0000-0000-0000-000000000000"}},
    ]],
    "POST /v1/connect/intentions": [_INTENTION],
    "PUT /v1/connect/intentions/{intention_id}": [_INTENTION],
    "PUT /v1/connect/intentions/exact": [
        {"Action": "allow", "Description": "d"},
        {"Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "/a", "Methods": ["GET"], "Header": [{"Name": "x", "Exact": "y"}]}}]},
    ],
    "POST /v1/agent/connect/authorize": [{"Target": "db", "ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/web"}],
    "PUT /v1/agent/connect/authorize": [{"Target": "db", "ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/web"}],
    "PUT /v1/config": [
        {"Kind": "service-defaults", "Name": "web", "Protocol": "http"},
        {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}},
        {"Kind": "service-intentions", "Name": "api", "Sources": [
            {"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathExact": "/v1/", "Methods": ["GET"]}}]},
            {"Name": "*", "Action": "deny"}]},
    ],
    "PUT /v1/connect/ca/configuration": [{"Provider": "consul", "Config": {"LeafCertTTL": "72h", "RotationPeriod": "2160h"}}],
    "PUT /v1/acl/token": [_TOKEN],
    "PUT /v1/acl/token/{accessor_id}": [_TOKEN],
    "PUT /v1/acl/token/{accessor_id}/clone": [{"Description": "c"}],
    "PUT /v1/acl/policy": [_POLICY],
    "PUT /v1/acl/policy/{policy_id}": [_POLICY],
    "PUT /v1/acl/role": [_ROLE],
    "PUT /v1/acl/role/{role_id}": [_ROLE],
}


def _paths(value: Any, here: tuple = ()) -> Iterator[tuple]:
    """Every place in a JSON value, as a path of keys and indexes (the root is ())."""
    yield here
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*here, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*here, i))


def _put(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _put(value[path[0]], path[1:], new) if len(path) > 1 else new
    return copy


def _drop(value: Any, path: tuple) -> Any:
    if len(path) == 1:
        copy = dict(value) if isinstance(value, dict) else list(value)
        del copy[path[0]]
        return copy
    return _put(value, path[:1], _drop(value[path[0]], path[1:]))


@st.composite
def mutated(draw: Any, seeds: list[Any]) -> Any:
    """A seed with up to three fields replaced by any JSON value, dropped, or joined by a new field."""
    body = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(list(_paths(body))))
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "drop" and path:
            body = _drop(body, path)
        elif action == "add" and path and isinstance(_get(body, path), dict):
            body = _put(body, (*path, draw(_KEYS)), draw(JSON_VALUES))
        else:
            body = _put(body, path, draw(JSON_VALUES))
    return body


def _get(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


@schemathesis.serializer("application/json")
def _json_with_nan(context: Any, value: Any) -> bytes:
    """JSON as Python's json module writes it, NaN and Infinity included: the server's parser reads those."""
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def _tame(value: Any, key: str = "") -> Any:
    """The body with every check target on loopback (nothing leaves the machine)."""
    if key.lower() in DIALING and isinstance(value, str):
        return LOOPBACK_TARGETS[len(value) % len(LOOPBACK_TARGETS)]
    if isinstance(value, dict):
        return {k: _tame(v, k if isinstance(k, str) else "") for k, v in value.items()}
    if isinstance(value, list):
        return [_tame(v, key) for v in value]
    return value


def _short_wait(query: dict[str, Any] | None) -> dict[str, Any] | None:
    """Cap a blocking query's wait at 20 ms (an empty one means the default 5 minutes), keeping waits that do not parse."""
    if not query or not ({"index", "hash"} & set(query)):
        return query
    wait = query.get("wait")
    try:
        long = wait is None or not str(wait).strip() or parse_duration(str(wait)) > 0.02
    except ValueError:
        long = False
    if long:
        query["wait"] = "20ms"
    return query


def _schema(agent: AgentProc, known: dict[str, list[str]], *, drop_token_param: bool) -> Any:
    """The agent's schema with the hooks above; ``known`` maps path parameters to objects that exist."""
    schema = schemathesis.openapi.from_url(f"{agent.url}/openapi.json").exclude(path=EXCLUDED)
    datacenter = agent.config.get("datacenter", "dc1")

    @schema.hook
    def map_path_parameters(context: Any, params: Any) -> Any:
        for name, value in (params or {}).items():
            choices = known.get(name)
            if choices and len(str(value)) % 2 == 0:  # about half the cases name something that exists
                params[name] = choices[len(str(value)) // 2 % len(choices)]
        return params

    @schema.hook
    def before_generate_body(context: Any, strategy: Any) -> Any:
        operation = context.operation
        if operation is None or not _json_body(operation):
            return strategy
        seeds = SEEDS.get(f"{operation.method.upper()} {operation.path}")
        return st.one_of(mutated(seeds), strategy, JSON_BODIES) if seeds else st.one_of(strategy, JSON_BODIES)

    @schema.hook
    def map_body(context: Any, body: Any) -> Any:
        return _tame(body)

    @schema.hook
    def map_query(context: Any, query: Any) -> Any:
        if drop_token_param and query:
            query.pop("token", None)  # the run's management token is in the header; ?token= would win
        if query and "dc" in query and len(str(query["dc"])) % 3:
            query["dc"] = datacenter  # most cases name this datacenter, so they get past the dc check
        return _short_wait(query)

    return schema


def _known_objects(agent: AgentProc, acl: bool) -> dict[str, list[str]]:
    """One object of each kind the path parameters name, made again before every operation (which may delete it)."""

    def call(method: str, path: str, **kw: Any) -> httpx.Response:
        r = agent.http.request(method, path, headers=agent.admin_headers, **kw)
        assert r.status_code == 200, (method, path, r.status_code, r.text)
        return r

    def find_or_make(path: str, field: str, value: str, create: tuple[str, str, dict[str, Any]]) -> str:
        for item in call("GET", path).json():
            if item.get(field) == value:
                return item["ID"] if "ID" in item else item["AccessorID"]
        made = call(create[0], create[1], json=create[2]).json()
        return made.get("ID") or made["AccessorID"]

    call("PUT", "/v1/agent/service/register", json=_SERVICE)
    call("PUT", "/v1/agent/check/register", json={"ID": "c1", "Name": "mem", "TTL": "15s"})
    call("PUT", "/v1/kv/fuzz/a", content=b"x")
    call("PUT", "/v1/config", json={"Kind": "service-defaults", "Name": "web", "Protocol": "http"})
    known = {
        "service_id": ["web1"], "check_id": ["c1", "service:web1"], "key": ["fuzz/a", "fuzz/"], "node": [agent.name],
        "service": ["web"], "state": ["passing", "any", "critical"], "kind": ["service-defaults", "agent"], "name": ["web", "known"],
        "session_id": [call("PUT", "/v1/session/create", json={"TTL": "1h", "Checks": []}).json()["ID"]],
        "query_id": ["known", find_or_make("/v1/query", "Name", "known", ("POST", "/v1/query", {"Name": "known", "Service": {"Service": "web"}}))],
        "intention_id": [find_or_make("/v1/connect/intentions", "SourceName", "known", (
            "POST", "/v1/connect/intentions", {"SourceName": "known", "DestinationName": "web", "Action": "allow"}))],
    }
    if acl:
        policy = find_or_make("/v1/acl/policies", "Name", "known", ("PUT", "/v1/acl/policy", {"Name": "known", "Rules": 'key "" { policy = "read" }'}))
        known["policy_id"] = [policy]
        known["role_id"] = [find_or_make("/v1/acl/roles", "Name", "known", ("PUT", "/v1/acl/role", {"Name": "known", "Policies": [{"ID": policy}]}))]
        known["accessor_id"] = [find_or_make("/v1/acl/tokens", "Description", "known", ("PUT", "/v1/acl/token", {"Description": "known", "Policies": [{"ID": policy}]}))]
    return known


def _json_body(operation: Any) -> bool:
    body = operation.definition.raw.get("requestBody") or {}
    return "application/json" in (body.get("content") or {})


def _start(workdir: Path, name: str, extra: dict[str, Any]) -> AgentProc:
    http, server = free_ports(2)
    cfg = {"node_name": name, "ports": {"http": http, "server": server, "dns": -1}, "log_level": "info", **extra}
    return AgentProc(name, workdir, cfg).start(["-dev"]).wait_ready()


@pytest.fixture(scope="module")
def fuzz_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    agent = _start(tmp_path_factory.mktemp("fuzz"), "fuzz", {})
    yield agent
    _assert_survived(agent)


@pytest.fixture(scope="module")
def fuzz_acl_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    acl = {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MANAGEMENT}}
    agent = _start(tmp_path_factory.mktemp("fuzzacl"), "fuzzacl", {"acl": acl})
    yield agent
    _assert_survived(agent)


def _assert_survived(agent: AgentProc) -> None:
    try:
        assert agent.running(), f"the agent died:\n{agent.log()[-3000:]}"
        assert agent.http.get("/v1/status/leader").json(), "no leader after the fuzz run"
        assert agent.http.put("/v1/kv/fuzz/after", content=b"ok", headers=agent.admin_headers).json() is True
        # Whatever the fuzzer stored, the state can still be written out (Raft compaction writes the same file).
        assert agent.http.get("/v1/snapshot", headers=agent.admin_headers).status_code == 200
        log = agent.log()
        assert "Traceback" not in log, log[log.index("Traceback") - 2000 : log.index("Traceback") + 3000]
    finally:
        agent.stop()


def _fuzz(agent: AgentProc, examples: int, acl: bool = False) -> None:
    """Every operation in both generation modes; one report of every distinct 5xx at the end."""
    known: dict[str, list[str]] = {}
    schema = _schema(agent, known, drop_token_param=acl)
    failures: dict[tuple[str, int, str], str] = {}
    answered: dict[str, set[int]] = {}
    cases = 0
    took: list[tuple[float, str]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        started = time.monotonic()
        known.update(_known_objects(agent, acl))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=examples, **_SETTINGS)
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal cases
                cases += 1
                try:
                    response = case.call(headers=agent.admin_headers, timeout=30)
                except Exception as err:  # the agent dropped the connection or stopped answering
                    failures.setdefault((operation.label, 0, repr(err)[:200]), case.as_curl_command())
                    return
                status, body = response.status_code, response.content.decode(errors="replace").strip()
                answered.setdefault(operation.label, set()).add(status // 100)
                if status >= 500 and not _no_dc_path(case, status, body, agent):
                    failures.setdefault((operation.label, status, body[:200]), case.as_curl_command())

            try:
                run()
            except Unsatisfiable:  # nothing in this operation can be made invalid
                pass
        assert agent.running(), f"the agent died at {operation.label}:\n{agent.log()[-3000:]}"
        took.append((time.monotonic() - started, operation.label))
    print(f"{cases} cases in {sum(t for t, _ in took):.0f} s; slowest:", ", ".join(f"{label} {t:.1f} s" for t, label in sorted(took)[-5:]))
    report = "\n".join(f"{label}: {status} {body!r}\n  {curl}" for (label, status, body), curl in sorted(failures.items()))
    assert not failures, f"{len(failures)} distinct server errors in {cases} cases:\n{report}"
    assert cases >= 100 * examples, cases  # every operation ran
    # Most operations were also answered 2xx: the cases got past validation to the code behind it.
    never = sorted(label for label, classes in answered.items() if 2 not in classes and (acl or "/v1/acl/" not in label))
    assert len(never) <= len(answered) * (0.3 if acl else 0.2), never


def _no_dc_path(case: Any, status: int, body: str, agent: AgentProc) -> bool:
    """Consul's 500 for a datacenter it has no path to (the request named another one)."""
    dc = (case.query or {}).get("dc")
    return status == 500 and body == "No path to datacenter" and dc not in (None, "", agent.config.get("datacenter", "dc1"))


_SETTINGS = dict(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck), print_blob=False)


def test_no_server_errors(fuzz_agent: AgentProc) -> None:
    """Every operation, valid and invalid input: 2xx or a Consul 4xx, never a 5xx."""
    _fuzz(fuzz_agent, EXAMPLES)


def test_no_server_errors_with_acls(fuzz_acl_agent: AgentProc) -> None:
    """The same with ACLs on and a management token, so requests reach past the permission checks."""
    _fuzz(fuzz_acl_agent, max(EXAMPLES // 2, 1), acl=True)


@pytest.mark.slow
def test_no_server_errors_long(fuzz_agent: AgentProc) -> None:
    """The soak variant: ten times the examples per operation."""
    _fuzz(fuzz_agent, EXAMPLES * 10)


def test_bodies_reach_the_decoders():
    """The harvested vocabulary holds the fields the decoders read, so generated bodies are not all unknown keys."""
    for name in ("Name", "Port", "Check", "Checks", "TTL", "Interval", "Connect", "Upstreams", "Verb", "Rules"):
        assert name in FIELDS or name.lower() in WORDS, name
    assert _tame({"Check": {"HTTP": "http://8.8.8.8/", "TCP": "10.0.0.1:80"}, "Checks": [{"grpc": "x:1"}]}) == {
        "Check": {"HTTP": LOOPBACK_TARGETS[15 % 5], "TCP": LOOPBACK_TARGETS[11 % 5]},
        "Checks": [{"grpc": LOOPBACK_TARGETS[3 % 5]}],
    }
    assert _short_wait({"index": 5}) == {"index": 5, "wait": "20ms"}
    assert _short_wait({"index": 5, "wait": "1ms"}) == {"index": 5, "wait": "1ms"}
    assert _short_wait({"index": 5, "wait": "soon"}) == {"index": 5, "wait": "soon"}
    assert _short_wait({"hash": "x", "wait": ""}) == {"hash": "x", "wait": "20ms"}
    assert _short_wait({"wait": "10m"}) == {"wait": "10m"}
