"""Applying a run of contributions with lookups made once per run and writes made at once.

`E4State.apply_many` hands consecutive contributions here while the store holds no held
entries and no removals. Each entry is still checked on its own, in order, by the same rules
as `E4State._apply` (duplicate, header and signature, equivocation, chain link, payload
complete and verified), but against lookups made once for the whole run (ids present, the
authors' seqs, the predecessors, stored manifests and inline chunks) plus what the run itself
accepted so far, and the accepted entries are written with one statement per table.

An entry that needs anything else (its predecessor is not held, a second header for its seq,
a payload that is not complete, not verified or not inline, a latest-only namespace whose
line must be settled) ends the run *unwritten*: the
caller applies it the one-at-a-time way, which decides it exactly as before (hold it, raise
the precise error, store chunk files). So a run never accepts what `_apply` would refuse, and
writes what `_apply` would write.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from crdtd.errors import NotFoundError, ValidationError
from crdtd.state.entry import Entry
from crdtd.store.chunks import Manifest
from crdtd.store.store import INLINE_MAX, PayloadSource

if TYPE_CHECKING:
    from crdtd.state.e4 import ApplyResult, E4State


class _Run:
    """The lookups of one run and what it accepted so far."""

    def __init__(
        self, state: E4State, entries: Sequence[Entry], source: PayloadSource | None
    ) -> None:
        store = state.store
        self.present = store.present([e.id for e in entries])
        ranges: dict[bytes, tuple[int, int]] = {}
        for e in entries:
            lo, hi = ranges.get(e.author, (e.seq, e.seq))
            ranges[e.author] = (min(lo, e.seq), max(hi, e.seq))
        self.seqs = {a: store.ids_at(a, lo, hi) for a, (lo, hi) in sorted(ranges.items())}
        ids = {e.id for e in entries}
        self.links = store.links(sorted({e.prev for e in entries if e.prev and e.prev not in ids}))
        digests = sorted({e.body.payload_digest for e in entries})  # type: ignore[union-attr]
        stored = {d: m for d, (m, _) in store.manifests_raw(digests).items()}
        self.stored_manifests = set(stored)
        self.manifests: dict[bytes, Manifest | None] = {}
        for d in digests:
            self.manifests[d] = _manifest(stored.get(d), d, source)
        refs = {r.digest for m in self.manifests.values() if m is not None for r in m.chunks}
        self.stored_chunks = store.small_chunks_among(sorted(refs))
        # what the run accepted (its writes are made at the end)
        self.entries: list[Entry] = []
        self.new_manifests: list[Manifest] = []
        self.chunks: dict[bytes, bytes] = {}

    def accepted(self, e: Entry, manifest: Manifest, chunks: dict[bytes, bytes]) -> None:
        self.entries.append(e)
        self.present.add(e.id)
        self.seqs.setdefault(e.author, {}).setdefault(e.seq, []).append(e.id)
        self.links[e.id] = (e.author, e.seq)
        self.new_manifests.append(manifest)
        self.chunks.update(chunks)


def _manifest(stored: bytes | None, digest: bytes, source: PayloadSource | None) -> Manifest | None:
    """The manifest `_apply` would use: the stored one, else the source's; None when that
    fails in any way (the entry then goes the one-at-a-time way, which fails the same way,
    at the same point, or not at all when it turns out a duplicate)."""
    try:
        if stored is not None:
            return Manifest.from_bytes(stored)
        if source is not None:
            return source.get_manifest(digest)
    except Exception:  # decided again, and raised, by the one-at-a-time path
        return None
    return None


def apply_run(
    state: E4State, entries: Sequence[Entry], source: PayloadSource | None
) -> list[ApplyResult | ValidationError]:
    """Results for the leading entries of `entries` (all contributions) that a run decides;
    the entry after them, if any, must be applied one at a time. Writes what it accepted."""
    from crdtd.state.e4 import ApplyResult, ApplyStatus

    run = _Run(state, entries, source)
    out: list[ApplyResult | ValidationError] = []
    for e in entries:
        if state._is_latest_only(e):
            break  # its line's statuses are settled the one-at-a-time way
        if e.id in run.present:
            out.append(ApplyResult(e.id, ApplyStatus.DUPLICATE))
            continue
        try:
            state._validate_header(e)
        except ValidationError as exc:
            out.append(exc)
            state._forget_lookups()
            continue
        if not _chain_continues(run, e):
            break
        taken = _payload(run, state, e, source)
        if taken is None:
            break
        run.accepted(e, *taken)
        out.append(ApplyResult(e.id, ApplyStatus.APPLIED))
    if run.entries:
        state.store.insert_contributions(run.entries, run.new_manifests, sorted(run.chunks.items()))
    return out


def _chain_continues(run: _Run, e: Entry) -> bool:
    """No other header at this seq, and `prev` held as the author's seq − 1."""
    others = run.seqs.get(e.author, {}).get(e.seq, [])
    if any(i != e.id for i in others):
        return False  # an equivocation: raised (with its proof) the one-at-a-time way
    if e.prev is None:
        return True
    link = run.links.get(e.prev)
    return link is not None and link == (e.author, e.seq - 1)


def _payload(
    run: _Run, state: E4State, e: Entry, source: PayloadSource | None
) -> tuple[Manifest, dict[bytes, bytes]] | None:
    """The verified manifest and the inline chunks to store, or None when the payload needs
    the one-at-a-time path (missing, not matching, or stored as chunk files)."""
    body = e.body
    digest, size = body.payload_digest, body.payload_size  # type: ignore[union-attr]
    manifest = run.manifests.get(digest)
    if manifest is None or manifest.size != size or manifest.digest != digest:
        return None
    chunks: dict[bytes, bytes] = {}
    for ref in manifest.chunks:
        d = ref.digest
        if d in chunks or d in run.chunks or d in run.stored_chunks:
            continue
        if ref.size > INLINE_MAX:
            return None
        if state.store.chunks.has(d):  # a chunk file (not inline: looked up above)
            run.stored_chunks.add(d)
            continue
        if source is None:
            return None
        try:
            data = source.read_chunk(d)
        except NotFoundError:
            return None
        if len(data) != ref.size or hashlib.sha256(data).digest() != d:
            return None
        chunks[d] = data
    return manifest, chunks
