"""The ACL part of the state store and its FSM commands: pure, no Raft, no clock."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from proconsul.server.acl import ACLResolver, build_authorizer, global_management_policy, token_json
from proconsul.server.commands import (
    ACLBootstrapRequest,
    ACLPolicyRecord,
    ACLPolicyRequest,
    ACLRoleRecord,
    ACLRoleRequest,
    ACLTokenRecord,
    ACLTokenRequest,
    encode,
)
from proconsul.server.errors import PermissionDenied, StoreError
from proconsul.server.fsm import FSM
from proconsul.server.state import StateStore
from proconsul.server.state.acl import ANONYMOUS_ID, GLOBAL_MANAGEMENT_ID
from proconsul.server.watch import WatchSet

P1 = "11111111-1111-4111-8111-111111111111"
R1 = "22222222-2222-4222-8222-222222222222"
T1, S1 = "33333333-3333-4333-8333-333333333333", "44444444-4444-4444-8444-444444444444"


def _fsm() -> tuple[FSM, StateStore]:
    st = StateStore()
    return FSM(st), st


def _apply(fsm: FSM, cmd, index: int):
    return fsm.apply(encode(cmd), index)


def _seed(fsm: FSM) -> None:
    assert _apply(fsm, ACLPolicyRequest("set", policies=[global_management_policy()]), 2) is None
    assert _apply(fsm, ACLPolicyRequest("set", policies=[ACLPolicyRecord(P1, "reader", rules='acl = "read"')]), 3) is None
    assert _apply(fsm, ACLRoleRequest("set", roles=[ACLRoleRecord(R1, "r1", policies=[P1])]), 4) is None


def test_links_must_exist_and_names_are_unique():
    fsm, st = _fsm()
    _seed(fsm)
    err = _apply(fsm, ACLTokenRequest("set", tokens=[ACLTokenRecord(T1, S1, policies=["nope"])]), 5)
    assert isinstance(err, StoreError) and str(err) == "No such policy with ID: nope"
    err = _apply(fsm, ACLPolicyRequest("set", policies=[ACLPolicyRecord("other", "READER")]), 5)
    assert str(err) == 'Invalid Policy: A Policy with Name "READER" already exists'
    err = _apply(fsm, ACLRoleRequest("set", roles=[ACLRoleRecord("r2", "R1")]), 5)
    assert str(err) == 'Invalid Role: A Role with Name "R1" already exists'
    assert st.acl_token_list()[1] == []  # nothing half-written
    assert _apply(fsm, ACLTokenRequest("set", tokens=[ACLTokenRecord(T1, S1, policies=[P1], roles=[R1])]), 6) is None
    err = _apply(fsm, ACLTokenRequest("set", tokens=[ACLTokenRecord("other", S1)]), 7)
    assert str(err) == "Invalid Token: SecretID is already in use"
    err = _apply(fsm, ACLTokenRequest("set", tokens=[ACLTokenRecord(T1, "changed")]), 7)
    assert str(err) == "The SecretID cannot be changed"


def test_reads_follow_renames_and_drop_dead_links():
    fsm, st = _fsm()
    _seed(fsm)
    _apply(fsm, ACLTokenRequest("set", tokens=[ACLTokenRecord(T1, S1, "t", policies=[P1], roles=[R1])]), 5)
    index, view = st.acl_token_get(T1)
    assert index == 5 and view.policies == ((P1, "reader"),) and view.roles == ((R1, "r1"),)
    assert st.acl_token_get_by_secret(S1)[1].token.accessor_id == T1
    ws = WatchSet()
    st.acl_token_get(T1, ws)
    _apply(fsm, ACLPolicyRequest("set", policies=[ACLPolicyRecord(P1, "renamed", rules='acl = "read"')]), 6)
    assert any(ch.fired for ch in ws.channels)  # a policy rename wakes token readers: the names they show moved
    index, view = st.acl_token_get(T1)
    assert index == 6 and view.policies == ((P1, "renamed"),)
    assert st.acl_policy_get(name="RENAMED")[1].id == P1 and st.acl_policy_get(name="reader")[1] is None
    _apply(fsm, ACLPolicyRequest("delete", ids=[P1]), 7)
    view = st.acl_token_get(T1)[1]
    assert view.policies == () and view.token.policies == (P1,)  # the stored link stays; reads drop it
    assert st.acl_role_get(R1)[1].policies == ()
    assert "Policies" not in token_json(view)
    assert [v.token.accessor_id for v in st.acl_token_list(role=R1)[1]] == [T1]
    with pytest.raises(StoreError, match="can only filter by one of"):
        st.acl_token_list(policy=P1, role=R1)


def test_builtins_are_protected():
    fsm, st = _fsm()
    _seed(fsm)
    gm = global_management_policy()
    gm.rules = 'acl = "read"'
    err = _apply(fsm, ACLPolicyRequest("set", policies=[gm]), 5)
    assert str(err) == "Changing the Rules for the builtin global-management policy is not permitted"
    err = _apply(fsm, ACLPolicyRequest("delete", ids=[GLOBAL_MANAGEMENT_ID]), 5)
    assert str(err) == "Deletion of the builtin global-management policy is not permitted"
    _apply(fsm, ACLTokenRequest("set", tokens=[ACLTokenRecord(ANONYMOUS_ID, "anonymous")]), 6)
    err = _apply(fsm, ACLTokenRequest("delete", ids=[ANONYMOUS_ID]), 7)
    assert str(err) == "Deletion of the builtin anonymous token is not permitted"


def test_bootstrap_once_then_only_with_the_reset_index():
    fsm, st = _fsm()
    _seed(fsm)
    assert st.acl_can_bootstrap() == (True, 0)
    assert _apply(fsm, ACLBootstrapRequest(ACLTokenRecord(T1, S1, policies=[GLOBAL_MANAGEMENT_ID])), 10) is None
    assert st.acl_can_bootstrap() == (False, 10)
    again = ACLBootstrapRequest(ACLTokenRecord("a2", "s2", policies=[GLOBAL_MANAGEMENT_ID]))
    assert str(_apply(fsm, again, 11)) == "ACL bootstrap no longer allowed"
    again.reset_index = 9
    assert str(_apply(fsm, again, 12)) == "Invalid ACL bootstrap reset index"
    again.reset_index = 10
    assert _apply(fsm, again, 13) is None and st.acl_can_bootstrap() == (False, 13)


def test_snapshot_round_trip_keeps_rows_and_bootstrap():
    fsm, st = _fsm()
    _seed(fsm)
    _apply(fsm, ACLBootstrapRequest(ACLTokenRecord(T1, S1, policies=[GLOBAL_MANAGEMENT_ID],
                                                   service_identities=[{"ServiceName": "web", "Datacenters": ["dc1"]}])), 8)
    other = StateStore()
    other.load(st.dump())
    assert other.checksum() == st.checksum()
    assert other.acl_token_get_by_secret(S1)[1] == st.acl_token_get_by_secret(S1)[1]
    assert other.acl_can_bootstrap() == (False, 8)
    assert other.acl_role_get(name="r1")[1].role.policies == (P1,)


def test_resolver_caches_until_an_acl_write_and_builds_authorizers():
    fsm, st = _fsm()
    _seed(fsm)
    srv = SimpleNamespace(state=st, config=SimpleNamespace(acl_default_policy="deny", datacenter="dc1"))
    resolver = ACLResolver(srv)
    with pytest.raises(PermissionDenied, match="ACL not found"):
        resolver.resolve(S1)
    assert resolver.resolve("").accessor_id == ANONYMOUS_ID and not resolver.resolve("").authorizer.acl_read()
    _apply(fsm, ACLTokenRequest("set", tokens=[ACLTokenRecord(T1, S1, roles=[R1])]), 5)
    first = resolver.resolve(S1)
    assert first.authorizer.acl_read() and not first.authorizer.acl_write()
    assert resolver.resolve(S1) is first  # cached
    _apply(fsm, ACLTokenRequest("set", tokens=[ACLTokenRecord(T1, S1, policies=[GLOBAL_MANAGEMENT_ID])]), 6)
    mgmt = resolver.resolve(S1)
    assert mgmt is not first and mgmt.authorizer.acl_write() and mgmt.authorizer.key_write("anything")
    assert "lacks permission 'acl:write'" in str(first.denied("acl", "write"))
    # Expired tokens are not found (the reader's clock decides).
    _apply(fsm, ACLTokenRequest("set", tokens=[ACLTokenRecord(T1, S1, policies=[P1], expiration_time="2000-01-01T00:00:00Z")]), 7)
    with pytest.raises(PermissionDenied, match="ACL not found"):
        resolver.resolve(S1)


def test_identities_become_synthetic_policies():
    fsm, st = _fsm()
    _seed(fsm)
    token = st.acl_token_get(T1)[1]
    assert token is None
    from proconsul.server.state.acl import ACLToken

    t = ACLToken(T1, S1, service_identities=({"ServiceName": "web"},), node_identities=({"NodeName": "n1", "Datacenter": "dc1"},))
    authz = build_authorizer(t, (), (), "deny", "dc1")
    assert authz.service_write("web") and authz.service_write("web-sidecar-proxy") and not authz.service_write("db")
    assert authz.node_write("n1") and not authz.node_write("n2") and authz.service_read("db")
    elsewhere = build_authorizer(t._replace(service_identities=({"ServiceName": "web", "Datacenters": ["dc2"]},)), (), (), "deny", "dc1")
    assert not elsewhere.service_write("web")


def test_acl_config_block_and_secrets_stay_out_of_repr(tmp_path):
    import json

    from proconsul.agent import config

    path = tmp_path / "acl.json"
    path.write_text(json.dumps({"acl": {"enabled": True, "default_policy": "deny", "down_policy": "async-cache", "token_ttl": "45s",
                                        "tokens": {"master": "m-secret", "agent_master": "r-secret", "agent": "a-secret", "default": "d-secret",
                                                   "replication": "x"}, "enable_token_persistence": True}}))
    cfg = config.build({"dev": True}, [str(path)], [])
    assert (cfg.acl_token_initial_management, cfg.acl_token_agent_recovery, cfg.acl_token_agent, cfg.acl_token_default) == (
        "m-secret", "r-secret", "a-secret", "d-secret")
    assert (cfg.acl_down_policy, cfg.acl_token_ttl, cfg.server_config().acl_initial_management) == ("async-cache", 45.0, "m-secret")
    assert "secret" not in repr(cfg) and "secret" not in repr(cfg.server_config())
    for bad, text in [({"tokens": {"bogus": "x"}}, "invalid config key acl.tokens.bogus"),
                      ({"down_policy": "maybe"}, "acl.down_policy: must be one of allow, deny, extend-cache, async-cache, not 'maybe'")]:
        path.write_text(json.dumps({"acl": bad}))
        with pytest.raises(config.ConfigError, match=text.replace(".", r"\.")):
            config.build({"dev": True}, [str(path)], [])


@pytest.mark.anyio
async def test_agent_resolve_for_the_next_step():
    """``proconsul.agent.acl.resolve``: what every endpoint will call to enforce ACLs."""
    import anyio

    from conftest import free_ports
    from proconsul.agent import config
    from proconsul.agent.acl import resolve
    from proconsul.agent.agent import Agent

    (server_port,) = free_ports(1)
    cfg = config.build({"dev": True, "port_http": -1, "port_dns": -1, "port_server": server_port, "node_name": "res"}, [], [])
    from dataclasses import replace

    cfg = replace(cfg, acl_enabled=True, acl_default_policy="deny", acl_token_initial_management=S1, acl_token_agent_recovery="recover")
    agent = Agent(cfg)
    await agent.start()
    try:
        with anyio.fail_after(10):
            while agent.server.state.acl_token_get_by_secret(S1)[1] is None:
                await anyio.sleep(0.02)
        mgmt = await resolve(agent, S1)
        assert mgmt.authorizer.acl_write() and mgmt.authorizer.key_write("x")
        anon = await resolve(agent, "")
        assert anon.accessor_id == ANONYMOUS_ID and not anon.authorizer.key_read("x")
        recovery = await resolve(agent, "recover")
        assert recovery.token is None and recovery.authorizer.agent_write("res") and not recovery.authorizer.agent_write("other")
        with pytest.raises(PermissionDenied, match="ACL not found"):
            await resolve(agent, "unknown")
        assert await resolve(replace_agent_config(agent, acl_enabled=False), S1) is None
    finally:
        await agent.stop()


def replace_agent_config(agent, **changes):
    from dataclasses import replace

    return SimpleNamespace(config=replace(agent.config, **changes), server=agent.server)


@pytest.mark.anyio
@pytest.mark.parametrize("policy,allowed", [("allow", True), ("deny", False)])
async def test_client_down_policy_allow_and_deny(policy, allowed):
    """No server answers and nothing is cached: down_policy allow/deny decides every check (not ACL management)."""
    from proconsul.agent import config
    from proconsul.agent.acl import resolve
    from proconsul.server.errors import RPCError

    async def no_servers(method, args):
        raise RPCError("no servers")

    cfg = config.build({"dev": True, "node_name": "c", "port_http": -1, "port_dns": -1}, [], [])
    from dataclasses import replace

    cfg = replace(cfg, acl_enabled=True, acl_default_policy="deny", acl_down_policy=policy)
    agent = SimpleNamespace(config=cfg, server=None, rpc=no_servers)
    got = await resolve(agent, "some-secret")
    assert got.authorizer.key_write("k") is allowed and got.authorizer.service_read("web") is allowed
    assert not got.authorizer.acl_write()
    agent.config = replace(cfg, acl_down_policy="extend-cache")  # nothing cached to extend: the error shows
    with pytest.raises(RPCError):
        await resolve(agent, "other-secret")


@pytest.mark.anyio
async def test_the_leader_reaps_expired_tokens():
    """Consul's token reaping: an expired token is deleted through Raft by the leader, unexpired ones stay."""
    from dataclasses import replace

    import anyio
    import httpx

    from conftest import free_ports
    from proconsul.agent import config
    from proconsul.agent.agent import Agent
    from proconsul.api.app import build_app

    (server_port,) = free_ports(1)
    cfg = config.build({"dev": True, "port_http": -1, "port_dns": -1, "port_server": server_port, "node_name": "reap"}, [], [])
    agent = Agent(replace(cfg, acl_enabled=True, acl_default_policy="deny", acl_token_initial_management=S1))
    await agent.start()
    try:
        st = agent.server.state
        with anyio.fail_after(10):
            while st.acl_token_get_by_secret(S1)[1] is None:
                await anyio.sleep(0.02)
        # One-second tokens are below Consul's minimum TTL; lower it on this server only.
        agent.server.config = replace(agent.server.config, acl_token_min_expiration_ttl=0.5)
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(agent)), base_url="http://agent", headers={"X-Consul-Token": S1})
        short = (await api.put("/v1/acl/token", json={"Description": "short", "ExpirationTTL": "1s"})).json()
        long = (await api.put("/v1/acl/token", json={"Description": "long", "ExpirationTTL": "1h"})).json()
        assert st.acl_token_get(short["AccessorID"])[1] is not None
        with anyio.fail_after(5):
            while st.acl_token_get(short["AccessorID"])[1] is not None:
                await anyio.sleep(0.05)
        assert st.acl_token_get(long["AccessorID"])[1] is not None
        assert (await api.get(f"/v1/acl/token/{short['AccessorID']}")).status_code == 404
        await api.aclose()
    finally:
        await agent.stop()
