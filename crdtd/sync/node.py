"""SyncNode: one node's sync machinery wired together (state, Peer service, gossip).

It owns the answering side (LocalPeer served through a Transport), the calling side
(one Connection per peer address, AntiEntropySession), the gossip state machine
(`GossipProtocol`, with the PeerTable) and the Gossiper that performs its actions. Every
outcome (a session, a probe, a notify, a handshake or push from a peer) is reported to the
protocol, which answers with what to do next; this class only does the I/O.
The daemon builds one of these; tests build many in one process.

Two hooks connect it to trust: `relay_filter(entry)` False keeps an entry out of what this
node serves and offers (the daemon passes none: it replicates everything), and
`on_misbehaviour(peer, items)` hears of every record a peer sent that shows misbehaviour,
in either direction of a session (the daemon turns them into evidence entries).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from crdtd.errors import CrdtdError, PeerRefusedError, ProtocolError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.state.e4 import ApplyResult, E4State
from crdtd.state.entry import Entry
from crdtd.store.store import PayloadSource
from crdtd.sync.config import SyncConfig
from crdtd.sync.gossip import Gossiper
from crdtd.sync.handshake import Identity, PeerIdentity
from crdtd.sync.membership import PeerTable
from crdtd.sync.peer import LocalPeer
from crdtd.sync.protocol import GossipProtocol
from crdtd.sync.receive import Misbehaviour
from crdtd.sync.session import AntiEntropySession, Connection, SessionResult
from crdtd.sync.transport import Listener, Transport

log = logging.getLogger("crdtd.sync")


class SyncObserver(Protocol):
    """Hook for metrics and logs: called after every outbound session."""

    def session_done(
        self, address: str, result: SessionResult | None, error: BaseException | None
    ) -> None: ...

    def round_done(self) -> None:
        """A gossip round ran (counted by the daemon's metrics)."""


class SyncNode:
    """A node's Peer server, sessions and gossip over one E4State."""

    def __init__(
        self,
        state: E4State,
        identity: Identity,
        transport: Transport,
        config: SyncConfig | None = None,
        bootstrap: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        observer: SyncObserver | None = None,
        loopback_only: bool = False,
        relay_filter: Callable[[Entry], bool] | None = None,
        on_misbehaviour: Callable[[PeerIdentity, Sequence[Misbehaviour]], None] | None = None,
    ) -> None:
        self.state = state
        self.on_misbehaviour = on_misbehaviour
        self.identity = identity
        self.transport = transport
        self.config = config or SyncConfig()
        self.clock = clock
        self.observer = observer
        seed = self.config.seed
        if seed is None:
            seed = int.from_bytes(hashlib.sha256(b"gossip" + identity.key_id).digest()[:8], "big")
        self.rng = random.Random(seed)
        self.protocol = GossipProtocol(
            self.config,
            self.rng,
            identity.advertise,
            identity.key_id,
            loopback_only=loopback_only,
        )
        self.protocol.add_peers(bootstrap, clock())
        self.local = LocalPeer(
            state,
            identity,
            self.config,
            events=self,
            known_peers=self.protocol.exchange,
            clock=clock,
            relay_filter=relay_filter,
        )
        self.session = AntiEntropySession(state, self.config, relay_filter=relay_filter)
        self.gossip = Gossiper(
            self.protocol,
            self.sync_with,
            self.ping,
            self.notify,
            clock,
            on_round=observer.round_done if observer is not None else None,
        )
        self.listener: Listener | None = None
        self.sessions_ok = 0
        self.sessions_failed = 0
        self._conns: dict[str, Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def table(self) -> PeerTable:
        """Known peers and their liveness (owned by the protocol)."""
        return self.protocol.table

    @property
    def address(self) -> str:
        """Where this node serves Peer ("" before `start`)."""
        return self.identity.advertise

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, bind: str | None = None, gossip: bool = True) -> None:
        """Serve Peer on `bind` (port 0 picks one; the advertised address follows) and gossip."""
        if bind is not None:
            self.listener = await self.transport.serve(self.local, bind)
            port = self.identity.advertise.rpartition(":")[2]
            if not self.identity.advertise or port == "0":
                self._set_advertise(self.listener.address)
        if gossip:
            self.gossip.start()

    def _set_advertise(self, address: str) -> None:
        self.identity = replace(self.identity, advertise=address)
        self.local.handshakes.identity = self.identity
        self.protocol.set_address(address)
        for conn in self._conns.values():
            conn.identity = self.identity

    async def stop(self, grace: float | None = 0.5) -> None:
        """Stop gossip, then the server (in-flight calls get `grace` seconds), then channels."""
        await self.gossip.stop()
        if self.listener is not None:
            await self.listener.stop(grace)
            self.listener = None
        await self.transport.close()
        self._conns.clear()

    # -- sessions ----------------------------------------------------------------------------

    def _connection(self, address: str) -> Connection:
        conn = self._conns.get(address)
        if conn is None:
            conn = Connection(
                self.transport.connect(address),
                self.identity,
                self.state,
                self.config,
                self.protocol.exchange,
                self.clock,
            )
            self._conns[address] = conn
        return conn

    async def sync_with(self, address: str) -> SessionResult:
        """One push-pull anti-entropy session with the peer at `address`."""
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            conn = self._connection(address)
            known = conn.peer
            try:
                result = await self.session.run(conn)
            except BaseException as exc:
                await self._failed(address, conn, exc)
                raise
            self.sessions_ok += 1
            then = self.protocol.session_ok(
                address, result.peer.key_id, self.clock(), result.in_sync, bool(result.pulled)
            )
            if result.peer is not known:  # this session ran a handshake: its peer list is new
                self.protocol.peer_seen(result.peer, self.clock())
            if self.observer is not None:
                self.observer.session_done(address, result, None)
            if result.misbehaviour:
                self.misbehaved(result.peer, result.misbehaviour)
        self.gossip.run(then)
        return result

    async def _failed(self, address: str, conn: Connection, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            return
        self.sessions_failed += 1
        conn.reset()
        self._conns.pop(address, None)
        forget = getattr(self.transport, "forget", None)
        if forget is not None:
            await forget(address)
        self.protocol.contact_failed(address, self.clock(), str(exc))
        if isinstance(exc, PeerRefusedError):  # the observer reports it once per peer
            log.debug("peer %s refused: %s", address, exc)
        if self.observer is not None:
            self.observer.session_done(address, None, exc)

    async def fetch_chunks(self, address: str, wanted: Mapping[bytes, int]) -> set[bytes]:
        """Fetch chunks by digest (-> size) from the peer at `address` with FetchChunks; each
        is verified against its digest and stored. Returns the digests stored: a peer that
        lacks some skips them, and a copy that does not hash to its digest fails the call
        (ProtocolError) keeping the chunks stored before it. Used to repair the store."""
        conn = self._connection(address)
        try:
            peer = await conn.ensure()
            pieces = conn.client.fetch_chunks(pb.FetchChunksRequest(digests=sorted(wanted)))
            return await self.local.receiver.store_chunks(pieces, dict(wanted), peer.short)
        except CrdtdError as exc:
            if not isinstance(exc, ProtocolError):  # a bad copy is not an unreachable peer
                await self._failed(address, conn, exc)
            raise

    async def ping(self, address: str) -> bool:
        """Probe a peer: handshake if needed and compare roots; True when in sync.

        A differing root starts a session; a failure or timeout counts against the peer.
        """
        conn = self._connection(address)
        known = conn.peer
        root = self.state.merkle_root()
        request = pb.DigestRequest(
            merkle=pb.MerkleProbes(
                probes=[pb.MerkleProbe(prefix=b"", hash=root)],
                hash_bytes=self.config.hash_bytes,
                ids_threshold=0,
            )
        )

        async def probe() -> tuple[PeerIdentity, pb.DigestResponse]:
            peer = await conn.ensure()
            return peer, await conn.client.digest(request)

        try:
            peer, reply = await asyncio.wait_for(probe(), self.config.probe_timeout)
        except (CrdtdError, asyncio.TimeoutError) as exc:
            await self._failed(address, conn, exc)
            return False
        nodes = reply.merkle.nodes
        in_sync = len(nodes) == 1 and nodes[0].WhichOneof("summary") == "equal"
        if peer is not known:
            self.protocol.peer_seen(peer, self.clock())
        self.gossip.run(self.protocol.probe_ok(address, peer.key_id, self.clock(), in_sync))
        return in_sync

    async def notify(self, address: str) -> bool:
        """Tell a peer we have new entries (it replies whether it will sync with us)."""
        conn = self._connection(address)
        known = conn.peer
        try:
            peer = await conn.ensure()
            reply = await conn.client.notify(pb.NotifyRequest(root=self.state.merkle_root()))
        except CrdtdError as exc:
            await self._failed(address, conn, exc)
            return False
        if peer is not known:
            self.protocol.peer_seen(peer, self.clock())
        return bool(reply.will_sync)

    # -- local writes ------------------------------------------------------------------------

    async def add_local(
        self, entry: Entry | bytes, payload_source: PayloadSource | None = None
    ) -> ApplyResult:
        """Apply an entry created here, then push-notify peers so it spreads at once."""
        result = await asyncio.to_thread(self.state.apply, entry, payload_source)
        self.gossip.run(self.protocol.wrote(self.clock()))
        return result

    # -- PeerEvents (called by LocalPeer) ----------------------------------------------------

    def peer_seen(self, peer: PeerIdentity) -> None:
        self.protocol.peer_seen(peer, self.clock())

    def notified(self, peer: PeerIdentity, root: bytes) -> bool:
        return self.gossip.nudge(peer.advertise)

    def received(self, ids: Sequence[bytes], peer: PeerIdentity) -> None:
        self.gossip.run(self.protocol.received(peer.advertise, self.clock()))

    def misbehaved(self, peer: PeerIdentity, items: Sequence[Misbehaviour]) -> None:
        if self.on_misbehaviour is None:
            return
        try:
            self.on_misbehaviour(peer, items)
        except Exception:  # a failing observer must not break sync
            log.exception("misbehaviour hook failed for peer %s", peer.short)
