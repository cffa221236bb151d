"""The proxy's HTTP/1.1 paths (agent/l7.py): per-request L7 intentions over real loopback sockets, the upstream
side's observer, and the matchers' tables.

A tiny keep-alive app (h11, an HTTP implementation independent of the proxy's parser) sits behind a ``Relay`` on a
loopback listener; callers are raw sockets, so status lines, framing and connection reuse are asserted on the
wire, or httpx for streaming.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import h11
import httpx
import pytest

from proconsul.agent import l7
from proconsul.agent.l7 import Decide, Observer, Relay, decide_request, permission_matches

# Responses the app writes byte for byte (odd reason phrase and header case, to see whether they were rebuilt).
RAW = {
    "clean": b"HTTP/1.1 200 Fine\r\nX-Odd-Case: Kept\r\nContent-Length: 2\r\n\r\nok",
    "chunked": b"HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: t\r\n\r\n",
    "hop": b"HTTP/1.1 200 Fine\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
    "unframed": b"HTTP/1.1 200 Fine\r\nX-Odd-Case: Kept\r\n\r\nok",
}

# web may do anything but /admin; L7 rules as the intention match endpoint returns them.
MATCHES = [
    {
        "SourceNS": "default", "SourceName": "web", "DestinationNS": "default", "DestinationName": "api",
        "Precedence": 9, "Permissions": [
            {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
            {"Action": "allow", "HTTP": {"PathPrefix": "/"}},
        ],
    },
]


def web_decide(method: str, path: str, headers: list[tuple[str, str]]) -> tuple[bool, str]:
    return decide_request(MATCHES, "web", False, method, path, headers)


# ---- the app -------------------------------------------------------------------------------


class App:
    """HTTP/1.1 with keep-alive: /hello, /chunked, /echo (streams the body back), /sum, /upgrade (101 then raw echo), /early, /vanish, /abort, /bye,
    /raw/<name> (writes ``RAW[name]`` as it is, then closes)."""

    def __init__(self) -> None:
        self.connections = 0
        self.last_headers: dict[str, str] = {}
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        self.connections += 1
        conn_id = str(self.connections).encode()
        conn = h11.Connection(h11.SERVER)

        async def event() -> Any:
            while (ev := conn.next_event()) is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            return ev

        async def send(*events: Any) -> None:
            writer.write(b"".join(conn.send(e) or b"" for e in events))
            await writer.drain()

        async def body() -> bytes:
            out = b""
            while not isinstance(ev := await event(), h11.EndOfMessage):
                out += ev.data
            return out

        try:
            while isinstance(req := await event(), h11.Request):
                self.last_headers = {n.decode(): v.decode() for n, v in req.headers}
                path = req.target.decode()
                mine = (b"x-app-conn", conn_id)
                if path == "/echo":
                    await send(h11.Response(status_code=200, headers=[mine, (b"transfer-encoding", b"chunked")]))
                    while isinstance(ev := await event(), h11.Data):
                        await send(ev)
                    await send(h11.EndOfMessage())
                elif path == "/sum":
                    data = await body()
                    text = f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
                    await send(h11.Response(status_code=200, headers=[mine, (b"content-length", str(len(text)).encode())]),
                               h11.Data(data=text), h11.EndOfMessage())
                elif path == "/chunked":
                    await body()
                    await send(h11.Response(status_code=200, headers=[mine, (b"transfer-encoding", b"chunked")]))
                    for part in (b"one,", b"two,", b"three"):
                        await send(h11.Data(data=part))
                    await send(h11.EndOfMessage())
                elif path == "/upgrade":
                    await body()
                    await send(h11.InformationalResponse(status_code=101, headers=[(b"upgrade", b"echo"), (b"connection", b"upgrade")]))
                    data, _ = conn.trailing_data
                    while True:
                        writer.write(data)
                        await writer.drain()
                        if not (data := await reader.read(65536)):
                            return
                elif path == "/early":  # answers without reading the body, then closes as h11 must
                    await send(h11.Response(status_code=413, headers=[(b"content-length", b"0")]), h11.EndOfMessage())
                    return
                elif path == "/vanish":  # closes without answering
                    await body()
                    return
                elif path.startswith("/raw/"):
                    await body()
                    writer.write(RAW[path[5:]])
                    await writer.drain()
                    return
                elif path == "/abort":
                    await body()
                    await send(h11.Response(status_code=200, headers=[(b"content-length", b"1000")]), h11.Data(data=b"x" * 10))
                    return
                else:
                    await body()
                    extra = [(b"connection", b"close")] if path == "/bye" else []
                    await send(h11.Response(status_code=200, headers=[mine, (b"content-length", b"5"), *extra]),
                               h11.Data(data=b"" if req.method == b"HEAD" else b"hello"), h11.EndOfMessage())
                if conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError):
            pass
        finally:
            writer.close()


@dataclass
class Env:
    app: App
    port: int
    requests: list[tuple[int, float, bool]] = field(default_factory=list)
    sessions: list[tuple[int, int]] = field(default_factory=list)  # (bytes in, bytes out) of each ended relay
    relays: list[Relay] = field(default_factory=list)
    callers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.callers.append(writer)
        return reader, writer

    async def close(self) -> None:
        """Closes the callers and lets every relay and app handler end on its own (Python 3.11 logs an error for a cancelled one)."""
        for writer in self.callers:
            writer.close()
        await eventually(lambda: len(self.sessions) == len(self.relays))
        if self.app.handlers:
            await asyncio.wait(self.app.handlers, timeout=5)


@asynccontextmanager
async def proxy(decide: Decide = web_decide, app_down: bool = False) -> AsyncIterator[Env]:
    """The app behind a Relay on a loopback listener (no TLS: the handshake is the caller's business)."""
    app = App()
    app_port = await app.start()
    if app_down:
        app_port = free_port()
    env = Env(app, 0)
    loop = asyncio.get_running_loop()

    async def dial(factory: Callable[[], asyncio.Protocol]) -> tuple[asyncio.BaseTransport, Any]:
        return await loop.create_connection(factory, "127.0.0.1", app_port)

    def relay() -> Relay:
        env.relays.append(Relay(dial, decide, lambda *a: env.requests.append(a), lambda *a: env.sessions.append(a)))
        return env.relays[-1]

    server = await loop.create_server(relay, "127.0.0.1", 0)
    env.port = server.sockets[0].getsockname()[1]
    try:
        yield env
    finally:
        await env.close()
        server.close()
        assert app.server is not None
        app.server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response parsed by hand (independent of h11): status, headers (last wins), body by its framing."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if status < 200:
        return status, headers, b""
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        return status, headers, body
    return status, headers, await reader.read()  # close-delimited


async def eventually(fn: Callable[[], Any], timeout: float = 5.0) -> Any:
    for _ in range(int(timeout / 0.01)):
        if result := fn():
            return result
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


GET_HELLO = b"GET /hello HTTP/1.1\r\nHost: api\r\n\r\n"


# ---- the relay on the wire ------------------------------------------------------------------


def test_allowed_get_is_forwarded() -> None:
    async def scenario() -> None:
        async with proxy() as env, httpx.AsyncClient(base_url=env.url) as client:
            resp = await client.get("/hello?x=1")
            assert (resp.status_code, resp.text) == (200, "hello")
            resp = await client.head("/hello")  # a body-less answer with the GET's Content-Length
            assert (resp.status_code, resp.headers["content-length"], resp.content) == (200, "5", b"")
            assert (await client.get("/hello")).text == "hello"
            assert [(s, ok) for s, _, ok in env.requests] == [(200, True)] * 3
            assert env.app.connections == 1
    run(scenario)


def test_denied_request_gets_403_and_the_connection_stays_usable() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            writer.write(b"POST /admin/users HTTP/1.1\r\nHost: api\r\nContent-Length: 6\r\n\r\nsecret")
            status, headers, body = await read_response(reader)
            assert (status, body) == (403, b"RBAC: access denied")
            assert headers["content-type"] == "text/plain" and headers["content-length"] == "19"
            assert "connection" not in headers
            assert env.app.connections == 0  # the app is dialled on the first allowed request only
            writer.write(GET_HELLO)
            status, _, body = await read_response(reader)
            assert (status, body) == (200, b"hello")
            assert env.app.connections == 1
            assert [(s, ok) for s, _, ok in env.requests] == [(403, False), (200, True)]
            writer.close()
    run(scenario)


def test_chunked_request_body_and_chunked_response() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            writer.write(b"POST /sum HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            status, _, body = await read_response(reader)
            assert (status, body) == (200, f"11 {hashlib.sha256(b'hello world').hexdigest()}".encode())
            assert env.app.last_headers["transfer-encoding"] == "chunked"
            writer.write(b"GET /chunked HTTP/1.1\r\nHost: api\r\n\r\n")
            status, headers, body = await read_response(reader)
            assert (status, headers["transfer-encoding"], body) == (200, "chunked", b"one,two,three")
            writer.close()
    run(scenario)


def test_10mb_echo_streams_byte_identical() -> None:
    size, chunk = 10 * 1024 * 1024, bytes(range(256)) * 256  # 64 KiB

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    async def scenario() -> None:
        async with proxy() as env, httpx.AsyncClient(base_url=env.url, timeout=20) as client:
            got, digest = 0, hashlib.sha256()
            async with client.stream("POST", "/echo", content=upload()) as resp:
                assert resp.status_code == 200
                async for data in resp.aiter_raw():
                    got += len(data)
                    digest.update(data)
            assert got == size
            assert digest.hexdigest() == hashlib.sha256(chunk * (size // len(chunk))).hexdigest()
    run(scenario)


def test_http10_request_gets_a_close_delimited_response() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            writer.write(b"GET /chunked HTTP/1.0\r\n\r\n")  # no Host: HTTP/1.0 allows it
            status, headers, body = await read_response(reader)
            assert (status, body) == (200, b"one,two,three")
            assert "transfer-encoding" not in headers
            assert await reader.read() == b""
            writer.close()
    run(scenario)


def test_connection_close_ends_the_connection_after_the_response() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            writer.write(b"GET /hello HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
            status, headers, body = await read_response(reader)
            assert (status, headers["connection"], body) == (200, "close", b"hello")
            assert await reader.read() == b""
            writer.close()
    run(scenario)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            writer.write(GET_HELLO + b"GET /admin HTTP/1.1\r\nHost: api\r\n\r\n" + b"GET /chunked HTTP/1.1\r\nHost: api\r\n\r\n")
            answers = [await read_response(reader) for _ in range(3)]
            assert [(s, b) for s, _, b in answers] == [(200, b"hello"), (403, b"RBAC: access denied"), (200, b"one,two,three")]
            writer.close()
    run(scenario)


def test_upgrade_then_raw_bytes_both_ways() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            # Bytes right behind the request head belong to the new protocol.
            writer.write(b"GET /upgrade HTTP/1.1\r\nHost: api\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nearly")
            status, headers, _ = await read_response(reader)
            assert (status, headers["upgrade"], headers["connection"]) == (101, "echo", "upgrade")
            assert await reader.readexactly(5) == b"early"
            writer.write(b"\x00\xffraw bytes")
            assert await reader.readexactly(11) == b"\x00\xffraw bytes"
            writer.write_eof()
            assert await reader.read() == b""  # the app saw the half-close and closed; the tunnel ends
            writer.close()
            assert [(s, ok) for s, _, ok in env.requests] == [(101, True)]
    run(scenario)


def test_app_down_gets_503_and_the_connection_stays_usable() -> None:
    async def scenario() -> None:
        async with proxy(app_down=True) as env:
            reader, writer = await env.connect()
            for _ in range(2):
                writer.write(b"POST /x HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\n\r\nabc")
                status, headers, body = await read_response(reader)
                assert (status, body, headers["content-type"]) == (503, b"upstream connect error", "text/plain")
            writer.close()
        async with proxy(app_down=True) as env, httpx.AsyncClient(base_url=env.url) as client:
            resp = await client.head("/x")  # refusals to HEAD carry no body
            assert (resp.status_code, resp.headers["content-length"], resp.content) == (503, "22", b"")
            resp = await client.head("/admin")
            assert (resp.status_code, resp.headers["content-length"], resp.content) == (403, "19", b"")
            assert (await client.get("/x")).text == "upstream connect error"
    run(scenario)


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /hello HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"POST /sum HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk, allowed request
])
def test_malformed_request_gets_400_and_close(request_bytes: bytes) -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            writer.write(request_bytes)
            status, headers, _ = await read_response(reader)
            assert (status, headers["connection"]) == (400, "close")
            assert await reader.read() == b""
            writer.close()
    run(scenario)


def test_a_request_head_over_64_kib_gets_431_and_close() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            writer.write(b"GET /hello HTTP/1.1\r\nHost: api\r\nX-Big: " + b"x" * 66 * 1024)  # read in several pieces
            status, headers, _ = await read_response(reader)
            assert (status, headers["connection"]) == (431, "close")
            assert env.app.connections == 0
            assert await reader.read() == b""
            writer.close()
    run(scenario)


def test_expect_100_continue() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            writer.write(b"POST /sum HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            assert (await read_response(reader))[0] == 100
            writer.write(b"hello")
            status, _, body = await read_response(reader)
            assert (status, body) == (200, f"5 {hashlib.sha256(b'hello').hexdigest()}".encode())
            assert "expect" not in env.app.last_headers  # the proxy answered it
            # Refused before the body: the client may never send it, so the connection ends.
            writer.write(b"POST /admin HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            status, headers, _ = await read_response(reader)
            assert (status, headers["connection"]) == (403, "close")
            assert await reader.read() == b""
            writer.close()
    run(scenario)


def test_answer_before_the_whole_body_closes_the_caller_after_it() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            writer.write(b"POST /early HTTP/1.1\r\nHost: api\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
            status, _, _ = await read_response(reader)
            assert status == 413
            assert await reader.read() == b""  # the rest of the body will never be read
            assert [(s, ok) for s, _, ok in env.requests] == [(413, True)]
    run(scenario)


def test_app_closing_before_answering_gets_503_and_a_fresh_app_connection() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            writer.write(b"POST /vanish HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\n\r\nabc")
            status, headers, body = await read_response(reader)
            assert (status, body) == (503, b"upstream connect error")
            assert "connection" not in headers  # the request was read whole: the caller may go on
            writer.write(GET_HELLO)
            status, headers, _ = await read_response(reader)
            assert (status, headers["x-app-conn"]) == (200, "2")
    run(scenario)


def test_app_closing_mid_response_closes_the_caller() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            writer.write(b"GET /abort HTTP/1.1\r\nHost: api\r\n\r\n")
            with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
                await read_response(reader)
            writer.close()
    run(scenario)


def test_app_connection_is_kept_alive_and_redialled_after_the_app_closes_it() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            seen = []
            for path in (b"/hello", b"/hello", b"/bye", b"/hello"):
                writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: api\r\n\r\n")
                status, headers, _ = await read_response(reader)
                assert status == 200 and "connection" not in headers  # the app's Connection: close is its own
                seen.append(headers["x-app-conn"])
            assert seen == ["1", "1", "1", "2"]
            reader2, writer2 = await env.connect()
            writer2.write(GET_HELLO)
            assert (await read_response(reader2))[1]["x-app-conn"] == "3"  # one app connection per caller connection
            writer.close()
            writer2.close()
    run(scenario)


def test_byte_counts_returned() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            sent = b"GET /admin HTTP/1.1\r\nHost: api\r\n\r\n" + b"GET /hello HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"
            writer.write(sent)
            received = await reader.read()
            assert received.count(b"HTTP/1.1 ") == 2
            writer.close()
            assert await eventually(lambda: env.sessions) == [(len(sent), len(received))]
    run(scenario)


def test_a_clean_response_passes_byte_for_byte_and_the_others_are_rebuilt() -> None:
    async def scenario() -> None:
        async with proxy() as env:
            for name in ("clean", "chunked"):  # framed, nothing hop-by-hop: exactly the app's bytes
                reader, writer = await env.connect()
                writer.write(b"GET /raw/" + name.encode() + b" HTTP/1.1\r\nHost: api\r\n\r\n")
                assert await reader.readexactly(len(RAW[name])) == RAW[name]
                writer.close()
            reader, writer = await env.connect()  # the app's keep-alive terms are its own
            writer.write(b"GET /raw/hop HTTP/1.1\r\nHost: api\r\n\r\n")
            assert await read_response(reader) == (200, {"content-length": "2"}, b"ok")
            reader, writer = await env.connect()  # delimited by the close: chunked for an HTTP/1.1 caller
            writer.write(b"GET /raw/unframed HTTP/1.1\r\nHost: api\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head == b"HTTP/1.1 200 OK\r\nx-odd-case: Kept\r\ntransfer-encoding: chunked\r\n\r\n"
            assert await reader.readuntil(b"0\r\n\r\n") == b"2\r\nok\r\n0\r\n\r\n"
            writer.write(GET_HELLO)  # and the caller's connection goes on
            assert (await read_response(reader))[2] == b"hello"
    run(scenario)


def test_each_request_byte_is_parsed_once_and_a_clean_response_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The regression guard of the L7 hot path: one request parser per caller connection, fed each byte the caller
    sent exactly once (heads are not re-parsed), and a response that passes as it is is parsed once too."""
    fed: dict[str, list[int]] = {"requests": [], "responses": []}

    def counting(base: Any, key: str) -> Any:
        class Counting(base):  # type: ignore[misc, valid-type]
            def __init__(self, protocol: Any) -> None:
                super().__init__(protocol)
                fed[key].append(0)

            def feed_data(self, data: bytes) -> None:
                fed[key][-1] += len(data)
                super().feed_data(data)

        return Counting

    monkeypatch.setattr(l7.httptools, "HttpRequestParser", counting(l7.httptools.HttpRequestParser, "requests"))
    monkeypatch.setattr(l7.httptools, "HttpResponseParser", counting(l7.httptools.HttpResponseParser, "responses"))

    async def scenario() -> None:
        async with proxy() as env:
            reader, writer = await env.connect()
            sent = b""
            for chunk in (GET_HELLO * 3, b"GET /admin HTTP/1.1\r\nHost: api\r\n\r\n" + GET_HELLO, b"GET /raw/clean HTTP/1.1\r\nHost: api\r\n\r\n"):
                writer.write(chunk)
                sent += chunk
                for _ in range(chunk.count(b"HTTP/1.1\r\n")):
                    await read_response(reader)
            writer.close()
            await eventually(lambda: env.sessions)
            assert fed["requests"] == [len(sent)]
            assert len(fed["responses"]) == 1  # one app connection, its responses all passed as they were
            assert fed["responses"][0] == 4 * len(b"HTTP/1.1 200 \r\nx-app-conn: 1\r\ncontent-length: 5\r\n\r\nhello") + len(RAW["clean"])
    run(scenario)


# ---- the upstream side's observer ------------------------------------------------------------


def test_observer_notes_status_of_every_exchange() -> None:
    seen: list[int] = []
    obs = Observer(lambda status, seconds: seen.append(status))
    obs.request_data(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\n")  # pipelined
    obs.response_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no")
    obs.response_data(b"k")
    obs.response_data(b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\n")  # HEAD: the body is not there
    obs.request_data(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    obs.response_data(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    obs.request_data(b"GET /d HTTP/1.0\r\n\r\n")
    obs.response_data(b"HTTP/1.0 503 Service Unavailable\r\n\r\nuntil the close")
    assert seen == [200, 404, 201]
    obs.closed()
    assert seen == [200, 404, 201, 503]


def test_observer_stops_at_a_protocol_switch_or_bytes_it_cannot_follow() -> None:
    seen: list[int] = []
    obs = Observer(lambda status, seconds: seen.append(status))
    obs.request_data(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n\x00\x01")
    obs.response_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n\xff")
    obs.request_data(b"\x00 not http")
    obs.response_data(b"HTTP/1.1 200 OK\r\n\r\n")
    assert seen == [101]
    lost = Observer(lambda status, seconds: seen.append(status))
    lost.response_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # an answer to no request
    lost.request_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    lost.response_data(b"garbage")
    lost.closed()
    assert seen == [101]


# ---- remembered decisions ------------------------------------------------------------------


def test_decisions_are_remembered_until_the_intentions_change(monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[tuple[str, str]] = []
    real = l7.decide_request
    monkeypatch.setattr(l7, "decide_request", lambda m, s, d, method, path, h: computed.append((method, path)) or real(m, s, d, method, path, h))
    current = {"matches": MATCHES}
    denials: list[tuple[str, str]] = []
    decide = l7.Decisions(lambda: (current["matches"], False), "web", lambda method, path, reason: denials.append((method, path)))
    for _ in range(3):
        assert decide("GET", "/x", [])[0] is True
        assert decide("GET", "/admin", [])[0] is False
    assert computed == [("GET", "/x"), ("GET", "/admin")]
    assert denials == [("GET", "/admin")] * 3  # every refusal is heard of, remembered or not
    current["matches"] = [{**MATCHES[0], "Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "/"}}]}]  # a new object
    assert decide("GET", "/x", [])[0] is False
    assert computed[-1] == ("GET", "/x")
    # A permission that reads a header: nothing is remembered, each request is judged with its headers.
    current["matches"] = [{**MATCHES[0], "Permissions": [http(Header=[{"Name": "x-env", "Exact": "prod"}])]}]
    assert decide("GET", "/x", [("x-env", "prod")])[0] is True
    assert decide("GET", "/x", [("x-env", "dev")])[0] is False
    assert computed[-2:] == [("GET", "/x"), ("GET", "/x")]


# ---- the matchers ---------------------------------------------------------------------------


def http(**kw: Any) -> dict[str, Any]:
    return {"Action": "allow", "HTTP": kw}


H = [("x-env", "prod"), ("x-multi", "a"), ("x-multi", "b"), ("host", "api.internal")]


@pytest.mark.parametrize("perm, method, path, headers, expected", [
    ({"Action": "allow"}, "DELETE", "/anything", [], True),
    (http(PathExact="/foo"), "GET", "/foo", [], True),
    (http(PathExact="/foo"), "GET", "/foo?x=1", [], True),  # query ignored
    (http(PathExact="/foo"), "GET", "/foo/", [], False),
    (http(PathPrefix="/api"), "GET", "/api/v1?q=/x", [], True),
    (http(PathPrefix="/api"), "GET", "/ap", [], False),
    (http(PathPrefix="/api"), "GET", "/x?/api", [], False),
    (http(PathRegex="/v[0-9]+/.*"), "GET", "/v2/items?a=b", [], True),
    (http(PathRegex="/v[0-9]+/.*"), "GET", "/x/v2/items", [], False),  # a full match, not a search
    (http(PathRegex="/v[0-9"), "GET", "/v2/", [], False),  # invalid regex matches nothing
    (http(PathExact="/foo"), "GET", "http://api/foo?x", [], True),  # absolute-form target
    (http(Methods=["GET", "HEAD"]), "HEAD", "/", [], True),
    (http(Methods=["GET", "HEAD"]), "POST", "/", [], False),
    (http(Methods=["GET"]), "get", "/", [], False),  # case-sensitive
    (http(PathPrefix="/api", Methods=["GET"]), "POST", "/api", [], False),  # every condition must hold
    (http(Header=[{"Name": "X-Env", "Present": True}]), "GET", "/", H, True),  # names case-insensitive
    (http(Header=[{"Name": "x-other", "Present": True}]), "GET", "/", H, False),
    (http(Header=[{"Name": "x-env", "Exact": "prod"}]), "GET", "/", H, True),
    (http(Header=[{"Name": "x-env", "Exact": "pro"}]), "GET", "/", H, False),
    (http(Header=[{"Name": "x-env", "Prefix": "pr"}]), "GET", "/", H, True),
    (http(Header=[{"Name": "x-env", "Suffix": "od"}]), "GET", "/", H, True),
    (http(Header=[{"Name": "x-env", "Suffix": "pr"}]), "GET", "/", H, False),
    (http(Header=[{"Name": "x-env", "Regex": "p.o"}]), "GET", "/", H, False),  # full match
    (http(Header=[{"Name": "x-env", "Regex": "p.*d"}]), "GET", "/", H, True),
    (http(Header=[{"Name": "x-multi", "Exact": "a,b"}]), "GET", "/", H, True),  # values joined with ","
    (http(Header=[{"Name": "x-env", "Exact": "dev", "Invert": True}]), "GET", "/", H, True),
    (http(Header=[{"Name": "x-env", "Exact": "prod", "Invert": True}]), "GET", "/", H, False),
    (http(Header=[{"Name": "x-none", "Exact": "dev", "Invert": True}]), "GET", "/", H, False),  # Envoy: absent never matches
    (http(Header=[{"Name": "x-none", "Present": True, "Invert": True}]), "GET", "/", H, True),  # ...but for "not present"
    (http(Header=[{"Name": "x-env", "Present": True, "Invert": True}]), "GET", "/", H, False),
    (http(Header=[{"Name": ":authority", "Suffix": ".internal"}]), "GET", "/", H, True),
    (http(Header=[{"Name": "x-env", "Exact": "prod"}, {"Name": "x-multi", "Prefix": "z"}]), "GET", "/", H, False),
    (http(Header=[{"Name": "x-none"}]), "GET", "/", H, True),  # no criterion: Consul skips the rule
])
def test_permission_matches(perm: dict, method: str, path: str, headers: list, expected: bool) -> None:
    assert permission_matches(perm, method, path, headers) is expected


def ixn(source: str, action: str = "", perms: list | None = None, precedence: int = 9) -> dict[str, Any]:
    out = {"SourceNS": "default", "SourceName": source, "DestinationNS": "default", "DestinationName": "api",
           "Action": action, "Precedence": precedence}
    if perms:
        out["Permissions"] = perms
    return out


L7_WEB = ixn("web", perms=[
    {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
    {"Action": "allow", "HTTP": {"Methods": ["GET"]}},
])


@pytest.mark.parametrize("matches, source, default_allow, method, path, expected, reason", [
    ([], "web", True, "GET", "/", True, "Default behavior"),
    ([], "web", False, "GET", "/", False, "Default behavior"),
    ([ixn("web", "deny"), ixn("*", "allow", precedence=8)], "web", True, "GET", "/", False, "Matched L4 intention: default/web => default/api"),
    ([ixn("web", "deny"), ixn("*", "allow", precedence=8)], "db", False, "GET", "/", True, "Matched L4 intention: default/* => default/api"),
    ([ixn("db", "allow")], "web", False, "GET", "/", False, "Default behavior"),
    ([L7_WEB], "web", True, "GET", "/admin/x", False, "Matched L7 intention: default/web => default/api (Precedence: 9, Permissions: 2) (permission 0)"),
    ([L7_WEB], "web", False, "GET", "/items", True, "(permission 1)"),
    ([L7_WEB], "web", False, "POST", "/items", False, "Default behavior"),  # no permission matched: default decides
    ([L7_WEB], "web", True, "POST", "/items", True, "Default behavior"),
    # The first intention covering the source decides, even when a lower one would allow.
    ([L7_WEB, ixn("*", "allow", precedence=8)], "web", False, "POST", "/items", False, "Default behavior"),
    ([ixn("*", perms=[{"Action": "allow", "HTTP": {"PathExact": "/health"}}])], "anyone", False, "GET", "/health?full=1", True, "(permission 0)"),
])
def test_decide_request(matches: list, source: str, default_allow: bool, method: str, path: str, expected: bool, reason: str) -> None:
    allowed, why = decide_request(matches, source, default_allow, method, path, [])
    assert allowed is expected
    assert reason in why
