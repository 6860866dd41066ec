"""Node signing keys: Ed25519 always, ML-DSA-65 optionally; key files written 0600.

A key file is PEM: a standard PKCS#8 `PRIVATE KEY` block (Ed25519; `openssl pkey` reads it)
and, for hybrid keys, a `CRDTD ML-DSA-65 PRIVATE KEY` block holding secret key ‖ public key.
The key id is sha256 of the raw 32-byte Ed25519 public key.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crdtd.crypto import pq
from crdtd.crypto.schemes import (
    ED25519,
    ML_DSA_65,
    PublicKeys,
    SignaturePolicy,
    key_id_of,
    verify_ed25519,
)
from crdtd.errors import KeyFileError

__all__ = ["NodeKey", "check_private_file", "verify_ed25519", "write_private_file"]

_PQ_LABEL = "CRDTD ML-DSA-65 PRIVATE KEY"
_PQ_BLOCK = re.compile(
    rf"-----BEGIN {_PQ_LABEL}-----\s*(?P<body>[A-Za-z0-9+/=\s]+?)\s*-----END {_PQ_LABEL}-----"
)


def write_private_file(path: Path | str, data: bytes, *, overwrite: bool = False) -> None:
    """Write secret bytes atomically with mode 0600 (created 0600, never widened then narrowed)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise KeyFileError(f"{path}: already exists (refusing to overwrite a key)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_private_file(path: Path | str) -> None:
    """Refuse a secret file that group or others can read or write (like ssh does)."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: key file permissions {mode:04o} are too open; run chmod 600 {path}"
        )


@dataclass(frozen=True)
class NodeKey:
    """A node's private keys. `sign` is Ed25519; `sign_all` adds ML-DSA-65 when present."""

    ed25519: Ed25519PrivateKey
    ml_dsa_65_secret: bytes | None = None
    ml_dsa_65_public: bytes | None = None

    @classmethod
    def generate(cls, pq_enabled: bool = False) -> NodeKey:
        """A fresh key; with `pq_enabled` also an ML-DSA-65 key pair (hybrid)."""
        if not pq_enabled:
            return cls(Ed25519PrivateKey.generate())
        pk, sk = pq.keygen()
        return cls(Ed25519PrivateKey.generate(), sk, pk)

    # -- identity ---------------------------------------------------------------------------

    @property
    def public_bytes(self) -> bytes:
        """Raw 32-byte Ed25519 public key."""
        return self.ed25519.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def key_id(self) -> bytes:
        """sha256 of the raw Ed25519 public key (32 bytes)."""
        return key_id_of(self.public_bytes)

    @property
    def public_keys(self) -> PublicKeys:
        """Public halves of every key this node holds."""
        return PublicKeys(self.public_bytes, self.ml_dsa_65_public)

    @property
    def has_pq(self) -> bool:
        """True when this key carries an ML-DSA-65 pair."""
        return self.ml_dsa_65_secret is not None

    # -- signing ----------------------------------------------------------------------------

    def sign(self, msg: bytes) -> bytes:
        """Ed25519 signature (64 bytes, deterministic)."""
        return self.ed25519.sign(msg)

    def sign_ml_dsa(self, msg: bytes) -> bytes:
        """ML-DSA-65 signature (3309 bytes); KeyFileError if this key has no PQ half."""
        if self.ml_dsa_65_secret is None:
            raise KeyFileError(f"key {self.key_id.hex()[:16]} has no ML-DSA-65 half")
        return pq.sign(self.ml_dsa_65_secret, msg)

    def sign_all(
        self, msg: bytes, policy: SignaturePolicy | None = None
    ) -> list[tuple[str, bytes]]:
        """(scheme, signature) pairs in canonical order: Ed25519, then ML-DSA-65 when this key
        has it (or when `policy` requires it, failing if it cannot)."""
        out = [(ED25519, self.sign(msg))]
        wants_pq = self.has_pq if policy is None else policy.hybrid or self.has_pq
        if wants_pq:
            out.append((ML_DSA_65, self.sign_ml_dsa(msg)))
        return out

    # -- files ------------------------------------------------------------------------------

    def to_pem(self) -> bytes:
        """PEM text of the private key(s); keep it secret."""
        pem = self.ed25519.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if self.ml_dsa_65_secret is not None and self.ml_dsa_65_public is not None:
            body = base64.encodebytes(self.ml_dsa_65_secret + self.ml_dsa_65_public).decode()
            pem += f"-----BEGIN {_PQ_LABEL}-----\n{body}-----END {_PQ_LABEL}-----\n".encode()
        return pem

    @classmethod
    def from_pem(cls, data: bytes, source: str = "<bytes>") -> NodeKey:
        """Parse `to_pem` output (KeyFileError names `source` when malformed)."""
        try:
            text = data.decode("ascii")
            end = text.index("-----END PRIVATE KEY-----") + len("-----END PRIVATE KEY-----")
            private = serialization.load_pem_private_key(text[:end].encode(), password=None)
        except Exception as exc:
            raise KeyFileError(f"{source}: not an Ed25519 PKCS#8 PEM key ({exc})") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(f"{source}: key is {type(private).__name__}, expected Ed25519")
        match = _PQ_BLOCK.search(text, end)
        if match is None:
            return cls(private)
        raw = base64.b64decode("".join(match.group("body").split()))
        if len(raw) != pq.SECRET_KEY_SIZE + pq.PUBLIC_KEY_SIZE:
            raise KeyFileError(f"{source}: ML-DSA-65 block has {len(raw)} bytes")
        return cls(private, raw[: pq.SECRET_KEY_SIZE], raw[pq.SECRET_KEY_SIZE :])

    def save(self, path: Path | str, *, overwrite: bool = False) -> None:
        """Write the key file with mode 0600 (refuses to overwrite unless asked)."""
        write_private_file(path, self.to_pem(), overwrite=overwrite)

    @classmethod
    def load(cls, path: Path | str) -> NodeKey:
        """Read a key file, refusing one that group/others can access."""
        check_private_file(path)
        return cls.from_pem(Path(path).read_bytes(), str(path))

    def __repr__(self) -> str:  # never print secrets
        return f"NodeKey(key_id={self.key_id.hex()[:16]}…, pq={self.has_pq})"
