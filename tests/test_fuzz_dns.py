"""Bad input over DNS: a few thousand malformed packets over UDP and TCP, then the agent still answers.

The packets are built from a seeded RNG, so every run sends the same ones:
random bytes, truncated queries, label lengths that run past the packet or use
the reserved label types, compression pointers that loop or point outside,
section counts far beyond the packet, every opcode and flag, EDNS records with
lying lengths and bad options, and well-formed questions for names no catalog
has (bad hex in ``.addr``, 127 labels, binary labels). Over TCP the length
prefixes lie too: longer than what follows, zero, shorter (so the rest is read
as the next message), and connections that stop halfway.

Every reply must be a response (QR set) to the packet's ID; the agent must go
on answering a valid query over both transports, and log no traceback.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from typing import Callable, Iterator

import dns.message
import dns.query
import dns.rcode
import pytest

from conftest import AgentProc, eventually, free_ports

COUNT = 3000
NAMES = ["web.service.consul", "v1.web.service.consul", "_web._tcp.service.consul", "dnsfuzz.node.consul",
         "7f000001.addr.consul", "web.connect.consul", "q.query.consul", "consul", "web.service.dc1.consul"]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    http, server, dns_port = free_ports(3)
    cfg = {"node_name": "dnsfuzz", "ports": {"http": http, "server": server, "dns": dns_port}}
    a = AgentProc("dnsfuzz", tmp_path_factory.mktemp("dnsfuzz"), cfg).start(["-dev"]).wait_ready()
    body = {"Name": "web", "Port": 80, "Address": "10.2.0.1", "Tags": ["v1"], "Check": {"TTL": "1h", "Status": "passing"}}
    assert a.http.put("/v1/agent/service/register", json=body).status_code == 200
    eventually(lambda: a.http.get("/v1/health/service/web", params={"passing": ""}).json(), 10)
    yield a
    a.stop()


def _query(name: str, rtype: str = "A", edns: bool = False) -> bytes:
    return dns.message.make_query(name, rtype, use_edns=0 if edns else None).to_wire()


def _header(qid: int, flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack(">HHHHHH", qid, flags, qd, an, ns, ar)


def _question(name: bytes, qtype: int = 1, qclass: int = 1) -> bytes:
    return name + struct.pack(">HH", qtype, qclass)


def _random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(0, 600))


def _truncated(rng: random.Random) -> bytes:
    good = _query(rng.choice(NAMES), rng.choice(["A", "SRV", "AAAA", "ANY"]), edns=rng.random() < 0.5)
    return good[: rng.randint(0, len(good) - 1)]


def _flipped(rng: random.Random) -> bytes:
    packet = bytearray(_query(rng.choice(NAMES), "SRV", edns=True))
    for _ in range(rng.randint(1, 4)):
        packet[rng.randrange(len(packet))] = rng.randrange(256)
    return bytes(packet)


def _bad_labels(rng: random.Random) -> bytes:
    label = rng.choice([
        bytes([rng.randint(64, 191)]) + b"abc",  # the reserved 01 and 10 label types
        bytes([63]) + b"x" * 10,  # runs past the end
        bytes([rng.randint(1, 63)]),  # nothing after the length
        b"\x03web\x07service\x06consul",  # no root label
        b"\x00" * rng.randint(1, 5),
        b"".join(bytes([63]) + b"a" * 63 for _ in range(5)) + b"\x00",  # longer than 255 bytes
        b"".join(b"\x01" + bytes([rng.randrange(256)]) for _ in range(127)) + b"\x00",  # 127 binary labels
    ])
    return _header(rng.randrange(65536), 0x0100) + _question(label, rng.randrange(65536))


def _compression(rng: random.Random) -> bytes:
    qid = rng.randrange(65536)
    name = rng.choice([
        b"\xc0\x0c",  # points at itself
        b"\x03web\xc0\x0c",  # a label, then back to the start: a loop
        b"\xc0\x0e\xc0\x0c",  # two pointers at each other
        b"\xc0\xff",  # past the end
        b"\xff\xff",
        b"\x03web\xc0" + bytes([rng.randrange(256)]),
    ])
    body = _header(qid, 0x0100, ar=rng.choice([0, 1])) + _question(name, rng.choice([1, 33, 255]))
    if rng.random() < 0.5:  # a pointer loop in the answer section too
        body = _header(qid, 0x0100, an=1) + _question(b"\x00") + b"\xc0\x1d\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00"
    return body


def _huge_counts(rng: random.Random) -> bytes:
    good = _query(rng.choice(NAMES))
    counts = [rng.choice([0, 1, 2, 0xFF, 0xFFFF]) for _ in range(4)]
    return good[:4] + struct.pack(">HHHH", *counts) + good[12:]


def _opcodes_and_flags(rng: random.Random) -> bytes:
    good = bytearray(_query(rng.choice(NAMES), rng.choice(["A", "SRV", "TXT", "NS", "SOA", "PTR", "AXFR", "IXFR", "ANY"])))
    opcode = rng.randrange(16)
    flags = (rng.randrange(2) << 15) | (opcode << 11) | (rng.randrange(256) << 3) & 0x07F0 | rng.randrange(16)
    struct.pack_into(">H", good, 2, flags)
    if rng.random() < 0.3:
        struct.pack_into(">HH", good, len(good) - 4, rng.randrange(65536), rng.choice([1, 3, 254, 255, rng.randrange(65536)]))
    return bytes(good)


def _edns(rng: random.Random) -> bytes:
    qid = rng.randrange(65536)
    q = _question(b"\x03web\x07service\x06consul\x00", rng.choice([1, 33]))
    size = rng.choice([0, 1, 511, 512, 4096, 65535])
    ttl = rng.choice([0, 0x00010000, 0xFF000000, 0x00008000])  # version 1, extended rcode, DO bit
    option = rng.choice([
        b"",
        struct.pack(">HH", 10, 8) + rng.randbytes(8),  # a cookie
        struct.pack(">HH", 8, 40) + b"\x00",  # client subnet with a lying length
        struct.pack(">HH", rng.randrange(65536), rng.randrange(65536)),
        rng.randbytes(rng.randint(1, 20)),
    ])
    rdlen = rng.choice([len(option), len(option) + 7, 0xFFFF, max(len(option) - 1, 0)])
    owner = rng.choice([b"\x00", b"\x00", b"\x03abc\x00", b"\xc0\x0c"])
    opt = owner + struct.pack(">HHIH", 41, size, ttl, rdlen) + option
    ar = rng.choice([1, 1, 2, 3])
    return _header(qid, 0x0100, ar=ar) + q + opt * rng.choice([1, 1, 2])


def _odd_names(rng: random.Random) -> bytes:
    """Well-formed packets asking for names the catalog cannot have."""
    name = rng.choice([
        "zz.addr.consul", "0.addr.consul", "ffffffffffffffffffffffffffffffffff.addr.consul", "7f00000.addr.consul",
        ".".join(["a"] * 120) + ".service.consul", "a.b.c.d.service.consul", "_web.service.consul",
        "web.service.nowhere.consul", "web.service.dc1.dc1.consul", "node.consul", "service.consul",
        "x" * 63 + ".node.consul", "-.query.consul", "*.service.consul", "web.service.consul.consul",
        f"s{rng.randrange(10**6)}.service.consul", f"n{rng.randrange(10**6)}.node.consul",
    ])
    wire_name = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
    qtype = rng.choice([1, 28, 33, 16, 12, 255, 5, 15])
    return _header(rng.randrange(65536), 0x0100) + _question(wire_name, qtype)


KINDS: list[Callable[[random.Random], bytes]] = [
    _random_bytes, _truncated, _flipped, _bad_labels, _compression, _huge_counts, _opcodes_and_flags, _edns, _odd_names,
]


def packets(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [KINDS[i % len(KINDS)](rng) for i in range(count)]


def _check_replies(replies: list[tuple[bytes, bytes]]) -> None:
    for sent, got in replies:
        assert len(got) >= 12, (sent, got)
        flags = struct.unpack_from(">H", got, 2)[0]
        assert flags & 0x8000, ("not a response", sent, got)
        assert got[:2] == sent[:2], ("another ID", sent, got)


def _udp_round(port: int, batch: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Send a batch, then collect what comes back (matched to what was sent by ID)."""
    by_id = {p[:2]: p for p in batch if len(p) >= 2}
    replies = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        for p in batch:
            s.sendto(p, ("127.0.0.1", port))
        try:
            while True:
                got, _ = s.recvfrom(65535)
                replies.append((by_id.get(got[:2], b"\x00\x00"), got))
        except socket.timeout:
            pass
    return replies


