"""/v1/connect/intentions and /v1/agent/connect/authorize through the ASGI app of an in-process dev agent."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time

import pytest

from conftest import eventually_async

pytestmark = pytest.mark.anyio

SPIFFE = "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/{}"


async def create(api, **body) -> str:
    r = await api.post("/v1/connect/intentions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["ID"]


async def upsert(api, source: str, destination: str, **body) -> None:
    r = await api.put("/v1/connect/intentions/exact", params={"source": source, "destination": destination}, json=body)
    assert (r.status_code, r.json()) == (200, True), r.text


async def check(api, source: str, destination: str, token: str = "") -> bool:
    headers = {"X-Consul-Token": token} if token else {}
    r = await api.get("/v1/connect/intentions/check", params={"source": source, "destination": destination}, headers=headers)
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["Allowed"]
    return r.json()["Allowed"]


async def authorize(api, target: str, source: str, token: str = "") -> dict:
    headers = {"X-Consul-Token": token} if token else {}
    body = {"Target": target, "ClientCertURI": SPIFFE.format(source), "ClientCertSerial": "01"}
    r = await api.post("/v1/agent/connect/authorize", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["Authorized", "Reason"]
    return r.json()


async def delete_all(api) -> None:
    for ixn in (await api.get("/v1/connect/intentions")).json():
        r = await api.delete("/v1/connect/intentions/exact", params={"source": ixn["SourceName"], "destination": ixn["DestinationName"]})
        assert r.status_code == 200, r.text


async def snapshot(api) -> tuple:
    """What a refused write must leave untouched: every intention, every config entry, and the table's index."""
    ixns = (await api.get("/v1/connect/intentions")).json()
    entries = [(await api.get(f"/v1/config/{kind}")).json() for kind in ("service-intentions", "service-defaults", "proxy-defaults")]
    return ixns, entries, api.agent.server.state._max_index("config_entries")


# ----------------------------------------------------------------- legacy (ID-based) API


async def test_legacy_create_read_update_delete(api):
    ixn_id = await create(api, SourceName="lg-web", DestinationName="lg-db", Action="allow", Description="first", Meta={"team": "a"})
    r = await api.get(f"/v1/connect/intentions/{ixn_id}")
    got = r.json()
    assert list(got) == ["CreatedAt", "UpdatedAt", "ID", "Description", "SourceNS", "SourceName", "DestinationNS", "DestinationName",
                         "SourceType", "Action", "Meta", "Precedence", "Hash", "CreateIndex", "ModifyIndex"]
    assert (got["ID"], got["SourceNS"], got["SourceName"], got["DestinationNS"], got["DestinationName"]) == (ixn_id, "default", "lg-web", "default", "lg-db")
    assert (got["SourceType"], got["Action"], got["Meta"], got["Precedence"], got["Description"]) == ("consul", "allow", {"team": "a"}, 9, "first")
    assert got["CreatedAt"] == got["UpdatedAt"] and got["CreatedAt"].endswith("Z")
    assert len(base64.b64decode(got["Hash"])) == 32
    assert int(r.headers["X-Consul-Index"]) >= got["ModifyIndex"]
    await asyncio.sleep(0.01)
    r = await api.put(f"/v1/connect/intentions/{ixn_id}", json={"SourceName": "lg-web", "DestinationName": "lg-db", "Action": "deny"})
    assert r.json() == {"ID": ixn_id}
    updated = (await api.get(f"/v1/connect/intentions/{ixn_id}")).json()
    assert (updated["Action"], updated["CreatedAt"]) == ("deny", got["CreatedAt"])
    assert updated["UpdatedAt"] > got["UpdatedAt"] and updated["Hash"] != got["Hash"] and "Meta" not in updated
    # The same intention by name: no legacy fields are hidden from it.
    exact = (await api.get("/v1/connect/intentions/exact", params={"source": "lg-web", "destination": "lg-db"})).json()
    assert exact == updated
    r = await api.delete(f"/v1/connect/intentions/{ixn_id}")
    assert (r.status_code, r.json()) == (200, True)
    r = await api.get(f"/v1/connect/intentions/{ixn_id}")
    assert (r.status_code, r.text) == (404, "Intention not found")


