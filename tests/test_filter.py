"""?filter= expressions: go-bexpr v0.1.2 semantics and Consul's error text, table by table."""

from __future__ import annotations

import time

import pytest

from proconsul.server.errors import BadRequest
from proconsul.server.filter import (
    AGENT_SERVICE,
    HEALTH_CHECK,
    NODE,
    SERVICE_ENTRY,
    SERVICE_NODE,
    FilterError,
    apply_filter,
    compile_filter,
)

WRAP = "Failed to create boolean expression evaluator: "

NODE_ITEM = {
    "ID": "b4f64e8c-5c7d-11e9-bf68-8c8590bd0966", "Node": "web-1", "Address": "10.0.0.5", "Datacenter": "dc1",
    "TaggedAddresses": {"lan": "10.0.0.5", "wan": "198.18.0.5"},
    "Meta": {"env": "prod", "rack": "r1", "my key": "spaced", "email": "ops@example.com"},
    "CreateIndex": 5, "ModifyIndex": 9,
}

SERVICE_NODE_ITEM = {
    "ID": "b4f64e8c", "Node": "web-1", "Address": "10.0.0.5", "Datacenter": "dc1",
    "TaggedAddresses": None, "NodeMeta": {"os": "linux"},
    "ServiceKind": "connect-proxy", "ServiceID": "web-sidecar-proxy", "ServiceName": "web-sidecar-proxy",
    "ServiceTags": ["v1", "primary"], "ServiceAddress": "",
    "ServiceTaggedAddresses": {"lan": {"Address": "10.0.0.5", "Port": 21000}},
    "ServiceWeights": {"Passing": 10, "Warning": 1}, "ServiceMeta": {}, "ServicePort": 21000,
    "ServiceEnableTagOverride": True,
    "ServiceProxy": {
        "DestinationServiceName": "web", "LocalServicePort": 8080, "Mode": "",
        "Upstreams": [
            {"DestinationType": "service", "DestinationName": "db", "LocalBindPort": 9191},
            {"DestinationType": "prepared_query", "DestinationName": "cache", "LocalBindPort": 9192},
        ],
    },
    "ServiceConnect": {"Native": False},
}

ENTRY_ITEM = {
    "Node": {"Node": "web-1", "Meta": {"env": "prod"}},
    "Service": {"ID": "web", "Service": "web", "Tags": ["v1"], "Port": 8080},
    "Checks": [
        {"CheckID": "serfHealth", "Status": "passing", "ServiceTags": []},
        {"CheckID": "service:web", "Status": "critical", "ServiceTags": ["v1"]},
    ],
}


def holds(expr: str, schema, item) -> bool:
    return compile_filter(expr, schema)(item)


def error_of(expr: str, schema=NODE) -> str:
    with pytest.raises(FilterError) as info:
        compile_filter(expr, schema)
    assert info.value.message.startswith(WRAP)
    return info.value.message[len(WRAP):]


# ------------------------------------------------------------------ strings

@pytest.mark.parametrize("expr, want", [
    ('Node == "web-1"', True),
    ("Node == `web-1`", True),
    ('Node != "web-1"', False),
    ('Node != "web-2"', True),
    ('"web" in Node', True),  # "in" on a string is a substring test
    ('"db" in Node', False),
    ('"db" not in Node', True),
    ("Node contains web", True),
    ("Node not contains web", False),
    ('Node matches "^web-[0-9]+$"', True),
    ('Node matches "^db"', False),
    ('Node not matches "^db"', True),
    ("Address == `10.0.0.5`", True),
    ("Datacenter == dc1", True),
    ("ID matches `^b4f6`", True),
])
def test_string_operators(expr, want):
    assert holds(expr, NODE, NODE_ITEM) is want


# ---------------------------------------------------------------------- ints

