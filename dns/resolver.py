"""Questions to records, with Consul's naming rules (agent/dns.go).

Names under ``domain`` (and ``alt_domain``), case-insensitive, optionally with a
datacenter label after the type:

  <svc>.service          healthy instances (A/AAAA of the instance's address, or SRV)
  <tag>.<svc>.service    ... with that tag
  _<svc>._<tag>.service  RFC 2782 (``_tcp`` means any tag)
  <svc>.connect          the service's connect-capable instances (its sidecar proxies)
  <node>.node            a node's address (TXT: its metadata)
  <hex>.addr             an address written in hex (how SRV answers name a service's own address)
  <name>.query           a prepared query (when the query executor is set)

Healthy means no critical check, and no warning either with ``only_passing``.
No healthy instance, or an unknown name, is NXDOMAIN with the SOA. Answers are
built from the catalog cache and kept packed; ``Answer`` records keep each
answer with the additional records it brings, so the server can shuffle and
trim without unpacking.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable

from proconsul.dns import wire
from proconsul.dns.cache import CatalogCache, Entry
from proconsul.dns.wire import QNAME_PTR, Query
from proconsul.server.durations import parse_duration

TYPES = ("service", "node", "connect", "query", "addr")


@dataclass
class Answer:
    """Everything a reply needs besides the header: records grouped with their additional records."""

    rcode: int
    records: list[tuple[bytes, tuple[bytes, ...]]] = field(default_factory=list)
    authority: list[bytes] = field(default_factory=list)
    additional: list[bytes] = field(default_factory=list)
    shuffle: bool = False
    address_records: bool = False  # a_record_limit applies
    cacheable: bool = True  # False: built afresh for every question (prepared queries)


class Resolver:
    """See the module docstring."""

    def __init__(self, config: Any, cache: CatalogCache, advertise: str, query: Callable[[str], Awaitable[Any]] | None = None) -> None:
        self.config = config
        self.cache = cache
        if cache.token is None:
            # Consul's DNS reads with the agent's default token (acl.tokens.default; empty is anonymous).
            cache.token = lambda: config.acl_token_default
        self.dc = config.datacenter.lower()
        self.domains = [tuple(d.rstrip(".").split(".")) for d in (config.domain, config.alt_domain) if d]
        self._advertise = advertise
        self._query = query
        # (qtype, labels) -> (deps, Answer): answers stay packed until a catalog entry they used changes.
        self._answers: dict[tuple[int, tuple[str, ...]], tuple[tuple[tuple[Entry, int], ...], Answer]] = {}

    def domain_of(self, labels: tuple[str, ...]) -> tuple[str, ...] | None:
        """The configured domain the name falls under (None: not ours)."""
        for d in self.domains:
            if labels[-len(d) :] == d:
                return d
        return None

    def cached(self, q: Query) -> Answer | None:
        """A still-valid packed answer for this question, or None (no awaiting: the hot path)."""
        cached = self._answers.get((q.qtype, q.labels))
        if cached is None:
            return None
        deps, answer = cached
        # Valid while every catalog entry it was built from is still watched and unchanged.
        if not all(entry.version == version and entry.task is not None and not entry.task.done() for entry, version in deps):
            return None
        now = time.monotonic()
        for entry, _ in deps:
            entry.used = now
        return answer

    async def resolve(self, q: Query) -> Answer | None:
        """The answer for a question under our domains; None when the name is not ours (recursors' job)."""
        domain = self.domain_of(q.labels)
        if domain is None:
            return None
        key = (q.qtype, q.labels)
        answer = self.cached(q)
        if answer is not None:
            return answer
        deps: list[Entry] = []
        answer = await self._build(q, q.labels[: len(q.labels) - len(domain)], ".".join(domain) + ".", deps)
        if not answer.cacheable:
            return answer
        if len(self._answers) > 10000:
            self._answers.clear()
        self._answers[key] = (tuple((e, e.version) for e in deps), answer)
        return answer

    # ------------------------------------------------------------- building

    def _soa(self, domain: str) -> bytes:
        cfg = self.config.dns
        return wire.rr_soa(
            wire.encode_name(domain), cfg.soa_min_ttl, f"ns.{domain}", f"hostmaster.{domain}",
            int(time.time()) & 0xFFFFFFFF, cfg.soa_refresh, cfg.soa_retry, cfg.soa_expire, cfg.soa_min_ttl,
        )

    def _nxdomain(self, domain: str) -> Answer:
        return Answer(wire.NXDOMAIN, authority=[self._soa(domain)])

    def _nodata(self, domain: str) -> Answer:
        return Answer(wire.NOERROR, authority=[self._soa(domain)])

    async def _build(self, q: Query, labels: tuple[str, ...], domain: str, deps: list[Entry]) -> Answer:
        if not labels:
            return self._apex(q, domain)
        dc = self.dc
        if len(labels) >= 2 and labels[-1] not in TYPES and labels[-2] in TYPES:
            dc, labels = labels[-1], labels[:-1]
        if dc != self.dc:
            return self._nxdomain(domain)
        kind, names = labels[-1], labels[:-1]
        if kind == "service" and names:
            if len(names) == 2 and names[0].startswith("_") and names[1].startswith("_"):
                service, tag = names[0][1:], names[1][1:]
                return await self._service(q, domain, "service", service, "" if tag == "tcp" else tag, deps)
            if len(names) <= 2:
                return await self._service(q, domain, "service", names[-1], names[0] if len(names) == 2 else "", deps)
        elif kind == "connect" and len(names) == 1:
            return await self._service(q, domain, "connect", names[0], "", deps)
        elif kind == "node" and len(names) == 1:
            return await self._node(q, domain, names[0], deps)
        elif kind == "addr" and len(names) == 1:
            return self._addr(q, domain, names[0])
        elif kind == "query" and len(names) == 1 and self._query is not None:
            return await self._prepared_query(q, domain, names[0])
        return self._nxdomain(domain)

    def _apex(self, q: Query, domain: str) -> Answer:
        ns_name = f"ns.{domain}"
        if q.qtype in (wire.SOA, wire.ANY):
            return Answer(wire.NOERROR, records=[(self._soa(domain).replace(wire.encode_name(domain), QNAME_PTR, 1), ())])
        if q.qtype == wire.NS:
            glue = wire.rr_address(wire.encode_name(ns_name), self._advertise, 0)
            return Answer(wire.NOERROR, records=[(wire.rr_ns(QNAME_PTR, 0, ns_name), (glue,) if glue else ())])
        return self._nodata(domain)

    def _ttl(self, service: str) -> int:
        ttls = self.config.dns.service_ttl
        return int(ttls.get(service, ttls.get("*", 0.0)))

    async def _service(self, q: Query, domain: str, kind: str, service: str, tag: str, deps: list[Entry]) -> Answer:
        entry = await self.cache.get(kind, service)
        deps.append(entry)
        return self._instances(q, domain, entry.value or [], tag, self._ttl(service))

    def _instances(self, q: Query, domain: str, entries: list[dict], tag: str, ttl: int, only_passing: bool | None = None) -> Answer:
        """Records for the healthy instances among health entries (/v1/health/service's shape)."""
        if only_passing is None:
            only_passing = self.config.dns.only_passing
        records: list[tuple[bytes, tuple[bytes, ...]]] = []
        healthy = 0
        for e in entries:
            statuses = {c["Status"] for c in e["Checks"]}
            if "critical" in statuses or (only_passing and "warning" in statuses):
                continue
            svc, node = e["Service"], e["Node"]
            if tag and tag not in {t.lower() for t in svc["Tags"]}:
                continue
            healthy += 1
            address = svc["Address"] or node["Address"]
            if q.qtype == wire.SRV:
                records.append(self._srv(svc, node, address, "warning" in statuses, domain, ttl))
            elif q.qtype in (wire.A, wire.AAAA, wire.ANY):
                rec = wire.rr_address(QNAME_PTR, address, ttl) or wire.rr_cname(QNAME_PTR, ttl, address)
                if q.qtype == wire.ANY or _rtype(rec) in (q.qtype, wire.CNAME):
                    records.append((rec, ()))  # an AAAA question skips IPv4 instances, and the other way round
        if not records:
            # Consul's serviceLookup: no healthy instance is NXDOMAIN; healthy instances of only the other
            # address family (or a question type services do not answer) is NODATA.
            return self._nodata(domain) if healthy else self._nxdomain(domain)
        _dedupe(records)
        return Answer(wire.NOERROR, records=records, shuffle=True, address_records=q.qtype != wire.SRV)

    def _srv(self, svc: dict, node: dict, address: str, warning: bool, domain: str, ttl: int) -> tuple[bytes, tuple[bytes, ...]]:
        """Consul's SRV: the node's name as target, or the service's own address as <hex>.addr; its A in additional."""
        weights = svc.get("Weights") or {"Passing": 1, "Warning": 1}
        weight = max(weights["Warning"] if warning else weights["Passing"], 1)
        own = svc["Address"] and svc["Address"] != node["Address"]
        if own and _is_ip(svc["Address"]):
            target = f"{_hex(svc['Address'])}.addr.{self.dc}.{domain}"
        elif own:
            target = svc["Address"]  # a hostname: resolvers look it up themselves
        else:
            target = f"{node['Node']}.node.{self.dc}.{domain}"
        extra = wire.rr_address(wire.encode_name(target), address, ttl)
        return wire.rr_srv(QNAME_PTR, ttl, 1, weight, svc["Port"], target), (extra,) if extra else ()

    async def _node(self, q: Query, domain: str, name: str, deps: list[Entry]) -> Answer:
        entry = await self.cache.get("node", name)
        deps.append(entry)
        found = entry.value
        if not found or not found.get("Node"):
            return self._nxdomain(domain)
        node = found["Node"]
        ttl = int(self.config.dns.node_ttl)
        records: list[tuple[bytes, tuple[bytes, ...]]] = []
        if q.qtype in (wire.A, wire.AAAA, wire.ANY):
            rec = wire.rr_address(QNAME_PTR, node["Address"], ttl) or wire.rr_cname(QNAME_PTR, ttl, node["Address"])
            if q.qtype == wire.ANY or _rtype(rec) in (q.qtype, wire.CNAME):
                records.append((rec, ()))
        if q.qtype in (wire.TXT, wire.ANY):
            meta = node.get("Meta") or {}
            for k, v in sorted(meta.items()):
                if not k.startswith("consul-"):
                    records.append((wire.rr_txt(QNAME_PTR, ttl, [f"{k}={v}"]), ()))
        if not records:
            return self._nodata(domain)
        return Answer(wire.NOERROR, records=records)

    def _addr(self, q: Query, domain: str, hexed: str) -> Answer:
        try:
            raw = bytes.fromhex(hexed)
        except ValueError:
            return self._nxdomain(domain)
        if len(raw) not in (4, 16):
            return self._nxdomain(domain)
        ip = ipaddress.ip_address(raw)
        want = wire.A if ip.version == 4 else wire.AAAA
        if q.qtype not in (want, wire.ANY):
            return self._nodata(domain)
        return Answer(wire.NOERROR, records=[(wire.rr_address(QNAME_PTR, str(ip), 0), ())])

    async def _prepared_query(self, q: Query, domain: str, name: str) -> Answer:
        """A prepared query's instances (never cached here: queries may shuffle, limit or fail over).

        The query already chose the instances (its OnlyPassing, not dns_config's, decides on warnings); its
        DNS TTL wins over the service's service_ttl, as in Consul's preparedQueryLookup.
        """
        result = await self._query(name)
        if result is None:
            return replace(self._nxdomain(domain), cacheable=False)
        dns_ttl = (result.get("DNS") or {}).get("TTL") or ""
        ttl = int(parse_duration(dns_ttl)) if dns_ttl else self._ttl(result.get("Service") or "")
        answer = self._instances(q, domain, result.get("Nodes") or [], "", ttl, only_passing=False)
        # The query ordered them (shuffled, this agent's node first): keep that order.
        return replace(answer, shuffle=False, cacheable=False)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _rtype(rec: bytes) -> int:
    return int.from_bytes(rec[len(QNAME_PTR) : len(QNAME_PTR) + 2], "big")


def _hex(address: str) -> str:
    return ipaddress.ip_address(address).packed.hex()


def _dedupe(records: list[tuple[bytes, tuple[bytes, ...]]]) -> None:
    """Instances sharing an address give one A record (Consul de-duplicates too)."""
    seen: set[bytes] = set()
    keep = []
    for rec in records:
        if rec[0] not in seen:
            seen.add(rec[0])
            keep.append(rec)
    records[:] = keep