async def test_legacy_api_is_refused_once_the_entry_was_written_as_a_config_entry(api):
    ixn_id = await create(api, SourceName="cv-web", DestinationName="cv-db", Action="allow")
    await upsert(api, "cv-api", "cv-db", Action="deny")
    # The exact upsert rewrote the destination's entry as a config entry: the legacy ID is gone with it.
    r = await api.get(f"/v1/connect/intentions/{ixn_id}")
    assert r.status_code == 404
    r = await api.post("/v1/connect/intentions", json={"SourceName": "cv-other", "DestinationName": "cv-db", "Action": "allow"})
    assert (r.status_code, r.text) == (400, 'cannot use legacy intention API to edit intentions with a destination of "cv-db" '
                                             "after editing them via a service-intentions config entry")
    entry = (await api.get("/v1/config/service-intentions/cv-db")).json()
    assert [s["Name"] for s in entry["Sources"]] == ["cv-web", "cv-api"]
    assert all("LegacyID" not in s for s in entry["Sources"])


# ----------------------------------------------------------------- by name (exact)


async def test_exact_upsert_read_delete(api):
    await upsert(api, "ex-web", "ex-db", Action="allow", Description="by name")
    r = await api.get("/v1/connect/intentions/exact", params={"source": "ex-web", "destination": "ex-db"})
    got = r.json()
    assert list(got) == ["Description", "SourceNS", "SourceName", "DestinationNS", "DestinationName", "SourceType", "Action",
                         "Precedence", "CreateIndex", "ModifyIndex"]
    assert (got["Description"], got["Action"], got["Precedence"]) == ("by name", "allow", 9)
    await upsert(api, "ex-web", "ex-db", Action="deny")  # replaces, never duplicates
    listed = [i for i in (await api.get("/v1/connect/intentions")).json() if i["DestinationName"] == "ex-db"]
    assert [(i["SourceName"], i["Action"]) for i in listed] == [("ex-web", "deny")]
    # The namespace form "default/name" is the same service.
    r = await api.delete("/v1/connect/intentions/exact", params={"source": "default/ex-web", "destination": "ex-db"})
    assert (r.status_code, r.json()) == (200, True)
    r = await api.get("/v1/connect/intentions/exact", params={"source": "ex-web", "destination": "ex-db"})
    assert (r.status_code, r.text) == (404, "Intention not found")
    r = await api.delete("/v1/connect/intentions/exact", params={"source": "ex-web", "destination": "ex-db"})
    assert (r.status_code, r.json()) == (200, True)  # deleting by name is idempotent
    assert (await api.get("/v1/config/service-intentions/ex-db")).status_code == 404  # the last source took the entry along


