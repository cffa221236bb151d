"""Consul's ``?filter=`` expressions: hashicorp/go-bexpr v0.1.2, the version Consul pins.

Consul calls ``bexpr.CreateFilter(expr, nil, T)`` before running a query: go-bexpr
parses with a pigeon PEG parser, then checks every selector, operator and value
against the field configuration generated from the Go struct ``T``, so a bad
filter is refused before any data is read. Both stages are reproduced here,
including the error text (``Failed to create boolean expression evaluator: ...``
with pigeon's ``line:col (offset)`` positions and expected-token lists).

Semantics worth knowing (all as go-bexpr v0.1.2 does them):

* Keywords (``and or not in is empty contains matches``) and selectors are case
  sensitive. Precedence: ``or`` < ``and`` < ``not``; parentheses group.
* A value is a bare selector-like word (``Meta["a"]`` becomes ``Meta.a``), a number
  or a string; it is coerced to the field's type (Go's ``strconv`` rules: ints
  take ``0x``/``0o``/``0b``/``_`` inside quotes, bools take ``t``/``1``/``False``...).
* Strings support ``== != in contains matches`` (``in`` is substring); ints and bools
  only ``== !=``; maps ``in`` (a key) and ``is empty``; lists of scalars ``in`` and
  ``is empty``; structs nothing. ``is empty`` is not allowed on strings.
* A list of structs in the middle of a selector (``Checks.Status``) is an *any*
  match, for every operator: ``Checks.Status != passing`` is true when some check
  is not passing, and false when there are no checks at all.
* A map key that is absent makes ``==``, ``in`` and ``is not empty`` false and every
  other operator true, ``matches`` included (a v0.1.2 quirk, fixed in later go-bexpr).
* ``\\"`` cannot appear in a double-quoted string (the literal ends at the first
  ``"``), so Consul answers ``invalid syntax``; other Go escapes work.
* Regular expressions are RE2 searched unanchored; see ``_translate_re2``.

Deviations: fields Consul tags ``bexpr:"-"`` are not selectable even though our API
emits them (``CreateIndex``, ``ModifyIndex``, a check's ``Definition``,
``ServiceProxy.Config``, an agent service's ``Datacenter``); a missing or ``null``
field reads as Go's zero value, where Consul would fail on a nil pointer; RE2's
``\\p{..}`` classes and ``(?U)`` are refused, and regex error fragments are
approximate.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping

from proconsul.server.errors import BadRequest

__all__ = [
    "FilterError", "Schema", "Scalar", "MapOf", "ListOf", "Struct", "STRING", "INT", "BOOL", "FLOAT",
    "compile_filter", "apply_filter",
    "NODE", "SERVICE_NODE", "PROXY", "UPSTREAM", "AGENT_SERVICE", "NODE_SERVICES", "HEALTH_CHECK", "SERVICE_ENTRY",
]

_WRAP = "Failed to create boolean expression evaluator: "


class FilterError(BadRequest):
    """The ?filter expression does not parse or does not fit the result's fields."""


# ----------------------------------------------------------------- field types


@dataclass(frozen=True)
class Scalar:
    kind: str  # "string" | "int" | "bool" | "float"


@dataclass(frozen=True, eq=False)
class MapOf:
    value: FieldType


@dataclass(frozen=True, eq=False)
class ListOf:
    elem: FieldType


@dataclass(frozen=True, eq=False)
class Struct:
    fields: Mapping[str, FieldType] = field(default_factory=dict)


FieldType = Scalar | MapOf | ListOf | Struct
Schema = Struct

STRING, INT, BOOL, FLOAT = Scalar("string"), Scalar("int"), Scalar("bool"), Scalar("float")

# -------------------------------------------------------------- Consul's shapes
# Field lists follow Consul's structs (agent/structs, api.AgentService) minus what
# they tag bexpr:"-"; see TestStructs_FilterFieldConfigurations and the
# "Filtering" tables of the catalog, health and agent API docs.

_SERVICE_ADDRESS = Struct({"Address": STRING, "Port": INT})
_WEIGHTS = Struct({"Passing": INT, "Warning": INT})
_MESH_GATEWAY = Struct({"Mode": STRING})
_CONNECT = Struct({"Native": BOOL})

