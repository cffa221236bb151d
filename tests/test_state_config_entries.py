"""The config-entries part of the store and the intentions read from it: bare store, explicit indexes, the FSM."""

from __future__ import annotations

import pytest

from proconsul.server import config_entries as ce
from proconsul.server.commands import ConfigEntryRequest, IntentionRequest, decode, encode
from proconsul.server.errors import NotFound, StoreError
from proconsul.server.fsm import FSM
from proconsul.server.snapshot import read_snapshot, write_snapshot
from proconsul.server.state import StateStore
from proconsul.server.watch import WatchSet


def entry(kind: str, name: str, **fields) -> dict:
    return ce.prepare(ce.decode_entry({"Kind": kind, "Name": name, **fields}))


def sources(st: StateStore, name: str) -> list[tuple[str, int]]:
    _, row = st.config_entry_get(ce.SERVICE_INTENTIONS, name)
    return [(s["Name"], s["Precedence"]) for s in row.entry["Sources"]]


def legacy_value(name: str, action: str, legacy_id: str, when: str = "2024-01-02T03:04:05.5Z") -> dict:
    return {"Name": name, "Action": action, "Type": "consul", "LegacyID": legacy_id, "LegacyMeta": {},
            "LegacyCreateTime": when, "LegacyUpdateTime": when}


ID1 = "11111111-1111-1111-1111-111111111111"
ID2 = "22222222-2222-2222-2222-222222222222"


def test_precedence_values_and_source_order():
    st = StateStore()
    st.config_entry_set(3, entry("service-intentions", "db", Sources=[{"Name": "*", "Action": "deny"}, {"Name": "web", "Action": "allow"}]))
    st.config_entry_set(4, entry("service-intentions", "*", Sources=[{"Name": "*", "Action": "allow"}, {"Name": "web", "Action": "deny"}]))
    assert sources(st, "db") == [("web", 9), ("*", 8)]
    assert sources(st, "*") == [("web", 6), ("*", 5)]
    index, listed = st.intention_list()
    assert index == 4
    assert [(i["SourceName"], i["DestinationName"], i["Precedence"]) for i in listed] == [
        ("web", "db", 9), ("*", "db", 8), ("web", "*", 6), ("*", "*", 5)]


def test_match_by_destination_and_source():
    st = StateStore()
    st.config_entry_set(3, entry("service-intentions", "db", Sources=[{"Name": "*", "Action": "deny"}, {"Name": "web", "Action": "allow"}]))
    st.config_entry_set(4, entry("service-intentions", "*", Sources=[{"Name": "web", "Action": "deny"}]))
    st.config_entry_set(5, entry("service-intentions", "cache", Sources=[{"Name": "api", "Action": "allow"}]))
    _, [db, web, star] = st.intention_match("destination", ["db", "web", "*"])
    assert [(i["SourceName"], i["DestinationName"]) for i in db] == [("web", "db"), ("*", "db"), ("web", "*")]
    assert [(i["SourceName"], i["DestinationName"]) for i in web] == [("web", "*")]
    assert [(i["SourceName"], i["DestinationName"]) for i in star] == [("web", "*")]
    _, [by_web, by_api] = st.intention_match("source", ["web", "api"])
    assert [(i["SourceName"], i["DestinationName"]) for i in by_web] == [("web", "db"), ("*", "db"), ("web", "*")]
    assert [(i["SourceName"], i["DestinationName"]) for i in by_api] == [("api", "cache"), ("*", "db")]
    # Destinations are looked up case-insensitively (memdb lowercases config entry names); sources are exact.
    assert [i["SourceName"] for i in st.intention_match_one("destination", "DB")[1]] == ["web", "*", "web"]
    assert st.intention_match_one("source", "WEB")[1][0]["SourceName"] == "*"


def test_destination_watch_fires_only_for_its_entries():
    st = StateStore()
    st.config_entry_set(3, entry("service-intentions", "db", Sources=[{"Name": "web", "Action": "allow"}]))
    ws = WatchSet()
    st.intention_match_one("destination", "db", ws)
    st.config_entry_set(4, entry("service-intentions", "other", Sources=[{"Name": "web", "Action": "allow"}]))
    st.config_entry_set(5, entry("service-defaults", "db", Protocol="http"))
    assert not any(ch.fired for ch in ws.channels)
    st.config_entry_set(6, entry("service-intentions", "*", Sources=[{"Name": "x", "Action": "deny"}]))
    assert any(ch.fired for ch in ws.channels)


