"""One anti-entropy session with one peer, as plain logic over a PeerClient.

`Connection` runs the handshake and keeps the session token (re-handshaking once when the
peer forgot it). `AntiEntropySession.run` then:

1. reconciles digests (crdtd.sync.reconcile): which ids each side lacks, by rateless IBLT
   when the peer offered "riblt/1" in the handshake, else by Merkle descent;
2. pulls: fetches the missing headers, verifies them on arrival, applies what needs no
   payload, fetches only the chunks not already stored, applies the rest (one durable
   transaction per batch of up to `apply_batch_max` entries);
3. pushes: offers our entries the peer lacks, and streams only the chunks it asks for
   (except those the relay filter holds back: contributions of authors we gate).

A transfer cut at any point leaves every completed chunk stored on the receiving side, so
the next session asks only for what is still missing.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from crdtd.errors import HandshakeError, PeerRefusedError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.state.e4 import E4State
from crdtd.state.entry import Entry, Kind
from crdtd.sync.config import CHAIN_ORDER_CAPABILITY, SyncConfig
from crdtd.sync.handshake import (
    NONCE_SIZE,
    Identity,
    PeerIdentity,
    client_hello,
    verify_server_hello,
)
from crdtd.sync.peer import MAX_IDS_PER_FETCH, records_for
from crdtd.sync.receive import (
    Checked,
    Incoming,
    Misbehaviour,
    Outcome,
    Receiver,
    pieces_of,
    record_of,
    sort_for_apply,
)
from crdtd.sync.reconcile import DigestExchange, Exchanges
from crdtd.sync.transport import PeerClient, TransferStats

IDS_PER_FETCH = 4096


class Connection:
    """An authenticated channel to one peer: handshake once, reuse the session token."""

    def __init__(
        self,
        client: PeerClient,
        identity: Identity,
        state: E4State,
        config: SyncConfig | None = None,
        known_peers: Callable[[], Sequence[tuple[str, bytes]]] = tuple,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.identity = identity
        self.state = state
        self.config = config or SyncConfig()
        self.known_peers = known_peers
        self.clock = clock
        self.peer: PeerIdentity | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    @property
    def address(self) -> str:
        return self.client.address

    async def ensure(self, expected_key_id: bytes | None = None) -> PeerIdentity:
        """Handshake unless a live session exists; returns the verified peer."""
        async with self._lock:  # a probe and a session may ask at once: one handshake
            if self.peer is not None and self.state.is_revoked(self.peer.key_id):
                revoked = self.peer.key_id
                self.reset()
                raise PeerRefusedError(
                    f"peer {self.address}: key {revoked.hex()} is revoked in this federation"
                )
            if self.peer is not None and self.clock() < self._expires:
                return self.peer
            return await self._handshake(expected_key_id)

    async def _handshake(self, expected_key_id: bytes | None) -> PeerIdentity:
        self.client.set_session(None)
        hello = client_hello(
            self.identity,
            secrets.token_bytes(NONCE_SIZE),
            list(self.known_peers()),
            self.config.max_peers_exchanged,
            self.config.capabilities,
        )
        reply = await self.client.handshake(hello)
        peer, proof = verify_server_hello(
            self.identity, hello, reply, self.state, self.address, expected_key_id
        )
        session = await self.client.prove(proof)
        if not session.session:
            raise HandshakeError(f"peer {self.address}: Prove returned no session token")
        ttl = min(session.ttl_ms / 1000 or self.config.session_ttl, self.config.session_ttl)
        self.client.set_session(bytes(session.session))
        self.peer = peer
        self._expires = self.clock() + 0.9 * ttl
        return peer

    def reset(self) -> None:
        """Forget the session (the next call handshakes again)."""
        self.peer = None
        self.client.set_session(None)


@dataclass
class SessionResult:
    """What one session did.

    `rejected`: entries the peer sent that failed the arrival checks (wrong id, bad signature,
    manifest not matching its digest): provable misbehaviour, nothing of them applied.
    `refused`: verified entries the state refused (e.g. revoked author, broken chain).
    `deferred`: entries whose author we cannot check yet; asked for again later.
    `incomplete`: entries still missing chunks (the transfer resumes next session).
    `misbehaviour`: the rejected records and the refusals that prove something (equivocation,
    broken chain), with the bytes that show it (crdtd.node turns them into evidence).
    `unserved`: ids the digest exchange said the peer holds that it did not send (it may
    legitimately hold them back: a contribution of an author it gates is not relayed).
    """

    peer: PeerIdentity
    in_sync: bool
    digest_rounds: int = 0
    digest_bytes: int = 0
    digest_method: str = ""
    pulled: list[bytes] = field(default_factory=list)
    held: list[bytes] = field(default_factory=list)
    pushed: list[bytes] = field(default_factory=list)
    rejected: list[tuple[bytes, str]] = field(default_factory=list)
    refused: list[tuple[bytes, str]] = field(default_factory=list)
    deferred: list[bytes] = field(default_factory=list)
    incomplete: list[bytes] = field(default_factory=list)
    misbehaviour: list[Misbehaviour] = field(default_factory=list)
    unserved: list[bytes] = field(default_factory=list)
    chunks_fetched: int = 0
    chunks_pushed: int = 0
    stats: TransferStats = field(default_factory=TransferStats)
    seconds: float = 0.0

    @property
    def changed_here(self) -> bool:
        """True when this session added entries to our state."""
        return bool(self.pulled)


def _refused_items(items: Sequence[Incoming], outcome: Outcome) -> list[Incoming]:
    """The items `outcome` refused (to be offered once more at the end of the pull)."""
    ids = {i for i, _ in outcome.refused}
    return [i for i in items if i.id in ids] if ids else []


async def _checked_so_far(queue: asyncio.Queue[Checked | None], most: int) -> list[Checked]:
    """The next checked group (waiting for one) and every other one already checked, up to
    `most` verified entries in all: what the next commit applies. Empty at the end (None
    queued); an end found after some groups is put back for the next call."""
    first = await queue.get()
    if first is None:
        return []
    parts, count = [first], len(first.verified)
    while count < most and not queue.empty():
        part = queue.get_nowait()
        if part is None:
            queue.put_nowait(None)  # room: just taken
            break
        parts.append(part)
        count += len(part.verified)
    return parts


class AntiEntropySession:
    """Push-pull anti-entropy between our state and one connected peer.

    `relay_filter(entry)` False keeps an entry of ours out of what we offer (the daemon
    passes none: it replicates every entry it holds).
    The digest exchange is chosen per peer from the handshake's shared capabilities unless
    `exchange` fixes one.
    """

    def __init__(
        self,
        state: E4State,
        config: SyncConfig | None = None,
        exchange: DigestExchange | None = None,
        relay_filter: Callable[[Entry], bool] | None = None,
    ) -> None:
        self.state = state
        self.config = config or SyncConfig()
        self.exchange = exchange
        self.exchanges = Exchanges(self.config)
        self.receiver = Receiver(state, self.config)
        self.relay_filter = relay_filter

    async def run(self, conn: Connection, pull: bool = True, push: bool = True) -> SessionResult:
        """Reconcile, pull what we lack, push what the peer lacks."""
        try:
            return await self._run(conn, pull, push)
        except HandshakeError:
            if conn.peer is None:
                raise
            conn.reset()  # the peer restarted or expired our token: one fresh handshake
            return await self._run(conn, pull, push)

    async def _run(self, conn: Connection, pull: bool, push: bool) -> SessionResult:
        started = time.perf_counter()
        before = conn.client.stats.snapshot()
        peer = await conn.ensure()
        mark = conn.client.stats.bytes_total
        exchange = self.exchange or self.exchanges.for_peer(peer.capabilities)
        diff = await exchange.reconcile(self.state.store, conn.client.digest)
        result = SessionResult(
            peer, diff.in_sync, diff.rounds, conn.client.stats.bytes_total - mark, diff.method
        )
        if pull and diff.missing_here:
            wanted = await asyncio.to_thread(self._not_held, diff.missing_here)
            if wanted and CHAIN_ORDER_CAPABILITY in peer.capabilities:
                await self._pull_ordered(conn, wanted[:MAX_IDS_PER_FETCH], result)
            elif wanted:
                await self._pull(conn, wanted[: self.config.max_entries_per_session], result)
        if push and diff.missing_there:
            await self._push(conn, diff.missing_there, result)
        after = conn.client.stats
        result.stats = TransferStats(
            after.calls - before.calls,
            after.bytes_sent - before.bytes_sent,
            after.bytes_received - before.bytes_received,
        )
        result.seconds = time.perf_counter() - started
        return result

    # -- pull --------------------------------------------------------------------------------

    def _not_held(self, ids: Sequence[bytes]) -> list[bytes]:
        """The ids not already waiting here for their predecessor: a chain longer than
        max_entries_per_session then arrives over several sessions (each pulls what the
        last did not) instead of the same first ids again."""
        held = self.state.store.held_among(ids)
        return [i for i in ids if i not in held] if held else list(ids)

    async def _pull(self, conn: Connection, ids: Sequence[bytes], result: SessionResult) -> None:
        peer = conn.peer.short if conn.peer else conn.address
        checked = await self._fetch_and_check(conn.client, ids, peer)
        result.rejected.extend(checked.rejected)
        result.deferred.extend(checked.deferred)
        result.misbehaviour.extend(checked.misbehaviour)
        got = {i.id for i in checked.verified} | set(checked.deferred)
        got |= {m.entry_id for m in checked.misbehaviour}
        result.unserved.extend(i for i in ids if i not in got)
        first = await self.receiver.apply(checked.verified, self.config.apply_batch_max)
        self._file(first, result)
        if first.incomplete:
            await self._complete(conn, first.incomplete, peer, result)

    async def _pull_ordered(
        self, conn: Connection, ids: Sequence[bytes], result: SessionResult
    ) -> None:
        """Pull with "chain-order/1": the peer answers in apply order, up to
        max_entries_per_session records, checked `apply_batch` at a time while the previous
        commit runs; each commit (one durable transaction) applies every group checked so
        far, up to `apply_batch_max` entries, while the next ones arrive and are checked.

        Records are checked with the keys known then; those deferred for want of their
        author's membership are checked once more at the end with every membership entry the
        transfer brought, entries refused are offered once more at the end (as the passes of
        `Receiver.apply` would), and chunks not inline are fetched last."""
        peer = conn.peer.short if conn.peer else conn.address
        asked = set(ids)
        request = pb.FetchEntriesRequest(
            ids=ids, chain_order=True, limit=self.config.max_entries_per_session
        )
        step = self.config.apply_batch
        most = max(step, self.config.apply_batch_max)
        groups: asyncio.Queue[list[pb.EntryRecord] | None] = asyncio.Queue(maxsize=2)
        checked: asyncio.Queue[Checked | None] = asyncio.Queue(maxsize=max(1, most // step))
        failures: list[Exception] = []
        unknown: list[bytes] = []

        async def fetch() -> None:
            group: list[pb.EntryRecord] = []
            try:
                async for batch in conn.client.fetch_entries(request):
                    unknown.extend(bytes(i) for i in batch.unknown)
                    group.extend(batch.records)
                    while len(group) >= step:
                        await groups.put(group[:step])
                        group = group[step:]
            except Exception as exc:  # the records that did arrive are still applied
                failures.append(exc)
            if group:
                await groups.put(group)
            await groups.put(None)

        async def check() -> None:
            try:
                while (group := await groups.get()) is not None:
                    part = await asyncio.to_thread(self.receiver.check, group, asked, peer)
                    await checked.put(part)
            except Exception as exc:
                failures.append(exc)
            await checked.put(None)

        later: list[pb.EntryRecord] = []
        members: list[pb.EntryRecord] = []
        retry: list[Incoming] = []  # refused, or deferred and verified at the end
        waiting: list[Incoming] = []
        tasks = [asyncio.create_task(fetch()), asyncio.create_task(check())]
        try:
            while parts := await _checked_so_far(checked, most):
                verified: list[Incoming] = []
                for part in parts:
                    result.rejected.extend(part.rejected)
                    result.misbehaviour.extend(part.misbehaviour)
                    later.extend(part.deferred_records)
                    verified.extend(part.verified)
                members.extend(record_of(i) for i in verified if i.entry.kind is Kind.MEMBERSHIP)
                outcome = await self.receiver.apply(verified, most)
                retry.extend(_refused_items(verified, outcome))
                waiting.extend(outcome.incomplete)
                result.pulled.extend(outcome.applied)
                result.held.extend(outcome.held)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if failures:
            raise failures[0]
        result.unserved.extend(unknown)
        if later:
            again = await asyncio.to_thread(self.receiver.check, later + members, asked, peer)
            result.rejected.extend(again.rejected)
            result.misbehaviour.extend(again.misbehaviour)
            result.deferred.extend(again.deferred)
            retry.extend(again.verified)
        if retry:
            last = await self.receiver.apply(retry)
            self._file(last, result)
            waiting.extend(last.incomplete)
        if waiting:
            await self._complete(conn, waiting, peer, result)

    @staticmethod
    def _file(outcome: Outcome, result: SessionResult) -> None:
        """Add what applying did to the session's result."""
        result.pulled.extend(outcome.applied)
        result.held.extend(outcome.held)
        result.refused.extend(outcome.refused)
        result.misbehaviour.extend(outcome.misbehaviour)

    async def _complete(
        self, conn: Connection, waiting: list[Incoming], peer: str, result: SessionResult
    ) -> None:
        """Fetch the chunks entries still wait for, then apply them."""
        missing = self.receiver.missing_chunks(waiting)
        if missing:
            expected = dict(missing)
            pieces = conn.client.fetch_chunks(
                pb.FetchChunksRequest(digests=[d for d, _ in missing])
            )
            stored = await self.receiver.store_chunks(pieces, expected, peer)
            result.chunks_fetched += len(stored)
        second = await self.receiver.apply(waiting)
        self._file(second, result)
        result.incomplete.extend(i.id for i in second.incomplete)

    async def _fetch_and_check(
        self, client: PeerClient, ids: Sequence[bytes], peer: str
    ) -> Checked:
        """Fetch the headers IDS_PER_FETCH at a time and check each group (decode, verify
        signatures, manifests) in worker threads while the peer serves the next one.

        A group is checked with the keys known then; records deferred for want of their
        author's membership are checked once more at the end, together with every
        membership entry the transfer brought."""
        groups: asyncio.Queue[tuple[Sequence[bytes], list[pb.EntryRecord]] | None]
        groups = asyncio.Queue(maxsize=2)

        async def fetch() -> None:
            try:
                for start in range(0, len(ids), IDS_PER_FETCH):
                    asked = ids[start : start + IDS_PER_FETCH]
                    records: list[pb.EntryRecord] = []
                    async for batch in client.fetch_entries(pb.FetchEntriesRequest(ids=asked)):
                        records.extend(batch.records)
                    await groups.put((asked, records))
            finally:
                await groups.put(None)

        task = asyncio.create_task(fetch())
        out = Checked()
        later: list[pb.EntryRecord] = []
        try:
            while (group := await groups.get()) is not None:
                asked, records = group
                part = await asyncio.to_thread(self.receiver.check, records, asked, peer)
                out.verified.extend(part.verified)
                out.rejected.extend(part.rejected)
                out.misbehaviour.extend(part.misbehaviour)
                later.extend(part.deferred_records)
            await task
        finally:
            if not task.done():
                task.cancel()
        if later:
            members = [record_of(i) for i in out.verified if i.entry.kind is Kind.MEMBERSHIP]
            again = await asyncio.to_thread(self.receiver.check, later + members, ids, peer)
            known = {i.id for i in out.verified}
            out.verified.extend(i for i in again.verified if i.id not in known)
            out.rejected.extend(again.rejected)
            out.misbehaviour.extend(again.misbehaviour)
            out.deferred.extend(again.deferred)
        return out

    # -- push --------------------------------------------------------------------------------

    async def _push(self, conn: Connection, ids: Sequence[bytes], result: SessionResult) -> None:
        client = conn.client
        items = sort_for_apply(
            await asyncio.to_thread(records_for, self.state, ids, self.relay_filter)
        )
        wanted: list[Incoming] = []
        missing: list[bytes] = []
        by_id = {i.id: i for i in items}
        for batch in self._offer_batches(items):
            reply = await client.offer(pb.OfferRequest(records=batch))
            result.pushed.extend(bytes(i) for i in reply.applied)
            wanted.extend(by_id[bytes(w)] for w in reply.wanted if bytes(w) in by_id)
            missing.extend(bytes(d) for d in reply.missing_chunks)
        if not wanted:
            return
        lacking = set(self.state.store.missing_chunks(missing))
        sendable = [d for d in dict.fromkeys(missing) if d not in lacking]

        async def messages() -> AsyncIterator[pb.PushMessage]:
            for item in wanted:
                yield pb.PushMessage(record=record_of(item))
            async for piece in pieces_of(self.receiver, sendable, self.config.piece_size):
                yield pb.PushMessage(piece=piece)

        pushed = await client.push(messages())
        result.chunks_pushed += len(sendable)
        result.pushed.extend(bytes(i) for i in pushed.applied)
        result.incomplete.extend(bytes(i) for i in pushed.incomplete)

    def _offer_batches(self, items: Sequence[Incoming]) -> list[list[pb.EntryRecord]]:
        batches: list[list[pb.EntryRecord]] = []
        current: list[pb.EntryRecord] = []
        size = 0
        for item in items:
            rec = record_of(item)
            n = rec.ByteSize()
            if current and size + n > self.config.batch_bytes:
                batches.append(current)
                current, size = [], 0
            current.append(rec)
            size += n
        if current:
            batches.append(current)
        return batches
