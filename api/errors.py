"""Domain errors to Consul's status codes, and the plain-text bodies Consul sends with them."""

from __future__ import annotations

from proconsul.server import errors as e

# Consul answers 500 for "No cluster leader", "No path to datacenter" and friends: the
# cluster, not the request, is at fault. Everything a user can cause is a 4xx here.
_STATUS: list[tuple[type[e.ProconsulError], int]] = [
    (e.BadRequest, 400),  # StoreError included
    (e.ACLDisabled, 401),  # Consul's checkACLDisabled; py-consul maps 401 to ACLDisabled
    (e.PermissionDenied, 403),
    (e.NotFound, 404),
    (e.TooLarge, 413),
]


def status_for(err: e.ProconsulError) -> int:
    """The HTTP status Consul uses for this error."""
    for cls, status in _STATUS:
        if isinstance(err, cls):
            return status
    return 500


NOT_FOUND_BODY = b"Invalid URL path: not a recognized HTTP API endpoint\n"
NOT_API_BODY = b"Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"


def not_found_body(path: str) -> bytes:
    """Consul's body for a path no endpoint serves."""
    return NOT_FOUND_BODY if "/v1/" in path else NOT_API_BODY


def method_not_allowed_body(method: str) -> bytes:
    return f"method {method} not allowed".encode()


def allow_header(methods: list[str] | tuple[str, ...]) -> str:
    """Consul's Allow header: OPTIONS first, then the methods, comma without space."""
    return ",".join(["OPTIONS", *[m for m in methods if m not in ("OPTIONS", "HEAD")]])
