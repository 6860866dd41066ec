"""Right to be forgotten: erased payload bytes leave the disk, the ids stay as tombstones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from crdtd.state import ApplyStatus, E4State
from crdtd.state.testing import Federation
from crdtd.store import sqlite as db
from crdtd.store.chunks import BytesSource, chunk_bytes, manifest_of

MARKER = b"PATIENT-4711-DIAGNOSIS:"


def secret(n: int = 3) -> bytes:
    return b"".join(MARKER + str(i).encode() * 50 for i in range(n * 1000))


def bytes_on_disk(root: Path, needle: bytes) -> list[Path]:
    """Every file under `root` that contains `needle` (chunk files, SQLite, WAL, temp)."""
    hits = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if needle in p.read_bytes():
                hits.append(p)
    return hits


@pytest.fixture
def fed() -> Federation:
    return Federation()


@pytest.fixture
def node(tmp_path: Path, fed: Federation) -> E4State:
    s = E4State.open(tmp_path / "node", fed.admin.public_keys)
    for name in ("alice", "bob"):
        s.apply(fed.add_member(name))
    yield s
    s.close()


def test_erased_contribution_bytes_are_gone_after_restart(
    tmp_path: Path, node: E4State, fed: Federation
) -> None:
    data = secret()
    c = fed.contribute("alice", data)
    node.apply(c, BytesSource(data))
    assert bytes_on_disk(tmp_path / "node" / "chunks", MARKER)
    node.apply(fed.remove("alice", [c.id]))
    node.close()
    reopened = E4State.open(tmp_path / "node")
    assert bytes_on_disk(tmp_path / "node", MARKER) == []
    assert reopened.visible() == []
    assert reopened.store.entry_status(c.id) == db.TOMBSTONED
    assert c.id in reopened.store.all_ids()  # the id stays, so sync never brings it back
    assert reopened.apply(c, BytesSource(data)).status is ApplyStatus.DUPLICATE
    assert bytes_on_disk(tmp_path / "node", MARKER) == []
    reopened.close()


def test_erased_small_record_is_gone_from_the_database_files(
    tmp_path: Path, node: E4State, fed: Federation
) -> None:
    record = MARKER + b"small enough to live inside SQLite"
    c = fed.contribute("alice", record)
    node.apply(c, BytesSource(record))
    node.store.conn.execute("PRAGMA wal_checkpoint(FULL)")  # also copy it into the main file
    assert bytes_on_disk(tmp_path / "node", MARKER)
    node.apply(fed.remove("admin", [c.id]))
    assert bytes_on_disk(tmp_path / "node", MARKER) == []
    assert node.store.iter_chunk_digests() == []


def test_chunks_another_live_contribution_uses_are_kept(node: E4State, fed: Federation) -> None:
    data = secret(1)
    first = fed.contribute("alice", data)
    same = fed.contribute("bob", data, namespace="other/ns")
    node.apply(first, BytesSource(data))
    node.apply(same, BytesSource(data))
    node.apply(fed.remove("admin", [first.id]))
    assert node.store.read_payload(same.body.payload_digest) == data
    node.apply(fed.remove("bob", [same.id]))
    assert list(node.store.iter_chunk_digests()) == []


def test_erasing_a_fine_tune_keeps_the_base_tensors_it_shared(
    node: E4State, fed: Federation
) -> None:
    rng = np.random.default_rng(0)
    base_t = {f"w{i}": rng.standard_normal(500).astype(np.float32) for i in range(10)}
    tuned_t = dict(base_t, w3=base_t["w3"] + 1)
    base, tuned = save(base_t), save(tuned_t)
    b = fed.contribute("alice", base, payload_kind="safetensors")
    t = fed.contribute("bob", tuned, payload_kind="safetensors", base_id=b.id)
    node.apply(b, BytesSource(base))
    node.apply(t, BytesSource(tuned))
    assert len(list(node.store.iter_chunk_digests())) == 12  # 11 + the fine-tune's one tensor
    node.apply(fed.remove("bob", [t.id]))
    assert set(node.store.iter_chunk_digests()) == {
        r.digest for r in manifest_of(chunk_bytes(base)).chunks
    }
    assert node.store.read_payload(b.body.payload_digest) == base


def test_contribution_arriving_after_its_erasure_is_a_tombstone_without_payload(
    tmp_path: Path,
) -> None:
    fed = Federation()
    membership = fed.add_member("alice")
    data = secret()
    c = fed.contribute("alice", data)
    erase = fed.remove("admin", [c.id])
    s = E4State.open(tmp_path / "late", fed.admin.public_keys)
    assert s.apply(membership).status is ApplyStatus.APPLIED
    assert s.apply(erase).status is ApplyStatus.APPLIED
    assert s.apply(c, BytesSource(data)).status is ApplyStatus.TOMBSTONED
    assert list(s.store.iter_chunk_digests()) == []
    assert bytes_on_disk(tmp_path / "late", MARKER) == []
    assert s.visible() == []
    assert c.id in s.store.all_ids()
    s.close()


def test_admin_erases_everything_an_author_ever_contributes(node: E4State, fed: Federation) -> None:
    early = fed.contribute("bob", b"early")
    node.apply(early, BytesSource(b"early"))
    kept = fed.contribute("alice", b"alice keeps this")
    node.apply(kept, BytesSource(b"alice keeps this"))
    node.apply(fed.remove("admin", target_author=fed.keys["bob"].key_id))
    late = fed.contribute("bob", b"late")
    assert node.apply(late, BytesSource(b"late")).status is ApplyStatus.TOMBSTONED
    assert [e.id for e in node.visible()] == [kept.id]
    assert {node.store.entry_status(i) for i in (early.id, late.id)} == {db.TOMBSTONED}


def test_author_cannot_erase_someone_elses_contribution(node: E4State, fed: Federation) -> None:
    c = fed.contribute("alice", b"mine")
    node.apply(c, BytesSource(b"mine"))
    node.apply(fed.remove("bob", [c.id]))  # accepted as an entry, but has no effect on alice's
    assert [e.id for e in node.visible()] == [c.id]
    assert node.store.read_payload(c.body.payload_digest) == b"mine"


def test_erasure_replicates_and_tombstones_never_come_back(
    tmp_path: Path, node: E4State, fed: Federation
) -> None:
    data = secret(1)
    c = fed.contribute("alice", data)
    node.apply(c, BytesSource(data))
    other = E4State.open(tmp_path / "other", fed.admin.public_keys)
    other.join(node)
    assert [e.id for e in other.visible()] == [c.id]
    node.apply(fed.remove("alice", [c.id]))
    other.join(node)
    node.join(other)
    assert other.visible() == node.visible() == []
    assert other.merkle_root() == node.merkle_root()
    assert bytes_on_disk(tmp_path / "other", MARKER) == []
    other.close()