UPSTREAM = Struct({
    "DestinationType": STRING, "DestinationNamespace": STRING, "DestinationName": STRING,
    "Datacenter": STRING, "LocalBindAddress": STRING, "LocalBindPort": INT,
    "LocalBindSocketPath": STRING, "MeshGateway": _MESH_GATEWAY,
})
PROXY = Struct({
    "DestinationServiceName": STRING, "DestinationServiceID": STRING,
    "LocalServiceAddress": STRING, "LocalServicePort": INT, "LocalServiceSocketPath": STRING,
    "Mode": STRING, "Upstreams": ListOf(UPSTREAM), "MeshGateway": _MESH_GATEWAY,
    "Expose": Struct({"Checks": BOOL, "Paths": ListOf(Struct({
        "ListenerPort": INT, "Path": STRING, "LocalPathPort": INT, "Protocol": STRING, "ParsedFromCheck": BOOL,
    }))}),
    "TransparentProxy": Struct({"OutboundListenerPort": INT, "DialedDirectly": BOOL}),
})
NODE = Struct({
    "ID": STRING, "Node": STRING, "Address": STRING, "Datacenter": STRING,
    "TaggedAddresses": MapOf(STRING), "Meta": MapOf(STRING),
})
SERVICE_NODE = Struct({
    "ID": STRING, "Node": STRING, "Address": STRING, "Datacenter": STRING,
    "TaggedAddresses": MapOf(STRING), "NodeMeta": MapOf(STRING),
    "ServiceKind": STRING, "ServiceID": STRING, "ServiceName": STRING, "ServiceTags": ListOf(STRING),
    "ServiceAddress": STRING, "ServiceTaggedAddresses": MapOf(_SERVICE_ADDRESS),
    "ServiceWeights": _WEIGHTS, "ServiceMeta": MapOf(STRING), "ServicePort": INT,
    "ServiceSocketPath": STRING, "ServiceEnableTagOverride": BOOL,
    "ServiceProxy": PROXY, "ServiceConnect": _CONNECT,
})
AGENT_SERVICE = Struct({
    "Kind": STRING, "ID": STRING, "Service": STRING, "Tags": ListOf(STRING),
    "Address": STRING, "TaggedAddresses": MapOf(_SERVICE_ADDRESS), "Meta": MapOf(STRING),
    "Port": INT, "SocketPath": STRING, "Weights": _WEIGHTS, "EnableTagOverride": BOOL,
    "Proxy": PROXY, "Connect": _CONNECT,
})
NODE_SERVICES = AGENT_SERVICE
HEALTH_CHECK = Struct({
    "Node": STRING, "CheckID": STRING, "Name": STRING, "Status": STRING, "Notes": STRING,
    "Output": STRING, "ServiceID": STRING, "ServiceName": STRING, "ServiceTags": ListOf(STRING),
    "Type": STRING, "Interval": STRING, "Timeout": STRING, "ExposedPort": INT,
})
SERVICE_ENTRY = Struct({"Node": NODE, "Service": AGENT_SERVICE, "Checks": ListOf(HEALTH_CHECK)})


# ------------------------------------------------------------------ public API


def compile_filter(expr: str, schema: Schema) -> Callable[[Any], bool]:
    """Parse and validate a filter like bexpr.CreateFilter; the predicate takes one JSON-shaped item."""
    return _compile(expr, schema)


def apply_filter(expr: str | None, schema: Schema, items: Any) -> Any:
    """Filter.Execute: keep the items (list elements or mapping values) the expression matches."""
    if not expr:
        return items  # Consul's nil filter
    keep = _compile(expr, schema)
    if isinstance(items, Mapping):
        return {k: v for k, v in items.items() if keep(v)}
    return [item for item in items if keep(item)]


@lru_cache(maxsize=256)  # blocking queries and UI polls repeat the same filter
def _compile(expr: str, schema: Schema) -> Callable[[Any], bool]:
    try:
        return _build(_parse(expr), schema)
    except _GoError as err:
        raise FilterError(_WRAP + str(err)) from None
    except RecursionError:  # Go's stacks grow; ours end near 80 nested parentheses
        raise FilterError(_WRAP + "expression is nested too deeply") from None


class _GoError(Exception):
    """An error whose text is go-bexpr's (before Consul's wrapping)."""


# ---------------------------------------------------------------------- parser
# A PEG interpreter shaped like pigeon's generated parser, so that errors name the
# same farthest position and the same expected tokens. Packrat memoisation (keyed by
# rule, position and the not-predicate inversion) only skips repeats whose failures
# are already recorded, so reports are unchanged while nested groups cost linear time
# rather than pigeon's doubling per level.

Result = tuple[bool, Any, int]
Node = Callable[["_Peg", int], Result]


@dataclass(frozen=True)
class _Match:
    selector: tuple[str, ...]
    op: str  # "==" "!=" "in" "not in" "is empty" "is not empty" "matches" "not matches"
    value: str | None


@dataclass(frozen=True)
class _Rule:
    name: str
    display: str  # pigeon's display name, quotes included: rule "string"
    expr: Node


class _Peg:
    def __init__(self, text: str) -> None:
        self.text = text
        self.end = len(text)
        self.positions = _positions(text)
        self.max_fail = 0
        self.max_fail_pos = (1, 1, 0)  # pigeon starts at 1:1 and moves only on a strictly farther failure
        self.expected: list[str] = []
        self.invert = False
        self.rules: list[_Rule] = []
        self.errors: list[str] = []
        self.memo: dict[tuple[str, int, bool], Result] = {}

    def fail_at(self, matched: bool, i: int, want: str) -> None:
        # pigeon's failAt: inside a !predicate a *match* is the failure worth reporting.
        if matched != self.invert or i < self.max_fail:
            return
        if i > self.max_fail:
            self.max_fail, self.max_fail_pos, self.expected = i, self.positions[i], []
        self.expected.append("!" + want if self.invert else want)

    def add_error(self, message: str, pos: tuple[int, int, int]) -> None:
        prefix = "%d:%d (%d)" % pos
        if self.rules:
            rule = self.rules[-1]
            prefix += ": rule " + (rule.display or rule.name)
        self.errors.append(f"{prefix}: {message}")


