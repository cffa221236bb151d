"""Response headers: what Consul sends on every API response, and the query-meta headers of reads."""

from __future__ import annotations

from proconsul.server.structs import QueryMeta

FILTERED = (b"x-consul-results-filtered-by-acls", b"true")


def common_headers(default_acl_policy: str) -> list[tuple[bytes, bytes]]:
    """Sent with every registered endpoint's answer (agent/http.go wrap + gzip handler)."""
    return [(b"vary", b"Accept-Encoding"), (b"x-consul-default-acl-policy", default_acl_policy.encode())]


COMMON = common_headers("allow")  # an agent without ACLs
JSON = (b"content-type", b"application/json")
TEXT = (b"content-type", b"text/plain; charset=utf-8")


def meta_headers(meta: QueryMeta) -> list[tuple[bytes, bytes]]:
    """X-Consul-Index / KnownLeader / LastContact / Effective-Consistency / Query-Backend (Consul's setMeta),
    and X-Consul-Results-Filtered-By-ACLs when ACLs hid part of the answer."""
    headers = [
        (b"x-consul-index", str(max(meta.index, 1)).encode()),
        (b"x-consul-knownleader", b"true" if meta.known_leader else b"false"),
        (b"x-consul-lastcontact", str(max(meta.last_contact_ms, 0)).encode()),
        (b"x-consul-effective-consistency", meta.consistency.encode()),
        (b"x-consul-query-backend", b"blocking-query"),
    ]
    if meta.filtered:
        headers.append(FILTERED)
    return headers


def leader_headers(meta: QueryMeta) -> list[tuple[bytes, bytes]]:
    """Just KnownLeader and LastContact, as Consul sets them for read-only transactions."""
    return [
        (b"x-consul-knownleader", b"true" if meta.known_leader else b"false"),
        (b"x-consul-lastcontact", str(max(meta.last_contact_ms, 0)).encode()),
    ]
