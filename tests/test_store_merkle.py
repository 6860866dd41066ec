"""The incremental 256-ary Merkle tree: equal to a recomputation, cheap to update and descend."""

from __future__ import annotations

import random
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.store.merkle import (
    EMPTY_HASH,
    FANOUT,
    ID_SIZE,
    LEAF_DEPTH,
    MerkleIndex,
    leaf_hash,
    node_hash,
    root_from_ids,
)

FAST_TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None


@pytest.fixture
def fast_dir() -> Iterator[Path]:
    """A real directory, on tmpfs when there is one (these tests are about hashing, not disks)."""
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as d:
        yield Path(d)


def open_index(path: Path) -> MerkleIndex:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE ids (id BLOB PRIMARY KEY) WITHOUT ROWID")
    conn.execute(MerkleIndex.schema("nodes"))
    return MerkleIndex(conn, ids_table="ids", nodes_table="nodes")


def add(ix: MerkleIndex, ids: list[bytes]) -> None:
    with ix.conn:  # one transaction, as NodeStore.transaction() does
        ix.conn.execute("BEGIN")
        ix.conn.executemany("INSERT OR IGNORE INTO ids VALUES (?)", [(i,) for i in ids])
        ix.update(ids)


def remove(ix: MerkleIndex, ids: list[bytes]) -> None:
    with ix.conn:
        ix.conn.execute("BEGIN")
        ix.conn.executemany("DELETE FROM ids WHERE id = ?", [(i,) for i in ids])
        ix.update(ids)


# ids that collide on prefixes often, so leaves hold several ids and nodes empty out again
clustered_ids = st.builds(
    lambda head, tail: bytes(head) + tail,
    st.lists(st.integers(0, 3), min_size=LEAF_DEPTH, max_size=LEAF_DEPTH),
    st.binary(min_size=ID_SIZE - LEAF_DEPTH, max_size=ID_SIZE - LEAF_DEPTH),
)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.booleans(), st.lists(clustered_ids, min_size=1, max_size=5)),
        min_size=1,
        max_size=25,
    )
)
def test_incremental_root_equals_recomputation_after_every_step(
    steps: list[tuple[bool, list[bytes]]],
) -> None:
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        ix = open_index(Path(tmp) / "m.sqlite")
        held: set[bytes] = set()
        for is_add, ids in steps:
            if is_add:
                add(ix, ids)
                held |= set(ids)
            else:
                victims = sorted(held)[: len(ids)]
                remove(ix, victims)
                held -= set(victims)
            assert ix.root() == root_from_ids(held)
            assert ix.count_under(b"") == len(held)
        ix.conn.close()


def test_root_does_not_depend_on_insertion_order(fast_dir: Path) -> None:
    rng = random.Random(3)
    ids = [rng.randbytes(32) for _ in range(500)]
    a, b = open_index(fast_dir / "a"), open_index(fast_dir / "b")
    for i in ids:
        add(a, [i])
    add(b, list(reversed(ids)))
    assert a.root() == b.root() == root_from_ids(ids)
    assert a.root() != EMPTY_HASH


def test_children_hash_to_their_parent_and_ids_are_listed_sorted(fast_dir: Path) -> None:
    rng = random.Random(4)
    ix = open_index(fast_dir / "m")
    ids = [rng.randbytes(32) for _ in range(3000)]
    add(ix, ids)
    root_children = ix.children(b"")
    assert node_hash(root_children) == ix.root()
    p = ids[0][:1]
    kids = ix.children(p)
    assert len(kids) == FANOUT and node_hash(kids) == root_children[p[0]]
    leaf = ids[0][:LEAF_DEPTH]
    under = ix.ids_under(leaf)
    assert under == sorted(i for i in ids if i.startswith(leaf))
    assert leaf_hash(under) == kids[leaf[-1]]
    assert ix.count_under(p) == sum(i.startswith(p) for i in ids)
    assert ix.count_under(ids[0][:5]) == 1


def test_an_insert_rewrites_only_the_nodes_on_its_path(fast_dir: Path) -> None:
    rng = random.Random(5)
    ix = open_index(fast_dir / "m")
    add(ix, [rng.randbytes(32) for _ in range(5000)])
    writes: list[str] = []
    ix.conn.set_trace_callback(
        lambda sql: (
            writes.append(sql) if sql.lstrip().startswith(("INSERT OR REPLACE", "DELETE")) else None
        )
    )
    add(ix, [rng.randbytes(32)])
    ix.conn.set_trace_callback(None)
    node_writes = [w for w in writes if "nodes" in w]
    assert len(node_writes) == LEAF_DEPTH + 1


