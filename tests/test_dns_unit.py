"""The DNS server and resolver against a scripted catalog: names, health filtering, sizes, TTLs, garbage."""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import replace
from typing import Any

import dns.message
import dns.rdatatype
import pytest

from proconsul.agent.config import DNSConfig, RuntimeConfig
from proconsul.dns.cache import CatalogCache
from proconsul.dns.resolver import Resolver
from proconsul.dns.server import DNSServer
from proconsul.server.structs import QueryMeta, QueryReply

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def entry(node: str, addr: str, sid: str, port: int, *, svc_addr: str = "", tags=(), status="passing", weights=None) -> dict:
    return {
        "Node": {"Node": node, "Address": addr, "Meta": {"rack": "r1", "consul-network-segment": ""}},
        "Service": {"ID": sid, "Service": "web", "Tags": list(tags), "Address": svc_addr, "Port": port,
                    "Weights": weights or {"Passing": 1, "Warning": 1}},
        "Checks": [{"CheckID": "c", "Status": status, "Name": "c", "Output": ""}],
    }


class Catalog:
    """Answers the cache's reads; blocking reads wait until ``change`` is called."""

    def __init__(self) -> None:
        self.services: dict[str, list[dict]] = {}
        self.nodes: dict[str, dict] = {}
        self.index = 10
        self.changed = asyncio.Event()
        self.reads = 0

    def change(self) -> None:
        self.index += 1
        self.changed.set()
        self.changed = asyncio.Event()

    async def rpc(self, method: str, args: Any) -> QueryReply:
        self.reads += 1
        if args.opts.index:
            await self.changed.wait()
        if method == "Catalog.NodeServices":
            node = self.nodes.get(args.name)
            return QueryReply(QueryMeta(index=self.index), {"Node": node, "Services": {}} if node else None)
        return QueryReply(QueryMeta(index=self.index), self.services.get(args.name, []))


def make(catalog: Catalog, **dns_opts: Any) -> DNSServer:
    cfg = RuntimeConfig(node_name="agent", dns=replace(DNSConfig(), **dns_opts), recursors=())
    cfg = replace(cfg, domain="consul.", alt_domain="alt.")
    return DNSServer(cfg, Resolver(cfg, CatalogCache(catalog.rpc), "127.0.0.1"))


async def ask(server: DNSServer, name: str, rtype: str = "A", tcp: bool = False, edns: int | None = None) -> dns.message.Message:
    q = dns.message.make_query(name, rtype, use_edns=edns is not None, payload=edns or 512)
    raw = await server.handle(q.to_wire(), tcp=tcp)
    return dns.message.from_wire(raw)


def values(msg: dns.message.Message, rtype: str = "A") -> list[str]:
    want = dns.rdatatype.from_text(rtype)
    return sorted(r.to_text() for rrset in msg.answer if rrset.rdtype == want for r in rrset)


@pytest.fixture
def catalog() -> Catalog:
    c = Catalog()
    c.services["web"] = [entry(f"n{i}", f"10.0.0.{i}", f"web{i}", 8000 + i, tags=("v1",) if i % 2 else ("v2",)) for i in range(1, 6)]
    c.nodes["n1"] = {"Node": "n1", "Address": "10.0.0.1", "Meta": {"rack": "r1"}}
    return c


async def test_a_srv_tag_rfc2782_node_addr(catalog):
    s = make(catalog)
    assert values(await ask(s, "web.service.consul", edns=4096)) == [f"10.0.0.{i}" for i in range(1, 6)]
    srv = await ask(s, "web.service.consul", "SRV", edns=4096)
    assert values(srv, "SRV") == sorted(f"1 1 {8000 + i} n{i}.node.dc1.consul." for i in range(1, 6))
    assert sorted(r.to_text() for rrset in srv.additional for r in rrset if rrset.rdtype == dns.rdatatype.A) == [f"10.0.0.{i}" for i in range(1, 6)]
    assert values(await ask(s, "v1.web.service.consul", edns=4096)) == ["10.0.0.1", "10.0.0.3", "10.0.0.5"]
    assert len(values(await ask(s, "_web._v2.service.consul", "SRV", edns=4096), "SRV")) == 2
    assert len(values(await ask(s, "_web._tcp.service.consul", "SRV", edns=4096), "SRV")) == 5
    assert values(await ask(s, "WEB.Service.DC1.Consul", edns=4096)) == [f"10.0.0.{i}" for i in range(1, 6)]
    assert values(await ask(s, "web.service.alt", edns=4096)) == [f"10.0.0.{i}" for i in range(1, 6)]
    assert values(await ask(s, "n1.node.consul")) == ["10.0.0.1"]
    assert values(await ask(s, "n1.node.consul", "TXT"), "TXT") == ['"rack=r1"']
    assert values(await ask(s, "c0a80001.addr.consul")) == ["192.168.0.1"]


async def test_unknown_names_are_nxdomain_with_soa(catalog):
    s = make(catalog)
    for name in ("nope.service.consul", "ghost.node.consul", "web.service.dc9.consul", "x.bogus.consul", "zz.addr.consul"):
        msg = await ask(s, name)
        assert msg.rcode() == dns.rcode.NXDOMAIN, name
        assert msg.authority and msg.authority[0].rdtype == dns.rdatatype.SOA, name
    soa = (await ask(s, "consul", "SOA")).answer[0][0]
    assert (soa.mname.to_text(), soa.rname.to_text()) == ("ns.consul.", "hostmaster.consul.")


