"""Consul's ACL rules language and authorizer: parsing, matching, merging, defaults."""

from __future__ import annotations

import json

import pytest

from proconsul.server.acl_authz import MANAGEMENT, Authorizer, allow_all, deny_all
from proconsul.server.acl_rules import (
    Rule,
    Rules,
    RulesError,
    merge_rules,
    node_identity_rules,
    parse_rules,
    service_identity_rules,
)

# The policy from Consul's "ACL rules" page, in both of its forms.
DOC_HCL = """
# These control access to the key/value store.
key_prefix "" {
  policy = "read"
}
key_prefix "foo/" {
  policy = "write"
}
key_prefix "foo/private/" {
  policy = "deny"
}
# Or for exact key matches
key "foo/bar/secret" {
  policy = "deny"
}

# This controls access to cluster-wide Consul operator information.
operator = "read"
"""

DOC_JSON = """
{
  "key_prefix": {
    "": {"policy": "read"},
    "foo/": {"policy": "write"},
    "foo/private/": {"policy": "deny"}
  },
  "key": {"foo/bar/secret": {"policy": "deny"}},
  "operator": "read"
}
"""

EVERY_RESOURCE_HCL = """
acl = "read"
keyring = "write"
operator = "read"
mesh = "write"
peering = "deny"
agent "a1" { policy = "write" }
agent_prefix "a" { policy = "read" }
key "k1" { policy = "write" }
key_prefix "k" { policy = "list" }
node "n1" { policy = "write" }
node_prefix "n" { policy = "read" }
service "s1" {
  policy = "write"
  intentions = "read"
}
service_prefix "s" {
  policy = "read"
  intentions = "write"
}
session "x1" { policy = "write" }
session_prefix "x" { policy = "read" }
event "e1" { policy = "write" }
event_prefix "e" { policy = "deny" }
query "q1" { policy = "write" }
query_prefix "q" { policy = "read" }
"""


def _every_resource_json() -> str:
    doc = {
        "acl": "read", "keyring": "write", "operator": "read", "mesh": "write", "peering": "deny",
        "agent": {"a1": {"policy": "write"}}, "agent_prefix": {"a": {"policy": "read"}},
        "key": {"k1": {"policy": "write"}}, "key_prefix": {"k": {"policy": "list"}},
        "node": {"n1": {"policy": "write"}}, "node_prefix": {"n": {"policy": "read"}},
        "service": {"s1": {"policy": "write", "intentions": "read"}},
        "service_prefix": {"s": {"policy": "read", "intentions": "write"}},
        "session": {"x1": {"policy": "write"}}, "session_prefix": {"x": {"policy": "read"}},
        "event": {"e1": {"policy": "write"}}, "event_prefix": {"e": {"policy": "deny"}},
        "query": {"q1": {"policy": "write"}}, "query_prefix": {"q": {"policy": "read"}},
    }
    return json.dumps(doc)


def authz(*texts: str, default: str = "deny") -> Authorizer:
    return Authorizer([parse_rules(t) for t in texts], default=default)


# --- parsing ------------------------------------------------------------------


def test_docs_example_hcl_and_json_parse_to_the_same_rules():
    hcl, js = parse_rules(DOC_HCL), parse_rules(DOC_JSON)
    assert hcl == js
    assert hcl.operator == "read"
    assert hcl.key == (Rule("foo/bar/secret", "deny"),)
    assert hcl.key_prefix == (Rule("", "read"), Rule("foo/", "write"), Rule("foo/private/", "deny"))


def test_every_resource_type_parses_in_hcl_and_json():
    hcl = parse_rules(EVERY_RESOURCE_HCL)
    assert hcl == parse_rules(_every_resource_json())
    for field in Rules.__dataclass_fields__:
        assert getattr(hcl, field), field
    assert hcl.service == (Rule("s1", "write", "read"),)
    assert hcl.service_prefix == (Rule("s", "read", "write"),)
    assert hcl.peering == "deny"


