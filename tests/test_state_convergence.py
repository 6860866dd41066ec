"""Replicas that receive the same entries in any order, with duplicates, end up identical."""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.crypto.keys import NodeKey
from crdtd.errors import NotFoundError, ValidationError
from crdtd.state import ApplyStatus, E4State
from crdtd.state.entry import Entry, Kind
from crdtd.state.testing import Federation
from crdtd.store.chunks import Manifest, chunk_bytes, chunk_digest, manifest_of
from crdtd.store.merkle import root_from_ids

ADMIN = NodeKey.generate()
MEMBERS = {name: NodeKey.generate() for name in ("alice", "bob", "carol")}
# a small pool so that contributions share payloads (and erasure must keep shared bytes)
# (and one over 64 KiB, so both inline chunks and chunk files are erased and kept)
PAYLOADS = [bytes([i]) * (100 + 37 * i) for i in range(4)] + [bytes(range(256)) * 300]


class PoolSource:
    """Every payload of the pool, addressable by payload digest and chunk digest."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.manifests: dict[bytes, Manifest] = {}
        self.chunks: dict[bytes, bytes] = {}
        for p in payloads:
            pieces = chunk_bytes(p)
            m = manifest_of(pieces)
            self.manifests[m.digest] = m
            self.chunks.update({chunk_digest(c): c for c in pieces})

    def get_manifest(self, payload_digest: bytes) -> Manifest:
        try:
            return self.manifests[payload_digest]
        except KeyError:
            raise NotFoundError(payload_digest.hex()) from None

    def read_chunk(self, digest: bytes) -> bytes:
        return self.chunks[digest]


SOURCE = PoolSource(PAYLOADS)
# Order-independence is about logic, not disks: run these many small stores on tmpfs when the
# machine has one (real SQLite files and fsync calls, which tmpfs makes cheap).
FAST_TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None

op = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(sorted(MEMBERS)), st.integers(0, len(PAYLOADS) - 1)),
    st.tuples(st.just("erase_own"), st.sampled_from(sorted(MEMBERS)), st.integers(0, 50)),
    st.tuples(st.just("admin_erase"), st.just(""), st.integers(0, 50)),
    st.tuples(st.just("admin_erase_author"), st.sampled_from(sorted(MEMBERS)), st.just(0)),
)


@dataclass
class History:
    memberships: list[Entry]
    entries: list[Entry]
    expected_visible: set[bytes]


def build(ops: list[tuple[str, str, int]]) -> History:
    """Turn an op script into signed entries plus what the visible set must be."""
    fed = Federation(admin=ADMIN)
    memberships = [fed.add_member(n, k) for n, k in MEMBERS.items()]
    entries: list[Entry] = []
    adds: list[Entry] = []
    erased: set[bytes] = set()
    erased_authors: set[bytes] = set()
    for kind, who, n in ops:
        if kind == "add":
            e = fed.contribute(who, PAYLOADS[n])
            adds.append(e)
        elif kind == "erase_own":
            own = [a for a in adds if a.author == MEMBERS[who].key_id]
            if not own:
                continue
            target = own[n % len(own)]
            e = fed.remove(who, [target.id])
            erased.add(target.id)
        elif kind == "admin_erase":
            if not adds:
                continue
            target = adds[n % len(adds)]
            e = fed.remove("admin", [target.id])
            erased.add(target.id)
        else:
            e = fed.remove("admin", target_author=MEMBERS[who].key_id)
            erased_authors.add(MEMBERS[who].key_id)
        entries.append(e)
    visible = {a.id for a in adds if a.id not in erased and a.author not in erased_authors}
    return History(memberships, entries, visible)


def deliver(state: E4State, history: History, order: list[int], dups: list[int]) -> None:
    for m in history.memberships:
        state.apply(m)
    items = [history.entries[i] for i in order]
    for d in dups:
        if items:
            items.insert(d % (len(items) + 1), items[d % len(items)])
    for e in items:
        state.apply(e, SOURCE)


def live_chunks(history: History) -> set[bytes]:
    out: set[bytes] = set()
    for e in history.entries:
        if e.id in history.expected_visible:
            out.update(r.digest for r in SOURCE.get_manifest(e.body.payload_digest).chunks)
    return out


@settings(max_examples=25, deadline=None)
@given(
    ops=st.lists(op, min_size=1, max_size=14),
    seed_a=st.integers(0, 2**32),
    seed_b=st.integers(0, 2**32),
    dups=st.lists(st.integers(0, 100), max_size=6),
)
def test_any_delivery_order_with_duplicates_gives_equal_roots_and_visible_sets(
    ops: list[tuple[str, str, int]], seed_a: int, seed_b: int, dups: list[int]
) -> None:
    history = build(ops)
    n = len(history.entries)
    order_a = list(range(n))
    order_b = list(range(n))
    random.Random(seed_a).shuffle(order_a)
    random.Random(seed_b).shuffle(order_b)
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        a = E4State.open(Path(tmp) / "a", ADMIN.public_keys)
        b = E4State.open(Path(tmp) / "b", ADMIN.public_keys)
        try:
            deliver(a, history, order_a, dups)
            deliver(b, history, order_b, [])
            for s in (a, b):
                assert s.held_ids() == []
                assert {e.id for e in s.visible()} == history.expected_visible
                assert s.merkle_root() == root_from_ids(s.store.all_ids())
                assert set(s.store.iter_chunk_digests()) == live_chunks(history)
            assert a.merkle_root() == b.merkle_root()
            assert a.store.all_ids() == b.store.all_ids()
            assert a.version_vector() == b.version_vector()
        finally:
            a.close()
            b.close()


@settings(max_examples=15, deadline=None)
@given(ops=st.lists(op, min_size=1, max_size=12), split=st.integers(0, 2**32))
def test_join_in_either_direction_converges(ops: list[tuple[str, str, int]], split: int) -> None:
    history = build(ops)
    rng = random.Random(split)
    half_a = [e for e in history.entries if rng.random() < 0.5]
    half_b = [e for e in history.entries if e not in half_a]
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        a = E4State.open(Path(tmp) / "a", ADMIN.public_keys)
        b = E4State.open(Path(tmp) / "b", ADMIN.public_keys)
        try:
            for s, part in ((a, half_a), (b, half_b)):
                for m in history.memberships:
                    s.apply(m)
                for e in part:
                    s.apply(e, SOURCE)
            a.join(b)
            b.join(a)
            assert a.merkle_root() == b.merkle_root()
            assert {e.id for e in a.visible()} == history.expected_visible
            assert {e.id for e in b.visible()} == history.expected_visible
            assert a.held_ids() == b.held_ids() == []
        finally:
            a.close()
            b.close()


def test_entry_arriving_before_its_predecessor_is_held_then_released(tmp_path: Path) -> None:
    history = build([("add", "alice", 0), ("add", "alice", 1), ("add", "alice", 2)])
    s = E4State.open(tmp_path / "n", ADMIN.public_keys)
    for m in history.memberships:
        s.apply(m)
    first, second, third = history.entries
    assert s.apply(third, SOURCE).status is ApplyStatus.HELD
    assert s.apply(second, SOURCE).status is ApplyStatus.HELD
    assert s.visible() == []
    result = s.apply(first, SOURCE)
    assert result.status is ApplyStatus.APPLIED
    assert set(result.released) == {second.id, third.id}
    assert {e.id for e in s.visible()} == {first.id, second.id, third.id}
    assert s.version_vector()[MEMBERS["alice"].key_id] == 3
    assert all(e.kind is Kind.CONTRIBUTION for e in s.visible())
    s.close()


def test_held_entries_survive_a_restart(tmp_path: Path) -> None:
    history = build([("add", "bob", 0), ("add", "bob", 3)])
    s = E4State.open(tmp_path / "n", ADMIN.public_keys)
    for m in history.memberships:
        s.apply(m)
    s.apply(history.entries[1], SOURCE)
    s.close()
    s = E4State.open(tmp_path / "n")
    assert s.held_ids() == [history.entries[1].id]
    s.apply(history.entries[0], SOURCE)
    assert len(s.visible()) == 2
    s.close()


def forged(e: Entry) -> Entry:
    """The same header with a signature that does not verify."""
    bad = bytes(64)
    return Entry.from_parts(e.header_bytes, [[s.scheme, bad] for s in e.signatures])


@settings(max_examples=20, deadline=None)
@given(
    ops=st.lists(op, min_size=1, max_size=14),
    seed=st.integers(0, 2**32),
    cuts=st.lists(st.integers(1, 6), min_size=1, max_size=8),
    forgeries=st.lists(st.integers(0, 100), max_size=3),
)
def test_batches_give_the_same_state_as_one_entry_at_a_time(
    ops: list[tuple[str, str, int]], seed: int, cuts: list[int], forgeries: list[int]
) -> None:
    history = build(ops)
    order = list(range(len(history.entries)))
    random.Random(seed).shuffle(order)
    items = [history.entries[i] for i in order]
    for f in forgeries:  # refused alone, whatever else shares their batch
        if items:
            items.insert(f % (len(items) + 1), forged(items[f % len(items)]))
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        one = E4State.open(Path(tmp) / "one", ADMIN.public_keys)
        one.bulk = False  # the reference: every entry the one-at-a-time way
        many = E4State.open(Path(tmp) / "many", ADMIN.public_keys)
        try:
            for m in history.memberships:
                one.apply(m)
                many.apply(m)
            singly = []
            for e in items:
                try:
                    singly.append(one.apply(e, SOURCE).status)
                except ValidationError as exc:
                    singly.append(type(exc))
            batched = []
            start, k = 0, 0
            while start < len(items):
                step = cuts[k % len(cuts)]
                for r in many.apply_many(items[start : start + step], SOURCE):
                    batched.append(type(r) if isinstance(r, ValidationError) else r.status)
                start, k = start + step, k + 1
            assert batched == singly
            assert many.merkle_root() == one.merkle_root()
            assert many.merkle_root() == root_from_ids(many.store.all_ids())
            assert {e.id for e in many.visible()} == {e.id for e in one.visible()}
            assert many.version_vector() == one.version_vector()
            assert many.held_ids() == one.held_ids()
            assert set(many.store.iter_chunk_digests()) == set(one.store.iter_chunk_digests())
            # the counts a status call reads stay those of the entries, batched or not
            assert many.store.counts() == one.store.counts() == many.store.count_all()
        finally:
            one.close()
            many.close()