def test_cas_and_create_index():
    st = StateStore()
    e = entry("service-defaults", "web", Protocol="http")
    assert st.config_entry_set(3, e, cas=0) is True
    assert st.config_entry_set(4, e, cas=0) is False
    assert st.config_entry_set(5, e, cas=99) is False
    assert st.config_entry_set(6, entry("service-defaults", "WEB", Protocol="grpc"), cas=3) is True
    _, row = st.config_entry_get("service-defaults", "web")
    assert (row.entry["Name"], row.entry["Protocol"], row.create_index, row.modify_index) == ("WEB", "grpc", 3, 6)
    assert st.config_entry_delete(7, "service-defaults", "web", cas=3) is False
    assert st.config_entry_delete(8, "service-defaults", "web", cas=6) is True
    assert st.config_entry_get("service-defaults", "web")[1] is None
    assert st.config_entry_delete(9, "service-defaults", "web") is True  # missing: a no-op


def test_l7_permissions_need_an_http_protocol_everywhere_it_can_change():
    st = StateStore()
    l7 = entry("service-intentions", "web", Sources=[{"Name": "a", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}])
    with pytest.raises(StoreError, match='service "web" has protocol "tcp", which is incompatible with L7 intentions permissions'):
        st.config_entry_set(3, l7)
    st.config_entry_set(4, entry("proxy-defaults", "global", Config={"protocol": "http"}))
    assert st.config_entry_set(5, l7) is True
    assert st.service_protocol("web") == "http"
    with pytest.raises(StoreError, match="incompatible with L7"):
        st.config_entry_set(6, entry("proxy-defaults", "global", Config={"protocol": "tcp"}))
    with pytest.raises(StoreError, match="incompatible with L7"):
        st.config_entry_delete(7, "proxy-defaults", "global")
    st.config_entry_set(8, entry("service-defaults", "web", Protocol="grpc"))
    with pytest.raises(StoreError, match='has protocol "tcp"'):
        st.config_entry_set(9, entry("service-defaults", "web", Protocol="tcp"))
    assert st.service_protocol("web") == "grpc"
    assert st.max_index() == 8  # the refused writes moved no index


def test_legacy_mutations_and_their_refusals():
    st = StateStore()
    st.intention_mutation(3, "create", ID1, "db", "web", legacy_value("web", "allow", ID1))
    st.intention_mutation(4, "create", ID2, "db", "api", legacy_value("api", "deny", ID2))
    _, got = st.intention_get(ID1)
    assert (got["ID"], got["SourceName"], got["Action"], got["CreatedAt"]) == (ID1, "web", "allow", "2024-01-02T03:04:05.5Z")
    # An update keeps the creation time (UpdateOver) and takes the new update time.
    st.intention_mutation(5, "update", ID1, "", "", legacy_value("web", "deny", ID1, when="2025-01-01T00:00:00Z"))
    _, got = st.intention_get(ID1)
    assert (got["Action"], got["CreatedAt"], got["UpdatedAt"]) == ("deny", "2024-01-02T03:04:05.5Z", "2025-01-01T00:00:00Z")
    with pytest.raises(StoreError, match='Sources\\[2\\] defines "api" more than once'):
        st.intention_mutation(6, "create", "33333333-3333-3333-3333-333333333333", "db", "api", legacy_value("api", "allow", "33333333-3333-3333-3333-333333333333"))
    with pytest.raises(NotFound, match="Cannot modify non-existent intention"):
        st.intention_mutation(7, "update", "44444444-4444-4444-4444-444444444444", "", "", legacy_value("x", "allow", "44444444-4444-4444-4444-444444444444"))
    # An upsert by name rewrites the entry as a config entry: legacy IDs go, and the legacy API is refused from then on.
    st.intention_mutation(8, "upsert", "", "db", "cache", {"Name": "cache", "Action": "allow", "Type": "consul"})
    assert st.intention_get(ID1)[1] is None
    with pytest.raises(StoreError, match='cannot use legacy intention API to edit intentions with a destination of "db"'):
        st.intention_mutation(9, "create", "55555555-5555-5555-5555-555555555555", "db", "z", legacy_value("z", "allow", "55555555-5555-5555-5555-555555555555"))
    st.intention_mutation(10, "delete", "", "db", "cache", {})
    st.intention_mutation(11, "delete", "", "db", "web", {})
    st.intention_mutation(12, "delete", "", "db", "api", {})
    assert st.config_entry_get(ce.SERVICE_INTENTIONS, "db")[1] is None  # the last source took the entry with it
    assert st.max_index() == 12


