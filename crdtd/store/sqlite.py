"""The SQLite file behind a node store: connection settings, schema and migrations.

WAL journal with `synchronous=FULL`, so a commit that returns is on disk (it survives kill -9
and power loss); transactions are explicit (`BEGIN IMMEDIATE` … `COMMIT`); `secure_delete`
zeroes deleted rows so erased payload bytes do not linger in free pages. Migrations are an
ordered list of SQL scripts; `user_version` records how many have run.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from crdtd.errors import StorageError
from crdtd.store.merkle import MerkleIndex

# Entry status values (entries.status).
LIVE = 0
TOMBSTONED = 1
QUARANTINED = 2
SUPERSEDED = 3  # a latest-only namespace holds a newer contribution of the author; bytes kept
RETIRED = 4  # superseded, and its payload reclaimed (or never stored)
HELD = -1  # entry_counts only: entries waiting for their predecessor (the pending table)

_V1 = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE entries (
    id BLOB PRIMARY KEY,
    author BLOB NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    prev BLOB,
    namespace TEXT,
    payload_digest BLOB,
    status INTEGER NOT NULL,
    raw BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX entries_author_seq ON entries (author, seq);
CREATE INDEX entries_payload ON entries (payload_digest) WHERE payload_digest IS NOT NULL;
CREATE INDEX entries_namespace ON entries (namespace, status) WHERE namespace IS NOT NULL;
CREATE INDEX entries_kind ON entries (kind);
{MerkleIndex.schema("merkle_nodes")};
CREATE TABLE payloads (digest BLOB PRIMARY KEY, size INTEGER NOT NULL, manifest BLOB NOT NULL)
    WITHOUT ROWID;
CREATE TABLE payload_chunks (chunk BLOB NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY (chunk, payload)) WITHOUT ROWID;
CREATE INDEX payload_chunks_payload ON payload_chunks (payload);
CREATE TABLE clock (author BLOB PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE pending (
    id BLOB PRIMARY KEY,
    author BLOB NOT NULL,
    seq INTEGER NOT NULL,
    prev BLOB NOT NULL,
    payload_digest BLOB,
    raw BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX pending_prev ON pending (prev);
CREATE INDEX pending_author_seq ON pending (author, seq);
CREATE TABLE removal_targets (target BLOB NOT NULL, removal BLOB NOT NULL, remover BLOB NOT NULL,
    PRIMARY KEY (target, removal)) WITHOUT ROWID;
CREATE TABLE author_removals (target_author BLOB NOT NULL, removal BLOB NOT NULL,
    PRIMARY KEY (target_author, removal)) WITHOUT ROWID;
CREATE TABLE members (key_id BLOB NOT NULL, entry BLOB NOT NULL, ed25519 BLOB NOT NULL,
    ml_dsa_65 BLOB, name TEXT NOT NULL, PRIMARY KEY (key_id, entry)) WITHOUT ROWID;
CREATE TABLE revocations (revoked BLOB NOT NULL, entry BLOB NOT NULL, cutoff INTEGER NOT NULL,
    PRIMARY KEY (revoked, entry)) WITHOUT ROWID;
CREATE TABLE equivocations (author BLOB NOT NULL, seq INTEGER NOT NULL, a BLOB NOT NULL,
    b BLOB NOT NULL, proof BLOB NOT NULL, PRIMARY KEY (author, seq, a, b)) WITHOUT ROWID;
"""

# Chunks up to INLINE_MAX bytes live in SQLite: one WAL commit makes them durable, where a file
# would cost a file fsync and a directory fsync (small records, safetensors headers, biases).
_V2 = """
CREATE TABLE small_chunks (digest BLOB NOT NULL UNIQUE, data BLOB NOT NULL);
"""

# How many entries (and declared payload bytes) each (kind, status, namespace) holds, kept by
# NodeStore on every insert, delete and status change (and HELD for the pending table), so a
# status call reads a few rows instead of decoding every entry. Filled on the owner's first
# open after this migration (NodeStore.recount, meta key "entry_counts").
_V3 = """
CREATE TABLE entry_counts (kind INTEGER NOT NULL, status INTEGER NOT NULL,
    namespace TEXT NOT NULL, entries INTEGER NOT NULL, payload_bytes INTEGER NOT NULL,
    PRIMARY KEY (kind, status, namespace)) WITHOUT ROWID;
"""

# Two indexes every contribution paid for and nothing needed (each a B-tree keyed by hashes, so
# every insert dirtied a random page of it; a catch-up's commits write ~10 such trees):
# payload_chunks by payload (a payload's chunks are read from its manifest when it is
# released) and entries by kind for contributions (a query for them reads the table in id
# order anyway). The rarer kinds keep theirs: a query names them with ENTRIES_OTHER_KINDS.
_V4 = """
DROP INDEX IF EXISTS payload_chunks_payload;
DROP INDEX IF EXISTS entries_kind;
CREATE INDEX IF NOT EXISTS entries_other_kinds ON entries (kind) WHERE kind <> 1;
"""

ENTRIES_OTHER_KINDS = "kind <> 1"
"""The term that lets a query for non-contribution kinds use `entries_other_kinds` (SQLite
uses a partial index only when the query repeats its WHERE term); 1 is Kind.CONTRIBUTION."""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4)
"""Migration i (0-based) takes the schema from user_version i to i + 1."""

SCHEMA_VERSION = len(MIGRATIONS)


CACHE_KIB = 64 * 1024
"""Page cache per connection (SQLite's default is 2 MiB): entries, payloads, chunks and Merkle
nodes are keyed by hashes, so every insert lands on a random page of each B-tree, and with
2 MiB a catch-up of 40,000 entries reread most of them from the OS (192 -> 166 us of CPU per
entry applied with 64 MiB, and 1.4x the entries/s)."""


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the store database."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"{path}: cannot open store database ({exc})") from None
    if str(mode).lower() != "wal":
        raise StorageError(f"{path}: could not enable WAL journal (got {mode})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=ON")  # erased inline chunks are zeroed, not just unlinked
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    migrate(conn, path)
    return conn


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Run every migration newer than the file's user_version, each in its own transaction."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{path}: schema version {version} is newer than this crdtd ({SCHEMA_VERSION})"
        )
    for i in range(version, SCHEMA_VERSION):
        try:
            conn.execute("BEGIN IMMEDIATE")
            for stmt in MIGRATIONS[i].split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={i + 1}")
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            conn.execute("ROLLBACK")
            raise StorageError(f"{path}: migration {i + 1} failed ({exc})") from None


class Checkpointer:
    """Copies committed WAL frames into the database file in a thread of its own.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses 1,000 WAL pages, so the
    writer waited for every page of a batch to be written a second time and the database file
    fsynced. The owner of a store turns that off (`wal_autocheckpoint=0`) and nudges this
    thread after each commit instead: it runs a PASSIVE checkpoint on its own connection, which
    WAL mode lets proceed beside the writer and readers. Durability is unchanged (a commit is
    durable once its WAL frames are fsynced); a crash mid-checkpoint is recovered by SQLite.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.busy = threading.Lock()
        """Held while a checkpoint runs: a writer that must checkpoint itself (TRUNCATE after
        an erasure) takes it, so the two never race."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """A commit added WAL frames."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=1000")
            while not self._stop.is_set():
                self._wake.wait(timeout=5.0)
                self._wake.clear()
                try:
                    with self.busy:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    continue  # busy or interrupted: the next nudge tries again
        finally:
            conn.close()
