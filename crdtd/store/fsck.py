"""fsck: re-verify everything a node store holds against its own digests and signatures.

Checks every entry (decodes, id = sha256(header), indexed columns agree, signatures verify
under the federation recorded in the store), every live payload (manifest present, matches the
contribution's digest and size, all chunks present), every chunk file (hashes to its name),
every inline chunk row, the Merkle node cache (equals a from-scratch recomputation) and the
version vector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from crdtd.crypto.schemes import ED25519_ONLY, PublicKeys
from crdtd.errors import CrdtdError, MalformedEntryError, SignatureError
from crdtd.state.e4 import federation_of
from crdtd.state.entry import ContributionBody, Entry, Kind
from crdtd.store import sqlite as db
from crdtd.store.chunks import Manifest, chunk_digest
from crdtd.store.merkle import EMPTY_HASH, FANOUT, leaf_hash, node_hash
from crdtd.store.store import CHUNK_DIR, DB_NAME, NodeStore


@dataclass(frozen=True)
class Problem:
    """One inconsistency: where it is and what is wrong."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class Report:
    """What fsck looked at and what it found."""

    problems: list[Problem]
    entries: int = 0
    chunks: int = 0
    payloads: int = 0
    unreferenced_chunks: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def fsck(data_dir: Path | str, progress: Callable[[int], object] | None = None) -> Report:
    """Verify the store in `data_dir` without changing it; `progress(n)` is told the bytes
    of each chunk file once it is hashed (the long part: `chunk_file_bytes` is the total)."""
    d = Path(data_dir)
    if not (d / DB_NAME).is_file():
        return Report([Problem(str(d), f"no {DB_NAME}: not a crdtd data directory")])
    store = NodeStore.open(d, maintenance=False)
    try:
        report = Report([])
        report.problems.extend(_check_entries(store, report))
        report.problems.extend(_check_payloads(store, report))
        report.problems.extend(_check_chunks(store, report, progress))
        report.problems.extend(_check_merkle(store))
        report.problems.extend(_check_clock(store))
        report.problems.extend(_check_counts(store))
        return report
    finally:
        store.close()


def _check_entries(store: NodeStore, report: Report) -> Iterator[Problem]:
    admin, policy = federation_of(store)
    policy = policy or ED25519_ONLY
    rows = store.conn.execute(
        "SELECT id, author, seq, kind, raw FROM entries ORDER BY kind = ? DESC, id",
        (int(Kind.MEMBERSHIP),),
    ).fetchall()
    keys: dict[bytes, list[PublicKeys]] = {}
    if admin is not None:
        keys[admin.key_id] = [admin]
    elif rows:
        yield Problem("store", "entries present but no federation admin key recorded")
    for rid, author, seq, kind, raw in rows:
        report.entries += 1
        where = f"entry {bytes(rid).hex()}"
        try:
            e = Entry.from_bytes(bytes(raw))
        except MalformedEntryError as exc:
            yield Problem(where, f"stored bytes do not decode ({exc})")
            continue
        if e.id != bytes(rid):
            yield Problem(where, f"header hashes to {e.id.hex()}, not to its id")
            continue
        if (e.author, e.seq, int(e.kind)) != (bytes(author), seq, kind):
            yield Problem(where, "indexed author/seq/kind disagree with the header")
        candidates = keys.get(e.author, [])
        if not candidates:
            yield Problem(where, f"author {e.author.hex()} has no membership in the store")
            continue
        errors = []
        for k in candidates:
            try:
                e.verify_signatures(k, policy)
                break
            except SignatureError as exc:
                errors.append(str(exc))
        else:
            yield Problem(where, f"signature does not verify ({errors[-1]})")
            continue
        if e.kind is Kind.MEMBERSHIP and admin is not None and e.author == admin.key_id:
            keys.setdefault(e.body.member, []).append(e.body.public_keys)  # type: ignore[union-attr]


