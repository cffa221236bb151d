"""Connect.SidecarService registration as Consul's agent does it (agent/sidecar_service.go): the proxy service it
registers, the sidecar port range, the default checks, inheritance from the parent, lineage on deregister,
and the catalog, health and DNS views of the proxies."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import PROCONSUL, AgentProc, eventually_async, free_ports

pytestmark = pytest.mark.anyio


async def register(api, body: dict) -> None:
    r = await api.put("/v1/agent/service/register", json=body)
    assert r.status_code == 200, r.text


async def test_all_the_defaults(api):
    await register(api, {"Name": "sc-web", "ID": "sc-web1", "Port": 1111, "Connect": {"SidecarService": {}}})
    services = (await api.get("/v1/agent/services")).json()
    proxy = services["sc-web1-sidecar-proxy"]
    assert (proxy["Kind"], proxy["Service"], proxy["Port"]) == ("connect-proxy", "sc-web-sidecar-proxy", 21000)
    assert {k: proxy["Proxy"][k] for k in ("DestinationServiceName", "DestinationServiceID", "LocalServiceAddress", "LocalServicePort")} == {
        "DestinationServiceName": "sc-web", "DestinationServiceID": "sc-web1", "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 1111,
    }
    assert "Connect" not in services["sc-web1"]  # the parent keeps no sidecar block, as in Consul
    checks = (await api.get("/v1/agent/checks")).json()
    listening, aliasing = checks["service:sc-web1-sidecar-proxy:1"], checks["service:sc-web1-sidecar-proxy:2"]
    assert (listening["Name"], listening["Type"], listening["ServiceID"]) == ("Connect Sidecar Listening", "tcp", "sc-web1-sidecar-proxy")
    assert (aliasing["Name"], aliasing["Type"]) == ("Connect Sidecar Aliasing sc-web1", "alias")
    one = (await api.get("/v1/agent/service/sc-web1-sidecar-proxy")).json()
    assert one["Proxy"]["DestinationServiceID"] == "sc-web1"

    # Re-registering the parent keeps the sidecar's port; another sidecar gets the next one.
    await register(api, {"Name": "sc-web", "ID": "sc-web1", "Port": 1112, "Connect": {"SidecarService": {}}})
    await register(api, {"Name": "sc-db", "Port": 5432, "Connect": {"SidecarService": {}}})
    services = (await api.get("/v1/agent/services")).json()
    assert services["sc-web1-sidecar-proxy"]["Port"] == 21000
    assert services["sc-web1-sidecar-proxy"]["Proxy"]["LocalServicePort"] == 1112
    assert services["sc-db-sidecar-proxy"]["Port"] == 21001

    # The catalog's and health's connect views return the proxies.
    async def connect_ids() -> list[str]:
        return [s["ServiceID"] for s in (await api.get("/v1/catalog/connect/sc-web")).json()]

    assert await eventually_async(connect_ids, want=["sc-web1-sidecar-proxy"])
    health = (await api.get("/v1/health/connect/sc-web")).json()
    assert [e["Service"]["ID"] for e in health] == ["sc-web1-sidecar-proxy"]

    # Deregistering the parent takes its sidecar (and the sidecar's checks) along.
    assert (await api.put("/v1/agent/service/deregister/sc-web1")).status_code == 200
    services = (await api.get("/v1/agent/services")).json()
    assert "sc-web1-sidecar-proxy" not in services and "sc-db-sidecar-proxy" in services
    assert "service:sc-web1-sidecar-proxy:1" not in (await api.get("/v1/agent/checks")).json()
    assert (await api.put("/v1/agent/service/deregister/sc-db")).status_code == 200


async def test_overrides_and_inheritance(api):
    body = {
        "Name": "sc-api", "ID": "sc-api1", "Port": 2000, "Address": "10.9.0.1", "Tags": ["blue"], "Meta": {"team": "x"},
        "Connect": {"SidecarService": {
            "Port": 23000,
            "Proxy": {"Upstreams": [{"DestinationName": "sc-db", "LocalBindPort": 9191}], "Config": {"protocol": "http"}},
        }},
    }
    await register(api, body)
    proxy = (await api.get("/v1/agent/service/sc-api1-sidecar-proxy")).json()
    assert (proxy["Port"], proxy["Address"], proxy["Tags"], proxy["Meta"]) == (23000, "10.9.0.1", ["blue"], {"team": "x"})
    assert proxy["Proxy"]["Config"] == {"protocol": "http"}
    [up] = proxy["Proxy"]["Upstreams"]
    assert (up["DestinationName"], up["LocalBindPort"], up["DestinationType"]) == ("sc-db", 9191, "service")
    checks = (await api.get("/v1/agent/checks")).json()
    assert checks["service:sc-api1-sidecar-proxy:1"]["Definition"]["TCP"] == "10.9.0.1:23000"

    # snake_case, as in config files; own checks replace the defaults; own tags win.
    await register(api, {"name": "sc-snake", "port": 3000, "connect": {"sidecar_service": {
        "tags": ["own"], "port": 23001,
        "proxy": {"upstreams": [{"destination_name": "sc-api", "local_bind_port": 9292}]},
        "checks": [{"name": "mine", "ttl": "30s"}]}}})
    proxy = (await api.get("/v1/agent/service/sc-snake-sidecar-proxy")).json()
    assert proxy["Tags"] == ["own"] and proxy["Proxy"]["Upstreams"][0]["LocalBindPort"] == 9292
    names = {c["Name"] for c in (await api.get("/v1/agent/checks")).json().values() if c["ServiceID"] == "sc-snake-sidecar-proxy"}
    assert names == {"mine"}
    for sid in ("sc-api1", "sc-snake"):
        assert (await api.put(f"/v1/agent/service/deregister/{sid}")).status_code == 200


@pytest.mark.parametrize(
    "sidecar,message",
    [
        ({"ID": "mine"}, "A SidecarService cannot specify an ID as this is managed by the agent"),
        ({"Connect": {"SidecarService": {}}}, "A SidecarService cannot have a nested SidecarService"),
        ({"Meta": {"consul-x": "1"}}, "Invalid SidecarService: Invalid Service Meta"),
        ({"Check": {"TCP": "127.0.0.1:1"}}, "Invalid SidecarService: Invalid check: Interval must be > 0"),
        ({"Proxy": {"Upstreams": [{"LocalBindPort": 1}]}}, "Invalid SidecarService: Invalid upstream 0: DestinationName is required"),
    ],
)
async def test_bad_sidecars_are_refused_and_register_nothing(api, sidecar, message):
    r = await api.put("/v1/agent/service/register", json={"Name": "sc-bad", "Port": 1, "Connect": {"SidecarService": sidecar}})
    assert r.status_code == 400 and message in r.text, r.text
    services = (await api.get("/v1/agent/services")).json()
    assert "sc-bad" not in services and "sc-bad-sidecar-proxy" not in services


def test_config_file_sidecars_and_restart(tmp_path):
    """A config file's snake_case sidecar_service, and an API sidecar, both come back after a restart on the same ports."""
    http, server = free_ports(2)
    cfg = {
        "node_name": "scdev", "data_dir": str(tmp_path / "data"), "ports": {"http": http, "server": server, "dns": -1, "sidecar_min_port": 25000, "sidecar_max_port": 25100},
        "services": [{"name": "cfg-web", "port": 8080, "connect": {"sidecar_service": {
            "proxy": {"upstreams": [{"destination_name": "cfg-db", "local_bind_port": 9000}]}}}}],
    }
    agent = AgentProc("scdev", tmp_path, cfg).start(["-dev"]).wait_ready()
    try:
        body = {"Name": "api-web", "Port": 8081, "Connect": {"SidecarService": {}}}
        assert agent.http.put("/v1/agent/service/register", json=body).status_code == 200
        before = {sid: s["Port"] for sid, s in agent.http.get("/v1/agent/services").json().items()}
        assert before == {"cfg-web": 8080, "cfg-web-sidecar-proxy": 25000, "api-web": 8081, "api-web-sidecar-proxy": 25001}
        agent.stop()
        agent.start(["-dev"]).wait_ready()
        after = {sid: s["Port"] for sid, s in agent.http.get("/v1/agent/services").json().items()}
        assert after == before
        assert agent.http.put("/v1/agent/service/deregister/api-web").status_code == 200
        assert set(agent.http.get("/v1/agent/services").json()) == {"cfg-web", "cfg-web-sidecar-proxy"}
    finally:
        agent.stop()


def test_an_exhausted_sidecar_range_stops_the_agent_with_one_line(tmp_path):
    http, server = free_ports(2)
    cfg = {"node_name": "scfull", "ports": {"http": http, "server": server, "dns": -1, "sidecar_min_port": 26000, "sidecar_max_port": 26000},
           "services": [{"name": f"full{i}", "port": 1000 + i, "connect": {"sidecar_service": {}}} for i in range(2)]}
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(cfg))
    p = subprocess.run([PROCONSUL, "agent", "-dev", "-config-file", str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "none left in the configured range [26000, 26000]" in p.stderr
