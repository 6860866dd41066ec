"""Signature schemes, a node's public keys, and the federation's signature policy.

A federation requires either Ed25519 alone (`"ed25519"`) or Ed25519 plus ML-DSA-65
(`"ed25519+ml-dsa-65"`, hybrid). Ed25519 is always required: the key id is derived from it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from crdtd.crypto import pq
from crdtd.errors import ConfigError

ED25519 = "ed25519"
ML_DSA_65 = "ml-dsa-65"


@dataclass(frozen=True)
class SignatureScheme:
    """One registered scheme: its name, sizes and verify function."""

    name: str
    public_key_size: int
    signature_size: int

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """True iff `signature` verifies; never raises for bad input."""
        if len(public_key) != self.public_key_size or len(signature) != self.signature_size:
            return False
        if self.name == ED25519:
            return verify_ed25519(public_key, message, signature)
        return pq.verify(public_key, message, signature)


SCHEMES: dict[str, SignatureScheme] = {
    ED25519: SignatureScheme(ED25519, 32, 64),
    ML_DSA_65: SignatureScheme(ML_DSA_65, pq.PUBLIC_KEY_SIZE, pq.SIGNATURE_SIZE),
}
SCHEME_ORDER: tuple[str, ...] = (ED25519, ML_DSA_65)
"""Canonical order of signatures on an entry."""


def scheme(name: str) -> SignatureScheme:
    """The registered scheme called `name` (ConfigError names the unknown scheme)."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ConfigError(
            f"unknown signature scheme {name!r}; known: {', '.join(SCHEME_ORDER)}"
        ) from None


def verify_ed25519(public_bytes: bytes, msg: bytes, sig: bytes) -> bool:
    """True iff `sig` is a valid Ed25519 signature of `msg` under the raw 32-byte key."""
    if len(public_bytes) != 32 or len(sig) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_bytes).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def key_id_of(ed25519_public: bytes) -> bytes:
    """Key id: sha256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(ed25519_public).digest()


@dataclass(frozen=True)
class PublicKeys:
    """A node's public keys: Ed25519 always, ML-DSA-65 when it has one."""

    ed25519: bytes
    ml_dsa_65: bytes | None = None

    def __post_init__(self) -> None:
        if len(self.ed25519) != 32:
            raise ValueError("Ed25519 public key must be 32 bytes")
        if self.ml_dsa_65 is not None and len(self.ml_dsa_65) != pq.PUBLIC_KEY_SIZE:
            raise ValueError(f"ML-DSA-65 public key must be {pq.PUBLIC_KEY_SIZE} bytes")

    @functools.cached_property
    def key_id(self) -> bytes:
        """sha256 of the Ed25519 public key (hashed once per object: every entry checked
        asks its author's keys for it)."""
        return key_id_of(self.ed25519)

    def for_scheme(self, name: str) -> bytes | None:
        """The public key for scheme `name`, or None when this node has none."""
        return self.ed25519 if name == ED25519 else self.ml_dsa_65 if name == ML_DSA_65 else None


@dataclass(frozen=True)
class SignaturePolicy:
    """Which signatures the federation requires on every entry, in canonical order."""

    required: tuple[str, ...] = (ED25519,)

    def __post_init__(self) -> None:
        if ED25519 not in self.required:
            raise ConfigError("signature policy must require ed25519 (key ids derive from it)")
        for name in self.required:
            scheme(name)
        if len(set(self.required)) != len(self.required):
            raise ConfigError(f"signature policy names a scheme twice: {self.required}")
        ordered = tuple(n for n in SCHEME_ORDER if n in self.required)
        object.__setattr__(self, "required", ordered)

    @classmethod
    def parse(cls, text: str) -> SignaturePolicy:
        """Parse `"ed25519"` or `"ed25519+ml-dsa-65"` (ConfigError names the bad part)."""
        parts = [p.strip().lower() for p in text.split("+")]
        if any(not p for p in parts):
            raise ConfigError(f"signature policy {text!r}: empty scheme name")
        return cls(tuple(parts))

    @classmethod
    def coerce(cls, value: SignaturePolicy | str | Iterable[str]) -> SignaturePolicy:
        """Accept a policy, its text form, or an iterable of scheme names."""
        if isinstance(value, SignaturePolicy):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls(tuple(value))

    @property
    def hybrid(self) -> bool:
        """True when ML-DSA-65 is required as well as Ed25519."""
        return ML_DSA_65 in self.required

    def __str__(self) -> str:
        return "+".join(self.required)


ED25519_ONLY = SignaturePolicy((ED25519,))
HYBRID = SignaturePolicy((ED25519, ML_DSA_65))
