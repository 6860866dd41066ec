"""Receiving entries from a peer: verify headers on arrival, store chunks, apply per entry.

Used for both directions of a session (what we pull, and what a peer pushes to us). A record
is checked before any of its payload moves: the entry decodes strictly, its id is the one we
asked for, its signatures verify under the author's membership keys (known here, or admitted
by an admin-signed membership entry in the same transfer) and its manifest hashes to the
payload digest. Chunks are verified by `put_chunk` as they land and stay on disk, so a cut
transfer resumes with only the chunks still missing. Each entry is then applied on its own
through `E4State.apply` (one durable transaction per entry).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

from crdtd.crypto.schemes import PublicKeys
from crdtd.errors import (
    CrdtdError,
    DigestMismatchError,
    MalformedManifestError,
    MissingPayloadError,
    NotFoundError,
    NotMemberError,
    ProtocolError,
    SignatureError,
    ValidationError,
)
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.state.e4 import ApplyStatus, E4State
from crdtd.state.entry import Entry, Kind
from crdtd.store.chunks import CHUNK_SIZE, Manifest
from crdtd.sync.config import SyncConfig

JOIN_ORDER = {
    Kind.MEMBERSHIP: 0,
    Kind.REVOCATION: 1,
    Kind.REMOVAL: 2,
    Kind.EVIDENCE: 3,
    Kind.CONTRIBUTION: 4,
}
"""Apply order inside one transfer: who may sign first, then what erases, then the rest."""


@dataclass(frozen=True)
class Incoming:
    """A verified record: the entry and, for a contribution, its payload manifest."""

    entry: Entry
    manifest: Manifest | None

    @property
    def id(self) -> bytes:
        return self.entry.id

    def chunk_refs(self) -> list[tuple[bytes, int]]:
        """(digest, size) of every chunk its payload needs."""
        if self.manifest is None:
            return []
        return [(c.digest, c.size) for c in self.manifest.chunks]


@dataclass
class Checked:
    """Records sorted by the arrival checks."""

    verified: list[Incoming] = field(default_factory=list)
    rejected: list[tuple[bytes, str]] = field(default_factory=list)
    deferred: list[bytes] = field(default_factory=list)


@dataclass
class Outcome:
    """What applying verified entries did: in the set, held, refused, or waiting for chunks."""

    applied: list[bytes] = field(default_factory=list)
    held: list[bytes] = field(default_factory=list)
    refused: list[tuple[bytes, str]] = field(default_factory=list)
    incomplete: list[Incoming] = field(default_factory=list)


class _ManifestSource:
    """PayloadSource for apply: manifests from the transfer; chunks must already be local."""

    def __init__(self, items: Iterable[Incoming]) -> None:
        self.manifests = {i.manifest.digest: i.manifest for i in items if i.manifest is not None}

    def get_manifest(self, payload_digest: bytes) -> Manifest:
        try:
            return self.manifests[payload_digest]
        except KeyError:
            raise NotFoundError(f"payload {payload_digest.hex()}: no manifest received") from None

    def read_chunk(self, digest: bytes) -> bytes:
        raise NotFoundError(f"chunk {digest.hex()} has not been received yet")


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
        expected: Sequence[bytes] | None,
        peer: str,
    ) -> Checked:
        """Decode and verify records before any payload moves.

        `expected` is the set of ids asked for (None for a push, where any id may come). An
        entry that is not what was asked for, does not verify, or carries a manifest that
        does not hash to its payload digest is *rejected* (provable misbehaviour); one whose
        author we cannot check yet (its membership entry has not reached us) is *deferred*
        and asked for again in a later session.
        """
        asked = set(expected) if expected is not None else None
        decoded: list[tuple[Entry, bytes]] = []
        checked = Checked()
        for i, rec in enumerate(records):
            try:
                e = Entry.from_bytes(bytes(rec.entry))
            except ValidationError as exc:
                checked.rejected.append((b"", f"peer {peer}: record {i}: {exc}"))
                continue
            if asked is not None and e.id not in asked:
                checked.rejected.append(
                    (
                        e.id,
                        f"peer {peer}: sent entry {e.id.hex()} that was not asked for "
                        "(id does not match the request)",
                    )
                )
                continue
            decoded.append((e, bytes(rec.manifest)))
        ring = self.keyring([e for e, _ in decoded])
        seen: set[bytes] = set()
        for e, raw_manifest in decoded:
            if e.id in seen:
                continue
            seen.add(e.id)
            try:
                checked.verified.append(self._verify(e, raw_manifest, ring))
            except NotMemberError:
                checked.deferred.append(e.id)
            except ValidationError as exc:
                checked.rejected.append((e.id, f"peer {peer}: {exc}"))
        return checked

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
                e.verify_signatures(keys, self.state.policy)
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
        """Assemble pieces into chunks and store each (verified) off the event loop.

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
                if len(piece.data) > self.config.piece_size:
                    raise ProtocolError(
                        f"peer {peer}: piece of {len(piece.data)} bytes exceeds "
                        f"{self.config.piece_size}"
                    )
                parts.append(piece.data)
                got += len(piece.data)
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
                data = b"".join(parts)
                parts, current = [], None
                fut = loop.run_in_executor(None, self.store.put_chunk, data, digest)
                pending.append((digest, fut))
                await drain(self.config.write_window)
                if failure is not None:
                    raise failure
        finally:
            await drain(0)
        if failure is not None:
            raise failure
        return stored

    # -- applying ----------------------------------------------------------------------------

    async def apply(self, items: Sequence[Incoming]) -> Outcome:
        """Apply entries one by one (retrying those refused while others still go in).

        `applied` lists what entered the set (including held entries it released), `held`
        what waits for its predecessor. Contributions whose chunks are not all stored come
        back in `incomplete`; an entry whose payload is already erased here is accepted as a
        tombstone without its chunks.
        """
        source = _ManifestSource(items)
        todo = sort_for_apply(items)
        outcome = Outcome()
        errors: dict[bytes, str] = {}
        incomplete: dict[bytes, Incoming] = {}
        while todo:
            left: list[Incoming] = []
            for item in todo:
                try:
                    result = await asyncio.to_thread(self.state.apply, item.entry, source)
                except MissingPayloadError:
                    incomplete[item.id] = item
                    errors.pop(item.id, None)
                    continue
                except ValidationError as exc:
                    errors[item.id] = str(exc)
                    left.append(item)
                    continue
                incomplete.pop(item.id, None)
                errors.pop(item.id, None)
                if result.status is ApplyStatus.HELD:
                    outcome.held.append(item.id)
                elif result.status is not ApplyStatus.DUPLICATE:
                    outcome.applied.append(item.id)
                outcome.applied.extend(result.released)
            if len(left) == len(todo):
                break
            todo = left
        outcome.refused.extend((i, errors[i]) for i in sorted(errors))
        outcome.incomplete = [incomplete[i] for i in sorted(incomplete)]
        return outcome

    async def read_chunk(self, digest: bytes) -> bytes | None:
        """A stored chunk's bytes (verified), or None when absent or corrupt."""
        try:
            return await asyncio.to_thread(self.store.read_chunk, digest)
        except CrdtdError:
            return None


async def pieces_of(
    receiver: Receiver, digests: Sequence[bytes], piece_size: int
) -> AsyncIterator[pb.ChunkPiece]:
    """Stream stored chunks as pieces, reading the next chunk while this one is sent.

    Chunks we do not hold (erased meanwhile, or corrupt) are skipped; the receiver notices
    them missing and asks again later or elsewhere.
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
