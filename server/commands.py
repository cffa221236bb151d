"""Raft commands: small typed records, never live objects.

On the wire a command is one type byte followed by the JSON of its dataclass
(``encode``/``decode``). Type bytes are part of the log format: never reuse or
renumber one. Everything apply needs that is not a pure function of the log
(IDs, timestamps, generated keys) is filled in by the submitter before encoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from proconsul.server.codec import from_wire, to_wire


@dataclass
class KVSRequest:
    """A single KV write, Consul's structs.KVSRequest. ``op`` is one of KV_OPS; ``index`` is the CAS index."""

    op: str
    key: str
    value: bytes | None = None
    flags: int = 0
    index: int = 0
    session: str = ""


KV_OPS = ("set", "cas", "lock", "unlock", "delete", "delete-cas", "delete-tree")


@dataclass
class TxnKVOp:
    """One KV operation inside a transaction, Consul's api.KVTxnOp."""

    verb: str
    key: str
    value: bytes | None = None
    flags: int = 0
    index: int = 0
    session: str = ""


TXN_KV_WRITE_VERBS = frozenset({"set", "cas", "lock", "unlock", "delete", "delete-cas", "delete-tree"})
TXN_KV_VERBS = TXN_KV_WRITE_VERBS | {"get", "get-tree", "check-index", "check-session", "check-not-exists"}


@dataclass
class TxnRequest:
    """An all-or-nothing transaction, Consul's structs.TxnRequest (KV ops for now)."""

    ops: list[TxnKVOp] = field(default_factory=list)


@dataclass
class TombstoneRequest:
    """Reap KV tombstones at or below ``reap_index`` (leader's tombstone GC)."""

    reap_index: int


@dataclass
class RestoreRequest:
    """Replace the whole state with snapshot tables (rows as lists, bytes as base64 via the codec)."""

    tables: dict[str, list[list[Any]]]


@dataclass
class BarrierRequest:
    """No-op entry: once applied, everything committed before it is applied too."""


# type byte -> command class; append only.
COMMAND_TYPES: dict[int, type] = {
    1: KVSRequest,
    2: TxnRequest,
    3: TombstoneRequest,
    4: RestoreRequest,
    5: BarrierRequest,
}
_TYPE_BYTES: dict[type, bytes] = {cls: bytes([t]) for t, cls in COMMAND_TYPES.items()}


class UnknownCommandError(Exception):
    """A log entry this version cannot decode: applying past it would diverge."""


def encode(cmd: Any) -> bytes:
    """Command to log payload."""
    return _TYPE_BYTES[type(cmd)] + json.dumps(to_wire(cmd), separators=(",", ":")).encode()


def decode(payload: bytes) -> Any:
    """Log payload to command; raises UnknownCommandError for a type this version does not know."""
    cls = COMMAND_TYPES.get(payload[0]) if payload else None
    if cls is None:
        raise UnknownCommandError(f"unknown command type {payload[:1]!r}")
    return from_wire(cls, json.loads(payload[1:]))