async def test_exact_upsert_with_l7_permissions(api):
    r = await api.put("/v1/config", json={"Kind": "service-defaults", "Name": "l7-api", "Protocol": "http"})
    assert r.json() is True
    perms = [{"Action": "deny", "HTTP": {"PathPrefix": "/admin"}}, {"Action": "allow", "HTTP": {"PathRegex": "/v[0-9]+/.*", "Methods": ["get", "HEAD"]}}]
    await upsert(api, "l7-web", "l7-api", Permissions=perms)
    got = (await api.get("/v1/connect/intentions/exact", params={"source": "l7-web", "destination": "l7-api"})).json()
    assert "Action" not in got
    assert got["Permissions"] == [{"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
                                  {"Action": "allow", "HTTP": {"PathRegex": "/v[0-9]+/.*", "Methods": ["GET", "HEAD"]}}]
    assert await check(api, "l7-web", "l7-api") is False  # L7 intentions count as deny for check and authorize
    result = await authorize(api, "l7-api", "l7-web")
    assert result == {"Authorized": False, "Reason": "Matched L7 intention: default/l7-web => default/l7-api (Precedence: 9, Permissions: 2)"}


# ----------------------------------------------------------------- precedence

# (intentions as (source, destination, action)), then (source, destination, allowed, deciding precedence or None)
PRECEDENCE = [
    pytest.param(
        [("p-web", "p-db", "allow"), ("*", "p-db", "deny"), ("p-web", "*", "deny"), ("*", "*", "allow")],
        [("p-web", "p-db", True, 9), ("p-api", "p-db", False, 8), ("p-web", "p-cache", False, 6), ("p-api", "p-cache", True, 5)],
        id="all-four-levels",
    ),
    pytest.param(
        [("p-web", "p-db", "deny"), ("*", "p-db", "allow"), ("p-web", "*", "allow"), ("*", "*", "deny")],
        [("p-web", "p-db", False, 9), ("p-api", "p-db", True, 8), ("p-web", "p-cache", True, 6), ("p-api", "p-cache", False, 5)],
        id="all-four-levels-inverted",
    ),
    pytest.param(
        [("*", "p-db", "deny"), ("p-web", "*", "allow")],
        [("p-web", "p-db", False, 8), ("p-web", "p-cache", True, 6), ("p-api", "p-cache", True, None)],
        id="exact-destination-beats-exact-source",
    ),
    pytest.param(
        [("p-web", "*", "deny")],
        [("p-web", "p-db", False, 6), ("p-api", "p-db", True, None)],
        id="source-wildcard-destination",
    ),
    pytest.param(
        [("*", "*", "deny")],
        [("p-web", "p-db", False, 5), ("*", "p-db", False, 5)],
        id="everything-wildcard",
    ),
    pytest.param(
        [("p-web", "p-db", "allow"), ("*", "*", "deny")],
        [("p-web", "p-db", True, 9), ("p-db", "p-web", False, 5)],
        id="exact-over-full-wildcard-one-way-only",
    ),
]


@pytest.mark.parametrize("intentions,cases", PRECEDENCE)
async def test_precedence_table(api, intentions, cases):
    try:
        for source, destination, action in intentions:
            await upsert(api, source, destination, Action=action)
        for source, destination, allowed, precedence in cases:
            assert await check(api, source, destination) is allowed, (source, destination)
            result = await authorize(api, destination, source)
            assert result["Authorized"] is allowed, (source, destination, result)
            if precedence is None:
                assert result["Reason"] == "Default behavior configured by ACLs"
            else:
                assert result["Reason"].startswith("Matched L4 intention: ") and f"(Precedence: {precedence}, " in result["Reason"], result
        # match lists them in evaluation order
        for destination in {d for _, d, _ in intentions if d != "*"}:
            matched = (await api.get("/v1/connect/intentions/match", params={"by": "destination", "name": destination})).json()[destination]
            precedences = [m["Precedence"] for m in matched]
            assert precedences == sorted(precedences, reverse=True)
    finally:
        await delete_all(api)


async def test_precedence_values_on_the_intentions(api):
    try:
        for source, destination in (("pv-web", "pv-db"), ("*", "pv-db"), ("pv-web", "*"), ("*", "*")):
            await upsert(api, source, destination, Action="allow")
        listed = (await api.get("/v1/connect/intentions")).json()
        assert [(i["SourceName"], i["DestinationName"], i["Precedence"]) for i in listed] == [
            ("pv-web", "pv-db", 9), ("*", "pv-db", 8), ("pv-web", "*", 6), ("*", "*", 5)]
    finally:
        await delete_all(api)


# ----------------------------------------------------------------- match, list, filter


async def test_match_shape(api):
    await upsert(api, "m-web", "m-db", Action="allow")
    await upsert(api, "*", "m-db", Action="deny")
    await upsert(api, "m-web", "m-cache", Action="deny")
    r = await api.get("/v1/connect/intentions/match", params=[("by", "destination"), ("name", "m-db"), ("name", "m-none")])
    body = r.json()
    assert list(body) == ["m-db", "m-none"]
    assert [(i["SourceName"], i["DestinationName"]) for i in body["m-db"]] == [("m-web", "m-db"), ("*", "m-db")]
    assert body["m-none"] is None  # Consul sends null when nothing matches
    assert int(r.headers["X-Consul-Index"]) > 0
    by_source = (await api.get("/v1/connect/intentions/match", params={"by": "source", "name": "m-web"})).json()["m-web"]
    assert [(i["SourceName"], i["DestinationName"]) for i in by_source] == [("m-web", "m-cache"), ("m-web", "m-db"), ("*", "m-db")]


async def test_match_blocks_until_a_change(api):
    await upsert(api, "b-web", "b-db", Action="allow")
    r = await api.get("/v1/connect/intentions/match", params={"by": "destination", "name": "b-db"})
    index = int(r.headers["X-Consul-Index"])

    async def later() -> None:
        await asyncio.sleep(0.2)
        await upsert(api, "b-api", "b-db", Action="deny")

    task = asyncio.create_task(later())
    started = time.monotonic()
    r = await api.get("/v1/connect/intentions/match", params={"by": "destination", "name": "b-db", "index": index, "wait": "5s"})
    await task
    assert 0.15 < time.monotonic() - started < 3
    assert int(r.headers["X-Consul-Index"]) > index
    assert [i["SourceName"] for i in r.json()["b-db"]] == ["b-api", "b-web"]  # same precedence: by name


async def test_list_filter(api):
    await upsert(api, "f-web", "f-db", Action="allow")
    await upsert(api, "f-api", "f-db", Action="deny")
    r = await api.get("/v1/connect/intentions", params={"filter": 'DestinationName == "f-db" and Action == deny'})
    assert [(i["SourceName"], i["Action"]) for i in r.json()] == [("f-api", "deny")]
    r = await api.get("/v1/connect/intentions", params={"filter": "Precedence == 9 and SourceName matches \"^f-w\""})
    assert [i["SourceName"] for i in r.json()] == ["f-web"]
    r = await api.get("/v1/connect/intentions", params={"filter": "Bogus == 1"})
    assert r.status_code == 400 and r.text.startswith("Failed to create boolean expression evaluator: ")


# ----------------------------------------------------------------- bad input: 400 with Consul's message, nothing changed

BAD_WRITES = [
    ("post", "/v1/connect/intentions", {}, {"SourceName": "bw-web", "DestinationName": "bw-db", "Action": "maybe"},
     "1 error occurred:\n\t* Action must be set to 'allow' or 'deny'\n\n"),
    ("post", "/v1/connect/intentions", {}, {"DestinationName": "bw-db", "Action": "allow"}, "1 error occurred:\n\t* SourceName must be set\n\n"),
    ("post", "/v1/connect/intentions", {}, {"SourceName": "bw-web", "Action": "allow"}, "1 error occurred:\n\t* DestinationName must be set\n\n"),
    ("post", "/v1/connect/intentions", {}, {"Action": "allow"},
     "2 errors occurred:\n\t* SourceName must be set\n\t* DestinationName must be set\n\n"),
    ("post", "/v1/connect/intentions", {}, {"SourceName": "bw-web*", "DestinationName": "bw-db", "Action": "allow"},
     "1 error occurred:\n\t* SourceName: wildcard character '*' cannot be used with partial values\n\n"),
    ("post", "/v1/connect/intentions", {}, {"SourceName": "bw-web", "DestinationName": "bw-db", "Action": "allow", "SourceType": "external"},
     "1 error occurred:\n\t* SourceType must be set to 'consul'\n\n"),
    ("post", "/v1/connect/intentions", {}, {"SourceName": "bw-web", "DestinationName": "bw-db", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]},
     "2 errors occurred:\n\t* Action must be set to 'allow' or 'deny'\n\t* Permissions must not be set when using the legacy APIs\n\n"),
    ("post", "/v1/connect/intentions", {}, {"ID": "11111111-2222-3333-4444-555555555555", "SourceName": "bw-web", "DestinationName": "bw-db", "Action": "allow"},
     "ID must be empty when creating a new intention"),
    ("post", "/v1/connect/intentions", {}, {"SourceName": "bw-web", "DestinationName": "bw-db", "Action": "allow", "SourceNS": "team"},
     "Invalid SourceNS(team): Namespaces is a Consul Enterprise feature"),
    ("post", "/v1/connect/intentions", {}, {"SourceName": "bw-web", "DestinationName": "bw-db", "Action": "allow", "Bogus": 1}, 'Request decode failed: json: unknown field "Bogus"'),
    ("post", "/v1/connect/intentions", {}, {"SourceName": 7, "DestinationName": "bw-db", "Action": "allow"},
     "Failed to decode request body: SourceName: expected a string, got 7"),
    ("post", "/v1/connect/intentions", {}, None, "Failed to decode request body: EOF"),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-db"}, None, "Request decode failed: EOF"),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-db"}, {"Action": "maybe"},
     "Sources[0].Action must be set to 'allow' or 'deny'"),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-db"}, {},
     "Sources[0].Action must be set to 'allow' or 'deny'"),
    ("put", "/v1/connect/intentions/exact", {"destination": "bw-db"}, {"Action": "allow"}, "required query parameter 'source' not set"),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web"}, {"Action": "allow"}, "required query parameter 'destination' not set"),
    ("put", "/v1/connect/intentions/exact", {"source": "a/b/c/d", "destination": "bw-db"}, {"Action": "allow"},
     'source "a/b/c/d" is invalid: input can contain at most two \'/\''),
    ("put", "/v1/connect/intentions/exact", {"source": "team/bw-web", "destination": "bw-db"}, {"Action": "allow"},
     'Invalid source namespace "team": Namespaces is a Consul Enterprise feature'),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-db"},
     {"Action": "allow", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]},
     "Sources[0].Action must be omitted if Permissions are specified"),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-tcp"},
     {"Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]},
     'service "bw-tcp" has protocol "tcp", which is incompatible with L7 intentions permissions'),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-http"},
     {"Permissions": [{"Action": "allow", "HTTP": {"PathRegex": "/v1/(unclosed"}}]},
     'Sources[0].Permissions[0].HTTP.PathRegex "/v1/(unclosed" is not a valid regular expression: error parsing regexp: missing closing ): `/v1/(unclosed`'),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-http"},
     {"Permissions": [{"Action": "allow", "HTTP": {"PathExact": "no-slash"}}]},
     'Sources[0].Permissions[0].HTTP.PathExact doesn\'t start with \'/\': "no-slash"'),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-http"},
     {"Permissions": [{"Action": "allow", "HTTP": {"PathExact": "/a", "PathPrefix": "/b"}}]},
     "Sources[0].Permissions[0].HTTP should only contain at most one of PathExact, PathPrefix, or PathRegex"),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-http"},
     {"Permissions": [{"Action": "allow", "HTTP": {"Methods": ["GET", "FETCH"]}}]},
     'Sources[0].Permissions[0].HTTP.Methods contains an invalid method "FETCH"'),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-http"},
     {"Permissions": [{"Action": "allow", "HTTP": {"Header": [{"Name": "x-a", "Exact": "1", "Prefix": "2"}]}}]},
     "Sources[0].Permissions[0].HTTP.Header[0] should only contain one of Present, Exact, Prefix, Suffix, or Regex"),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-http"},
     {"Permissions": [{"Action": "allow", "HTTP": {}}]}, "Sources[0].Permissions[0].HTTP should not be empty"),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-http"},
     {"Permissions": [{"Action": "allow"}]}, "Sources[0].Permissions[0].HTTP is required"),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "*"},
     {"Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]},
     "Sources[0].Permissions cannot be specified on intentions with wildcarded destinations"),
    ("put", "/v1/connect/intentions/exact", {"source": "bw-web", "destination": "bw-db"}, {"Action": "allow", "Meta": {"a": "b"}},
     "Meta must not be specified"),
    ("put", "/v1/connect/intentions/exact", {"source": "peer:other/bw-web", "destination": "bw-db"}, {"Action": "allow"},
     'source "peer:other/bw-web" is invalid: cannot specify a peer here'),
    ("put", "/v1/connect/intentions/11111111-2222-3333-4444-555555555555", {}, {"SourceName": "a", "DestinationName": "b", "Action": "allow"},
     "Cannot modify non-existent intention: '11111111-2222-3333-4444-555555555555'"),
    ("delete", "/v1/connect/intentions/11111111-2222-3333-4444-555555555555", {}, None,
     "Cannot delete non-existent intention: '11111111-2222-3333-4444-555555555555'"),
    ("delete", "/v1/connect/intentions/not-a-uuid", {}, None, "Intention lookup failed: failed config entry lookup: UUID must be 36 characters"),
]


