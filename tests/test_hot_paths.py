"""Guards for the write and read hot paths (issue 9): the invariants their speed rests on, not timings.

* (That the lean routes never reach FastAPI is test_api_misc.py's test_kv_hot_path_never_enters_fastapi.)
* Writes proposed in one event-loop turn share one Raft log entry, and each still gets its own
  result (of N check-and-set writes on one key at one index, exactly one wins).
* A write with nothing in flight is not held back for company.
* A response's head and body leave with one write on the socket.
* What lives as long as the agent, FastAPI's lazily loaded part included, is out of the GC's full passes.
* Raft messages are framed as zlib streams without being compressed, and pysyncobj's own connection reads them.
* Starting an agent imports neither httpx, python-hcl2 nor FastAPI.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proconsul.api.protocol import FLUSH_AT, CoalescingTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
async def lone_node():
    """A bare one-voter Raft node on this loop: nothing else proposes, so what is in flight is the test's."""
    from conftest import free_ports
    from proconsul.server.fsm import FSM
    from proconsul.server.raft import RaftNode, RaftTuning
    from proconsul.server.state import StateStore

    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    node = RaftNode(fsm=FSM(StateStore()), self_addr=addr, bind_addr=addr, peers=[addr], data_dir=None, password=None,
                    tuning=RaftTuning(), listen=False)
    node.start(asyncio.get_running_loop())
    try:
        for _ in range(500):
            if node.is_leader():
                break
            await asyncio.sleep(0.01)
        await node.barrier()
        yield node
    finally:
        node.stop()


async def test_writes_of_one_loop_turn_share_a_log_entry_with_their_own_results(lone_node):
    from proconsul.server.commands import KVSRequest

    raft = lone_node
    assert await raft.apply(KVSRequest(op="set", key="batch/k", value=b"init")) is True
    _, entry = raft.fsm.state.kv_get("batch/k")
    before = raft.last_log_index()
    writes = [raft.apply(KVSRequest(op="cas", key="batch/k", value=str(i).encode(), index=entry.modify_index)) for i in range(20)]
    writes += [raft.apply(KVSRequest(op="set", key=f"batch/{i}", value=b"x")) for i in range(20)]
    results = await asyncio.gather(*writes)
    assert results[:20].count(True) == 1 and results[:20].count(False) == 19
    assert results[20:] == [True] * 20
    # The first write went at once (nothing was in flight); the other 39 shared one entry.
    assert raft.last_log_index() - before == 2


async def test_a_lone_write_goes_at_once(lone_node):
    from proconsul.server.commands import KVSRequest

    raft = lone_node
    before = raft.last_log_index()
    task = asyncio.ensure_future(raft.apply(KVSRequest(op="set", key="alone", value=b"1")))
    await asyncio.sleep(0)  # the task runs up to its await: the entry is handed over, not queued for later
    assert raft._batch == [] and raft._submitted != raft._settled
    assert await task is True and raft.last_log_index() == before + 1


class _Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_head_and_body_leave_in_one_write():
    loop = asyncio.get_running_loop()
    real = _Recorder()
    t = CoalescingTransport(real, loop)
    t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    t.write(b"true")
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ntrue"]
    # Anything else is the real transport's.
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_large_writes_and_close_do_not_wait():
    loop = asyncio.get_running_loop()
    real = _Recorder()
    t = CoalescingTransport(real, loop)
    t.write(b"a" * FLUSH_AT)
    assert real.writes == [b"a" * FLUSH_AT]
    t.write(b"tail")
    t.close()
    assert real.writes[-1] == b"tail" and real.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert len(real.writes) == 2


def test_kv_entries_encode_byte_for_byte_as_json_dumps():
    import json
    import random

    from proconsul.api.kv import encode_entries
    from proconsul.server.endpoints.kv import entry_json
    from proconsul.server.state import DirEntry

    rnd = random.Random(7)
    alphabet = "ab/\"\\\n\t é中\U0001f600\x00"
    rows = []
    for i in range(200):
        key = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
        value = None if rnd.random() < 0.2 else bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 40)))
        session = rnd.choice(["", "", "0f3c2d2e-8b8a-4a51-b0a3-3a1d9e6c7f02"])
        rows.append(DirEntry(key, value, rnd.choice([0, 1, 2**64 - 1]), rnd.randint(0, 5), session, i + 1, i + 2))
    for n in (0, 1, 2, 17, 200):
        entries = [entry_json(r) for r in rows[:n]]
        assert encode_entries(entries) == json.dumps(entries, separators=(",", ":")).encode()


# ----------------------------------------------------------------- the lean path on the wire


