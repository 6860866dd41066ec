"""NodeStore: entries, manifests, the Merkle cache and the version vector in SQLite, chunks on disk.

The store does not judge entries; `crdtd.state.E4State` validates and then writes through
`transaction()`. Every write transaction updates the Merkle nodes above the ids it touched and
fsyncs the chunk directories it renamed into before its COMMIT, so what a commit acknowledges
is complete on disk.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from crdtd.errors import (
    CorruptionError,
    DigestMismatchError,
    MalformedManifestError,
    NotFoundError,
    StorageError,
    echo,
)
from crdtd.state.entry import Entry, Kind
from crdtd.store import sqlite as db
from crdtd.store.chunks import (
    ChunkDir,
    ChunkRef,
    Manifest,
    chunk_bytes,
    chunk_digest,
    chunk_file,
)
from crdtd.store.merkle import MerkleIndex

DB_NAME = "store.sqlite"
CHUNK_DIR = "chunks"
JOURNAL_IDS = 200_000
"""Ids the in-memory change journal remembers (older changes: readers rebuild instead)."""
WAL_LIMIT = 256 * 1024 * 1024
"""WAL bytes past which a commit checkpoints itself (normally a background thread does)."""
INLINE_MAX = 64 * 1024
"""Chunks up to this many bytes are stored inside SQLite rather than as files."""


_PART = 500
"""Ids per `IN (...)` query (SQLite allows 32,766 parameters; smaller keeps locks short)."""


def _parts(items: Sequence[bytes]) -> list[Sequence[bytes]]:
    return [items[i : i + _PART] for i in range(0, len(items), _PART)]


def _marks(part: Sequence[bytes]) -> str:
    return ",".join("?" * len(part))


def _count_key(entry: Entry, status: int) -> tuple[tuple[int, int, str], int]:
    """Where an entry is counted, and the payload bytes it declares."""
    if entry.kind is Kind.CONTRIBUTION:
        body = entry.as_contribution()
        return (int(entry.kind), status, body.namespace), body.payload_size
    return (int(entry.kind), status, ""), 0


class PayloadSource(Protocol):
    """Where apply fetches a payload it does not hold: a manifest and its chunks."""

    def get_manifest(self, payload_digest: bytes) -> Manifest: ...

    def read_chunk(self, digest: bytes) -> bytes: ...


class NodeStore:
    """One node's durable state directory: `store.sqlite` plus `chunks/`."""

    def __init__(self, data_dir: Path, conn: sqlite3.Connection, chunks: ChunkDir) -> None:
        self.data_dir = data_dir
        self.conn = conn
        self.chunks = chunks
        self.merkle = MerkleIndex(conn)
        self._lock = threading.RLock()
        self._depth = 0
        self._owner = 0
        self._changed: set[bytes] = set()
        self._generation = 0
        self._journal: deque[tuple[int, tuple[bytes, ...]]] = deque()
        self._journal_floor = 0
        self._journal_ids = 0
        self._clock_dirty: dict[bytes, bool] = {}
        """Authors whose clock the transaction must advance (False) or recompute (True)."""
        self._after_commit: list[bytes] = []
        self._erased_inline = False
        self._closed = False
        self._checkpointer: db.Checkpointer | None = None
        self.namespace_key: Callable[[bytes], bytes] | None = None
        """Finds the key of a sealed payload by its id (set by the daemon, which holds the
        encrypted namespaces' keys); None: this store's owner reads no sealed payload."""

    @classmethod
    def open(cls, data_dir: Path | str, maintenance: bool = True) -> NodeStore:
        """Open or create the store in `data_dir`.

        With `maintenance` (the owner's open) it also clears stale temp files and finishes any
        chunk deletion a crash cut short; fsck opens without it, beside a running daemon.
        """
        d = Path(data_dir)
        d.mkdir(parents=True, exist_ok=True)
        store = cls(d, db.connect(d / DB_NAME), ChunkDir(d / CHUNK_DIR, clean_tmp=maintenance))
        if maintenance:
            store.conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints off the commit path
            store._checkpointer = db.Checkpointer(d / DB_NAME)
            store._finish_gc()
            if store.get_meta("entry_counts") is None:
                store.recount()
        return store

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                if self._checkpointer is not None:
                    self._checkpointer.close()
                self.conn.close()
                self._closed = True

    def __enter__(self) -> NodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions --------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable write; nested calls join the outer transaction."""
        with self._lock:
            if self._closed:
                raise StorageError(f"{self.data_dir}: store is closed")
            outer = self._depth == 0
            if outer:
                self.conn.execute("BEGIN IMMEDIATE")
                self._owner = threading.get_ident()
                self._changed.clear()
                self._clock_dirty.clear()
                self._after_commit.clear()
            self._depth += 1
            try:
                yield self.conn
                if outer:
                    self._settle_clocks()
                    self.merkle.update(self._changed)
                    self.chunks.flush()
                    self.conn.execute("COMMIT")
                    self._remember(self._changed)
                    if self._checkpointer is not None:
                        self._checkpointer.nudge()
                        self._bound_wal()
            except BaseException:
                if outer:
                    self.conn.execute("ROLLBACK")
                    self.merkle.forget()
                    self.chunks.discard()
                    self._after_commit.clear()
                    self._erased_inline = False
                raise
            finally:
                self._depth -= 1
                if outer:
                    self._changed.clear()
            if outer and self._after_commit:
                self._finish_gc()
            if outer and self._erased_inline:
                self._erased_inline = False
                # move the zeroed pages into the database file and empty the WAL, so the
                # erased bytes survive in neither
                self._checkpoint("TRUNCATE")

    def _bound_wal(self) -> None:
        """Checkpoint here when the background checkpointer has fallen far behind."""
        try:
            size = os.path.getsize(self.data_dir / (DB_NAME + "-wal"))
        except OSError:
            return
        if size > WAL_LIMIT:
            self._checkpoint("PASSIVE")

    def _checkpoint(self, mode: str) -> None:
        """A checkpoint on the writer's connection, never beside the background one."""
        if self._checkpointer is None:
            self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
            return
        with self._checkpointer.busy:
            self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    def _remember(self, changed: set[bytes]) -> None:
        """Journal the ids a committed transaction inserted or deleted (bounded; in memory)."""
        if not changed:
            return
        self._generation += 1
        self._journal.append((self._generation, tuple(changed)))
        self._journal_ids += len(changed)
        while len(self._journal) > 1 and self._journal_ids > JOURNAL_IDS:
            floor, ids = self._journal.popleft()
            self._journal_ids -= len(ids)
            self._journal_floor = floor

    @property
    def generation(self) -> int:
        """How many committed transactions changed the id set since this store was opened."""
        return self._generation

    def changes_since(self, generation: int) -> tuple[int, set[bytes]] | None:
        """(current generation, ids inserted or deleted after `generation`), or None when the
        journal no longer reaches back that far. Read it inside `reading()` to pair it with
        the root and the rows of the same moment."""
        with self._lock:
            if generation < self._journal_floor:
                return None
            ids: set[bytes] = set()
            for g, part in self._journal:
                if g > generation:
                    ids.update(part)
            return self._generation, ids

    def held_among(self, ids: Sequence[bytes]) -> set[bytes]:
        """Those of `ids` waiting for their predecessor (pending, not in the set)."""
        if not self._q("SELECT 1 FROM pending LIMIT 1"):
            return set()
        out: set[bytes] = set()
        for part in _parts(ids):
            sql = f"SELECT id FROM pending WHERE id IN ({_marks(part)})"
            out.update(bytes(r[0]) for r in self._q(sql, tuple(part)))
        return out

    def present(self, ids: Sequence[bytes]) -> set[bytes]:
        """Those of `ids` held in the set (entries table)."""
        out: set[bytes] = set()
        for part in _parts(ids):
            sql = f"SELECT id FROM entries WHERE id IN ({_marks(part)})"
            out.update(bytes(r[0]) for r in self._q(sql, tuple(part)))
        return out

    def links(self, ids: Sequence[bytes]) -> dict[bytes, tuple[bytes, int]]:
        """id -> (author, seq) for those of `ids` held in the set."""
        out: dict[bytes, tuple[bytes, int]] = {}
        for part in _parts(ids):
            sql = f"SELECT id, author, seq FROM entries WHERE id IN ({_marks(part)})"
            out.update((bytes(i), (bytes(a), int(s))) for i, a, s in self._q(sql, tuple(part)))
        return out

    def chain_keys(self, ids: Sequence[bytes]) -> dict[bytes, tuple[int, bytes, int]]:
        """id -> (kind, author, seq) for those of `ids` held in the set."""
        out: dict[bytes, tuple[int, bytes, int]] = {}
        for part in _parts(ids):
            sql = f"SELECT id, kind, author, seq FROM entries WHERE id IN ({_marks(part)})"
            for i, k, a, s in self._q(sql, tuple(part)):
                out[bytes(i)] = (int(k), bytes(a), int(s))
        return out

    def ids_at(self, author: bytes, lo: int, hi: int) -> dict[int, list[bytes]]:
        """seq -> ids of `author`'s entries in the set with lo <= seq <= hi."""
        out: dict[int, list[bytes]] = {}
        sql = "SELECT seq, id FROM entries WHERE author = ? AND seq BETWEEN ? AND ?"
        for seq, i in self._q(sql, (author, lo, hi)):
            out.setdefault(int(seq), []).append(bytes(i))
        return out

    def small_chunks_among(self, digests: Sequence[bytes]) -> set[bytes]:
        """Those of `digests` stored inline (in SQLite)."""
        out: set[bytes] = set()
        for part in _parts(digests):
            sql = f"SELECT digest FROM small_chunks WHERE digest IN ({_marks(part)})"
            out.update(bytes(r[0]) for r in self._q(sql, tuple(part)))
        return out

    def _in_transaction(self) -> bool:
        """True when the calling thread is inside `transaction()`."""
        return self._depth > 0 and self._owner == threading.get_ident()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Serialise a multi-statement read with writers (one connection, one lock)."""
        with self._lock:
            if self._closed:
                raise StorageError(f"{self.data_dir}: store is closed")
            yield self.conn

    def _q(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple]:  # type: ignore[type-arg]
        with self.reading() as c:
            return c.execute(sql, args).fetchall()

    # -- Merkle (what sync asks for) -----------------------------------------------------

    def merkle_root(self) -> bytes:
        with self.reading():
            return self.merkle.root()

    def merkle_children(self, prefix: bytes) -> list[bytes]:
        with self.reading():
            return self.merkle.children(prefix)

    def ids_under(self, prefix: bytes) -> list[bytes]:
        with self.reading():
            return self.merkle.ids_under(prefix)

    def count_under(self, prefix: bytes) -> int:
        with self.reading():
            return self.merkle.count_under(prefix)

    # -- entries -------------------------------------------------------------------------

    def has_entry(self, entry_id: bytes) -> bool:
        return bool(self._q("SELECT 1 FROM entries WHERE id = ?", (entry_id,)))

    def get_entry(self, entry_id: bytes) -> Entry:
        rows = self._q("SELECT raw FROM entries WHERE id = ?", (entry_id,))
        if not rows:
            raise NotFoundError(f"entry {echo(entry_id)} is not in the store")
        return Entry.from_bytes(bytes(rows[0][0]))

    def get_entry_bytes(self, entry_id: bytes) -> bytes:
        """The entry's wire bytes (what sync sends) without decoding them."""
        rows = self._q("SELECT raw FROM entries WHERE id = ?", (entry_id,))
        if not rows:
            raise NotFoundError(f"entry {echo(entry_id)} is not in the store")
        return bytes(rows[0][0])

    def entries_raw(self, ids: Sequence[bytes]) -> dict[bytes, tuple[bytes, bytes | None]]:
        """id -> (wire bytes, payload digest or None) for the ids held, in few queries (what
        sync serves: no decoding)."""
        out: dict[bytes, tuple[bytes, bytes | None]] = {}
        for part in _parts(ids):
            sql = f"SELECT id, raw, payload_digest FROM entries WHERE id IN ({_marks(part)})"
            for eid, raw, digest in self._q(sql, tuple(part)):
                out[bytes(eid)] = (bytes(raw), None if digest is None else bytes(digest))
        return out

    def manifests_raw(self, digests: Sequence[bytes]) -> dict[bytes, tuple[bytes, int]]:
        """payload digest -> (manifest bytes, payload size) for the payloads held."""
        out: dict[bytes, tuple[bytes, int]] = {}
        for part in _parts(digests):
            sql = f"SELECT digest, manifest, size FROM payloads WHERE digest IN ({_marks(part)})"
            for digest, manifest, size in self._q(sql, tuple(part)):
                out[bytes(digest)] = (bytes(manifest), int(size))
        return out

    def inline_chunks(self, digests: Sequence[bytes]) -> dict[bytes, bytes]:
        """digest -> bytes of the inline (small) chunks held that still hash to their digest
        (a corrupt one is left out: `read_chunk` and fsck report it)."""
        out: dict[bytes, bytes] = {}
        for part in _parts(digests):
            sql = f"SELECT digest, data FROM small_chunks WHERE digest IN ({_marks(part)})"
            for digest, data in self._q(sql, tuple(part)):
                if chunk_digest(bytes(data)) == bytes(digest):
                    out[bytes(digest)] = bytes(data)
        return out

    def entry_status(self, entry_id: bytes) -> int | None:
        """db.LIVE, TOMBSTONED, QUARANTINED, SUPERSEDED, RETIRED, or None when absent."""
        rows = self._q("SELECT status FROM entries WHERE id = ?", (entry_id,))
        return int(rows[0][0]) if rows else None

    def all_ids(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._q("SELECT id FROM entries ORDER BY id")]

    def entry_count(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM entries")[0][0])

    def iter_entries(
        self, kind: Kind | None = None, status: int | None = None
    ) -> Iterator[tuple[Entry, int]]:
        """(entry, status) in id order, optionally filtered."""
        sql, args = "SELECT raw, status FROM entries", []
        where = []
        if kind is not None:
            where.append("kind = ?")
            args.append(int(kind))
            if kind is not Kind.CONTRIBUTION:
                where.append(db.ENTRIES_OTHER_KINDS)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        for raw, st in self._q(sql + " ORDER BY id", tuple(args)):
            yield Entry.from_bytes(bytes(raw)), int(st)

    def entries_at(self, author: bytes, seq: int) -> list[Entry]:
        """Stored entries of `author` with this seq (more than one means an equivocation)."""
        rows = self._q(
            "SELECT raw FROM entries WHERE author = ? AND seq = ? ORDER BY id", (author, seq)
        )
        return [Entry.from_bytes(bytes(r[0])) for r in rows]

    def held_entries(self) -> list[Entry]:
        """Entries waiting for their predecessor (not in the set), in id order."""
        rows = self._q("SELECT raw FROM pending ORDER BY id")
        return [Entry.from_bytes(bytes(r[0])) for r in rows]

    def version_vector(self) -> dict[bytes, int]:
        """Highest contiguous seq held per author."""
        return {
            bytes(a): int(s) for a, s in self._q("SELECT author, seq FROM clock ORDER BY author")
        }

    # counts kept per (kind, status, namespace)

    def counts(self) -> dict[tuple[int, int, str], tuple[int, int]]:
        """(kind, status, namespace) -> (entries, declared payload bytes); status db.HELD
        counts the entries waiting for their predecessor. Read from the counts the store keeps
        (a few rows), or counted from every entry when this store was opened without
        maintenance before its counts were ever filled."""
        if self.get_meta("entry_counts") is None:
            with self.reading():
                return self.count_all()
        rows = self._q("SELECT kind, status, namespace, entries, payload_bytes FROM entry_counts")
        return {(int(k), int(st), ns): (int(n), int(b)) for k, st, ns, n, b in rows if n}

    def recount(self) -> None:
        """Fill the kept counts from every entry and held entry (after the migration that
        added them; fsck compares the two)."""
        with self.transaction() as c:
            c.execute("DELETE FROM entry_counts")
            c.executemany(
                "INSERT INTO entry_counts (kind, status, namespace, entries, payload_bytes) "
                "VALUES (?, ?, ?, ?, ?)",
                [(*key, n, b) for key, (n, b) in sorted(self.count_all().items())],
            )
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('entry_counts', X'01')")

    def count_all(self) -> dict[tuple[int, int, str], tuple[int, int]]:
        """What `counts` answers, counted from every entry (decodes them all: fsck, tests)."""
        out: dict[tuple[int, int, str], tuple[int, int]] = {}
        rows = self.conn.execute("SELECT status, raw FROM entries").fetchall()
        rows += [(db.HELD, raw) for (raw,) in self.conn.execute("SELECT raw FROM pending")]
        for status, raw in rows:
            key, size = _count_key(Entry.from_bytes(bytes(raw)), int(status))
            n, b = out.get(key, (0, 0))
            out[key] = (n + 1, b + size)
        return out

    def _count(self, entry: Entry, status: int, sign: int) -> None:
        key, size = _count_key(entry, status)
        self._add_counts([(*key, sign, sign * size)])

    def _add_counts(self, rows: Sequence[tuple[int, int, str, int, int]]) -> None:
        self.conn.executemany(
            "INSERT INTO entry_counts (kind, status, namespace, entries, payload_bytes) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, status, namespace) DO UPDATE SET "
            "entries = entries + excluded.entries, "
            "payload_bytes = payload_bytes + excluded.payload_bytes",
            rows,
        )

    # writes (call inside transaction(); used by crdtd.state)

    def hold(self, entry: Entry, payload_digest: bytes | None) -> None:
        """Keep a valid entry whose predecessor is not held yet (outside the set)."""
        self.conn.execute(
            "INSERT INTO pending (id, author, seq, prev, payload_digest, raw) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (entry.id, entry.author, entry.seq, entry.prev, payload_digest, entry.to_bytes()),
        )
        self._count(entry, db.HELD, 1)

    def unhold(self, entry_id: bytes, entry: Entry | None = None) -> None:
        """Drop a held entry (released into the set, purged or quarantined); `entry`, when
        the caller has it decoded, saves decoding it again."""
        if entry is None:
            row = self.conn.execute("SELECT raw FROM pending WHERE id = ?", (entry_id,)).fetchone()
            if row is None:
                return
            entry = Entry.from_bytes(bytes(row[0]))
        if self.conn.execute("DELETE FROM pending WHERE id = ?", (entry_id,)).rowcount:
            self._count(entry, db.HELD, -1)

    def insert_entry(self, entry: Entry, status: int) -> None:
        ns = digest = None
        if entry.kind is Kind.CONTRIBUTION:
            ns, digest = entry.body.namespace, entry.body.payload_digest  # type: ignore[union-attr]
        self.conn.execute(
            "INSERT INTO entries (id, author, seq, kind, prev, namespace, payload_digest, status, "
            "raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.id,
                entry.author,
                entry.seq,
                int(entry.kind),
                entry.prev,
                ns,
                digest,
                status,
                entry.to_bytes(),
            ),
        )
        self._changed.add(entry.id)
        self._clock_dirty.setdefault(entry.author, False)
        self._count(entry, status, 1)

    def insert_contributions(
        self,
        entries: Sequence[Entry],
        manifests: Sequence[Manifest],
        chunks: Sequence[tuple[bytes, bytes]],
    ) -> None:
        """Write checked live contributions at once (inside `transaction()`): their inline
        chunks as (digest, bytes), their payloads' manifests, then the entries, with one
        statement per table instead of per row."""
        c = self.conn
        # rows go in key order: each B-tree page is then visited once per batch
        c.executemany(
            "INSERT OR IGNORE INTO small_chunks (digest, data) VALUES (?, ?)", sorted(chunks)
        )
        c.executemany(
            "INSERT OR IGNORE INTO payloads (digest, size, manifest) VALUES (?, ?, ?)",
            sorted((m.digest, m.size, m.to_bytes()) for m in manifests),
        )
        c.executemany(
            "INSERT OR IGNORE INTO payload_chunks (chunk, payload) VALUES (?, ?)",
            sorted((ref.digest, m.digest) for m in manifests for ref in m.chunks),
        )
        rows = []
        counts: dict[str, tuple[int, int]] = {}
        for e in entries:
            body = e.body
            n, b = counts.get(body.namespace, (0, 0))  # type: ignore[union-attr]
            counts[body.namespace] = (n + 1, b + body.payload_size)  # type: ignore[union-attr]
            rows.append(
                (
                    e.id,
                    e.author,
                    e.seq,
                    int(e.kind),
                    e.prev,
                    body.namespace,  # type: ignore[union-attr]
                    body.payload_digest,  # type: ignore[union-attr]
                    db.LIVE,
                    e.to_bytes(),
                )
            )
            self._changed.add(e.id)
            self._clock_dirty.setdefault(e.author, False)
        rows.sort()
        c.executemany(
            "INSERT INTO entries (id, author, seq, kind, prev, namespace, payload_digest, status, "
            "raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        kind = int(Kind.CONTRIBUTION)
        self._add_counts([(kind, db.LIVE, ns, n, b) for ns, (n, b) in sorted(counts.items())])

    def delete_entry(self, entry_id: bytes) -> None:
        row = self.conn.execute(
            "SELECT author, status, raw FROM entries WHERE id = ?", (entry_id,)
        ).fetchone()
        if row is None:
            return
        self.conn.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
        self._changed.add(entry_id)
        self._clock_dirty[bytes(row[0])] = True
        self._count(Entry.from_bytes(bytes(row[2])), int(row[1]), -1)

    def set_status(self, entry_id: bytes, status: int) -> None:
        row = self.conn.execute(
            "SELECT status, raw FROM entries WHERE id = ?", (entry_id,)
        ).fetchone()
        if row is None or int(row[0]) == status:
            return
        self.conn.execute("UPDATE entries SET status = ? WHERE id = ?", (status, entry_id))
        entry = Entry.from_bytes(bytes(row[1]))
        self._count(entry, int(row[0]), -1)
        self._count(entry, status, 1)

    def _settle_clocks(self) -> None:
        """Bring the clock of every author the transaction touched up to date, once each
        (inserts only advance it; a delete recomputes it)."""
        for author in sorted(self._clock_dirty):
            if self._clock_dirty[author]:
                self._recompute_clock(author)
            else:
                self._advance_clock(author)
        self._clock_dirty.clear()

    def _advance_clock(self, author: bytes) -> None:
        """Walk the author's seqs above its clock until the first gap (one query)."""
        row = self.conn.execute("SELECT seq FROM clock WHERE author = ?", (author,)).fetchone()
        start = seq = int(row[0]) if row else 0
        rows = self.conn.execute(
            "SELECT seq FROM entries WHERE author = ? AND seq > ? ORDER BY seq", (author, seq)
        )
        for (s,) in rows:
            if s > seq + 1:
                break
            seq = s
        if seq != start or row is None:
            self._set_clock(author, seq)

    def _recompute_clock(self, author: bytes) -> None:
        self.conn.execute("DELETE FROM clock WHERE author = ?", (author,))
        self._advance_clock(author)

    def _set_clock(self, author: bytes, seq: int) -> None:
        if seq:
            self.conn.execute(
                "INSERT OR REPLACE INTO clock (author, seq) VALUES (?, ?)", (author, seq)
            )
        else:
            self.conn.execute("DELETE FROM clock WHERE author = ?", (author,))

    # -- payloads ------------------------------------------------------------------------

    def has_manifest(self, payload_digest: bytes) -> bool:
        return bool(self._q("SELECT 1 FROM payloads WHERE digest = ?", (payload_digest,)))

    def get_manifest(self, payload_digest: bytes) -> Manifest:
        rows = self._q("SELECT manifest FROM payloads WHERE digest = ?", (payload_digest,))
        if not rows:
            raise NotFoundError(f"payload {echo(payload_digest)} has no manifest in the store")
        return Manifest.from_bytes(bytes(rows[0][0]))

    def has_chunk(self, digest: bytes, size: int | None = None) -> bool:
        """True when the chunk is stored; `size`, when known, says where to look first."""
        if size is not None and size <= INLINE_MAX:
            if self._q("SELECT 1 FROM small_chunks WHERE digest = ?", (digest,)):
                return True
            return self.chunks.has(digest)
        if self.chunks.has(digest):
            return True
        return bool(self._q("SELECT 1 FROM small_chunks WHERE digest = ?", (digest,)))

    def missing_chunks(self, digests: Iterable[bytes]) -> list[bytes]:
        """The digests (in the order given, without repeats) that the store does not hold."""
        seen: set[bytes] = set()
        out = []
        for d in digests:
            if d not in seen and not self.has_chunk(d):
                out.append(d)
            seen.add(d)
        return out

    def read_chunk(self, digest: bytes) -> bytes:
        """A chunk's bytes, re-verified (CorruptionError if they no longer match)."""
        rows = self._q("SELECT data FROM small_chunks WHERE digest = ?", (digest,))
        if not rows:
            return self.chunks.read(digest)
        data = bytes(rows[0][0])
        if chunk_digest(data) != digest:
            raise CorruptionError(f"inline chunk {digest.hex()} does not hash to its digest")
        return data

    def put_chunk(self, data: bytes, expected_digest: bytes | None = None) -> bytes:
        """Store a verified chunk durably (DigestMismatchError when it hashes elsewhere).

        A chunk file is written without taking the store lock; an inline chunk commits alone.
        """
        if len(data) > INLINE_MAX and not self._in_transaction():
            return self.chunks.put(data, expected_digest, sync=True)
        with self.transaction():
            return self.store_chunk(data, expected_digest)

    def store_chunk(self, data: bytes, expected_digest: bytes | None = None) -> bytes:
        """Store a chunk as part of the current transaction: inline in SQLite when it is at most
        INLINE_MAX bytes, else as a file made durable before the transaction commits."""
        if not self._in_transaction():
            return self.put_chunk(data, expected_digest)
        if len(data) > INLINE_MAX:
            return self.chunks.put(data, expected_digest, sync=False)
        digest = chunk_digest(data)
        if expected_digest is not None and digest != expected_digest:
            raise DigestMismatchError(
                f"chunk hashes to {digest.hex()}, expected {expected_digest.hex()}"
            )
        self.conn.execute(
            "INSERT OR IGNORE INTO small_chunks (digest, data) VALUES (?, ?)", (digest, data)
        )
        return digest

    def iter_chunk_digests(self) -> list[bytes]:
        """Every chunk the store holds (files and inline), sorted."""
        inline = [bytes(r[0]) for r in self._q("SELECT digest FROM small_chunks")]
        return sorted([*self.chunks.iter_digests(), *inline])

    def chunk_bytes_stored(self) -> int:
        """Total payload bytes held (chunk files plus inline chunks)."""
        files = sum(self.chunks.path(d).stat().st_size for d in self.chunks.iter_digests())
        inline = self._q("SELECT COALESCE(SUM(length(data)), 0) FROM small_chunks")[0][0]
        return files + int(inline)

    def put_manifest(self, manifest: Manifest) -> bytes:
        """Record a manifest (inside or outside a transaction); returns the payload digest."""
        digest = manifest.digest
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO payloads (digest, size, manifest) VALUES (?, ?, ?)",
                (digest, manifest.size, manifest.to_bytes()),
            )
            c.executemany(
                "INSERT OR IGNORE INTO payload_chunks (chunk, payload) VALUES (?, ?)",
                [(ref.digest, digest) for ref in manifest.chunks],
            )
        return digest

    def ingest_chunks(self, chunks: Iterable[bytes]) -> Manifest:
        """Store chunks (once each) and their manifest; returns the manifest.

        Chunk files are written as they come and fsynced in batches, outside the store lock;
        inline chunks and the manifest then commit in one short transaction.
        """
        refs = []
        small: list[bytes] = []
        try:
            for data in chunks:
                if len(data) > INLINE_MAX:
                    refs.append(ChunkRef(self.chunks.put(data, sync=False), len(data)))
                else:
                    refs.append(ChunkRef(chunk_digest(data), len(data)))
                    small.append(data)
            self.chunks.flush()
        except BaseException:
            self.chunks.discard()
            raise
        manifest = Manifest(tuple(refs))
        with self.transaction():
            for data in small:
                self.store_chunk(data)
            self.put_manifest(manifest)
        return manifest

    def ingest_file(self, path: Path | str) -> Manifest:
        """Chunk a file (tensor-aware for safetensors) into the store in one pass."""
        return self.ingest_chunks(chunk_file(path))

    def ingest_bytes(self, data: bytes) -> Manifest:
        return self.ingest_chunks(chunk_bytes(data))

    def read_payload(self, payload_digest: bytes) -> bytes:
        """A whole payload, every chunk verified (for small payloads and tests)."""
        manifest = self.get_manifest(payload_digest)
        return b"".join(self.read_chunk(ref.digest) for ref in manifest.chunks)

    def payload_in_use(self, payload_digest: bytes) -> bool:
        """True when a live (or superseded, still kept) contribution or a held entry needs
        this payload."""
        c = self.conn
        return bool(
            c.execute(
                "SELECT 1 FROM entries WHERE payload_digest = ? AND status IN (?, ?) LIMIT 1",
                (payload_digest, db.LIVE, db.SUPERSEDED),
            ).fetchone()
            or c.execute(
                "SELECT 1 FROM pending WHERE payload_digest = ? LIMIT 1", (payload_digest,)
            ).fetchone()
        )

    def release_payload(self, payload_digest: bytes) -> None:
        """Forget a payload no live entry uses; its unshared chunks are deleted after COMMIT.

        Must run inside `transaction()`.
        """
        if not self._in_transaction():
            raise StorageError("release_payload must run inside a transaction")
        if self.payload_in_use(payload_digest):
            return
        c = self.conn
        chunks = self._chunks_of(payload_digest)
        c.executemany(
            "DELETE FROM payload_chunks WHERE chunk = ? AND payload = ?",
            [(ch, payload_digest) for ch in chunks],
        )
        c.execute("DELETE FROM payloads WHERE digest = ?", (payload_digest,))
        for ch in chunks:
            if c.execute("SELECT 1 FROM payload_chunks WHERE chunk = ? LIMIT 1", (ch,)).fetchone():
                continue
            if c.execute("DELETE FROM small_chunks WHERE digest = ?", (ch,)).rowcount:
                self._erased_inline = True
            else:
                key = "gc:" + ch.hex()  # survives a crash between COMMIT and the unlink
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, X'')", (key,))
                self._after_commit.append(ch)

    def _chunks_of(self, payload_digest: bytes) -> list[bytes]:
        """The distinct chunks of a stored payload, read from its manifest (payload_chunks
        has no index by payload); a manifest that no longer decodes falls back to a scan."""
        row = self.conn.execute(
            "SELECT manifest FROM payloads WHERE digest = ?", (payload_digest,)
        ).fetchone()
        if row is not None:
            try:
                return sorted({ref.digest for ref in Manifest.from_bytes(bytes(row[0])).chunks})
            except MalformedManifestError:
                pass
        rows = self.conn.execute(
            "SELECT chunk FROM payload_chunks WHERE payload = ?", (payload_digest,)
        )
        return [bytes(r[0]) for r in rows]

    def _finish_gc(self) -> None:
        """Delete the chunk files a committed erasure queued (also after a crash)."""
        with self._lock:
            rows = self.conn.execute("SELECT key FROM meta WHERE key LIKE 'gc:%'").fetchall()
            if not rows:
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for (key,) in rows:
                    ch = bytes.fromhex(key[3:])
                    used = self.conn.execute(
                        "SELECT 1 FROM payload_chunks WHERE chunk = ? LIMIT 1", (ch,)
                    ).fetchone()
                    if not used:
                        self.chunks.delete(ch)
                    self.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self._after_commit.clear()

    # -- meta ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        rows = self._q("SELECT value FROM meta WHERE key = ?", (key,))
        return bytes(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: bytes) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
