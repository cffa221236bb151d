"""Guards for the write and read hot paths (issue 9): the invariants their speed rests on, not timings.

* (That the lean routes never reach FastAPI is test_api_misc.py's test_kv_hot_path_never_enters_fastapi.)
* Writes proposed in one event-loop turn share one Raft log entry, and each still gets its own
  result (of N check-and-set writes on one key at one index, exactly one wins).
* A write with nothing in flight is not held back for company.
* A response's head and body leave with one write on the socket.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proconsul.api.protocol import FLUSH_AT, CoalescingTransport

pytestmark = pytest.mark.anyio


async def test_writes_of_one_loop_turn_share_a_log_entry_with_their_own_results(api):
    from proconsul.server.commands import KVSRequest

    raft = api.agent.server.raft
    assert await raft.apply(KVSRequest(op="set", key="batch/k", value=b"init")) is True
    _, entry = api.agent.server.state.kv_get("batch/k")
    before = raft.last_log_index()
    writes = [raft.apply(KVSRequest(op="cas", key="batch/k", value=str(i).encode(), index=entry.modify_index)) for i in range(20)]
    writes += [raft.apply(KVSRequest(op="set", key=f"batch/{i}", value=b"x")) for i in range(20)]
    results = await asyncio.gather(*writes)
    assert results[:20].count(True) == 1 and results[:20].count(False) == 19
    assert results[20:] == [True] * 20
    # The first write went at once (nothing was in flight); the other 39 shared one entry.
    assert raft.last_log_index() - before == 2


async def test_a_lone_write_goes_at_once(api):
    from proconsul.server.commands import KVSRequest

    raft = api.agent.server.raft
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
