"""The one place where crdtd errors become gRPC status codes (client API and CLI share it).

`status_for(exc)` walks the exception's class hierarchy and returns the code of the nearest
mapped class, so a new error subclass inherits its family's code. Messages pass through
unchanged: every crdtd error already names what was wrong and where.
"""

from __future__ import annotations

import grpc

from crdtd import errors as e
from crdtd.sync.status import MAX_MESSAGE, code_in

# Most specific first is not needed: the MRO walk finds the nearest mapped ancestor.
STATUS: dict[type[BaseException], grpc.StatusCode] = {
    e.CrdtdError: grpc.StatusCode.INTERNAL,
    # configuration and requests that name unknown things
    e.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    e.KeyFileError: grpc.StatusCode.FAILED_PRECONDITION,
    e.PqUnavailableError: grpc.StatusCode.FAILED_PRECONDITION,
    e.UnknownNamespaceError: grpc.StatusCode.NOT_FOUND,
    # encodings and merges
    e.LatticeError: grpc.StatusCode.INVALID_ARGUMENT,
    e.MergeError: grpc.StatusCode.FAILED_PRECONDITION,
    e.InputReadError: grpc.StatusCode.INVALID_ARGUMENT,
    e.StrategyError: grpc.StatusCode.INVALID_ARGUMENT,
    e.TensorMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    # entries and payloads
    e.ValidationError: grpc.StatusCode.INVALID_ARGUMENT,
    e.NotMemberError: grpc.StatusCode.PERMISSION_DENIED,
    e.RevokedKeyError: grpc.StatusCode.PERMISSION_DENIED,
    e.UnauthorizedError: grpc.StatusCode.PERMISSION_DENIED,
    e.OversizedPayloadError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.ChainError: grpc.StatusCode.FAILED_PRECONDITION,
    # storage
    e.StorageError: grpc.StatusCode.INTERNAL,
    e.NotFoundError: grpc.StatusCode.NOT_FOUND,
    e.CorruptionError: grpc.StatusCode.DATA_LOSS,
    # trust
    e.TrustError: grpc.StatusCode.FAILED_PRECONDITION,
    e.GatedAuthorError: grpc.StatusCode.PERMISSION_DENIED,
    e.NamespaceKeyError: grpc.StatusCode.PERMISSION_DENIED,
    # peers and clients
    e.PeerError: grpc.StatusCode.UNAVAILABLE,
    e.HandshakeError: grpc.StatusCode.UNAUTHENTICATED,
    e.PeerRefusedError: grpc.StatusCode.PERMISSION_DENIED,
    e.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    # queries
    e.SqlError: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code for an exception (INTERNAL for anything unmapped)."""
    return code_in(STATUS, exc)


def message_for(exc: BaseException) -> str:
    """The status message: the error's own text, or a generic one for unexpected errors;
    never over MAX_MESSAGE characters (it travels as call metadata)."""
    if isinstance(exc, e.CrdtdError):
        return e.clip(str(exc) or type(exc).__name__, MAX_MESSAGE)
    return e.clip(f"internal error ({type(exc).__name__}: {exc}); see the node's log", MAX_MESSAGE)


# The reverse direction, for the Python client: a status code becomes a typed error.
_CLIENT_ERRORS: dict[grpc.StatusCode, type[e.CrdtdError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: e.ValidationError,
    grpc.StatusCode.NOT_FOUND: e.NotFoundError,
    grpc.StatusCode.PERMISSION_DENIED: e.UnauthorizedError,
    grpc.StatusCode.UNAUTHENTICATED: e.UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: e.OversizedPayloadError,
    grpc.StatusCode.FAILED_PRECONDITION: e.CrdtdError,
    grpc.StatusCode.DATA_LOSS: e.CorruptionError,
    grpc.StatusCode.UNAVAILABLE: e.PeerError,
    grpc.StatusCode.DEADLINE_EXCEEDED: e.PeerError,
}


def error_for(code: grpc.StatusCode, message: str) -> e.CrdtdError:
    """A crdtd error for a status a node returned (the client raises it); `.code` keeps the
    status code."""
    cls = _CLIENT_ERRORS.get(code, e.CrdtdError)
    err = cls(f"{code.name}: {message}")
    err.code = code  # type: ignore[attr-defined]
    return err
