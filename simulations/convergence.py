"""Convergence simulator: crdtd's real gossip state machine over a discrete-event network.

Every simulated node owns a `crdtd.sync.protocol.GossipProtocol` (the object the daemon's
`Gossiper` drives over gRPC) and this module performs its actions instead of grpc.aio: a
SYNC becomes a simulated anti-entropy session, a PROBE a root comparison within
`probe_timeout`, a NOTIFY a Notify call, each with the handshake the real `Connection` runs
when it holds no session token. Outcomes go back through the same protocol methods the
daemon calls (`session_ok`, `probe_ok`, `contact_failed`, `sync_ended`, `peer_seen`,
`notified`, `received`, `wrote`). Nothing here chooses peers, probes or timeouts.

The network: nodes sit at random points of a unit square; the one-way latency of a link is
`latency_min + (latency_max - latency_min) * distance / sqrt(2)` plus bytes / bandwidth;
every message (a request or a reply) is lost with probability `loss`, and a call whose
message is lost fails when its deadline passes (`rpc_timeout`, or `probe_timeout` for a
probe), as a cut connection does. A partition drops every message between two groups; a
crashed node answers nothing. Entries are modelled by their ids: a session compares the two
sets at the time its digest reaches the server, costs the digest exchange's round trips and
bytes for that (n, d) (rateless IBLT symbols by default, the Merkle descent with
`--digest merkle`; docs/sync.md, "Digest exchange"), then fetches (FetchEntries,
FetchChunks) and offers (Offer, Push) the missing entries. Message sizes are those of the
real protobuf messages (a real signed header, manifest and 1 KiB chunk; built once with
`crdtd.proto_gen`), plus `overhead` bytes of framing each.

It prints, for each N: the time for a new entry to reach 99.99 % of the nodes, the time for
a crashed node to be declared dead, and bytes per node per second, next to Serf's model for
the same interval, fanout and loss, `infected(r) = N / (1 + (N+1) e^(-fanout (1-loss) r))`,
and Serf's bandwidth estimate (328 kbit/s at 0.2 s and fanout 3).

    python simulations/convergence.py                       # N = 100 and 1000, 1 % loss
    python simulations/convergence.py --nodes 1000 --latency-ms 10 100
    python simulations/convergence.py --nodes 100 --partition 30
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python simulations/convergence.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.sync.config import CAPABILITIES, PROTOCOL_VERSION, SyncConfig
from crdtd.sync.membership import PeerState
from crdtd.sync.protocol import Act, Action, GossipProtocol

TARGET_FRACTION = 0.9999
SERF_PACKET_BYTES = 1400
"""Serf's simulator assumes every gossip message is one full UDP packet."""


# -- Serf's published model ----------------------------------------------------------------


def serf_infected(n: int, fanout: float, loss: float, rounds: float, contact: float = 1.0) -> float:
    """Nodes infected after `rounds` gossip rounds: N / (1 + (N+1) e^(-fanout (1-loss) r)).

    `contact` = 0.5 gives the curve serf.io's simulator draws (it halves the contact rate)."""
    return n / (1 + (n + 1) * math.exp(-contact * fanout * (1 - loss) * rounds))


def serf_rounds(n: int, fanout: float, loss: float, fraction: float, contact: float = 1.0) -> int:
    """The first whole round at which Serf's model has infected `fraction` of N."""
    r = 0
    while serf_infected(n, fanout, loss, r, contact) < fraction * n:
        r += 1
    return r


def serf_kbit_per_s(interval: float, fanout: int) -> float:
    """Serf's bandwidth estimate per node: 1400-byte packets to `fanout` peers per round,
    sent and received, in kbit/s of 1024 bits (328 at 0.2 s and fanout 3)."""
    return SERF_PACKET_BYTES * fanout / interval * 2 * 8 / 1024


# -- wire sizes from the real messages -------------------------------------------------------