@pytest.mark.parametrize("expr, want", [
    ("ServicePort == 21000", True),
    ("ServicePort != 21000", False),
    ("ServicePort == 80", False),
    ('ServicePort == "21000"', True),
    ('ServicePort == "0x5208"', True),  # CoerceInt is strconv.ParseInt(v, 0, 0): prefixes count
    ('ServicePort == "0o51010"', True),
    ('ServicePort == "21_000"', True),
    ('ServicePort == "051010"', True),  # a leading 0 is octal
    ("ServiceWeights.Passing == 10", True),
    ("ServiceWeights.Warning != 1", False),
    ("ServiceProxy.LocalServicePort == 8080", True),
    ("ServiceTaggedAddresses.lan.Port == 21000", True),
])
def test_int_operators(expr, want):
    assert holds(expr, SERVICE_NODE, SERVICE_NODE_ITEM) is want


def test_negative_int_literal():
    assert holds("ServicePort == -1", SERVICE_NODE, {"ServicePort": -1})


# --------------------------------------------------------------------- bools

@pytest.mark.parametrize("expr, want", [
    ("ServiceEnableTagOverride == true", True),
    ("ServiceEnableTagOverride == True", True),
    ("ServiceEnableTagOverride == TRUE", True),
    ("ServiceEnableTagOverride == t", True),
    ("ServiceEnableTagOverride == 1", True),
    ("ServiceEnableTagOverride == false", False),
    ("ServiceEnableTagOverride != false", True),
    ("ServiceConnect.Native == false", True),
    ("ServiceConnect.Native == F", True),
    ("ServiceConnect.Native != 0", False),
])
def test_bool_operators(expr, want):
    assert holds(expr, SERVICE_NODE, SERVICE_NODE_ITEM) is want


# ---------------------------------------------------------------------- maps

@pytest.mark.parametrize("expr, want", [
    ("Meta.env == prod", True),
    ('Meta["env"] == prod', True),
    ("Meta[`env`] != prod", False),
    ('Meta["my key"] == spaced', True),  # index form reaches keys that are not identifiers
    ("Meta.email contains example", True),
    ('Meta.email matches "@example\\\\.com$"', True),
    ('"env" in Meta', True),  # "in" on a map tests the keys
    ("rack in Meta", True),
    ("prod in Meta", False),
    ("zone not in Meta", True),
    ("Meta contains rack", True),
    ("Meta is empty", False),
    ("Meta is not empty", True),
    ("TaggedAddresses.wan == `198.18.0.5`", True),
    ("TaggedAddresses is not empty", True),
])
def test_map_operators(expr, want):
    assert holds(expr, NODE, NODE_ITEM) is want


# An absent key: ==, in and "is not empty" are false, every other operator true
# (go-bexpr v0.1.2's evaluateMatchExpressionRecurse), "matches" included.
@pytest.mark.parametrize("expr, want", [
    ("Meta.zone == a", False),
    ("Meta.zone != a", True),
    ("a in Meta.zone", False),
    ("a not in Meta.zone", True),
    ("Meta.zone matches `.*`", True),
    ("Meta.zone not matches `.*`", True),
    ("NodeMeta.zone == a", False),
])
def test_missing_map_key(expr, want):
    schema = SERVICE_NODE if expr.startswith("NodeMeta") else NODE
    assert holds(expr, schema, NODE_ITEM if schema is NODE else SERVICE_NODE_ITEM) is want


@pytest.mark.parametrize("expr, want", [
    ("ServiceTaggedAddresses.lan.Address == `10.0.0.5`", True),
    ("ServiceTaggedAddresses.wan.Address == `10.0.0.5`", False),
    ("ServiceTaggedAddresses.wan.Port != 1", True),  # the missing key decides before .Port is read
    ("lan in ServiceTaggedAddresses", True),
    ("ServiceMeta is empty", True),
    ("TaggedAddresses is empty", True),  # null reads as Go's nil map
    ("NodeMeta.os == linux", True),
])
def test_map_of_structs_and_nulls(expr, want):
    assert holds(expr, SERVICE_NODE, SERVICE_NODE_ITEM) is want


# --------------------------------------------------------------------- lists

