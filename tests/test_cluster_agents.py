"""3 servers + 2 client agents as real processes: registration through a client, health from everywhere,
anti-entropy, node liveness, restarts, leave and force-leave, config-file services and reload."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import consul
import pytest

from conftest import PROCONSUL, AgentProc, Cluster, eventually, free_ports

pytestmark = pytest.mark.cluster

# Fast timings so the faults show within seconds: heartbeats every 0.3 s, failed after 2 s of silence,
# full anti-entropy sync every 1-2 s.
FAST = {"liveness": {"interval": "300ms", "timeout": "2s"}, "ae_interval": "1s"}


class _App(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def app_server() -> Iterator[tuple[str, type]]:
    """A real local HTTP app whose health endpoint the checks probe; flip ``handler.status`` to fail it."""
    handler = type("Handler", (_App,), {"status": 200})
    (port,) = free_ports(1)
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/health", handler
    httpd.shutdown()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("agents"), **FAST)
    conf_dir = c.workdir / "c2.d"
    conf_dir.mkdir()
    (conf_dir / "redis.json").write_text(json.dumps({"service": {"name": "redis", "port": 6379, "check": {"ttl": "1h", "status": "passing"}}}))
    c.add_client("c1", **FAST)
    c.add_client("c2", **FAST)
    try:
        c.start()
        c.clients[0].start()
        c.clients[1].start(["-config-dir", str(conf_dir)])
        for client in c.clients:
            client.wait_ready(30)
        yield c
    finally:
        c.close()


def passing(agent: AgentProc, service: str) -> list[tuple[str, str]]:
    entries = agent.http.get(f"/v1/health/service/{service}", params={"passing": ""}).json()
    return sorted((e["Node"]["Node"], e["Service"]["ID"]) for e in entries)


def everyone(cluster: Cluster) -> list[AgentProc]:
    return [s for s in [*cluster.servers, *cluster.clients] if s.running()]


def test_service_registered_on_a_client_is_healthy_everywhere(cluster: Cluster, app_server):
    url, _ = app_server
    c1 = cluster.clients[0]
    body = {"Name": "web", "ID": "web-1", "Port": 8080, "Tags": ["v1"], "Check": {"HTTP": url, "Interval": "500ms"}}
    assert c1.http.put("/v1/agent/service/register", json=body).status_code == 200
    for agent in everyone(cluster):
        eventually(lambda: passing(agent, "web") == [("c1", "web-1")], 15, what=f"web passing seen from {agent.name}")
    # py-consul, unchanged, against a server and a client
    for agent in (cluster.servers[1], cluster.clients[1]):
        c = consul.Consul(port=agent.http_port)
        index, nodes = c.health.service("web", passing=True)
        assert [n["Service"]["ID"] for n in nodes] == ["web-1"] and int(index) > 0
        _, services = c.catalog.services()
        assert "web" in services and services["web"] == ["v1"]
    out = subprocess.run([PROCONSUL, "catalog", "services", "-http-addr", f"127.0.0.1:{c1.http_port}"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "web" in out.stdout.split()


def test_failing_http_check_takes_the_instance_out_and_back(cluster: Cluster, app_server):
    url, handler = app_server
    server = cluster.servers[0]
    eventually(lambda: passing(server, "web") == [("c1", "web-1")], 15)
    handler.status = 500
    try:
        eventually(lambda: passing(server, "web") == [], 10, what="web critical")
        checks = server.http.get("/v1/health/checks/web").json()
        assert any(c["Status"] == "critical" and "500" in c["Output"] for c in checks)
    finally:
        handler.status = 200
    eventually(lambda: passing(server, "web") == [("c1", "web-1")], 10, what="web passing again")


def test_config_dir_services_load_and_reload(cluster: Cluster):
    c2 = cluster.clients[1]
    eventually(lambda: passing(cluster.servers[0], "redis") == [("c2", "redis")], 15)
    conf_dir = cluster.workdir / "c2.d"
    (conf_dir / "cache.json").write_text(json.dumps({"services": [{"name": "cache", "port": 11211}]}))
    assert c2.http.put("/v1/agent/reload").status_code == 200
    eventually(lambda: "cache" in c2.http.get("/v1/agent/services").json(), 10)
    (conf_dir / "cache.json").write_text("{broken")
    r = c2.http.put("/v1/agent/reload")
    assert r.status_code == 400 and "cache.json" in r.text  # a bad reload keeps the running config
    assert "cache" in c2.http.get("/v1/agent/services").json()
    (conf_dir / "cache.json").unlink()
    assert c2.http.put("/v1/agent/reload").status_code == 200
    eventually(lambda: "cache" not in c2.http.get("/v1/agent/services").json(), 10)
    eventually(lambda: cluster.servers[0].http.get("/v1/catalog/service/cache").json() == [], 10)


def test_anti_entropy_restores_a_service_removed_behind_the_agents_back(cluster: Cluster):
    server = cluster.servers[2]
    eventually(lambda: passing(server, "redis") == [("c2", "redis")], 15)
    r = server.http.put("/v1/catalog/deregister", json={"Node": "c2", "ServiceID": "redis"})
    assert r.json() is True
    assert server.http.get("/v1/catalog/service/redis").json() == []
    eventually(lambda: passing(server, "redis") == [("c2", "redis")], 10, what="anti-entropy put redis back")


def test_killed_client_fails_then_comes_back_without_re_registering(cluster: Cluster):
    c1, server = cluster.clients[0], cluster.servers[0]
    eventually(lambda: passing(server, "web") == [("c1", "web-1")], 15)
    c1.kill()
    killed = time.monotonic()
    eventually(lambda: passing(server, "web") == [], 15, what="web left the passing set")
    print(f"client kill -9 -> out of ?passing in {time.monotonic() - killed:.1f} s")
    # The member's status and its serfHealth check are written by the same liveness decision; read both settled.
    eventually(lambda: {m["Name"]: m["Status"] for m in server.http.get("/v1/agent/members").json()}["c1"] == 4, 10, what="c1 failed")
    serf = [c for c in server.http.get("/v1/health/node/c1").json() if c["CheckID"] == "serfHealth"]
    assert serf[0]["Status"] == "critical" and serf[0]["Output"] == "Agent not live or unreachable"
    c1.start()  # same data dir: its API-registered service comes back from disk
    c1.wait_ready(30)
    eventually(lambda: passing(server, "web") == [("c1", "web-1")], 20, what="web passing after restart")
    assert "web-1" in c1.http.get("/v1/agent/services").json()


def test_every_server_restarted_clients_services_come_back(cluster: Cluster):
    for s in cluster.servers:
        s.kill()
    for s in cluster.servers:
        s.start()
    for s in cluster.servers:
        s.wait_ready(30)
    cluster.wait_for_leader()
    server = cluster.servers[0]
    eventually(lambda: passing(server, "web") == [("c1", "web-1")], 20, what="web after the servers restarted")
    eventually(lambda: passing(server, "redis") == [("c2", "redis")], 20, what="redis after the servers restarted")
    for client in cluster.clients:
        eventually(lambda: client.http.get("/v1/catalog/services").status_code == 200, 10)


def test_maintenance_from_the_cli(cluster: Cluster):
    c2, server = cluster.clients[1], cluster.servers[1]
    env = {**os.environ, "CONSUL_HTTP_ADDR": f"127.0.0.1:{c2.http_port}"}
    out = subprocess.run([PROCONSUL, "maint", "-enable", "-service", "redis", "-reason", "patching"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == 'Service maintenance is now enabled for "redis"'
    eventually(lambda: passing(server, "redis") == [], 10)
    shown = subprocess.run([PROCONSUL, "maint"], capture_output=True, text=True, env=env, timeout=30).stdout
    assert "redis" in shown and "patching" in shown
    out = subprocess.run([PROCONSUL, "maint", "-disable", "-service", "redis"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0
    eventually(lambda: passing(server, "redis") == [("c2", "redis")], 10)


def test_force_leave_a_dead_client_and_leave_a_live_one(cluster: Cluster):
    c1, c2, server = cluster.clients[0], cluster.clients[1], cluster.servers[0]
    env = {**os.environ, "CONSUL_HTTP_ADDR": f"127.0.0.1:{server.http_port}"}
    c1.kill()
    eventually(lambda: {m["Name"]: m["Status"] for m in server.http.get("/v1/agent/members").json()}["c1"] == 4, 15)
    out = subprocess.run([PROCONSUL, "force-leave", "c1"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    eventually(lambda: server.http.get("/v1/catalog/node/c1").json() is None, 10)
    members = subprocess.run([PROCONSUL, "members"], capture_output=True, text=True, env=env, timeout=30).stdout
    assert "c1" in members and "left" in members.splitlines()[[l.split()[0] for l in members.splitlines()].index("c1")]
    out = subprocess.run([PROCONSUL, "leave", "-http-addr", f"127.0.0.1:{c2.http_port}"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "Graceful leave complete"
    eventually(lambda: not c2.running(), 15, what="c2 shut down after leave")
    assert server.http.get("/v1/catalog/node/c2").json() is None
    assert {m["Name"]: m["Status"] for m in server.http.get("/v1/agent/members").json()}["c2"] == 3
