"""ML-DSA-65 (FIPS 204) signatures behind one small interface, with a pluggable backend.

The backend is `liboqs-python` (module `oqs`) when the liboqs shared library loads, else the
`pqcrypto` wheel. Both speak the FIPS 204 encodings (public key 1952 bytes, secret key 4032,
signature 3309), so keys and signatures move freely between them. Set
`CRDTD_PQ_BACKEND=pqcrypto|oqs` to force one.
"""

from __future__ import annotations

import ctypes.util
import functools
import importlib
import os
from dataclasses import dataclass
from typing import Any, Protocol

from crdtd.errors import ConfigError, PqUnavailableError

ALGORITHM = "ML-DSA-65"
PUBLIC_KEY_SIZE = 1952
SECRET_KEY_SIZE = 4032
SIGNATURE_SIZE = 3309


class MlDsaBackend(Protocol):
    """What a backend offers: keygen, sign, verify on raw FIPS 204 encodings."""

    @property
    def name(self) -> str: ...

    def keygen(self) -> tuple[bytes, bytes]: ...

    def sign(self, secret_key: bytes, message: bytes) -> bytes: ...

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool: ...


@dataclass(frozen=True)
class _PqcryptoBackend:
    """The `pqcrypto` wheel (PQClean-derived Rust code, no system library needed)."""

    module: Any
    name: str = "pqcrypto"

    def keygen(self) -> tuple[bytes, bytes]:
        pk, sk = self.module.keygen()
        return bytes(pk), bytes(sk)

    def sign(self, secret_key: bytes, message: bytes) -> bytes:
        return bytes(self.module.sign(secret_key, message))

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        try:
            self.module.verify(public_key, message, signature)
        except Exception:  # the wheel raises InvalidSignatureError or ValueError
            return False
        return True


@dataclass(frozen=True)
class _OqsBackend:
    """liboqs through liboqs-python (used only when the shared library is found)."""

    module: Any
    name: str = "liboqs"

    def keygen(self) -> tuple[bytes, bytes]:
        with self.module.Signature(ALGORITHM) as signer:
            pk = signer.generate_keypair()
            return bytes(pk), bytes(signer.export_secret_key())

    def sign(self, secret_key: bytes, message: bytes) -> bytes:
        with self.module.Signature(ALGORITHM, secret_key) as signer:
            return bytes(signer.sign(message))

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            return False
        try:
            with self.module.Signature(ALGORITHM) as verifier:
                return bool(verifier.verify(message, signature, public_key))
        except Exception:
            return False


def _liboqs_present() -> bool:
    """True when the liboqs shared library can be found (importing `oqs` without it would
    try to download and build liboqs, which a daemon must never do)."""
    if os.environ.get("OQS_INSTALL_PATH"):
        return True
    return ctypes.util.find_library("oqs") is not None


def _load_oqs() -> MlDsaBackend | None:
    if not _liboqs_present():
        return None
    try:
        module = importlib.import_module("oqs")
        if ALGORITHM not in module.get_enabled_sig_mechanisms():
            return None
    except Exception:
        return None
    return _OqsBackend(module)


def _load_pqcrypto() -> MlDsaBackend | None:
    try:
        module = importlib.import_module("pqcrypto.sign.ml_dsa_65")
    except Exception:
        return None
    return _PqcryptoBackend(module)


@functools.cache
def backend() -> MlDsaBackend:
    """The active backend: forced by CRDTD_PQ_BACKEND, else liboqs if it loads, else pqcrypto."""
    forced = os.environ.get("CRDTD_PQ_BACKEND", "").strip().lower()
    if forced not in ("", "oqs", "liboqs", "pqcrypto"):
        raise ConfigError(f"CRDTD_PQ_BACKEND={forced!r}: expected 'oqs' or 'pqcrypto'")
    loaders = {"oqs": [_load_oqs], "liboqs": [_load_oqs], "pqcrypto": [_load_pqcrypto]}.get(
        forced, [_load_oqs, _load_pqcrypto]
    )
    for load in loaders:
        found = load()
        if found is not None:
            return found
    raise PqUnavailableError(
        f"no {ALGORITHM} backend available (tried {forced or 'liboqs, pqcrypto'}); "
        "install the 'pqcrypto' wheel or liboqs with liboqs-python"
    )


def available() -> bool:
    """Whether ML-DSA-65 can be used in this process."""
    try:
        backend()
    except PqUnavailableError:
        return False
    return True


def backend_name() -> str:
    """Name of the active backend ('liboqs' or 'pqcrypto')."""
    return backend().name


def keygen() -> tuple[bytes, bytes]:
    """A fresh (public key, secret key) pair in FIPS 204 encoding."""
    return backend().keygen()


def sign(secret_key: bytes, message: bytes) -> bytes:
    """ML-DSA-65 signature (hedged: two signatures of one message usually differ)."""
    if len(secret_key) != SECRET_KEY_SIZE:
        raise ValueError(f"ML-DSA-65 secret key must be {SECRET_KEY_SIZE} bytes")
    return backend().sign(secret_key, message)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is a valid ML-DSA-65 signature of `message` under `public_key`."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    return backend().verify(public_key, message, signature)
