"""DNS against real agents with real resolvers: dig (Debian dnsutils) and dnspython."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from conftest import AgentProc, Cluster, eventually, free_ports

DIG = shutil.which("dig")


def dig(port: int, *args: str) -> str:
    assert DIG, "dig is missing: `make test` installs Debian's dnsutils"
    out = subprocess.run([DIG, "@127.0.0.1", "-p", str(port), "+time=2", "+tries=1", *args], capture_output=True, text=True, timeout=15)
    return out.stdout


def resolver(port: int) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers, r.port, r.lifetime = ["127.0.0.1"], port, 5.0
    return r


def udp(port: int, name: str, rtype: str = "A", **kw) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rtype, **kw), "127.0.0.1", port=port, timeout=5)


class _Upstream:
    """A tiny recursor on loopback: answers every A question with 192.0.2.7."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.asked: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            q = dns.message.from_wire(data)
            self.asked.append(q.question[0].name.to_text())
            r = dns.message.make_response(q)
            r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.7"))
            self.sock.sendto(r.to_wire(), addr)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[_Upstream]:
    u = _Upstream()
    yield u
    u.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, upstream: _Upstream) -> Iterator[AgentProc]:
    http, server, dns_port = free_ports(3)
    cfg = {"node_name": "dnsdev", "ports": {"http": http, "server": server, "dns": dns_port}, "recursors": [f"127.0.0.1:{upstream.port}"]}
    a = AgentProc("dnsdev", tmp_path_factory.mktemp("dns"), cfg).start(["-dev"]).wait_ready()
    for i in range(1, 46):
        body = {"Name": "big" if i > 5 else "web", "ID": f"inst{i}", "Port": 8000 + i, "Address": f"10.1.0.{i}", "Tags": ["even" if i % 2 == 0 else "odd"],
                "Check": {"TTL": "1h", "Status": "passing"}}
        assert a.http.put("/v1/agent/service/register", json=body).status_code == 200
    proxy = {"Name": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000, "Address": "10.1.0.99",
             "Proxy": {"DestinationServiceName": "web", "LocalServicePort": 8001}}
    assert a.http.put("/v1/agent/service/register", json=proxy).status_code == 200
    eventually(lambda: len(a.http.get("/v1/health/service/big", params={"passing": ""}).json()) == 40, 15)
    yield a
    a.stop()


def port(a: AgentProc) -> int:
    return a.config["ports"]["dns"]


def test_a_srv_tag_and_rfc2782_with_dig(agent: AgentProc):
    p = port(agent)
    assert sorted(dig(p, "+short", "web.service.consul").split()) == [f"10.1.0.{i}" for i in range(1, 6)]
    srv = dig(p, "web.service.consul", "SRV", "+noall", "+answer", "+additional")
    assert srv.count("IN\tSRV\t1 1 80") == 5 and srv.count("IN\tA\t10.1.0.") == 5
    assert sorted(dig(p, "+short", "even.web.service.consul").split()) == ["10.1.0.2", "10.1.0.4"]
    assert len(dig(p, "+short", "_web._odd.service.consul", "SRV").splitlines()) == 3
    assert len(dig(p, "+short", "_web._tcp.service.consul", "SRV").splitlines()) == 5
    assert dig(p, "+short", "dnsdev.node.consul").split() == ["127.0.0.1"]
    assert dig(p, "+short", "0a010001.addr.dc1.consul").split() == ["10.1.0.1"]


def test_dnspython_and_the_connect_form(agent: AgentProc):
    r = resolver(port(agent))
    assert sorted(a.to_text() for a in r.resolve("web.service.consul", "A")) == [f"10.1.0.{i}" for i in range(1, 6)]
    assert [a.to_text() for a in r.resolve("web.connect.consul", "A")] == ["10.1.0.99"]
    [srv] = list(r.resolve("web.connect.consul", "SRV"))
    assert srv.port == 21000


def test_truncated_over_udp_then_complete_over_tcp(agent: AgentProc):
    p = port(agent)
    plain = udp(p, "big.service.consul", "SRV")
    assert plain.flags & dns.flags.TC and len(plain.answer[0]) <= 3
    flags = dig(p, "big.service.consul", "SRV", "+noedns", "+ignore", "+noall", "+comments")
    assert " tc" in flags.split("flags:")[1].split(";")[0]
    assert len(dig(p, "+tcp", "+short", "big.service.consul", "SRV").splitlines()) == 40
    full = dns.query.tcp(dns.message.make_query("big.service.consul", "SRV"), "127.0.0.1", port=p, timeout=5)
    assert len(full.answer[0]) == 40 and not full.flags & dns.flags.TC