def _positions(text: str) -> list[tuple[int, int, int]]:
    # pigeon bumps the column on every rune and resets it to 0 *on* a newline, so the
    # newline itself sits at column 0 of the next line; offsets count UTF-8 bytes.
    out, line, col, offset = [], 1, 0, 0
    for ch in text:
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
        out.append((line, col, offset))
        offset += len(ch.encode("utf-8", "surrogatepass"))
    out.append((line, col + 1, offset))
    return out


def _lit(s: str) -> Node:
    want = _go_quote(s)

    def parse(p: _Peg, i: int) -> Result:
        if p.text.startswith(s, i):
            p.fail_at(True, i, want)
            return True, s, i + len(s)
        p.fail_at(False, i, want)
        return False, None, i
    return parse


def _cls(label: str, accepts: Callable[[str], bool]) -> Node:
    def parse(p: _Peg, i: int) -> Result:
        if i < p.end and accepts(p.text[i]):
            p.fail_at(True, i, label)
            return True, p.text[i], i + 1
        p.fail_at(False, i, label)
        return False, None, i
    return parse


def _any(p: _Peg, i: int) -> Result:
    if i < p.end:
        p.fail_at(True, i, ".")
        return True, p.text[i], i + 1
    p.fail_at(False, i, ".")
    return False, None, i


def _seq(*items: Node) -> Node:
    def parse(p: _Peg, i: int) -> Result:
        vals, j = [], i
        for item in items:
            ok, val, j = item(p, j)
            if not ok:
                return False, None, i
            vals.append(val)
        return True, vals, j
    return parse


def _choice(*alts: Node) -> Node:
    def parse(p: _Peg, i: int) -> Result:
        for alt in alts:
            ok, val, j = alt(p, i)
            if ok:
                return True, val, j
        return False, None, i
    return parse


def _opt(e: Node) -> Node:
    def parse(p: _Peg, i: int) -> Result:
        ok, val, j = e(p, i)
        return (True, val, j) if ok else (True, None, i)
    return parse


def _star(e: Node, at_least: int = 0) -> Node:
    def parse(p: _Peg, i: int) -> Result:
        vals, j = [], i
        while True:
            ok, val, k = e(p, j)
            if not ok:
                return (True, vals, j) if len(vals) >= at_least else (False, None, i)
            vals.append(val)
            j = k
    return parse


def _not(e: Node) -> Node:
    def parse(p: _Peg, i: int) -> Result:
        p.invert = not p.invert
        ok = e(p, i)[0]
        p.invert = not p.invert
        return not ok, None, i
    return parse


def _and(e: Node) -> Node:
    return lambda p, i: (e(p, i)[0], None, i)


def _fail(message: str) -> Node:
    # Every &{...} predicate in bexpr's grammar records an error and fails.
    def parse(p: _Peg, i: int) -> Result:
        p.add_error(message, p.positions[i])
        return False, None, i
    return parse


def _act(e: Node, fn: Callable[[Any, str], Any]) -> Node:
    def parse(p: _Peg, i: int) -> Result:
        ok, val, j = e(p, i)
        if not ok:
            return False, None, i
        try:
            return True, fn(val, p.text[i:j]), j
        except _GoError as err:  # pigeon records an action's error but keeps the match
            p.add_error(str(err), p.positions[i])
            return True, "", j
    return parse


_RULES: dict[str, _Rule] = {}


def _ref(name: str) -> Node:
    def parse(p: _Peg, i: int) -> Result:
        key = (name, i, p.invert)
        hit = p.memo.get(key)
        if hit is None:
            rule = _RULES[name]
            p.rules.append(rule)
            hit = p.memo[key] = rule.expr(p, i)
            p.rules.pop()
        return hit
    return parse


def _chain(operand: str, word: str) -> Node:
    """``X <- Y _ word _ X / Y`` as a loop: the same calls at the same offsets (so the same failures
    are recorded), without one level of Python recursion per term of a long or/and chain."""
    term, sep = _ref(operand), _seq(_ref("_"), _lit(word), _ref("_"))

    def parse(p: _Peg, i: int) -> Result:
        ok, val, j = term(p, i)
        if not ok:
            return False, None, i
        vals = [val]
        while True:
            ok, _, k = sep(p, j)
            ok, val, k = term(p, k) if ok else (False, None, k)
            if not ok:
                break
            vals.append(val)
            j = k
        tree = vals[-1]
        for left in reversed(vals[:-1]):  # right-nested, as the grammar's actions build it
            tree = (word, left, tree)
        return True, tree, j
    return parse


def _rule(name: str, expr: Node, display: str = "") -> None:
    _RULES[name] = _Rule(name, display, expr)


