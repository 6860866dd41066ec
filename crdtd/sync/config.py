"""Every sync tunable in one place, with documented defaults (memberlist's LAN profile).

`SyncConfig()` is the default a daemon starts from; `SyncConfig.from_gossip_settings` maps a
node config's `[gossip]` table onto it. Durations are seconds (floats), sizes bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from crdtd.errors import ConfigError

PROTOCOL_VERSION = 1
"""Version of the crdtd.v1.Peer session protocol spoken here."""

RIBLT_CAPABILITY = "riblt/1"
"""Set reconciliation with a rateless IBLT in front of the Merkle descent (crdtd.sync.reconcile)."""

CHAIN_ORDER_CAPABILITY = "chain-order/1"
"""FetchEntries answers in apply order up to a limit (each batch applied as it arrives)."""

CAPABILITIES: tuple[str, ...] = (
    "merkle/1",
    RIBLT_CAPABILITY,
    "chunks/1",
    "notify/1",
    "peers/1",
    CHAIN_ORDER_CAPABILITY,
)
"""Capabilities this implementation offers in the handshake (`SyncConfig.capabilities`)."""

MiB = 1024 * 1024


@dataclass(frozen=True)
class SyncConfig:
    """Gossip, failure detection, digest exchange and transfer tunables."""

    # -- gossip (hashicorp/memberlist DefaultLANConfig) --------------------------------------
    gossip_interval: float = 0.2
    """Seconds between gossip rounds; each round syncs with `fanout` random live peers."""
    fanout: int = 3
    """Peers contacted per gossip round (and nudged by a push-notify)."""
    probe_interval: float = 1.0
    """Seconds between failure-detector probes of one random known peer."""
    probe_timeout: float = 0.5
    """A probe (root comparison) slower than this counts as a failure."""
    suspicion_mult: int = 4
    """A suspect peer is declared dead after suspicion_mult * max(1, log10(N+1)) probe
    intervals without a successful contact (memberlist's suspicion timeout)."""
    push_pull_interval: float = 30.0
    """Seconds between full sessions with one random known peer, dead ones included: the
    path by which partitions heal even when every bootstrap peer is gone."""
    # -- failure handling --------------------------------------------------------------------
    backoff_base: float = 1.0
    """First retry delay for a dead peer; doubles per failure (with +-25 % seeded jitter)."""
    backoff_max: float = 60.0
    """Upper bound of the retry delay for a dead peer."""
    notify_min_interval: float = 0.05
    """A Notify from a peer starts at most one session per this many seconds with that peer."""
    max_peers_exchanged: int = 32
    """Peers listed in each handshake (peer exchange)."""
    # -- sessions and RPCs -------------------------------------------------------------------
    rpc_timeout: float = 10.0
    """Deadline of one unary RPC (handshake, digest round, offer)."""
    stream_idle_timeout: float = 60.0
    """A chunk stream that moves no piece for this long is cut (and resumed later)."""
    session_ttl: float = 300.0
    """How long a handshake's session token is honoured."""
    max_pending_challenges: int = 1024
    """Outstanding handshake challenges kept before the oldest is dropped."""
    max_sessions: int = 4096
    """Live session tokens kept before the oldest is dropped (its peer handshakes again)."""
    max_entries_per_session: int = 50_000
    """Missing entries pulled in one session (bounds memory; the rest come next session)."""
    # -- digest exchange ---------------------------------------------------------------------
    hash_bytes: int = 8
    """Child hashes are truncated to this many bytes in a Merkle descent."""
    ids_threshold: int = 16
    """A differing subtree holding at most this many ids is listed instead of descended."""
    max_probes_per_round: int = 1024
    """Probes sent in one Digest call (more are split over several calls); keeps an answer
    of leaf id lists far below max_message_bytes."""
    set_reconciliation: bool = True
    """Offer "riblt/1": with a peer that offers it too, sessions start with rateless IBLT
    symbols and fall back to the Merkle descent when they do not decode within budget.
    False makes the node speak the Merkle descent only (as the previous version did)."""
    riblt_first_symbols: int = 32
    """Coded symbols asked for in a session's first digest call (decodes d up to ~20 at once);
    each later call asks for as many again as received so far."""
    riblt_max_symbols: int = 65_536
    """Budget: a session that has not decoded after this many symbols (~2.7 MB; ~48,000
    differences) finishes with the Merkle descent instead."""
    # -- applying ----------------------------------------------------------------------------
    apply_batch: int = 1000
    """Entries received in one session are checked, and committed, this many at a time."""
    apply_batch_max: int = 10_000
    """A pull commits every record checked while its previous commit ran, up to this many
    per durable transaction: entries land on random pages of about ten hash-keyed B-trees,
    and a commit writes each page it touched once, so ten times the entries per commit
    write about half the pages per entry (a catch-up's SQLite work)."""
    chain_order: bool = True
    """Offer "chain-order/1": FetchEntries answered in apply order up to a limit, so a puller
    applies each batch while the next one arrives. False answers in request order, as the
    previous version does."""
    # -- transfer ----------------------------------------------------------------------------
    piece_size: int = 1 * MiB
    """Bytes of chunk data per ChunkPiece message (<= 1 MiB: never one giant message)."""
    batch_bytes: int = 1 * MiB
    """Target size of one EntryBatch / Offer message."""
    max_message_bytes: int = 8 * MiB
    """gRPC max send/receive message length (the largest message sent is about 2 MiB)."""
    write_window: int = 8
    """Chunks hashed and written concurrently off the event loop while a stream continues."""
    seed: int | None = None
    """Seed of the peer-selection random.Random (None: derived from the node's key id)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "seed" or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and value <= 0:
                raise ConfigError(f"sync config {f.name}: must be positive, got {value}")
        if not 4 <= self.hash_bytes <= 32:
            raise ConfigError(f"sync config hash_bytes: {self.hash_bytes} outside [4, 32]")
        if self.piece_size > MiB:
            raise ConfigError(f"sync config piece_size: {self.piece_size} exceeds 1 MiB")
        if self.max_message_bytes < 2 * MiB:
            raise ConfigError("sync config max_message_bytes: must be at least 2 MiB")

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What this node offers in its handshake hello."""
        off = set()
        if not self.set_reconciliation:
            off.add(RIBLT_CAPABILITY)
        if not self.chain_order:
            off.add(CHAIN_ORDER_CAPABILITY)
        return tuple(c for c in CAPABILITIES if c not in off)

    def suspicion_timeout(self, known_peers: int) -> float:
        """Seconds a peer stays suspect before it is declared dead (memberlist's formula)."""
        scale = max(1.0, math.log10(max(1, known_peers + 1)))
        return self.suspicion_mult * scale * self.probe_interval

    def grpc_options(self) -> list[tuple[str, int]]:
        """Channel/server options: message limits and keepalive for long-lived channels."""
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # the server side must accept those pings: by default it wants 5 minutes between
            # pings without data and answers more with GOAWAY "too_many_pings", which cut a
            # peer's channel whenever a session stayed quiet for a minute (a long apply)
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
            ("grpc.http2.max_ping_strikes", 0),
        ]

    @classmethod
    def from_gossip_settings(cls, settings: Any, **overrides: Any) -> SyncConfig:
        """Map a node config's `[gossip]` table (crdtd.crypto.node_config.GossipSettings)."""
        base = cls(
            gossip_interval=settings.interval_ms / 1000,
            fanout=settings.fanout,
            probe_interval=settings.probe_interval_ms / 1000,
            probe_timeout=settings.probe_timeout_ms / 1000,
            suspicion_mult=settings.suspicion_mult,
            push_pull_interval=settings.push_pull_interval_ms / 1000,
            set_reconciliation=settings.set_reconciliation,
        )
        return replace(base, **overrides) if overrides else base