@pytest.mark.parametrize("method,path,params,body,message", BAD_WRITES)
async def test_bad_writes_are_refused_and_change_nothing(api, method, path, params, body, message):
    await api.put("/v1/config", json={"Kind": "service-defaults", "Name": "bw-http", "Protocol": "http"})
    before = await snapshot(api)
    kwargs = {"params": params}
    if body is not None:
        kwargs["content"] = json.dumps(body).encode()
    r = await api.request(method.upper(), path, **kwargs)
    expected = 404 if "non-existent" in message else 400
    assert (r.status_code, r.text) == (expected, message)
    assert await snapshot(api) == before


async def test_duplicate_intentions_are_refused(api):
    await create(api, SourceName="dup-web", DestinationName="dup-db", Action="allow")
    before = await snapshot(api)
    r = await api.post("/v1/connect/intentions", json={"SourceName": "dup-web", "DestinationName": "dup-db", "Action": "deny"})
    assert (r.status_code, r.text) == (400, 'Sources[1] defines "dup-web" more than once')
    r = await api.put("/v1/config", json={"Kind": "service-intentions", "Name": "dup-x", "Sources": [
        {"Name": "a", "Action": "allow"}, {"Name": "a", "Action": "deny"}]})
    assert (r.status_code, r.text) == (400, 'Sources[1] defines "a" more than once')
    assert await snapshot(api) == before