def test_json_list_shapes_and_hcl_object_shape_are_accepted():
    as_list = parse_rules('{"key_prefix": [{"": {"policy": "read"}}, {"foo/": [{"policy": "write"}]}]}')
    as_object = parse_rules('key_prefix = {\n  "" = { policy = "read" }\n  "foo/" = { policy = "write" }\n}')
    expected = (Rule("", "read"), Rule("foo/", "write"))
    assert as_list.key_prefix == expected
    assert as_object.key_prefix == expected


def test_empty_and_comment_only_rules_are_an_empty_policy():
    assert parse_rules("") == Rules()
    assert parse_rules("  \n# nothing\n// here\n") == Rules()
    assert parse_rules("{}") == Rules()


def test_dispositions_are_case_insensitive_and_unknown_attributes_ignored():
    rules = parse_rules('service "web" {\n  policy = "WRITE"\n  Intentions = "x"\n  sentinel = "y"\n}')
    assert rules.service == (Rule("web", "write"),)


def test_escapes_in_hcl_strings_are_decoded():
    assert parse_rules('key "a\\"b/\\u00e9" { policy = "read" }').key == (Rule('a"b/é', "read"),)


def test_list_policy_only_on_keys():
    assert parse_rules('key "k" { policy = "list" }').key == (Rule("k", "list"),)
    assert parse_rules('key_prefix "k/" { policy = "list" }').key_prefix == (Rule("k/", "list"),)
    for resource in ("node", "service_prefix", "agent", "session", "event", "query_prefix"):
        with pytest.raises(RulesError, match=f"^Invalid {resource} policy"):
            parse_rules(f'{resource} "x" {{ policy = "list" }}')
    with pytest.raises(RulesError, match='^Invalid operator policy: "list"$'):
        parse_rules('operator = "list"')


@pytest.mark.parametrize(
    "text, message",
    [
        ('key "foo" { policy = "nope" }',
         'Invalid key policy: &acl.KeyRule{Prefix:"foo", Policy:"nope", EnterpriseRule:acl.EnterpriseRule{}}'),
        ('key_prefix "foo/" { policy = "nope" }',
         'Invalid key_prefix policy: &acl.KeyRule{Prefix:"foo/", Policy:"nope", EnterpriseRule:acl.EnterpriseRule{}}'),
        ('agent "n" { policy = "nope" }', 'Invalid agent policy: &acl.AgentRule{Node:"n", Policy:"nope"}'),
        ('session_prefix "" { policy = "nope" }', 'Invalid session_prefix policy: &acl.SessionRule{Node:"", Policy:"nope"}'),
        ('event "e" { policy = "nope" }', 'Invalid event policy: &acl.EventRule{Event:"e", Policy:"nope"}'),
        ('query_prefix "q" { policy = "nope" }',
         'Invalid query_prefix policy: &acl.PreparedQueryRule{Prefix:"q", Policy:"nope"}'),
        ('service "" { service = "write" }',
         'Invalid service policy: &acl.ServiceRule{Name:"", Policy:"", Intentions:"", '
         'EnterpriseRule:acl.EnterpriseRule{}}'),
        ('service_prefix "w" {\n  policy = "read"\n  intentions = "list"\n}',
         'Invalid service_prefix intentions policy: &acl.ServiceRule{Name:"w", Policy:"read", Intentions:"list", '
         'EnterpriseRule:acl.EnterpriseRule{}}'),
        ('node "n" {}', 'Invalid node policy: &acl.NodeRule{Name:"n", Policy:"", EnterpriseRule:acl.EnterpriseRule{}}'),
        ('acl = "nope"', 'Invalid acl policy: "nope"'),
        ('keyring = "nope"', 'Invalid keyring policy: "nope"'),
        ('operator = "nope"', 'Invalid operator policy: "nope"'),
        ('mesh = "nope"', 'Invalid mesh policy: "nope"'),
        ('peering = "nope"', 'Invalid peering policy: "nope"'),
        ('{ "mesh": "nope" }', 'Invalid mesh policy: "nope"'),
        ('{ "key": { "foo": { "policy": "nope" } } }',
         'Invalid key policy: &acl.KeyRule{Prefix:"foo", Policy:"nope", EnterpriseRule:acl.EnterpriseRule{}}'),
    ],
)
def test_invalid_dispositions_report_consuls_message(text, message):
    with pytest.raises(RulesError) as info:
        parse_rules(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "text",
    [
        'key "foo" {',                                     # unterminated block
        'key "foo" { policy = }',                          # missing value
        'key "foo" {\n  policy = read\n}',                 # bare word, HCL1 refuses
        'key { policy = "read" }',                         # no segment
        'operator = "read"\noperator = "write"',           # set twice
        'key "x" {\n  policy = "read"\n  policy = "write"\n}',
        'operator { policy = "read" }',                    # block where a string belongs
        'operator = true',
        'nonsense "x" { policy = "read" }',                # unknown resource type
        'namespace "x" { policy = "read" }',
        '{"key": ',                                        # bad JSON
        '{"key": {"x": "read"}}',
        '{"operator": {"policy": "read"}}',
    ],
)
def test_malformed_rules_fail_to_parse(text):
    with pytest.raises(RulesError, match="^Failed to parse ACL rules: "):
        parse_rules(text)


