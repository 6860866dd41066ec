"""ML-DSA-65 (FIPS 204) through whichever backend loads here."""

from __future__ import annotations

from crdtd.crypto import pq


def test_a_pq_backend_is_available() -> None:
    assert pq.available()
    assert pq.backend_name() in ("liboqs", "pqcrypto")


def test_ml_dsa_65_sign_verify_with_fips_204_sizes() -> None:
    pk, sk = pq.keygen()
    assert (len(pk), len(sk)) == (pq.PUBLIC_KEY_SIZE, pq.SECRET_KEY_SIZE) == (1952, 4032)
    sig = pq.sign(sk, b"message")
    assert len(sig) == pq.SIGNATURE_SIZE == 3309
    assert pq.verify(pk, b"message", sig)


def test_ml_dsa_65_rejects_tampering_and_bad_lengths() -> None:
    pk, sk = pq.keygen()
    other_pk, _ = pq.keygen()
    sig = pq.sign(sk, b"message")
    assert not pq.verify(pk, b"messagE", sig)
    assert not pq.verify(other_pk, b"message", sig)
    assert not pq.verify(pk, b"message", bytes([sig[0] ^ 1]) + sig[1:])
    assert not pq.verify(pk, b"message", sig[:-1])
    assert not pq.verify(pk[:-1], b"message", sig)