@pytest.mark.parametrize("expr, want", [
    ("v1 in ServiceTags", True),
    ('"v2" in ServiceTags', False),
    ("v2 not in ServiceTags", True),
    ("ServiceTags contains primary", True),
    ("ServiceTags contains prim", False),  # element equality, not substring
    ("ServiceTags not contains v1", False),
    ("ServiceTags is empty", False),
    ("ServiceTags is not empty", True),
])
def test_string_list_operators(expr, want):
    assert holds(expr, SERVICE_NODE, SERVICE_NODE_ITEM) is want


@pytest.mark.parametrize("tags", [[], None, "absent"])
def test_empty_or_missing_list(tags):
    item = {} if tags == "absent" else {"ServiceTags": tags}
    assert holds("ServiceTags is empty", SERVICE_NODE, item)
    assert not holds("v1 in ServiceTags", SERVICE_NODE, item)
    assert holds("v1 not in ServiceTags", SERVICE_NODE, item)


# A list of structs inside a selector is an implicit "any", for every operator.
@pytest.mark.parametrize("expr, want", [
    ("Checks.Status == passing", True),
    ("Checks.Status == critical", True),
    ("Checks.Status == warning", False),
    ("Checks.Status != passing", True),  # some check is not passing
    ("Checks.Status != warning", True),
    ("not Checks.Status == critical", False),  # "no check is critical"
    ("Checks.CheckID matches `^service:`", True),
    ("Checks.ServiceTags contains v1", True),
    ("Checks.ServiceTags is empty", True),  # serfHealth's tags are empty
    ("Checks is empty", False),
    ("Checks is not empty", True),
    ("Service.Tags contains v1 and Node.Meta.env == prod", True),
])
def test_struct_list_is_any(expr, want):
    assert holds(expr, SERVICE_ENTRY, ENTRY_ITEM) is want


@pytest.mark.parametrize("expr", ["Checks.Status == passing", "Checks.Status != passing", "Checks.Status not matches x"])
def test_struct_list_empty_is_false_for_every_operator(expr):
    assert holds(expr, SERVICE_ENTRY, {**ENTRY_ITEM, "Checks": []}) is False


@pytest.mark.parametrize("expr, want", [
    ("ServiceProxy.Upstreams.DestinationName == db", True),
    ("ServiceProxy.Upstreams.DestinationType == prepared_query", True),
    ("ServiceProxy.Upstreams.LocalBindPort == 9192", True),
    ("ServiceProxy.Upstreams.LocalBindPort == 1", False),
    ("ServiceProxy.Upstreams is not empty", True),
    ("ServiceProxy.Upstreams.MeshGateway.Mode == ``", True),
])
def test_nested_struct_list(expr, want):
    assert holds(expr, SERVICE_NODE, SERVICE_NODE_ITEM) is want


# --------------------------------------------------------------- zero values

@pytest.mark.parametrize("expr, want", [
    ("Port == 0", True),
    ("Address == ``", True),
    ('"" in Address', True),
    ("EnableTagOverride == false", True),
    ("Weights.Passing == 0", True),
    ("Proxy.DestinationServiceName == ``", True),
    ("Proxy.Upstreams is empty", True),
    ("Connect.Native == false", True),
    ('Kind != "connect-proxy"', True),
])
def test_missing_and_null_fields_read_as_go_zero_values(expr, want):
    for item in ({"Service": "web"}, {"Service": "web", "Port": None, "Proxy": None, "Weights": None, "Connect": None}):
        assert holds(expr, AGENT_SERVICE, item) is want


# --------------------------------------------------------- logic and parsing

