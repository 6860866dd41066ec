"""LocalPeer: the answering side of crdtd.v1.Peer as plain logic over one E4State.

Every method takes the protobuf request and a `Caller` (session token, TLS key id) and
returns protobuf replies or raises typed crdtd errors; the gRPC servicer and the in-process
transport are adapters around it. Events the gossip layer cares about (a peer completed a
handshake, a peer notified us, entries arrived by push, a peer sent something that shows
misbehaviour) go to a `PeerEvents` object.

An optional `relay_filter` keeps entries out of what this node serves: FetchEntries answers
a filtered id as `unknown`, exactly as if it were not held. The Merkle digest still covers
every id held, so nodes that filter differently keep different roots; the daemon therefore
passes none (gating decides what is merged, not what is replicated: docs/trust.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from crdtd.errors import NotFoundError, ProtocolError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.state.e4 import JOIN_ORDER, E4State
from crdtd.state.entry import Entry, Kind
from crdtd.store.chunks import Manifest
from crdtd.store.store import NodeStore
from crdtd.sync.config import SyncConfig
from crdtd.sync.handshake import HandshakeServer, Identity, PeerIdentity, Session
from crdtd.sync.receive import (
    INLINE_PAYLOAD_MAX,
    Incoming,
    Misbehaviour,
    Receiver,
    inline_payload,
    pieces_of,
)
from crdtd.sync.reconcile import DigestExchange, exchange_for
from crdtd.sync.transport import Caller

MAX_IDS_PER_FETCH = 100_000
MAX_CHUNKS_PER_FETCH = 100_000
SERVE_GROUP = 256
"""Entries looked up per query when serving FetchEntries."""


class PeerEvents(Protocol):
    """Callbacks from the answering side into gossip and membership."""

    def peer_seen(self, peer: PeerIdentity) -> None:
        """A peer completed a handshake with us (its address and peer list are news)."""

    def notified(self, peer: PeerIdentity, root: bytes) -> bool:
        """A peer says it has new entries; return True when we will sync with it."""

    def received(self, ids: Sequence[bytes], peer: PeerIdentity) -> None:
        """Entries a peer pushed to us went into the state."""

    def misbehaved(self, peer: PeerIdentity, items: Sequence[Misbehaviour]) -> None:
        """A peer offered or pushed records that show misbehaviour (see `Misbehaviour`)."""


class NoEvents:
    """PeerEvents that ignores everything."""

    def peer_seen(self, peer: PeerIdentity) -> None:
        return None

    def notified(self, peer: PeerIdentity, root: bytes) -> bool:
        return False

    def received(self, ids: Sequence[bytes], peer: PeerIdentity) -> None:
        return None

    def misbehaved(self, peer: PeerIdentity, items: Sequence[Misbehaviour]) -> None:
        return None


@dataclass
class ServeStats:
    """Counters of what this node served (chunks and bytes) and received by push."""

    chunks_served: int = 0
    chunk_bytes_served: int = 0
    entries_served: int = 0
    entries_received: int = 0


class LocalPeer:
    """Answers Peer calls from the local state."""

    def __init__(
        self,
        state: E4State,
        identity: Identity,
        config: SyncConfig | None = None,
        exchange: DigestExchange | None = None,
        events: PeerEvents | None = None,
        known_peers: Callable[[], Sequence[tuple[str, bytes]]] = tuple,
        clock: Callable[[], float] = time.monotonic,
        relay_filter: Callable[[Entry], bool] | None = None,
    ) -> None:
        self.state = state
        self.relay_filter = relay_filter
        self.config = config or SyncConfig()
        self.exchange = exchange or exchange_for(self.config)
        self.events: PeerEvents = events or NoEvents()
        self.handshakes = HandshakeServer(identity, state, self.config, clock, known_peers)
        self.receiver = Receiver(state, self.config)
        self.stats = ServeStats()

    def _session(self, caller: Caller) -> Session:
        return self.handshakes.session(caller.session, caller.tls_key_id)

    async def handshake(self, caller: Caller, req: pb.HandshakeRequest) -> pb.HandshakeResponse:
        return self.handshakes.hello(req, caller.tls_key_id)

    async def prove(self, caller: Caller, req: pb.ProveRequest) -> pb.ProveResponse:
        session = self.handshakes.prove(req, caller.tls_key_id)
        self.events.peer_seen(session.peer)
        return pb.ProveResponse(session=session.token, ttl_ms=int(self.config.session_ttl * 1000))

    async def digest(self, caller: Caller, req: pb.DigestRequest) -> pb.DigestResponse:
        self._session(caller)
        return await asyncio.to_thread(self.exchange.answer, self.state.store, req)

    async def fetch_entries(
        self, caller: Caller, req: pb.FetchEntriesRequest
    ) -> AsyncIterator[pb.EntryBatch]:
        self._session(caller)
        ids = [bytes(i) for i in req.ids]
        if len(ids) > MAX_IDS_PER_FETCH:
            raise ProtocolError(f"fetch of {len(ids)} ids exceeds {MAX_IDS_PER_FETCH}")
        unknown: list[bytes] = []
        if req.chain_order and self.config.chain_order:
            ids, unknown = await asyncio.to_thread(
                chain_ordered, self.state.store, ids, req.limit or len(ids)
            )
        start = 0
        while start < len(ids) or start == 0:
            batch, start = await asyncio.to_thread(self._batch, ids, start)
            if unknown:
                batch.unknown.extend(unknown)
                unknown = []
            self.stats.entries_served += len(batch.records)
            yield batch
            if start >= len(ids):
                break

    def _batch(self, ids: list[bytes], start: int) -> tuple[pb.EntryBatch, int]:
        """Records from ids[start:] up to about batch_bytes; returns the batch and next index.

        Entries go out as stored (no decoding unless the relay filter needs it), with their
        manifests and, for payloads of at most INLINE_PAYLOAD_MAX bytes, their chunks; looked
        up SERVE_GROUP ids at a time."""
        store = self.state.store
        batch = pb.EntryBatch()
        size = 0
        i = start
        while i < len(ids) and (size < self.config.batch_bytes or not batch.records):
            group = ids[i : i + SERVE_GROUP]
            for rec_id, rec in zip(group, self._records(store, group)):
                i += 1
                if rec is None:
                    batch.unknown.append(rec_id)
                    continue
                batch.records.append(rec)
                size += len(rec.entry) + len(rec.manifest) + sum(len(c) for c in rec.chunks)
                if size >= self.config.batch_bytes:
                    break
        return batch, i

    def _records(self, store: NodeStore, group: Sequence[bytes]) -> list[pb.EntryRecord | None]:
        """The wire record of each id (None: not held, or held back by the relay filter)."""
        rows = store.entries_raw(group)
        manifests = store.manifests_raw(sorted({d for _, d in rows.values() if d is not None}))
        tiny = {
            d: Manifest.from_bytes(m) for d, (m, n) in manifests.items() if n <= INLINE_PAYLOAD_MAX
        }
        chunks = store.inline_chunks(sorted({r.digest for m in tiny.values() for r in m.chunks}))
        out: list[pb.EntryRecord | None] = []
        for entry_id in group:
            row = rows.get(entry_id)
            if row is None:
                out.append(None)
                continue
            raw, digest = row
            if self.relay_filter is not None and not self.relay_filter(Entry.from_bytes(raw)):
                out.append(None)
                continue
            rec = pb.EntryRecord(entry=raw)
            if digest is not None and digest in manifests:
                rec.manifest = manifests[digest][0]
                small = tiny.get(digest)
                if small is not None and all(r.digest in chunks for r in small.chunks):
                    rec.chunks.extend(chunks[r.digest] for r in small.chunks)
            out.append(rec)
        return out

    async def fetch_chunks(
        self, caller: Caller, req: pb.FetchChunksRequest
    ) -> AsyncIterator[pb.ChunkPiece]:
        self._session(caller)
        digests = [bytes(d) for d in req.digests]
        if len(digests) > MAX_CHUNKS_PER_FETCH:
            raise ProtocolError(f"fetch of {len(digests)} chunks exceeds {MAX_CHUNKS_PER_FETCH}")
        async for piece in pieces_of(self.receiver, digests, self.config.piece_size):
            if piece.last:
                self.stats.chunks_served += 1
            self.stats.chunk_bytes_served += len(piece.data)
            yield piece

    async def offer(self, caller: Caller, req: pb.OfferRequest) -> pb.OfferResponse:
        session = self._session(caller)
        checked = await asyncio.to_thread(
            self.receiver.check, req.records, None, session.peer.short
        )
        outcome = await self.receiver.apply(checked.verified)
        wanted = outcome.incomplete
        missing = self.receiver.missing_chunks(wanted)
        self._received(outcome.applied, session.peer)
        self._misbehaved(session.peer, checked.misbehaviour + outcome.misbehaviour)
        unknown = [
            (i, f"entry {i.hex()}: author is not a member known here") for i in checked.deferred
        ]
        return pb.OfferResponse(
            applied=outcome.applied,
            rejected=[
                pb.Rejection(id=i, reason=r)
                for i, r in checked.rejected + unknown + outcome.refused
            ],
            wanted=[w.id for w in wanted],
            missing_chunks=[d for d, _ in missing],
        )

    async def push(
        self, caller: Caller, messages: AsyncIterator[pb.PushMessage]
    ) -> pb.PushResponse:
        session = self._session(caller)
        peer = session.peer.short
        records: list[pb.EntryRecord] = []
        first_piece: pb.ChunkPiece | None = None
        async for msg in messages:
            kind = msg.WhichOneof("item")
            if kind == "record":
                records.append(msg.record)
                continue
            if kind == "piece":
                first_piece = msg.piece
                break
            raise ProtocolError(f"peer {peer}: push message carries nothing")
        checked = await asyncio.to_thread(self.receiver.check, records, None, peer)
        if checked.rejected:
            self._misbehaved(session.peer, checked.misbehaviour)
            raise ProtocolError(
                f"peer {peer}: pushed {len(checked.rejected)} entries that do not verify; "
                f"first: {checked.rejected[0][1]}"
            )
        items = checked.verified
        expected: dict[bytes, int] = {}
        for item in items:
            expected.update(item.chunk_refs())

        async def rest() -> AsyncIterator[pb.ChunkPiece]:
            if first_piece is None:
                return
            yield first_piece
            async for msg in messages:
                if msg.WhichOneof("item") != "piece":
                    raise ProtocolError(f"peer {peer}: entry record after chunk pieces")
                yield msg.piece

        await self.receiver.store_chunks(rest(), expected, peer)
        outcome = await self.receiver.apply(items)
        self._received(outcome.applied, session.peer)
        self._misbehaved(session.peer, outcome.misbehaviour)
        return pb.PushResponse(
            applied=outcome.applied,
            rejected=[pb.Rejection(id=i, reason=r) for i, r in outcome.refused],
            incomplete=[i.id for i in outcome.incomplete] + checked.deferred,
        )

    async def notify(self, caller: Caller, req: pb.NotifyRequest) -> pb.NotifyResponse:
        session = self._session(caller)
        if bytes(req.root) == self.state.merkle_root():
            return pb.NotifyResponse(will_sync=False)
        return pb.NotifyResponse(will_sync=self.events.notified(session.peer, bytes(req.root)))

    def _received(self, ids: Sequence[bytes], peer: PeerIdentity) -> None:
        if ids:
            self.stats.entries_received += len(ids)
            self.events.received(ids, peer)

    def _misbehaved(self, peer: PeerIdentity, items: Sequence[Misbehaviour]) -> None:
        if items:
            self.events.misbehaved(peer, items)


def chain_ordered(
    store: NodeStore, ids: Sequence[bytes], limit: int
) -> tuple[list[bytes], list[bytes]]:
    """(the first `limit` of `ids` held here in apply order, the ids not held).

    Apply order is `sort_for_apply`'s: membership, revocations, removals, evidence,
    contributions, each author's chain by seq, so a receiver applying batches as they arrive
    never waits for a predecessor that is still to come."""
    keys = store.chain_keys(ids)
    order = {int(k): v for k, v in JOIN_ORDER.items()}
    held = sorted(keys, key=lambda i: (order[keys[i][0]], keys[i][1], keys[i][2], i))
    return held[:limit], [i for i in ids if i not in keys]


def records_for(
    state: E4State, ids: Sequence[bytes], relay_filter: Callable[[Entry], bool] | None = None
) -> list[Incoming]:
    """Our own stored entries (with manifests) to offer a peer; unknown ids, and those
    `relay_filter` holds back, are skipped."""
    store = state.store
    out = []
    for entry_id in ids:
        try:
            entry = store.get_entry(entry_id)
        except NotFoundError:
            continue
        if relay_filter is not None and not relay_filter(entry):
            continue
        out.append(_with_manifest(store, entry))
    return out


def _with_manifest(store: NodeStore, entry: Entry) -> Incoming:
    """An entry of ours as sent: with its payload manifest, and a tiny payload inline."""
    if entry.kind is not Kind.CONTRIBUTION:
        return Incoming(entry, None)
    digest = entry.as_contribution().payload_digest
    if not store.has_manifest(digest):
        return Incoming(entry, None)
    manifest = store.get_manifest(digest)
    return Incoming(entry, manifest, inline_payload(store, manifest))
