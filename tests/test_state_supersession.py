"""Latest-only namespaces: an author's newer contribution supersedes its older ones, in any
arrival order, without removal entries; superseded bytes are reclaimed two generations back,
and a superseded contribution travels without its payload."""

from __future__ import annotations

import contextlib
import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.crypto.keys import NodeKey
from crdtd.errors import ValidationError
from crdtd.state import E4State
from crdtd.state.entry import Entry
from crdtd.state.testing import Federation
from crdtd.store import sqlite as db
from crdtd.store.chunks import chunk_bytes, manifest_of
from tests.test_state_convergence import FAST_TMP, SOURCE, PoolSource

ADMIN = NodeKey.generate()
MEMBERS = {name: NodeKey.generate() for name in ("alice", "bob")}
ROUNDS = "model/rounds"
PAYLOADS = [bytes([40 + i]) * (200 + 13 * i) for i in range(8)]
POOL = PoolSource(PAYLOADS)


def latest_only(namespace: str) -> bool:
    return namespace == ROUNDS


def history(per_author: int, with_global: bool = False) -> tuple[list[Entry], list[Entry]]:
    """Memberships, then each author's `per_author` contributions to the rounds namespace
    (and one to an ordinary namespace); optionally a global-role entry by alice."""
    fed = Federation(admin=ADMIN)
    members = [fed.add_member(n, k) for n, k in MEMBERS.items()]
    out = []
    for r in range(per_author):
        for i, who in enumerate(sorted(MEMBERS)):
            p = PAYLOADS[(2 * r + i) % len(PAYLOADS)]
            out.append(fed.contribute(who, p, ROUNDS, metadata={"round": r + 1}))
    out.append(fed.contribute("bob", PAYLOADS[6], "test/ns"))
    if with_global:
        out.append(fed.contribute("alice", PAYLOADS[7], ROUNDS, metadata={"role": "global"}))
    return members, out


def open_state(path: Path) -> E4State:
    return E4State.open(path, ADMIN.public_keys, latest_only=latest_only)


def deliver(state: E4State, members: list[Entry], entries: list[Entry]) -> None:
    for m in members:
        state.apply(m)
    todo = list(entries)
    while todo:
        left = []
        for e in todo:
            try:
                state.apply(e, POOL)
            except ValidationError:
                left.append(e)
        if len(left) == len(todo):
            break
        todo = left


def newest(entries: list[Entry]) -> set[bytes]:
    best: dict[tuple[bytes, str, object], Entry] = {}
    for e in entries:
        key = (e.author, e.body.namespace, e.body.metadata.get("role", ""))  # type: ignore[union-attr]
        if e.body.namespace != ROUNDS or key not in best or e.seq > best[key].seq:  # type: ignore[union-attr]
            best[key if e.body.namespace == ROUNDS else (e.id, "", "")] = e  # type: ignore[union-attr]
    return {e.id for e in best.values()}


@settings(max_examples=20, deadline=None)
@given(rounds=st.integers(1, 4), seed=st.integers(0, 2**32), with_global=st.booleans())
def test_any_arrival_order_leaves_each_authors_newest_contribution_visible(
    rounds: int, seed: int, with_global: bool
) -> None:
    members, entries = history(rounds, with_global)
    shuffled = list(entries)
    random.Random(seed).shuffle(shuffled)
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        a, b = open_state(Path(tmp) / "a"), open_state(Path(tmp) / "b")
        try:
            deliver(a, members, entries)
            deliver(b, members, shuffled)
            assert a.merkle_root() == b.merkle_root()
            assert {e.id for e in a.visible()} == {e.id for e in b.visible()} == newest(entries)
            assert a.held_ids() == b.held_ids() == []
            assert a.store.counts() == b.store.counts() == b.store.count_all()
            with a.store.reading() as c:
                removals = c.execute("SELECT COUNT(*) FROM entries WHERE kind = 2").fetchone()[0]
            assert removals == 0  # no tombstones pile up: nothing was erased
        finally:
            a.close()
            b.close()


def test_superseded_bytes_are_kept_one_generation_and_reclaimed_two_back(tmp_path: Path) -> None:
    members, entries = history(3)
    alice = MEMBERS["alice"].key_id
    mine = [e for e in entries if e.author == alice]
    state = open_state(tmp_path / "s")
    try:
        deliver(state, members, entries)
        status = [state.store.entry_status(e.id) for e in mine]
        assert status == [db.RETIRED, db.SUPERSEDED, db.LIVE]
        held = {
            e.body.payload_digest for e in mine if state.store.has_manifest(e.body.payload_digest)
        }  # type: ignore[union-attr]
        assert held == {mine[1].body.payload_digest, mine[2].body.payload_digest}  # type: ignore[union-attr]
    finally:
        state.close()


def test_a_node_that_reclaimed_bytes_can_still_relay_the_superseded_header(
    tmp_path: Path,
) -> None:
    """A fresh replica takes a superseded contribution without its payload (it cannot come:
    the relaying node reclaimed it), so relays never stall on reclaimed bytes."""
    members, entries = history(3)
    src = open_state(tmp_path / "src")
    dst = open_state(tmp_path / "dst")
    try:
        deliver(src, members, entries)
        deliver(dst, members, [])
        newest_first = sorted(entries, key=lambda e: -e.seq)
        for e in newest_first:  # what a peer offers, the newest of each line first
            with contextlib.suppress(ValidationError):
                dst.apply(e, src.store)
        dst.join(src)
        assert dst.merkle_root() == src.merkle_root()
        assert {e.id for e in dst.visible()} == {e.id for e in src.visible()}
    finally:
        src.close()
        dst.close()


def test_an_ordinary_namespace_keeps_every_contribution(tmp_path: Path) -> None:
    fed = Federation(admin=ADMIN)
    members = [fed.add_member(n, k) for n, k in MEMBERS.items()]
    entries = [fed.contribute("alice", p, "test/ns") for p in PAYLOADS[:3]]
    state = open_state(tmp_path / "s")
    try:
        deliver(state, members, entries)
        assert {e.id for e in state.visible()} == {e.id for e in entries}
    finally:
        state.close()


def test_erasing_a_superseded_contribution_drops_its_kept_bytes(tmp_path: Path) -> None:
    fed = Federation(admin=ADMIN)
    members = [fed.add_member(n, k) for n, k in MEMBERS.items()]
    first = fed.contribute("alice", PAYLOADS[1], ROUNDS)
    second = fed.contribute("alice", PAYLOADS[2], ROUNDS)
    erase = fed.remove("alice", [first.id])
    state = open_state(tmp_path / "s")
    try:
        deliver(state, members, [first, second])
        assert state.store.entry_status(first.id) == db.SUPERSEDED
        state.apply(erase)
        assert state.store.entry_status(first.id) == db.TOMBSTONED
        assert not state.store.has_manifest(manifest_of(chunk_bytes(PAYLOADS[1])).digest)
    finally:
        state.close()


assert SOURCE is not None  # the shared pool module loads (keeps imports honest)
