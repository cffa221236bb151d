"""Typed readers for request-body fields, with Consul's decode errors.

Consul decodes bodies with Go's encoding/json: field names match
case-insensitively (we also fold snake_case, as its config decoder does),
unknown fields are refused, and a wrong type is a 400 "Request decode failed".
Every reader takes ``what`` (the field's name, for the message) and ``err``
(the message's prefix: /v1/txn says "Failed to parse body").
"""

from __future__ import annotations

import json
import re
from typing import Any

from proconsul.server.durations import parse_duration
from proconsul.server.errors import BadRequest

DECODE = "Request decode failed"

# Fields Consul's structs carry that we accept and ignore (Enterprise, peering, py-consul's WriteRequest).
TOLERATED = {"namespace", "partition", "locality", "peername", "writerequest", "enterprisemeta"}


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def loads(raw: bytes) -> Any:
    """A JSON body as Go's encoding/json reads it: NaN and Infinity are errors (ValueError), and a
    lone UTF-16 surrogate escape ("\\ud800") becomes U+FFFD. Python's json keeps the surrogate, and a
    string holding one cannot be encoded as UTF-8: stored, it would make every snapshot fail."""
    data = json.loads(raw, parse_constant=_no_constant)
    return _replace_surrogates(data) if _SURROGATE_ESCAPE.search(raw) else data


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


def _fold_key(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def fold(data: Any, what: str, err: str = DECODE) -> dict[str, Any]:
    """A struct's fields keyed case- and underscore-insensitively ("CheckID", "check_id" -> "checkid")."""
    if not isinstance(data, dict):
        raise BadRequest(f"{err}: {what}: expected an object, got {json.dumps(data)[:40]}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise BadRequest(f"{err}: {what}: field names must be strings")
        out[_fold_key(key)] = value
    return out


def check_unknown(data: dict[str, Any], known: set[str], what: str, strict: bool) -> None:
    """Unknown fields are refused: "unknown field" in request bodies, "invalid config key" in config files."""
    if not isinstance(data, dict):
        raise BadRequest(f"{DECODE}: {what}: expected an object, got {json.dumps(data)[:40]}")
    for key in data:
        folded = _fold_key(key)
        if folded not in known and folded not in TOLERATED:
            if strict:
                raise BadRequest(f"{what}: invalid config key {key}")
            raise BadRequest(f'{DECODE}: json: unknown field "{key}"')


def as_str(v: Any, what: str, err: str = DECODE) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise BadRequest(f"{err}: {what}: expected a string, got {json.dumps(v)[:40]}")
    return v


def as_int(v: Any, what: str, lo: int = 0, hi: int = 2**63 - 1, err: str = DECODE) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"{err}: {what}: expected an integer, got {json.dumps(v)[:40]}")
    if not lo <= v <= hi:
        raise BadRequest(f"Invalid {what}: {v} is out of range ({lo}-{hi})")
    return v


def as_bool(v: Any, what: str, err: str = DECODE) -> bool:
    if v is None:
        return False
    if not isinstance(v, bool):
        raise BadRequest(f"{err}: {what}: expected true or false, got {json.dumps(v)[:40]}")
    return v


def as_strlist(v: Any, what: str, err: str = DECODE) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadRequest(f"{err}: {what}: expected a list of strings")
    return list(v)


def as_strmap(v: Any, what: str, err: str = DECODE) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise BadRequest(f"{err}: {what}: expected an object of strings")
    return dict(v)


def as_duration(v: Any, what: str, err: str = DECODE) -> float:
    """A Go duration: "10s", "1m30s"; a bare number is nanoseconds, as Go decodes time.Duration."""
    if v is None or v == "":
        return 0.0
    if isinstance(v, bool):
        raise BadRequest(f'{err}: {what}: expected a duration like "10s"')
    if isinstance(v, (int, float)):
        if not abs(v) <= 2**63 - 1:  # NaN, Infinity (also 1e400) and past int64: Go cannot decode them either
            raise BadRequest(f"{err}: {what}: {json.dumps(v)} does not fit a duration")
        return float(v) / 1e9
    if isinstance(v, str):
        try:
            return parse_duration(v)
        except ValueError:
            raise BadRequest(f'{err}: {what}: {v!r} is not a duration like "10s"') from None
    raise BadRequest(f'{err}: {what}: expected a duration like "10s"')
