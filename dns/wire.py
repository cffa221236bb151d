"""DNS wire format for the hot path: read a query's question, write answers from pre-packed records.

Every record we pack is position-independent: its owner name is either a
pointer to the question's name (offset 12, ``QNAME_PTR``) or written out in
full, and names inside RDATA (SRV targets) are never compressed. So records can
be packed once, cached, shuffled and concatenated into any reply. Anything the
fast reader does not handle (several questions, odd flags, truncated packets)
goes to dnslib on the slow path.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

QNAME_PTR = b"\xc0\x0c"

A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV, OPT, ANY = 1, 2, 5, 6, 12, 16, 28, 33, 41, 255
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

_HEADER = struct.Struct(">HHHHHH")
_RR_FIXED = struct.Struct(">HHIH")


@dataclass(frozen=True)
class Query:
    """What a reply needs from a query: id, flags, the question as sent, and EDNS."""

    id: int
    flags: int
    question: bytes  # the question section exactly as received (case kept, as 0x20 resolvers expect)
    labels: tuple[str, ...]  # lowercased labels of the name
    qtype: int
    qclass: int
    edns_size: int  # 0 when the query had no OPT record

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)


def read_query(data: bytes) -> Query | None:
    """Parse a plain query (one question, optionally one OPT); None means "use the slow path"."""
    if len(data) < 17:
        return None
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if flags & 0x8000 or (flags >> 11) & 0xF or qd != 1 or an or ns or ar > 1:
        return None
    pos, labels = 12, []
    while True:
        if pos >= len(data):
            return None
        n = data[pos]
        if n == 0:
            pos += 1
            break
        if n > 63 or pos + 1 + n > len(data):
            return None
        try:
            labels.append(data[pos + 1 : pos + 1 + n].decode("ascii").lower())
        except UnicodeDecodeError:
            return None
        pos += 1 + n
    if pos + 4 > len(data):
        return None
    qtype, qclass = struct.unpack_from(">HH", data, pos)
    end = pos + 4
    edns = 0
    if ar:
        # Expect exactly one OPT pseudo-record with the root name.
        if end + 11 > len(data) or data[end] != 0:
            return None
        rtype, size = struct.unpack_from(">HH", data, end + 1)
        if rtype != OPT:
            return None
        edns = max(512, size)
    return Query(qid, flags, data[12:end], tuple(labels), qtype, qclass, edns)


def encode_name(name: str) -> bytes:
    """A domain name in full, uncompressed wire form ("a.b." -> b"\\x01a\\x01b\\x00")."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        if label:
            raw = label.encode("ascii", "replace")[:63]
            out.append(len(raw))
            out += raw
    out.append(0)
    return bytes(out)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    """One resource record (class IN); ``owner`` is QNAME_PTR or ``encode_name(...)``."""
    return owner + _RR_FIXED.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata


def rr_address(owner: bytes, address: str, ttl: int) -> bytes | None:
    """An A or AAAA record for an IP literal; None when ``address`` is not one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return rr(owner, A if ip.version == 4 else AAAA, ttl, ip.packed)


def rr_srv(owner: bytes, ttl: int, priority: int, weight: int, port: int, target: str) -> bytes:
    return rr(owner, SRV, ttl, struct.pack(">HHH", priority, weight, port) + encode_name(target))


def rr_txt(owner: bytes, ttl: int, strings: list[str]) -> bytes:
    data = bytearray()
    for s in strings:
        raw = s.encode()[:255]
        data.append(len(raw))
        data += raw
    return rr(owner, TXT, ttl, bytes(data))


def rr_soa(owner: bytes, ttl: int, mname: str, rname: str, serial: int, refresh: int, retry: int, expire: int, minimum: int) -> bytes:
    rdata = encode_name(mname) + encode_name(rname) + struct.pack(">IIIII", serial, refresh, retry, expire, minimum)
    return rr(owner, SOA, ttl, rdata)


def rr_ns(owner: bytes, ttl: int, target: str) -> bytes:
    return rr(owner, NS, ttl, encode_name(target))


def rr_cname(owner: bytes, ttl: int, target: str) -> bytes:
    return rr(owner, CNAME, ttl, encode_name(target))


def opt_rr(size: int) -> bytes:
    """The OPT pseudo-record a reply to an EDNS query carries."""
    return b"\x00" + struct.pack(">HHIH", OPT, size, 0, 0)


def reply(
    q: Query, rcode: int, answers: list[bytes], authority: list[bytes], additional: list[bytes],
    tc: bool = False, aa: bool = True, ra: bool = False,
) -> bytes:
    """A whole reply: header, the query's own question, then the sections; an OPT when the query had one."""
    flags = 0x8000 | (q.flags & 0x7900) | (0x0400 if aa else 0) | (0x0200 if tc else 0) | (0x0080 if ra else 0) | rcode
    extra = additional + [opt_rr(q.edns_size)] if q.edns_size else additional
    header = _HEADER.pack(q.id, flags, 1, len(answers), len(authority), len(extra))
    return b"".join((header, q.question, *answers, *authority, *extra))