@dataclass(frozen=True)
class Wire:
    """Serialized sizes of crdtd.v1.Peer messages (protobuf bytes, without framing)."""

    hello_base: int
    hello_per_peer: int
    hello_reply_base: int
    prove: int
    prove_reply: int
    digest_root: int
    """A Merkle root probe (what a probe sends, and a Merkle-only session's first call)."""
    digest_equal: int
    riblt_first: int
    """The first riblt/1 Digest call: our root and a range of symbols."""
    riblt_equal: int
    riblt_reply: int
    """A RibltSymbols answer without symbols (salt, root, size, start)."""
    riblt_symbol: int
    """One coded symbol in an answer: 32-byte sum, 8-byte check, its count."""
    notify: int
    notify_reply: int
    entry: int
    """An EntryRecord: a signed contribution header and the manifest of its payload."""
    chunk: int
    """The payload's one chunk as a ChunkPiece (FetchChunks reply or Push message)."""
    per_id: int
    """One id or chunk digest in a request or reply list (FetchEntries, FetchChunks,
    OfferResponse)."""
    overhead: int = 90
    """Framing per message, an estimate: TCP/IP 52, TLS record 22, HTTP/2 frame 9, gRPC 5
    (headers HPACK-indexed after the first call, TCP ACKs piggybacked)."""

    @classmethod
    def measure(cls, overhead: int = 90, payload_bytes: int = 1024) -> Wire:
        """Build each message as the daemon does (real key id, nonce, signature, entry and
        manifest sizes) and take its ByteSize."""
        from crdtd.state.testing import Federation
        from crdtd.store.chunks import chunk_bytes, chunk_digest, manifest_of

        fed = Federation()
        membership = fed.add_member("site-000").to_bytes()
        payload = b"x" * payload_bytes
        entry = fed.contribute("site-000", payload, "model/sim").to_bytes()
        manifest = manifest_of(chunk_bytes(payload)).to_bytes()
        piece = pb.ChunkPiece(digest=chunk_digest(payload), offset=0, data=payload, last=True)
        key, nonce, sig, root = b"k" * 32, b"n" * 32, b"s" * 64, b"r" * 32
        peer = pb.PeerAddress(address="n000:7000", key_id=key)

        def hello(peers: int) -> int:
            return pb.HandshakeRequest(
                federation_id="fed-sim",
                protocol_version=PROTOCOL_VERSION,
                key_id=key,
                membership=membership,
                capabilities=list(CAPABILITIES),
                nonce=nonce,
                advertise="n000:7000",
                peers=[peer] * peers,
            ).ByteSize()

        reply = pb.HandshakeResponse(
            federation_id="fed-sim",
            protocol_version=PROTOCOL_VERSION,
            key_id=key,
            membership=membership,
            capabilities=list(CAPABILITIES),
            nonce=nonce,
            signature=sig,
            advertise="n000:7000",
        ).ByteSize()
        probe = pb.DigestRequest(
            merkle=pb.MerkleProbes(
                probes=[pb.MerkleProbe(prefix=b"", hash=root)], hash_bytes=8, ids_threshold=16
            )
        )
        equal = pb.DigestResponse(merkle=pb.MerkleNodes(nodes=[pb.MerkleNode(equal=True)]))
        ask = pb.DigestRequest(
            riblt=pb.RibltRequest(root=root, start=1 << 20, count=1 << 12, salt=(1 << 64) - 1)
        )

        def symbols(k: int) -> int:
            reply = pb.RibltSymbols(
                salt=(1 << 64) - 1,
                root=root,
                size=1 << 20,
                start=1 << 20,
                sums=b"s" * 32 * k,
                checks=b"c" * 8 * k,
                counts=[1] * k,
            )
            return pb.DigestResponse(riblt=reply).ByteSize()

        one_id = pb.FetchEntriesRequest(ids=[root]).ByteSize()
        return cls(
            hello_base=hello(0),
            hello_per_peer=hello(1) - hello(0),
            hello_reply_base=reply,
            prove=pb.ProveRequest(server_nonce=nonce, signature=sig).ByteSize(),
            prove_reply=pb.ProveResponse(session=b"t" * 16, ttl_ms=300_000).ByteSize(),
            digest_root=probe.ByteSize(),
            digest_equal=equal.ByteSize(),
            riblt_first=ask.ByteSize(),
            riblt_equal=pb.DigestResponse(
                riblt=pb.RibltSymbols(equal=True, salt=(1 << 64) - 1)
            ).ByteSize(),
            riblt_reply=symbols(0),
            riblt_symbol=(symbols(1000) - symbols(0)) // 1000,
            notify=pb.NotifyRequest(root=root).ByteSize(),
            notify_reply=pb.NotifyResponse(will_sync=True).ByteSize(),
            entry=pb.EntryRecord(entry=entry, manifest=manifest).ByteSize() + 2,
            chunk=piece.ByteSize() + 2,
            per_id=one_id,
            overhead=overhead,
        )


def riblt_cost(d: int, config: SyncConfig, wire: Wire) -> tuple[int, int, int] | None:
    """(round trips, request bytes, reply bytes) of the rateless IBLT exchange (riblt/1) for
    d differences, or None past its budget (the Merkle descent then runs). Calls ask for
    `riblt_first_symbols`, then as many again as received so far, until about 1.35 d + 4
    symbols are in (the decoding rate docs/sync.md measures: 1 call at d = 10, 4 at 100,
    7 at 1,000, 10 at 10,000)."""
    if d == 0:
        return 1, wire.riblt_first, wire.riblt_equal
    need = 1.35 * d + 4
    got, calls = config.riblt_first_symbols, 1
    while got < need:
        got, calls = 2 * got, calls + 1
    if got > config.riblt_max_symbols:
        return None
    return calls, calls * wire.riblt_first, calls * wire.riblt_reply + got * wire.riblt_symbol


