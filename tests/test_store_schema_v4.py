"""Schema 4 drops the two indexes contributions paid for and nothing needed (payload_chunks by
payload, entries by kind for contributions): a store of schema 3 migrates on open, an
erasure still frees exactly the erased payload's chunks (read from its manifest), and
queries for the rarer kinds still use an index."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from crdtd.crypto.keys import NodeKey
from crdtd.state import E4State
from crdtd.state.entry import Kind
from crdtd.state.testing import Federation
from crdtd.store import sqlite as db
from crdtd.store.fsck import fsck
from crdtd.store.store import DB_NAME
from tests.test_state_convergence import PAYLOADS, SOURCE

ADMIN = NodeKey.generate()
ALICE = NodeKey.generate()


def downgrade_to_schema_3(data_dir: Path) -> None:
    """Make the store what schema 3 left: both indexes back, user_version 3."""
    conn = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    conn.execute("DROP INDEX entries_other_kinds")
    conn.execute("CREATE INDEX entries_kind ON entries (kind)")
    conn.execute("CREATE INDEX payload_chunks_payload ON payload_chunks (payload)")
    conn.execute("PRAGMA user_version = 3")
    conn.close()


def indexes(data_dir: Path) -> set[str]:
    conn = sqlite3.connect(data_dir / DB_NAME)
    try:
        rows = conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index'").fetchall()
        return {r[0] for r in rows if not r[0].startswith("sqlite_autoindex")}
    finally:
        conn.close()


def test_a_schema_3_store_migrates_and_erasure_still_frees_exactly_its_chunks(
    tmp_path: Path,
) -> None:
    fed = Federation(admin=ADMIN)
    member = fed.add_member("alice", ALICE)
    kept, erased = (fed.contribute("alice", PAYLOADS[i], "test/ns") for i in (1, 4))
    data = tmp_path / "node"
    state = E4State.open(data, ADMIN.public_keys)
    state.apply(member)
    state.apply(kept, SOURCE)
    state.apply(erased, SOURCE)
    state.close()
    downgrade_to_schema_3(data)
    assert {"entries_kind", "payload_chunks_payload"} <= indexes(data)

    state = E4State.open(data)
    try:
        assert state.store.conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
        assert not {"entries_kind", "payload_chunks_payload"} & indexes(data)
        assert "entries_other_kinds" in indexes(data)
        gone = state.store.get_manifest(erased.body.payload_digest).chunks  # type: ignore[union-attr]
        state.apply(fed.remove("admin", [erased.id]))
        assert [e.id for e in state.visible()] == [kept.id]
        assert state.store.missing_chunks([c.digest for c in gone]) == [c.digest for c in gone]
        assert state.store.read_payload(kept.body.payload_digest) == PAYLOADS[1]  # type: ignore[union-attr]
        rows = state.store.conn.execute("SELECT payload FROM payload_chunks").fetchall()
        assert {bytes(r[0]) for r in rows} == {kept.body.payload_digest}  # type: ignore[union-attr]
        assert [e.id for e, _ in state.store.iter_entries(Kind.MEMBERSHIP)] == [member.id]
    finally:
        state.close()
    assert fsck(data).ok


def test_queries_for_the_rarer_kinds_use_an_index(tmp_path: Path) -> None:
    state = E4State.open(tmp_path / "node", ADMIN.public_keys)
    try:
        plan = state.store.conn.execute(
            f"EXPLAIN QUERY PLAN SELECT raw, status FROM entries WHERE kind = ? AND status = ? "
            f"AND {db.ENTRIES_OTHER_KINDS} ORDER BY id",
            (int(Kind.EVIDENCE), db.LIVE),
        ).fetchall()
        assert any("entries_other_kinds" in str(row) for row in plan), plan
    finally:
        state.close()