def _define_grammar() -> None:
    """go-bexpr v0.1.2's grammar.peg, rule for rule and in the same order."""
    ws, opt_ws, eof = _ref("_"), _opt(_ref("_")), _ref("EOF")
    first = lambda i: lambda v, _t: v[i]  # noqa: E731
    text = lambda _v, t: t  # noqa: E731
    _rule("Input", _choice(
        _act(_seq(opt_ws, _lit("("), opt_ws, _ref("OrExpression"), opt_ws, _lit(")"), opt_ws, eof), first(3)),
        _act(_seq(opt_ws, _ref("OrExpression"), opt_ws, eof), first(1))))
    _rule("OrExpression", _chain("AndExpression", "or"))
    _rule("AndExpression", _chain("NotExpression", "and"))
    _rule("NotExpression", _choice(
        _act(_seq(_lit("not"), ws, _ref("NotExpression")),
             lambda v, _t: v[2][1] if isinstance(v[2], tuple) and v[2][0] == "not" else ("not", v[2])),
        _ref("ParenthesizedExpression")))
    _rule("ParenthesizedExpression", _choice(
        _act(_seq(_lit("("), opt_ws, _ref("OrExpression"), opt_ws, _lit(")")), first(2)),
        _ref("MatchExpression"),
        _seq(_lit("("), opt_ws, _ref("OrExpression"), opt_ws, _not(_lit(")")), _fail("Unmatched parentheses"))),
        '"grouping"')
    _rule("MatchExpression", _choice(
        _ref("MatchSelectorOpValue"), _ref("MatchSelectorOp"), _ref("MatchValueOpSelector")), '"match"')
    _rule("MatchSelectorOpValue", _act(_seq(_ref("Selector"), _choice(*map(_ref, (
        "MatchEqual", "MatchNotEqual", "MatchContains", "MatchNotContains", "MatchMatches", "MatchNotMatches"))),
        _ref("Value")), lambda v, _t: _Match(v[0], v[1], v[2])), '"match"')
    _rule("MatchSelectorOp", _act(_seq(_ref("Selector"), _choice(_ref("MatchIsEmpty"), _ref("MatchIsNotEmpty"))),
                                  lambda v, _t: _Match(v[0], v[1], None)), '"match"')
    in_op = _choice(_ref("MatchIn"), _ref("MatchNotIn"))
    _rule("MatchValueOpSelector", _choice(
        _act(_seq(_ref("Value"), in_op, _ref("Selector")), lambda v, _t: _Match(v[2], v[1], v[0])),
        _seq(_ref("Value"), in_op, _not(_ref("Selector")), _fail("Invalid selector"))), '"match"')
    words = lambda *ws_: _seq(*[n for w in ws_ for n in (ws, _lit(w))], ws)  # noqa: E731
    for name, node, op in (
        ("MatchEqual", _seq(opt_ws, _lit("=="), opt_ws), "=="),
        ("MatchNotEqual", _seq(opt_ws, _lit("!="), opt_ws), "!="),
        ("MatchIsEmpty", _seq(ws, _lit("is"), ws, _lit("empty")), "is empty"),
        ("MatchIsNotEmpty", _seq(ws, _lit("is"), ws, _lit("not"), ws, _lit("empty")), "is not empty"),
        ("MatchIn", words("in"), "in"),
        ("MatchNotIn", words("not", "in"), "not in"),
        ("MatchContains", words("contains"), "in"),
        ("MatchNotContains", words("not", "contains"), "not in"),
        ("MatchMatches", words("matches"), "matches"),
        ("MatchNotMatches", words("not", "matches"), "not matches"),
    ):
        _rule(name, _act(node, lambda _v, _t, op=op: op))
    _rule("Selector", _act(_seq(_ref("Identifier"), _star(_ref("SelectorOrIndex"))),
                           lambda v, _t: (v[0], *v[1])), '"selector"')
    _rule("Identifier", _act(_seq(_cls("[a-zA-Z]", lambda c: c.isascii() and c.isalpha()),
                                  _star(_cls("[a-zA-Z0-9_]", lambda c: c.isascii() and (c.isalnum() or c == "_")))),
                             text))
    _rule("SelectorOrIndex", _choice(_act(_seq(_lit("."), _ref("Identifier")), first(1)), _ref("IndexExpression")))
    _rule("IndexExpression", _choice(
        _act(_seq(_lit("["), opt_ws, _ref("StringLiteral"), opt_ws, _lit("]")), first(2)),
        _seq(_lit("["), opt_ws, _not(_ref("StringLiteral")), _fail("Invalid index")),
        _seq(_lit("["), opt_ws, _ref("StringLiteral"), opt_ws, _not(_lit("]")), _fail("Unclosed index expression"))),
        '"index"')
    _rule("Value", _choice(_act(_ref("Selector"), lambda v, _t: ".".join(v)),
                           _ref("NumberLiteral"), _ref("StringLiteral")), '"value"')
    _rule("NumberLiteral", _choice(
        _act(_seq(_opt(_lit("-")), _ref("IntegerOrFloat"), _and(_ref("AfterNumbers"))), text),
        _seq(_opt(_lit("-")), _ref("IntegerOrFloat"), _not(_ref("AfterNumbers")), _fail("Invalid number literal"))),
        '"number"')
    _rule("AfterNumbers", _and(_choice(ws, eof, _lit(")"))))
    digit = _cls("[0-9]", lambda c: "0" <= c <= "9")
    _rule("IntegerOrFloat", _seq(_choice(_lit("0"), _seq(_cls("[1-9]", lambda c: "1" <= c <= "9"), _star(digit))),
                                 _opt(_seq(_lit("."), _star(digit, 1)))))
    raw, dbl = _star(_ref("RawStringChar")), _star(_ref("DoubleStringChar"))
    _rule("StringLiteral", _choice(
        _act(_choice(_seq(_lit("`"), raw, _lit("`")), _seq(_lit('"'), dbl, _lit('"'))), lambda _v, t: _go_unquote(t)),
        _seq(_choice(_seq(_lit("`"), raw), _seq(_lit('"'), dbl)), eof, _fail("Unterminated string literal"))),
        '"string"')
    _rule("RawStringChar", _seq(_not(_lit("`")), _any))
    _rule("DoubleStringChar", _seq(_not(_lit('"')), _any))
    _rule("_", _star(_cls(r"[ \t\r\n]", lambda c: c in " \t\r\n"), 1), '"whitespace"')
    _rule("EOF", _not(_any))


