"""Hardening: oversized requests are refused before they are read, the API stays on loopback by default."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Iterator

import pytest

from conftest import AgentProc, free_ports, start_dev_agent

GIB = 1024 * 1024 * 1024


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    a = start_dev_agent(tmp_path_factory.mktemp("hardening"), "hard")
    yield a
    a.stop()


def _declare(port: int, method: str, path: str, length: int) -> tuple[int, str]:
    """Send only the head of a request declaring ``length`` body bytes; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Length: {length}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"content-length: (\d+)", head, re.I)
        while m and len(body) < int(m.group(1)):
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, body.decode(errors="replace")


def test_every_body_route_refuses_a_gigabyte_before_reading_it(agent):
    """Each PUT/POST route answers 413 to a head declaring 1 GiB, without the body ever being sent."""
    paths = agent.http.get("/openapi.json").json()["paths"]
    walked = 0
    for path, ops in paths.items():
        for method in ("put", "post"):
            if method not in ops:
                continue
            url = re.sub(r"\{[^}]+\}", "x", path)
            status, body = _declare(agent.http_port, method.upper(), url, GIB)
            assert status == 413, (method, url, status, body)
            assert "too large" in body.lower(), (method, url, body)
            walked += 1
    assert walked >= 40
    assert agent.running and agent.http.get("/v1/agent/self").status_code == 200  # /v1/agent/leave never ran


def test_limits_follow_the_config(tmp_path: Path):
    """A larger configured kv_max_value_size raises the bar for KV and the body cap for the rest with it."""
    a = start_dev_agent(tmp_path, "big", {"limits": {"kv_max_value_size": 8 * 1024 * 1024}})
    try:
        assert a.http.put("/v1/kv/big", content=b"x" * (6 * 1024 * 1024)).status_code == 200
        assert _declare(a.http_port, "PUT", "/v1/kv/big", 9 * 1024 * 1024)[0] == 413
        assert _declare(a.http_port, "PUT", "/v1/agent/service/register", 9 * 1024 * 1024)[0] == 413
    finally:
        a.stop()


def test_http_api_binds_loopback_unless_told_otherwise():
    from proconsul.agent import config

    assert config.build({"dev": True}, [], []).client_addr == "127.0.0.1"
    assert config.build({"dev": True, "client_addr": "0.0.0.0"}, [], []).client_addr == "0.0.0.0"


SCRIPT_CHECK = {"Name": "scripted", "Args": ["/bin/true"], "Interval": "10s"}


@pytest.mark.parametrize(
    "flags,from_file,over_http",
    [
        ({}, False, False),  # the default: no script checks at all
        ({"enable_local_script_checks": True}, True, False),  # from config files only, as Consul recommends
        ({"enable_script_checks": True}, True, True),
    ],
)
def test_script_checks_need_their_flag(tmp_path: Path, flags: dict, from_file: bool, over_http: bool):
    """Consul's enable_script_checks / enable_local_script_checks: which sources may define script checks."""
    cfg = {**flags, "checks": [{"id": "from-file", "name": "from-file", "args": ["/bin/true"], "interval": "10s"}]}
    http, server = free_ports(2)
    agent = AgentProc("scripts", tmp_path, {**cfg, "ports": {"http": http, "server": server, "dns": -1}, "node_name": "scripts"})
    agent.start(["-dev"])
    try:
        if not from_file:
            # The agent refuses its own config file: one line, the reason, no traceback.
            assert agent.proc.wait(timeout=20) != 0
            log = agent.log()
            assert "check from-file: script checks are disabled on this agent" in log and "Traceback" not in log, log
            return
        agent.wait_ready()
        assert "from-file" in agent.http.get("/v1/agent/checks").json()
        r = agent.http.put("/v1/agent/check/register", json=SCRIPT_CHECK)
        if over_http:
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 400 and "Scripts are disabled on this agent from remote calls" in r.text
            assert "scripted" not in agent.http.get("/v1/agent/checks").json()
    finally:
        agent.stop()

