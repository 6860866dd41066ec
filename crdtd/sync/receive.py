"""Receiving entries from a peer: verify headers on arrival, store chunks, apply per entry.

Used for both directions of a session (what we pull, and what a peer pushes to us). A record
is checked before any of its payload moves: the entry decodes strictly, its id is the one we
asked for, its signatures verify under the author's membership keys (known here, or admitted
by an admin-signed membership entry in the same transfer) and its manifest hashes to the
payload digest. Chunks are verified by `put_chunk` as they land and stay on disk, so a cut
transfer resumes with only the chunks still missing. Entries are then validated one by one
and committed `apply_batch` at a time (`E4State.apply_many`: one durable transaction per
batch, a refused entry rolled back alone to its savepoint).

Acknowledged means committed: an entry id is reported as applied (in `Outcome.applied`, so
in an `Offer`/`Push` reply, a `SessionResult` or a Watch event), served, or counted in the
Merkle root only after the COMMIT of its batch returned, so a kill -9 mid-batch loses only
entries nobody was told about; the next session finds them missing and fetches them again.

What shows misbehaviour (a record that does not decode, an id not asked for, a bad signature
or manifest, an equivocation, a broken chain link) is also kept as a `Misbehaviour` with the
bytes that show it, so the node can turn it into trust evidence (crdtd.node.observe).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from crdtd.crypto.schemes import PublicKeys
from crdtd.errors import (
    ChainError,
    CrdtdError,
    DigestMismatchError,
    EquivocationError,
    MalformedManifestError,
    MissingPayloadError,
    NotFoundError,
    NotMemberError,
    PayloadError,
    ProtocolError,
    SignatureError,
    ValidationError,
)
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.state.e4 import JOIN_ORDER, ApplyResult, ApplyStatus, E4State
from crdtd.state.entry import Entry, EquivocationProof, Kind
from crdtd.store.chunks import CHUNK_SIZE, Manifest
from crdtd.store.store import NodeStore
from crdtd.sync.config import SyncConfig

VERIFY_AHEAD = 512
"""Records in one check from which signatures are verified ahead, in worker processes."""


@dataclass(frozen=True)
class Incoming:
    """A verified record: the entry and, for a contribution, its payload manifest and the
    chunks that came inline with it (tiny payloads; verified when applied)."""

    entry: Entry
    manifest: Manifest | None
    chunks: tuple[bytes, ...] = ()

    @property
    def id(self) -> bytes:
        return self.entry.id

    def chunk_refs(self) -> list[tuple[bytes, int]]:
        """(digest, size) of every chunk its payload needs."""
        if self.manifest is None:
            return []
        return [(c.digest, c.size) for c in self.manifest.chunks]


MISBEHAVIOUR_KINDS = (
    "malformed",
    "unasked",
    "bad_signature",
    "bad_manifest",
    "invalid",
    "equivocation",
    "chain",
)
"""What a `Misbehaviour` can be (see its docstring)."""


@dataclass(frozen=True)
class Misbehaviour:
    """Something a peer sent that shows misbehaviour, with the bytes that show it.

    `kind`: `malformed` (the record does not decode), `unasked` (an entry we did not ask
    for: its id does not match the request), `bad_signature`, `bad_manifest` (the manifest
    does not hash to the signed payload digest or contradicts the signed size), `invalid`
    (another arrival check), `equivocation` (a second header for one author and seq;
    `proof` holds both), `chain` (prev does not continue the author's chain). `wire` is the
    entry's bytes as received, `manifest` the manifest bytes sent with it.
    """

    kind: str
    entry_id: bytes
    wire: bytes
    detail: str
    manifest: bytes = b""
    proof: EquivocationProof | None = None


@dataclass
class Checked:
    """Records sorted by the arrival checks (`misbehaviour` details the rejected ones)."""

    verified: list[Incoming] = field(default_factory=list)
    rejected: list[tuple[bytes, str]] = field(default_factory=list)
    deferred: list[bytes] = field(default_factory=list)
    misbehaviour: list[Misbehaviour] = field(default_factory=list)
    deferred_records: list[pb.EntryRecord] = field(default_factory=list)

    def reject(self, m: Misbehaviour, reason: str) -> None:
        """Record a rejected record, with its reason and the bytes that show it."""
        self.rejected.append((m.entry_id, reason))
        self.misbehaviour.append(m)


@dataclass
class Outcome:
    """What applying verified entries did: in the set, held, refused, or waiting for chunks.

    `misbehaviour` lists refusals that prove something about the author: equivocations
    (with the proof) and broken chain links.
    """

    applied: list[bytes] = field(default_factory=list)
    held: list[bytes] = field(default_factory=list)
    refused: list[tuple[bytes, str]] = field(default_factory=list)
    incomplete: list[Incoming] = field(default_factory=list)
    misbehaviour: list[Misbehaviour] = field(default_factory=list)


class _ManifestSource:
    """PayloadSource for apply: manifests from the transfer; chunks must already be local."""

    def __init__(self, items: Iterable[Incoming]) -> None:
        self.manifests: dict[bytes, Manifest] = {}
        self.chunks: dict[bytes, bytes] = {}
        for i in items:
            if i.manifest is None:
                continue
            self.manifests[i.manifest.digest] = i.manifest
            for ref, data in zip(i.manifest.chunks, i.chunks):
                self.chunks[ref.digest] = data

    def get_manifest(self, payload_digest: bytes) -> Manifest:
        try:
            return self.manifests[payload_digest]
        except KeyError:
            raise NotFoundError(f"payload {payload_digest.hex()}: no manifest received") from None

    def read_chunk(self, digest: bytes) -> bytes:
        """A chunk that came inline with its record (apply checks its digest and size)."""
        try:
            return self.chunks[digest]
        except KeyError:
            raise NotFoundError(f"chunk {digest.hex()} has not been received yet") from None


INLINE_PAYLOAD_MAX = 4096
"""A payload of at most this many bytes travels inside its EntryRecord (no FetchChunks)."""


def _inline_chunks(manifest: Manifest, chunks: Sequence[bytes]) -> tuple[bytes, ...]:
    """Inline chunks kept only when they fit the manifest's shape (digests are checked when
    the entry is applied); anything else is ignored and the chunks are fetched as usual."""
    refs = manifest.chunks
    if manifest.size > INLINE_PAYLOAD_MAX or len(chunks) != len(refs):
        return ()
    if any(len(c) != r.size for c, r in zip(chunks, refs)):
        return ()
    return tuple(chunks)


def record_of(item: Incoming) -> pb.EntryRecord:
    """The wire record of an entry we send: header, manifest, inline chunks."""
    return pb.EntryRecord(
        entry=item.entry.to_bytes(),
        manifest=item.manifest.to_bytes() if item.manifest is not None else b"",
        chunks=item.chunks,
    )


def inline_payload(store: NodeStore, manifest: Manifest | None) -> tuple[bytes, ...]:
    """A tiny payload's chunks, to send inline with its record (empty when too large or not
    all stored)."""
    if manifest is None or not manifest.chunks or manifest.size > INLINE_PAYLOAD_MAX:
        return ()
    try:
        return tuple(store.read_chunk(ref.digest) for ref in manifest.chunks)
    except CrdtdError:
        return ()


def sort_for_apply(items: Iterable[Incoming]) -> list[Incoming]:
    """Membership first, then revocations, removals, evidence, contributions; chains in order."""
    return sorted(
        items, key=lambda i: (JOIN_ORDER[i.entry.kind], i.entry.author, i.entry.seq, i.id)
    )


class Receiver:
    """Verifies and applies what a peer sends, against one E4State."""

    def __init__(self, state: E4State, config: SyncConfig | None = None) -> None:
        self.state = state
        self.store = state.store
        self.config = config or SyncConfig()

    # -- headers -----------------------------------------------------------------------------

    def keyring(self, records: Sequence[Entry]) -> dict[bytes, list[PublicKeys]]:
        """Public keys of every author we can check now: the admin, current members, and
        members admitted by a valid admin-signed membership entry among `records`."""
        ring: dict[bytes, list[PublicKeys]] = {self.state.admin.key_id: [self.state.admin]}
        for kid, keys in self.state.members().items():
            ring.setdefault(kid, []).append(keys)
        for e in records:
            if e.kind is not Kind.MEMBERSHIP or e.author != self.state.admin.key_id:
                continue
            try:
                e.verify_signatures(self.state.admin, self.state.policy)
            except SignatureError:
                continue
            body = e.as_membership()
            ring.setdefault(body.member, []).append(body.public_keys)
        return ring

    def check(
        self,
        records: Sequence[pb.EntryRecord],
        expected: Sequence[bytes] | set[bytes] | None,
        peer: str,
    ) -> Checked:
        """Decode and verify records before any payload moves.

        `expected` is the set of ids asked for (None for a push, where any id may come). An
        entry that is not what was asked for, does not verify, or carries a manifest that
        does not hash to its payload digest is *rejected* (provable misbehaviour); one whose
        author we cannot check yet (its membership entry has not reached us) is *deferred*
        and asked for again in a later session.
        """
        asked = (
            None if expected is None else expected if isinstance(expected, set) else set(expected)
        )
        decoded: list[tuple[Entry, bytes, bytes]] = []
        inline: dict[bytes, tuple[bytes, ...]] = {}
        originals: dict[bytes, pb.EntryRecord] = {}
        checked = Checked()
        for i, rec in enumerate(records):
            wire, manifest = bytes(rec.entry), bytes(rec.manifest)
            try:
                e = Entry.from_bytes(wire)
            except ValidationError as exc:
                why = f"peer {peer}: record {i}: {exc}"
                checked.reject(Misbehaviour("malformed", b"", wire, str(exc), manifest), why)
                continue
            if asked is not None and e.id not in asked:
                why = (
                    f"peer {peer}: sent entry {e.id.hex()} that was not asked for "
                    "(id does not match the request)"
                )
                checked.reject(Misbehaviour("unasked", e.id, wire, why, manifest), why)
                continue
            decoded.append((e, wire, manifest))
            originals[e.id] = rec
            if rec.chunks:
                inline[e.id] = tuple(rec.chunks)
        ring = self.keyring([e for e, _, _ in decoded])
        seen: set[bytes] = set()
        unique = []
        for rec_parts in decoded:
            if rec_parts[0].id not in seen:
                seen.add(rec_parts[0].id)
                unique.append(rec_parts)
        self._verify_signatures(unique, ring)
        for e, wire, raw_manifest in unique:
            try:
                got = self._verify(e, raw_manifest, ring)
                chunks = inline.get(e.id, ())
                if chunks and got.manifest is not None:
                    got = Incoming(e, got.manifest, _inline_chunks(got.manifest, chunks))
                checked.verified.append(got)
            except NotMemberError:
                checked.deferred.append(e.id)
                checked.deferred_records.append(originals[e.id])
            except ValidationError as exc:
                kind = (
                    "bad_signature"
                    if isinstance(exc, SignatureError)
                    else "bad_manifest"
                    if isinstance(exc, PayloadError)
                    else "invalid"
                )
                m = Misbehaviour(kind, e.id, wire, str(exc), raw_manifest)
                checked.reject(m, f"peer {peer}: {exc}")
        return checked

    def _verify_signatures(
        self, items: Sequence[tuple[Entry, bytes, bytes]], ring: dict[bytes, list[PublicKeys]]
    ) -> None:
        """Check signatures ahead of `_verify`, many at once in worker processes
        (`VerifiedSignatures.verify_all`); results land in the state's VerifiedSignatures, so
        neither `_verify` nor `E4State.apply_many` verifies the same bytes again."""
        if len(items) < VERIFY_AHEAD:
            return
        pairs = [(e, ring.get(e.author, ())) for e, _, _ in items]
        self.state.signatures.verify_all(pairs, self.state.policy)

    def _verify(
        self, e: Entry, raw_manifest: bytes, ring: dict[bytes, list[PublicKeys]]
    ) -> Incoming:
        where = f"entry {e.id.hex()}"
        candidates = ring.get(e.author)
        if not candidates:
            raise NotMemberError(f"{where}: author {e.author.hex()} is not a federation member")
        error: SignatureError | None = None
        for keys in candidates:
            try:
                self.state.signatures.verify(e, keys, self.state.policy)
                error = None
                break
            except SignatureError as exc:
                error = exc
        if error is not None:
            raise error
        if e.kind is not Kind.CONTRIBUTION:
            return Incoming(e, None)
        body = e.as_contribution()
        if raw_manifest:
            try:
                manifest = Manifest.from_bytes(raw_manifest)
            except MalformedManifestError as exc:
                raise MalformedManifestError(f"{where}: {exc}") from None
            manifest.verify(body.payload_digest, body.payload_size)
            return Incoming(e, manifest)
        if self.store.has_manifest(body.payload_digest):
            return Incoming(e, self.store.get_manifest(body.payload_digest))
        return Incoming(e, None)

    # -- chunks ------------------------------------------------------------------------------

    def missing_chunks(self, items: Iterable[Incoming]) -> list[tuple[bytes, int]]:
        """(digest, size) of the chunks these entries need that are not stored, once each."""
        sizes: dict[bytes, int] = {}
        for item in items:
            for digest, size in item.chunk_refs():
                sizes.setdefault(digest, size)
        return [(d, sizes[d]) for d in self.store.missing_chunks(list(sizes))]

    async def store_chunks(
        self, pieces: AsyncIterator[pb.ChunkPiece], expected: dict[bytes, int], peer: str
    ) -> set[bytes]:
        """Assemble pieces into chunks and store each (verified, durable) off the event loop,
        in a pool of `write_window` writer threads so the stream keeps flowing meanwhile.

        Pieces must come chunk by chunk, in order, for digests in `expected` (digest -> size).
        Every completed chunk is stored even when the stream breaks later, so the transfer
        resumes from the first chunk still missing. Returns the digests stored.
        """
        loop = asyncio.get_running_loop()
        stored: set[bytes] = set()
        pending: list[tuple[bytes, asyncio.Future[bytes]]] = []
        current: bytes | None = None
        parts: list[bytes] = []
        got = 0
        failure: BaseException | None = None

        async def drain(limit: int) -> None:
            nonlocal failure
            while len(pending) > limit:
                digest, fut = pending.pop(0)
                try:
                    await fut
                    stored.add(digest)
                except DigestMismatchError as exc:
                    failure = failure or ProtocolError(f"peer {peer}: {exc}")

        writers = ThreadPoolExecutor(self.config.write_window, thread_name_prefix="chunk-writer")
        try:
            async for piece in pieces:
                digest = bytes(piece.digest)
                if current is None:
                    if digest not in expected or digest in stored:
                        raise ProtocolError(f"peer {peer}: sent chunk {digest.hex()} not asked for")
                    if piece.offset != 0:
                        raise ProtocolError(
                            f"peer {peer}: chunk {digest.hex()} starts at offset {piece.offset}"
                        )
                    current, parts, got = digest, [], 0
                elif digest != current:
                    raise ProtocolError(
                        f"peer {peer}: chunk {current.hex()} interrupted by {digest.hex()}"
                    )
                if piece.offset != got:
                    raise ProtocolError(
                        f"peer {peer}: chunk {digest.hex()} piece at offset {piece.offset}, "
                        f"expected {got}"
                    )
                data = piece.data  # upb copies the field on every access: read it once
                if len(data) > self.config.piece_size:
                    raise ProtocolError(
                        f"peer {peer}: piece of {len(data)} bytes exceeds {self.config.piece_size}"
                    )
                parts.append(data)
                got += len(data)
                if got > expected[digest] or got > CHUNK_SIZE:
                    raise ProtocolError(
                        f"peer {peer}: chunk {digest.hex()} longer than its {expected[digest]} bytes"
                    )
                if not piece.last:
                    continue
                if got != expected[digest]:
                    raise ProtocolError(
                        f"peer {peer}: chunk {digest.hex()} ended at {got} of "
                        f"{expected[digest]} bytes"
                    )
                chunk = b"".join(parts)
                parts, current = [], None
                fut = loop.run_in_executor(writers, self.store.put_chunk, chunk, digest)
                pending.append((digest, fut))
                await drain(self.config.write_window)
                if failure is not None:
                    raise failure
        finally:
            await drain(0)
            writers.shutdown(wait=False)
        if failure is not None:
            raise failure
        return stored

    # -- applying ----------------------------------------------------------------------------

    async def apply(self, items: Sequence[Incoming], per_commit: int | None = None) -> Outcome:
        """Apply entries in batches of `per_commit` (default `apply_batch`; one durable
        transaction each, every entry validated on its own), retrying those refused while
        others still go in.

        `applied` lists what entered the set (including held entries it released), `held`
        what waits for its predecessor. Contributions whose chunks are not all stored come
        back in `incomplete`; an entry whose payload is already erased here is accepted as a
        tombstone without its chunks.
        """
        source = _ManifestSource(items)
        todo = sort_for_apply(items)
        outcome = Outcome()
        errors: dict[bytes, ValidationError] = {}
        incomplete: dict[bytes, Incoming] = {}
        step = per_commit or self.config.apply_batch
        while todo:
            left: list[Incoming] = []
            for start in range(0, len(todo), step):
                batch = todo[start : start + step]
                results = await asyncio.to_thread(
                    self.state.apply_many, [i.entry for i in batch], source
                )
                self._sort_results(batch, results, outcome, errors, incomplete, left)
            if len(left) == len(todo):
                break
            todo = left
        outcome.refused.extend((i, str(errors[i])) for i in sorted(errors))
        by_id = {item.id: item for item in items}
        for i in sorted(errors):
            err = errors[i]
            wire = by_id[i].entry.to_bytes()
            if isinstance(err, EquivocationError):
                proof = err.proof if isinstance(err.proof, EquivocationProof) else None
                outcome.misbehaviour.append(
                    Misbehaviour("equivocation", i, wire, str(err), b"", proof)
                )
            elif isinstance(err, ChainError):
                outcome.misbehaviour.append(Misbehaviour("chain", i, wire, str(err)))
        outcome.incomplete = [incomplete[i] for i in sorted(incomplete)]
        return outcome

    @staticmethod
    def _sort_results(
        batch: Sequence[Incoming],
        results: Sequence[ApplyResult | ValidationError],
        outcome: Outcome,
        errors: dict[bytes, ValidationError],
        incomplete: dict[bytes, Incoming],
        left: list[Incoming],
    ) -> None:
        """File one committed batch's results: applied, held, waiting for chunks, or refused
        (to be retried in the next pass)."""
        for item, result in zip(batch, results):
            if isinstance(result, MissingPayloadError):
                incomplete[item.id] = item
                errors.pop(item.id, None)
                continue
            if isinstance(result, ValidationError):
                errors[item.id] = result
                left.append(item)
                continue
            incomplete.pop(item.id, None)
            errors.pop(item.id, None)
            if result.status is ApplyStatus.HELD:
                outcome.held.append(item.id)
            elif result.status is not ApplyStatus.DUPLICATE:
                outcome.applied.append(item.id)
            outcome.applied.extend(result.released)

    def _serve_read(self, digest: bytes) -> bytes | None:
        """A chunk to serve: a file chunk is not re-hashed (see `read_chunk`), only its length
        checked; an inline chunk is small and read verified."""
        try:
            data = self.store.chunks.read(digest, verify=False)
        except NotFoundError:
            return self.store.read_chunk(digest)
        return data if 0 < len(data) <= CHUNK_SIZE else None

    async def read_chunk(self, digest: bytes) -> bytes | None:
        """A stored chunk's bytes to send, or None when absent, corrupt or implausibly sized.

        File chunks are served without hashing them again: the store verified each one when
        it was written, and every receiver verifies each chunk against the digest it asked
        for before storing it, so a file damaged on disk since is refused there and never
        spreads (`crdtd fsck` finds it here). Hashing on both sides doubled the CPU cost of
        a transfer.
        """
        try:
            return await asyncio.to_thread(self._serve_read, digest)
        except CrdtdError:
            return None


async def pieces_of(
    receiver: Receiver, digests: Sequence[bytes], piece_size: int
) -> AsyncIterator[pb.ChunkPiece]:
    """Stream stored chunks as pieces, reading the next chunk while this one is sent.

    Chunks we do not hold (erased meanwhile, or found corrupt) are skipped; the receiver
    notices them missing and asks again later or elsewhere.
    """
    if not digests:
        return
    ahead: asyncio.Task[bytes | None] = asyncio.ensure_future(receiver.read_chunk(digests[0]))
    try:
        for i, digest in enumerate(digests):
            data = await ahead
            if i + 1 < len(digests):
                ahead = asyncio.ensure_future(receiver.read_chunk(digests[i + 1]))
            if data is None:
                continue
            view = memoryview(data)
            for off in range(0, len(data), piece_size):
                piece = view[off : off + piece_size]
                yield pb.ChunkPiece(
                    digest=digest,
                    offset=off,
                    data=bytes(piece),
                    last=off + piece_size >= len(data),
                )
    finally:
        if not ahead.done():
            ahead.cancel()