async def test_other_domains_are_refused_without_recursors(catalog):
    msg = await ask(make(catalog), "example.com")
    assert msg.rcode() == dns.rcode.REFUSED and not msg.flags & dns.flags.RA


async def test_health_filtering(catalog):
    catalog.services["web"][0]["Checks"][0]["Status"] = "critical"
    catalog.services["web"][1]["Checks"][0]["Status"] = "warning"
    assert values(await ask(make(catalog), "web.service.consul", edns=4096)) == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
    assert values(await ask(make(catalog, only_passing=True), "web.service.consul", edns=4096)) == ["10.0.0.3", "10.0.0.4", "10.0.0.5"]
    for e in catalog.services["web"]:
        e["Checks"][0]["Status"] = "critical"
    assert (await ask(make(catalog), "web.service.consul")).rcode() == dns.rcode.NXDOMAIN


async def test_udp_limits_truncation_and_tcp(catalog):
    catalog.services["web"] = [entry(f"n{i}", f"10.0.{i // 250}.{i % 250}", f"w{i}", 80) for i in range(40)]
    s = make(catalog)
    plain = await ask(s, "web.service.consul")
    assert len(values(plain)) == 3 and plain.flags & dns.flags.TC  # udp_answer_limit without EDNS
    edns = await ask(s, "web.service.consul", "SRV", edns=1232)
    assert edns.flags & dns.flags.TC and 0 < len(values(edns, "SRV")) < 40
    assert len((await s.handle(dns.message.make_query("web.service.consul", "SRV", use_edns=0, payload=1232).to_wire(), tcp=False))) <= 1232
    full = await ask(s, "web.service.consul", "SRV", tcp=True)
    assert len(values(full, "SRV")) == 40 and not full.flags & dns.flags.TC
    assert len(values(await ask(make(catalog, a_record_limit=2), "web.service.consul", edns=4096))) == 2


async def test_answers_are_shuffled(catalog):
    s = make(catalog)
    orders = {tuple(r.to_text() for r in (await ask(s, "web.service.consul", edns=4096)).answer[0]) for _ in range(30)}
    assert len(orders) > 1


async def test_ttls_weights_and_service_addresses(catalog):
    catalog.services["web"] = [
        entry("n1", "10.0.0.1", "a", 80, svc_addr="10.9.9.9", weights={"Passing": 7, "Warning": 1}),
        entry("n2", "10.0.0.2", "b", 81, svc_addr="db.example.org"),
        entry("n3", "10.0.0.3", "c", 82, status="warning", weights={"Passing": 7, "Warning": 3}),
    ]
    s = make(catalog, service_ttl={"web": 30.0}, node_ttl=5.0)
    srv = await ask(s, "web.service.consul", "SRV", edns=4096)
    assert srv.answer[0].ttl == 30
    assert values(srv, "SRV") == ["1 1 81 db.example.org.", "1 3 82 n3.node.dc1.consul.", "1 7 80 0a090909.addr.dc1.consul."]
    a = await ask(s, "web.service.consul", edns=4096)
    assert values(a) == ["10.0.0.3", "10.9.9.9"] and values(a, "CNAME") == ["db.example.org."]
    assert (await ask(s, "n1.node.consul")).answer[0].ttl == 5


async def test_warm_answers_read_nothing_and_changes_show_at_once(catalog):
    s = make(catalog)
    await ask(s, "web.service.consul", edns=4096)
    await asyncio.sleep(0.05)  # the watcher is now parked on its blocking read
    reads = catalog.reads
    for _ in range(20):
        raw = dns.message.make_query("web.service.consul", "A").to_wire()
        assert s.answer_now(raw, tcp=False) is not None  # answered from the packed cache, synchronously
    assert catalog.reads == reads
    catalog.services["web"] = catalog.services["web"][:1]
    catalog.change()
    await asyncio.sleep(0.05)
    assert values(await ask(s, "web.service.consul")) == ["10.0.0.1"]


async def test_garbage_never_breaks_the_server(catalog):
    s = make(catalog)
    rng = random.Random(7)
    good = dns.message.make_query("web.service.consul", "A").to_wire()
    for i in range(3000):
        kind = i % 3
        if kind == 0:
            packet = os.urandom(rng.randint(0, 80))
        elif kind == 1:
            packet = good[: rng.randint(0, len(good) - 1)]
        else:
            packet = bytearray(good)
            packet[rng.randrange(len(packet))] = rng.randrange(256)
            packet = bytes(packet)
        out = await s.handle(packet, tcp=bool(i % 2))
        assert out is None or len(out) >= 12
    response = dns.message.make_response(dns.message.make_query("web.service.consul", "A")).to_wire()
    assert await s.handle(response, tcp=False) is None  # never answer a response
    assert (await ask(s, "web.service.consul", edns=4096)).rcode() == dns.rcode.NOERROR


async def test_a_flood_of_names_watches_at_most_max_entries(catalog):
    """Made-up names cannot pile up watchers: past max_entries the least recently asked name stops."""
    cache = CatalogCache(catalog.rpc, max_entries=8)
    await cache.get("service", "web")
    for i in range(30):
        await cache.get("service", f"nosuch{i}")
        await cache.get("service", "web")  # asked all along: never the least recent
    assert len(cache._entries) == 8 and ("service", "web") in cache._entries
    await asyncio.sleep(0)
    watching = [t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("dns-watch-")]
    assert len(watching) == 8
    cache.close()
