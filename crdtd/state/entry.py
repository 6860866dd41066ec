"""Signed, content-addressed entries: the only things a federation replicates.

A header is canonical msgpack: an ARRAY in fixed field order
`[version, kind, author, seq, prev, body]`, where `body` is a kind-specific array (see
docs/identity.md). There are no maps with free key order and no floats anywhere in a header.
`id = sha256(header bytes)`. Each author numbers its entries `seq = 1, 2, ...` and links
them by `prev` (the id of its previous entry; nil for seq 1), so a fork is provable.

The wire form is `[1, header bytes, [[scheme, signature], ...]]` with Ed25519 always first
and an optional ML-DSA-65 signature second. Both sign `b"crdtd/entry/v1\\0" ‖ header`.
Decoding is strict: trailing bytes, non-minimal encodings, wrong types or lengths, unknown
kinds and oversize fields raise `MalformedEntryError` naming the field; nothing else escapes.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple, TypeAlias, TypeVar

import msgpack

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.schemes import (
    ED25519,
    ED25519_ONLY,
    SCHEME_ORDER,
    SCHEMES,
    PublicKeys,
    SignaturePolicy,
    key_id_of,
    verify_ed25519,
)
from crdtd.errors import MalformedEntryError, SignatureError

__all__ = [
    "DIMENSIONS",
    "MAX_ENTRY_BYTES",
    "MAX_HEADER_BYTES",
    "Body",
    "ContributionBody",
    "Entry",
    "EquivocationProof",
    "EvidenceBody",
    "Kind",
    "MembershipBody",
    "RemovalBody",
    "RevocationBody",
    "Signature",
    "chain_next",
    "make_contribution",
    "make_evidence",
    "make_membership",
    "make_removal",
    "make_revocation",
]

HEADER_VERSION = 1
WIRE_VERSION = 1
PROOF_VERSION = 1
SIGNING_DOMAIN = b"crdtd/entry/v1\x00"

# -- limits (bytes unless named otherwise) ----------------------------------------------------
MAX_HEADER_BYTES = 256 * 1024
MAX_ENTRY_BYTES = MAX_HEADER_BYTES + 8 * 1024
MAX_PROOF_BYTES = 192 * 1024
MAX_SEQ = 2**63 - 1
MAX_PAYLOAD_SIZE = 2**50
MAX_NAMESPACE = 256
MAX_PAYLOAD_KIND = 64
MAX_NAME = 128
MAX_REASON = 1024
MAX_METADATA_ITEMS = 64
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 1024
MAX_REMOVAL_TARGETS = 1024
MAX_WEIGHT = 1_000_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

DIMENSIONS: tuple[str, ...] = ("integrity", "causality", "consistency", "gossip", "model")
"""Trust dimensions an evidence entry may name."""

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
_TOKEN_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_META_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")

MetaValue: TypeAlias = "str | int | bool | bytes | None"


class Kind(IntEnum):
    """Entry kinds; the integer is what the header stores."""

    CONTRIBUTION = 1
    REMOVAL = 2
    EVIDENCE = 3
    REVOCATION = 4
    MEMBERSHIP = 5


class Signature(NamedTuple):
    """One signature on an entry: scheme name and raw signature bytes."""

    scheme: str
    value: bytes


# -- bodies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContributionBody:
    """A payload added to a namespace. `metadata` values are str/int/bool/bytes/None."""

    namespace: str
    payload_kind: str
    payload_digest: bytes
    payload_size: int
    base_id: bytes | None = None
    metadata: dict[str, MetaValue] = field(default_factory=dict)

    def to_array(self) -> list[Any]:
        meta = [[k, self.metadata[k]] for k in sorted(self.metadata, key=str.encode)]
        return [
            self.namespace,
            self.payload_kind,
            self.payload_digest,
            self.payload_size,
            self.base_id,
            meta,
        ]


@dataclass(frozen=True)
class RemovalBody:
    """Erase entries by id and/or every entry of `target_author` (right to be forgotten)."""

    targets: tuple[bytes, ...] = ()
    target_author: bytes | None = None
    reason: str = ""

    def to_array(self) -> list[Any]:
        return [list(self.targets), self.target_author, self.reason]


@dataclass(frozen=True)
class EvidenceBody:
    """A signed observation about `subject` (a key id) on one trust dimension."""

    subject: bytes
    dimension: str
    weight: int
    reason: str = ""
    proof: bytes = b""

    def to_array(self) -> list[Any]:
        return [self.subject, self.dimension, self.weight, self.reason, self.proof]


@dataclass(frozen=True)
class RevocationBody:
    """Key `revoked` is revoked for good, optionally naming its `successor` key id."""

    revoked: bytes
    successor: bytes | None = None
    reason: str = ""

    def to_array(self) -> list[Any]:
        return [self.revoked, self.successor, self.reason]


@dataclass(frozen=True)
class MembershipBody:
    """The admin admits a member: its key id, public keys and display name."""

    member: bytes
    ed25519_public: bytes
    ml_dsa_65_public: bytes | None
    name: str

    def to_array(self) -> list[Any]:
        return [self.member, self.ed25519_public, self.ml_dsa_65_public, self.name]

    @property
    def public_keys(self) -> PublicKeys:
        """The member's public keys, ready for `Entry.verify_signatures`."""
        return PublicKeys(self.ed25519_public, self.ml_dsa_65_public)


