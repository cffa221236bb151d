"""JSON wire form for dataclasses: Raft commands and server RPC arguments.

``to_wire`` turns a dataclass into JSON-ready data (bytes become base64 text);
``from_wire`` rebuilds it from its type hints. Plans are computed once per class.
"""

from __future__ import annotations

import base64
import dataclasses
import types
import typing
from functools import lru_cache
from typing import Any, Callable

_b64encode = base64.b64encode
_b64decode = base64.b64decode


def to_wire(obj: Any) -> Any:
    """Dataclass (or list/dict of them) to JSON-ready data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {name: to_wire(getattr(obj, name)) for name in _field_names(type(obj))}
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


@lru_cache(maxsize=None)
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


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
