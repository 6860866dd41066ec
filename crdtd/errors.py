"""One hierarchy of typed errors: callers catch at the level they care about.

Every error names what was wrong and where (a column and row, a tensor name, a config key,
an entry id). The gRPC layer maps families to status codes in one place.
"""

from __future__ import annotations

ECHO_LIMIT = 100
"""Characters of a caller-supplied value an error message shows (see `echo`)."""


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, noting its full length when it was longer."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """A caller-supplied value as an error message shows it: repr for text, hex for bytes,
    never more than about `limit` characters, so an error does not grow with its input (a
    100k-character namespace once made a status larger than gRPC's metadata limit)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return clip(bytes(value).hex(), limit)
    return clip(repr(value) if isinstance(value, str) else str(value), limit)


class CrdtdError(Exception):
    """Root of every error crdtd raises on purpose."""


# -- configuration ---------------------------------------------------------------------------


class ConfigError(CrdtdError):
    """A configuration file or setting is invalid (names the file, line and key)."""


class KeyFileError(ConfigError):
    """A key or certificate file is missing, malformed, or readable by others (names the path)."""


class PqUnavailableError(ConfigError):
    """No ML-DSA-65 backend is installed (install `pqcrypto`, or liboqs with liboqs-python)."""


class UnknownNamespaceError(ConfigError):
    """A namespace is not declared in the node's config (names it and the declared ones)."""


class LocalFileError(ConfigError):
    """A file a client named (to push, or to write an output into) cannot be used: missing,
    a directory, unreadable, or in a directory that does not exist (names the path)."""


# -- lattices and encodings ------------------------------------------------------------------


class LatticeError(CrdtdError):
    """A lattice value or operation is invalid."""


class DecodeError(LatticeError, ValueError):
    """Bytes could not be decoded into the expected canonical value."""


class LatticeValueError(LatticeError, ValueError):
    """An argument a lattice type cannot hold (a negative amount, a timestamp beyond 64 bits,
    a value nested too deep); names the type and the argument."""


class LatticeTypeError(LatticeError, TypeError):
    """Two lattice values of different types (or field shapes) were joined or compared."""


# -- merging (tables and models) -------------------------------------------------------------


class MergeError(CrdtdError):
    """A merge could not be performed; the message names the column/tensor and row."""


class KeyColumnError(MergeError):
    """A key column is missing from an input."""


class NullKeyError(MergeError):
    """A key value is null."""


class KeyTypeError(MergeError):
    """A key value is unhashable or of a type mixed with others in the same column."""


class InputReadError(MergeError):
    """An input file could not be read or has an unsupported format."""


class NonFiniteTensorError(InputReadError):
    """An input tensor holds NaN or Inf (names the tensor, the input and the position)."""


class OutputWriteError(MergeError):
    """A merged table could not be written to the requested file."""


class SchemaError(MergeError):
    """Inputs cannot be merged because their schemas conflict."""


class StrategyError(MergeError):
    """A merge strategy was misused."""


class UnknownStrategyError(StrategyError, KeyError):
    """No strategy is registered under the requested name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class StrategyParamError(StrategyError, ValueError):
    """A strategy parameter is unknown, of the wrong type, or out of range."""


class TensorMismatchError(MergeError):
    """Inputs disagree on a tensor's presence, shape or dtype (names the tensor)."""


# -- entries, signatures, validation ---------------------------------------------------------


class ValidationError(CrdtdError):
    """An entry or payload failed validation; the state is unchanged."""


class MalformedEntryError(ValidationError):
    """An entry's bytes are not a well-formed canonical header."""


class SignatureError(ValidationError):
    """A required signature is missing or does not verify."""


class NotMemberError(ValidationError):
    """The author is not a current member of the federation."""


class RevokedKeyError(ValidationError):
    """The author's key has been revoked."""


class PayloadError(ValidationError):
    """A payload is truncated, oversized or does not match its digest."""


class TruncatedPayloadError(PayloadError):
    """A payload ended before its declared size."""


class MissingPayloadError(TruncatedPayloadError):
    """A payload or some of its chunks are neither stored locally nor offered by the source."""


class OversizedPayloadError(PayloadError):
    """A payload exceeds its declared size or the configured maximum."""


class DigestMismatchError(PayloadError):
    """A payload or chunk does not hash to its declared digest."""


class MalformedManifestError(PayloadError):
    """A payload manifest's bytes are not a well-formed canonical chunk list."""


class ChainError(ValidationError):
    """An entry's seq/prev does not continue its author's hash chain."""


class SeqReuseError(ChainError):
    """An author reused a seq with a different header (an equivocation)."""


class EquivocationError(SeqReuseError):
    """Seq reuse caught with both signed headers; `.proof` is the EquivocationProof."""

    def __init__(self, message: str, proof: object = None) -> None:
        super().__init__(message)
        self.proof = proof


class UnauthorizedError(ValidationError):
    """The signer may not perform this action (e.g. erase another author's entry)."""


class DuplicateKeyError(ValidationError):
    """A request names the same key twice (metadata, parameters); names the key."""


class MalformedRequestError(ValidationError):
    """A gRPC request body is not a valid protobuf message of its type (names the type)."""


# -- namespace kinds ---------------------------------------------------------------------------


class KindError(ValidationError):
    """A payload does not fit its namespace's kind (names the namespace, kind and what is wrong)."""


class WrongKindError(KindError):
    """A push carries a payload kind its namespace does not take (names both)."""


class MemoryRecordError(KindError):
    """A memory record is malformed (names the line and field: no id, wrong embedding size)."""


class SketchContributionError(KindError):
    """A sketch contribution is not a sketch, or of another type or size than its namespace's."""


class TableContributionError(KindError):
    """A table contribution cannot be read or lacks what its namespace needs (names the line,
    column or key)."""


# -- queries -------------------------------------------------------------------------------------


class SqlError(CrdtdError):
    """A SQL query cannot run: not one SELECT, unknown table, bad merge(...) call (names why)."""


# -- storage ---------------------------------------------------------------------------------


class StorageError(CrdtdError):
    """The store could not complete an operation."""


class CorruptionError(StorageError):
    """Stored bytes no longer match their digest."""


class SealedPayloadError(CorruptionError):
    """A sealed (encrypted) payload does not authenticate: tampered, cut, or another key."""


class NotFoundError(StorageError, KeyError):
    """A requested entry, chunk or payload is not in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- trust -----------------------------------------------------------------------------------


class TrustError(CrdtdError):
    """A trust operation failed or an author is gated."""


class EvidenceError(TrustError, ValueError):
    """An evidence entry or its proof envelope is malformed (names the entry and field)."""


class NamespaceKeyError(TrustError):
    """This node holds no key for an encrypted namespace's payloads (it relays them but
    cannot read them), or a key envelope is malformed."""


class GatedAuthorError(TrustError):
    """An author is revoked or below its namespace's trust threshold (names author and why)."""


# -- peers and network -----------------------------------------------------------------------


class PeerError(CrdtdError):
    """A peer misbehaved or could not be reached."""


class HandshakeError(PeerError):
    """A peer handshake failed (wrong CA, federation, key or protocol version)."""


class PeerRefusedError(PeerError):
    """A peer refused us, or we refused it (revoked, non-member)."""


class PeerUnavailableError(PeerError):
    """A peer could not be reached, timed out, or cut the connection."""


class ProtocolError(PeerError):
    """A peer sent a message that breaks the sync protocol (malformed, unasked-for, wrong bytes)."""


# -- client API ------------------------------------------------------------------------------


class UnauthenticatedError(CrdtdError):
    """A client call carried no credentials, or wrong ones (bearer token or certificate)."""