def _valid_answer(port: int, tcp: bool) -> list[str]:
    q = dns.message.make_query("web.service.consul", "A")
    r = dns.query.tcp(q, "127.0.0.1", port=port, timeout=5) if tcp else dns.query.udp(q, "127.0.0.1", port=port, timeout=5)
    assert r.rcode() == dns.rcode.NOERROR
    return [item.address for rrset in r.answer for item in rrset]


def test_malformed_udp_packets(agent: AgentProc):
    port = agent.config["ports"]["dns"]
    sent = packets(1, COUNT)
    replies: list[tuple[bytes, bytes]] = []
    for i in range(0, len(sent), 100):
        replies += _udp_round(port, sent[i : i + 100])
    _check_replies(replies)
    assert len(replies) > COUNT // 4  # FORMERR and friends for most packets with a readable ID
    assert _valid_answer(port, tcp=False) == ["10.2.0.1"]
    assert _valid_answer(port, tcp=True) == ["10.2.0.1"]
    _no_traceback(agent)


def _frame(p: bytes) -> bytes:
    return struct.pack(">H", len(p)) + p


def test_malformed_tcp_messages_and_lying_length_prefixes(agent: AgentProc):
    port = agent.config["ports"]["dns"]
    sent = packets(2, COUNT // 2)
    # Framed honestly, pipelined on a few connections.
    for i in range(0, len(sent), 250):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"".join(_frame(p) for p in sent[i : i + 250]))
            s.shutdown(socket.SHUT_WR)
            _read_frames(s)
    rng = random.Random(3)
    good = _query("web.service.consul")
    lies = [
        struct.pack(">H", 0xFFFF) + good,  # says 65535, sends 36, then closes
        struct.pack(">H", 0) * 50 + _frame(good),  # empty messages, then a good one
        struct.pack(">H", len(good) - 10) + good,  # too short: the rest is the next "message"
        struct.pack(">H", len(good) + 5) + good + good,  # too long: swallows part of the next one
        b"\x00",  # half a prefix
        rng.randbytes(3000),
    ]
    for lie in lies:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(lie)
            s.shutdown(socket.SHUT_WR)
            _read_frames(s)
    # A connection that stops halfway does not hold up the others.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as stuck:
        stuck.sendall(struct.pack(">H", 500) + good)
        start = time.monotonic()
        assert _valid_answer(port, tcp=True) == ["10.2.0.1"]
        assert time.monotonic() - start < 2
    assert _valid_answer(port, tcp=False) == ["10.2.0.1"]
    _no_traceback(agent)


def _read_frames(s: socket.socket) -> list[bytes]:
    """Every framed reply until the server closes (or goes quiet); each must be a response."""
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    out = []
    while len(data) >= 2:
        size = struct.unpack_from(">H", data)[0]
        if len(data) < 2 + size:
            break
        msg, data = data[2 : 2 + size], data[2 + size :]
        assert len(msg) >= 12 and struct.unpack_from(">H", msg, 2)[0] & 0x8000, msg
        out.append(msg)
    return out


def _no_traceback(agent: AgentProc) -> None:
    assert agent.running()
    log = agent.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 500 : log.index("Traceback") + 3000]
    lines = [line for line in log.splitlines() if "dns" in line]
    assert len(lines) < 50, lines[:20]  # nothing is logged per packet