def digest_cost(n: int, d: int, config: SyncConfig, wire: Wire) -> tuple[int, int, int]:
    """The digest exchange a session runs: riblt/1 when `set_reconciliation` (the default,
    both sides offering it), else or past its budget the Merkle descent."""
    if config.set_reconciliation:
        cost = riblt_cost(d, config, wire)
        if cost is not None:
            return cost
    if d == 0:
        return 1, wire.digest_root, wire.digest_equal
    return merkle_cost(n, d, config)


def merkle_cost(n: int, d: int, config: SyncConfig) -> tuple[int, int, int]:
    """(round trips, request bytes, reply bytes) of a Merkle descent between sets of about n
    ids differing in d (256-ary tree, leaves at depth 2, `ids_threshold` lists, truncated
    child hashes), from the message layout in docs/sync.md."""
    h, small = config.hash_bytes, config.ids_threshold
    req, rep = 40, 8
    if d == 0:
        return 1, req, rep
    if n <= small:
        return 1, req, rep + 32 * n
    rep += 36 + h * min(256, n)
    if n <= 256 * small:
        probes = min(d, 256)
        return 2, req + probes * (12 + h), rep + probes * (4 + 32 * max(1, n // 256))
    probes = min(d, 256)
    rounds_req = req + probes * (12 + h)
    rounds_rep = rep + probes * (38 + h * min(256, max(1, n // 256)))
    leaves = min(d, 65536)
    return 3, rounds_req + leaves * (13 + h), rounds_rep + leaves * (5 + 32 * max(1, n // 65536))


# -- the network ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NetConfig:
    """The simulated network."""

    latency_min: float = 0.001
    """One-way latency of the shortest link (seconds)."""
    latency_max: float = 0.010
    """One-way latency of the longest link (opposite corners of the square)."""
    loss: float = 0.01
    """Probability that any one message (request or reply) is lost."""
    bandwidth: float = 125e6
    """Bytes per second of every link (1 Gbit/s): adds size / bandwidth to a message."""
    overhead: int = 90
    """Framing bytes per message (see Wire.overhead)."""


@dataclass(frozen=True, slots=True)
class Intro:
    """What a handshake tells a node about a peer (the fields GossipProtocol reads)."""

    key_id: bytes
    advertise: str
    peers: tuple[tuple[str, bytes], ...]


@dataclass(slots=True)
class SimNode:
    """One node: its protocol, its entries (ids), its session tokens and byte counters."""

    index: int
    address: str
    key_id: bytes
    protocol: GossipProtocol
    x: float
    y: float
    up: bool = True
    entries: set[int] = field(default_factory=set)
    fingerprint: int = 0
    tokens: dict[int, float] = field(default_factory=dict)
    armed: float | None = None
    bytes: int = 0


class Failed(Exception):
    """A simulated call failed (lost message, cut link, crashed peer)."""


class Simulation:
    """N nodes, one event heap, the real GossipProtocol in every node."""

    def __init__(
        self,
        n: int,
        config: SyncConfig | None = None,
        net: NetConfig | None = None,
        seed: int = 1,
        base_entries: int | None = None,
        bootstrap: int = 3,
        wire: Wire | None = None,
        established: bool = True,
    ) -> None:
        self.config = config or SyncConfig()
        self.net = net or NetConfig()
        self.wire = wire or Wire.measure(self.net.overhead)
        self.rng = random.Random(seed)
        self.base_entries = n if base_entries is None else base_entries
        self.seed = seed
        self.established = established
        self.handshakes = 0
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.nodes: list[SimNode] = []
        self.by_address: dict[str, int] = {}
        self.cut: Callable[[int, int], bool] | None = None
        self.holders: dict[int, dict[int, float]] = {}
        self.dead_seen: dict[int, dict[int, float]] = {}
        self.counts: dict[str, int] = {}
        self.bytes_by: dict[str, int] = {}
        for i in range(n):
            address = f"n{i:04d}:7000"
            key = hashlib.sha256(b"sim-node" + i.to_bytes(4, "big")).digest()
            cfg = replace(self.config, seed=seed * 1_000_003 + i)
            proto = GossipProtocol(cfg, random.Random(cfg.seed), address, key)
            node = SimNode(i, address, key, proto, self.rng.random(), self.rng.random())
            self.nodes.append(node)
            self.by_address[address] = i
        for node in self.nodes:
            table = node.protocol.table
            if established:  # every member known with its key id, as after a long run
                for other in self.nodes:
                    table.add(other.address, other.key_id, "exchange", 0.0)
                continue
            if node.index == 0:
                continue
            boot = {0} | {self.rng.randrange(n) for _ in range(bootstrap - 1)}
            boot.discard(node.index)
            node.protocol.add_peers([self.nodes[b].address for b in sorted(boot)], 0.0)

    # -- event loop --------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        """Run fn(*args) at time t."""
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn, args))

    def run_until(self, t_end: float, stop: Callable[[], bool] | None = None) -> None:
        """Process events up to t_end (or until `stop()` is true after an event)."""
        heap = self._heap
        while heap and heap[0][0] <= t_end:
            t, _, fn, args = heapq.heappop(heap)
            self.now = t
            fn(*args)
            if stop is not None and stop():
                return
        self.now = max(self.now, t_end)

    def start(self) -> None:
        """Arm every node's timers (random phases, as the daemon's Gossiper does)."""
        for node in self.nodes:
            node.protocol.start(self.now)
            self._arm(node)

    def _arm(self, node: SimNode) -> None:
        deadline = node.protocol.next_deadline()
        if deadline is not None and deadline != node.armed and node.up:
            node.armed = deadline
            self.at(deadline, self._tick, node, deadline)

    def _tick(self, node: SimNode, deadline: float) -> None:
        if node.armed != deadline or not node.up:
            return
        node.armed = None
        self._perform(node, node.protocol.tick(self.now))

    def _perform(self, node: SimNode, actions: Sequence[Action]) -> None:
        for action in actions:
            self.counts[action.why] = self.counts.get(action.why, 0) + 1
            peer = self.by_address[action.address]
            if action.act is Act.SYNC:
                self._session(node, self.nodes[peer])
            elif action.act is Act.PROBE:
                self._probe(node, self.nodes[peer])
            else:
                self._notify(node, self.nodes[peer])
        self._arm(node)

    # -- links and calls ---------------------------------------------------------------------

    def latency(self, a: SimNode, b: SimNode, size: int = 0) -> float:
        """One-way delay of a message of `size` bytes from a to b."""
        dist = math.hypot(a.x - b.x, a.y - b.y) / math.sqrt(2)
        net = self.net
        return net.latency_min + (net.latency_max - net.latency_min) * dist + size / net.bandwidth

    def _delivered(self, a: SimNode, b: SimNode, size: int, kind: str) -> bool:
        """Count a message's bytes (sent, and received if it arrives); does it arrive?"""
        size += self.wire.overhead
        a.bytes += size
        self.bytes_by[kind] = self.bytes_by.get(kind, 0) + size
        if not b.up or (self.cut is not None and self.cut(a.index, b.index)):
            return False
        if self.rng.random() < self.net.loss:
            return False
        b.bytes += size
        self.bytes_by[kind] += size
        return True

    def _call(
        self, c: SimNode, s: SimNode, t: float, req: int, rep: int, kind: str
    ) -> tuple[float, float]:
        """One unary call sent at t: (arrival at the server, reply back at the client).
        Raises Failed when the request or the reply is lost."""
        arrive = t + self.latency(c, s, req)
        if not self._delivered(c, s, req, kind):
            raise Failed
        back = arrive + self.latency(s, c, rep)
        if not self._delivered(s, c, rep, kind):
            raise Failed
        return arrive, back

    def _token(self, c: SimNode, s: SimNode) -> float:
        """When c's session token at s expires (-1: none).

        `established`: a federation up for much longer than session_ttl. Each client/server
        pair then cycles between a live token (0.9 session_ttl, from the handshake) and an
        expired one until c next contacts s (about (N-1) / (fanout / gossip_interval +
        1 / probe_interval) seconds), so a pair holds a live token with probability
        T / (T + that wait), its remaining life uniform in [0, T]. Drawn from a hash when
        first needed (and kept), so no N^2 table is built up front."""
        got = c.tokens.get(s.index)
        if got is not None or not self.established:
            return -1.0 if got is None else got
        cfg = self.config
        life = 0.9 * cfg.session_ttl
        wait = (len(self.nodes) - 1) / (cfg.fanout / cfg.gossip_interval + 1 / cfg.probe_interval)
        h = hashlib.blake2b(f"{self.seed}:{c.index}:{s.index}".encode(), digest_size=16).digest()
        live, remaining = int.from_bytes(h[:8], "big") / 2**64, int.from_bytes(h[8:], "big")
        expires = self.now + remaining / 2**64 * life if live < life / (life + wait) else -1.0
        c.tokens[s.index] = expires
        return expires

    def _ensure(self, c: SimNode, s: SimNode, t: float) -> tuple[float, Intro | None]:
        """Connection.ensure: handshake (Handshake + Prove) unless a session token is live;
        returns when the client holds one, and what a fresh handshake told it. The server
        learns the client at Prove."""
        if self._token(c, s) > t:
            return t, None
        self.handshakes += 1
        mine = tuple(c.protocol.exchange())
        theirs = tuple(s.protocol.exchange())
        w = self.wire
        _, t = self._call(
            c,
            s,
            t,
            w.hello_base + w.hello_per_peer * len(mine),
            w.hello_reply_base + w.hello_per_peer * len(theirs),
            "handshake",
        )
        arrive, t = self._call(c, s, t, w.prove, w.prove_reply, "handshake")
        self.at(arrive, self._peer_seen, s, Intro(c.key_id, c.address, mine))
        c.tokens[s.index] = t + 0.9 * self.config.session_ttl
        return t, Intro(s.key_id, s.address, theirs)

    def _peer_seen(self, s: SimNode, intro: Intro) -> None:
        if s.up:
            s.protocol.peer_seen(intro, self.now)
            self._arm(s)

    def _fail(self, c: SimNode, s: SimNode, at: float, sync: bool) -> None:
        c.tokens[s.index] = -1.0  # SyncNode._failed resets the connection
        self.at(at, self._failed, c, s, sync)

    def _failed(self, c: SimNode, s: SimNode, sync: bool) -> None:
        if not c.up:
            return
        c.protocol.contact_failed(s.address, self.now, "timeout")
        if not c.up:
            return
        self._see_dead(c, s)
        if sync:
            self._perform(c, c.protocol.sync_ended(s.address, self.now))

    def _see_dead(self, c: SimNode, s: SimNode) -> None:
        rec = c.protocol.table.get(s.address)
        watch = self.dead_seen.get(s.index)
        if watch is not None and rec is not None and rec.state is PeerState.DEAD:
            watch.setdefault(c.index, self.now)

    # -- sessions ----------------------------------------------------------------------------

    def _session(self, c: SimNode, s: SimNode) -> None:
        """AntiEntropySession.run: handshake if needed, then the digest reaches the server."""
        t = self.now
        try:
            t, intro = self._ensure(c, s, t)
            arrive = t + self.latency(c, s, self.wire.riblt_first)
        except Failed:
            self._fail(c, s, t + self.config.rpc_timeout, sync=True)
            return
        self.at(arrive, self._digest, c, s, t, intro)

    def _digest(self, c: SimNode, s: SimNode, sent: float, intro: Intro | None) -> None:
        """The digest exchange, evaluated on both sets as they are when it reaches the server;
        then pull what we lack, offer what the peer lacks."""
        w, cfg = self.wire, self.config
        equal = c.fingerprint == s.fingerprint and len(c.entries) == len(s.entries)
        here = [] if equal else sorted(s.entries - c.entries)
        there = [] if equal else sorted(c.entries - s.entries)
        d = len(here) + len(there)
        rounds, req, rep = digest_cost(self.base_entries + len(c.entries), d, cfg, w)
        t = sent
        pulled: list[bool] = []
        try:
            for _ in range(rounds):
                _, t = self._call(c, s, t, req // rounds, rep // rounds, "digest")
            if here:  # FetchEntries, then FetchChunks for their payloads
                k = len(here)
                _, t = self._call(c, s, t, w.per_id * k, w.entry * k, "entries")
                _, t = self._call(c, s, t, w.per_id * k, w.chunk * k, "entries")
                self.at(t, self._apply, c, here, None, pulled)
            if there:  # Offer (the peer names what it wants), then Push entries and chunks
                k = len(there)
                _, t = self._call(c, s, t, w.entry * k, 2 * w.per_id * k, "entries")
                arrive, t = self._call(c, s, t, (w.entry + w.chunk) * k, w.per_id * k, "entries")
                self.at(arrive, self._apply, s, there, c, None)
        except Failed:
            self._fail(c, s, t + cfg.rpc_timeout, sync=True)
            return
        self.at(t, self._session_ok, c, s, equal, pulled, intro)

    def _apply(
        self, node: SimNode, ids: list[int], source: SimNode | None, pulled: list[bool] | None
    ) -> None:
        """Entries arrive at a node (pulled by it, or offered to it by `source`)."""
        if not node.up:
            return
        new = [i for i in ids if i not in node.entries]
        if pulled is not None:
            pulled.append(bool(new))
        for entry in new:
            node.entries.add(entry)
            node.fingerprint ^= entry
            held = self.holders.get(entry)
            if held is not None:
                held.setdefault(node.index, self.now)
        if new and source is not None:
            self._perform(node, node.protocol.received(source.address, self.now))

    def _session_ok(
        self, c: SimNode, s: SimNode, in_sync: bool, pulled: list[bool], intro: Intro | None
    ) -> None:
        if not c.up:
            return
        then = c.protocol.session_ok(s.address, s.key_id, self.now, in_sync, any(pulled))
        if intro is not None:
            c.protocol.peer_seen(intro, self.now)
        self._perform(c, then)
        self._perform(c, c.protocol.sync_ended(s.address, self.now))

    # -- probes and notifies -----------------------------------------------------------------

    def _probe(self, c: SimNode, s: SimNode) -> None:
        """SyncNode.ping: handshake if needed and compare roots, all within probe_timeout."""
        t0 = self.now
        limit = t0 + self.config.probe_timeout
        try:
            t, intro = self._ensure(c, s, t0)
            _, t = self._call(c, s, t, self.wire.digest_root, self.wire.digest_equal, "probe")
        except Failed:
            self._fail(c, s, limit, sync=False)
            return
        if t > limit:
            self._fail(c, s, limit, sync=False)
            return
        self.at(t, self._probe_ok, c, s, intro)

    def _probe_ok(self, c: SimNode, s: SimNode, intro: Intro | None) -> None:
        if not c.up:
            return
        in_sync = c.fingerprint == s.fingerprint and len(c.entries) == len(s.entries)
        if intro is not None:
            c.protocol.peer_seen(intro, self.now)
        self._perform(c, c.protocol.probe_ok(s.address, s.key_id, self.now, in_sync))

    def _notify(self, c: SimNode, s: SimNode) -> None:
        """SyncNode.notify: handshake if needed, then Notify; the server may start a session."""
        t = self.now
        try:
            t, intro = self._ensure(c, s, t)
            arrive, _ = self._call(c, s, t, self.wire.notify, self.wire.notify_reply, "notify")
        except Failed:
            self._fail(c, s, t + self.config.rpc_timeout, sync=False)
            return
        self.at(arrive, self._notified, s, c)
        if intro is not None:
            self.at(arrive, self._peer_seen, c, intro)

    def _notified(self, s: SimNode, c: SimNode) -> None:
        """LocalPeer.notify: a differing root nudges the server to sync with the notifier."""
        if not s.up or (s.fingerprint == c.fingerprint and len(s.entries) == len(c.entries)):
            return
        _, actions = s.protocol.notified(c.address, self.now)
        self._perform(s, actions)

    # -- what a scenario does ----------------------------------------------------------------

    def write(self, node: SimNode) -> int:
        """A new entry written at `node` (SyncNode.add_local): tracked until every node has it."""
        entry = self.rng.getrandbits(63) | 1
        node.entries.add(entry)
        node.fingerprint ^= entry
        self.holders[entry] = {node.index: self.now}
        self._perform(node, node.protocol.wrote(self.now))
        return entry

    def crash(self, node: SimNode) -> None:
        """The node stops answering and acting (its messages in flight are lost)."""
        node.up = False
        node.armed = None
        self.dead_seen[node.index] = {}

    def live(self) -> list[SimNode]:
        """Nodes that have not crashed."""
        return [n for n in self.nodes if n.up]

    def reach_time(self, entry: int, fraction: float) -> float | None:
        """Seconds from the write until `fraction` of the live nodes held the entry."""
        live = {n.index for n in self.live()}
        times = sorted(t for i, t in self.holders[entry].items() if i in live)
        need = math.ceil(fraction * len(live))
        if len(times) < need:
            return None
        return times[need - 1] - min(self.holders[entry].values())

    def total_bytes(self) -> int:
        """Bytes sent plus received, summed over nodes."""
        return sum(n.bytes for n in self.nodes)


# -- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One simulated run: the federation, the network, and what to measure."""

    n: int
    loss: float = 0.01
    latency: tuple[float, float] = (0.001, 0.010)
    config: SyncConfig = field(default_factory=SyncConfig)
    established: bool = True
    """True: a federation up for longer than session_ttl (every member known, session
    tokens of random age); False: a cold start from three bootstrap peers each."""
    seed: int = 1
    warmup: float = 3.0
    steady: float = 5.0
    trials: int = 3
    dead_window: float = 30.0

    def simulation(self) -> Simulation:
        """A Simulation with this scenario's federation and network."""
        net = NetConfig(latency_min=self.latency[0], latency_max=self.latency[1], loss=self.loss)
        return Simulation(self.n, self.config, net, self.seed, established=self.established)


@dataclass
class Report:
    """What one run of `measure` found."""

    scenario: Scenario
    reach_9999: list[float]
    reach_50: list[float]
    serf_rounds: int
    serf_rounds_half_contact: int
    suspicion_timeout: float
    dead_first: float | None
    dead_fraction: float
    dead_median: float | None
    steady_bytes_per_node_s: float
    steady_by_kind: dict[str, float]
    handshakes_per_node_s: float
    spread_bytes_per_node_s: float
    peers_known: float
    wall_seconds: float
    counts: dict[str, int]

    @property
    def interval(self) -> float:
        return self.scenario.config.gossip_interval

    @property
    def bound(self) -> float:
        """Serf's model plus two intervals (the target)."""
        return (self.serf_rounds + 2) * self.interval

    @property
    def worst(self) -> float:
        """The slowest of the trials to reach 99.99 % of the nodes."""
        return max(self.reach_9999)


def measure(sc: Scenario, progress: Callable[[str], None] | None = None) -> Report:
    """Warm up, measure steady-state bandwidth, write `trials` entries one after another at
    random nodes and time their spread, then crash one node and time its detection."""
    started = time.perf_counter()
    n, cfg = sc.n, sc.config
    say = progress or (lambda _: None)
    sim = sc.simulation()
    sim.start()
    sim.run_until(sc.warmup)
    t0, b0, by0, h0 = sim.now, sim.total_bytes(), dict(sim.bytes_by), sim.handshakes
    sim.run_until(sc.warmup + sc.steady)
    span = (sim.now - t0) * n
    steady = (sim.total_bytes() - b0) / span
    steady_by = {k: (v - by0.get(k, 0)) / span for k, v in sorted(sim.bytes_by.items())}
    handshakes = (sim.handshakes - h0) / span
    peers_known = sum(len(x.protocol.table) for x in sim.nodes) / n
    say(f"N={n}: warm, {peers_known:.0f} peers known per node")
    reach, half = [], []
    spread_bytes = spread_time = 0.0
    for k in range(sc.trials):
        source = sim.nodes[sim.rng.randrange(n)]
        t1, b1 = sim.now, sim.total_bytes()
        entry = sim.write(source)
        sim.run_until(t1 + 120.0, stop=lambda e=entry: len(sim.holders[e]) >= n)
        got = sim.reach_time(entry, TARGET_FRACTION)
        reach.append(math.inf if got is None else got)
        half.append(sim.reach_time(entry, 0.5) or math.inf)
        spread_bytes += sim.total_bytes() - b1
        spread_time += sim.now - t1
        say(f"N={n}: entry {k + 1}/{sc.trials} at 99.99 % of nodes after {reach[-1]:.3f} s")
        sim.run_until(sim.now + 2.0)
    victim = sim.nodes[sim.rng.randrange(n)]
    crashed_at = sim.now
    sim.crash(victim)
    sim.run_until(crashed_at + sc.dead_window)
    seen = sorted(t - crashed_at for t in sim.dead_seen[victim.index].values())
    live = len(sim.live())
    return Report(
        scenario=sc,
        reach_9999=reach,
        reach_50=half,
        serf_rounds=serf_rounds(n, cfg.fanout, sc.loss, TARGET_FRACTION),
        serf_rounds_half_contact=serf_rounds(n, cfg.fanout, sc.loss, TARGET_FRACTION, 0.5),
        suspicion_timeout=cfg.suspicion_timeout(n - 1),
        dead_first=seen[0] if seen else None,
        dead_fraction=len(seen) / live,
        dead_median=seen[(live - 1) // 2] if len(seen) * 2 >= live else None,
        steady_bytes_per_node_s=steady,
        steady_by_kind=steady_by,
        handshakes_per_node_s=handshakes,
        spread_bytes_per_node_s=spread_bytes / max(spread_time, 1e-9) / n,
        peers_known=peers_known,
        wall_seconds=time.perf_counter() - started,
        counts=dict(sorted(sim.counts.items())),
    )


def measure_partition(sc: Scenario, split: float) -> tuple[float, int]:
    """Split the federation in two halves for `split` seconds with one write on each side;
    returns (seconds from healing until every node holds both entries, the fewest nodes
    either write reached while split)."""
    n = sc.n
    sim = sc.simulation()
    sim.start()
    sim.run_until(sc.warmup)
    sim.cut = lambda a, b: (a < n // 2) != (b < n // 2)
    left, right = sim.write(sim.nodes[0]), sim.write(sim.nodes[n - 1])
    sim.run_until(sim.now + split)
    side = min(len(sim.holders[left]), len(sim.holders[right]))
    healed = sim.now
    sim.cut = None
    sim.run_until(
        healed + 600.0, stop=lambda: min(len(sim.holders[left]), len(sim.holders[right])) >= n
    )
    done = max(max(sim.holders[left].values()), max(sim.holders[right].values()))
    return done - healed, side


# -- printing -------------------------------------------------------------------------------


def describe(r: Report) -> list[str]:
    """The report as `key: value` lines."""
    sc, iv = r.scenario, r.interval
    serf_s = r.serf_rounds * iv
    serf_bw = serf_kbit_per_s(iv, sc.config.fanout)
    ours_bw = r.steady_bytes_per_node_s * 8 / 1024
    spread_bw = r.spread_bytes_per_node_s * 8 / 1024
    first = "none" if r.dead_first is None else f"{r.dead_first:.2f}"
    median = "not reached" if r.dead_median is None else f"{r.dead_median:.1f} s"
    lat = f"{sc.latency[0] * 1000:g}-{sc.latency[1] * 1000:g} ms"
    mode = "established federation" if sc.established else "cold start"
    return [
        f"N={sc.n}  loss={sc.loss:.2%}  interval={iv:g} s  fanout={sc.config.fanout}  "
        f"one-way latency {lat}  session_ttl={sc.config.session_ttl:g} s  "
        f"digest={'riblt' if sc.config.set_reconciliation else 'merkle'}  {mode}  seed={sc.seed}",
        f"  peers_known_per_node: {r.peers_known:.0f}",
        f"  serf_model_rounds_to_99.99%: {r.serf_rounds}  "
        f"(infected({r.serf_rounds}) = "
        f"{serf_infected(sc.n, sc.config.fanout, sc.loss, r.serf_rounds):.2f} of {sc.n}; "
        f"{serf_s:.2f} s; serf.io's simulator curve, contact x0.5: "
        f"{r.serf_rounds_half_contact} rounds)",
        f"  target_seconds: {r.bound:.2f}  (model + 2 intervals)",
        f"  entry_to_99.99%_seconds: {' '.join(f'{x:.3f}' for x in r.reach_9999)}  "
        f"(worst {r.worst:.3f} = {r.worst / iv:.1f} intervals)",
        f"  entry_to_50%_seconds: {' '.join(f'{x:.3f}' for x in r.reach_50)}",
        f"  within_target: {'yes' if r.worst <= r.bound else 'NO'}  "
        f"(worst / model: {r.worst / serf_s:.2f})",
        f"  dead_node_first_declared_seconds: {first}  "
        f"(suspicion timeout {r.suspicion_timeout:.1f} s)",
        f"  dead_node_declared_by: {r.dead_fraction:.1%} of live nodes within "
        f"{sc.dead_window:g} s (median {median})",
        f"  bytes_per_node_per_s: steady {r.steady_bytes_per_node_s:.0f} B/s = "
        f"{ours_bw:.1f} kbit/s; while an entry spreads {spread_bw:.1f} kbit/s",
        "  steady_by_kind_B_per_s: "
        + " ".join(f"{k}={v:.0f}" for k, v in r.steady_by_kind.items())
        + f"  (handshakes {r.handshakes_per_node_s:.2f}/node/s)",
        f"  serf_estimate_kbit_per_s: {serf_bw:.1f}  (steady / serf: {ours_bw / serf_bw:.3f})",
        f"  actions: {' '.join(f'{k}={v}' for k, v in r.counts.items())}",
        f"  sim_wall_seconds: {r.wall_seconds:.1f}",
    ]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit 1 when a run misses the target."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--loss", type=float, default=0.01, help="message loss (0.01 = 1 %%)")
    parser.add_argument("--interval", type=float, default=0.2, help="gossip interval, seconds")
    parser.add_argument("--fanout", type=int, default=3)
    parser.add_argument(
        "--session-ttl", type=float, default=SyncConfig.session_ttl, help="token life, seconds"
    )
    parser.add_argument(
        "--digest", choices=["riblt", "merkle"], default="riblt", help="digest exchange"
    )
    parser.add_argument(
        "--latency-ms", type=float, nargs=2, default=[1.0, 10.0], metavar=("MIN", "MAX")
    )
    parser.add_argument(
        "--cold", action="store_true", help="start from bootstrap peers, no session tokens"
    )
    parser.add_argument("--trials", type=int, default=3, help="entries written one by one")
    parser.add_argument("--warmup", type=float, default=None, help="simulated seconds")
    parser.add_argument("--dead-window", type=float, default=30.0, help="simulated seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--partition", type=float, default=0.0, help="also split in two for this many seconds"
    )
    args = parser.parse_args(argv)
    config = SyncConfig(
        gossip_interval=args.interval,
        fanout=args.fanout,
        session_ttl=args.session_ttl,
        set_reconciliation=args.digest == "riblt",
    )
    print(
        "crdtd convergence simulator: crdtd.sync.protocol.GossipProtocol in every node, "
        "discrete-event network"
    )
    ok = True
    for n in args.nodes:
        sc = Scenario(
            n,
            loss=args.loss,
            latency=(args.latency_ms[0] / 1000, args.latency_ms[1] / 1000),
            config=config,
            established=not args.cold,
            seed=args.seed,
            warmup=args.warmup if args.warmup is not None else (10.0 if args.cold else 3.0),
            trials=args.trials,
            dead_window=args.dead_window,
        )
        report = measure(sc, progress=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True))
        print("\n".join(describe(report)), flush=True)
        ok &= report.worst <= report.bound
        if args.partition:
            heal, side = measure_partition(sc, args.partition)
            print(
                f"  partition_in_halves_{args.partition:g}_s: each side's write reached "
                f">= {side} of {n // 2} nodes while split; all {n} nodes held both "
                f"{heal:.2f} s after healing",
                flush=True,
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