@pytest.mark.parametrize("expr, want", [
    # or < and < not (go-bexpr grammar); the item: Node=web-1, Meta.env=prod, Meta.rack=r1
    ("Node == x or Meta.env == prod and Meta.rack == r1", True),
    ("Node == x or Meta.env == prod and Meta.rack == r2", False),
    ("(Node == x or Meta.env == prod) and Meta.rack == r2", False),
    ("Meta.env == prod or Node == x and Meta.rack == r2", True),
    ("(Meta.env == prod or Node == x) and Meta.rack == r2", False),
    ("not Meta.env == dev and Meta.rack == r1", True),
    ("not (Meta.env == prod and Meta.rack == r2)", True),
    ("not not Meta.env == prod", True),
    ("not not not Meta.env == prod", False),
    ("((Meta.env == prod))", True),
    ("(Meta.env == prod) and (not (Meta.rack == r2))", True),
    ("\t\r\n ( \t Meta.env \n == \r prod \t ) \n", True),
    ("Meta.env==prod", True),
    ("Meta.env!=prod", False),
])
def test_precedence_parentheses_and_not(expr, want):
    assert holds(expr, NODE, NODE_ITEM) is want


@pytest.mark.parametrize("expr, want", [
    (r'Meta.note == "a\tb"', True),  # Go escapes in double quotes
    (r'Meta.note == "a\x09b"', True),
    (r'Meta.note == "a\011b"', True),
    (r"Meta.note == `a\tb`", False),  # backquotes are raw
    (r"Meta.raw == `a\tb`", True),
    (r'Meta.name == "caf\u00e9"', True),
    (r'Meta.name == "café"', True),
    ("Meta.path == `/srv/a b`", True),
    ('Meta.crlf == `x\r\ny`', True),  # Go's Unquote drops \r from raw strings
    ("Meta.dotted == Meta.a", True),  # a bare selector as value is its dotted text
    ('Meta.dotted == Meta["a"]', True),
    ("Meta.num == 1.5", True),
    ("Meta.num == -1.5", False),
])
def test_values_and_quoting(expr, want):
    item = {"Meta": {"note": "a\tb", "raw": "a\\tb", "name": "café", "path": "/srv/a b", "crlf": "x\ny",
                     "dotted": "Meta.a", "num": "1.5"}}
    assert holds(expr, NODE, item) is want


def test_keywords_and_selectors_are_case_sensitive():
    assert "expected" in error_of("Meta.env == prod AND Node == x")
    assert error_of("meta.env == prod") == 'Selector "meta" is not valid'


def test_long_or_chain():
    expr = " or ".join(f'Node == "n{i}"' for i in range(2000))
    keep = compile_filter(expr, NODE)
    assert keep({"Node": "n1999"}) and not keep({"Node": "x"})


# -------------------------------------------------------------------- regex

@pytest.mark.parametrize("pattern, value, want", [
    ("^web", "web-1", True),
    ("b-1", "web-1", True),  # unanchored, like regexp.Match
    ("1$", "web-1\n", False),  # RE2's $ is the end of text, unlike Python's
    ("(?m)1$", "web-1\nx", True),
    (r"1\z", "web-1", True),
    ("(?i)WEB", "web-1", True),
    ("x(?i)B|Q", "xb", True),  # an inline flag lasts to the end of the group, across |
    ("x(?i)B|Q", "q", True),
    ("x(?i)B|Q", "XB", False),
    (r"^\d+$", "١٢", False),  # \d is ASCII in RE2
    ("[[:digit:]]+", "42", True),
    (r"\Q.*\E", "a.*b", True),
    (r"\Q.*\E", "ab", False),
    (r"\x{41}", "A", True),
    ("(?P<a>w)(?<b>e)", "web", True),
    ("a{,2}", "a{,2}", True),  # a malformed repeat is literal in RE2
])
def test_regex(pattern, value, want):
    assert holds(f"Node matches `{pattern}`", NODE, {"Node": value}) is want


@pytest.mark.parametrize("pattern, message", [
    ("(abc", "error parsing regexp: missing closing ): `(abc`"),
    ("abc)", "error parsing regexp: unexpected ): `abc)`"),
    ("[a", "error parsing regexp: missing closing ]: `[a`"),
    ("(?=a)", "error parsing regexp: invalid or unsupported Perl syntax: `(?=`"),
    (r"(a)\1", "error parsing regexp: invalid escape sequence: `\\1`"),
    (r"a\Z", "error parsing regexp: invalid escape sequence: `\\Z`"),
    ("a*+", "error parsing regexp: invalid nested repetition operator: `*+`"),
    ("a{1001}", "error parsing regexp: invalid repeat count: `{1001}`"),
])
def test_regex_errors(pattern, message):
    assert error_of(f"Node matches `{pattern}`") == (
        f'Failed to compile regular expression "{pattern.replace(chr(92), chr(92) * 2)}": {message}')


