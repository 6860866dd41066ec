"""A small in-process federation for tests, benchmarks and simulations.

`Federation` holds an admin key and member keys and builds correctly chained, signed entries
for them (each author's seq/prev tracked here), so a test reads as what happens, not as how
headers are numbered. Nothing here touches a store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from crdtd.crypto.keys import NodeKey
from crdtd.state.e4 import E4State
from crdtd.state.entry import (
    Entry,
    make_contribution,
    make_evidence,
    make_membership,
    make_removal,
    make_revocation,
)
from crdtd.store.chunks import chunk_bytes, manifest_of


@dataclass
class Federation:
    """An admin plus named members; every builder returns the next entry in its author's chain."""

    admin: NodeKey = field(default_factory=NodeKey.generate)
    keys: dict[str, NodeKey] = field(default_factory=dict)
    _last: dict[bytes, Entry] = field(default_factory=dict)

    def next_link(self, key: NodeKey) -> tuple[int, bytes | None]:
        last = self._last.get(key.key_id)
        return (1, None) if last is None else (last.seq + 1, last.id)

    def _record(self, e: Entry) -> Entry:
        self._last[e.author] = e
        return e

    def add_member(self, name: str, key: NodeKey | None = None) -> Entry:
        """Create (or use) a member key and return the admin's membership entry for it."""
        k = key or NodeKey.generate()
        self.keys[name] = k
        seq, prev = self.next_link(self.admin)
        return self._record(make_membership(self.admin, seq, prev, k.public_keys, name))

    def key(self, who: str) -> NodeKey:
        return self.admin if who == "admin" else self.keys[who]

    def contribute(
        self, who: str, payload: bytes, namespace: str = "test/ns", **kw: object
    ) -> Entry:
        """A contribution of `payload` (its digest computed the way the store chunks it)."""
        k = self.key(who)
        seq, prev = self.next_link(k)
        m = manifest_of(chunk_bytes(payload))
        e = make_contribution(k, seq, prev, namespace, m.digest, m.size, **kw)  # type: ignore[arg-type]
        return self._record(e)

    def remove(
        self, who: str, targets: Iterable[bytes] = (), target_author: bytes | None = None
    ) -> Entry:
        k = self.key(who)
        seq, prev = self.next_link(k)
        return self._record(make_removal(k, seq, prev, targets, target_author=target_author))

    def revoke(self, who: str, revoked: bytes) -> Entry:
        k = self.key(who)
        seq, prev = self.next_link(k)
        return self._record(make_revocation(k, seq, prev, revoked))

    def evidence(self, who: str, subject: bytes, proof: bytes = b"", weight: int = -1) -> Entry:
        k = self.key(who)
        seq, prev = self.next_link(k)
        return self._record(make_evidence(k, seq, prev, subject, "integrity", weight, proof=proof))


def bulk_contributions(
    state: E4State,
    key: NodeKey,
    count: int,
    namespace: str = "bench/records",
    step: int = 5000,
) -> list[bytes]:
    """Append `count` signed contributions by `key` (payloads of ~100 bytes) straight into the
    store, `step` per transaction; returns their ids. Setup for benchmarks and scenario tests:
    the entries are valid by construction, so E4State's checks are skipped."""
    from crdtd.store.sqlite import LIVE

    store = state.store
    seq, prev = state.chain_next(key.key_id)
    ids = []
    for start in range(0, count, step):
        with store.transaction():
            for i in range(start, min(count, start + step)):
                m = store.ingest_bytes(f"record {i:08d} ".encode() * 6)
                e = make_contribution(key, seq, prev, namespace, m.digest, m.size)
                store.insert_entry(e, LIVE)
                ids.append(e.id)
                seq, prev = seq + 1, e.id
    return ids


def fingerprint(state: E4State) -> dict[str, object]:
    """Everything observable about a state (ids and statuses, visible set, clock, held entries,
    manifests, chunk files, Merkle root): equal fingerprints mean "unchanged"."""
    c = state.store.conn
    with state.store.reading():
        rows = {
            "entries": c.execute("SELECT id, status FROM entries ORDER BY id").fetchall(),
            "pending": c.execute("SELECT id FROM pending ORDER BY id").fetchall(),
            "payloads": c.execute("SELECT digest FROM payloads ORDER BY digest").fetchall(),
            "members": c.execute("SELECT key_id, entry FROM members ORDER BY 1, 2").fetchall(),
            "revocations": c.execute(
                "SELECT revoked, entry FROM revocations ORDER BY 1, 2"
            ).fetchall(),
        }
    return {
        **rows,
        "root": state.merkle_root(),
        "visible": [e.id for e in state.visible()],
        "clock": sorted(state.version_vector().items()),
        "chunks": state.store.iter_chunk_digests(),
    }