def test_rules_error_is_a_bad_request():
    from proconsul.server.errors import BadRequest

    assert issubclass(RulesError, BadRequest)


# --- matching -----------------------------------------------------------------


def test_docs_example_longest_prefix_and_exact_rules():
    a = authz(DOC_HCL)
    table = [
        # key, read, write
        ("anything", True, False),
        ("foo/x", True, True),
        ("foo/private/x", False, False),
        ("foo/private/", False, False),
        ("foo/bar/secret", False, False),
        ("foo/bar/secret2", True, True),
        ("foo", True, False),
    ]
    for key, read, write in table:
        assert (a.key_read(key), a.key_write(key)) == (read, write), key
    assert a.operator_read() and not a.operator_write()


PREFER_EXACT = """
{resource} "foo" {{ policy = "write" }}
{resource} "football" {{ policy = "deny" }}
{resource}_prefix "foot" {{ policy = "read" }}
{resource}_prefix "fo" {{ policy = "read" }}
"""


@pytest.mark.parametrize("resource", ["agent", "key", "node", "service", "session", "event", "query"])
@pytest.mark.parametrize("default", ["allow", "deny"])
def test_exact_rules_beat_prefixes_and_longest_prefix_wins(resource, default):
    a = authz(PREFER_EXACT.format(resource=resource), default=default)
    read, write = getattr(a, f"{resource}_read"), getattr(a, f"{resource}_write")
    for name in ("fo", "for", "foot", "foot2", "food"):
        assert read(name) and not write(name), name
    assert read("foo") and write("foo")
    assert not read("football") and not write("football")
    # "f" is covered by no rule: the default decides
    assert read("f") is (default == "allow")
    assert write("f") is (default == "allow")


def test_docs_key_examples():
    a = authz('key_prefix "" { policy = "read" }\nkey "foo" { policy = "write" }\nkey "bar" { policy = "deny" }')
    assert a.key_read("zip") and not a.key_write("zip")
    assert a.key_write("foo") and not a.key_write("foo/sub")  # exact rule covers only "foo"
    assert not a.key_read("bar") and a.key_read("bar/sub")


def test_key_list_policy_docs_example():
    a = authz('key_prefix "" { policy = "deny" }\nkey_prefix "bar" { policy = "list" }\nkey_prefix "baz" { policy = "read" }')
    assert a.key_list("bar") and a.key_list("bar/x") and a.key_read("bar/x") and not a.key_write("bar/x")
    assert not a.key_list("baz/x") and a.key_read("baz/x")
    assert not a.key_list("other") and not a.key_read("other")
    w = authz('key_prefix "w/" { policy = "write" }')
    assert w.key_list("w/")  # write implies list