def descend(a: MerkleIndex, b: MerkleIndex) -> tuple[set[bytes], int]:
    """What a sync descent finds (ids only one side holds) and the hash/id bytes it moves."""
    moved = 0
    found: set[bytes] = set()
    frontier = [b""]
    while frontier:
        prefix = frontier.pop()
        if len(prefix) == LEAF_DEPTH:
            theirs = b.ids_under(prefix)
            moved += ID_SIZE * len(theirs)
            found |= set(theirs) ^ set(a.ids_under(prefix))
            continue
        mine, theirs = a.children(prefix), b.children(prefix)
        moved += ID_SIZE * FANOUT
        frontier += [prefix + bytes([i]) for i in range(FANOUT) if mine[i] != theirs[i]]
    return found, moved


def test_descent_finds_exactly_the_differences_moving_bytes_in_proportion_to_them(
    fast_dir: Path,
) -> None:
    rng = random.Random(6)
    common = [rng.randbytes(32) for _ in range(20_000)]
    only_b = [rng.randbytes(32) for _ in range(10)]
    a, b = open_index(fast_dir / "a"), open_index(fast_dir / "b")
    add(a, common)
    add(b, common + only_b)
    found, moved = descend(a, b)
    assert found == set(only_b)
    # root children + one child list per differing depth-1 node + a few ids per leaf
    assert moved <= ID_SIZE * FANOUT * (1 + 10 * (LEAF_DEPTH - 1)) + ID_SIZE * 10 * 4
    assert moved < 0.15 * ID_SIZE * len(common)  # against sending the full id list


def test_a_rolled_back_commit_leaves_the_next_root_exact(fast_dir: Path) -> None:
    """Inner nodes are remembered between commits; a commit that fails after its Merkle
    update must not leave them behind."""
    from crdtd.state.testing import Federation
    from crdtd.store.sqlite import LIVE
    from crdtd.store.store import NodeStore

    fed = Federation()
    fed.add_member("a")
    entries = [fed.contribute("a", i.to_bytes(2, "big") * 20) for i in range(300)]
    store = NodeStore.open(fast_dir / "s")
    with store.transaction():
        for e in entries[:200]:
            store.insert_entry(e, LIVE)
    flush = store.chunks.flush

    def broken() -> None:
        raise OSError("disk full")

    store.chunks.flush = broken  # type: ignore[method-assign]
    with pytest.raises(OSError), store.transaction():
        for e in entries[200:250]:
            store.insert_entry(e, LIVE)
    store.chunks.flush = flush  # type: ignore[method-assign]
    with store.transaction():
        for e in entries[250:]:
            store.insert_entry(e, LIVE)
    ids = store.all_ids()
    assert len(ids) == 250
    assert store.merkle_root() == root_from_ids(ids)
    store.close()


def test_commits_reach_the_database_file_while_the_store_stays_open(fast_dir: Path) -> None:
    """The owner's store checkpoints the WAL in a background thread (not inside COMMIT): the
    committed pages still reach the database file, without closing the store."""
    import os
    import time

    from crdtd.state.testing import Federation
    from crdtd.store.sqlite import LIVE
    from crdtd.store.store import DB_NAME, NodeStore

    fed = Federation()
    fed.add_member("a")
    store = NodeStore.open(fast_dir / "s")
    db_file = fast_dir / "s" / DB_NAME
    before = os.path.getsize(db_file)
    for start in range(0, 600, 200):
        with store.transaction():
            for i in range(start, start + 200):
                store.insert_entry(fed.contribute("a", i.to_bytes(2, "big") * 20), LIVE)
    deadline = time.monotonic() + 20
    while os.path.getsize(db_file) <= before + 100_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.getsize(db_file) > before + 100_000
    assert store.merkle_root() == root_from_ids(store.all_ids())
    store.close()


def test_two_stores_writing_one_file_in_turn_keep_the_root_exact(fast_dir: Path) -> None:
    """Remembered inner nodes are dropped when another connection wrote the file since."""
    from crdtd.state.testing import Federation
    from crdtd.store.sqlite import LIVE
    from crdtd.store.store import NodeStore

    fed = Federation()
    fed.add_member("a")
    entries = [fed.contribute("a", i.to_bytes(2, "big") * 20) for i in range(120)]
    first = NodeStore.open(fast_dir / "s")
    second = NodeStore.open(fast_dir / "s")
    try:
        for k in range(0, 120, 20):
            store = first if k % 40 == 0 else second
            with store.transaction():
                for e in entries[k : k + 20]:
                    store.insert_entry(e, LIVE)
            ids = store.all_ids()
            assert store.merkle_root() == root_from_ids(ids)
        assert len(first.all_ids()) == 120
        assert first.merkle_root() == second.merkle_root() == root_from_ids(first.all_ids())
    finally:
        first.close()
        second.close()
