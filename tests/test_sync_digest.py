"""The digest exchange finds exactly the ids each side lacks, with bytes proportional to d."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.errors import ProtocolError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.store.merkle import LEAF_DEPTH, MerkleIndex
from crdtd.sync.config import SyncConfig
from crdtd.sync.reconcile import Difference, MerkleDescent


class IndexSource:
    """A real MerkleIndex (the store's code) over an in-memory id table."""

    def __init__(self, ids: set[bytes]) -> None:
        self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        self.conn.execute("CREATE TABLE entries (id BLOB PRIMARY KEY) WITHOUT ROWID")
        self.conn.execute(MerkleIndex.schema())
        self.conn.executemany("INSERT INTO entries (id) VALUES (?)", [(i,) for i in ids])
        self.index = MerkleIndex(self.conn)
        self.index.update(ids)
        self.ids = set(ids)

    def add(self, more: list[bytes]) -> None:
        """Insert ids (a commit on the replica)."""
        self.ids.update(more)
        self.conn.executemany("INSERT INTO entries (id) VALUES (?)", [(i,) for i in more])
        self.index.update(more)

    def merkle_root(self) -> bytes:
        return self.index.root()

    def merkle_children(self, prefix: bytes) -> list[bytes]:
        return self.index.children(prefix)

    def ids_under(self, prefix: bytes) -> list[bytes]:
        return self.index.ids_under(prefix)

    def count_under(self, prefix: bytes) -> int:
        return self.index.count_under(prefix)


def reconcile(
    local: IndexSource, remote: IndexSource, config: SyncConfig | None = None
) -> tuple[Difference, int]:
    """Run a descent of `local` against `remote`; returns the difference and bytes moved."""
    descent = MerkleDescent(config)
    moved = 0

    async def ask(req: pb.DigestRequest) -> pb.DigestResponse:
        nonlocal moved
        reply = descent.answer(remote, pb.DigestRequest.FromString(req.SerializeToString()))
        moved += req.ByteSize() + reply.ByteSize()
        return reply

    return asyncio.run(descent.reconcile(local, ask)), moved


def ids(n: int, seed: str) -> set[bytes]:
    return {hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(n)}


# ids crowded into few leaves, so every level of the tree gets exercised
crowded_id = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from([b"\x00\x00", b"\x00\x01", b"\x07\x00", b"\xff\xff"]),
    st.binary(min_size=30, max_size=30),
)
any_id = st.one_of(crowded_id, st.binary(min_size=32, max_size=32))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shared=st.sets(any_id, max_size=80),
    only_a=st.sets(any_id, max_size=25),
    only_b=st.sets(any_id, max_size=25),
    threshold=st.sampled_from([0, 1, 16]),
)
def test_descent_finds_exactly_the_ids_each_side_lacks(
    shared: set[bytes], only_a: set[bytes], only_b: set[bytes], threshold: int
) -> None:
    a, b = shared | only_a, shared | only_b
    diff, _ = reconcile(IndexSource(a), IndexSource(b), SyncConfig(ids_threshold=threshold or 1))
    assert diff.missing_here == sorted(b - a)
    assert diff.missing_there == sorted(a - b)
    assert diff.rounds <= LEAF_DEPTH + 1


def test_equal_replicas_settle_in_one_small_round() -> None:
    same = ids(5000, "x")
    diff, moved = reconcile(IndexSource(same), IndexSource(same))
    assert diff.in_sync and diff.rounds == 1
    assert moved < 100


def test_bytes_grow_with_differences_not_with_the_set() -> None:
    base = ids(20_000, "base")
    a = base | ids(5, "only-a")
    b = base | ids(5, "only-b")
    diff, moved = reconcile(IndexSource(a), IndexSource(b))
    assert len(diff.missing_here) == 5 and len(diff.missing_there) == 5
    naive = 32 * len(a)
    assert moved <= 0.02 * naive, f"{moved} bytes vs naive {naive}"
    assert diff.rounds == LEAF_DEPTH + 1


def test_empty_replica_learns_every_id() -> None:
    full = ids(3000, "full")
    diff, _ = reconcile(IndexSource(set()), IndexSource(full))
    assert diff.missing_here == sorted(full) and diff.missing_there == []
    diff, _ = reconcile(IndexSource(full), IndexSource(set()))
    assert diff.missing_there == sorted(full) and diff.missing_here == []


def _one_round(reply: pb.DigestResponse) -> Difference:
    async def ask(req: pb.DigestRequest) -> pb.DigestResponse:
        return reply

    return asyncio.run(MerkleDescent().reconcile(IndexSource(ids(50, "l")), ask))


def test_malformed_digest_answers_are_protocol_errors() -> None:
    node = pb.MerkleNode
    bad = {
        "two nodes for one probe": [node(prefix=b"", ids=b""), node(prefix=b"", ids=b"")],
        "wrong prefix": [node(prefix=b"\x01", ids=b"")],
        "ragged ids": [node(prefix=b"", ids=b"\x00" * 33)],
        "unsorted ids": [node(prefix=b"", ids=b"\x02" * 32 + b"\x01" * 32)],
        "hash bytes": [
            node(
                prefix=b"",
                children=pb.MerkleChildren(present=b"\x01" + bytes(31), hashes=b"abc"),
            )
        ],
        "short bitmap": [node(prefix=b"", children=pb.MerkleChildren(present=b"\x01"))],
    }
    for label, nodes in bad.items():
        reply = pb.DigestResponse(merkle=pb.MerkleNodes(nodes=nodes))
        with pytest.raises(ProtocolError):
            _one_round(reply)
        assert label


def test_server_refuses_probes_below_the_leaves_and_bad_hash_sizes() -> None:
    src = IndexSource(ids(10, "s"))
    descent = MerkleDescent()
    deep = pb.DigestRequest(
        merkle=pb.MerkleProbes(probes=[pb.MerkleProbe(prefix=b"\x00" * (LEAF_DEPTH + 1))])
    )
    with pytest.raises(ProtocolError, match="below leaf depth"):
        descent.answer(src, deep)
    wide = pb.DigestRequest(merkle=pb.MerkleProbes(probes=[], hash_bytes=64))
    with pytest.raises(ProtocolError, match="hash_bytes"):
        descent.answer(src, wide)
    with pytest.raises(ProtocolError, match="no method"):
        descent.answer(src, pb.DigestRequest())
