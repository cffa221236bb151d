"""Anti-entropy against a scripted fake server: what gets pushed, and races with local changes."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from proconsul.agent.antientropy import AntiEntropy
from proconsul.agent.local import LocalState
from proconsul.agent.metrics import Metrics
from proconsul.agent.structs import parse_service
from proconsul.server.commands import RegisterRequest
from proconsul.server.structs import QueryMeta, QueryReply

pytestmark = pytest.mark.anyio


class FakeAgent:
    """Just what AntiEntropy uses; ``rpc`` records calls and can be held open."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(node_name="n1", ae_interval=60.0, node_id="id", datacenter="dc1")
        self.metrics = Metrics()
        self.local = LocalState(None)
        self.calls: list[tuple[str, Any]] = []
        self.gate: asyncio.Event | None = None
        self.remote_services: list[dict] = []
        self.remote_checks: list[dict] = []

    def agent_token(self) -> str:
        return ""

    def node_registration(self) -> RegisterRequest:
        return RegisterRequest(node="n1", id="id", address="127.0.0.1", datacenter="dc1")

    async def rpc(self, method: str, args: Any) -> Any:
        self.calls.append((method, args))
        if method == "Catalog.NodeServiceList":
            return QueryReply(QueryMeta(), {"Node": None, "Services": self.remote_services})
        if method == "Health.NodeChecks":
            return QueryReply(QueryMeta(), self.remote_checks)
        if self.gate is not None and method == "Catalog.Register":
            await self.gate.wait()
        return True


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def writes(agent: FakeAgent) -> list[tuple[str, str]]:
    out = []
    for method, args in agent.calls:
        if method == "Catalog.Register" and args.req.service is not None:
            out.append(("register", args.req.service.id))
        elif method == "Catalog.Deregister":
            out.append(("deregister", args.req.service_id or args.req.check_id or args.req.node))
    return out


async def test_a_service_deleted_while_its_registration_is_in_flight_is_still_deregistered():
    agent = FakeAgent()
    ae = AntiEntropy(agent)
    agent.local.add_service(parse_service({"Name": "web"}))
    agent.gate = asyncio.Event()
    sync = asyncio.create_task(ae.sync_changes())
    await asyncio.sleep(0)  # the registration is now waiting on the server
    agent.local.remove_service("web")
    agent.gate.set()
    await sync
    await ae.sync_changes()
    assert writes(agent) == [("register", "web"), ("deregister", "web")]
    assert "web" not in agent.local.services


async def test_full_sync_deletes_strangers_but_not_the_leaders_own():
    agent = FakeAgent()
    ae = AntiEntropy(agent)
    agent.remote_services = [{"ID": "stranger"}, {"ID": "consul"}]
    agent.remote_checks = [{"CheckID": "serfHealth"}, {"CheckID": "old-check"}]
    await ae.sync_full()
    assert sorted(writes(agent)) == [("deregister", "old-check"), ("deregister", "stranger")]


async def test_in_sync_services_are_not_pushed_again():
    agent = FakeAgent()
    ae = AntiEntropy(agent)
    agent.local.add_service(parse_service({"Name": "api", "Port": 1}))
    await ae.sync_changes()
    await ae.sync_changes()
    assert writes(agent) == [("register", "api")]


async def test_leaving_waits_for_the_heartbeat_and_sync_that_are_out_and_sends_nothing_after():
    """A heartbeat the leader handles after our Leave makes the node alive again (a clean-clone run saw the left
    client back in the catalog 1 ms after it left). So the agent waits for the heartbeat and catalog sync that are
    out, stops both loops, and only then sends Internal.Leave."""
    from proconsul.agent import config
    from proconsul.agent.agent import Agent
    from proconsul.server.structs import HeartbeatReply

    agent = Agent(config.build({"dev": True, "node_name": "leaver", "port_http": -1, "port_dns": -1}, [], []))
    agent.config = dataclasses.replace(agent.config, liveness_interval=0.01)
    calls: list[str] = []
    held = {"Internal.Heartbeat": asyncio.Event(), "Catalog.Register": asyncio.Event()}

    async def rpc(method: str, args: Any, timeout: float | None = None) -> Any:
        calls.append(method)
        gate = held.get(method)
        if gate is not None and calls.count(method) == 3:  # the third of each is held open
            await gate.wait()
        if method == "Internal.Heartbeat":
            return HeartbeatReply(servers=[], leader="")
        if method == "Catalog.NodeServiceList":
            return QueryReply(QueryMeta(), {"Node": None, "Services": []})
        if method == "Health.NodeChecks":
            return QueryReply(QueryMeta(), [])
        return True

    agent.rpc = rpc  # type: ignore[method-assign]
    agent._tasks = [asyncio.create_task(agent._heartbeat_loop(), name="heartbeat"),
                    asyncio.create_task(agent.ae.run(), name="anti-entropy")]
    for i in range(3):
        agent.local.add_service(parse_service({"Name": f"s{i}"}))
        await asyncio.sleep(0.05)
    assert calls.count("Internal.Heartbeat") == 3 and calls.count("Catalog.Register") >= 3  # both held open now
    leaving = asyncio.create_task(agent.leave())
    await asyncio.sleep(0.1)
    assert "Internal.Leave" not in calls
    held["Internal.Heartbeat"].set()
    await asyncio.sleep(0.1)
    assert "Internal.Leave" not in calls
    held["Catalog.Register"].set()
    await asyncio.wait_for(leaving, 5)
    assert calls[-1] == "Internal.Leave"
    agent.local.add_service(parse_service({"Name": "late"}))
    await asyncio.sleep(0.1)
    assert calls[-1] == "Internal.Leave"  # neither loop sends anything after the leave
    assert all(t.done() for t in agent._tasks)