BAD_READS = [
    ("/v1/connect/intentions/match", {"name": "x"}, "required query parameter 'by' not set"),
    ("/v1/connect/intentions/match", {"by": "sideways", "name": "x"}, "'by' parameter must be one of 'source' or 'destination'"),
    ("/v1/connect/intentions/match", {"by": "source"}, "required query parameter 'name' not set"),
    ("/v1/connect/intentions/match", {"by": "source", "name": "a/b/c/d"}, "name \"a/b/c/d\" is invalid: input can contain at most two '/'"),
    ("/v1/connect/intentions/check", {"destination": "x"}, "required query parameter 'source' not set"),
    ("/v1/connect/intentions/check", {"source": "x"}, "required query parameter 'destination' not set"),
    ("/v1/connect/intentions/check", {"source": "x", "destination": "y", "source-type": "external"}, 'unsupported SourceType: "external"'),
    ("/v1/connect/intentions/exact", {"source": "", "destination": "x"}, "1 error occurred:\n\t* SourceName is missing\n\n"),
    ("/v1/connect/intentions/exact", {"destination": "x"}, "required query parameter 'source' not set"),
    ("/v1/connect/intentions/abc", {}, "failed config entry lookup: UUID must be 36 characters"),
    ("/v1/connect/intentions/11111111-2222-3333-4444-55555555555g", {}, "failed config entry lookup: Invalid UUID: encoding/hex: invalid byte: U+0067 'g'"),
]