def _exchange(port: int, raw: bytes, responses: int, timeout: float = 10.0, head: bool = False) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``raw`` on one connection and read ``responses`` HTTP/1.1 answers (Content-Length framed;
    ``head``: answers to HEAD, which carry no body whatever their Content-Length says)."""
    import socket

    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        buf = b""
        while len(out) < responses:
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                buf += chunk
            top, _, buf = buf.partition(b"\r\n\r\n")
            lines = top.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers.setdefault(k.strip().lower(), v.strip())
            n = 0 if head else int(headers.get("content-length", "0"))
            while len(buf) < n:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            out.append((status, headers, buf[:n]))
            buf = buf[n:]
    return out


def _req(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_lean_answers_on_the_wire_match_the_asgi_path(dev_agent):
    """Keep-alive, pipelining across lean and FastAPI routes, headers, escapes, OPTIONS and 405, HEAD."""
    port = dev_agent.http_port
    answers = _exchange(port, b"".join([
        _req("PUT", "/v1/kv/wire/a%20b", b"v1"),
        _req("GET", "/v1/kv/wire/a%20b?raw"),
        _req("GET", "/v1/agent/self"),  # FastAPI, pipelined between lean requests
        _req("GET", "/v1/kv/wire/?recurse=&stale="),
        _req("DELETE", "/v1/kv/wire/a%20b"),
        _req("PATCH", "/v1/kv/wire/x"),
        _req("OPTIONS", "/v1/kv/wire/x"),
        _req("GET", "/v1/status/leader"),
    ]), 8)
    assert [a[0] for a in answers] == [200, 200, 200, 200, 200, 405, 200, 200]
    put, raw, self_, listing, delete, patch, options, leader = answers
    assert put[2].strip() == b"true" and put[1]["content-type"] == "application/json"  # -dev answers pretty
    assert raw[2] == b"v1" and raw[1]["x-consul-index"].isdigit() and "date" in raw[1]
    assert raw[1]["vary"] == "Accept-Encoding" and raw[1]["x-consul-default-acl-policy"] == "allow"
    assert b'"Config"' in self_[2]
    assert b'"Key": "wire/a b"' in listing[2] and listing[1]["x-consul-effective-consistency"] == "stale"
    assert patch[2] == b"method PATCH not allowed" and "GET" in patch[1]["allow"]
    assert "PUT" in options[1]["allow"]
    assert leader[2].startswith(b'"127.0.0.1:')
    # HEAD takes uvicorn's path: the head of a 405, no body.
    (answer,) = _exchange(port, _req("HEAD", "/v1/kv/wire/x"), 1, head=True)
    assert answer[0] == 405


def test_lean_connection_close_chunked_bodies_and_limits(dev_agent):
    import socket

    port = dev_agent.http_port
    # Connection: close is honoured and said.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(_req("GET", "/v1/status/leader", extra="Connection: close\r\n"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b"connection: close" in data.lower()
    # HTTP/1.0 gets its answer and the connection ends.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /v1/status/leader HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert b" 200 " in data.split(b"\r\n", 1)[0]
    # A chunked body reaches the handler whole.
    chunked = b"PUT /v1/kv/wire/chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    (put,) = _exchange(port, chunked, 1)
    assert put[0] == 200
    (got,) = _exchange(port, _req("GET", "/v1/kv/wire/chunked?raw"), 1)
    assert got[2] == b"abcde"
    # Expect: 100-continue goes through uvicorn, which sends the interim answer.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"PUT /v1/kv/wire/expect HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 100 ")
        s.sendall(b"ok")
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    # A declared body past the agent's limit is refused before it is sent, and the connection ends.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"PUT /v1/kv/wire/huge HTTP/1.1\r\nHost: a\r\nContent-Length: 1073741824\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 413 ") and b"too large" in data
    # Past the KV value limit (but under the agent's): the KV handler's own answer, Consul's text.
    (big,) = _exchange(port, _req("PUT", "/v1/kv/wire/big", b"x" * (512 * 1024 + 1)), 1)
    assert big[0] == 413 and b"too large, max size: 524288 bytes" in big[2]


def test_lean_requests_use_one_write_and_no_asgi_cycle(dev_agent):
    """The guard: a lean request never builds uvicorn's RequestResponseCycle."""
    import proconsul.api.protocol as protocol

    # The served protocol class answers lean routes itself (see the module); checked through its hooks.
    assert protocol.HTTPProtocol.on_headers_complete is not protocol.HttpToolsProtocol.on_headers_complete
    answers = _exchange(dev_agent.http_port, _req("GET", "/v1/status/leader") * 3, 3)
    assert [a[0] for a in answers] == [200, 200, 200]


