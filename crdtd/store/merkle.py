"""Incremental 256-ary Merkle tree over 32-byte entry ids, cached in SQLite.

The node at depth k covers the ids sharing a k-byte prefix; leaves sit at depth LEAF_DEPTH.
A leaf hashes its sorted ids, an inner node its 256 child hashes; an empty subtree is 32 zero
bytes. Changing one id recomputes LEAF_DEPTH + 1 nodes (leaf, parents, root), not the tree.

LEAF_DEPTH = 2 (65,536 leaves) minimises the bytes a descent moves at sync's scale: for
n = 100,000 ids and d = 10 differences it costs the root's children (8 KiB), one 8 KiB child
list per differing depth-1 node and ~2 ids per differing leaf, ~91 KB against 3.2 MB for the
full id list. Depth 1 would list ~390 ids per differing leaf (~133 KB); depth 3 adds a third
8 KiB level per difference (~173 KB). See docs/store.md for the arithmetic.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence

LEAF_DEPTH = 2
FANOUT = 256
ID_SIZE = 32
EMPTY_HASH = bytes(32)
LEAF_QUERY = 400
"""Leaves whose ids one query reads when a commit updates the tree (two variables each)."""
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(sorted_ids: Sequence[bytes]) -> bytes:
    """Hash of a leaf: sha256(0x00 ‖ ids in ascending order), or EMPTY_HASH for none."""
    if not sorted_ids:
        return EMPTY_HASH
    return hashlib.sha256(_LEAF + b"".join(sorted_ids)).digest()


def node_hash(children: Sequence[bytes]) -> bytes:
    """Hash of an inner node: sha256(0x01 ‖ 256 child hashes), or EMPTY_HASH if all are empty."""
    if len(children) != FANOUT:
        raise ValueError(f"an inner node has {FANOUT} children, got {len(children)}")
    if all(c == EMPTY_HASH for c in children):
        return EMPTY_HASH
    return hashlib.sha256(_NODE + b"".join(children)).digest()


def id_range(prefix: bytes) -> tuple[bytes, bytes]:
    """Smallest and largest 32-byte id starting with `prefix`."""
    pad = ID_SIZE - len(prefix)
    return prefix + b"\x00" * pad, prefix + b"\xff" * pad


def root_from_ids(ids: Iterable[bytes], leaf_depth: int = LEAF_DEPTH) -> bytes:
    """Recompute the root from scratch (for fsck and tests): no cache involved."""
    leaves: dict[bytes, list[bytes]] = {}
    for i in sorted(set(ids)):
        leaves.setdefault(i[:leaf_depth], []).append(i)
    level = {p: leaf_hash(v) for p, v in leaves.items()}
    for depth in range(leaf_depth - 1, -1, -1):
        parents: dict[bytes, list[bytes]] = {}
        for p in sorted(level):
            parents.setdefault(p[:depth], [EMPTY_HASH] * FANOUT)[p[depth]] = level[p]
        level = {p: node_hash(ch) for p, ch in parents.items()}
    return level.get(b"", EMPTY_HASH)


class MerkleIndex:
    """The node cache over an id column: `nodes_table(depth, prefix, hash, count)`.

    `ids_table` must have a 32-byte BLOB primary key column `id` (a WITHOUT ROWID table, so
    prefix ranges are index scans). Call `update(changed_ids)` inside the transaction that
    changed the ids; it only touches the nodes above them.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        ids_table: str = "entries",
        nodes_table: str = "merkle_nodes",
        leaf_depth: int = LEAF_DEPTH,
    ) -> None:
        self.conn = conn
        self.ids_table = ids_table
        self.nodes_table = nodes_table
        self.leaf_depth = leaf_depth
        self._inner: dict[bytes, tuple[list[bytes], list[int]]] = {}
        """Child hashes and counts of inner nodes as `update` last wrote them, so a batch
        touching most depth-1 nodes does not read their 256 children back each time
        (`forget` after a rollback; dropped too when another connection wrote the file)."""
        self._data_version: int | None = None

    @staticmethod
    def schema(nodes_table: str = "merkle_nodes") -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {nodes_table} (depth INTEGER NOT NULL, "
            "prefix BLOB NOT NULL, hash BLOB NOT NULL, count INTEGER NOT NULL, "
            "PRIMARY KEY (depth, prefix)) WITHOUT ROWID"
        )

    # -- reads ---------------------------------------------------------------------------

    def root(self) -> bytes:
        row = self.conn.execute(
            f"SELECT hash FROM {self.nodes_table} WHERE depth = 0 AND prefix = X''"
        ).fetchone()
        return bytes(row[0]) if row else EMPTY_HASH

    def children(self, prefix: bytes) -> list[bytes]:
        """The 256 child hashes of the inner node at `prefix` (len(prefix) < leaf depth)."""
        if len(prefix) >= self.leaf_depth:
            raise ValueError(
                f"prefix of {len(prefix)} bytes is at or below leaf depth {self.leaf_depth}"
            )
        out = [EMPTY_HASH] * FANOUT
        for child, h, _ in self._child_rows(prefix):
            out[child[-1]] = h
        return out

    def ids_under(self, prefix: bytes) -> list[bytes]:
        lo, hi = id_range(prefix)
        rows = self.conn.execute(
            f"SELECT id FROM {self.ids_table} WHERE id BETWEEN ? AND ? ORDER BY id", (lo, hi)
        )
        return [bytes(r[0]) for r in rows]

    def count_under(self, prefix: bytes) -> int:
        if len(prefix) <= self.leaf_depth:
            row = self.conn.execute(
                f"SELECT count FROM {self.nodes_table} WHERE depth = ? AND prefix = ?",
                (len(prefix), prefix),
            ).fetchone()
            return int(row[0]) if row else 0
        lo, hi = id_range(prefix)
        row = self.conn.execute(
            f"SELECT COUNT(*) FROM {self.ids_table} WHERE id BETWEEN ? AND ?", (lo, hi)
        ).fetchone()
        return int(row[0])

    # -- writes --------------------------------------------------------------------------

    def update(self, changed_ids: Iterable[bytes]) -> None:
        """Recompute the leaves holding `changed_ids` and every node above them, once each."""
        dirty = {i[: self.leaf_depth] for i in changed_ids}
        if not dirty:
            return
        # another connection (a second NodeStore on this file) may have rewritten the nodes
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._inner.clear()
            self._data_version = version
        level: dict[bytes, tuple[bytes, int]] = {}
        leaves = self._leaves(sorted(dirty))
        for prefix in sorted(dirty):
            ids = sorted(leaves.get(prefix, ()))
            level[prefix] = (leaf_hash(ids), len(ids))
        self._write(level)
        for depth in range(self.leaf_depth - 1, -1, -1):
            for child, (h, n) in level.items():
                hashes, counts = self._children_of(child[:depth])
                hashes[child[-1]], counts[child[-1]] = h, n
            parents: dict[bytes, tuple[bytes, int]] = {}
            for prefix in sorted({c[:depth] for c in level}):
                hashes, counts = self._inner[prefix]
                parents[prefix] = (node_hash(hashes), sum(counts))
            self._write(parents)
            level = parents

    def _leaves(self, prefixes: Sequence[bytes]) -> dict[bytes, list[bytes]]:
        """The ids under each leaf prefix, with one query per LEAF_QUERY leaves (a catch-up
        batch touches about one leaf per entry)."""
        out: dict[bytes, list[bytes]] = {}
        for start in range(0, len(prefixes), LEAF_QUERY):
            part = prefixes[start : start + LEAF_QUERY]
            ranges = ",".join(["(?, ?)"] * len(part))
            args = [b for p in part for b in id_range(p)]
            rows = self.conn.execute(
                f"WITH r(lo, hi) AS (VALUES {ranges}) SELECT t.id FROM r "
                f"JOIN {self.ids_table} AS t ON t.id BETWEEN r.lo AND r.hi",
                args,
            )
            depth = self.leaf_depth
            for (i,) in rows:
                i = bytes(i)
                out.setdefault(i[:depth], []).append(i)
        return out

    def forget(self) -> None:
        """Drop the remembered inner nodes (the transaction that wrote them rolled back)."""
        self._inner.clear()

    def _children_of(self, prefix: bytes) -> tuple[list[bytes], list[int]]:
        got = self._inner.get(prefix)
        if got is None:
            hashes, counts = [EMPTY_HASH] * FANOUT, [0] * FANOUT
            for child, h, n in self._child_rows(prefix):
                hashes[child[-1]], counts[child[-1]] = h, n
            got = self._inner[prefix] = (hashes, counts)
        return got

    def _write(self, nodes: dict[bytes, tuple[bytes, int]]) -> None:
        t = self.nodes_table
        self.conn.executemany(
            f"DELETE FROM {t} WHERE depth = ? AND prefix = ?",
            [(len(p), p) for p, (_, n) in sorted(nodes.items()) if n == 0],
        )
        self.conn.executemany(
            f"INSERT OR REPLACE INTO {t} (depth, prefix, hash, count) VALUES (?, ?, ?, ?)",
            [(len(p), p, h, n) for p, (h, n) in sorted(nodes.items()) if n],
        )

    def rebuild(self) -> None:
        """Drop the cache and recompute every node from the ids (migration, repair)."""
        self.conn.execute(f"DELETE FROM {self.nodes_table}")
        self.forget()
        rows = self.conn.execute(
            f"SELECT DISTINCT substr(id, 1, ?) FROM {self.ids_table}", (self.leaf_depth,)
        )
        self.update([bytes(r[0]) + bytes(ID_SIZE - self.leaf_depth) for r in rows.fetchall()])

    def _child_rows(self, prefix: bytes) -> list[tuple[bytes, bytes, int]]:
        rows = self.conn.execute(
            f"SELECT prefix, hash, count FROM {self.nodes_table} "
            "WHERE depth = ? AND prefix BETWEEN ? AND ?",
            (len(prefix) + 1, prefix + b"\x00", prefix + b"\xff"),
        )
        return [(bytes(p), bytes(h), int(n)) for p, h, n in rows]
