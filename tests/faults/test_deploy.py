"""The deployment: docker-compose.yml and its Dockerfile, checked without a Docker engine (every command
line through the CLI's parser and config validation), `proconsul validate`, and scripts/local-cluster
running the same topology as local processes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import httpx
import pytest
import yaml

from conftest import PROCONSUL, eventually
from proconsul.agent import cli

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def demo_app():
    spec = importlib.util.spec_from_file_location("demo_app", REPO / "deploy" / "demo" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_argv(name: str, argv: list[str]) -> list[str]:
    """A container command line with container paths replaced by the repo files mounted there."""
    mounts = [v.split(":")[:2] for v in SERVICES[name].get("volumes", []) if v.startswith(".")]
    owner = (SERVICES[name].get("network_mode") or "").removeprefix("service:")
    if owner:
        mounts += [v.split(":")[:2] for v in SERVICES[owner].get("volumes", []) if v.startswith(".")]
    out = []
    for token in argv:
        for src, dst in mounts:
            if token == dst or token.startswith(dst + "/"):
                token = str((REPO / src).resolve()) + token[len(dst):]
        out.append(token)
    return out


def check_command(name: str, argv: list[str]) -> None:
    """Parse a service's (or healthcheck's) command as the program would; agents also validate their config."""
    argv = host_argv(name, argv)
    if argv[0] == "proconsul":
        args = cli.parser().parse_args(argv[1:])
        if argv[1] == "agent":
            cfg, _ = cli.agent_config(args, persist=False)
            return cfg
    elif argv[0] == "python":
        assert Path(argv[1]).is_file(), argv
        demo_app().parser().parse_args(argv[2:])
    else:
        raise AssertionError(f"{name}: unexpected program {argv[0]}")
    return None


def test_compose_has_the_topology():
    kinds = {name: (svc["command"][:2], svc.get("network_mode")) for name, svc in SERVICES.items()}
    servers = [n for n, svc in SERVICES.items() if svc["command"][:2] == ["proconsul", "agent"] and "server" in n]
    clients = [n for n, svc in SERVICES.items() if svc["command"][:2] == ["proconsul", "agent"] and "client" in n]
    assert len(servers) == 3 and len(clients) == 2, kinds
    assert SERVICES["web"]["network_mode"] == "service:client1" and SERVICES["api"]["network_mode"] == "service:client2"
    assert SERVICES["intentions"]["command"][1:3] == ["intention", "create"] and SERVICES["intentions"]["command"][-2:] == ["web", "api"]
    for name, svc in SERVICES.items():
        assert svc["build"] == "." and svc["image"] == "proconsul:local", name
        if name != "intentions":
            assert svc["healthcheck"]["test"][0] == "CMD", name
    for name in servers + clients:
        data = [v for v in SERVICES[name]["volumes"] if v.endswith(":/data")]
        assert data == [f"{name}-data:/data"], name
        assert f"{name}-data" in COMPOSE["volumes"]


def test_every_command_line_parses_and_every_agent_config_validates():
    configs = {}
    for name, svc in SERVICES.items():
        configs[name] = check_command(name, svc["command"])
        if "healthcheck" in svc:
            check_command(name, svc["healthcheck"]["test"][1:])
    servers = {n: c for n, c in configs.items() if c is not None and c.server}
    clients = {n: c for n, c in configs.items() if c is not None and not c.server}
    assert sorted(servers) == ["server1", "server2", "server3"] and sorted(clients) == ["client1", "client2"]
    addrs = {f"{c.bind_addr}:{c.ports.server}" for c in servers.values()}
    for name, cfg in {**servers, **clients}.items():
        assert cfg.node_name == name and cfg.data_dir == "/data"
        assert set(cfg.retry_join) == addrs, name
        ip = SERVICES[name]["networks"]["mesh"]["ipv4_address"]
        assert cfg.bind_addr == ip, name
    for cfg in servers.values():
        assert cfg.bootstrap_expect == 3 and cfg.encrypt  # raft off loopback needs the cluster key
    web = next(s for s in clients["client1"].services if s.service.service == "web")
    upstream = web.sidecar.service.proxy["Upstreams"][0]
    assert (upstream["DestinationName"], upstream["LocalBindPort"]) == ("api", 9191)
    assert SERVICES["web"]["command"][-1] == "http://127.0.0.1:9191/"
    assert [s.service.service for s in clients["client2"].services] == ["api"]


def test_an_agent_command_with_a_broken_config_is_refused(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"server": True, "bootstrap_expect": "three"}))
    args = cli.parser().parse_args(["agent", "-config-file", str(bad)])
    with pytest.raises(cli.CLIError, match="bootstrap_expect: expected an integer"):
        cli.agent_config(args, persist=False)


def test_dockerfile_builds_from_python_slim_and_runs_unprivileged():
    text = (REPO / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    for line in lines:
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), line
    assert "chown proconsul" in text and "/data" in text  # named volumes start out owned by the user


# ----------------------------------------------------------------- proconsul validate


def validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROCONSUL, "validate", *args], capture_output=True, text=True, timeout=60)


def test_validate_accepts_the_deploy_configs_and_writes_nothing(tmp_path: Path):
    for node in ("server1", "client1"):
        kind = node.rstrip("0123456789")
        out = validate(str(REPO / "deploy" / f"{kind}.json"), str(REPO / "deploy" / f"{node}.json"))
        assert (out.returncode, out.stdout, out.stderr) == (0, "Configuration is valid!\n", "")
    data = tmp_path / "data"
    cfg = tmp_path / "a.json"
    cfg.write_text(json.dumps({"data_dir": str(data), "node_name": "n1"}))
    assert validate("-quiet", str(tmp_path)).stdout == ""
    assert not data.exists()  # no node-id written: validate only checks


def test_validate_names_the_file_and_key_of_a_problem(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data_dir": "/tmp/x", "no_such_key": 1}))
    out = validate(str(bad))
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == f"Config validation failed: {bad}: invalid config key no_such_key\n"
    assert "Config validation failed: data_dir cannot be empty" in validate(str(REPO / "deploy" / "server1.json")).stderr
    out = validate()
    assert out.returncode == 1 and "the following arguments are required: FILE_OR_DIRECTORY" in out.stderr


# ----------------------------------------------------------------- scripts/local-cluster


def test_local_cluster_runs_the_compose_topology_and_stops_on_ctrl_c(tmp_path: Path):
    workdir = tmp_path / "local"
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "local-cluster"), "-workdir", str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    info_path = workdir / "cluster.json"
    pids: list[int] = []
    try:
        eventually(info_path.exists, 120, 0.5, what=f"local-cluster ready (exit code {proc.poll()})")
        info = json.loads(info_path.read_text())
        nodes = {n["name"]: n for n in info["nodes"]}
        pids = [n["pid"] for n in info["nodes"] if n["pid"]]
        assert sorted(nodes) == sorted(SERVICES)
        agents = [n for n in nodes.values() if n["http"]]
        leaders = {httpx.get(f"{n['http']}/v1/status/leader").json() for n in agents}
        assert len(leaders) == 1 and "" not in leaders
        members = httpx.get(f"{nodes['server1']['http']}/v1/agent/members").json()
        assert sorted((m["Name"], m["Status"]) for m in members) == [(f"client{i}", 1) for i in (1, 2)] + [(f"server{i}", 1) for i in (1, 2, 3)]
        # web -> web's sidecar -> api's sidecar (mTLS, intention allows) -> api
        assert eventually(lambda: httpx.get(nodes["web"]["url"]).json().get("upstream"), 30) == {"service": "api"}
        q = dns.message.make_query("api.service.consul", dns.rdatatype.A)
        answer = dns.query.udp(q, "127.0.0.1", port=nodes["client1"]["dns"], timeout=2)
        assert [rr.address for rrset in answer.answer for rr in rrset] == ["127.0.0.1"]
        # Without the intention, the default ("deny" in deploy/) stops web's calls.
        server = nodes["server1"]["http"]
        assert httpx.delete(f"{server}/v1/connect/intentions/exact", params={"source": "web", "destination": "api"}).status_code == 200
        eventually(lambda: "upstream_error" in httpx.get(nodes["web"]["url"]).json(), 15, what="web refused without the intention")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "local cluster ready" in out and out.rstrip().endswith("stopped")
        for pid in pids:
            assert not _alive(pid), f"pid {pid} still running after Ctrl-C"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in pids:
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes: it was not reaped only because its parent exited.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and not re.search(r"^State:\s+Z", status.read_text(), re.M)