# -------------------------------------------------------------------- errors

@pytest.mark.parametrize("expr, schema, message", [
    # validation (go-bexpr validate.go), first error from the left
    ("Foo == bar", NODE, 'Selector "Foo" is not valid'),
    ("Meta.env.x == 1", NODE, 'Selector "Meta.env.x" is not valid'),
    ("Node == a and Foo.Bar == b", NODE, 'Selector "Foo" is not valid'),
    ("Service.Nope == 1", SERVICE_ENTRY, 'Selector "Service.Nope" is not valid'),
    ("CreateIndex == 5", NODE, 'Selector "CreateIndex" is not valid'),  # RaftIndex is bexpr:"-"
    ("Definition.HTTP == x", HEALTH_CHECK, 'Selector "Definition" is not valid'),
    ("ServiceProxy.Config.foo == x", SERVICE_NODE, 'Selector "ServiceProxy.Config" is not valid'),
    ("Datacenter == dc1", AGENT_SERVICE, 'Selector "Datacenter" is not valid'),
    ("ServicePort contains 80", SERVICE_NODE, 'Invalid match operator "In" for selector "ServicePort"'),
    ("ServicePort matches 80", SERVICE_NODE, 'Invalid match operator "Matches" for selector "ServicePort"'),
    ("Node is empty", NODE, 'Invalid match operator "Is Empty" for selector "Node"'),
    ("ServiceTags == v1", SERVICE_NODE, 'Invalid match operator "Equal" for selector "ServiceTags"'),
    ("Meta == x", NODE, 'Invalid match operator "Equal" for selector "Meta"'),
    ("ServiceProxy is empty", SERVICE_NODE, 'Invalid match operator "Is Empty" for selector "ServiceProxy"'),
    ("x in Checks", SERVICE_ENTRY, 'Invalid match operator "In" for selector "Checks"'),
    ("Checks.Status is not empty", SERVICE_ENTRY, 'Invalid match operator "Is Not Empty" for selector "Checks.Status"'),
    ("ServicePort == abc", SERVICE_NODE,
     'Failed to coerce value "abc" for selector "ServicePort": strconv.ParseInt: parsing "abc": invalid syntax'),
    ('ServicePort == "99999999999999999999"', SERVICE_NODE, 'Failed to coerce value "99999999999999999999" for '
     'selector "ServicePort": strconv.ParseInt: parsing "99999999999999999999": value out of range'),
    ('ServicePort == "1__0"', SERVICE_NODE,
     'Failed to coerce value "1__0" for selector "ServicePort": strconv.ParseInt: parsing "1__0": invalid syntax'),
    ("ServicePort == 1.5", SERVICE_NODE,
     'Failed to coerce value "1.5" for selector "ServicePort": strconv.ParseInt: parsing "1.5": invalid syntax'),
    ("ServiceEnableTagOverride == yes", SERVICE_NODE, 'Failed to coerce value "yes" for selector '
     '"ServiceEnableTagOverride": strconv.ParseBool: parsing "yes": invalid syntax'),
    # parsing (pigeon): position as line:col (byte offset)
    ("Node == x AND Node == y", NODE, r'1:11 (10): no match found, expected: "and", "or", [ \t\r\n] or EOF'),
    ("()", NODE, r'1:2 (1): no match found, expected: "(", "-", "0", "\"", "`", "not", [ \t\r\n], [1-9] or [a-zA-Z]'),
    ("Node ==", NODE, r'1:8 (7): no match found, expected: "-", "0", "\"", "`", [ \t\r\n], [1-9] or [a-zA-Z]'),
    ("  ", NODE, r'1:3 (2): no match found, expected: "(", "-", "0", "\"", "`", "not", [ \t\r\n], [1-9] or [a-zA-Z]'),
    ("Node == x\n  and", NODE, r"2:6 (15): no match found, expected: [ \t\r\n]"),
    ('Node == "é', NODE, '1:11 (11): rule "string": Unterminated string literal'),  # offsets count bytes
    ("(Node == x", NODE, '1:11 (10): rule "grouping": Unmatched parentheses'),
    ('Node == "abc', NODE, '1:13 (12): rule "string": Unterminated string literal'),
    ("Node == `abc", NODE, '1:13 (12): rule "string": Unterminated string literal'),
    (r'Node == "say \"hi\""', NODE, '1:9 (8): rule "string": invalid syntax'),  # \" ends the literal
    (r'Node == "\q"', NODE, '1:9 (8): rule "string": invalid syntax'),
    ('Node == "a\nb"', NODE, '1:9 (8): rule "string": invalid syntax'),
    ("Node == 12abc", NODE, '1:11 (10): rule "number": Invalid number literal'),
    ("Node == 0x10", NODE, '1:10 (9): rule "number": Invalid number literal'),
    ('"x" in 5', NODE, '1:8 (7): rule "match": Invalid selector'),
    ("Meta[3] == x", NODE, '1:6 (5): rule "index": Invalid index'),
    ('Meta["a" == x', NODE, '1:10 (9): rule "index": Unclosed index expression'),
])
def test_errors(expr, schema, message):
    assert error_of(expr, schema) == message


