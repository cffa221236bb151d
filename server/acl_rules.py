"""Consul's ACL rules language: parse policy rules (HCL or JSON) into ``Rules``.

Matches Consul's ``acl.NewPolicyFromSource`` (acl/policy.go, acl/policy_ce.go):

* Text whose first non-blank character is ``{`` is JSON, anything else is HCL,
  as HCL1's decoder decides. Both give the same ``Rules``.
* Segmented resources (``key "web/" { policy = "read" }``) become ``Rule``
  tuples in source order, duplicates kept; the authorizer merges them the way
  Consul's ``MergePolicies`` does. Unsegmented ones (``acl``, ``operator``,
  ``keyring``, ``mesh``, ``peering``) are plain strings, ``""`` when unset.
* Validation runs in Consul's order and raises ``RulesError`` with Consul's
  text: ``Failed to parse ACL rules: ...`` for syntax and shape,
  ``Invalid key policy: &acl.KeyRule{...}`` for a bad disposition. ``list`` is
  accepted on ``key``/``key_prefix`` only. Dispositions are case-insensitive,
  as Consul's ``AccessLevelFromString``; they are stored lower-cased.
* Unknown attributes inside a rule block are ignored, as HCL1's struct decoding
  ignores them (so ``service "" { service = "write" }`` fails as an empty
  policy). Unknown resource types are refused rather than silently ignored.

HCL is parsed with python-hcl2 (an HCL2 parser). Consul uses HCL1; for the
rules language the two agree, except that HCL2 also reads expressions, which
we refuse: a value must be a quoted string (or a number, which HCL1 turns into
a string). An attribute set twice in one body is an error, as in Consul's
``hcl.DecodeErrorOnDuplicates``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from proconsul.server.errors import BadRequest

POLICY_DENY = "deny"
POLICY_READ = "read"
POLICY_LIST = "list"
POLICY_WRITE = "write"

_DISPOSITIONS = frozenset((POLICY_DENY, POLICY_READ, POLICY_LIST, POLICY_WRITE))

# Resources with a segment, in Consul's validation order, with the Go struct
# and key-field names its error messages print.
SEGMENTED = (
    "agent", "agent_prefix",
    "key", "key_prefix",
    "node", "node_prefix",
    "service", "service_prefix",
    "session", "session_prefix",
    "event", "event_prefix",
    "query", "query_prefix",
)
UNSEGMENTED = ("acl", "keyring", "operator", "mesh", "peering")

_GO_RULE = {
    "agent": ("AgentRule", "Node", False),
    "key": ("KeyRule", "Prefix", True),
    "node": ("NodeRule", "Name", True),
    "service": ("ServiceRule", "Name", True),
    "session": ("SessionRule", "Node", False),
    "event": ("EventRule", "Event", False),
    "query": ("PreparedQueryRule", "Prefix", False),
}

@lru_cache(maxsize=1)
def _hcl() -> Any:
    """python-hcl2 and what the checks below need of it, imported on first use: with lark it takes ~60 ms, a tenth
    of an agent's start, and most agents never read HCL rules."""
    from types import SimpleNamespace

    import hcl2
    from hcl2.rules.base import AttributeRule, BlockRule
    from hcl2.rules.expressions import ExprTermRule
    from hcl2.rules.literal_rules import IdentifierRule

    options = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True, preserve_heredocs=False)
    return SimpleNamespace(
        parses=hcl2.parses, options=options, AttributeRule=AttributeRule, BlockRule=BlockRule, ExprTermRule=ExprTermRule,
        IdentifierRule=IdentifierRule,
    )


class RulesError(BadRequest):
    """The ACL rules do not parse or name an invalid policy."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One segmented rule: ``segment`` is the exact name or the prefix."""

    segment: str
    policy: str
    intentions: str = ""  # services only; "" means derived from policy


@dataclass(frozen=True, slots=True)
class Rules:
    """One policy's parsed rules, a field per resource (Consul's ``PolicyRules``)."""

    acl: str = ""
    keyring: str = ""
    operator: str = ""
    mesh: str = ""
    peering: str = ""
    agent: tuple[Rule, ...] = ()
    agent_prefix: tuple[Rule, ...] = ()
    key: tuple[Rule, ...] = ()
    key_prefix: tuple[Rule, ...] = ()
    node: tuple[Rule, ...] = ()
    node_prefix: tuple[Rule, ...] = ()
    service: tuple[Rule, ...] = ()
    service_prefix: tuple[Rule, ...] = ()
    session: tuple[Rule, ...] = ()
    session_prefix: tuple[Rule, ...] = ()
    event: tuple[Rule, ...] = ()
    event_prefix: tuple[Rule, ...] = ()
    query: tuple[Rule, ...] = ()
    query_prefix: tuple[Rule, ...] = ()


