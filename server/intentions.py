"""Intentions as Consul serves them from service-intentions config entries (agent/structs/intention.go).

Since Consul 1.9 an intention is one source of the ``service-intentions``
config entry of its destination. The legacy ID-based API still works on top:
sources it creates carry ``LegacyID``, ``LegacyMeta``, ``LegacyCreateTime`` and
``LegacyUpdateTime``, and an entry written through ``/v1/config`` (or the
``exact`` endpoints) loses those fields, after which the legacy API refuses to
edit it. This module holds the pure parts: the Intention JSON a source turns
into (``ToIntention``), precedence order, the legacy validation, the decision
(Consul's IntentionDecision) and the default policy.

Namespaces and partitions are Enterprise features: every intention is in the
``default`` namespace, and a source of ``ns/name`` with another namespace is
refused.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from typing import Any

from proconsul.server.config_entries import DEFAULT_NAMESPACE, META_KEY_MAX, META_MAX_PAIRS, META_VALUE_MAX, WILDCARD
from proconsul.server.filter import INT, STRING, MapOf, Struct

INTENTION_NOT_FOUND = "Intention not found"  # consul.ErrIntentionNotFound

# Consul's Intention struct minus its bexpr:"-" fields (the "Filtering" table of the intentions API docs).
FILTER_SCHEMA = Struct({
    "ID": STRING, "Description": STRING, "SourceNS": STRING, "SourceName": STRING, "DestinationNS": STRING,
    "DestinationName": STRING, "SourcePartition": STRING, "DestinationPartition": STRING, "SourcePeer": STRING,
    "SourceSamenessGroup": STRING, "SourceType": STRING, "Action": STRING, "Meta": MapOf(STRING), "Precedence": INT,
})


def rfc3339_nano(ns: int | None = None) -> str:
    """Go's time.Time JSON form (RFC3339Nano, UTC, trailing zeros of the fraction dropped)."""
    ns = time.time_ns() if ns is None else ns
    seconds, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def intention_hash(ixn: dict[str, Any]) -> bytes:
    """Intention.SetHash: BLAKE2b-256 over the user-set fields (what legacy replication compares)."""
    h = hashlib.blake2b(digest_size=32)
    for name in ("ID", "Description", "SourceNS", "SourceName", "DestinationNS", "DestinationName", "SourceType", "Action"):
        h.update(str(ixn.get(name, "")).encode())
    h.update(struct.pack("<Q", ixn.get("Precedence", 0) & 0xFFFFFFFFFFFFFFFF))
    meta = ixn.get("Meta") or {}
    for k in sorted(meta):
        h.update(k.encode())
        h.update(meta[k].encode())
    return h.digest()


def intention_json(entry: dict[str, Any], src: dict[str, Any], create_index: int, modify_index: int) -> dict[str, Any]:
    """ServiceIntentionsConfigEntry.ToIntention in Intention.MarshalJSON's field order (CreatedAt/UpdatedAt first, when set)."""
    legacy_id = src.get("LegacyID", "")
    meta = (src.get("LegacyMeta") or {}) if legacy_id else (entry.get("Meta") or {})
    out: dict[str, Any] = {}
    if src.get("LegacyCreateTime"):
        out["CreatedAt"] = src["LegacyCreateTime"]
    if src.get("LegacyUpdateTime"):
        out["UpdatedAt"] = src["LegacyUpdateTime"]
    if legacy_id:
        out["ID"] = legacy_id
    if src.get("Description"):
        out["Description"] = src["Description"]
    out["SourceNS"] = DEFAULT_NAMESPACE
    out["SourceName"] = src.get("Name", "")
    out["DestinationNS"] = DEFAULT_NAMESPACE
    out["DestinationName"] = entry.get("Name", "")
    out["SourceType"] = src.get("Type", "consul")
    if src.get("Action"):
        out["Action"] = src["Action"]
    if src.get("Permissions"):
        out["Permissions"] = src["Permissions"]
    if meta:
        out["Meta"] = dict(meta)
    out["Precedence"] = src.get("Precedence", 0)
    if legacy_id:
        out["Hash"] = base64.b64encode(intention_hash({**out, "Meta": meta})).decode("ascii")
    out["CreateIndex"] = create_index
    out["ModifyIndex"] = modify_index
    return out


def sort_key(ixn: dict[str, Any]) -> tuple:
    """IntentionPrecedenceSorter: highest precedence first, then the (source, destination) tuple."""
    return (
        -ixn.get("Precedence", 0), ixn.get("SourceSamenessGroup", ""), ixn.get("SourcePeer", ""),
        ixn.get("SourcePartition", ""), ixn.get("SourceNS", ""), ixn.get("SourceName", ""),
        ixn.get("DestinationPartition", ""), ixn.get("DestinationNS", ""), ixn.get("DestinationName", ""),
    )


def intention_string(ixn: dict[str, Any]) -> str:
    """structs.Intention.String, as the authorize Reason quotes it."""
    id_part = f"ID: {ixn['ID']}, " if ixn.get("ID") else ""
    if ixn.get("Permissions"):
        detail = f"Permissions: {len(ixn['Permissions'])}"
    else:
        detail = f"Action: {ixn.get('Action', '').upper()}"
    return (
        f"{ixn.get('SourceNS', '')}/{ixn.get('SourceName', '')} => {ixn.get('DestinationNS', '')}/{ixn.get('DestinationName', '')} "
        f"({id_part}Precedence: {ixn.get('Precedence', 0)}, {detail})"
    )