# hashicorp/go-bexpr grammar_test.go TestExpressionParsing, error cases (that version's
# JSON-pointer selectors add "/" to two expected lists; v0.1.2, which Consul pins, has none).
@pytest.mark.parametrize("expr, message", [
    ('foo == "12x', '1:12 (11): rule "string": Unterminated string literal'),
    ("foo == `12x", '1:12 (11): rule "string": Unterminated string literal'),
    ("foo == 3x", '1:9 (8): rule "number": Invalid number literal'),
    ("foo[3] == abc", '1:5 (4): rule "index": Invalid index'),
    ('x in foo["abc"', '1:15 (14): rule "index": Unclosed index expression'),
    ('foo["abc" == 3', '1:11 (10): rule "index": Unclosed index expression'),
    ("x in 32", '1:6 (5): rule "match": Invalid selector'),
    ("32 == 32", r'1:4 (3): no match found, expected: "in", "not" or [ \t\r\n]'),
    ("32 is empty", r'1:4 (3): no match found, expected: "in", "not" or [ \t\r\n]'),
    ("x in foo abc", r'1:10 (9): no match found, expected: "and", "or", [ \t\r\n] or EOF'),
    ("x in foo and ", r'1:14 (13): no match found, expected: "(", "-", "0", "\"", "`", "not", [ \t\r\n], '
                      "[1-9] or [a-zA-Z]"),
    ("x in foo or not ", r'1:17 (16): no match found, expected: "!=", "(", "-", "0", "==", "\"", "`", "contains", '
                         r'"in", "is", "matches", "not", [ \t\r\n], [1-9] or [a-zA-Z]'),
    ("(foo == 4", '1:10 (9): rule "grouping": Unmatched parentheses'),
])
def test_go_bexpr_parse_errors(expr, message):
    assert error_of(expr) == message


def test_unquoted_hyphen_error_from_consul_issue_6467():
    # hashicorp/consul#6467 quotes this expected list for an unquoted hyphenated node name.
    assert error_of("Node==host-name") == (
        r'1:11 (10): no match found, expected: ".", "[", [ \t\r\n], [a-zA-Z0-9_] or EOF')


def test_filter_error_is_a_bad_request():
    with pytest.raises(BadRequest):
        compile_filter("Nope == 1", NODE)


def test_pathological_nesting_is_a_bad_request():
    assert error_of("(" * 400 + "Node == x" + ")" * 400) == "expression is nested too deeply"


# ------------------------------------------------- Consul's documented examples