_FROZEN_PROBE = """
import asyncio, gc, sys
from proconsul.agent import config
from proconsul.agent.agent import Agent

async def main():
    flags = {"dev": True, "port_http": int(sys.argv[1]), "port_dns": -1, "port_server": int(sys.argv[2]), "node_name": "frozen"}
    agent = Agent(config.build(flags, [], []))
    run = asyncio.ensure_future(agent.run())
    app = None
    for _ in range(400):
        await asyncio.sleep(0.025)
        if agent._http is not None and app is None:
            app = agent._http.config.app
        if app is not None and app._loaded.is_set() and gc.get_freeze_count() > 0:
            break
    await asyncio.sleep(0.2)  # run() freezes right after the load
    fastapi = app.fastapi_app
    tracked = {id(o) for o in gc.get_objects()}  # generations 0-2 only: frozen objects are not among them
    print("unfrozen" if id(fastapi) in tracked or id(fastapi.router) in tracked else "frozen", flush=True)
    agent.request_stop()
    await run

asyncio.run(main())
"""


def test_the_http_apis_objects_are_kept_out_of_the_gcs_full_passes():
    """FastAPI loads on a thread after the agent has started (and frozen what it built); once it is there it is
    frozen too, or every full collection walks its ~45k objects (20 ms measured) with every connection waiting."""
    import subprocess
    import sys

    from conftest import free_ports

    http, server = free_ports(2)
    out = subprocess.run([sys.executable, "-c", _FROZEN_PROBE, str(http), str(server)], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "frozen", out.stderr[-2000:]


class _Poller:
    def subscribe(self, *args: Any) -> None:
        pass

    def unsubscribe(self, *args: Any) -> None:
        pass


def _pair(ours: type, theirs: type, password: str | None = None) -> tuple[Any, Any, list, list]:
    """Two connected pysyncobj connections of the given classes on a socketpair, with what each receives."""
    import socket

    from pysyncobj.encryptor import getEncryptor

    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    got_a: list = []
    got_b: list = []
    conn_a = ours(_Poller(), onMessageReceived=got_a.append, socket=a)
    conn_b = theirs(_Poller(), onMessageReceived=got_b.append, socket=b)
    if password is not None:
        conn_a.encryptor = conn_b.encryptor = getEncryptor(password)
    return conn_a, conn_b, got_a, got_b


def _deliver(conn: Any) -> None:
    from pysyncobj.poller import POLL_EVENT_TYPE

    conn._TcpConnection__processConnection(conn.fileno(), POLL_EVENT_TYPE.READ)


@pytest.mark.parametrize("password", [None, "cluster-key"])
def test_raft_messages_are_framed_as_zlib_but_not_compressed(password):
    """pysyncobj zlib-compresses every message (30-50 µs each, twice on a write's critical path); ours are zlib
    streams of stored blocks, which pysyncobj's own connection (an older server's) reads back unchanged."""
    import socket
    import zlib

    from pysyncobj.tcp_connection import TcpConnection

    from proconsul.server.raft import _Connection, _stored_zlib

    for size in (0, 1, 300, 0xFFFF, 0xFFFF + 1, 200_000):
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        assert zlib.decompress(_stored_zlib(data)) == data

    message = {"type": "append_entries", "term": 3, "entries": [(b"\x15" + bytes(range(200)), 7, 3)], "commit_index": 6}
    ours, stock, got_ours, got_stock = _pair(_Connection, TcpConnection, password)
    ours.send(message)
    ours.send({"big": b"x" * 300_000})
    for _ in range(50):
        _deliver(stock)
        if len(got_stock) == 2:
            break
        ours._TcpConnection__trySendBuffer()
    assert got_stock == [message, {"big": b"x" * 300_000}]
    stock.send("answer")
    _deliver(ours)
    assert got_ours == ["answer"]

    if password is None:  # on the wire: a length, a zlib header for stored blocks, the pickle itself
        a, b = socket.socketpair()
        _Connection(_Poller(), socket=a).send(message)
        frame = b.recv(65536)
        assert len(frame) == 4 + int.from_bytes(frame[:4], "little") and frame[4:6] == b"\x78\x01"
        assert b"append_entries" in frame
        a.close()
        b.close()


def test_starting_an_agent_imports_none_of_the_slow_libraries():
    """`proconsul agent` gets to a leader in ~0.3 s; httpx (CLI, HTTP checks, the standalone proxy), python-hcl2
    (HCL ACL rules) and FastAPI (loaded on a thread once the agent runs) would add ~100, ~60 and ~350 ms."""
    import subprocess
    import sys

    probe = (
        "import sys; import proconsul.agent.cli as cli; cli.parser(); import proconsul.agent.agent; "
        "print(' '.join(m for m in ('httpx', 'hcl2', 'lark', 'fastapi', 'pydantic', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
