"""Error families <-> gRPC status codes for the Peer service, in one place.

Server side: `status_for(exc)` picks the code of the nearest mapped class in the exception's
MRO. Client side: `peer_error(code, details, address)` turns a status back into the typed
error a session raises, so both transports (gRPC and in-process) raise the same classes.
The client API keeps its own table (crdtd.node.status_map): sync sits below the node layer.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from crdtd import errors as e

STATUS: dict[type[BaseException], grpc.StatusCode] = {
    e.CrdtdError: grpc.StatusCode.INTERNAL,
    e.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    e.ValidationError: grpc.StatusCode.INVALID_ARGUMENT,
    e.NotMemberError: grpc.StatusCode.PERMISSION_DENIED,
    e.RevokedKeyError: grpc.StatusCode.PERMISSION_DENIED,
    e.UnauthorizedError: grpc.StatusCode.PERMISSION_DENIED,
    e.StorageError: grpc.StatusCode.INTERNAL,
    e.NotFoundError: grpc.StatusCode.NOT_FOUND,
    e.PeerError: grpc.StatusCode.UNAVAILABLE,
    e.HandshakeError: grpc.StatusCode.UNAUTHENTICATED,
    e.PeerRefusedError: grpc.StatusCode.PERMISSION_DENIED,
    e.ProtocolError: grpc.StatusCode.INVALID_ARGUMENT,
}

_CLIENT: dict[grpc.StatusCode, type[e.PeerError]] = {
    grpc.StatusCode.UNAUTHENTICATED: e.HandshakeError,
    grpc.StatusCode.PERMISSION_DENIED: e.PeerRefusedError,
    grpc.StatusCode.INVALID_ARGUMENT: e.PeerRefusedError,
    grpc.StatusCode.FAILED_PRECONDITION: e.PeerRefusedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: e.PeerRefusedError,
    grpc.StatusCode.NOT_FOUND: e.PeerRefusedError,
    grpc.StatusCode.UNAVAILABLE: e.PeerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: e.PeerUnavailableError,
    grpc.StatusCode.CANCELLED: e.PeerUnavailableError,
    grpc.StatusCode.ABORTED: e.PeerUnavailableError,
}

MAX_MESSAGE = 2000
"""Longest status message a servicer sends: gRPC carries it as metadata, and a client
refuses metadata over its limit (16 KiB by default) with "Stream removed". Values a caller
sent are bounded where they are echoed (`crdtd.errors.echo`); this is the backstop."""

_TLS_MARKERS = ("tls handshake", "ssl_error", "certificate_verify_failed", "ssl routines")


def code_in(table: Mapping[type, grpc.StatusCode], exc: BaseException) -> grpc.StatusCode:
    """The code of the nearest class of `exc` in `table` (INTERNAL when unmapped)."""
    for cls in type(exc).__mro__:
        code = table.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code a servicer answers with for `exc` (INTERNAL when unmapped)."""
    return code_in(STATUS, exc)


def message_for(exc: BaseException) -> str:
    """The status message for `exc`: its text, at most MAX_MESSAGE characters."""
    return e.clip(str(exc) or type(exc).__name__, MAX_MESSAGE)


def peer_error(code: grpc.StatusCode, details: str, address: str) -> e.PeerError:
    """The typed error for a status a peer answered (TLS failures become HandshakeError);
    `.code` keeps the status code's name."""
    lowered = (details or "").lower()
    if code is grpc.StatusCode.UNAVAILABLE and any(m in lowered for m in _TLS_MARKERS):
        err: e.PeerError = e.HandshakeError(
            f"peer {address}: TLS handshake failed (certificate not from this federation's CA, "
            f"or ours not accepted): {details}"
        )
    else:
        cls = _CLIENT.get(code, e.PeerError)
        err = cls(f"peer {address}: {code.name}: {details}")
    err.code = code.name  # type: ignore[attr-defined]
    return err
