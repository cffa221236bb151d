"""Response headers: what Consul sends on every API response, and the query-meta headers of reads."""

from __future__ import annotations

from proconsul.server.structs import QueryMeta

# Sent with every registered endpoint's answer (agent/http.go wrap + gzip handler).
COMMON: list[tuple[bytes, bytes]] = [
    (b"vary", b"Accept-Encoding"),
    (b"x-consul-default-acl-policy", b"allow"),
]
JSON = (b"content-type", b"application/json")
TEXT = (b"content-type", b"text/plain; charset=utf-8")


def meta_headers(meta: QueryMeta) -> list[tuple[bytes, bytes]]:
    """X-Consul-Index / KnownLeader / LastContact / Effective-Consistency / Query-Backend (Consul's setMeta)."""
    return [
        (b"x-consul-index", str(max(meta.index, 1)).encode()),
        (b"x-consul-knownleader", b"true" if meta.known_leader else b"false"),
        (b"x-consul-lastcontact", str(max(meta.last_contact_ms, 0)).encode()),
        (b"x-consul-effective-consistency", meta.consistency.encode()),
        (b"x-consul-query-backend", b"blocking-query"),
    ]


def leader_headers(meta: QueryMeta) -> list[tuple[bytes, bytes]]:
    """Just KnownLeader and LastContact, as Consul sets them for read-only transactions."""
    return [
        (b"x-consul-knownleader", b"true" if meta.known_leader else b"false"),
        (b"x-consul-lastcontact", str(max(meta.last_contact_ms, 0)).encode()),
    ]