def test_legacy_delete_of_last_source_removes_the_entry():
    st = StateStore()
    st.intention_mutation(3, "create", ID1, "db", "web", legacy_value("web", "allow", ID1))
    st.intention_mutation(4, "delete", ID1, "", "", {})
    assert st.config_entry_get(ce.SERVICE_INTENTIONS, "db")[1] is None
    with pytest.raises(NotFound, match=f"Cannot delete non-existent intention: '{ID1}'"):
        st.intention_mutation(5, "delete", ID1, "", "", {})


def test_fsm_applies_both_commands_and_returns_errors():
    st = StateStore()
    fsm = FSM(st)
    cmd = ConfigEntryRequest(op="upsert", entry=entry("service-defaults", "web", Protocol="http"))
    assert decode(encode(cmd)) == cmd
    assert fsm.apply(encode(cmd), 3) is True
    cmd = IntentionRequest(op="create", legacy_id=ID1, destination="web", source="a", value=legacy_value("a", "allow", ID1))
    assert decode(encode(cmd)) == cmd
    assert fsm.apply(encode(cmd), 4) is None
    bad = IntentionRequest(op="upsert", destination="web", source="b", value={"Name": "b", "Action": "maybe", "Type": "consul"})
    result = fsm.apply(encode(bad), 5)
    assert isinstance(result, StoreError) and str(result) == "Sources[1].Action must be set to 'allow' or 'deny'"
    assert fsm.apply(encode(ConfigEntryRequest(op="delete-cas", entry={"Kind": "service-defaults", "Name": "web"}, cas=1)), 6) is False
    assert st.max_index() == 4


def test_snapshot_round_trip_rebuilds_the_legacy_index(tmp_path):
    st = StateStore()
    st.intention_mutation(3, "create", ID1, "db", "web", legacy_value("web", "allow", ID1))
    st.config_entry_set(4, entry("proxy-defaults", "global", Config={"protocol": "http", "nested": {"a": [1, 2]}}))
    path = tmp_path / "snap.db"
    write_snapshot(str(path), st.dump(), {"index": 4})
    tables, _ = read_snapshot(str(path))
    restored = StateStore()
    restored.load(tables)
    assert restored.checksum() == st.checksum()
    assert restored.intention_get(ID1)[1] == st.intention_get(ID1)[1]
    assert restored.config_entry_get("proxy-defaults", "global")[1].entry["Config"] == {"protocol": "http", "nested": {"a": [1, 2]}}


def test_agent_config_acl_and_default_intention_policy(tmp_path):
    import json

    from proconsul.agent import config

    f = tmp_path / "acl.json"
    f.write_text(json.dumps({"acl": {"enabled": True, "default_policy": "deny", "tokens": {"agent": "x"}}, "default_intention_policy": "allow"}))
    cfg = config.build({"dev": True}, [str(f)], [])
    assert (cfg.acl_enabled, cfg.acl_default_policy, cfg.default_intention_policy) == (True, "deny", "allow")
    srv = cfg.server_config()
    assert (srv.acl_enabled, srv.acl_default_policy, srv.default_intention_policy) == (True, "deny", "allow")
    assert config.build({"dev": True}, [], []).acl_default_policy == "allow"
    for bad, message in (({"acl": {"default_policy": "maybe"}}, 'acl.default_policy: must be "allow" or "deny"'),
                         ({"acl": {"bogus": 1}}, "invalid config key acl.bogus"),
                         ({"default_intention_policy": "sometimes"}, 'default_intention_policy: must be "allow" or "deny"')):
        f.write_text(json.dumps(bad))
        with pytest.raises(config.ConfigError, match=message):
            config.build({"dev": True}, [str(f)], [])
