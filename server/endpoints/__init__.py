"""Server endpoints: the RPC methods a server answers, by Consul's names ("KVS.Apply", ...).

Each endpoint is ``async fn(srv, args, hops)`` registered with its argument and
result types, so the RPC layer can decode arguments and an agent can decode
results. An endpoint forwards to the leader when it must (``srv.forward`` /
``srv.forward_read``), does leader-side checks, then proposes to Raft or reads
the store. Endpoints never touch HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable


@dataclass(frozen=True)
class Endpoint:
    name: str
    fn: Callable[..., Awaitable[Any]]
    arg_type: type
    result_type: Any


ENDPOINTS: dict[str, Endpoint] = {}


def endpoint(name: str, arg_type: type, result_type: Any = None) -> Callable:
    """Register ``fn`` as the RPC method ``name``."""

    def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        ENDPOINTS[name] = Endpoint(name, fn, arg_type, result_type)
        return fn

    return register


def load_all() -> None:
    """Import every endpoint module so their registrations run."""
    from proconsul.server.endpoints import (  # noqa: F401
        catalog, event, health, internal, kv, operator, query, session, snapshot, status, txn,
    )
    from proconsul.server.endpoints import connect_ca  # noqa: F401
    from proconsul.server.endpoints import config_entry, intention  # noqa: F401
    from proconsul.server.endpoints import acl  # noqa: F401