def test_docs_node_agent_event_examples():
    nodes = authz('node_prefix "" { policy = "read" }\nnode "app" { policy = "write" }\nnode "admin" { policy = "deny" }')
    assert nodes.node_read("web1") and not nodes.node_write("web1")
    assert nodes.node_write("app") and not nodes.node_write("app2")
    assert not nodes.node_read("admin") and nodes.node_read("admin2")
    agents = authz('agent_prefix "" { policy = "read" }\nagent "foo" { policy = "write" }\nagent_prefix "bar" { policy = "deny" }')
    assert agents.agent_read("x") and not agents.agent_write("x") and agents.agent_write("foo")
    assert not agents.agent_read("bar") and not agents.agent_read("barn")
    events = authz('event_prefix "" { policy = "read" }\nevent "deploy" { policy = "write" }')
    assert events.event_read("x") and not events.event_write("x") and events.event_write("deploy")


def test_sessions_and_queries_follow_their_rules():
    a = authz('session_prefix "" { policy = "read" }\nsession "n1" { policy = "write" }\nquery_prefix "" { policy = "read" }\nquery "q" { policy = "write" }')
    assert a.session_read("n2") and not a.session_write("n2") and a.session_write("n1")
    assert a.query_read("other") and not a.query_write("other") and a.query_write("q")


def test_key_write_prefix_needs_write_on_the_prefix_and_everything_under_it():
    a = authz('key_prefix "" { policy = "write" }\nkey "foo/bar" { policy = "read" }\nkey_prefix "baz/deep/" { policy = "deny" }')
    assert not a.key_write_prefix("")
    assert not a.key_write_prefix("foo/")
    assert a.key_write_prefix("foo/baz/")
    assert not a.key_write_prefix("baz/")
    assert a.key_write_prefix("qux/")
    assert a.key_write("baz/x") and not a.key_write("baz/deep/x")

    ro = authz('key_prefix "ro/" { policy = "read" }', default="allow")
    assert not ro.key_write_prefix("ro/x")       # covering prefix rule is not write
    assert not ro.key_write_prefix("r")          # a rule under the prefix is not write
    assert ro.key_write_prefix("other/")         # nothing applies: default allow

    only = authz('key_prefix "foo/" { policy = "write" }')
    assert only.key_write_prefix("foo/") and only.key_write_prefix("foo/sub")
    assert not only.key_write_prefix("fo")       # no covering rule: default deny
    assert authz('key_prefix "foo/" { policy = "write" }', default="allow").key_write_prefix("fo")
    assert not authz('key "a/b" { policy = "deny" }', default="allow").key_write_prefix("a/")


# --- merging ------------------------------------------------------------------


def test_merging_policies_deny_beats_write_beats_list_beats_read():
    p1 = 'key "x" { policy = "write" }\nkey_prefix "l/" { policy = "list" }\nkey_prefix "r/" { policy = "read" }\noperator = "read"\nacl = "read"'
    p2 = 'key "x" { policy = "deny" }\nkey_prefix "l/" { policy = "write" }\nkey_prefix "r/" { policy = "list" }\noperator = "write"\nacl = "deny"'
    for a in (authz(p1, p2), authz(p2, p1)):
        assert not a.key_read("x")
        assert a.key_write("l/a")
        assert a.key_list("r/a") and not a.key_write("r/a")
        assert a.operator_write()
        assert not a.acl_read()
    merged = merge_rules([parse_rules(p1), parse_rules(p2)])
    assert merged.key == (Rule("x", "deny"),)
    assert merged.operator == "write" and merged.acl == "deny"


def test_merging_keeps_exact_and_prefix_rules_apart():
    a = authz('service "web" { policy = "deny" }', 'service_prefix "web" { policy = "write" }')
    assert not a.service_read("web")
    assert a.service_write("web2")


def test_duplicate_rules_within_one_policy_merge_too():
    a = authz('key "x" { policy = "deny" }\nkey "x" { policy = "write" }')
    assert not a.key_read("x")


