"""Membership, revocation and equivocation: the same outcome whatever order entries arrive in."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtd.errors import EquivocationError, NotMemberError, RevokedKeyError
from crdtd.state import ApplyStatus, E4State
from crdtd.state.entry import Entry, make_contribution
from crdtd.state.testing import Federation
from crdtd.store import sqlite as db
from crdtd.store.chunks import BytesSource, chunk_bytes, manifest_of


@pytest.fixture
def fed() -> Federation:
    return Federation()


def fresh(tmp_path: Path, fed: Federation, name: str) -> E4State:
    return E4State.open(tmp_path / name, fed.admin.public_keys)


def apply_all(s: E4State, entries: list[Entry], payloads: dict[bytes, bytes]) -> None:
    for e in entries:
        src = BytesSource(payloads[e.id]) if e.id in payloads else None
        s.apply(e, src)


def test_contribution_from_a_key_admitted_later_is_refused_then_accepted(
    tmp_path: Path, fed: Federation
) -> None:
    m = fed.add_member("alice")
    c = fed.contribute("alice", b"data")
    s = fresh(tmp_path, fed, "n")
    with pytest.raises(NotMemberError):
        s.apply(c, BytesSource(b"data"))
    s.apply(m)
    assert s.apply(c, BytesSource(b"data")).status is ApplyStatus.APPLIED
    assert fed.keys["alice"].key_id in s.members()
    s.close()


def test_admin_revocation_purges_the_key_in_either_order(tmp_path: Path, fed: Federation) -> None:
    m_a, m_b = fed.add_member("alice"), fed.add_member("bob")
    c1 = fed.contribute("bob", b"bob one")
    c2 = fed.contribute("bob", b"bob two")
    keep = fed.contribute("alice", b"alice")
    rev = fed.revoke("admin", fed.keys["bob"].key_id)
    payloads = {c1.id: b"bob one", c2.id: b"bob two", keep.id: b"alice"}
    early, late = fresh(tmp_path, fed, "early"), fresh(tmp_path, fed, "late")
    apply_all(early, [m_a, m_b, rev, keep], payloads)
    with pytest.raises(RevokedKeyError):
        early.apply(c1, BytesSource(b"bob one"))
    apply_all(late, [m_a, m_b, c1, c2, keep, rev], payloads)
    for s in (early, late):
        assert [e.id for e in s.visible()] == [keep.id]
        assert s.is_revoked(fed.keys["bob"].key_id)
        assert fed.keys["bob"].key_id not in s.members()
        assert fed.keys["bob"].key_id not in s.version_vector()
    assert early.merkle_root() == late.merkle_root()
    assert set(late.store.iter_chunk_digests()) == set(early.store.iter_chunk_digests())
    early.close()
    late.close()


def test_self_revocation_keeps_the_history_before_it(tmp_path: Path, fed: Federation) -> None:
    m = fed.add_member("alice")
    c = fed.contribute("alice", b"before")
    rev = fed.revoke("alice", fed.keys["alice"].key_id)
    after = fed.contribute("alice", b"after")
    s = fresh(tmp_path, fed, "n")
    apply_all(s, [m, c, rev], {c.id: b"before"})
    with pytest.raises(RevokedKeyError):
        s.apply(after, BytesSource(b"after"))
    assert [e.id for e in s.visible()] == [c.id]
    s.close()


def test_equivocation_is_refused_then_quarantined_everywhere_by_evidence(
    tmp_path: Path, fed: Federation
) -> None:
    m_a, m_b = fed.add_member("alice"), fed.add_member("mallory")
    mallory = fed.keys["mallory"]
    p1, p2 = manifest_of(chunk_bytes(b"one")), manifest_of(chunk_bytes(b"two"))
    twin1 = make_contribution(mallory, 1, None, "test/ns", p1.digest, p1.size)
    twin2 = make_contribution(mallory, 1, None, "test/ns", p2.digest, p2.size)
    x, y = fresh(tmp_path, fed, "x"), fresh(tmp_path, fed, "y")
    for s, first in ((x, twin1), (y, twin2)):
        apply_all(s, [m_a, m_b], {})
        s.apply(first, BytesSource(b"one" if first is twin1 else b"two"))
    with pytest.raises(EquivocationError) as info:
        x.apply(twin2, BytesSource(b"two"))
    proof = info.value.proof
    ev = fed.evidence("alice", mallory.key_id, proof=proof.to_bytes())
    x.apply(ev)
    y.apply(ev)
    for s in (x, y):
        assert s.visible() == []
        assert {s.store.entry_status(t.id) for t in (twin1, twin2)} == {db.QUARANTINED}
        assert len(s.equivocations()) == 1
        assert list(s.store.iter_chunk_digests()) == []
        assert [e.id for e in s.evidence(mallory.key_id)] == [ev.id]
        assert s.apply(twin2, BytesSource(b"two")).status is ApplyStatus.DUPLICATE
    assert x.merkle_root() == y.merkle_root()
    x.close()
    y.close()


def test_state_refuses_a_store_of_another_federation(tmp_path: Path, fed: Federation) -> None:
    from crdtd.errors import ConfigError

    fresh(tmp_path, fed, "n").close()
    with pytest.raises(ConfigError):
        E4State.open(tmp_path / "n", Federation().admin.public_keys)
    reopened = E4State.open(tmp_path / "n")
    assert reopened.admin.key_id == fed.admin.key_id
    reopened.close()