def _parse(expr: str) -> Any:
    p = _Peg(expr)
    ok, ast, _ = _ref("Input")(p, 0)
    if not ok and not p.errors:
        wanted = set(p.expected)
        eof = "!." in wanted
        wanted.discard("!.")
        listed = sorted(wanted) + (["EOF"] if eof else [])
        joined = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " or " + listed[-1]
        p.add_error("no match found, expected: " + joined, p.max_fail_pos)
    if p.errors:
        raise _GoError("\n".join(dict.fromkeys(p.errors)))  # pigeon dedupes, keeping first occurrences
    return ast


# ------------------------------------------------- validation and evaluation

_OP_NAMES = {"==": "Equal", "!=": "Not Equal", "in": "In", "not in": "Not In", "is empty": "Is Empty",
             "is not empty": "Is Not Empty", "matches": "Matches", "not matches": "Not Matches"}
_NEGATION_OF = {"!=": "==", "not in": "in", "is not empty": "is empty", "not matches": "matches"}
_STRING_OPS = frozenset({"==", "!=", "in", "not in", "matches", "not matches"})
_EMPTY_OPS = frozenset({"is empty", "is not empty"})


def _ops(t: FieldType) -> frozenset[str]:
    # go-bexpr's generateFieldConfigurationInternal, by kind.
    if isinstance(t, Scalar):
        return _STRING_OPS if t.kind == "string" else frozenset({"==", "!="})
    if isinstance(t, MapOf) or (isinstance(t, ListOf) and isinstance(t.elem, Scalar)):
        return _EMPTY_OPS | {"in", "not in"}
    return _EMPTY_OPS if isinstance(t, ListOf) else frozenset()


def _child(t: FieldType, name: str) -> FieldType | None:
    if isinstance(t, Struct):
        return t.fields.get(name)
    if isinstance(t, MapOf):
        return t.value
    if isinstance(t, ListOf) and not isinstance(t.elem, Scalar):
        return _child(t.elem, name)  # a list of structs exposes its element's fields
    return None


def _zero(t: FieldType) -> Any:
    if isinstance(t, Scalar):
        return {"string": "", "int": 0, "bool": False, "float": 0.0}[t.kind]
    return () if isinstance(t, ListOf) else {}


def _build(ast: Any, schema: Struct) -> Callable[[Any], bool]:
    """Validate like go-bexpr's validateRecurse (left to right, first error wins) and close over the result."""
    if isinstance(ast, _Match):
        return _build_match(ast, schema)
    if ast[0] == "not":
        inner = _build(ast[1], schema)
        return lambda item: not inner(item)
    # The grammar nests a chain of ands (or ors) to the right; flat, it evaluates without deep recursion.
    op, operands = ast[0], []
    while isinstance(ast, tuple) and ast[0] == op:
        operands.append(_build(ast[1], schema))
        ast = ast[2]
    operands.append(_build(ast, schema))
    if op == "and":
        return lambda item: all(f(item) for f in operands)
    return lambda item: any(f(item) for f in operands)


