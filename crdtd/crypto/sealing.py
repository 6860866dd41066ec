"""Encrypted namespaces: per-node X25519 keys, namespace-key envelopes, sealed payloads.

- **Node encryption key.** Every member already has an Ed25519 key, published in its
  admin-signed membership entry. Its X25519 key is the birational image of that key
  (libsodium's `crypto_sign_ed25519_pk_to_curve25519` / `..._sk_to_curve25519`, as `age`
  does for ssh-ed25519 recipients): the public half is computed from the Ed25519 public key
  alone, the private half from the Ed25519 seed. So anyone can wrap a key to any member with
  nothing but the membership set, and no new key material has to be distributed.
- **Envelope.** A namespace key (32 random bytes, AES-256-GCM) is wrapped once per member:
  an ephemeral X25519 exchange with the member's key, HKDF-SHA256 to a key-encryption key,
  AES-256-GCM over the namespace key. `KeyEnvelope` (canonical msgpack) carries the
  namespace, an epoch, the key id and one wrapped copy per member; the federation admin
  signs it as a contribution (payload kind `crdtd-keys`) so it replicates like any entry.
  A new epoch (another member list) rotates the key for later contributions.
- **Sealed payload.** `seal_file` encrypts a payload in 1 MiB segments (AES-256-GCM; the
  nonce is an 8-byte prefix plus the segment counter, the header and "last segment" flag
  are authenticated, so truncation, reordering and splicing fail). The prefix is derived
  from the key and the plaintext's sha256 (SIV-style): the same plaintext seals to the same
  bytes, so a retried push is recognised, and two different plaintexts share a nonce prefix
  only with probability 2^-64 per pair. Chunks, the payload digest and every replication
  check then cover the ciphertext: nodes without the key store, verify and relay it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crdtd.crypto.keys import NodeKey
from crdtd.errors import NamespaceKeyError, SealedPayloadError

KEYS_PAYLOAD_KIND = "crdtd-keys"
"""Payload kind of an admin-signed key envelope inside an encrypted namespace."""
SEALED_META = "crdtd.sealed"
"""Contribution metadata naming the key id (hex) a sealed payload was encrypted with."""
MAGIC = b"CRDTD-SEALED\x01"
SEGMENT = 1 << 20
TAG = 16
KEY_SIZE = 32
ENVELOPE_VERSION = 1
_P = 2**255 - 19


# -- X25519 keys from Ed25519 keys --------------------------------------------------------------


def x25519_public(ed25519_public: bytes) -> bytes:
    """The X25519 public key of an Ed25519 public key: u = (1 + y) / (1 - y) mod p."""
    if len(ed25519_public) != 32:
        raise NamespaceKeyError(f"Ed25519 public key of {len(ed25519_public)} bytes")
    y = int.from_bytes(ed25519_public, "little") & ((1 << 255) - 1)
    if y >= _P or (1 - y) % _P == 0:
        raise NamespaceKeyError("Ed25519 public key has no X25519 image")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def x25519_private(key: NodeKey) -> X25519PrivateKey:
    """The X25519 private key of a node's Ed25519 key: the clamped first half of
    SHA-512(seed), the scalar Ed25519 itself signs with."""
    seed = key.ed25519.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


def key_id_of(namespace_key: bytes) -> bytes:
    """The public name of a namespace key (reveals nothing about it)."""
    return hashlib.sha256(b"crdtd/namespace-key-id/v1\0" + namespace_key).digest()


def new_namespace_key() -> bytes:
    """32 random bytes (AES-256-GCM)."""
    return AESGCM.generate_key(bit_length=256)


# -- envelopes -------------------------------------------------------------------------------------


def _kek(shared: bytes, eph: bytes, recipient: bytes, namespace: str, epoch: int) -> bytes:
    info = b"crdtd/namespace-key/v1\0" + namespace.encode() + b"\0" + epoch.to_bytes(8, "big")
    return HKDF(hashes.SHA256(), KEY_SIZE, salt=eph + recipient, info=info).derive(shared)


@dataclass(frozen=True)
class WrappedKey:
    """The namespace key for one member: ephemeral X25519 public key, nonce, ciphertext."""

    member: bytes
    ephemeral: bytes
    nonce: bytes
    wrapped: bytes


@dataclass(frozen=True)
class KeyEnvelope:
    """One epoch's namespace key, wrapped for each member that may read the namespace."""

    namespace: str
    epoch: int
    key_id: bytes
    copies: tuple[WrappedKey, ...]

    @property
    def members(self) -> tuple[bytes, ...]:
        """Key ids of the members holding this key, sorted."""
        return tuple(c.member for c in self.copies)

    @classmethod
    def seal(
        cls, namespace: str, epoch: int, key: bytes, members: Mapping[bytes, bytes]
    ) -> KeyEnvelope:
        """Wrap `key` for `members` (key id -> Ed25519 public key)."""
        if not members:
            raise NamespaceKeyError(f"namespace {namespace!r}: a key needs at least one member")
        kid = key_id_of(key)
        copies = []
        for member in sorted(members):
            recipient = x25519_public(members[member])
            eph = X25519PrivateKey.generate()
            eph_pub = eph.public_key().public_bytes_raw()
            shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient))
            nonce = os.urandom(12)
            kek = _kek(shared, eph_pub, recipient, namespace, epoch)
            wrapped = AESGCM(kek).encrypt(nonce, key, member + kid)
            copies.append(WrappedKey(member, eph_pub, nonce, wrapped))
        return cls(namespace, epoch, kid, tuple(copies))

    def open(self, node: NodeKey) -> bytes | None:
        """The namespace key when `node` is a member of this envelope, else None."""
        copy = next((c for c in self.copies if c.member == node.key_id), None)
        if copy is None:
            return None
        own = x25519_private(node)
        recipient = own.public_key().public_bytes_raw()
        shared = own.exchange(X25519PublicKey.from_public_bytes(copy.ephemeral))
        kek = _kek(shared, copy.ephemeral, recipient, self.namespace, self.epoch)
        try:
            key = AESGCM(kek).decrypt(copy.nonce, copy.wrapped, copy.member + self.key_id)
        except InvalidTag:
            raise NamespaceKeyError(
                f"namespace {self.namespace!r} epoch {self.epoch}: the key wrapped for this "
                "node does not open"
            ) from None
        if key_id_of(key) != self.key_id:
            raise NamespaceKeyError(f"namespace {self.namespace!r}: key does not match its id")
        return key

    @staticmethod
    def epoch_of(entry: Any) -> int:
        """The epoch an envelope's signed contribution declares (0 when it declares none)."""
        epoch = entry.as_contribution().metadata.get("epoch")
        return epoch if type(epoch) is int else 0

    def to_bytes(self) -> bytes:
        """Canonical msgpack: [1, namespace, epoch, key id, [[member, eph, nonce, ct], ...]]."""
        body = [[c.member, c.ephemeral, c.nonce, c.wrapped] for c in self.copies]
        return msgpack.packb(
            [ENVELOPE_VERSION, self.namespace, self.epoch, self.key_id, body], use_bin_type=True
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyEnvelope:
        """Strict decode (NamespaceKeyError naming what is wrong)."""
        try:
            obj = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
            version, namespace, epoch, kid, body = obj
            if version != ENVELOPE_VERSION or not isinstance(namespace, str):
                raise ValueError("version or namespace")
            if type(epoch) is not int or epoch < 1 or len(kid) != 32:
                raise ValueError("epoch or key id")
            copies = tuple(
                WrappedKey(bytes(m), bytes(e), bytes(n), bytes(w))
                for m, e, n, w in body
                if len(m) == 32 and len(e) == 32 and len(n) == 12 and len(w) == KEY_SIZE + TAG
            )
            if len(copies) != len(body) or [c.member for c in copies] != sorted(
                c.member for c in copies
            ):
                raise ValueError("wrapped copies")
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise NamespaceKeyError(f"key envelope does not decode ({exc})") from None
        env = cls(namespace, epoch, bytes(kid), copies)
        if env.to_bytes() != bytes(data):
            raise NamespaceKeyError("key envelope encoding is not canonical")
        return env


# -- sealed payloads ------------------------------------------------------------------------------


def _header(key_id: bytes, prefix: bytes) -> bytes:
    return MAGIC + key_id + prefix + SEGMENT.to_bytes(4, "big")


HEADER_SIZE = len(MAGIC) + 32 + 8 + 4


def _aad(header: bytes, index: int, last: bool) -> bytes:
    return header + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")


def _segments(path: Path) -> Iterator[tuple[bytes, bool]]:
    with path.open("rb") as f:
        current = f.read(SEGMENT)
        while True:
            following = f.read(SEGMENT)
            yield current, not following
            if not following:
                return
            current = following


def seal_file(src: Path, dst: Path, key: bytes) -> bytes:
    """Encrypt the file at `src` into `dst`; returns the key id written in its header."""
    digest = hashlib.sha256()
    with src.open("rb") as f:
        while block := f.read(SEGMENT):
            digest.update(block)
    kid = key_id_of(key)
    prefix = hmac.new(key, b"crdtd/seal-nonce/v1\0" + digest.digest(), "sha256").digest()[:8]
    header = _header(kid, prefix)
    aead = AESGCM(key)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(header)
        for i, (segment, last) in enumerate(_segments(src)):
            out.write(aead.encrypt(prefix + i.to_bytes(4, "big"), segment, _aad(header, i, last)))
    return kid


def sealed_key_id(first: bytes) -> bytes:
    """The key id a sealed payload names (from its first bytes)."""
    if len(first) < HEADER_SIZE or not first.startswith(MAGIC):
        raise SealedPayloadError("payload is not a sealed crdtd payload")
    return first[len(MAGIC) : len(MAGIC) + 32]


def open_sealed(
    pieces: Iterable[bytes], key_for: Callable[[bytes], bytes], where: str = "payload"
) -> Iterator[bytes]:
    """The plaintext of a sealed payload given as consecutive byte pieces (e.g. its chunks);
    `key_for(key id)` returns the key or raises NamespaceKeyError. Tampering, truncation or
    a wrong key raise SealedPayloadError before the bad segment's plaintext comes out."""
    buffer = bytearray()
    source = iter(pieces)
    header = b""
    aead: AESGCM | None = None
    prefix = b""
    index = 0
    step = SEGMENT + TAG
    done = False
    for piece in source:
        buffer += piece
        if aead is None:
            if len(buffer) < HEADER_SIZE:
                continue
            header = bytes(buffer[:HEADER_SIZE])
            kid = sealed_key_id(header)
            if int.from_bytes(header[-4:], "big") != SEGMENT:
                raise SealedPayloadError(f"{where}: unknown segment size")
            aead = AESGCM(key_for(kid))
            prefix = header[len(MAGIC) + 32 : len(MAGIC) + 40]
            del buffer[:HEADER_SIZE]
        while len(buffer) > step:  # more follows: this segment is not the last
            yield _open(aead, prefix, header, index, bytes(buffer[:step]), False, where)
            del buffer[:step]
            index += 1
    if aead is None:
        raise SealedPayloadError(f"{where}: sealed payload is shorter than its header")
    if buffer or index == 0:
        yield _open(aead, prefix, header, index, bytes(buffer), True, where)
        done = True
    if not done:
        raise SealedPayloadError(f"{where}: sealed payload ends without its last segment")


def _open(
    aead: AESGCM, prefix: bytes, header: bytes, i: int, ct: bytes, last: bool, where: str
) -> bytes:
    try:
        return aead.decrypt(prefix + i.to_bytes(4, "big"), ct, _aad(header, i, last))
    except InvalidTag:
        raise SealedPayloadError(
            f"{where}: segment {i} does not authenticate (tampered, truncated or another key)"
        ) from None


__all__ = [
    "KEYS_PAYLOAD_KIND",
    "SEALED_META",
    "KeyEnvelope",
    "WrappedKey",
    "key_id_of",
    "new_namespace_key",
    "open_sealed",
    "seal_file",
    "sealed_key_id",
    "x25519_private",
    "x25519_public",
]
