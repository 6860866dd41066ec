"""The entry counts a status call reads (`NodeStore.counts`, kept by every write) always equal
a count of every entry, whatever arrives in whatever order, one at a time or in batches; a
store written before the counts existed gets them on its owner's first open."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.crypto.keys import NodeKey
from crdtd.errors import ValidationError
from crdtd.state import E4State
from crdtd.state.entry import Entry, Kind
from crdtd.state.testing import Federation
from crdtd.store import sqlite as db
from crdtd.store.store import DB_NAME, NodeStore
from tests.test_state_convergence import FAST_TMP, PAYLOADS, SOURCE

ADMIN = NodeKey.generate()
MEMBERS = {name: NodeKey.generate() for name in ("alice", "bob")}
ROUNDS = "model/rounds"  # latest-only: a newer contribution supersedes the author's older ones
PLAIN = "test/ns"

op = st.one_of(
    st.tuples(
        st.just("add"),
        st.sampled_from(sorted(MEMBERS)),
        st.integers(0, len(PAYLOADS) - 1),
        st.sampled_from([PLAIN, ROUNDS]),
    ),
    st.tuples(
        st.just("erase_own"), st.sampled_from(sorted(MEMBERS)), st.integers(0, 50), st.just("")
    ),
    st.tuples(st.just("admin_erase"), st.just(""), st.integers(0, 50), st.just("")),
    st.tuples(st.just("erase_author"), st.sampled_from(sorted(MEMBERS)), st.just(0), st.just("")),
    st.tuples(st.just("revoke"), st.sampled_from(sorted(MEMBERS)), st.just(0), st.just("")),
)


def latest_only(namespace: str) -> bool:
    return namespace == ROUNDS


def history(ops: list[tuple[str, str, int, str]]) -> tuple[list[Entry], list[Entry]]:
    """Memberships, then the signed entries the op script makes."""
    fed = Federation(admin=ADMIN)
    members = [fed.add_member(n, k) for n, k in MEMBERS.items()]
    out: list[Entry] = []
    adds: list[Entry] = []
    rounds = 0
    for kind, who, n, ns in ops:
        if kind == "add":
            rounds += 1
            meta = {"round": rounds} if ns == ROUNDS else {}
            e = fed.contribute(who, PAYLOADS[n], ns, metadata=meta)
            adds.append(e)
        elif kind == "erase_own":
            own = [a for a in adds if a.author == MEMBERS[who].key_id]
            if not own:
                continue
            e = fed.remove(who, [own[n % len(own)].id])
        elif kind == "admin_erase":
            if not adds:
                continue
            e = fed.remove("admin", [adds[n % len(adds)].id])
        elif kind == "erase_author":
            e = fed.remove("admin", target_author=MEMBERS[who].key_id)
        else:
            e = fed.revoke("admin", MEMBERS[who].key_id)
        out.append(e)
    return members, out


def assert_counts_exact(state: E4State) -> None:
    kept = state.store.counts()
    assert kept == state.store.count_all()
    held = sum(n for (_, status, _), (n, _) in kept.items() if status == db.HELD)
    assert held == len(state.held_ids())
    visible = state.visible()
    live = {
        ns: counts
        for (kind, status, ns), counts in kept.items()
        if kind == Kind.CONTRIBUTION and status == db.LIVE
    }
    assert sum(n for n, _ in live.values()) == len(visible)
    assert sum(b for _, b in live.values()) == sum(e.body.payload_size for e in visible)  # type: ignore[union-attr]


@settings(max_examples=25, deadline=None)
@given(
    ops=st.lists(op, min_size=1, max_size=16),
    seed=st.integers(0, 2**32),
    cuts=st.lists(st.integers(0, 5), min_size=1, max_size=6),
)
def test_kept_counts_equal_a_full_recount_after_any_arrivals(
    ops: list[tuple[str, str, int, str]], seed: int, cuts: list[int]
) -> None:
    members, entries = history(ops)
    order = list(entries)
    random.Random(seed).shuffle(order)  # out of order: some entries wait for predecessors
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        state = E4State.open(Path(tmp) / "s", ADMIN.public_keys, latest_only=latest_only)
        try:
            for m in members:
                state.apply(m)
            start, k = 0, 0
            while start < len(order):
                step = cuts[k % len(cuts)]
                if step == 0:  # one at a time
                    with contextlib.suppress(ValidationError):
                        state.apply(order[start], SOURCE)
                    start += 1
                else:
                    state.apply_many(order[start : start + step], SOURCE)
                    start += step
                k += 1
                assert_counts_exact(state)
        finally:
            state.close()
        # the counts are kept on disk: a reopened store reads the same without recounting
        with NodeStore.open(Path(tmp) / "s") as store:
            assert store.counts() == store.count_all()


def downgrade_to_schema_2(data_dir: Path) -> None:
    """Make the store what the previous schema left: no entry_counts table, user_version 2."""
    conn = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    conn.execute("DROP TABLE entry_counts")
    conn.execute("DELETE FROM meta WHERE key = 'entry_counts'")
    conn.execute("PRAGMA user_version = 2")
    conn.close()


def test_a_store_written_by_the_previous_schema_opens_with_exact_counts(tmp_path: Path) -> None:
    members, entries = history(
        [
            ("add", "alice", 0, PLAIN),
            ("add", "bob", 1, ROUNDS),
            ("add", "bob", 2, ROUNDS),
            ("admin_erase", "", 0, ""),
            ("add", "alice", 3, PLAIN),
            ("add", "alice", 4, PLAIN),
        ]
    )
    data = tmp_path / "node"
    state = E4State.open(data, ADMIN.public_keys, latest_only=latest_only)
    for m in members:
        state.apply(m)
    for e in entries[:-2]:
        state.apply(e, SOURCE)
    state.apply(entries[-1], SOURCE)  # its predecessor (alice's second) is missing: held
    assert state.held_ids() == [entries[-1].id]
    expected = state.store.count_all()
    state.close()
    assert {status for _, status, _ in expected} >= {db.LIVE, db.TOMBSTONED, db.HELD, db.SUPERSEDED}
    downgrade_to_schema_2(data)

    with NodeStore.open(data, maintenance=False) as reader:  # fsck beside a daemon
        assert reader.counts() == expected  # counted from the entries, nothing written
        assert reader.get_meta("entry_counts") is None
    state = E4State.open(data, ADMIN.public_keys, latest_only=latest_only)
    try:
        assert state.store.get_meta("entry_counts") is not None  # filled by the owner's open
        assert state.store.counts() == expected
        state.apply(entries[-2], SOURCE)  # releases the held entry
        assert state.held_ids() == []
        assert_counts_exact(state)
    finally:
        state.close()
    conn = sqlite3.connect(data / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    conn.close()