def _build_match(m: _Match, schema: Struct) -> Callable[[Any], bool]:
    sel = _go_quote(".".join(m.selector))
    t: FieldType = schema
    for idx, name in enumerate(m.selector):
        nxt = _child(t, name)
        if nxt is None:
            raise _GoError(f"Selector {_go_quote('.'.join(m.selector[:idx + 1]))} is not valid")
        t = nxt
    if m.op not in _ops(t):
        raise _GoError(f"Invalid match operator {_go_quote(_OP_NAMES[m.op])} for selector {sel}")
    value: Any = m.value
    if value is not None:
        scalar = t.elem if isinstance(t, ListOf) else STRING if isinstance(t, MapOf) else t
        try:
            value = _COERCE[scalar.kind](value)  # type: ignore[union-attr]
        except ValueError as err:
            raise _GoError(f"Failed to coerce value {_go_quote(m.value)} for selector {sel}: {err}") from None
        if m.op in ("matches", "not matches"):
            try:
                value = _go_regexp(value)
            except _GoError as err:
                raise _GoError(f"Failed to compile regular expression {_go_quote(m.value)}: {err}") from None
    # An absent map key cannot equal, contain or be non-empty; everything else is true.
    missing = m.op not in ("==", "in", "is not empty")
    return _walk(schema, m.selector, 0, _leaf(t, m.op, value), missing)


def _walk(t: FieldType, path: tuple[str, ...], depth: int, leaf: Callable[[Any], bool],
          missing: bool) -> Callable[[Any], bool]:
    # go-bexpr's evaluateMatchExpressionRecurse, unrolled into closures at compile time.
    if depth == len(path):
        return leaf
    if isinstance(t, ListOf):
        each = _walk(t.elem, path, depth, leaf, missing)  # same depth: lists are implicit "any"
        return lambda v: isinstance(v, (list, tuple)) and any(map(each, v))
    name = path[depth]
    if isinstance(t, Struct):
        ft = t.fields[name]
        zero, sub = _zero(ft), _walk(ft, path, depth + 1, leaf, missing)

        def struct_field(v: Any) -> bool:
            x = v.get(name) if isinstance(v, dict) else None
            return sub(zero if x is None else x)
        return struct_field
    assert isinstance(t, MapOf)
    zero, sub = _zero(t.value), _walk(t.value, path, depth + 1, leaf, missing)

    def map_entry(v: Any) -> bool:
        if isinstance(v, dict) and name in v:
            x = v[name]
            return sub(zero if x is None else x)
        return missing
    return map_entry


def _leaf(t: FieldType, op: str, value: Any) -> Callable[[Any], bool]:
    base = _NEGATION_OF.get(op, op)
    test: Callable[[Any], bool]
    if base == "==":
        test = (lambda v: bool(v) == value) if t == BOOL else (lambda v: v == value)
    elif base == "is empty":
        test = lambda v: not v  # noqa: E731
    elif base == "matches":
        test = lambda v: isinstance(v, str) and value.search(v) is not None  # noqa: E731
    elif isinstance(t, Scalar):  # "in" on a string is a substring test
        test = lambda v: isinstance(v, str) and value in v  # noqa: E731
    elif isinstance(t, MapOf):  # "in" on a map looks at the keys
        test = lambda v: isinstance(v, dict) and value in v  # noqa: E731
    else:
        test = lambda v: isinstance(v, (list, tuple)) and value in v  # noqa: E731
    return (lambda v: not test(v)) if op in _NEGATION_OF else test


# --------------------------------------------------- Go strconv, for coercion


def _go_quote(s: str) -> str:
    """Go's %q: strconv.Quote."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append("\\x%02x" % (o - 0xDC00))
        elif ch.isprintable():
            out.append(ch)
        elif ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append("\\x%02x" % o)
        else:
            out.append("\\u%04x" % o if o < 0x10000 else "\\U%08x" % o)
    return "".join(out) + '"'


_C_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
_UNESCAPE = {ord(k): ord(v) for k, v in zip("abfnrtv", "\a\b\f\n\r\t\v")}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _go_unquote(lit: str) -> str:
    """strconv.Unquote of a `raw` or "interpreted" literal; bytes that are not UTF-8 survive as surrogates."""
    raw = lit.encode("utf-8", "surrogateescape")
    body = raw[1:-1]
    if raw[:1] == b"`":
        return body.replace(b"\r", b"").decode("utf-8", "surrogateescape")
    if b"\n" in body:
        raise _GoError("invalid syntax")
    out, i = bytearray(), 0
    while i < len(body):
        c = body[i]
        if c != 0x5C:
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(body):
            raise _GoError("invalid syntax")
        e, i = body[i + 1], i + 2
        if e in _UNESCAPE:
            out.append(_UNESCAPE[e])
        elif e in b"xuU":
            n = {0x78: 2, 0x75: 4, 0x55: 8}[e]
            digits = body[i:i + n]
            if len(digits) < n or not set(digits) <= _HEX:
                raise _GoError("invalid syntax")
            v, i = int(digits, 16), i + n
            if e == 0x78:
                out.append(v)
            elif v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
                raise _GoError("invalid syntax")
            else:
                out += chr(v).encode()
        elif 0x30 <= e <= 0x37:
            digits = body[i:i + 2]
            if len(digits) < 2 or not all(0x30 <= d <= 0x37 for d in digits) or int(bytes([e]) + digits, 8) > 255:
                raise _GoError("invalid syntax")
            out.append(int(bytes([e]) + digits, 8))
            i += 2
        elif e in b'\\"':
            out.append(e)
        else:  # includes \' inside double quotes
            raise _GoError("invalid syntax")
    return out.decode("utf-8", "surrogateescape")


def _parse_int(s: str) -> int:
    """strconv.ParseInt(s, 0, 64), which go-bexpr's CoerceInt calls."""
    def error(why: str) -> ValueError:
        return ValueError(f"strconv.ParseInt: parsing {_go_quote(s)}: {why}")
    u = s.encode("utf-8", "surrogateescape")
    neg = u[:1] == b"-"
    if u[:1] in (b"+", b"-"):
        u = u[1:]
    if not u:
        raise error("invalid syntax")
    base, digits = 10, u
    if u[:1] == b"0":
        prefix = u[1:2].lower()
        if len(u) >= 3 and prefix in (b"b", b"o", b"x"):
            base, digits = {b"b": 2, b"o": 8, b"x": 16}[prefix], u[2:]
        else:
            base, digits = 8, u[1:]
    n, underscores = 0, False
    for c in digits:
        if c == 0x5F:
            underscores = True
            continue
        low = c | 0x20
        d = c - 0x30 if 0x30 <= c <= 0x39 else low - 0x61 + 10 if 0x61 <= low <= 0x7A else 99
        if d >= base:
            raise error("invalid syntax")
        n = n * base + d
        if n > 0xFFFF_FFFF_FFFF_FFFF:  # ParseUint stops at the first overflow
            raise error("value out of range")
    if underscores and not _underscore_ok(u):
        raise error("invalid syntax")
    if n > (1 << 63) - (0 if neg else 1):
        raise error("value out of range")
    return -n if neg else n