def _go_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def legacy_validate(ixn: dict[str, Any]) -> list[str]:
    """Intention.Validate (the legacy API's checks), every failure in Consul's order."""
    errors: list[str] = []
    for field in ("SourceNS", "SourceName", "DestinationNS", "DestinationName"):
        if not ixn.get(field):
            errors.append(f"{field} must be set")
    for ns_field, name_field in (("SourceNS", "SourceName"), ("DestinationNS", "DestinationName")):
        ns, name = ixn.get(ns_field, ""), ixn.get(name_field, "")
        if ns != WILDCARD and WILDCARD in ns:
            errors.append(f"{ns_field}: wildcard character '*' cannot be used with partial values")
        if name != WILDCARD:
            if WILDCARD in name:
                errors.append(f"{name_field}: wildcard character '*' cannot be used with partial values")
            if ns == WILDCARD:
                errors.append(f"{name_field}: exact value cannot follow wildcard namespace")
    if len(ixn.get("Description", "")) > META_VALUE_MAX:
        errors.append(f"Description exceeds maximum length {META_VALUE_MAX}")
    meta = ixn.get("Meta") or {}
    if len(meta) > META_MAX_PAIRS:
        errors.append(f"Meta exceeds maximum element count {META_MAX_PAIRS}")
    for k, v in meta.items():
        if len(k) > META_KEY_MAX:
            errors.append(f"Meta key {_go_quote(k)} exceeds maximum length {META_KEY_MAX}")
        if len(v) > META_VALUE_MAX:
            errors.append(f"Meta value for key {_go_quote(k)} exceeds maximum length {META_VALUE_MAX}")
    if ixn.get("Action", "") not in ("allow", "deny"):
        errors.append("Action must be set to 'allow' or 'deny'")
    if ixn.get("Permissions"):
        errors.append("Permissions must not be set when using the legacy APIs")
    if ixn.get("SourceType", "") != "consul":
        errors.append("SourceType must be set to 'consul'")
    return errors


def to_source(ixn: dict[str, Any], legacy: bool) -> dict[str, Any]:
    """Intention.ToSourceIntention: the source an intention becomes in its destination's config entry."""
    src: dict[str, Any] = {"Name": ixn.get("SourceName", ""), "Action": ixn.get("Action", ""), "Type": ixn.get("SourceType", "")}
    if not legacy and ixn.get("Permissions"):
        src["Permissions"] = ixn["Permissions"]
    if legacy:
        src["LegacyID"] = ixn.get("ID", "")
        src["LegacyMeta"] = dict(ixn.get("Meta") or {})
    if ixn.get("Description"):
        src["Description"] = ixn["Description"]
    return src


def target_matches(ixn: dict[str, Any], target: str, match_type: str) -> bool:
    """connect.IntentionMatch for the default namespace: the named side is the target or a wildcard."""
    name = ixn.get("SourceName" if match_type == "source" else "DestinationName", "")
    return name == WILDCARD or name == target


def decide(intentions: list[dict[str, Any]], target: str, match_type: str, allow_permissions: bool) -> tuple[bool, dict[str, Any] | None]:
    """IntentionDecision: the first (highest-precedence) intention covering ``target``; L7 ones decide ``allow_permissions``.

    Returns (allowed, matched intention); ``matched`` is None when the default policy must decide.
    """
    for ixn in intentions:
        if target_matches(ixn, target, match_type):
            if ixn.get("Permissions"):
                return allow_permissions, ixn
            return ixn.get("Action") == "allow", ixn
    return False, None


def default_allow(acl_enabled: bool, acl_default_policy: str, default_intention_policy: str = "") -> bool:
    """What applies when no intention matches: ``default_intention_policy`` if set, else the ACL default policy
    (allow while ACLs are disabled), as Consul's DefaultIntentionAllow and AgentConnectAuthorize decide."""
    if default_intention_policy:
        return default_intention_policy == "allow"
    return not acl_enabled or acl_default_policy == "allow"


def can_read(ixn: dict[str, Any], authz: Any) -> bool:
    """Intention.CanRead: intention:read on either end, so both sides can see why a connection is (not) allowed."""
    source, destination = ixn.get("SourceName", ""), ixn.get("DestinationName", "")
    if source and not ixn.get("SourcePeer") and authz.intention_read(source):
        return True
    return bool(destination) and authz.intention_read(destination)


def can_write(ixn: dict[str, Any], authz: Any) -> bool:
    """Intention.CanWrite: intention:write on the destination ("*" needs it for every service); none without one."""
    destination = ixn.get("DestinationName", "")
    return bool(destination) and authz.intention_write(destination)


def uuid_error(text: str) -> str:
    """go-memdb's UUIDFieldIndex parse error for an intention ID ("" when it is a well-formed UUID)."""
    if len(text) != 36:
        return "UUID must be 36 characters"
    hyphens = text.count("-")
    if hyphens > 4:
        return f'UUID should have maximum of 4 "-"; got {hyphens}'
    hexdigits = text.replace("-", "")
    if len(hexdigits) % 2:
        return "Input (without hyphens) must be even length"
    for c in hexdigits:
        if c not in "0123456789abcdefABCDEF":
            return f"Invalid UUID: encoding/hex: invalid byte: U+{ord(c):04X} {c!r}"
    return ""
