"""Domain errors shared by the store, the endpoints and the RPC layer.

Each error names the condition, not the HTTP status; ``proconsul.api.errors``
maps them to Consul's status codes. They cross the server RPC by class name, so
a client agent raises the same class the server did.
"""

from __future__ import annotations


class ProconsulError(Exception):
    """Base of every error a caller can act on."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message or self.__class__.__doc__ or self.__class__.__name__

    def __str__(self) -> str:
        return self.message


class BadRequest(ProconsulError):
    """The request is malformed."""


class StoreError(BadRequest):
    """The state store refused a write (e.g. an invalid session); returned from apply, never raised inside it."""


class NotFound(ProconsulError):
    """No such object."""


class PermissionDenied(ProconsulError):
    """Permission denied"""


class ACLDisabled(ProconsulError):
    """ACL support disabled"""


class TooLarge(ProconsulError):
    """Request entity too large."""


class NoPathToDatacenter(ProconsulError):
    """No path to datacenter"""


class NoLeaderError(ProconsulError):
    """No cluster leader"""


class LeaderChangedError(ProconsulError):
    """Leadership changed while the command was in flight; its outcome is unknown."""


class RaftTimeoutError(ProconsulError):
    """Timed out waiting for the Raft log to commit the command."""


class NotReadyError(ProconsulError):
    """Not ready to serve consistent reads"""


class RPCError(ProconsulError):
    """A server could not be reached over server RPC, or the connection broke mid-call."""


class RPCUnreachable(RPCError):
    """No connection could be made: the request was never sent, so retrying elsewhere is safe."""


ERRORS: dict[str, type[ProconsulError]] = {
    cls.__name__: cls
    for cls in (
        ProconsulError,
        BadRequest,
        StoreError,
        NotFound,
        PermissionDenied,
        ACLDisabled,
        TooLarge,
        NoPathToDatacenter,
        NoLeaderError,
        LeaderChangedError,
        RaftTimeoutError,
        NotReadyError,
        RPCError,
        RPCUnreachable,
    )
}
