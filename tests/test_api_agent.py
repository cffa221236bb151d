"""/v1/agent through the ASGI app of an in-process dev agent: local services and checks, TTL updates,
maintenance, bad definitions, metrics."""

from __future__ import annotations

import asyncio

import pytest

from conftest import eventually_async

pytestmark = pytest.mark.anyio


async def catalog_checks(api, service: str) -> dict[str, str]:
    entries = (await api.get(f"/v1/health/service/{service}")).json()
    return {c["CheckID"]: c["Status"] for e in entries for c in e["Checks"] if c["CheckID"] != "serfHealth"}


async def test_register_service_with_checks_reaches_the_catalog(api):
    body = {
        "Name": "ag-web",
        "ID": "ag-web-1",
        "Port": 8080,
        "Tags": ["v1"],
        "Meta": {"version": "1"},
        "Weights": {"Passing": 10, "Warning": 1},
        "Checks": [{"TTL": "30s", "Notes": "ttl"}, {"Name": "second", "TTL": "30s", "Status": "passing"}],
    }
    r = await api.put("/v1/agent/service/register", json=body)
    assert r.status_code == 200, r.text
    services = (await api.get("/v1/agent/services")).json()
    svc = services["ag-web-1"]
    assert (svc["Service"], svc["Port"], svc["Weights"], svc["Datacenter"]) == ("ag-web", 8080, {"Passing": 10, "Warning": 1}, "dc1")
    checks = (await api.get("/v1/agent/checks")).json()
    assert checks["service:ag-web-1:1"]["Status"] == "critical"  # Consul's default initial status
    assert checks["service:ag-web-1:2"]["Status"] == "passing"
    assert checks["service:ag-web-1:1"]["ServiceName"] == "ag-web"
    assert await eventually_async(lambda: catalog_checks(api, "ag-web"), want={"service:ag-web-1:1": "critical", "service:ag-web-1:2": "passing"})
    one = (await api.get("/v1/agent/service/ag-web-1")).json()
    assert one["ID"] == "ag-web-1" and len(one["ContentHash"]) == 16


async def test_ttl_pass_warn_fail_update(api):
    await api.put("/v1/agent/service/register", json={"Name": "ttl-svc", "Check": {"CheckID": "ttl-c", "TTL": "30s"}})
    for verb, status in (("pass", "passing"), ("warn", "warning"), ("fail", "critical")):
        assert (await api.put(f"/v1/agent/check/{verb}/ttl-c", params={"note": f"now {verb}"})).status_code == 200
        check = (await api.get("/v1/agent/checks")).json()["ttl-c"]
        assert (check["Status"], check["Output"]) == (status, f"now {verb}")
    r = await api.put("/v1/agent/check/update/ttl-c", json={"Status": "passing", "Output": "all good"})
    assert r.status_code == 200
    assert await eventually_async(lambda: catalog_checks(api, "ttl-svc"), want={"ttl-c": "passing"})
    assert (await api.put("/v1/agent/check/update/ttl-c", json={"Status": "meh"})).status_code == 400
    r = await api.put("/v1/agent/check/pass/nope")
    assert r.status_code == 404 and "Unknown check ID" in r.text


async def test_service_and_node_maintenance(api):
    await api.put("/v1/agent/service/register", json={"Name": "mnt", "Check": {"TTL": "30s", "Status": "passing"}})
    assert (await api.put("/v1/agent/service/maintenance/mnt", params={"enable": "true", "reason": "upgrading"})).status_code == 200
    check = (await api.get("/v1/agent/checks")).json()["_service_maintenance:mnt"]
    assert (check["Status"], check["Notes"], check["Name"]) == ("critical", "upgrading", "Service Maintenance Mode")
    assert await eventually_async(lambda: api.get("/v1/health/service/mnt", params={"passing": ""}), want=lambda r: r.json() == [])
    await api.put("/v1/agent/service/maintenance/mnt", params={"enable": "false"})
    assert "_service_maintenance:mnt" not in (await api.get("/v1/agent/checks")).json()
    assert (await api.put("/v1/agent/service/maintenance/mnt")).status_code == 400  # enable is required
    assert (await api.put("/v1/agent/service/maintenance/nope", params={"enable": "true"})).status_code == 404
    assert (await api.put("/v1/agent/maintenance", params={"enable": "true"})).status_code == 200
    node_check = (await api.get("/v1/agent/checks")).json()["_node_maintenance"]
    assert node_check["Notes"].startswith("Maintenance mode is enabled for this node")
    await api.put("/v1/agent/maintenance", params={"enable": "false"})