@pytest.mark.parametrize("path,params,message", BAD_READS)
async def test_bad_reads(api, path, params, message):
    r = await api.get(path, params=params)
    assert (r.status_code, r.text) == (400, message)


async def test_reserved_paths_answer_405(api):
    for path in ("/v1/connect/intentions/match", "/v1/connect/intentions/check"):
        for method in ("PUT", "DELETE", "POST"):
            r = await api.request(method, path)
            assert (r.status_code, r.text) == (405, f"method {method} not allowed"), (method, path)
            assert r.headers["allow"] == "OPTIONS,GET"


# ----------------------------------------------------------------- authorize


async def test_authorize_reasons_cache_and_freshness(api):
    await upsert(api, "az-web", "az-db", Action="allow")
    r = await api.post("/v1/agent/connect/authorize", json={"Target": "az-db", "ClientCertURI": SPIFFE.format("az-web")})
    assert r.headers["X-Cache"] == "MISS"
    assert r.json() == {"Authorized": True, "Reason": "Matched L4 intention: default/az-web => default/az-db (Precedence: 9, Action: ALLOW)"}
    r = await api.post("/v1/agent/connect/authorize", json={"Target": "az-db", "ClientCertURI": SPIFFE.format("az-web")})
    assert r.headers["X-Cache"] == "HIT"
    fetches = api.agent.intentions.fetches
    for _ in range(20):
        assert (await authorize(api, "az-db", "az-web"))["Authorized"] is True
    assert api.agent.intentions.fetches == fetches  # warm answers cost the servers nothing
    # A trust domain that is not ours is not checked (Consul's comment in connect_auth.go): the TLS layer did that.
    r = await api.post("/v1/agent/connect/authorize", json={"Target": "az-db", "ClientCertURI": "spiffe://other.consul/ns/default/dc/dc9/svc/az-web"})
    assert r.json()["Authorized"] is True
    # A change reaches the cache through its blocking query.
    started = time.monotonic()
    await upsert(api, "az-web", "az-db", Action="deny")
    await eventually_async(lambda: authorize(api, "az-db", "az-web"), want=lambda r: r["Authorized"] is False, timeout=1.0, interval=0.005)
    assert time.monotonic() - started < 1.0
    legacy_id = await create(api, SourceName="az-api", DestinationName="az-legacy", Action="deny")
    assert (await authorize(api, "az-legacy", "az-api"))["Reason"] == (
        f"Matched L4 intention: default/az-api => default/az-legacy (ID: {legacy_id}, Precedence: 9, Action: DENY)")