Body: TypeAlias = "ContributionBody | RemovalBody | EvidenceBody | RevocationBody | MembershipBody"
_B = TypeVar("_B", ContributionBody, RemovalBody, EvidenceBody, RevocationBody, MembershipBody)


# -- strict field checks ----------------------------------------------------------------------


def _fail(where: str, what: str) -> MalformedEntryError:
    return MalformedEntryError(f"{where}: {what}")


def _array(value: Any, where: str, length: int | None = None) -> list[Any]:
    if type(value) is not list:
        raise _fail(where, f"expected array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise _fail(where, f"expected {length} fields, got {len(value)}")
    return value


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise _fail(where, f"expected integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise _fail(where, f"{value} outside [{lo}, {hi}]")
    return value


def _bin(value: Any, where: str, size: int | None = None, max_size: int | None = None) -> bytes:
    if type(value) is not bytes:
        raise _fail(where, f"expected bytes, got {type(value).__name__}")
    if size is not None and len(value) != size:
        raise _fail(where, f"expected {size} bytes, got {len(value)}")
    if max_size is not None and len(value) > max_size:
        raise _fail(where, f"{len(value)} bytes exceeds the {max_size}-byte limit")
    return value


def _opt_bin(value: Any, where: str, size: int) -> bytes | None:
    return None if value is None else _bin(value, where, size)


def _str(value: Any, where: str, max_bytes: int, pattern: re.Pattern[str] | None = None) -> str:
    if type(value) is not str:
        raise _fail(where, f"expected string, got {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise _fail(where, f"{size} bytes exceeds the {max_bytes}-byte limit")
    if pattern is not None and not pattern.fullmatch(value):
        raise _fail(where, f"{value[:40]!r} does not match {pattern.pattern}")
    return value


def _meta_value(value: Any, where: str) -> MetaValue:
    if value is None or type(value) is bool:
        return value  # type: ignore[no-any-return]
    if type(value) is int:
        return _int(value, where, INT64_MIN, INT64_MAX)
    if type(value) is str:
        return _str(value, where, MAX_METADATA_VALUE)
    if type(value) is bytes:
        return _bin(value, where, max_size=MAX_METADATA_VALUE)
    raise _fail(
        where, f"metadata values must be str/int/bool/bytes/nil, got {type(value).__name__}"
    )


def _sorted_unique_ids(values: list[Any], where: str) -> tuple[bytes, ...]:
    ids = tuple(_bin(v, f"{where}[{i}]", 32) for i, v in enumerate(values))
    for i in range(1, len(ids)):
        if ids[i - 1] >= ids[i]:
            raise _fail(where, "ids must be sorted ascending without duplicates")
    return ids


def _decode_body(kind: Kind, raw: Any) -> Body:
    name = kind.name.lower()
    if kind is Kind.CONTRIBUTION:
        f = _array(raw, name, 6)
        meta_raw = _array(f[5], f"{name}.metadata")
        if len(meta_raw) > MAX_METADATA_ITEMS:
            raise _fail(f"{name}.metadata", f"more than {MAX_METADATA_ITEMS} items")
        meta: dict[str, MetaValue] = {}
        last = b""
        for i, pair in enumerate(meta_raw):
            kv = _array(pair, f"{name}.metadata[{i}]", 2)
            key = _str(kv[0], f"{name}.metadata[{i}].key", MAX_METADATA_KEY, _META_KEY_RE)
            encoded = key.encode()
            if i and encoded <= last:
                raise _fail(f"{name}.metadata", "keys must be sorted ascending and unique")
            last = encoded
            meta[key] = _meta_value(kv[1], f"{name}.metadata[{key!r}]")
        return ContributionBody(
            namespace=_str(f[0], f"{name}.namespace", MAX_NAMESPACE, _NAMESPACE_RE),
            payload_kind=_str(f[1], f"{name}.payload_kind", MAX_PAYLOAD_KIND, _TOKEN_RE),
            payload_digest=_bin(f[2], f"{name}.payload_digest", 32),
            payload_size=_int(f[3], f"{name}.payload_size", 0, MAX_PAYLOAD_SIZE),
            base_id=_opt_bin(f[4], f"{name}.base_id", 32),
            metadata=meta,
        )
    if kind is Kind.REMOVAL:
        f = _array(raw, name, 3)
        targets_raw = _array(f[0], f"{name}.targets")
        if len(targets_raw) > MAX_REMOVAL_TARGETS:
            raise _fail(f"{name}.targets", f"more than {MAX_REMOVAL_TARGETS} ids")
        body = RemovalBody(
            targets=_sorted_unique_ids(targets_raw, f"{name}.targets"),
            target_author=_opt_bin(f[1], f"{name}.target_author", 32),
            reason=_str(f[2], f"{name}.reason", MAX_REASON),
        )
        if not body.targets and body.target_author is None:
            raise _fail(name, "names neither target ids nor a target author")
        return body
    if kind is Kind.EVIDENCE:
        f = _array(raw, name, 5)
        dimension = _str(f[1], f"{name}.dimension", 32)
        if dimension not in DIMENSIONS:
            raise _fail(f"{name}.dimension", f"{dimension!r} is not one of {DIMENSIONS}")
        return EvidenceBody(
            subject=_bin(f[0], f"{name}.subject", 32),
            dimension=dimension,
            weight=_int(f[2], f"{name}.weight", -MAX_WEIGHT, MAX_WEIGHT),
            reason=_str(f[3], f"{name}.reason", MAX_REASON),
            proof=_bin(f[4], f"{name}.proof", max_size=MAX_PROOF_BYTES),
        )
    if kind is Kind.REVOCATION:
        f = _array(raw, name, 3)
        rev = RevocationBody(
            revoked=_bin(f[0], f"{name}.revoked", 32),
            successor=_opt_bin(f[1], f"{name}.successor", 32),
            reason=_str(f[2], f"{name}.reason", MAX_REASON),
        )
        if rev.successor == rev.revoked:
            raise _fail(f"{name}.successor", "a key cannot succeed itself")
        return rev
    f = _array(raw, name, 4)
    ml_raw = f[2]
    mem = MembershipBody(
        member=_bin(f[0], f"{name}.member", 32),
        ed25519_public=_bin(f[1], f"{name}.ed25519_public", SCHEMES[ED25519].public_key_size),
        ml_dsa_65_public=None
        if ml_raw is None
        else _bin(ml_raw, f"{name}.ml_dsa_65_public", SCHEMES["ml-dsa-65"].public_key_size),
        name=_str(f[3], f"{name}.name", MAX_NAME),
    )
    if key_id_of(mem.ed25519_public) != mem.member:
        raise _fail(f"{name}.member", "is not sha256 of ed25519_public")
    return mem


def _unpack(data: Any, where: str, max_size: int) -> Any:
    """msgpack-decode exactly one canonical value; any failure becomes MalformedEntryError."""
    if type(data) is not bytes:
        raise _fail(where, f"expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise _fail(where, f"{len(data)} bytes exceeds the {max_size}-byte limit")
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # ExtraData, FormatError, UnicodeDecodeError, OutOfData, ...
        raise _fail(where, f"not a single msgpack value ({type(exc).__name__}: {exc})") from None
    try:
        canonical = msgpack.packb(value, use_bin_type=True)
    except Exception as exc:
        raise _fail(where, f"cannot re-encode ({type(exc).__name__})") from None
    if canonical != data:
        raise _fail(where, "not canonical msgpack (non-minimal or non-standard encoding)")
    return value


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# -- entries ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Entry:
    """A decoded, structurally valid entry. Kind-specific fields are on `body` and are also
    readable directly (`entry.namespace` for a contribution)."""

    header_bytes: bytes
    signatures: tuple[Signature, ...]
    kind: Kind
    author: bytes
    seq: int
    prev: bytes | None
    body: Body
    id: bytes

    # -- decoding -------------------------------------------------------------------------

    @classmethod
    def from_parts(cls, header_bytes: bytes, signatures: Iterable[Signature]) -> Entry:
        """Decode and check a header plus its signatures (signatures are not verified)."""
        h = _array(_unpack(header_bytes, "header", MAX_HEADER_BYTES), "header", 6)
        _int(h[0], "header.version", HEADER_VERSION, HEADER_VERSION)
        kind_raw = _int(h[1], "header.kind", 0, 255)
        try:
            kind = Kind(kind_raw)
        except ValueError:
            raise _fail("header.kind", f"unknown kind {kind_raw}") from None
        author = _bin(h[2], "header.author", 32)
        seq = _int(h[3], "header.seq", 1, MAX_SEQ)
        prev = _opt_bin(h[4], "header.prev", 32)
        if (seq == 1) != (prev is None):
            raise _fail("header.prev", "must be nil exactly when seq is 1")
        body = _decode_body(kind, h[5])
        sigs = _normalise_signatures(signatures)
        return cls(
            header_bytes=header_bytes,
            signatures=sigs,
            kind=kind,
            author=author,
            seq=seq,
            prev=prev,
            body=body,
            id=hashlib.sha256(header_bytes).digest(),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        """Decode the wire form strictly; raises MalformedEntryError and nothing else."""
        w = _array(_unpack(data, "entry", MAX_ENTRY_BYTES), "entry", 3)
        _int(w[0], "entry.version", WIRE_VERSION, WIRE_VERSION)
        header = _bin(w[1], "entry.header", max_size=MAX_HEADER_BYTES)
        sigs = _array(w[2], "entry.signatures")
        return cls.from_parts(header, sigs)

    def to_bytes(self) -> bytes:
        """Canonical wire form: `[1, header, [[scheme, sig], ...]]`."""
        return _pack(
            [WIRE_VERSION, self.header_bytes, [[s.scheme, s.value] for s in self.signatures]]
        )

    # -- signatures -----------------------------------------------------------------------

    @property
    def signing_message(self) -> bytes:
        """What every scheme signs: a domain tag followed by the header bytes."""
        return SIGNING_DOMAIN + self.header_bytes

    def signature(self, scheme: str) -> bytes | None:
        """The signature for `scheme`, or None."""
        for sig in self.signatures:
            if sig.scheme == scheme:
                return sig.value
        return None

    def verify_signatures(
        self,
        public_keys: PublicKeys,
        required: SignaturePolicy | str | Iterable[str] = ED25519_ONLY,
        ed25519_verified: bool = False,
    ) -> None:
        """Raise SignatureError unless `public_keys` belong to the author, every required
        signature is present, and every signature we hold a key for verifies.

        `ed25519_verified`: the Ed25519 signature was already checked under
        `public_keys.ed25519` over this entry's signing message (by `crdtd.crypto.verifier`);
        every other check still runs here."""
        policy = SignaturePolicy.coerce(required)
        where = f"entry {self.id.hex()[:16]}"
        if public_keys.key_id != self.author:
            raise SignatureError(
                f"{where}: public key {public_keys.key_id.hex()[:16]} is not the author "
                f"{self.author.hex()[:16]}"
            )
        for name in policy.required:
            if self.signature(name) is None:
                raise SignatureError(f"{where}: missing required {name} signature")
            if public_keys.for_scheme(name) is None:
                raise SignatureError(f"{where}: author has no {name} public key but it is required")
        msg = self.signing_message
        for sig in self.signatures:
            key = public_keys.for_scheme(sig.scheme)
            if key is None or (ed25519_verified and sig.scheme == ED25519):
                continue
            if not SCHEMES[sig.scheme].verify(key, msg, sig.value):
                raise SignatureError(f"{where}: {sig.scheme} signature does not verify")

    # -- convenience ----------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "body":
            raise AttributeError(name)
        body = self.__dict__.get("body")
        if body is None:
            raise AttributeError(name)
        try:
            return getattr(body, name)
        except AttributeError:
            raise AttributeError(f"{self.kind.name.lower()} entry has no field {name!r}") from None

    def _body_as(self, cls: type[_B]) -> _B:
        if not isinstance(self.body, cls):
            raise MalformedEntryError(
                f"entry {self.id.hex()[:16]}: is a {self.kind.name.lower()}, not {cls.__name__}"
            )
        return self.body

    def as_contribution(self) -> ContributionBody:
        """The typed body, or MalformedEntryError when this is another kind."""
        return self._body_as(ContributionBody)

    def as_removal(self) -> RemovalBody:
        """The typed body, or MalformedEntryError when this is another kind."""
        return self._body_as(RemovalBody)

    def as_evidence(self) -> EvidenceBody:
        """The typed body, or MalformedEntryError when this is another kind."""
        return self._body_as(EvidenceBody)

    def as_revocation(self) -> RevocationBody:
        """The typed body, or MalformedEntryError when this is another kind."""
        return self._body_as(RevocationBody)

    def as_membership(self) -> MembershipBody:
        """The typed body, or MalformedEntryError when this is another kind."""
        return self._body_as(MembershipBody)

    @property
    def issued_by(self) -> bytes:
        """The signer's key id (the admin for membership entries)."""
        return self.author

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return self.header_bytes == other.header_bytes and self.signatures == other.signatures

    def __hash__(self) -> int:
        return hash((self.header_bytes, self.signatures))

    def __repr__(self) -> str:
        return (
            f"Entry({self.kind.name.lower()} id={self.id.hex()[:16]} "
            f"author={self.author.hex()[:16]} seq={self.seq})"
        )


def _normalise_signatures(raw: Iterable[Any]) -> tuple[Signature, ...]:
    """Signatures as a checked tuple (accepts Signature or plain (scheme, value) pairs)."""
    try:
        items = list(raw)
    except TypeError:
        raise _fail("entry.signatures", "expected a sequence of (scheme, value)") from None
    if len(items) > len(SCHEME_ORDER):
        raise _fail("entry.signatures", f"more than {len(SCHEME_ORDER)} signatures")
    sigs: list[Signature] = []
    order: list[int] = []
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise _fail(f"entry.signatures[{i}]", "expected a (scheme, value) pair")
        scheme = _str(item[0], f"entry.signatures[{i}].scheme", 32)
        if scheme not in SCHEMES:
            raise _fail(f"entry.signatures[{i}].scheme", f"unknown scheme {scheme!r}")
        value = _bin(item[1], f"entry.signatures[{i}].value", SCHEMES[scheme].signature_size)
        sigs.append(Signature(scheme, value))
        order.append(SCHEME_ORDER.index(scheme))
    if not sigs or sigs[0].scheme != ED25519:
        raise _fail("entry.signatures", "the first signature must be ed25519")
    if order != sorted(set(order)):
        raise _fail("entry.signatures", "schemes must be unique and in canonical order")
    return tuple(sigs)


# -- building ---------------------------------------------------------------------------------


def chain_next(last: Entry | None) -> tuple[int, bytes | None]:
    """(seq, prev) for the entry that follows `last` in its author's chain."""
    return (1, None) if last is None else (last.seq + 1, last.id)


def _build(
    key: NodeKey,
    seq: int,
    prev: bytes | None,
    kind: Kind,
    body: Body,
    policy: SignaturePolicy | str | None,
) -> Entry:
    try:
        header = _pack([HEADER_VERSION, int(kind), key.key_id, seq, prev, body.to_array()])
    except (TypeError, ValueError, OverflowError) as exc:
        raise _fail(kind.name.lower(), f"cannot encode ({exc})") from None
    decoded = Entry.from_parts(header, [Signature(ED25519, b"\x00" * 64)])  # validate first
    pol = None if policy is None else SignaturePolicy.coerce(policy)
    sigs = [Signature(n, s) for n, s in key.sign_all(decoded.signing_message, pol)]
    return Entry.from_parts(header, sigs)


def _normalise_metadata(metadata: Mapping[str, Any] | None) -> dict[str, MetaValue]:
    out: dict[str, MetaValue] = {}
    for k, v in (metadata or {}).items():
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            v = int(v)  # numpy and other integer types
        elif isinstance(v, numbers.Real) and not isinstance(v, bool):
            f = float(v)
            if not math.isfinite(f):
                raise _fail(f"contribution.metadata[{k!r}]", "non-finite float")
            v = repr(f)  # floats are stored as their shortest round-trip decimal string
        out[k] = v
    return out


def make_contribution(
    key: NodeKey,
    seq: int,
    prev: bytes | None,
    namespace: str,
    payload_digest: bytes,
    payload_size: int,
    *,
    payload_kind: str = "blob",
    base_id: bytes | None = None,
    metadata: Mapping[str, Any] | None = None,
    policy: SignaturePolicy | str | None = None,
) -> Entry:
    """A signed contribution. Float metadata values become their `repr` string."""
    body = ContributionBody(
        namespace,
        payload_kind,
        payload_digest,
        payload_size,
        base_id,
        _normalise_metadata(metadata),
    )
    return _build(key, seq, prev, Kind.CONTRIBUTION, body, policy)


def make_removal(
    key: NodeKey,
    seq: int,
    prev: bytes | None,
    targets: Iterable[bytes] = (),
    *,
    target_author: bytes | None = None,
    reason: str = "",
    policy: SignaturePolicy | str | None = None,
) -> Entry:
    """A signed removal of entry ids and/or all entries of `target_author`."""
    body = RemovalBody(tuple(sorted(set(targets))), target_author, reason)
    return _build(key, seq, prev, Kind.REMOVAL, body, policy)


def make_evidence(
    key: NodeKey,
    seq: int,
    prev: bytes | None,
    subject: bytes,
    dimension: str,
    weight: int,
    *,
    reason: str = "",
    proof: bytes = b"",
    policy: SignaturePolicy | str | None = None,
) -> Entry:
    """A signed piece of trust evidence about `subject` (the author is the observer)."""
    body = EvidenceBody(subject, dimension, weight, reason, proof)
    return _build(key, seq, prev, Kind.EVIDENCE, body, policy)


def make_revocation(
    key: NodeKey,
    seq: int,
    prev: bytes | None,
    revoked: bytes,
    *,
    successor: bytes | None = None,
    reason: str = "",
    policy: SignaturePolicy | str | None = None,
) -> Entry:
    """A signed revocation of `revoked` (signed by that key itself or by the admin)."""
    body = RevocationBody(revoked, successor, reason)
    return _build(key, seq, prev, Kind.REVOCATION, body, policy)


def make_membership(
    admin_key: NodeKey,
    seq: int,
    prev: bytes | None,
    member: PublicKeys,
    name: str,
    *,
    policy: SignaturePolicy | str | None = None,
) -> Entry:
    """A membership certificate: the admin admits `member` under display `name`."""
    body = MembershipBody(member.key_id, member.ed25519, member.ml_dsa_65, name)
    return _build(admin_key, seq, prev, Kind.MEMBERSHIP, body, policy)


# -- equivocation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EquivocationProof:
    """Two validly signed, different headers with the same author and seq.

    Self-contained: carries both entries and (optionally) the author's Ed25519 public key,
    so anyone can check it; entries are kept in id order so equal proofs encode equally.
    """

    a: Entry
    b: Entry
    author_public: bytes | None = None

    def __post_init__(self) -> None:
        if self.b.id < self.a.id:
            a, b = self.b, self.a
            object.__setattr__(self, "a", a)
            object.__setattr__(self, "b", b)

    @classmethod
    def detect(
        cls, x: Entry, y: Entry, author_public: bytes | None = None
    ) -> EquivocationProof | None:
        """A proof when `x` and `y` equivocate (same author+seq, different ids), else None."""
        if x.author == y.author and x.seq == y.seq and x.id != y.id:
            return cls(x, y, author_public)
        return None

    @property
    def author(self) -> bytes:
        """Key id of the equivocating author."""
        return self.a.author

    def verify(self, author_public: bytes | PublicKeys | None = None) -> None:
        """Raise MalformedEntryError/SignatureError unless this proves an equivocation."""
        if self.a.author != self.b.author:
            raise _fail("proof", "entries have different authors")
        if self.a.seq != self.b.seq:
            raise _fail("proof", f"entries have different seq ({self.a.seq}, {self.b.seq})")
        if self.a.id == self.b.id:
            raise _fail("proof", "entries are the same header")
        if isinstance(author_public, PublicKeys):
            author_public = author_public.ed25519
        key = author_public if author_public is not None else self.author_public
        if key is None:
            raise SignatureError("proof: no author public key given or embedded")
        if key_id_of(key) != self.a.author:
            raise SignatureError("proof: public key is not the author's")
        for label, entry in (("a", self.a), ("b", self.b)):
            sig = entry.signature(ED25519)
            if sig is None or not verify_ed25519(key, entry.signing_message, sig):
                raise SignatureError(
                    f"proof: entry {label} ({entry.id.hex()[:16]}) signature fails"
                )

    def is_valid(self, author_public: bytes | PublicKeys | None = None) -> bool:
        """True iff `verify` passes."""
        try:
            self.verify(author_public)
        except (MalformedEntryError, SignatureError):
            return False
        return True

    def to_bytes(self) -> bytes:
        """Canonical encoding: `[1, entry a, entry b, author public key or nil]`."""
        return _pack([PROOF_VERSION, self.a.to_bytes(), self.b.to_bytes(), self.author_public])

    @classmethod
    def from_bytes(cls, data: bytes) -> EquivocationProof:
        """Strict decoding (MalformedEntryError); call `verify` to check it proves anything."""
        p = _array(_unpack(data, "proof", 2 * MAX_ENTRY_BYTES + 64), "proof", 4)
        _int(p[0], "proof.version", PROOF_VERSION, PROOF_VERSION)
        a = Entry.from_bytes(_bin(p[1], "proof.a", max_size=MAX_ENTRY_BYTES))
        b = Entry.from_bytes(_bin(p[2], "proof.b", max_size=MAX_ENTRY_BYTES))
        if not a.id < b.id:
            raise _fail("proof", "entries must be distinct and in id order")
        author_public = _opt_bin(p[3], "proof.author_public", 32)
        return cls(a, b, author_public)