def _check_payloads(store: NodeStore, report: Report) -> Iterator[Problem]:
    c = store.conn
    rows = c.execute(
        "SELECT e.id, e.raw, p.manifest FROM entries e LEFT JOIN payloads p "
        "ON p.digest = e.payload_digest WHERE e.kind = ? AND e.status IN (?, ?) ORDER BY e.id",
        (int(Kind.CONTRIBUTION), db.LIVE, db.SUPERSEDED),
    ).fetchall()
    for rid, raw, manifest_bytes in rows:
        where = f"entry {bytes(rid).hex()}"
        try:
            body = Entry.from_bytes(bytes(raw)).body
        except MalformedEntryError:
            continue  # already reported
        assert isinstance(body, ContributionBody)
        if manifest_bytes is None:
            yield Problem(
                where, f"live contribution has no manifest for {body.payload_digest.hex()}"
            )
            continue
        report.payloads += 1
        try:
            m = Manifest.from_bytes(bytes(manifest_bytes))
            m.verify(body.payload_digest, body.payload_size)
        except CrdtdError as exc:
            yield Problem(where, f"manifest: {exc}")
            continue
        for i, ref in enumerate(m.chunks):
            if not store.has_chunk(ref.digest):
                yield Problem(where, f"chunk {i} ({ref.digest.hex()}) is missing from disk")


def chunk_file_bytes(data_dir: Path | str) -> int:
    """Bytes of the chunk files under `data_dir` (what fsck hashes, for a progress bar)."""
    root = Path(data_dir) / CHUNK_DIR
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def _check_chunks(
    store: NodeStore, report: Report, progress: Callable[[int], object] | None = None
) -> Iterator[Problem]:
    c = store.conn
    for digest, data in c.execute("SELECT digest, data FROM small_chunks ORDER BY digest"):
        report.chunks += 1
        if chunk_digest(bytes(data)) != bytes(digest):
            yield Problem(
                f"inline chunk {bytes(digest).hex()}", "does not hash to its digest (corrupted)"
            )
    for digest in store.chunks.iter_digests():
        report.chunks += 1
        path = store.chunks.path(digest)
        data = path.read_bytes()
        if progress is not None:
            progress(len(data))
        if chunk_digest(data) != digest:
            yield Problem(str(path), "chunk file does not hash to its name (corrupted)")
        if not c.execute(
            "SELECT 1 FROM payload_chunks WHERE chunk = ? LIMIT 1", (digest,)
        ).fetchone():
            report.unreferenced_chunks += 1


def _check_merkle(store: NodeStore) -> Iterator[Problem]:
    c = store.conn
    depth = store.merkle.leaf_depth
    ids = [bytes(r[0]) for r in c.execute("SELECT id FROM entries ORDER BY id")]
    expect: dict[tuple[int, bytes], tuple[bytes, int]] = {}
    leaves: dict[bytes, list[bytes]] = {}
    for i in ids:
        leaves.setdefault(i[:depth], []).append(i)
    level = {p: (leaf_hash(v), len(v)) for p, v in leaves.items()}
    expect.update({(depth, p): v for p, v in level.items()})
    for k in range(depth - 1, -1, -1):
        parents: dict[bytes, list[bytes]] = {}
        counts: dict[bytes, int] = {}
        for p, (h, n) in level.items():
            parents.setdefault(p[:k], [EMPTY_HASH] * FANOUT)[p[k]] = h
            counts[p[:k]] = counts.get(p[:k], 0) + n
        level = {p: (node_hash(ch), counts[p]) for p, ch in parents.items()}
        expect.update({(k, p): v for p, v in level.items()})
    cached = {
        (int(dp), bytes(p)): (bytes(h), int(n))
        for dp, p, h, n in c.execute("SELECT depth, prefix, hash, count FROM merkle_nodes")
    }
    if cached != expect:
        bad = sorted(set(cached.items()) ^ set(expect.items()))
        dp, p = bad[0][0]
        yield Problem(
            "merkle cache",
            f"{len(bad)} node rows differ from a recomputation (first: depth {dp} prefix {p.hex()})",
        )


def _check_clock(store: NodeStore) -> Iterator[Problem]:
    c = store.conn
    seqs: dict[bytes, set[int]] = {}
    for author, seq in c.execute("SELECT author, seq FROM entries"):
        seqs.setdefault(bytes(author), set()).add(int(seq))
    expect = {}
    for author, have in seqs.items():
        n = 0
        while n + 1 in have:
            n += 1
        if n:
            expect[author] = n
    cached = {bytes(a): int(s) for a, s in c.execute("SELECT author, seq FROM clock")}
    if cached != expect:
        yield Problem("clock", "version vector disagrees with the stored entries")


def _check_counts(store: NodeStore) -> Iterator[Problem]:
    """The kept counts (what a status call reads) against a count of every entry."""
    if store.get_meta("entry_counts") is None:
        return  # never filled yet: the owner's next open fills them
    if store.counts() != store.count_all():
        yield Problem("entry counts", "kept counts disagree with the stored entries")
