"""Anti-entropy against a scripted fake server: what gets pushed, and races with local changes."""

from __future__ import annotations

import asyncio
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