def test_service_policy_and_intentions_merge_independently():
    a = authz('service "web" { policy = "write" }', 'service "web" {\n  policy = "read"\n  intentions = "write"\n}')
    assert a.service_write("web")
    assert a.intention_write("web")


# --- defaults and static authorizers ----------------------------------------


CHECKS_WITH_NAME = [
    "key_read", "key_list", "key_write", "key_write_prefix", "service_read", "service_write",
    "node_read", "node_write", "session_read", "session_write", "agent_read", "agent_write",
    "event_read", "event_write", "query_read", "query_write", "intention_read", "intention_write",
]
CHECKS_WITHOUT_NAME = [
    "operator_read", "operator_write", "keyring_read", "keyring_write", "mesh_read", "mesh_write",
    "peering_read", "peering_write", "intention_default_allow", "service_read_all", "node_read_all",
    "service_write_any",
]


def _all_checks(a: Authorizer) -> dict[str, bool]:
    out = {name: getattr(a, name)("foo") for name in CHECKS_WITH_NAME}
    out.update({name: getattr(a, name)() for name in CHECKS_WITHOUT_NAME})
    return out


@pytest.mark.parametrize("default", ["allow", "deny"])
def test_an_empty_policy_defers_every_check_to_the_default(default):
    for a in (Authorizer([], default), Authorizer([parse_rules("")], default)):
        assert set(_all_checks(a).values()) == {default == "allow"}
        # the ACL resource and snapshots are never granted by default_policy = allow
        assert not a.acl_read() and not a.acl_write() and not a.snapshot()


def test_allow_all_and_deny_all():
    assert all(_all_checks(allow_all()).values())
    assert not allow_all().acl_read() and not allow_all().acl_write()
    assert not any(_all_checks(deny_all()).values())
    assert not deny_all().acl_read()
    assert allow_all().default_allow and not deny_all().default_allow


def test_management_allows_everything_including_acls():
    assert all(_all_checks(MANAGEMENT).values())
    assert MANAGEMENT.acl_read() and MANAGEMENT.acl_write() and MANAGEMENT.snapshot()
    assert MANAGEMENT.key_write_prefix("")


def test_rules_override_the_default_both_ways():
    a = authz('key_prefix "secret/" { policy = "deny" }', default="allow")
    assert a.key_read("public") and not a.key_read("secret/x")
    d = authz('key_prefix "public/" { policy = "read" }', default="deny")
    assert d.key_read("public/x") and not d.key_read("secret/x")


def test_unknown_default_policy_is_refused():
    with pytest.raises(ValueError):
        Authorizer([], default="maybe")


def test_acl_rule_grants_acl_and_snapshot():
    a = authz('acl = "read"', default="allow")
    assert a.acl_read() and not a.acl_write() and not a.snapshot()
    w = authz('acl = "write"')
    assert w.acl_read() and w.acl_write() and w.snapshot()


def test_keyring_rule():
    a = authz('keyring = "read"', default="allow")
    assert a.keyring_read() and not a.keyring_write()


def test_mesh_and_peering_fall_back_to_operator():
    a = authz('operator = "write"')
    assert a.mesh_write() and a.peering_write()
    b = authz('operator = "write"\nmesh = "read"\npeering = "deny"')
    assert b.mesh_read() and not b.mesh_write()
    assert not b.peering_read() and b.operator_write()
    c = authz('operator = "deny"', default="allow")
    assert not c.mesh_read() and not c.peering_read()
    d = authz('mesh = "write"')
    assert d.mesh_write() and not d.operator_read()


# --- intentions ----------------------------------------------------------------


def test_intentions_derive_from_the_service_policy_when_unset():
    a = authz('service "web" { policy = "write" }\nservice "db" { policy = "read" }\nservice "no" { policy = "deny" }',
              default="allow")
    assert a.intention_read("web") and not a.intention_write("web")
    assert a.intention_read("db") and not a.intention_write("db")
    assert not a.intention_read("no")
    assert a.intention_write("elsewhere")  # no rule: default allow