def test_docs_agent_services_example():
    # developer.hashicorp.com/consul/api-docs/features/filtering, "Agent API":
    # GET /v1/agent/services?filter=Meta.env == "qa" keeps only redis3.
    services = {
        "redis1": {"ID": "redis1", "Service": "redis", "Tags": ["primary", "production"],
                   "Meta": {"env": "production", "foo": "bar"}, "Port": 1234, "Address": "",
                   "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False},
        "redis2": {"ID": "redis2", "Service": "redis", "Tags": ["secondary", "production"],
                   "Meta": {"env": "production", "foo": "bar"}, "Port": 1235, "Address": "",
                   "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False},
        "redis3": {"ID": "redis3", "Service": "redis", "Tags": ["primary", "qa"], "Meta": {"env": "qa"},
                   "Port": 1234, "Address": "", "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False},
    }
    assert list(apply_filter('Meta.env == "qa"', AGENT_SERVICE, services)) == ["redis3"]


def test_docs_catalog_service_example():
    # Same page, "Catalog API": /v1/catalog/service/api-internal?filter=NodeMeta.os == "linux" keeps node-2.
    nodes = [
        {"Node": "node-1", "NodeMeta": {"agent": "true", "arch": "i386", "os": "darwin"}, "ServiceTags": ["tag"],
         "ServiceMeta": {"environment": "qa"}, "ServicePort": 9090, "ServiceProxy": {}, "ServiceConnect": {}},
        {"Node": "node-2", "NodeMeta": {"arch": "arm", "os": "linux"}, "ServiceTags": ["test", "tag"],
         "ServiceMeta": {"environment": "production"}, "ServicePort": 9090, "ServiceProxy": {}, "ServiceConnect": {}},
        {"Node": "node-4", "NodeMeta": {"arch": "i386", "os": "freebsd"}, "ServiceTags": [],
         "ServiceMeta": {"environment": "qa"}, "ServicePort": 9090, "ServiceProxy": {}, "ServiceConnect": {}},
    ]
    assert [n["Node"] for n in apply_filter('NodeMeta.os == "linux"', SERVICE_NODE, nodes)] == ["node-2"]
    assert [n["Node"] for n in apply_filter("ServiceTags is empty", SERVICE_NODE, nodes)] == ["node-4"]


def test_docs_health_node_example():
    # Same page, "Health API": /v1/health/node/node-1?filter=ServiceName != "" keeps the service check.
    checks = [
        {"Node": "node-1", "CheckID": "node-health", "Name": "Node level check", "Status": "critical",
         "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Definition": {}},
        {"Node": "node-1", "CheckID": "svc-web-health", "Name": "Service level check - web", "Status": "warning",
         "ServiceID": "", "ServiceName": "web", "ServiceTags": [], "Definition": {}},
    ]
    assert [c["CheckID"] for c in apply_filter('ServiceName != ""', HEALTH_CHECK, checks)] == ["svc-web-health"]


# ---------------------------------------------------------------- apply_filter

@pytest.mark.parametrize("expr", [None, ""])
def test_no_filter_returns_items_unchanged(expr):
    items = [{"Node": "a"}, {"Node": "b"}]
    assert apply_filter(expr, NODE, items) is items


def test_apply_filter_on_a_list():
    items = [{"Node": "a"}, {"Node": "b"}, {"Node": "ab"}]
    assert apply_filter("a in Node", NODE, items) == [{"Node": "a"}, {"Node": "ab"}]


def test_apply_filter_raises_before_reading_items():
    with pytest.raises(FilterError):
        apply_filter("Nope == 1", NODE, iter(()))


def test_ten_thousand_items_filter_quickly():
    items = [{"Node": f"n{i}", "Meta": {"env": "prod" if i % 2 else "dev"}, "TaggedAddresses": {"lan": "x"}}
             for i in range(10_000)]
    start = time.perf_counter()
    kept = apply_filter('Meta.env == prod and Node matches "^n1" or not "lan" in TaggedAddresses', NODE, items)
    assert time.perf_counter() - start < 1.0
    assert len(kept) == sum(1 for i in range(10_000) if i % 2 and str(i).startswith("1"))