async def test_deregister_service_removes_its_checks_everywhere(api):
    await api.put("/v1/agent/service/register", json={"Name": "gone", "Check": {"TTL": "30s"}})
    assert await eventually_async(lambda: api.get("/v1/catalog/service/gone"), want=lambda r: len(r.json()) == 1)
    assert (await api.put("/v1/agent/service/deregister/gone")).status_code == 200
    assert "gone" not in (await api.get("/v1/agent/services")).json()
    assert "service:gone" not in (await api.get("/v1/agent/checks")).json()
    assert await eventually_async(lambda: api.get("/v1/catalog/service/gone"), want=lambda r: r.json() == [])
    assert (await api.put("/v1/agent/service/deregister/gone")).status_code == 404


async def test_replace_existing_checks(api):
    await api.put("/v1/agent/service/register", json={"Name": "rep", "Checks": [{"CheckID": "a", "TTL": "9s"}, {"CheckID": "b", "TTL": "9s"}]})
    await api.put("/v1/agent/service/register", params={"replace-existing-checks": ""}, json={"Name": "rep", "Checks": [{"CheckID": "b", "TTL": "9s"}]})
    checks = (await api.get("/v1/agent/checks")).json()
    assert "b" in checks and "a" not in checks


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"Port": 80}, "Missing service name"),
        ({"Name": "x", "Port": "eighty"}, "Port"),
        ({"Name": "x", "Port": 70000}, "out of range"),
        ({"Name": "x", "Tags": "not-a-list"}, "Tags"),
        ({"Name": "x", "Check": {"HTTP": "http://127.0.0.1:1/"}}, "Interval must be > 0"),
        ({"Name": "x", "Check": {"HTTP": "http://127.0.0.1:1/", "Interval": "ten"}}, "not a duration"),
        ({"Name": "x", "Check": {"Interval": "10s"}}, "TTL must be > 0 for TTL checks"),
        ({"Name": "x", "Check": {"TTL": "10s", "Interval": "10s"}}, "Interval and TTL cannot both be specified"),
        ({"Name": "x", "Check": {"Args": ["/bin/true"], "Interval": "10s"}}, "Scripts are disabled on this agent"),
        ({"Name": "x", "Check": {"TCP": "no-port", "Interval": "10s"}}, "host:port"),
        ({"Name": "x", "Check": {"TTL": "10s", "Status": "fine"}}, "Status for checks must"),
        ({"Name": "x", "Bogus": 1}, 'unknown field "Bogus"'),
        ({"Name": "x", "Kind": "warp-drive"}, "Invalid service kind"),
        ({"Name": "x", "Meta": {"consul-reserved": "v"}}, "reserved"),
        ({"Name": "x", "Weights": {"Passing": 0}}, "Invalid Weights: Passing must be greater than 0"),
        ({"Name": "x", "Kind": "connect-proxy", "Port": 1}, "DestinationServiceName"),
    ],
)
async def test_bad_service_definitions_are_400_and_register_nothing(api, body, fragment):
    before = set((await api.get("/v1/agent/services")).json())
    r = await api.put("/v1/agent/service/register", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.text, r.text
    assert set((await api.get("/v1/agent/services")).json()) == before


async def test_bad_check_registrations(api):
    r = await api.put("/v1/agent/check/register", json={"TTL": "10s"})
    assert r.status_code == 400 and r.text == "Missing check name"
    r = await api.put("/v1/agent/check/register", json={"Name": "c", "TTL": "10s", "ServiceID": "no-such-service"})
    assert r.status_code == 404 and r.text == 'ServiceID "no-such-service" does not exist'
    r = await api.put("/v1/agent/check/register", content=b"{broken")
    assert r.status_code == 400 and r.text.startswith("Request decode failed")
    r = await api.put("/v1/agent/check/register", json={"Name": "node-ttl", "TTL": "10s"})
    assert r.status_code == 200
    assert (await api.put("/v1/agent/check/deregister/node-ttl")).status_code == 200
    assert (await api.put("/v1/agent/check/deregister/node-ttl")).status_code == 404


async def test_members_self_and_metrics(api):
    members = (await api.get("/v1/agent/members")).json()
    assert [m["Name"] for m in members] == ["api"] and members[0]["Status"] == 1
    me = (await api.get("/v1/agent/self")).json()
    assert me["Config"]["NodeName"] == "api" and me["Member"]["Tags"]["role"] == "consul"
    metrics = (await api.get("/v1/agent/metrics")).json()
    assert list(metrics) == ["Timestamp", "Gauges", "Points", "Counters", "Samples"]
    prom = (await api.get("/v1/agent/metrics", params={"format": "prometheus"})).text
    for family in ("consul_api_http", "consul_raft_apply", "consul_catalog_service_instances", "consul_agent_services"):
        assert family in prom, family


async def test_agent_list_filters(api):
    await api.put("/v1/agent/service/register", json={"Name": "fl-a", "Tags": ["x"]})
    await api.put("/v1/agent/service/register", json={"Name": "fl-b", "Tags": ["y"]})
    r = await api.get("/v1/agent/services", params={"filter": '"x" in Tags'})
    assert "fl-a" in r.json() and "fl-b" not in r.json()
    r = await api.get("/v1/agent/checks", params={"filter": "Status =="})
    assert r.status_code == 400


async def test_service_hash_blocking(api):
    await api.put("/v1/agent/service/register", json={"Name": "hb", "Port": 1})
    first = (await api.get("/v1/agent/service/hb")).json()
    task = asyncio.create_task(api.get("/v1/agent/service/hb", params={"hash": first["ContentHash"], "wait": "10s"}))
    await asyncio.sleep(0.1)
    assert not task.done()
    await api.put("/v1/agent/service/register", json={"Name": "hb", "Port": 2})
    second = (await asyncio.wait_for(task, 5)).json()
    assert second["Port"] == 2 and second["ContentHash"] != first["ContentHash"]


async def test_alias_check_mirrors_a_local_service(api):
    await api.put("/v1/agent/service/register", json={"Name": "backend", "Check": {"CheckID": "backend-ttl", "TTL": "30s", "Status": "passing"}})
    await api.put("/v1/agent/service/register", json={"Name": "frontend", "Check": {"CheckID": "frontend-alias", "AliasService": "backend"}})

    async def alias() -> tuple[str, str]:
        c = (await api.get("/v1/agent/checks")).json()["frontend-alias"]
        return c["Status"], c["Output"]

    assert await eventually_async(alias, want=lambda v: v[0] == "passing")
    await api.put("/v1/agent/check/fail/backend-ttl", params={"note": "db down"})
    status, output = await eventually_async(alias, want=lambda v: v[0] == "critical")
    assert "db down" in output
    await api.put("/v1/agent/service/deregister/backend")
    status, output = await eventually_async(alias, want=lambda v: "could not be found" in v[1])
    assert status == "critical"
    assert (await api.get("/v1/agent/checks")).json()["frontend-alias"]["Type"] == "alias"


async def test_critical_service_is_reaped_after_its_deadline(api):
    body = {"Name": "doomed", "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "500ms"}}
    assert (await api.put("/v1/agent/service/register", json=body)).status_code == 200
    assert "doomed" in (await api.get("/v1/agent/services")).json()
    # starts critical; after 500 ms (the test agent's minimum) the reaper removes the whole service
    assert await eventually_async(lambda: api.get("/v1/agent/services"), want=lambda r: "doomed" not in r.json())
    assert await eventually_async(lambda: api.get("/v1/catalog/service/doomed"), want=lambda r: r.json() == [])


async def test_tcp_check_against_a_real_listener(api):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    body = {"Name": "tcp-svc", "Port": port, "Check": {"CheckID": "tcp-c", "TCP": f"127.0.0.1:{port}", "Interval": "1s", "Timeout": "1s"}}
    await api.put("/v1/agent/service/register", json=body)

    async def status() -> str:
        return (await api.get("/v1/agent/checks")).json()["tcp-c"]["Status"]

    assert await eventually_async(status, want="passing", timeout=15)
    assert "Success" in (await api.get("/v1/agent/checks")).json()["tcp-c"]["Output"]
    listener.close()
    assert await eventually_async(status, want="critical", timeout=15)
    await api.put("/v1/agent/service/deregister/tcp-svc")


async def test_grpc_checks_are_refused_clearly(api):
    r = await api.put("/v1/agent/service/register", json={"Name": "g", "Check": {"GRPC": "127.0.0.1:1", "Interval": "10s"}})
    assert r.status_code == 400 and "gRPC checks are not supported" in r.text
