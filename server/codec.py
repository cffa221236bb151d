"""JSON wire form for dataclasses: Raft commands and server RPC arguments.

``to_wire`` turns a dataclass into JSON-ready data (bytes become base64 text);
``from_wire`` rebuilds it from its type hints. Plans are computed once per class.
"""

from __future__ import annotations

import base64
import json
import dataclasses
import types
import typing
from functools import lru_cache
from typing import Any, Callable

_b64encode = base64.b64encode
# One encoder for every compact JSON body: json.dumps with non-default arguments builds a new one per call.
_compact = json.JSONEncoder(separators=(",", ":")).encode


def compact_json(obj: Any) -> bytes:
    """``obj`` as compact JSON bytes (Go's encoding/json layout)."""
    return _compact(obj).encode()

_b64decode = base64.b64decode


def to_wire(obj: Any) -> Any:
    """Dataclass (or list/dict of them) to JSON-ready data."""
    cls = type(obj)
    if cls in _PLAIN:
        return obj
    if dataclasses.is_dataclass(cls) and cls is not type:
        return _encoder(cls)(obj)
    if isinstance(obj, bytes):
        return _b64encode(obj).decode("ascii")
    if isinstance(obj, (list, tuple)):
        return [to_wire(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    return obj


def from_wire(cls: type, data: Any) -> Any:
    """Rebuild an instance of ``cls`` from ``to_wire`` output; unknown keys are ignored."""
    return _decoder(cls)(data)


_PLAIN = frozenset({str, int, bool, float, type(None)})


@lru_cache(maxsize=None)
def _encoder(tp: Any) -> Callable[[Any], Any]:
    """``to_wire`` for values of type ``tp``, planned once from its type hints (commands are encoded on
    every write: a plan skips the per-field type tests)."""
    origin = typing.get_origin(tp)
    if tp in _PLAIN:
        return lambda v: v
    if tp is bytes:
        return lambda v: None if v is None else _b64encode(v).decode("ascii")
    if dataclasses.is_dataclass(tp):
        try:
            hints = typing.get_type_hints(tp)
        except Exception:  # an unresolvable hint: encode that class generically
            hints = {}
        plan = [(f.name, _encoder(hints[f.name]) if f.name in hints else to_wire) for f in dataclasses.fields(tp)]

        def encode_dataclass(obj: Any) -> Any:
            return {name: enc(getattr(obj, name)) for name, enc in plan}

        return encode_dataclass
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            inner = _encoder(args[0])
            return lambda v: None if v is None else inner(v)
    if origin in (list, tuple) and (args := typing.get_args(tp)) and args[-1] is not Ellipsis and len(args) == 1:
        if args[0] in _PLAIN:
            return lambda v: None if v is None else list(v)
        inner = _encoder(args[0])
        return lambda v: None if v is None else [inner(x) for x in v]
    return to_wire


@lru_cache(maxsize=None)
def _decoder(tp: Any) -> Callable[[Any], Any]:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        plan = [(f.name, _decoder(hints[f.name])) for f in dataclasses.fields(tp) if f.init]

        def decode_dataclass(data: Any) -> Any:
            if data is None:
                return None
            if not isinstance(data, dict):
                raise ValueError(f"expected an object for {tp.__name__}")
            return tp(**{name: dec(data[name]) for name, dec in plan if name in data})

        return decode_dataclass
    if tp is bytes:
        return lambda data: None if data is None else _b64decode(data)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            inner = _decoder(args[0])
            return lambda data: None if data is None else inner(data)
        return lambda data: data
    if origin in (list, tuple):
        args = typing.get_args(tp)
        inner = _decoder(args[0]) if args else (lambda v: v)
        return lambda data: None if data is None else [inner(v) for v in data]
    if origin is dict:
        args = typing.get_args(tp)
        inner = _decoder(args[1]) if len(args) == 2 else (lambda v: v)
        return lambda data: None if data is None else {k: inner(v) for k, v in data.items()}
    return lambda data: data