@lru_cache(maxsize=1024)
def parse_rules(text: str) -> Rules:
    """Parse HCL or JSON ACL rules and validate them, as Consul's NewPolicyFromSource.

    Cached by text (``Rules`` is immutable; errors are not cached): an HCL parse
    costs about a millisecond, and the same policies and identity templates are
    resolved over and over.
    """
    if not text or not text.strip():
        return Rules()
    doc = _load_json(text) if text.lstrip().startswith("{") else _load_hcl(text)
    rules = _build(doc)
    _validate(rules)
    return rules


def takes_precedence_over(a: str, b: str) -> bool:
    """True when disposition ``a`` replaces ``b`` in a merge (Consul's takesPrecedenceOver).

    deny > write > list > read > unset; an equal non-empty ``a`` also replaces ``b``.
    """
    for level in (POLICY_DENY, POLICY_WRITE, POLICY_LIST, POLICY_READ):
        if a == level:
            return True
        if b == level:
            return False
    return False


def merge_rules(policies: list[Rules] | tuple[Rules, ...]) -> Rules:
    """Merge several policies into one, as Consul's MergePolicies.

    Per resource and segment (exact and prefix kept apart) the disposition that
    takes precedence wins; for services ``policy`` and ``intentions`` are
    merged independently.
    """
    scalars = {name: "" for name in UNSEGMENTED}
    tables: dict[str, dict[str, Rule]] = {name: {} for name in SEGMENTED}
    for rules in policies:
        for name in UNSEGMENTED:
            value = getattr(rules, name)
            if takes_precedence_over(value, scalars[name]):
                scalars[name] = value
        for name in SEGMENTED:
            table = tables[name]
            for rule in getattr(rules, name):
                old = table.get(rule.segment)
                if old is None:
                    table[rule.segment] = rule
                elif name.startswith("service"):
                    policy = rule.policy if takes_precedence_over(rule.policy, old.policy) else old.policy
                    intentions = (
                        rule.intentions
                        if takes_precedence_over(rule.intentions, old.intentions)
                        else old.intentions
                    )
                    table[rule.segment] = Rule(rule.segment, policy, intentions)
                elif takes_precedence_over(rule.policy, old.policy):
                    table[rule.segment] = rule
    return Rules(**scalars, **{name: tuple(t.values()) for name, t in tables.items()})


# --- templated policies -------------------------------------------------------

_IDENTITY_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$")
IDENTITY_NAME_MAX_LENGTH = 256


def is_valid_identity_name(name: str) -> bool:
    """Whether ``name`` may be a service or node identity's name (Consul's IsValidServiceIdentityName)."""
    return 0 < len(name) <= IDENTITY_NAME_MAX_LENGTH and _IDENTITY_NAME.match(name) is not None


def service_identity_rules(name: str, datacenters: list[str] | tuple[str, ...] = ()) -> str:
    """Rules of a service identity's synthetic policy (Consul's aclPolicyTemplateServiceIdentity).

    ``datacenters`` scopes where the synthetic policy applies; Consul puts it on
    the policy, not in its rules, so it does not change the text.
    """
    _check_identity_name("Service", name)
    return (
        f'\nservice "{name}" {{\n\tpolicy = "write"\n}}\n'
        f'service "{name}-sidecar-proxy" {{\n\tpolicy = "write"\n}}\n'
        'service_prefix "" {\n\tpolicy = "read"\n}\n'
        'node_prefix "" {\n\tpolicy = "read"\n}'
    )


def node_identity_rules(node: str, dc: str = "") -> str:
    """Rules of a node identity's synthetic policy (Consul's aclPolicyTemplateNodeIdentity).

    ``dc`` is the one datacenter the policy applies in; like a service
    identity's datacenters it is a property of the policy, not of its rules.
    """
    _check_identity_name("Node", node)
    return f'\nnode "{node}" {{\n\tpolicy = "write"\n}}\nservice_prefix "" {{\n\tpolicy = "read"\n}}'


def _check_identity_name(kind: str, name: str) -> None:
    if not is_valid_identity_name(name):
        raise RulesError(
            f"{kind} identity {_go_quote(name)} has an invalid name. "
            "Only lowercase alphanumeric characters, '-' and '_' are allowed"
        )


# --- decoding -----------------------------------------------------------------


