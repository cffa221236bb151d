"""User events: the replicated ring on a bare store, /v1/event through an in-process dev agent, py-consul,
the `event` CLI, and delivery filters across a 3-server + 2-client cluster."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import consul
import pytest

from conftest import PROCONSUL, AgentProc, Cluster, eventually
from proconsul.agent.watch import id_to_index
from proconsul.server.commands import EventFireRequest, encode
from proconsul.server.fsm import FSM
from proconsul.server.snapshot import read_snapshot, write_snapshot
from proconsul.server.state import EVENT_BUFFER, DirEntry, StateStore, UserEvent
from proconsul.server.watch import WatchSet

FIELDS = ["ID", "Name", "Payload", "NodeFilter", "ServiceFilter", "TagFilter", "Version", "LTime"]


def ev(n: int, name: str = "deploy", payload: bytes | None = None) -> UserEvent:
    return UserEvent(0, f"00000000-0000-0000-0000-{n:012d}", name, payload)


# ----------------------------------------------------------------- the ring on a bare store


def test_ring_keeps_the_last_256_oldest_first():
    st = StateStore()
    assert st.event_list() == (1, [])
    for i in range(300):
        stored = st.event_fire(10 + i, ev(i))
        assert (stored.ltime, stored.create_index) == (i + 1, 10 + i)
    index, events = st.event_list()
    assert index == 309 and len(events) == EVENT_BUFFER == 256
    assert [e.ltime for e in events] == list(range(45, 301))  # the 44 oldest were evicted
    assert events[0].id.endswith("000000000044") and events[-1].id.endswith("000000000299")


def test_name_filter_and_watch_fires_only_on_fire():
    st = StateStore()
    st.event_fire(5, ev(1, "deploy"))
    st.event_fire(6, ev(2, "restart"))
    assert [e.name for e in st.event_list("restart")[1]] == ["restart"]
    ws = WatchSet()
    st.event_list("", ws)
    st.kv_set(7, DirEntry("k", b"v"))
    assert not any(ch.fired for ch in ws.channels)
    st.event_fire(8, ev(3))
    assert any(ch.fired for ch in ws.channels)


def test_refire_of_the_same_id_is_a_no_op():
    st = StateStore()
    first = st.event_fire(5, ev(1))
    again = st.event_fire(9, ev(1))  # a retried proposal after an unknown outcome
    assert again == first
    index, events = st.event_list()
    assert len(events) == 1 and index == 5


def test_dump_load_and_snapshot_round_trip(tmp_path: Path):
    st = StateStore()
    for i in range(260):
        st.event_fire(3 + i, ev(i, payload=bytes([i % 256]) * 3 if i % 2 else None))
    tables = st.dump()
    assert len(tables["events"]) == 256 and [r[0] for r in tables["events"]] == sorted(r[0] for r in tables["events"])
    path = str(tmp_path / "snap.db")
    write_snapshot(path, tables, {"index": 262})
    back, _ = read_snapshot(path)
    other = StateStore()
    other.load(back)
    assert other.checksum() == st.checksum()
    assert other.event_list() == st.event_list()
    nxt = other.event_fire(300, ev(999))
    assert nxt.ltime == 261  # the Lamport-like clock continues from the ring


def test_fsm_applies_event_fire():
    st = StateStore()
    fsm = FSM(st)
    cmd = EventFireRequest(id="6f1d1c2e-0000-4000-8000-00000000000a", name="deploy", payload=b"\x00hi", node_filter="web-.*")
    row = fsm.apply(encode(cmd), 42)
    assert isinstance(row, UserEvent) and (row.ltime, row.create_index, row.payload, row.node_filter) == (1, 42, b"\x00hi", "web-.*")


def test_id_to_index_is_consuls_uuid_to_uint64():
    # uuidToUint64: the high and low 64 bits of the UUID XORed.
    eid = "b54fe110-7af5-cafc-d1fb-afc8ba432b1c"
    assert id_to_index(eid) == 0xB54FE1107AF5CAFC ^ 0xD1FBAFC8BA432B1C


# ----------------------------------------------------------------- /v1/event on an in-process agent


async def fire(api, name: str, body: bytes = b"", **params) -> dict:
    r = await api.put(f"/v1/event/fire/{name}", content=body, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def listed(api, **params) -> tuple[int, list[dict]]:
    r = await api.get("/v1/event/list", params=params)
    assert r.status_code == 200, r.text
    return int(r.headers["X-Consul-Index"]), r.json()


@pytest.mark.anyio
async def test_fire_answers_consuls_user_event(api):
    e = await fire(api, "api-shape", b"hello", node="api", service="web", tag="v1")
    assert list(e) == FIELDS
    assert (e["Name"], e["Payload"], e["NodeFilter"], e["ServiceFilter"], e["TagFilter"], e["Version"], e["LTime"]) == (
        "api-shape", base64.b64encode(b"hello").decode(), "api", "web", "v1", 1, 0)
    assert len(e["ID"]) == 36
    e = await fire(api, "api-empty")
    assert e["Payload"] is None and e["NodeFilter"] == ""
    assert (await fire(api, "deploy/web"))["Name"] == "deploy/web"  # the rest of the path, as Consul takes it


@pytest.mark.anyio
async def test_list_is_oldest_first_with_name_filter_and_uuid_index(api):
    a = await fire(api, "api-order", b"1")
    b = await fire(api, "api-order", b"2")
    await fire(api, "api-other")
    index, events = await listed(api, name="api-order")
    assert [e["ID"] for e in events] == [a["ID"], b["ID"]]
    assert list(events[0]) == FIELDS and events[0]["LTime"] < events[1]["LTime"] and events[0]["LTime"] > 0
    assert index == id_to_index(b["ID"])
    index, events = await listed(api, name="api-never-fired")
    assert (index, events) == (1, [])


@pytest.mark.anyio
async def test_agent_keeps_only_events_whose_filters_match_it(api):
    r = await api.put("/v1/agent/service/register", json={"Name": "evweb", "ID": "evweb-1", "Tags": ["blue", "v2"]})
    assert r.status_code == 200, r.text
    try:
        cases = {
            "node-hit": {"node": "^ap"},
            "node-miss": {"node": "^other$"},
            "svc-hit": {"service": "evw.b"},
            "svc-id-hit": {"service": "evweb-1"},
            "svc-miss": {"service": "^db$"},
            "tag-hit": {"service": "evweb", "tag": "^v2$"},
            "tag-miss": {"service": "evweb", "tag": "green"},
            "both-hit": {"node": "api", "service": "evweb"},
            "both-miss": {"node": "nope", "service": "evweb"},
        }
        for name, params in cases.items():
            await fire(api, f"filt-{name}", **params)
        _, events = await listed(api)
        got = {e["Name"][5:] for e in events if e["Name"].startswith("filt-")}
        assert got == {"node-hit", "svc-hit", "svc-id-hit", "tag-hit", "both-hit"}
    finally:
        await api.put("/v1/agent/service/deregister/evweb-1")


@pytest.mark.anyio
async def test_blocking_list_wakes_on_a_fire_and_not_before(api):
    index, _ = await listed(api, name="api-block")
    assert index == 1
    task = asyncio.create_task(api.get("/v1/event/list", params={"name": "api-block", "index": index, "wait": "10s"}))
    await asyncio.sleep(0.3)
    await fire(api, "api-unrelated")  # moves the ring, but not this list's index: keeps waiting
    await asyncio.sleep(0.3)
    assert not task.done()
    started = time.monotonic()
    e = await fire(api, "api-block", b"go")
    r = await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 2
    assert [x["ID"] for x in r.json()] == [e["ID"]] and int(r.headers["X-Consul-Index"]) == id_to_index(e["ID"])
    # A stale ?index (anything but the current one) answers at once; the current one times out with the same list.
    r = await api.get("/v1/event/list", params={"name": "api-block", "index": 12345, "wait": "5s"})
    assert r.json()[0]["ID"] == e["ID"]
    started = time.monotonic()
    r = await api.get("/v1/event/list", params={"name": "api-block", "index": id_to_index(e["ID"]), "wait": "300ms"})
    assert 0.25 < time.monotonic() - started < 3
    assert int(r.headers["X-Consul-Index"]) == id_to_index(e["ID"])


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path,params,body,status,message",
    [
        ("/v1/event/fire/", {}, b"", 400, "Missing name"),
        ("/v1/event/fire/bad", {"tag": "x"}, b"", 400, "Cannot provide tag filter without service filter"),
        ("/v1/event/fire/bad", {"node": "("}, b"", 400, "Invalid node filter: error parsing regexp: missing closing ): `(`"),
        ("/v1/event/fire/bad", {"service": "a**"}, b"", 400, "Invalid service filter: error parsing regexp: invalid nested repetition operator"),
        ("/v1/event/fire/bad", {"service": "s", "tag": "(?=x)"}, b"", 400, "Invalid tag filter: error parsing regexp: invalid or unsupported Perl syntax: `(?=`"),
        ("/v1/event/fire/bad", {}, b"x" * 450, 400, "user event exceeds configured limit of 512 bytes before encoding"),
        ("/v1/event/fire/bad", {}, b"x" * 420, 400, "encoded user event exceeds configured limit of 512 bytes after encoding"),
        ("/v1/event/fire/bad", {"dc": "dc9"}, b"", 500, "No path to datacenter"),
        ("/v1/event/fire/bad", {}, b"x" * 70000, 413, "Request body too large"),
    ],
)
async def test_bad_fires_are_refused_and_change_nothing(api, path, params, body, status, message):
    before = (await api.get("/v1/event/list")).json()
    r = await api.put(path, params=params, content=body)
    assert r.status_code == status, r.text
    assert message in r.text, r.text
    assert (await api.get("/v1/event/list")).json() == before


@pytest.mark.anyio
async def test_payload_just_under_the_limit_is_accepted_and_methods(api):
    e = await fire(api, "deploy", b"x" * 400)
    assert base64.b64decode(e["Payload"]) == b"x" * 400
    assert (await api.get("/v1/event/fire/deploy")).status_code == 405
    assert (await api.put("/v1/event/list")).status_code == 405
    assert (await api.get("/v1/event/list", params={"index": "x"})).status_code == 400


# ----------------------------------------------------------------- py-consul and the CLI against a dev agent


def cli(agent: AgentProc, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_HTTP_ADDR")}
    env["CONSUL_HTTP_ADDR"] = f"127.0.0.1:{agent.http_port}"
    return subprocess.run([PROCONSUL, *args], capture_output=True, env=env, timeout=30)


def test_py_consul_fire_and_list(dev_agent):
    c = consul.Consul(port=dev_agent.http_port)
    assert c.event.fire("pyc-deploy", "v1.2")
    index, events = c.event.list(name="pyc-deploy")
    assert [e["Payload"] for e in events] == [b"v1.2"]  # py-consul decodes the base64
    assert int(index) == id_to_index(events[-1]["ID"])


def test_event_cli_prints_the_id_and_validates_like_consul(dev_agent):
    p = cli(dev_agent, "event", "-name", "cli-deploy", "-node", "dev", "payload-1")
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    assert out.startswith("Event ID: ") and len(out.strip()) == len("Event ID: ") + 36
    [e] = dev_agent.http.get("/v1/event/list", params={"name": "cli-deploy"}).json()
    assert e["ID"] == out.split()[-1] and base64.b64decode(e["Payload"]) == b"payload-1" and e["NodeFilter"] == "dev"
    for args, message in [
        ((), "Event name must be specified"),
        (("-name", "x", "-node", "("), "Failed to compile node filter regexp: error parsing regexp: missing closing ): `(`"),
        (("-name", "x", "-tag", "t"), "Cannot provide tag filter without service filter."),
        (("-name", "x", "a", "b"), "Too many command line arguments."),
        (("-name", "x", "y" * 600), "Error firing event: Unexpected response code: 400 (user event exceeds configured limit of 512 bytes before encoding)"),
    ]:
        p = cli(dev_agent, "event", *args)
        assert p.returncode == 1 and p.stderr.decode().strip() == message, (args, p.stderr)
    p = subprocess.run([PROCONSUL, "event", "-name", "x", "-http-addr", "127.0.0.1:1"], capture_output=True, timeout=30)
    assert p.returncode == 1 and p.stderr.decode().startswith("Error querying Consul agent: ")


# ----------------------------------------------------------------- delivery across a cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("events"))
    for name, tags in (("c1", ["primary"]), ("c2", ["replica"])):
        conf = c.workdir / f"{name}.d"
        conf.mkdir()
        (conf / "svc.json").write_text('{"service": {"name": "db", "port": 5432, "tags": %s}}' % str(tags).replace("'", '"'))
    try:
        c.start()
        for name in ("c1", "c2"):
            c.add_client(name).start(["-config-dir", str(c.workdir / f"{name}.d")])
        for client in c.clients:
            client.wait_ready(30)
        yield c
    finally:
        c.close()


def names(agent: AgentProc) -> set[str]:
    return {e["Name"] for e in agent.http.get("/v1/event/list").json()}


@pytest.mark.cluster
def test_events_reach_only_the_agents_they_target(cluster: Cluster):
    c1, c2 = cluster.clients
    everyone = [*cluster.servers, c1, c2]
    fires = {
        "to-all": {},
        "to-c2": {"node": "^c2$"},
        "to-db": {"service": "^db$"},
        "to-primary": {"service": "db", "tag": "primary"},
        "to-servers": {"node": "^s[0-9]"},
    }
    for name, params in fires.items():
        r = c1.http.put(f"/v1/event/fire/{name}", params=params)
        assert r.status_code == 200, r.text
    want = {
        "c1": {"to-all", "to-db", "to-primary"},
        "c2": {"to-all", "to-c2", "to-db"},
        **{s.name: {"to-all", "to-servers"} for s in cluster.servers},
    }
    for agent in everyone:
        eventually(lambda: names(agent) == want[agent.name], 10, what=f"{agent.name} sees its events")
    # One ring, one order: every agent lists its share of it in the same order with the same IDs.
    full = {e["ID"]: e["LTime"] for e in cluster.servers[0].http.get("/v1/event/list", params={"name": "to-all"}).json()}
    for agent in everyone:
        [e] = agent.http.get("/v1/event/list", params={"name": "to-all"}).json()
        assert full == {e["ID"]: e["LTime"]}