BAD_AUTHORIZE = [
    ({"ClientCertURI": SPIFFE.format("web")}, "Target service must be specified"),
    ({"Target": "db"}, "ClientCertURI not a valid Connect identifier"),
    ({"Target": "db", "ClientCertURI": "http://example.com/ns/default/dc/dc1/svc/web"}, "ClientCertURI not a valid Connect identifier"),
    ({"Target": "db", "ClientCertURI": "spiffe://x.consul/svc/web"}, "ClientCertURI not a valid Connect identifier"),
    ({"Target": "db", "ClientCertURI": "spiffe://x.consul/agent/client/dc/dc1/id/node1"}, "ClientCertURI not a valid Service identifier"),
    ({"Target": "db", "ClientCertURI": "spiffe://x.consul"}, "ClientCertURI not a valid Service identifier"),
    ({"Target": "db", "ClientCertURI": "spiffe://x.consul/ap/team/ns/default/dc/dc1/svc/web"}, 'Mismatched partitions: "team" != "default"'),
    ({"Target": "db", "ClientCertURI": SPIFFE.format("web"), "Bogus": 1}, 'Request decode failed: json: unknown field "Bogus"'),
    ({"Target": 5, "ClientCertURI": SPIFFE.format("web")}, "Request decode failed: Target: expected a string, got 5"),
    (None, "Request decode failed: EOF"),
    ([], "Request decode failed: json: cannot unmarshal array into Go value of type structs.ConnectAuthorizeRequest"),
]


@pytest.mark.parametrize("body,message", BAD_AUTHORIZE)
async def test_authorize_bad_input(api, body, message):
    r = await api.post("/v1/agent/connect/authorize", content=b"" if body is None else json.dumps(body).encode())
    assert (r.status_code, r.text) == (400, message)


async def test_default_decision_follows_the_acl_default_policy(api):
    """No intention decides: the ACL default policy does (as a token sees it), then default_intention_policy."""
    from proconsul.server.acl import initialize_acls

    agent, srv = api.agent, api.agent.server
    saved = agent.config, srv.config
    mgmt = "3e1d0f52-7a4c-4c1e-9d55-0b8f3a2c6e10"
    try:
        assert (await authorize(api, "dp-db", "dp-web")) == {"Authorized": True, "Reason": "Default behavior configured by ACLs"}
        assert await check(api, "dp-web", "dp-db") is True
        agent.config = dataclasses.replace(saved[0], acl_enabled=True, acl_default_policy="deny")
        srv.config = dataclasses.replace(saved[1], acl_enabled=True, acl_default_policy="deny", acl_initial_management=mgmt)
        await initialize_acls(srv)
        h = {"X-Consul-Token": mgmt}
        rules = 'service_prefix "dp-" {\n  policy = "write"\n  intentions = "read"\n}'
        policy = (await api.put("/v1/acl/policy", json={"Name": "dp", "Rules": rules}, headers=h)).json()
        token = (await api.put("/v1/acl/token", json={"Policies": [{"ID": policy["ID"]}]}, headers=h)).json()["SecretID"]
        assert (await authorize(api, "dp-db", "dp-web", token)) == {"Authorized": False, "Reason": "Default behavior configured by ACLs"}
        assert await check(api, "dp-web", "dp-db", token) is False
        agent.config = dataclasses.replace(agent.config, default_intention_policy="allow")
        srv.config = dataclasses.replace(srv.config, default_intention_policy="allow")
        assert (await authorize(api, "dp-db", "dp-web", token)) == {"Authorized": True, "Reason": "Default intention policy"}
        assert await check(api, "dp-web", "dp-db", token) is True
    finally:
        agent.config, srv.config = saved