def _load_json(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise RulesError(f"Failed to parse ACL rules: {exc}") from None
    if not isinstance(doc, dict):
        raise RulesError("Failed to parse ACL rules: root must be an object")
    return doc


def _load_hcl(text: str) -> dict[str, Any]:
    hcl = _hcl()
    try:
        tree = hcl.parses(text)
    except Exception as exc:  # lark raises several unrelated classes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RulesError(f"Failed to parse ACL rules: {first}") from None
    _check_hcl_body(tree.body, hcl)
    try:
        doc = tree.serialize(hcl.options)
    except Exception as exc:
        raise RulesError(f"Failed to parse ACL rules: {exc}") from None
    return doc


def _check_hcl_body(body: Any, hcl: Any) -> None:
    """Refuse what HCL1 would refuse but HCL2 reads: repeated attributes and bare expressions."""
    seen: set[str] = set()
    for child in body.children:
        if isinstance(child, hcl.AttributeRule):
            name = child.identifier.serialize(hcl.options)
            if name in seen:
                raise RulesError(
                    f"Failed to parse ACL rules: The argument {_go_quote(name)} was already set. "
                    "Each argument can only be defined once"
                )
            seen.add(name)
            expr = child.expression
            inner = expr.expression if isinstance(expr, hcl.ExprTermRule) else expr
            if isinstance(inner, hcl.IdentifierRule):
                raise RulesError(
                    f"Failed to parse ACL rules: {name}: unknown token: IDENT "
                    f"{inner.serialize(hcl.options)} (values must be quoted strings)"
                )
        elif isinstance(child, hcl.BlockRule):
            _check_hcl_body(child.body, hcl)


def _build(doc: dict[str, Any]) -> Rules:
    fields: dict[str, Any] = {}
    for resource, value in doc.items():
        if resource in UNSEGMENTED:
            fields[resource] = _scalar(resource, value)
        elif resource in SEGMENTED:
            fields[resource] = tuple(_segmented(resource, value))
        else:
            raise RulesError(f"Failed to parse ACL rules: unknown resource type {_go_quote(resource)}")
    return Rules(**fields)


def _scalar(resource: str, value: Any) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # HCL1 flattens a one-element list into a string field
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RulesError(
            f"Failed to parse ACL rules: {resource}: expected a string, got {type(value).__name__}"
        )
    return _disposition(value)


def _disposition(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    lowered = text.lower()
    return lowered if lowered in _DISPOSITIONS else text


def _segmented(resource: str, value: Any) -> list[Rule]:
    """Turn the shapes HCL blocks and JSON objects take into rules, in source order."""
    out: list[Rule] = []
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, dict):
            raise RulesError(
                f"Failed to parse ACL rules: {resource}: expected an object, got {type(item).__name__}"
            )
        for segment, body in item.items():
            if not isinstance(body, (dict, list)):
                # `key { policy = "read" }` (no label) reads as {"policy": "read"}
                raise RulesError(f"Failed to parse ACL rules: {resource}: a rule needs a quoted name")
            for part in body if isinstance(body, list) else [body]:
                if not isinstance(part, dict):
                    raise RulesError(
                        f"Failed to parse ACL rules: {resource} {_go_quote(segment)}: expected an object"
                    )
                out.append(_rule(resource, str(segment), part))
    return out


def _rule(resource: str, segment: str, body: dict[str, Any]) -> Rule:
    policy = _attr(resource, segment, body, "policy")
    intentions = _attr(resource, segment, body, "intentions") if resource.startswith("service") else ""
    return Rule(segment, policy, intentions)


def _attr(resource: str, segment: str, body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RulesError(
            f"Failed to parse ACL rules: {resource} {_go_quote(segment)}: {name}: "
            f"expected a string, got {type(value).__name__}"
        )
    return _disposition(value)


# --- validation ---------------------------------------------------------------


def _validate(rules: Rules) -> None:
    if rules.acl and rules.acl not in _BASIC:
        raise RulesError(f"Invalid acl policy: {_go_quote(rules.acl)}")
    for resource in SEGMENTED:
        base = resource.removesuffix("_prefix")
        allowed = _DISPOSITIONS if base == "key" else _BASIC
        for rule in getattr(rules, resource):
            if rule.policy not in allowed:
                raise RulesError(f"Invalid {resource} policy: {_go_rule(base, rule)}")
            if base == "service" and rule.intentions and rule.intentions not in _BASIC:
                raise RulesError(f"Invalid {resource} intentions policy: {_go_rule(base, rule)}")
    for resource in ("keyring", "operator", "mesh", "peering"):
        value = getattr(rules, resource)
        if value and value not in _BASIC:
            raise RulesError(f"Invalid {resource} policy: {_go_quote(value)}")


_BASIC = frozenset((POLICY_DENY, POLICY_READ, POLICY_WRITE))


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _go_rule(base: str, rule: Rule) -> str:
    """Render a rule as Go's %#v does in Consul's messages."""
    struct, key_field, enterprise = _GO_RULE[base]
    parts = [f"{key_field}:{_go_quote(rule.segment)}", f"Policy:{_go_quote(rule.policy)}"]
    if base == "service":
        parts.append(f"Intentions:{_go_quote(rule.intentions)}")
    if enterprise:
        parts.append("EnterpriseRule:acl.EnterpriseRule{}")
    return f"&acl.{struct}{{{', '.join(parts)}}}"