def test_prepared_queries_by_name_and_id(agent: AgentProc):
    p = port(agent)
    body = {"Name": "evens", "Service": {"Service": "web", "Tags": ["even"]}, "DNS": {"TTL": "7s"}}
    created = agent.http.post("/v1/query", json=body)
    assert created.status_code == 200, created.text
    qid = created.json()["ID"]
    assert sorted(dig(p, "+short", "evens.query.consul").split()) == ["10.1.0.2", "10.1.0.4"]
    answer = dig(p, "evens.query.consul", "SRV", "+noall", "+answer").splitlines()
    assert len(answer) == 2 and all(line.split()[1] == "7" for line in answer)  # the query's DNS TTL
    assert sorted(dig(p, "+short", f"{qid}.query.dc1.consul").split()) == ["10.1.0.2", "10.1.0.4"]
    assert udp(p, "no-such-query.query.consul").rcode() == dns.rcode.NXDOMAIN
    assert agent.http.delete(f"/v1/query/{qid}").status_code == 200
    assert udp(p, "evens.query.consul").rcode() == dns.rcode.NXDOMAIN


def test_nxdomain_carries_the_soa(agent: AgentProc):
    msg = udp(port(agent), "nothing-here.service.consul")
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert msg.authority[0].to_text().split()[3] == "SOA"
    assert "status: NXDOMAIN" in dig(port(agent), "ghost.node.consul")


def test_a_critical_instance_leaves_dns_within_a_second(agent: AgentProc):
    p = port(agent)
    assert "10.1.0.3" in dig(p, "+short", "web.service.consul")
    agent.http.put("/v1/agent/check/fail/service:inst3")
    failed = time.monotonic()
    eventually(lambda: "10.1.0.3" not in udp(p, "web.service.consul", use_edns=0).to_text(), 5, interval=0.02)
    took = time.monotonic() - failed
    print(f"critical instance left DNS answers {took * 1000:.0f} ms after the check failed")
    assert took < 1.0
    agent.http.put("/v1/agent/check/pass/service:inst3")
    eventually(lambda: "10.1.0.3" in udp(p, "web.service.consul", use_edns=0).to_text(), 5, interval=0.02)


def test_other_domains_go_to_the_recursors(agent: AgentProc, upstream: _Upstream):
    assert dig(port(agent), "+short", "example.test").split() == ["192.0.2.7"]
    assert "example.test." in upstream.asked


def test_garbage_packets_then_still_answering(agent: AgentProc):
    import os
    import random

    p = port(agent)
    rng = random.Random(11)
    good = dns.message.make_query("web.service.consul", "A").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(3000):
            if i % 2:
                packet = os.urandom(rng.randint(0, 64))
            else:
                packet = good[: rng.randint(0, len(good))]
            s.sendto(packet, ("127.0.0.1", p))
    with socket.create_connection(("127.0.0.1", p), timeout=5) as t:
        t.sendall(b"\x00\x05junk")  # a short TCP message
    assert sorted(dig(p, "+short", "web.service.consul").split())[:1] == ["10.1.0.1"]
    assert agent.running()


@pytest.mark.cluster
def test_a_client_agent_answers_from_its_cache(tmp_path: Path):
    c = Cluster(tmp_path, liveness={"interval": "300ms", "timeout": "3s"})
    client = c.add_client("dnsclient")
    try:
        c.start()
        client.start().wait_ready(30)
        client.http.put("/v1/agent/service/register", json={"Name": "api", "Port": 9000, "Address": "10.2.0.1", "Check": {"CheckID": "api-ttl", "TTL": "1h", "Status": "passing"}})
        p = port(client)
        eventually(lambda: dig(p, "+short", "api.service.consul").split() == ["10.2.0.1"], 15)

        def reads() -> float:
            counters = client.http.get("/v1/agent/metrics", params={"format": "prometheus"}).text
            return sum(float(line.split()[-1]) for line in counters.splitlines() if line.startswith("consul_dns_catalog_read"))

        before = reads()
        for _ in range(50):
            assert udp(p, "api.service.consul").answer
        assert reads() == before  # warm: no server round trip per query
        client.http.put("/v1/agent/check/fail/api-ttl")
        failed = time.monotonic()
        eventually(lambda: udp(p, "api.service.consul").rcode() == dns.rcode.NXDOMAIN, 5, interval=0.02)
        print(f"client agent DNS saw the failure after {(time.monotonic() - failed) * 1000:.0f} ms")
        assert time.monotonic() - failed < 1.0
    finally:
        c.close()