def _underscore_ok(u: bytes) -> bool:
    # strconv.underscoreOK: "_" only between digits (a base prefix counts as a digit).
    saw, i, hexa = "^", 0, False
    if len(u) >= 2 and u[:1] == b"0" and u[1:2].lower() in (b"b", b"o", b"x"):
        saw, i, hexa = "0", 2, u[1:2].lower() == b"x"
    for c in u[i:]:
        if 0x30 <= c <= 0x39 or (hexa and 0x61 <= (c | 0x20) <= 0x66):
            saw = "0"
        elif c == 0x5F:
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
    return saw != "_"


_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
          "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf|infinity|nan))")


def _parse_bool(s: str) -> bool:
    if s in _BOOLS:
        return _BOOLS[s]
    raise ValueError(f"strconv.ParseBool: parsing {_go_quote(s)}: invalid syntax")


def _parse_float(s: str) -> float:
    # Decimal and inf/nan forms only; Go's hex floats are not accepted here.
    if not _FLOAT.fullmatch(s):
        raise ValueError(f"strconv.ParseFloat: parsing {_go_quote(s)}: invalid syntax")
    return float(s)


_COERCE: dict[str, Callable[[str], Any]] = {"string": str, "int": _parse_int, "bool": _parse_bool, "float": _parse_float}


# ------------------------------------------------------ RE2 on Python's re

_POSIX = {"alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
          "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~",
          "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z", "word": "0-9A-Za-z_",
          "xdigit": "0-9A-Fa-f"}
_FLAGS = re.compile(r"\(\?([imsU]*)(?:-([imsU]*))?([:)])")
_REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}")
_PY_ERRORS = {"nothing to repeat": "missing argument to repetition operator",
              "multiple repeat": "invalid nested repetition operator",
              "bad character range": "invalid character class range"}


def _go_regexp(pattern: str) -> re.Pattern[str]:
    """regexp.Compile, emulated: RE2 syntax translated for re, searched unanchored like regexp.Match."""
    translated = _translate_re2(pattern)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "possible nested set" and friends
            return re.compile(translated, re.ASCII)  # RE2's \d \w \s \b are ASCII-only
    except re.error as err:
        code = next((go for py, go in _PY_ERRORS.items() if err.msg.startswith(py)), err.msg)
        frag = translated[err.pos:] if err.pos is not None else translated
        raise _GoError(f"error parsing regexp: {code}: `{frag}`") from None


def _regexp_error(code: str, frag: str) -> _GoError:
    return _GoError(f"error parsing regexp: {code}: `{frag}`")