def test_intentions_attribute_overrides_the_service_policy():
    a = authz('service_prefix "" {\n  policy = "read"\n  intentions = "write"\n}\n'
              'service "web" {\n  policy = "write"\n  intentions = "deny"\n}')
    assert a.intention_write("api") and not a.service_write("api")
    assert not a.intention_read("web") and a.service_write("web")


@pytest.mark.parametrize(
    "rules, read_any, write_all",
    [
        ('service "foo" {\n policy = "write"\n intentions = "write"\n}\n'
         'service_prefix "" {\n policy = "deny"\n intentions = "deny"\n}', True, False),
        ('service "foo" {\n policy = "write"\n intentions = "deny"\n}\n'
         'service_prefix "" {\n policy = "write"\n intentions = "write"\n}', True, False),
        ('service "foo" {\n policy = "write"\n intentions = "write"\n}\n'
         'service_prefix "" {\n policy = "write"\n intentions = "write"\n}', True, True),
        ('service "foo" {\n policy = "write"\n intentions = "write"\n}', True, None),
        ('service "foo" {\n policy = "write"\n intentions = "deny"\n}', None, False),
    ],
)
def test_intention_wildcard_destination(rules, read_any, write_all):
    for default in ("allow", "deny"):
        a = authz(rules, default=default)
        fallback = default == "allow"
        assert a.intention_read("*") is (fallback if read_any is None else read_any)
        assert a.intention_write("*") is (fallback if write_all is None else write_all)


def test_intention_default_allow_follows_the_default_policy():
    assert authz('service_prefix "" { policy = "write" }', default="allow").intention_default_allow()
    assert not authz('service_prefix "" { policy = "write" }', default="deny").intention_default_allow()


def test_read_all_and_write_any():
    a = authz('service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\nnode "secret" { policy = "deny" }')
    assert a.service_read_all() and not a.service_write_any()
    assert not a.node_read_all()
    assert authz('service "web" { policy = "write" }').service_write_any()
    assert not authz('service "web" { policy = "read" }').service_read_all()  # single name: default deny


# --- templated policies ----------------------------------------------------------


def test_service_identity_template():
    text = service_identity_rules("web", ["dc1"])
    rules = parse_rules(text)
    assert rules.service == (Rule("web", "write"), Rule("web-sidecar-proxy", "write"))
    assert rules.service_prefix == (Rule("", "read"),)
    assert rules.node_prefix == (Rule("", "read"),)
    a = Authorizer([rules])
    assert a.service_write("web") and a.service_write("web-sidecar-proxy")
    assert a.service_read("anything") and a.node_read("any-node")
    assert not a.service_write("db") and not a.service_write("web2")
    assert not a.node_write("any-node") and not a.key_read("k")
    assert a.intention_read("web") and not a.intention_write("web")
    assert service_identity_rules("web", []) == text  # datacenters scope the policy, not its rules


def test_node_identity_template():
    rules = parse_rules(node_identity_rules("node-1", "dc1"))
    assert rules.node == (Rule("node-1", "write"),)
    assert rules.service_prefix == (Rule("", "read"),)
    a = Authorizer([rules])
    assert a.node_write("node-1") and a.node_read("node-1")
    assert not a.node_write("node-2") and not a.node_read("node-2")
    assert a.service_read("web") and not a.service_write("web")


def test_identity_names_are_validated():
    for bad in ("", "Web", "web.", "-web", "web svc", 'x" { policy = "write" } key_prefix "', "a" * 257):
        with pytest.raises(RulesError):
            service_identity_rules(bad, [])
        with pytest.raises(RulesError):
            node_identity_rules(bad, "dc1")
    service_identity_rules("a" * 256, [])


def test_several_identities_merge_like_policies():
    a = Authorizer([parse_rules(service_identity_rules("web", [])), parse_rules(service_identity_rules("db", []))])
    assert a.service_write("web") and a.service_write("db-sidecar-proxy") and not a.service_write("api")
