"""What a server needs to know about itself; the agent builds it from its RuntimeConfig."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proconsul.server.raft import RaftTuning


@dataclass(frozen=True)
class ServerConfig:
    node_name: str
    node_id: str
    datacenter: str
    bind_addr: str
    server_port: int
    raft_port: int
    data_dir: str | None = None
    dev: bool = False
    bootstrap: bool = False
    bootstrap_expect: int = 0
    retry_join: tuple[str, ...] = ()
    retry_interval: float = 1.0
    encrypt: str | None = None
    raft: RaftTuning = field(default_factory=RaftTuning)
    rpc_hold_timeout: float = 7.0
    tombstone_ttl: float = 900.0
    tombstone_granularity: float = 30.0
    node_failure_timeout: float = 10.0
    session_ttl_min: float = 10.0
    reconnect_timeout: float = 72 * 3600.0
    # Connect: on by default (Consul wants connect { enabled = true } outside -dev). The CA config
    # here is only the initial one, used on first leadership; later changes go through the API.
    connect_enabled: bool = True
    ca_provider: str = "consul"
    ca_config: dict[str, Any] = field(default_factory=dict)
    ca_prune_interval: float = 3600.0  # Consul's caRootPruneInterval
    # acl { enabled, default_policy } and default_intention_policy: what decides an intention check no
    # intention matches (ACLs themselves arrive with their own issue).
    acl_enabled: bool = False
    acl_default_policy: str = "allow"
    # acl.tokens.initial_management: the leader makes a management token with this secret (never in repr).
    acl_initial_management: str = field(default="", repr=False)
    acl_token_min_expiration_ttl: float = 60.0  # Consul's ACLTokenMinExpirationTTL
    acl_token_max_expiration_ttl: float = 24 * 3600.0  # Consul's ACLTokenMaxExpirationTTL
    default_intention_policy: str = ""
    # TLS on server RPC (tls.defaults overlaid with tls.internal_rpc); None or no cert: plain TCP.
    tls_rpc: Any = None
    domain: str = "consul"

    @property
    def rpc_addr(self) -> str:
        return f"{self.bind_addr}:{self.server_port}"

    @property
    def raft_addr(self) -> str:
        # A dev node is a lone voter that never listens for Raft peers; its identity is its RPC address.
        return self.rpc_addr if self.dev else f"{self.bind_addr}:{self.raft_port}"