def _translate_re2(p: str) -> str:
    """Rewrite where RE2 and re differ: ``$`` is ``\\z`` unless (?m); ``(?i)`` mid-pattern lasts to the
    group's end; ``\\z``, ``\\Q..\\E``, ``\\x{..}``, octal, ``(?<name>``, ``[[:alpha:]]``; and refuse
    what RE2 refuses (look-arounds, back-references, ``\\Z``, possessive repeats)."""
    out: list[str] = []
    scoped: list[list[str]] = [[]]  # per open group: (?flags) turned into (?flags: ... ) still open
    multiline = [False]
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == "\\":
            piece, i = _re2_escape(p, i, in_class=False)
            out.append(piece)
            continue
        if c == "[":
            piece, i = _re2_class(p, i)
            out.append(piece)
            continue
        if c == "(" and p.startswith("(?", i):
            m = _FLAGS.match(p, i)
            named = re.match(r"\(\?P?<(\w+)>", p[i:])
            if named:
                out.append(f"(?P<{named.group(1)}>")
                scoped.append([])
                multiline.append(multiline[-1])
                i += named.end()
                continue
            if not m or m.group(2) == "" or "U" in m.group(1) + (m.group(2) or ""):
                raise _regexp_error("invalid or unsupported Perl syntax", p[i:i + 3])
            on, off, end = m.group(1), m.group(2) or "", m.group(3)
            flags = on + ("-" + off if off else "")
            ml = (multiline[-1] or "m" in on) and "m" not in off
            i = m.end()
            if end == ":":
                out.append(f"(?{flags}:")
                scoped.append([])
                multiline.append(ml)
            elif flags:
                out.append(f"(?{flags}:")
                scoped[-1].append(flags)
                multiline[-1] = ml
            continue
        if c == "(":
            out.append("(")
            scoped.append([])
            multiline.append(multiline[-1])
        elif c == ")":
            if len(scoped) == 1:
                raise _regexp_error("unexpected )", p)
            out.append(")" * len(scoped.pop()) + ")")
            multiline.pop()
        elif c == "|":
            out.append(")" * len(scoped[-1]) + "|" + "".join(f"(?{f}:" for f in scoped[-1]))
        elif c == "$":
            out.append("$" if multiline[-1] else r"\Z")
        elif c == "{" and (m := _REPEAT.match(p, i)):
            if int(m.group(1)) > 1000 or (m.group(3) and int(m.group(3)) > 1000):
                raise _regexp_error("invalid repeat count", m.group(0))
            out.append(m.group(0))
            i = m.end() - 1
            c = "*"
        else:
            out.append(r"\{" if c == "{" else c)  # RE2 reads a malformed repeat such as {,3} literally
        i += 1
        if c in ("*", "+", "?") and p.startswith("+", i):  # re takes *+ as possessive; RE2 refuses it
            raise _regexp_error("invalid nested repetition operator", p[i - 1:i + 1])
    if len(scoped) > 1:
        raise _regexp_error("missing closing )", p)
    return "".join(out) + ")" * len(scoped[0])


def _re2_escape(p: str, i: int, in_class: bool) -> tuple[str, int]:
    if i + 1 >= len(p):
        raise _regexp_error("trailing backslash at end of expression", "")
    c = p[i + 1]
    if "0" <= c <= "7":  # octal; a lone \1-\7 would be a back-reference, which RE2 lacks
        j, digits = i + 2, c
        while len(digits) < 3 and j < len(p) and "0" <= p[j] <= "7":
            digits, j = digits + p[j], j + 1
        if c != "0" and len(digits) == 1:
            raise _regexp_error("invalid escape sequence", "\\" + c)
        return re.escape(chr(int(digits, 8))), j
    if c == "x":
        if p.startswith("{", i + 2):
            end = p.find("}", i + 3)
            digits = p[i + 3:end] if end > 0 else ""
            if not digits or not all(d in "0123456789abcdefABCDEF" for d in digits) or int(digits, 16) > 0x10FFFF:
                raise _regexp_error("invalid escape sequence", p[i:end + 1 if end > 0 else len(p)])
            return re.escape(chr(int(digits, 16))), end + 1
        digits = p[i + 2:i + 4]
        if len(digits) < 2 or not all(d in "0123456789abcdefABCDEF" for d in digits):
            raise _regexp_error("invalid escape sequence", p[i:i + 4])
        return re.escape(chr(int(digits, 16))), i + 4
    if c in "dDwWsSafnrtv" or (not in_class and c in "AbB"):
        return "\\" + c, i + 2
    if not in_class and c == "z":
        return r"\Z", i + 2
    if not in_class and c == "Q":
        end = p.find("\\E", i + 2)
        return re.escape(p[i + 2:] if end < 0 else p[i + 2:end]), len(p) if end < 0 else end + 2
    if c in "pP":
        raise _regexp_error("Unicode classes are not supported here", p[i:i + 3])
    if c.isascii() and not c.isalnum():
        return "\\" + c, i + 2
    raise _regexp_error("invalid escape sequence", "\\" + c)


def _re2_class(p: str, i: int) -> tuple[str, int]:
    out, j = ["["], i + 1
    if p.startswith("^", j):
        out.append("^")
        j += 1
    first = True
    while j < len(p):
        c = p[j]
        if c == "]" and not first:
            return "".join(out) + "]", j + 1
        first = False
        if p.startswith("[:", j):
            end = p.find(":]", j + 2)
            name = p[j + 2:end] if end > 0 else ""
            if name in _POSIX:
                out.append(_POSIX[name])
                j = end + 2
                continue
            if end > 0 and re.fullmatch(r"\^?\w+", name):
                raise _regexp_error("invalid character class range", p[j:end + 2])
        if c == "\\":
            piece, j = _re2_escape(p, j, in_class=True)
            out.append(piece)
            continue
        out.append("\\" + c if c in "[&~|" else c)  # literal in RE2; re would warn or treat as set syntax
        j += 1
    raise _regexp_error("missing closing ]", p[i:])


_define_grammar()  # last: its literals are quoted with _go_quote
