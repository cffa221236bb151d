"""/v1/config through the ASGI app of an in-process dev agent: Consul's decoding, shapes, CAS and validation."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

pytestmark = pytest.mark.anyio


async def put(api, body: dict, **params) -> tuple[int, object]:
    r = await api.put("/v1/config", content=json.dumps(body).encode(), params=params)
    return r.status_code, (r.json() if r.status_code == 200 else r.text)


async def test_service_defaults_shape_and_key_styles(api):
    assert await put(api, {"kind": "service-defaults", "name": "sd-web", "protocol": "HTTP", "mesh_gateway": {"mode": "local"},
                           "max_inbound_connections": 10, "Meta": {"owner": "team"}}) == (200, True)
    r = await api.get("/v1/config/service-defaults/sd-web")
    got = r.json()
    assert list(got) == ["Kind", "Name", "Protocol", "TransparentProxy", "MeshGateway", "Expose", "MaxInboundConnections", "Meta",
                         "CreateIndex", "ModifyIndex"]
    assert (got["Protocol"], got["MeshGateway"], got["TransparentProxy"], got["Expose"]) == ("http", {"Mode": "local"}, {}, {})
    assert (got["MaxInboundConnections"], got["Meta"]) == (10, {"owner": "team"})
    assert int(r.headers["X-Consul-Index"]) >= got["ModifyIndex"]
    # Weak typing, as Consul's mapstructure decode: a numeric string for an int, a number for a string.
    assert await put(api, {"Kind": "service-defaults", "Name": "sd-web", "Protocol": "grpc", "LocalConnectTimeoutMs": "2500",
                           "Expose": {"Checks": "true", "Paths": [{"Path": "/metrics", "LocalPathPort": 9000, "ListenerPort": 21500}]}}) == (200, True)
    got = (await api.get("/v1/config/service-defaults/sd-web")).json()
    assert got["LocalConnectTimeoutMs"] == 2500 and got["Expose"] == {"Checks": True, "Paths": [{"ListenerPort": 21500, "Path": "/metrics", "LocalPathPort": 9000}]}
    assert "Meta" not in got  # an upsert replaces the whole entry
    # GET (a read the client can PUT back unchanged) then PUT: the indexes it carries are accepted.
    assert await put(api, got) == (200, True)
    listed = (await api.get("/v1/config/service-defaults")).json()
    assert "sd-web" in [e["Name"] for e in listed] and listed == sorted(listed, key=lambda e: e["Name"].lower())


async def test_cas_writes_and_deletes(api):
    body = {"Kind": "service-defaults", "Name": "cas-web", "Protocol": "tcp"}
    assert await put(api, body, cas=0) == (200, True)
    assert await put(api, body, cas=0) == (200, False)
    index = (await api.get("/v1/config/service-defaults/cas-web")).json()["ModifyIndex"]
    assert await put(api, {**body, "Protocol": "http"}, cas=index + 1000) == (200, False)
    assert await put(api, {**body, "Protocol": "http"}, cas=index) == (200, True)
    r = await api.delete("/v1/config/service-defaults/cas-web", params={"cas": index})
    assert (r.status_code, r.json()) == (200, False)
    index = (await api.get("/v1/config/service-defaults/cas-web")).json()["ModifyIndex"]
    r = await api.delete("/v1/config/service-defaults/cas-web", params={"cas": index})
    assert (r.status_code, r.json()) == (200, True)
    r = await api.get("/v1/config/service-defaults/cas-web")
    assert (r.status_code, r.text) == (404, 'Config entry not found for "service-defaults" / "cas-web"')
    r = await api.delete("/v1/config/service-defaults/cas-web")
    assert (r.status_code, r.json()) == (200, {})  # without cas Consul answers an empty object
    r = await api.put("/v1/config", json=body, params={"cas": "x"})
    assert (r.status_code, r.text) == (400, "Invalid cas: 'x' is not an unsigned integer")


async def test_proxy_defaults(api):
    assert await put(api, {"Kind": "proxy-defaults", "Config": {"protocol": "http", "local_connect_timeout_ms": 1000}}) == (200, True)
    got = (await api.get("/v1/config/proxy-defaults/global")).json()
    assert list(got) == ["Kind", "Name", "Config", "TransparentProxy", "MeshGateway", "Expose", "AccessLogs", "CreateIndex", "ModifyIndex"]
    assert (got["Name"], got["Config"]) == ("global", {"protocol": "http", "local_connect_timeout_ms": 1000})
    assert api.agent.server.state.service_protocol("pd-anything") == "http"
    status, text = await put(api, {"Kind": "proxy-defaults", "Name": "other"})
    assert (status, text) == (400, 'invalid name ("other"), only "global" is supported')
    r = await api.delete("/v1/config/proxy-defaults/global")
    assert r.status_code == 200
    assert api.agent.server.state.service_protocol("pd-anything") == "tcp"


async def test_service_intentions_entry_and_its_intentions(api):
    assert await put(api, {"Kind": "service-defaults", "Name": "si-api", "Protocol": "http"}) == (200, True)
    entry = {"Kind": "service-intentions", "Name": "si-api", "Meta": {"managed-by": "test"}, "Sources": [
        {"Name": "*", "Action": "deny", "Description": "default deny"},
        {"Name": "si-web", "Permissions": [
            {"Action": "allow", "HTTP": {"PathPrefix": "/v1/", "Methods": ["get", "post"], "Header": [{"Name": "x-env", "Exact": "prod"}]}},
        ]},
        {"name": "si-admin", "action": "allow", "legacy_id": "ignored", "legacy_create_time": "2020-01-01T00:00:00Z"},
    ]}
    assert await put(api, entry) == (200, True)
    got = (await api.get("/v1/config/service-intentions/si-api")).json()
    assert list(got) == ["Kind", "Name", "Sources", "Meta", "CreateIndex", "ModifyIndex"]
    # Normalized as Consul does: precedence computed, Type defaulted, methods upper-cased, exact sources first, legacy fields dropped.
    assert got["Sources"] == [
        {"Name": "si-web", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/v1/", "Header": [{"Name": "x-env", "Exact": "prod"}], "Methods": ["GET", "POST"]}}],
         "Precedence": 9, "Type": "consul"},
        {"Name": "si-admin", "Action": "allow", "Precedence": 9, "Type": "consul"},
        {"Name": "*", "Action": "deny", "Precedence": 8, "Type": "consul", "Description": "default deny"},
    ]
    # The config entry's Meta is every intention's Meta.
    ixns = (await api.get("/v1/connect/intentions/match", params={"by": "destination", "name": "si-api"})).json()["si-api"]
    assert [(i["SourceName"], i["Meta"]) for i in ixns] == [("si-admin", {"managed-by": "test"}), ("si-web", {"managed-by": "test"}), ("*", {"managed-by": "test"})]
    # Exact upserts may echo the entry's Meta back unchanged, but not change it.
    r = await api.put("/v1/connect/intentions/exact", params={"source": "si-admin", "destination": "si-api"}, json={"Action": "deny", "Meta": {"managed-by": "test"}})
    assert r.json() is True
    r = await api.put("/v1/connect/intentions/exact", params={"source": "si-admin", "destination": "si-api"}, json={"Action": "deny", "Meta": {"x": "y"}})
    assert (r.status_code, r.text) == (400, "Meta must not be specified, or should be unchanged during an update.")
    # The protocol under L7 permissions cannot change, and its service-defaults cannot go.
    status, text = await put(api, {"Kind": "service-defaults", "Name": "si-api", "Protocol": "tcp"})
    assert (status, text) == (400, 'service "si-api" has protocol "tcp", which is incompatible with L7 intentions permissions')
    r = await api.delete("/v1/config/service-defaults/si-api")
    assert (r.status_code, r.text) == (400, 'service "si-api" has protocol "tcp", which is incompatible with L7 intentions permissions')
    assert (await api.delete("/v1/config/service-intentions/si-api")).status_code == 200
    assert (await api.get("/v1/connect/intentions/match", params={"by": "destination", "name": "si-api"})).json() == {"si-api": None}


BAD_ENTRIES = [
    ({"Name": "x"}, "Request decoding failed: Payload does not contain a kind/Kind key at the top level"),
    ({"Kind": 5, "Name": "x"}, "Request decoding failed: Kind value in payload is not a string"),
    ({"Kind": "frobnicator", "Name": "x"}, "Request decoding failed: invalid config entry kind: frobnicator"),
    ({"Kind": "service-router", "Name": "x"},
     "Request decoding failed: config entry kind 'service-router' is not supported by proconsul (supported: service-defaults, proxy-defaults, service-intentions)"),
    ({"Kind": "service-defaults", "Name": "x", "Bogus": 1}, 'Request decoding failed: 1 error occurred:\n\t* invalid config key "Bogus"\n\n'),
    ({"Kind": "service-defaults", "Name": "x", "Namespace": "default"},
     'Request decoding failed: 1 error occurred:\n\t* invalid config key "Namespace", namespaces are a consul enterprise feature\n\n'),
    ({"Kind": "service-intentions", "Name": "x", "Sources": [{"Name": "a", "Action": "allow", "Colour": "red"}]},
     'Request decoding failed: 1 error occurred:\n\t* invalid config key "Sources[0].Colour"\n\n'),
    ({"Kind": "service-defaults", "Name": "x", "Protocol": {"a": 1}},
     "Request decoding failed: 1 error(s) decoding:\n\n* 'Protocol' expected type 'string', got unconvertible type 'map[string]interface {}'"),
    ({"Kind": "service-defaults", "Name": "x", "MaxInboundConnections": "many"},
     "Request decoding failed: 1 error(s) decoding:\n\n* cannot parse 'MaxInboundConnections' as int: strconv.ParseInt: parsing \"many\": invalid syntax"),
    ({"Kind": "service-defaults", "Name": "x", "Protocol": "smtp"}, "1 error occurred:\n\t* invalid value for protocol: smtp\n\n"),
    ({"Kind": "service-defaults", "Protocol": "http"}, "Name is required"),
    ({"Kind": "service-defaults", "Name": "*"}, "service-defaults name must be the name of a service, and not a wildcard"),
    ({"Kind": "service-defaults", "Name": "x", "MutualTLSMode": "sometimes"},
     'Invalid MutualTLSMode "sometimes". Must be one of "", "strict", or "permissive".'),
    ({"Kind": "service-defaults", "Name": "x", "Mode": "sideways"},
     '1 error occurred:\n\t* Mode: invalid proxy mode "sideways" (one of "", "direct", "transparent")\n\n'),
    ({"Kind": "service-defaults", "Name": "x", "Meta": {"k" * 129: "v"}},
     f'1 error occurred:\n\t* Meta key "{"k" * 129}" exceeds maximum length 128\n\n'),
    ({"Kind": "service-intentions", "Name": "x"}, "At least one source is required"),
    ({"Kind": "service-intentions", "Name": "x", "Sources": [{"Action": "allow"}]}, "Sources[0].Name is required"),
    ({"Kind": "service-intentions", "Name": "x", "Sources": [{"Name": "a", "Action": "maybe"}]}, "Sources[0].Action must be set to 'allow' or 'deny'"),
    ({"Kind": "service-intentions", "Name": "x", "Sources": [{"Name": "a", "Action": "allow", "LegacyMeta": {"a": "b"}}]},
     "Sources[0].LegacyMeta must be omitted"),
    ({"Kind": "service-intentions", "Name": "x*", "Sources": [{"Name": "a", "Action": "allow"}]},
     "Name: wildcard character '*' cannot be used with partial values"),
    ({"Kind": "service-intentions", "Name": "x", "Sources": [{"Name": "a", "Action": "allow", "Type": "external"}]},
     "Sources[0].Type must be set to 'consul'"),
    ({"Kind": "service-intentions", "Name": "x", "Sources": [{"Name": "a", "Action": "allow", "Peer": "other"}]},
     "Sources[0].Peer: cluster peering is not supported by proconsul"),
    ({"Kind": "service-intentions", "Name": "ce-tcp", "Sources": [{"Name": "a", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]},
     'service "ce-tcp" has protocol "tcp", which is incompatible with L7 intentions permissions'),
    ({"Kind": "service-intentions", "Name": "ce-http", "Sources": [{"Name": "a", "Permissions": [{"Action": "allow", "HTTP": {"PathRegex": "(?<=x)y"}}]}]},
     'Sources[0].Permissions[0].HTTP.PathRegex "(?<=x)y" is not a valid regular expression: error parsing regexp: invalid or unsupported Perl syntax: `(?<`'),
    ({"Kind": "service-intentions", "Name": "ce-http", "Sources": [{"Name": "a", "Permissions": [{"Action": "allow", "HTTP": {"Header": [{"Name": "h", "Regex": "["}]}}]}]},
     'Sources[0].Permissions[0].HTTP.Header[0].Regex "[" is not a valid regular expression: error parsing regexp: missing closing ]: `[`'),
]


@pytest.mark.parametrize("body,message", BAD_ENTRIES)
async def test_bad_entries_are_refused_and_change_nothing(api, body, message):
    await put(api, {"Kind": "service-defaults", "Name": "ce-http", "Protocol": "http"})
    state = api.agent.server.state
    before = state._max_index("config_entries"), [r.json() for kind in ("service-defaults", "service-intentions") for r in state.config_entry_list(kind)[1]]
    assert await put(api, body) == (400, message)
    after = state._max_index("config_entries"), [r.json() for kind in ("service-defaults", "service-intentions") for r in state.config_entry_list(kind)[1]]
    assert after == before


async def test_reads_of_kinds_not_implemented_and_invalid_kinds(api):
    assert (await api.get("/v1/config/service-router")).json() == []
    r = await api.get("/v1/config/service-router/web")
    assert (r.status_code, r.text) == (404, 'Config entry not found for "service-router" / "web"')
    r = await api.get("/v1/config/frobnicator")
    assert (r.status_code, r.text) == (400, "invalid config entry kind: frobnicator")
    r = await api.delete("/v1/config/proxy-defaults/other")
    assert (r.status_code, r.text) == (400, 'invalid name ("other"), only "global" is supported')


async def test_list_filter(api):
    await put(api, {"Kind": "service-defaults", "Name": "lf-a", "Protocol": "http"})
    await put(api, {"Kind": "service-defaults", "Name": "lf-b", "Protocol": "grpc"})
    r = await api.get("/v1/config/service-defaults", params={"filter": 'Protocol == grpc and Name matches "^lf-"'})
    assert [e["Name"] for e in r.json()] == ["lf-b"]
    r = await api.get("/v1/config/service-defaults", params={"filter": "Nope == 1"})
    assert r.status_code == 400


async def test_get_blocks_until_the_entry_changes(api):
    await put(api, {"Kind": "service-defaults", "Name": "blk", "Protocol": "tcp"})
    r = await api.get("/v1/config/service-defaults/blk")
    index = int(r.headers["X-Consul-Index"])

    async def later() -> None:
        await asyncio.sleep(0.2)
        await put(api, {"Kind": "service-defaults", "Name": "unrelated", "Protocol": "tcp"})  # does not wake it
        await asyncio.sleep(0.2)
        await put(api, {"Kind": "service-defaults", "Name": "blk", "Protocol": "http"})

    task = asyncio.create_task(later())
    started = time.monotonic()
    r = await api.get("/v1/config/service-defaults/blk", params={"index": index, "wait": "5s"})
    await task
    assert 0.35 < time.monotonic() - started < 3
    assert r.json()["Protocol"] == "http"
